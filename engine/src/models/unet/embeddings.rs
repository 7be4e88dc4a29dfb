//! Timestep embedding: diffusers' `Timesteps` (sinusoidal) and `TimestepEmbedding` (MLP).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::gguf::GgufWeights;
use crate::models::linear::Linear;

/// Sinusoidal embedding of `timestep` for `batch` samples, width `dim`, computed in f32 in the
/// same order as diffusers' `get_timestep_embedding` so fractional timesteps agree too.
pub fn timestep_embedding(
    timestep: f64,
    batch: usize,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Result<Tensor> {
    sinusoidal_embedding(&[timestep as f32], dim, flip_sin_to_cos, freq_shift, device)?
        .repeat((batch, 1))
}

/// diffusers' `get_timestep_embedding` of each of `values`: [values.len(), dim] in f32, one
/// row per value (SDXL embeds every time id this way, `add_time_proj`).
pub fn sinusoidal_embedding(
    values: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let denom = (half as f64 - freq_shift) as f32;
    let log_period = (10000f64).ln() as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-log_period * i as f32 / denom).exp())
        .collect();
    let mut rows = Vec::with_capacity(values.len() * dim);
    for &t in values {
        let (sin, cos): (Vec<f32>, Vec<f32>) = freqs
            .iter()
            .map(|f| {
                let a = t * f;
                (a.sin(), a.cos())
            })
            .unzip();
        let (first, second) = if flip_sin_to_cos {
            (cos, sin)
        } else {
            (sin, cos)
        };
        rows.extend(first);
        rows.extend(second);
        rows.resize(rows.len() + dim - 2 * half, 0.0); // odd widths are zero-padded, as diffusers does
    }
    Tensor::from_vec(rows, (values.len(), dim), device)
}

/// `TimestepEmbedding`: linear, SiLU, linear.
#[derive(Debug)]
pub struct TimestepMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepMlp {
    /// Loads `linear_1` and `linear_2` under `vb` (`time_embedding`), quantized where `q`
    /// holds them.
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        q: Option<&GgufWeights>,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(vb.pp("linear_1"), in_dim, out_dim, true, q)?,
            linear_2: Linear::load(vb.pp("linear_2"), out_dim, out_dim, true, q)?,
        })
    }

    /// Embeds the sinusoidal features, cast to the model's dtype.
    pub fn forward(&self, xs: &Tensor, dtype: DType) -> Result<Tensor> {
        let h = self.linear_1.forward(&xs.to_dtype(dtype)?)?;
        self.linear_2.forward(&candle_nn::ops::silu(&h)?)
    }
}
