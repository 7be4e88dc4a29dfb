//! diffusers' `FluxTransformer2DModel` (FLUX.1-dev and -schnell), built from
//! `transformer/config.json`, and the 2x2 latent packing and position ids of `FluxPipeline`.
//!
//! The model is written in diffusers' tensor names. Checkpoints in the original Black Forest
//! Labs layout (single files, GGUF) load through [`bfl::var_builder`], a key map that splits
//! the fused `qkv`/`linear1` matrices by rows and swaps the final modulation's halves.
//!
//! A forward pass: the packed latents and the T5 states are embedded to the model width
//! (`x_embedder`, `context_embedder`); the timestep, the guidance scale (dev) and the pooled
//! CLIP embedding make one conditioning vector; double-stream blocks update text and image
//! tokens with their own weights and a joint attention; single-stream blocks update the joint
//! sequence; `norm_out` and `proj_out` turn the image tokens into the predicted flow. Attention
//! positions are rotary over 3 axes (`axes_dims_rope`): text tokens at 0, image token `(r, c)`
//! at `(0, r, c)`.

pub mod bfl;
mod blocks;
pub mod config;
mod embeddings;
mod layers;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use blocks::{BlockShape, DoubleBlock, SingleBlock};
pub use config::FluxConfig;
use embeddings::{RopeTable, TimeTextEmbed};
use layers::{Modulation, PlainNorm, Proj, Quant};

use crate::gguf::GgufWeights;

/// The FLUX.1 transformer: predicts the flow (velocity) of packed latents.
#[derive(Debug, Clone)]
pub struct FluxTransformer2DModel {
    x_embedder: Proj,
    context_embedder: Proj,
    time_text_embed: TimeTextEmbed,
    transformer_blocks: Vec<DoubleBlock>,
    single_transformer_blocks: Vec<SingleBlock>,
    norm_out: Modulation,
    norm_out_ln: PlainNorm,
    proj_out: Proj,
    config: FluxConfig,
}

impl FluxTransformer2DModel {
    /// Builds the model described by `config` from the weights in `vb` (diffusers names; wrap
    /// a BFL-layout file with [`bfl::var_builder`]).
    pub fn new(vb: VarBuilder, config: &FluxConfig) -> Result<Self> {
        Self::load(vb, config, None)
    }

    /// [`new`](Self::new) with the linear layers multiplying the quantized blocks `q` holds
    /// (a GGUF transformer served in diffusers names, see [`crate::gguf::Slice`]); layers it
    /// keeps as floats, and everything else, come from `vb`.
    pub fn new_quantized(vb: VarBuilder, config: &FluxConfig, q: &GgufWeights) -> Result<Self> {
        Self::load(vb, config, Some(q))
    }

    fn load(vb: VarBuilder, config: &FluxConfig, q: Quant) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let dim = config.inner_dim();
        let shape = BlockShape {
            dim,
            heads: config.num_attention_heads,
            head_dim: config.attention_head_dim,
        };
        let transformer_blocks = (0..config.num_layers)
            .map(|i| DoubleBlock::new(vb.pp(format!("transformer_blocks.{i}")), shape, q))
            .collect::<Result<Vec<_>>>()?;
        let single_transformer_blocks = (0..config.num_single_layers)
            .map(|i| SingleBlock::new(vb.pp(format!("single_transformer_blocks.{i}")), shape, q))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            x_embedder: Proj::new(vb.pp("x_embedder"), config.in_channels, dim, q)?,
            context_embedder: Proj::new(
                vb.pp("context_embedder"),
                config.joint_attention_dim,
                dim,
                q,
            )?,
            time_text_embed: TimeTextEmbed::new(
                vb.pp("time_text_embed"),
                dim,
                config.pooled_projection_dim,
                config.guidance_embeds,
                q,
            )?,
            transformer_blocks,
            single_transformer_blocks,
            norm_out: Modulation::new(vb.pp("norm_out"), dim, 2, q)?,
            norm_out_ln: PlainNorm::new(&vb, dim, 1e-6)?,
            proj_out: Proj::new(vb.pp("proj_out"), dim, config.out_dim(), q)?,
            config: config.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &FluxConfig {
        &self.config
    }

    /// The predicted flow `[B, HW/4, out]` for packed latents `img` `[B, HW/4, 64]` at
    /// positions `img_ids` `[HW/4, 3]` ([`image_ids`]), T5 states `txt` `[B, S, D]` at
    /// `txt_ids` `[S, 3]` ([`text_ids`]), `timestep` `[B]` (the sigma in 0..1, as diffusers
    /// passes `t / 1000`), `guidance` `[B]` (the guidance scale; required by dev, refused by
    /// schnell) and the pooled CLIP embedding `pooled` `[B, pooled_projection_dim]`. Ids of
    /// shape `[1, S, 3]` are accepted too (diffusers' deprecated batched form).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        let (b, si, _) = img.dims3()?;
        let st = txt.dim(1)?;
        let ids = Tensor::cat(&[unbatch(txt_ids)?, unbatch(img_ids)?], 0)?;
        if ids.dim(0)? != st + si || txt.dim(0)? != b {
            candle_core::bail!(
                "FLUX forward: {st} text tokens with {} ids and {si} image tokens with {} ids \
                 (batch {b} and {}); each token needs one id row",
                unbatch(txt_ids)?.dim(0)?,
                unbatch(img_ids)?.dim(0)?,
                txt.dim(0)?
            )
        }
        let rope = RopeTable::new(&ids, &self.config.axes_dims_rope)?;
        let temb = self.time_text_embed.forward(timestep, guidance, pooled)?;
        let silu_temb = candle_nn::ops::silu(&temb)?;

        let mut img = self.x_embedder.forward(img)?;
        let mut txt = self.context_embedder.forward(txt)?;
        for block in &self.transformer_blocks {
            (img, txt) = block.forward(&img, &txt, &silu_temb, &rope)?;
        }
        let mut joint = Tensor::cat(&[txt, img], 1)?;
        for block in &self.single_transformer_blocks {
            joint = block.forward(&joint, &silu_temb, &rope)?;
        }
        let img = joint.narrow(1, st, si)?;
        // AdaLayerNormContinuous: (scale, shift), in that order.
        let m = self.norm_out.forward(&silu_temb)?;
        let img = self.norm_out_ln.modulate(&img, &m[1], &m[0])?;
        self.proj_out.forward(&img)
    }
}

/// `[S, 3]` ids from `[S, 3]` or `[1, S, 3]`.
fn unbatch(ids: &Tensor) -> Result<Tensor> {
    match ids.rank() {
        2 => Ok(ids.clone()),
        3 => ids.get(0),
        r => candle_core::bail!("position ids must be [S, 3]; got rank {r}"),
    }
}

/// FluxPipeline's `_pack_latents`: `[B, C, H, W]` latents to `[B, (H/2)(W/2), 4C]` tokens, each
/// a 2x2 patch (channel-major). `H` and `W` must be even.
pub fn pack_latents(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("FLUX packs 2x2 patches; latents {h}x{w} must have even sides")
    }
    latents
        .reshape(vec![b, c, h / 2, 2, w / 2, 2])?
        .permute([0, 2, 4, 1, 3, 5])?
        .reshape((b, (h / 2) * (w / 2), c * 4))
}

/// FluxPipeline's `_unpack_latents` for a latent of `height` x `width` (see [`latent_size`]):
/// `[B, (H/2)(W/2), 4C]` tokens back to `[B, C, H, W]`.
pub fn unpack_latents(packed: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (b, n, c4) = packed.dims3()?;
    if height % 2 != 0 || width % 2 != 0 || n != (height / 2) * (width / 2) || c4 % 4 != 0 {
        candle_core::bail!(
            "cannot unpack {n} tokens of width {c4} to a {height}x{width} latent (2x2 patches)"
        )
    }
    packed
        .reshape(vec![b, height / 2, width / 2, c4 / 4, 2, 2])?
        .permute([0, 3, 1, 4, 2, 5])?
        .reshape((b, c4 / 4, height, width))
}

/// The latent size FluxPipeline uses for an image of `height` x `width` pixels:
/// `2 · ⌊side / (2 · vae_scale_factor)⌋` per side, so that it packs into 2x2 patches.
pub fn latent_size(height: usize, width: usize, vae_scale_factor: usize) -> (usize, usize) {
    let f = 2 * vae_scale_factor.max(1);
    (2 * (height / f), 2 * (width / f))
}

/// FluxPipeline's `_prepare_latent_image_ids`: `[rows · cols, 3]` f32 positions `(0, r, c)` of
/// the packed tokens, row-major, for a packed grid of `rows` x `cols` (half the latent's sides).
pub fn image_ids(rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(rows * cols * 3);
    for r in 0..rows {
        for c in 0..cols {
            ids.extend_from_slice(&[0.0f32, r as f32, c as f32]);
        }
    }
    Tensor::from_vec(ids, (rows * cols, 3), device)
}

/// FluxPipeline's text ids: `[len, 3]` zeros (every text token sits at the origin).
pub fn text_ids(len: usize, device: &Device) -> Result<Tensor> {
    Tensor::zeros((len, 3), DType::F32, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_and_matches_diffusers_order() {
        let dev = Device::Cpu;
        let latents = Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 6.0, &dev)
            .unwrap()
            .reshape((2, 3, 4, 6))
            .unwrap();
        let packed = pack_latents(&latents).unwrap();
        assert_eq!(packed.dims(), &[2, 6, 12]);
        // Token 1 is patch (row 0, col 1): channel 0's 2x2 block at x = 2..4 first.
        let token: Vec<f32> = packed.get(0).unwrap().get(1).unwrap().to_vec1().unwrap();
        assert_eq!(&token[..4], &[2.0, 3.0, 8.0, 9.0]);
        assert_eq!(token[4], 26.0);
        let back = unpack_latents(&packed, 4, 6).unwrap();
        let diff = (back - latents).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert!(unpack_latents(&packed, 4, 4).is_err());
        assert!(pack_latents(&Tensor::zeros((1, 1, 3, 4), DType::F32, &dev).unwrap()).is_err());
    }

    #[test]
    fn ids_and_sizes_follow_the_pipeline() {
        let dev = Device::Cpu;
        let ids: Vec<Vec<f32>> = image_ids(2, 3, &dev).unwrap().to_vec2().unwrap();
        assert_eq!(ids[4], vec![0.0, 1.0, 1.0]);
        assert_eq!(ids.len(), 6);
        assert_eq!(text_ids(5, &dev).unwrap().dims(), &[5, 3]);
        assert_eq!(latent_size(1024, 768, 8), (128, 96));
        assert_eq!(latent_size(1000, 760, 8), (124, 94));
    }
}
