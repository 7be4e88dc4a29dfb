//! How a family with CLIP text encoders turns a prompt into [`ScheduledConditioning`]: plan the
//! prompt in the job's syntax ([`plan`]), encode the plan with each CLIP encoder
//! ([`encode_with`]), then build each distinct text's [`super::Conditioning`] with
//! [`ScheduledConditioning::from_prompt`] and [`finish`]. SD 1.x/2.x uses one encoder
//! ([`super::sd`]); a family with two (SDXL) encodes the same plan with each, in its
//! [`EncoderSlot`], and concatenates the contexts on the last axis.

use candle_core::{Device, Tensor};

use super::{EncodeOptions, ScheduledConditioning};
use crate::models::clip::ClipTextModel;
use crate::prompt::encode::clip_chunk;
use crate::prompt::{EncodedPrompt, EncoderSlot, PlanOptions, PromptPlan, PromptSyntax};
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
