//! Encoding one [`Chunk`] with beeswax's CLIP text encoder: token embeddings, the chunk's
//! textual-inversion vectors written over their placeholder positions, then the transformer.

use candle_core::{Device, Tensor};

use super::chunks::Chunk;
use super::embeddings::EncoderSlot;
use crate::models::clip::{ClipOutput, ClipTextModel};

/// The hidden states [1, S, D] of `chunk` after `layers` transformer layers and the final
/// LayerNorm (see [`ClipTextModel::forward`]), with every embedding's vectors for `slot` in
/// place of its placeholder tokens. An embedding of another width is an error naming both.
pub fn clip_chunk(
    model: &ClipTextModel,
    chunk: &Chunk,
    slot: EncoderSlot,
    layers: usize,
    device: &Device,
) -> crate::Result<Tensor> {
    let embeds = chunk_embeddings(model, chunk, slot, device)?;
    Ok(model.forward_embeddings(&embeds, layers)?)
}

/// [`clip_chunk`] as [`ClipTextModel::encode`] gives it: the states after `layers` layers,
/// through the final LayerNorm only when `final_layer_norm` (SDXL takes them without), and the
/// pooled and projected outputs of the whole model (SDXL's and FLUX's pooled conditioning).
pub fn clip_chunk_output(
    model: &ClipTextModel,
    chunk: &Chunk,
    slot: EncoderSlot,
    layers: usize,
    final_layer_norm: bool,
    device: &Device,
) -> crate::Result<ClipOutput> {
    let embeds = chunk_embeddings(model, chunk, slot, device)?;
    let ids = Tensor::new(chunk.ids.as_slice(), device)?.unsqueeze(0)?;
    Ok(model.encode_embeddings(&embeds, &ids, layers, final_layer_norm)?)
}

/// The token embeddings [1, S, D] of `chunk`, its embeddings' vectors for `slot` written over
/// their placeholder positions.
fn chunk_embeddings(
    model: &ClipTextModel,
    chunk: &Chunk,
    slot: EncoderSlot,
    device: &Device,
) -> crate::Result<Tensor> {
    let ids = Tensor::new(chunk.ids.as_slice(), device)?.unsqueeze(0)?;
    let embeds = model.embed_tokens(&ids)?;
    if chunk.embeddings.is_empty() {
        return Ok(embeds);
    }
    let width = embeds.dim(2)?;
    let mut rows: Vec<Tensor> = Vec::new();
    let mut at = 0;
    let mut placements: Vec<_> = chunk.embeddings.iter().collect();
    placements.sort_by_key(|p| p.position);
    for placement in placements {
        let vectors = placement
            .embedding
            .vectors_for(slot, width)?
            .to_device(device)?
            .to_dtype(embeds.dtype())?;
        let n = vectors
            .dim(0)?
            .min(chunk.ids.len().saturating_sub(placement.position));
        if placement.position > at {
            rows.push(embeds.narrow(1, at, placement.position - at)?);
        }
        rows.push(vectors.narrow(0, 0, n)?.unsqueeze(0)?);
        at = placement.position + n;
    }
    if at < chunk.ids.len() {
        rows.push(embeds.narrow(1, at, chunk.ids.len() - at)?);
    }
    Ok(Tensor::cat(&rows, 1)?)
}
