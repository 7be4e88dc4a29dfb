//! A prompt ready to encode: the distinct texts it needs over the sampling steps, their chunks,
//! and which one each step uses.
//!
//! Encoding is the caller's: [`PromptPlan::encode`] asks a closure for the hidden states of
//! each [`Chunk`] (ids with textual-inversion vectors to inject, see
//! [`super::encode::clip_chunk`]) and applies the syntax's weighting, giving one context tensor
//! per distinct text. A model with two text encoders (SDXL) calls `encode` once per encoder on
//! the same plan (A1111 and ComfyUI use the same tokens for both and weight each encoder's
//! output separately) and concatenates the results on the last axis; each distinct text's
//! pooled output comes from its first chunk (A1111's `zs[0].pooled`, ComfyUI's
//! `first_pooled`), which the closure can keep aside. The denoise loop then asks
//! [`EncodedPrompt::at_step`] which conditioning applies at each step.

use std::sync::Arc;

use candle_core::Tensor;

use super::chunks::{
    a1111_chunks, comfy_chunks, plain_chunks, A1111Chunking, Chunk, Chunks, EmbeddingMatcher,
};
use super::embeddings::{Embedding, EmbeddingCatalog};
use super::schedule::{entry_index, schedules, split_and};
use super::weighting::{a1111_original, comfy_weighting, Variant};
use super::{PromptError, PromptSyntax};
use crate::tokenizer::ClipTokenizer;

/// What makes two chunks encode alike: their ids and embedding placements.
type ChunkKey = (Vec<u32>, Vec<(usize, String)>);

/// How to read a prompt.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    /// The syntax.
    pub syntax: PromptSyntax,
    /// Sampling steps (for prompt editing and alternation).
    pub steps: usize,
    /// A1111's comma backtrack (20).
    pub chunking: A1111Chunking,
    /// Whether this is a negative prompt: A1111 reads `AND` and the trailing `:weight` only in
    /// the positive prompt.
    pub negative: bool,
}

impl PlanOptions {
    /// Options for `syntax` over `steps` steps, positive prompt, A1111's default chunking.
    pub fn new(syntax: PromptSyntax, steps: usize) -> Self {
        Self {
            syntax,
            steps,
            chunking: A1111Chunking::default(),
            negative: false,
        }
    }
}

/// One `AND` sub-prompt (the whole prompt when there is no `AND`).
#[derive(Debug, Clone)]
pub struct PlanPart {
    /// Its composable-diffusion weight (the trailing `:w`; 1 by default).
    pub weight: f64,
    /// The distinct texts its schedule uses.
    pub texts: Vec<String>,
    /// `(end_step, index into texts)`: A1111's schedule entries, in order.
    pub schedule: Vec<(usize, usize)>,
    /// Each distinct text's chunks, all padded with empty chunks to the same count (A1111
    /// encodes a prompt's variants as one batch).
    pub chunks: Vec<Chunks>,
}

impl PlanPart {
    /// The index of the text sampling step `step` (0-based) uses.
    pub fn text_at_step(&self, step: usize) -> usize {
        self.schedule[entry_index(self.schedule.iter().map(|&(end, _)| end), step)].1
    }

    /// How many schedule entries use each distinct text.
    pub fn multiplicities(&self) -> Vec<usize> {
        let mut counts = vec![0; self.texts.len()];
        for &(_, text) in &self.schedule {
            counts[text] += 1;
        }
        counts
    }

    /// The number of chunks of every text.
    pub fn chunk_count(&self) -> usize {
        self.chunks.first().map_or(1, |c| c.chunks.len())
    }
}

/// A prompt read in one syntax, tokenized, ready to encode.
#[derive(Debug, Clone)]
pub struct PromptPlan {
    /// The syntax it was read in.
    pub syntax: PromptSyntax,
    /// Its sub-prompts.
    pub parts: Vec<PlanPart>,
    /// The empty prompt's chunk (variant padding, ComfyUI's `z_empty`, `pad_prompts`).
    pub empty: Chunk,
}

impl PromptPlan {
    /// Reads, schedules and tokenizes `prompt`. Embedding names are looked up in `catalog`.
    pub fn new(
        prompt: &str,
        options: &PlanOptions,
        tokenizer: &ClipTokenizer,
        catalog: Option<&EmbeddingCatalog>,
    ) -> Result<Self, PromptError> {
        let matcher = catalog
            .map(|c| EmbeddingMatcher::new(c, tokenizer))
            .transpose()?;
        let matcher = matcher.as_ref();
        let sub_prompts = match options.syntax {
            PromptSyntax::A1111 if !options.negative => split_and(prompt),
            _ => vec![(prompt.to_string(), 1.0)],
        };
        let mut parts = Vec::new();
        for (text, weight) in sub_prompts {
            let entries = match options.syntax {
                PromptSyntax::A1111 => schedules(&text, options.steps),
                _ => vec![(options.steps, text)],
            };
            let mut texts: Vec<String> = Vec::new();
            let mut schedule = Vec::new();
            for (end, variant) in entries {
                let index = match texts.iter().position(|t| *t == variant) {
                    Some(i) => i,
                    None => {
                        texts.push(variant);
                        texts.len() - 1
                    }
                };
                schedule.push((end, index));
            }
            let mut chunks = texts
                .iter()
                .map(|t| match options.syntax {
                    PromptSyntax::A1111 => a1111_chunks(t, tokenizer, matcher, options.chunking),
                    PromptSyntax::Comfy => comfy_chunks(t, tokenizer, matcher),
                    PromptSyntax::Plain => plain_chunks(t, tokenizer, matcher),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let count = chunks.iter().map(|c| c.chunks.len()).max().unwrap_or(1);
            for c in &mut chunks {
                c.chunks.resize_with(count, || Chunk::empty(tokenizer));
            }
            parts.push(PlanPart {
                weight,
                texts,
                schedule,
                chunks,
            });
        }
        Ok(Self {
            syntax: options.syntax,
            parts,
            empty: Chunk::empty(tokenizer),
        })
    }

    /// Every embedding the prompt uses, each once, in order of first use.
    pub fn embeddings(&self) -> Vec<Arc<Embedding>> {
        let mut out: Vec<Arc<Embedding>> = Vec::new();
        let placements = self
            .parts
            .iter()
            .flat_map(|p| &p.chunks)
            .flat_map(|c| &c.chunks)
            .flat_map(|c| &c.embeddings);
        for p in placements {
            if !out.iter().any(|e| e.name == p.embedding.name) {
                out.push(p.embedding.clone());
            }
        }
        out
    }

    /// Encodes the plan: `encode_chunk` gives the hidden states [1, 77, D] of one chunk; the
    /// syntax's weighting is applied per chunk and the chunks are concatenated along the
    /// sequence. Identical chunks are encoded once.
    pub fn encode<F>(&self, mut encode_chunk: F) -> crate::Result<EncodedPrompt>
    where
        F: FnMut(&Chunk) -> crate::Result<Tensor>,
    {
        let mut cache: Vec<(ChunkKey, Tensor)> = Vec::new();
        let mut encode = |chunk: &Chunk| -> crate::Result<Tensor> {
            let key: ChunkKey = (
                chunk.ids.clone(),
                chunk
                    .embeddings
                    .iter()
                    .map(|p| (p.position, p.embedding.name.clone()))
                    .collect(),
            );
            if let Some((_, z)) = cache.iter().find(|(k, _)| *k == key) {
                return Ok(z.clone());
            }
            let z = encode_chunk(chunk)?;
            cache.push((key, z.clone()));
            Ok(z)
        };
        let z_empty = match self.syntax {
            PromptSyntax::Comfy => Some(encode(&self.empty)?),
            _ => None,
        };
        let mut parts = Vec::new();
        for part in &self.parts {
            let multiplicities = part.multiplicities();
            let mut per_text: Vec<Vec<Tensor>> = vec![Vec::new(); part.texts.len()];
            for index in 0..part.chunk_count() {
                let chunks: Vec<&Chunk> = part.chunks.iter().map(|c| &c.chunks[index]).collect();
                let zs = chunks
                    .iter()
                    .map(|c| encode(c))
                    .collect::<crate::Result<Vec<_>>>()?;
                let weighted = match (self.syntax, &z_empty) {
                    (PromptSyntax::A1111, _) => {
                        let variants: Vec<Variant> = zs
                            .iter()
                            .zip(&chunks)
                            .zip(&multiplicities)
                            .map(|((z, c), &m)| Variant {
                                z,
                                weights: &c.weights,
                                multiplicity: m,
                            })
                            .collect();
                        a1111_original(&variants)?
                    }
                    (PromptSyntax::Comfy, Some(empty)) => zs
                        .iter()
                        .zip(&chunks)
                        .map(|(z, c)| comfy_weighting(z, empty, &c.weights))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                    _ => zs,
                };
                for (text, z) in weighted.into_iter().enumerate() {
                    per_text[text].push(z);
                }
            }
            let conds = per_text
                .iter()
                .map(|zs| Tensor::cat(zs, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            parts.push(EncodedPart {
                weight: part.weight,
                schedule: part.schedule.clone(),
                conds,
            });
        }
        Ok(EncodedPrompt { parts })
    }

    /// The hidden states of the empty prompt (what [`super::weighting::pad_prompts`] pads
    /// with), encoded by `encode_chunk`.
    pub fn encode_empty<F>(&self, mut encode_chunk: F) -> crate::Result<Tensor>
    where
        F: FnMut(&Chunk) -> crate::Result<Tensor>,
    {
        encode_chunk(&self.empty)
    }
}

/// An encoded sub-prompt.
#[derive(Debug, Clone)]
pub struct EncodedPart {
    /// Composable-diffusion weight.
    pub weight: f64,
    /// `(end_step, index into conds)`.
    pub schedule: Vec<(usize, usize)>,
    /// One context [1, 77 * chunks, D] per distinct text.
    pub conds: Vec<Tensor>,
}

/// An encoded prompt: what the denoise loop conditions on.
#[derive(Debug, Clone)]
pub struct EncodedPrompt {
    /// The sub-prompts (one unless the prompt uses `AND`).
    pub parts: Vec<EncodedPart>,
}

impl EncodedPrompt {
    /// The contexts and weights to use at sampling step `step` (0-based), one per sub-prompt.
    pub fn at_step(&self, step: usize) -> Vec<(&Tensor, f64)> {
        self.parts
            .iter()
            .map(|part| {
                let entry = entry_index(part.schedule.iter().map(|&(end, _)| end), step);
                (&part.conds[part.schedule[entry].1], part.weight)
            })
            .collect()
    }

    /// Whether every step uses the same conditioning (no editing, alternation or `AND`).
    pub fn is_static(&self) -> bool {
        self.parts.len() == 1 && self.parts[0].conds.len() == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> ClipTokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/tiny-sd/tokenizer");
        ClipTokenizer::from_dir(&dir).unwrap()
    }

    #[test]
    fn plans_schedules_and_and() {
        let tok = tokenizer();
        let opts = PlanOptions::new(PromptSyntax::A1111, 3);
        let plan = PromptPlan::new("[red|blue] fox AND snow :0.5", &opts, &tok, None).unwrap();
        assert_eq!(plan.parts.len(), 2);
        let fox = &plan.parts[0];
        assert_eq!(fox.texts, ["red fox", "blue fox"]);
        assert_eq!(fox.multiplicities(), [2, 1]);
        let steps: Vec<usize> = (0..3).map(|s| fox.text_at_step(s)).collect();
        assert_eq!(steps, [0, 0, 1]);
        assert_eq!(
            (plan.parts[1].texts[0].as_str(), plan.parts[1].weight),
            (" snow", 0.5)
        );
        // The negative prompt keeps `AND` and `:0.5` as text.
        let neg = PlanOptions {
            negative: true,
            ..opts
        };
        let plan = PromptPlan::new("a AND b:0.5", &neg, &tok, None).unwrap();
        assert_eq!(plan.parts[0].texts, ["a AND b:0.5"]);
        // Comfy and plain have no editing.
        for syntax in [PromptSyntax::Comfy, PromptSyntax::Plain] {
            let plan =
                PromptPlan::new("[a:b:1] AND c", &PlanOptions::new(syntax, 3), &tok, None).unwrap();
            assert_eq!(plan.parts[0].texts, ["[a:b:1] AND c"]);
        }
    }

    #[test]
    fn variants_share_a_chunk_count() {
        let tok = tokenizer();
        let long = vec!["fox"; 80].join(" ");
        let prompt = format!("[{long}:cat:2]");
        let plan = PromptPlan::new(
            &prompt,
            &PlanOptions::new(PromptSyntax::A1111, 4),
            &tok,
            None,
        )
        .unwrap();
        let part = &plan.parts[0];
        assert_eq!(part.texts.len(), 2);
        assert_eq!(part.chunk_count(), 2);
        assert_eq!(part.chunks[1].chunks[1].ids, plan.empty.ids);
    }
}
