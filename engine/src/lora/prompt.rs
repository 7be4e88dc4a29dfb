//! AUTOMATIC1111's prompt syntax for LoRAs: `<lora:name:weight>` (or `<lora:name>` for weight
//! 1, and `<lyco:...>` as the old LyCORIS extension spelled it). The tags are removed from the
//! text the model sees, exactly as A1111 removes them (nothing else is touched), and the prompt
//! written into PNG parameters keeps them.

use super::catalog::LoraRequest;
use super::LoraError;

/// Splits `prompt` into the text to encode and the LoRAs its tags ask for, in order.
pub fn extract_lora_tags(prompt: &str) -> Result<(String, Vec<LoraRequest>), LoraError> {
    let mut text = String::with_capacity(prompt.len());
    let mut loras = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let tag = after
            .find('>')
            .map(|end| &after[..end])
            .and_then(|inner| Some((inner.split_once(':')?, inner.len())));
        match tag {
            Some(((kind, args), len)) if kind == "lora" || kind == "lyco" => {
                text.push_str(&rest[..start]);
                loras.push(parse_args(&rest[start..start + len + 2], args)?);
                rest = &after[len + 1..];
            }
            _ => {
                text.push_str(&rest[..=start]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    Ok((text, loras))
}

fn parse_args(tag: &str, args: &str) -> Result<LoraRequest, LoraError> {
    let bad = |message: &str| LoraError::BadSpec {
        spec: tag.to_string(),
        message: message.to_string(),
    };
    let mut parts = args.split(':');
    let name = parts.next().unwrap_or_default().trim();
    if name.is_empty() {
        return Err(bad("the LoRA name is empty: write <lora:name:weight>"));
    }
    let weight = match parts.next() {
        None => None,
        Some(w) => Some(w.trim().parse::<f64>().ok().filter(|w| w.is_finite()).ok_or_else(
            || bad("the weight is not a number: write <lora:name:weight>, e.g. <lora:name:0.8>"),
        )?),
    };
    if parts.next().is_some() {
        return Err(bad(
            "separate text-encoder and UNet weights are not supported: write <lora:name:weight>",
        ));
    }
    Ok(LoraRequest {
        name: name.to_string(),
        weight,
    })
}

/// The A1111 tag for a LoRA at `weight`: `<lora:name:weight>`.
pub fn lora_tag(name: &str, weight: f64) -> String {
    format!("<lora:{name}:{weight}>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, weight: Option<f64>) -> LoraRequest {
        LoraRequest {
            name: name.into(),
            weight,
        }
    }

    #[test]
    fn removes_tags_like_automatic1111() {
        let (text, loras) =
            extract_lora_tags("a fox <lora:fox-style:0.8>, snow <lyco:detail> <b>x</b>").unwrap();
        assert_eq!(text, "a fox , snow  <b>x</b>");
        assert_eq!(
            loras,
            vec![req("fox-style", Some(0.8)), req("detail", None)]
        );
        let (text, loras) = extract_lora_tags("<lora:neg:-1.5>a < b > c <lora:x").unwrap();
        assert_eq!(text, "a < b > c <lora:x");
        assert_eq!(loras, vec![req("neg", Some(-1.5))]);
        assert_eq!(lora_tag("fox", 0.8), "<lora:fox:0.8>");
    }

    #[test]
    fn bad_tags_are_errors() {
        for prompt in [
            "<lora:fox:lots>",
            "<lora::1>",
            "<lora:fox:0.5:1>",
            "<lora:fox:inf>",
        ] {
            let err = extract_lora_tags(prompt).unwrap_err().to_string();
            assert!(err.contains(prompt), "{err}");
        }
    }
}
