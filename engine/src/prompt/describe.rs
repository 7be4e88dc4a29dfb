//! What `beeswax prompt "TEXT"` prints: the warnings of a prompt that A1111 or ComfyUI would
//! read leniently, and the parse (sub-prompts, schedule, chunks, tokens and weights).

use std::fmt::Write;

use super::attention::attention_warnings;
use super::plan::PromptPlan;
use super::schedule::parses;
use super::PromptSyntax;
use crate::tokenizer::ClipTokenizer;

/// Warnings about constructs the syntax reads leniently (unclosed or stray brackets, weights
/// that are not numbers, prompt editing that does not parse).
pub fn warnings(prompt: &str, syntax: PromptSyntax) -> Vec<String> {
    let mut out = Vec::new();
    match syntax {
        PromptSyntax::A1111 => {
            if !parses(prompt) {
                out.push(
                    "the prompt-editing syntax does not parse (a `|` outside `[...]`, a \
                     backslash at the end, or brackets that do not pair up): as in A1111, no \
                     editing or alternation applies and the prompt is used as written"
                        .to_string(),
                );
            }
            out.extend(attention_warnings(prompt));
        }
        PromptSyntax::Comfy => {
            let mut depth: i64 = 0;
            for c in prompt.replace("\\(", "").replace("\\)", "").chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth < 0 {
                    out.push(
                        "a `)` closes nothing: ComfyUI's reading of the rest is erratic".into(),
                    );
                    depth = 0;
                }
            }
            if depth > 0 {
                out.push(format!(
                    "{depth} `(` never closed: its text keeps the outer weight"
                ));
            }
        }
        PromptSyntax::Plain => {}
    }
    out
}

/// A readable account of `plan`: per sub-prompt its weight and schedule, per distinct text its
/// chunks as `token*weight` lists (embeddings as `<name>`).
pub fn describe(plan: &PromptPlan, tokenizer: &ClipTokenizer, steps: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "syntax: {}", plan.syntax);
    for (p, part) in plan.parts.iter().enumerate() {
        if plan.parts.len() > 1 || part.weight != 1.0 {
            let _ = writeln!(out, "sub-prompt {} (AND weight {}):", p + 1, part.weight);
        }
        let mut start = 0;
        for &(end, text) in &part.schedule {
            let last = end.min(steps.saturating_sub(1));
            if start <= last {
                let _ = writeln!(out, "  steps {start}..={last}: text {}", text + 1);
            }
            start = start.max(end + 1);
        }
        for (t, text) in part.texts.iter().enumerate() {
            let chunks = &part.chunks[t];
            let _ = writeln!(
                out,
                "  text {}: {text:?} ({} chunk(s), {} tokens)",
                t + 1,
                chunks.chunks.len(),
                chunks.token_count
            );
            if let Some(dropped) = &chunks.truncated {
                let _ = writeln!(out, "    truncated: {dropped:?}");
            }
            for (c, chunk) in chunks.chunks.iter().enumerate() {
                let _ = writeln!(out, "    chunk {}: {}", c + 1, chunk_line(chunk, tokenizer));
            }
        }
    }
    out
}

/// The chunk's prompt tokens (start, end and padding left out) with weights other than 1.
fn chunk_line(chunk: &super::Chunk, tokenizer: &ClipTokenizer) -> String {
    let end = chunk
        .ids
        .iter()
        .skip(1)
        .position(|&id| id == tokenizer.eos_id())
        .map_or(chunk.ids.len(), |p| p + 1);
    let mut words = Vec::new();
    let mut i = 1;
    while i < end {
        let weight = chunk.weights[i];
        let (word, len) = match chunk.embeddings.iter().find(|p| p.position == i) {
            Some(p) => (
                format!("<{}:{}v>", p.embedding.name, p.embedding.vector_count()),
                p.embedding.vector_count().max(1),
            ),
            None => (
                tokenizer
                    .token_text(chunk.ids[i])
                    .unwrap_or_else(|| chunk.ids[i].to_string())
                    .replace("</w>", "_"),
                1,
            ),
        };
        words.push(if weight == 1.0 {
            word
        } else {
            format!("{word}*{weight:.4}")
        });
        i += len;
    }
    if words.is_empty() {
        "(empty)".to_string()
    } else {
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::PlanOptions;

    #[test]
    fn describes_schedule_chunks_and_weights() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/tiny-sd/tokenizer");
        let tok = ClipTokenizer::from_dir(&dir).unwrap();
        let options = PlanOptions::new(PromptSyntax::A1111, 4);
        let plan = PromptPlan::new("a [dog:cat:2] (fox:1.5)", &options, &tok, None).unwrap();
        let text = describe(&plan, &tok, 4);
        assert!(text.contains("steps 0..=2: text 1"), "{text}");
        assert!(text.contains("steps 3..=3: text 2"), "{text}");
        assert!(text.contains("text 1: \"a dog (fox:1.5)\""), "{text}");
        assert!(text.contains("a_ dog_ fox_*1.5000"), "{text}");
        assert!(warnings("a (fox:1.5)", PromptSyntax::A1111).is_empty());
        let w = warnings("a (fox | [b", PromptSyntax::A1111);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("does not parse"));
        assert_eq!(warnings("a (b", PromptSyntax::Comfy).len(), 1);
    }
}
