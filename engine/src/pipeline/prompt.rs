//! Prompt encoding: tokenizer, then the CLIP text encoder (with CLIP skip).

use candle_core::Tensor;

use super::StableDiffusion;
use crate::{Error, Result};

/// Encodes `prompt` to text-encoder states [1, 77, D]. `clip_skip` follows AUTOMATIC1111:
/// 1 uses the last layer, 2 the one before (diffusers' `clip_skip=1`), and so on; the final
/// LayerNorm is applied either way. A prompt that does not fit adds a warning naming the
/// words that were dropped.
pub fn encode_prompt(
    model: &StableDiffusion,
    prompt: &str,
    clip_skip: usize,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    let layers = model.text_encoder.num_layers();
    if clip_skip == 0 || clip_skip > layers {
        return Err(Error::invalid(
            "clip skip",
            clip_skip,
            format!("must be between 1 and {layers} (the text encoder's layer count)"),
        ));
    }
    let encoding = model.tokenizer.encode(prompt)?;
    if let Some(dropped) = &encoding.truncated {
        warnings.push(format!(
            "the prompt is longer than {} tokens; this part was dropped: \"{dropped}\"",
            model.tokenizer.max_length()
        ));
    }
    let ids = Tensor::new(encoding.ids.as_slice(), &model.device)?.unsqueeze(0)?;
    Ok(model.text_encoder.forward(&ids, layers + 1 - clip_skip)?)
}
