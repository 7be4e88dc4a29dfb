//! What the PNG `parameters` text says about the prompt: the prompt stays as written (A1111
//! does the same); the syntax is named when it is not the default (`Prompt syntax: comfy`), and
//! the embeddings used are listed as A1111 lists them (`TI hashes: "name: 0123456789ab, ..."`).

use super::embeddings::Embedding;
use super::PromptSyntax;

/// The `key: value` pairs to append to the settings line, in order.
pub fn prompt_params(
    syntax: PromptSyntax,
    default: PromptSyntax,
    embeddings: &[&Embedding],
) -> Vec<(String, String)> {
    let mut params = Vec::new();
    if syntax != default {
        params.push(("Prompt syntax".to_string(), syntax.to_string()));
    }
    if let Some(hashes) = ti_hashes(embeddings) {
        params.push(("TI hashes".to_string(), hashes));
    }
    params
}

/// A1111's `TI hashes` value: `name: shorthash` pairs joined by `, `, with `:` and `,` removed
/// from names; `None` when there are none.
pub fn ti_hashes(embeddings: &[&Embedding]) -> Option<String> {
    let pairs: Vec<String> = embeddings
        .iter()
        .map(|e| {
            let name = e.name.replace([':', ','], "");
            format!("{name}: {}", e.short_hash())
        })
        .collect();
    (!pairs.is_empty()).then(|| pairs.join(", "))
}

/// The pairs as A1111 writes them after the settings line: `, key: value` each, a value holding
/// `,`, `:` or `"` quoted as a JSON string (A1111's `quote`).
pub fn format_params(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(key, value)| format!(", {key}: {}", quote(value)))
        .collect()
}

/// A1111's `quote`: the value as is, or as a JSON string when it holds `,`, `:` or `"`.
pub fn quote(value: &str) -> String {
    if value.contains([',', ':', '"']) {
        serde_json::Value::String(value.to_string()).to_string()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::embeddings::EmbeddingVectors;

    fn embedding(name: &str, sha: &str) -> Embedding {
        Embedding {
            name: name.into(),
            path: "x.safetensors".into(),
            sha256: sha.into(),
            vectors: EmbeddingVectors::Single(
                candle_core::Tensor::zeros(
                    (1, 4),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .unwrap(),
            ),
        }
    }

    #[test]
    fn writes_like_automatic1111() {
        let a = embedding("easy:neg,ative", &"c74b4e810b03".repeat(6));
        let b = embedding("style", &"0123456789abcdef".repeat(4));
        let params = prompt_params(PromptSyntax::Comfy, PromptSyntax::A1111, &[&a, &b]);
        assert_eq!(
            format_params(&params),
            ", Prompt syntax: comfy, TI hashes: \"easynegative: c74b4e810b03, style: 0123456789ab\""
        );
        assert!(prompt_params(PromptSyntax::A1111, PromptSyntax::A1111, &[]).is_empty());
        assert_eq!(
            prompt_params(PromptSyntax::Plain, PromptSyntax::A1111, &[])[0].1,
            "plain"
        );
    }
}
