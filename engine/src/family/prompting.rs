//! How a family with CLIP text encoders turns a prompt into [`ScheduledConditioning`]: plan the
//! prompt in the job's syntax ([`plan`]), encode the plan with each CLIP encoder
//! ([`encode_with`]), then build each distinct text's [`super::Conditioning`] with
//! [`ScheduledConditioning::from_prompt`] and [`finish`]. SD 1.x/2.x uses one encoder
//! ([`super::sd`]); a family with two (SDXL) encodes the same plan with each, in its
//! [`EncoderSlot`], and concatenates the contexts on the last axis ([`encode_stacked`]): the
//! plan is made once, with the first encoder's tokenizer, and each encoder re-pads every chunk
//! with its own pad token (A1111's and ComfyUI's OpenCLIP-G pads with id 0, CLIP-L with the
//! end token).

use candle_core::{Device, Tensor};

use super::{EncodeOptions, ScheduledConditioning};
use crate::models::clip::ClipTextModel;
use crate::prompt::encode::{clip_chunk, clip_chunk_output};
use crate::prompt::{Chunk, EncodedPrompt, EncoderSlot, PlanOptions, PromptPlan, PromptSyntax};
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// One CLIP text encoder as prompts reach it.
#[derive(Debug, Clone, Copy)]
pub struct ClipEncoder<'a> {
    /// The encoder.
    pub model: &'a ClipTextModel,
    /// Which vectors of a textual-inversion embedding it takes.
    pub slot: EncoderSlot,
    /// Where its tensors live.
    pub device: &'a Device,
}

impl ClipEncoder<'_> {
    /// The transformer layers to run for `clip_skip` (A1111 semantics: 1 = all of them); an
    /// error names the valid range.
    pub fn layers(&self, clip_skip: usize) -> Result<usize> {
        let layers = self.model.num_layers();
        if clip_skip == 0 || clip_skip > layers {
            return Err(Error::invalid(
                "clip skip",
                clip_skip,
                format!("must be between 1 and {layers} (the text encoder's layer count)"),
            ));
        }
        Ok(layers + 1 - clip_skip)
    }

    /// The hidden states of every distinct text of `plan` after `layers` layers, weighted as
    /// the plan's syntax says, and the empty prompt's when `with_empty`.
    pub fn encode(
        &self,
        plan: &PromptPlan,
        layers: usize,
        with_empty: bool,
    ) -> Result<(EncodedPrompt, Option<Tensor>)> {
        let chunk = |c: &_| clip_chunk(self.model, c, self.slot, layers, self.device);
        let encoded = plan.encode(chunk)?;
        let empty = if with_empty {
            Some(plan.encode_empty(chunk)?)
        } else {
            None
        };
        Ok((encoded, empty))
    }
}

/// Reads, schedules and tokenizes `prompt` as `options` say (syntax, steps, negative,
/// embeddings). A `plain` prompt longer than the tokenizer's window is cut, with a warning
/// naming the dropped words.
pub fn plan(
    prompt: &str,
    options: &EncodeOptions,
    tokenizer: &ClipTokenizer,
    warnings: &mut Vec<String>,
) -> Result<PromptPlan> {
    let plan_options = PlanOptions {
        negative: options.negative,
        ..PlanOptions::new(options.syntax, options.steps)
    };
    let plan = PromptPlan::new(prompt, &plan_options, tokenizer, options.embeddings)?;
    if options.syntax == PromptSyntax::Plain {
        let dropped = plan
            .parts
            .iter()
            .flat_map(|p| &p.chunks)
            .find_map(|c| c.truncated.as_ref());
        if let Some(dropped) = dropped {
            warnings.push(format!(
                "the prompt is longer than {} tokens; this part was dropped: \"{dropped}\" \
                 (the a1111 and comfy prompt syntaxes encode long prompts in chunks)",
                tokenizer.max_length()
            ));
        }
    }
    Ok(plan)
}

/// Completes `scheduled` with what the denoise loop and the PNG parameters need besides the
/// texts' conditioning: the empty prompt's (for `pad_prompts`) and the embeddings `plan` uses.
pub fn finish(
    mut scheduled: ScheduledConditioning,
    plan: &PromptPlan,
    empty: Option<super::Conditioning>,
) -> ScheduledConditioning {
    scheduled.empty = empty;
    scheduled.embeddings = plan.embeddings();
    scheduled
}

/// One of several CLIP encoders whose states are concatenated along the width (SDXL's CLIP-L
/// and OpenCLIP-G), as the plan's chunks reach it.
#[derive(Debug, Clone, Copy)]
pub struct StackedEncoder<'a> {
    /// The encoder, its embedding slot and device.
    pub clip: ClipEncoder<'a>,
    /// Its tokenizer: the plan's chunks are re-padded with its pad token.
    pub tokenizer: &'a ClipTokenizer,
    /// Transformer layers to run.
    pub layers: usize,
    /// Whether its states go through the final LayerNorm.
    pub final_layer_norm: bool,
    /// Whether its projected pooled output conditions the denoiser.
    pub pooled: bool,
}

/// A plan encoded by [`encode_stacked`].
#[derive(Debug, Clone)]
pub struct StackedPrompt {
    /// Every distinct text's context: the encoders' weighted states, each encoder's chunks
    /// concatenated along the sequence, the encoders along the width.
    pub encoded: EncodedPrompt,
    /// Per sub-prompt, per distinct text: the pooled encoder's projected output of the text's
    /// FIRST chunk, unweighted (A1111's `zs[0].pooled`, ComfyUI's `first_pooled`); `None`
    /// when no encoder is pooled.
    pub pooled: Vec<Vec<Option<Tensor>>>,
    /// The empty prompt's context and pooled output, when asked for.
    pub empty: Option<(Tensor, Option<Tensor>)>,
}

/// `chunk` with every id after its first end token replaced by `pad`.
fn with_pad(chunk: &Chunk, eos: u32, pad: u32) -> Chunk {
    let mut out = chunk.clone();
    if let Some(end) = out.ids.iter().position(|&id| id == eos) {
        for id in &mut out.ids[end + 1..] {
            *id = pad;
        }
    }
    out
}

/// Whether two chunks encode alike (ids and embedding placements).
fn same_chunk(a: &Chunk, b: &Chunk) -> bool {
    a.ids == b.ids
        && a.embeddings.len() == b.embeddings.len()
        && a.embeddings
            .iter()
            .zip(&b.embeddings)
            .all(|(x, y)| x.position == y.position && x.embedding.name == y.embedding.name)
}

/// Encodes `plan` (made with `plan_tokenizer`) with every encoder of `encoders`, in order:
/// each encoder encodes the same chunks re-padded with its own pad token, weights its own
/// states as the plan's syntax says (A1111's mean restoration, ComfyUI's empty-prompt
/// weighting, per encoder), and the contexts are concatenated on the last axis. The pooled
/// output of each distinct text comes from its first chunk. The encoders must share the plan
/// tokenizer's vocabulary (the same start and end ids), as SDXL's do.
pub fn encode_stacked(
    plan: &PromptPlan,
    plan_tokenizer: &ClipTokenizer,
    encoders: &[StackedEncoder],
    with_empty: bool,
) -> Result<StackedPrompt> {
    let eos = plan_tokenizer.eos_id();
    let mut merged: Option<EncodedPrompt> = None;
    let mut pooled = None;
    let mut empty: Option<(Tensor, Option<Tensor>)> = None;
    for (i, encoder) in encoders.iter().enumerate() {
        check_vocabulary(i, encoder.tokenizer, plan_tokenizer)?;
        let pad = encoder.tokenizer.pad_id();
        let clip = encoder.clip;
        let run = |chunk: &Chunk| {
            clip_chunk_output(
                clip.model,
                &with_pad(chunk, eos, pad),
                clip.slot,
                encoder.layers,
                encoder.final_layer_norm,
                clip.device,
            )
        };
        let project = |out: crate::models::clip::ClipOutput| out.text_embeds.unwrap_or(out.pooled);
        let mut outputs: Vec<(Chunk, Tensor)> = Vec::new();
        let encoded = plan.encode(|chunk| {
            let out = run(chunk)?;
            if encoder.pooled {
                outputs.push((chunk.clone(), project(out.clone())));
            }
            Ok(out.states)
        })?;
        if encoder.pooled {
            pooled = Some(first_chunk_pooled(plan, &outputs, |c| {
                Ok(project(run(c)?))
            })?);
        }
        if with_empty {
            let out = run(&plan.empty)?;
            let p = encoder.pooled.then(|| project(out.clone()));
            empty = Some(match empty {
                None => (out.states, p),
                Some((context, q)) => (Tensor::cat(&[&context, &out.states], 2)?, p.or(q)),
            });
        }
        merged = Some(match merged {
            None => encoded,
            Some(acc) => concat_features(acc, encoded)?,
        });
    }
    let encoded = merged.ok_or_else(|| {
        Error::invalid(
            "text encoders",
            0,
            "a prompt needs at least one text encoder",
        )
    })?;
    let pooled = pooled.unwrap_or_else(|| {
        plan.parts
            .iter()
            .map(|p| vec![None; p.texts.len()])
            .collect()
    });
    Ok(StackedPrompt {
        encoded,
        pooled,
        empty,
    })
}

/// Refuses an encoder (the `i`-th) whose tokenizer's start and end ids differ from the plan
/// tokenizer's: the encoders of one model must share a vocabulary.
fn check_vocabulary(i: usize, tokenizer: &ClipTokenizer, plan: &ClipTokenizer) -> Result<()> {
    if (tokenizer.bos_id(), tokenizer.eos_id()) == (plan.bos_id(), plan.eos_id()) {
        return Ok(());
    }
    Err(Error::invalid(
        "text encoder tokenizers",
        format!("encoder {}", i + 1),
        format!(
            "start/end ids ({}, {}) differ from the first tokenizer's ({}, {}); the encoders \
             of one model must share a vocabulary",
            tokenizer.bos_id(),
            tokenizer.eos_id(),
            plan.bos_id(),
            plan.eos_id()
        ),
    ))
}

/// `acc` with `next`'s states (the same plan, another encoder) appended on the feature axis.
fn concat_features(mut acc: EncodedPrompt, next: EncodedPrompt) -> Result<EncodedPrompt> {
    for (a, b) in acc.parts.iter_mut().zip(next.parts) {
        for (x, y) in a.conds.iter_mut().zip(b.conds) {
            *x = Tensor::cat(&[&*x, &y], 2)?;
        }
    }
    Ok(acc)
}

/// The pooled output of every distinct text's first chunk, from the outputs `plan.encode`
/// produced (`encode` for a chunk it did not see).
fn first_chunk_pooled<F>(
    plan: &PromptPlan,
    outputs: &[(Chunk, Tensor)],
    mut encode: F,
) -> Result<Vec<Vec<Option<Tensor>>>>
where
    F: FnMut(&Chunk) -> Result<Tensor>,
{
    plan.parts
        .iter()
        .map(|part| {
            part.chunks
                .iter()
                .map(|chunks| {
                    let first = chunks.chunks.first().unwrap_or(&plan.empty);
                    match outputs.iter().find(|(c, _)| same_chunk(c, first)) {
                        Some((_, p)) => Ok(Some(p.clone())),
                        None => encode(first).map(Some),
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(ids: &[u32]) -> Chunk {
        Chunk {
            ids: ids.to_vec(),
            weights: vec![1.0; ids.len()],
            embeddings: Vec::new(),
        }
    }

    /// OpenCLIP-G's chunks: everything after the first end token (9) becomes its pad (0);
    /// a full chunk (no padding) and the start of the chunk stay as they are.
    #[test]
    fn chunks_take_each_encoders_pad_token() {
        let c = chunk(&[8, 5, 6, 9, 9, 9]);
        assert_eq!(with_pad(&c, 9, 0).ids, [8, 5, 6, 9, 0, 0]);
        assert_eq!(with_pad(&c, 9, 9).ids, c.ids);
        let full = chunk(&[8, 5, 6, 7, 4, 9]);
        assert_eq!(with_pad(&full, 9, 0).ids, full.ids);
        assert!(same_chunk(&c, &c.clone()) && !same_chunk(&c, &full));
    }
}
