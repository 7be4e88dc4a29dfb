//! What conditions FLUX besides the text tokens: the timestep, guidance and pooled-text
//! embedding (diffusers' `CombinedTimestep[Guidance]TextProjEmbeddings`) and the rotary
//! position table over text and image token ids (`FluxPosEmbed`).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::ROPE_THETA;
use super::layers::{Mlp, Quant};
use crate::models::unet::embeddings::timestep_embedding;

/// Width of the sinusoidal timestep features (diffusers' `Timesteps(num_channels=256)`).
const TIME_FEATURES: usize = 256;

/// `time_text_embed`: `timestep_embedder(t)` + `guidance_embedder(g)` (dev only) +
/// `text_embedder(pooled)`.
#[derive(Debug, Clone)]
pub struct TimeTextEmbed {
    timestep_embedder: Mlp,
    guidance_embedder: Option<Mlp>,
    text_embedder: Mlp,
}

impl TimeTextEmbed {
    /// Loads the embedders under `vb` (`time_text_embed`), the guidance one when `guidance`.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        pooled_dim: usize,
        guidance: bool,
        q: Quant,
    ) -> Result<Self> {
        Ok(Self {
            timestep_embedder: Mlp::new(vb.pp("timestep_embedder"), TIME_FEATURES, dim, q)?,
            guidance_embedder: if guidance {
                Some(Mlp::new(vb.pp("guidance_embedder"), TIME_FEATURES, dim, q)?)
            } else {
                None
            },
            text_embedder: Mlp::new(vb.pp("text_embedder"), pooled_dim, dim, q)?,
        })
    }

    /// The conditioning `[B, dim]` for `timestep` `[B]` (sigma in 0..1, scaled by 1000 here as
    /// diffusers does), `guidance` `[B]` (required exactly when the model embeds guidance) and
    /// `pooled` `[B, pooled_dim]`.
    pub fn forward(
        &self,
        timestep: &Tensor,
        guidance: Option<&Tensor>,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        let dtype = pooled.dtype();
        let t = sinusoid(timestep, pooled.device())?.to_dtype(dtype)?;
        let mut emb = self.timestep_embedder.forward(&t)?;
        match (&self.guidance_embedder, guidance) {
            (Some(embedder), Some(g)) => {
                let g = sinusoid(g, pooled.device())?.to_dtype(dtype)?;
                emb = (emb + embedder.forward(&g)?)?;
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!(
                "this FLUX transformer embeds a guidance scale (guidance_embeds, as FLUX.1-dev); \
                 pass one"
            ),
            (None, Some(_)) => candle_core::bail!(
                "this FLUX transformer has no guidance embedding (as FLUX.1-schnell); pass no \
                 guidance"
            ),
        }
        emb + self.text_embedder.forward(pooled)?
    }
}

/// `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)` of `values · 1000` (each
/// value scaled in f32, as diffusers scales the f32 tensor), one row per value: `[B, 256]`.
fn sinusoid(values: &Tensor, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = values.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let rows = values
        .iter()
        .map(|&v| timestep_embedding((v * 1000.0) as f64, 1, TIME_FEATURES, true, 0.0, device))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&rows, 0)
}

/// The rotary table for one joint sequence: `cos` and `sin` `[S, head_dim / 2]` (f32), row `s`
/// for token `s` of `[text tokens, image tokens]`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    /// Cosines of the rotation angles.
    pub cos: Tensor,
    /// Sines of the rotation angles.
    pub sin: Tensor,
}

impl RopeTable {
    /// diffusers' `FluxPosEmbed(theta=10000, axes_dim)` of `ids` `[S, axes]` (float positions):
    /// head pair `j` of axis `a` turns by `ids[s, a] · θ^(-2j / axes_dim[a])`, in f64 then
    /// rounded to f32 as diffusers does on CPU.
    pub fn new(ids: &Tensor, axes_dim: &[usize]) -> Result<Self> {
        let (s, n_axes) = ids.dims2()?;
        if n_axes != axes_dim.len() {
            candle_core::bail!(
                "position ids have {n_axes} axes but axes_dims_rope lists {}",
                axes_dim.len()
            )
        }
        let device = ids.device().clone();
        let ids: Vec<Vec<f32>> = ids.to_dtype(DType::F32)?.to_vec2()?;
        let half: usize = axes_dim.iter().sum::<usize>() / 2;
        let mut freqs = Vec::with_capacity(half);
        for (axis, &dim) in axes_dim.iter().enumerate() {
            for j in (0..dim).step_by(2) {
                freqs.push((axis, 1.0 / ROPE_THETA.powf(j as f64 / dim as f64)));
            }
        }
        let mut cos = Vec::with_capacity(s * half);
        let mut sin = Vec::with_capacity(s * half);
        for row in &ids {
            for &(axis, freq) in &freqs {
                let angle = row[axis] as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (s, half), &device)?,
            sin: Tensor::from_vec(sin, (s, half), &device)?,
        })
    }

    /// Rows `start..start + len` (one part of the joint sequence).
    pub fn rows(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.narrow(0, start, len)?,
            self.sin.narrow(0, start, len)?,
        ))
    }
}
