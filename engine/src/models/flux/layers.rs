//! The small layers FLUX is built from: its linear projection (one type for all of them),
//! the linear-SiLU-linear embedders, the affine-free layer norm and the adaptive
//! ("modulated") norms that condition every block on the timestep embedding.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::gguf::GgufWeights;

/// Every linear layer of the transformer. Building them all here keeps one place where a
/// quantized matrix (GGUF) can later take the dense one's place.
#[derive(Debug, Clone)]
pub struct Proj {
    inner: crate::models::linear::Linear,
}

/// Where linear layers may take quantized blocks from (a GGUF transformer), by diffusers name.
pub type Quant<'a> = Option<&'a GgufWeights>;

impl Proj {
    /// Loads `weight` `[out, in]` and `bias` `[out]` under `vb` (every FLUX projection has a
    /// bias); the weight's quantized blocks from `q` when it holds them.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, q: Quant) -> Result<Self> {
        Ok(Self {
            inner: crate::models::linear::Linear::load(vb, in_dim, out_dim, true, q)?,
        })
    }

    /// `x · Wᵀ + b` over the last dim of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}

/// diffusers' `TimestepEmbedding` and `PixArtAlphaTextProjection` (act `silu`): linear, SiLU,
/// linear, under `linear_1` and `linear_2`.
#[derive(Debug, Clone)]
pub struct Mlp {
    linear_1: Proj,
    linear_2: Proj,
}

impl Mlp {
    /// Loads `linear_1` (`in_dim` to `out_dim`) and `linear_2` (`out_dim` to `out_dim`).
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, q: Quant) -> Result<Self> {
        Ok(Self {
            linear_1: Proj::new(vb.pp("linear_1"), in_dim, out_dim, q)?,
            linear_2: Proj::new(vb.pp("linear_2"), out_dim, out_dim, q)?,
        })
    }

    /// `linear_2(silu(linear_1(x)))`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = candle_nn::ops::silu(&self.linear_1.forward(x)?)?;
        self.linear_2.forward(&h)
    }
}

/// `LayerNorm(elementwise_affine=False, eps)`: normalizes the last dim, no scale or shift.
#[derive(Debug, Clone)]
pub struct PlainNorm {
    ones: Tensor,
    zeros: Tensor,
    eps: f64,
}

impl PlainNorm {
    /// A norm over `dim` values in `dtype` on `vb`'s device.
    pub fn new(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            ones: Tensor::ones(dim, vb.dtype(), vb.device())?,
            zeros: Tensor::zeros(dim, vb.dtype(), vb.device())?,
            eps,
        })
    }

    /// `(x - mean) / √(var + eps)` over the last dim.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.ones, &self.zeros, self.eps as f32)
    }

    /// `norm(x) · (1 + scale) + shift`, with `scale` and `shift` `[B, C]` per sample.
    pub fn modulate(&self, x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
        let scale = (scale + 1.0)?.unsqueeze(1)?;
        self.forward(x)?
            .broadcast_mul(&scale)?
            .broadcast_add(&shift.unsqueeze(1)?)
    }
}

/// `x + gate · y`, with `gate` `[B, C]` per sample (the adaLN-Zero gated residual).
pub fn gated_add(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    x + y.broadcast_mul(&gate.unsqueeze(1)?)?
}

/// The adaptive norm's projection of the conditioning: `linear(silu(temb))` split into
/// `chunks` equal parts `[B, C]` (diffusers' `AdaLayerNormZero` (6), `AdaLayerNormZeroSingle`
/// (3), `AdaLayerNormContinuous` (2)). Takes `silu(temb)`, computed once per forward.
#[derive(Debug, Clone)]
pub struct Modulation {
    linear: Proj,
    chunks: usize,
}

impl Modulation {
    /// Loads `linear` (`dim` to `chunks · dim`) under `vb`.
    pub fn new(vb: VarBuilder, dim: usize, chunks: usize, q: Quant) -> Result<Self> {
        Ok(Self {
            linear: Proj::new(vb.pp("linear"), dim, chunks * dim, q)?,
            chunks,
        })
    }

    /// The `chunks` parts of `linear(silu_temb)`, in diffusers' order.
    pub fn forward(&self, silu_temb: &Tensor) -> Result<Vec<Tensor>> {
        let emb = self.linear.forward(silu_temb)?;
        let width = emb.dim(D::Minus1)? / self.chunks;
        (0..self.chunks)
            .map(|i| emb.narrow(D::Minus1, i * width, width))
            .collect()
    }
}

/// diffusers' `FeedForward(activation_fn="gelu-approximate")`: `net.0.proj` (to 4x the width),
/// tanh-approximated GELU, `net.2`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj: Proj,
    out: Proj,
}

impl FeedForward {
    /// Loads `net.0.proj` and `net.2` under `vb` for a block of width `dim`.
    pub fn new(vb: VarBuilder, dim: usize, q: Quant) -> Result<Self> {
        Ok(Self {
            proj: Proj::new(vb.pp("net.0.proj"), dim, 4 * dim, q)?,
            out: Proj::new(vb.pp("net.2"), 4 * dim, dim, q)?,
        })
    }

    /// `net.2(gelu_tanh(net.0.proj(x)))`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.proj.forward(x)?.gelu()?)
    }
}

/// `RMSNorm(dim, eps)` weight of a query or key norm, loaded as `[head_dim]`.
pub fn norm_weight(vb: VarBuilder, head_dim: usize) -> Result<Tensor> {
    vb.get(head_dim, "weight")?.to_dtype(DType::F32)
}
