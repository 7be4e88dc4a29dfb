//! [`Linear`]: a linear layer whose weight is either a dense tensor (multiplied by
//! [`crate::kernels::linear`]) or ggml quantized blocks from a GGUF file (multiplied by candle's
//! quantized matmul, which quantizes the activations to 8 bits per block on the fly).
//!
//! Model code builds its linear layers with [`Linear::load`], passing the [`GgufWeights`] of
//! a GGUF denoiser when there is one; with `None` (or a weight stored as a float) it is the
//! dense layer the model always had.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::gguf::GgufWeights;

/// A linear layer `y = x Wᵀ + b` over the last dimension of `x`.
#[derive(Debug, Clone)]
pub enum Linear {
    /// A dense weight (`[out, in]`), multiplied by the CPU kernels.
    Dense(candle_nn::Linear),
    /// Quantized blocks, multiplied without dequantizing them.
    Quantized {
        /// The weight.
        weight: QMatMul,
        /// The bias (`[out]`), if any.
        bias: Option<Tensor>,
        /// Output features.
        out_dim: usize,
    },
}

impl Linear {
    /// The layer under `vb`'s prefix (`weight`, and `bias` if `bias`): quantized when
    /// `quantized` holds that weight in a block type candle multiplies, dense otherwise.
    pub fn load(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        quantized: Option<&GgufWeights>,
    ) -> Result<Self> {
        let name = match vb.prefix() {
            p if p.is_empty() => "weight".to_string(),
            p => format!("{p}.weight"),
        };
        // The weight first (its shape names the layer best in errors), then the bias.
        let quantized = match quantized {
            Some(weights) => weights
                .qmatmul(&name, out_dim, in_dim, vb.device())
                .map_err(candle_core::Error::wrap)?,
            None => None,
        };
        let read_bias = || match bias {
            true => vb.get(out_dim, "bias").map(Some),
            false => Ok(None),
        };
        if let Some(weight) = quantized {
            return Ok(Linear::Quantized {
                weight,
                bias: read_bias()?,
                out_dim,
            });
        }
        let weight = vb.get((out_dim, in_dim), "weight")?;
        Ok(Linear::Dense(candle_nn::Linear::new(weight, read_bias()?)))
    }

    /// Output features.
    pub fn out_dim(&self) -> Result<usize> {
        match self {
            Linear::Dense(lin) => lin.weight().dim(0),
            Linear::Quantized { out_dim, .. } => Ok(*out_dim),
        }
    }

    /// Whether the weight is multiplied quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Linear::Quantized { .. })
    }

    /// `x Wᵀ + b` over the last dimension of `x` (any leading dimensions).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_add(x, None)
    }

    /// GEGLU over this projection (`[.., 2n]` out): the first half times GELU (erf) of the
    /// second, as diffusers' `GEGLU`; fused on the dense CPU path.
    pub fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(lin) => crate::kernels::geglu(lin, x),
            Linear::Quantized { .. } => {
                let h = self.forward(x)?;
                let half = h.dim(candle_core::D::Minus1)? / 2;
                h.narrow(candle_core::D::Minus1, 0, half)?
                    * h.narrow(candle_core::D::Minus1, half, half)?.gelu_erf()?
            }
        }
    }

    /// `x Wᵀ + b + residual`, the sum in one pass on the dense CPU path.
    pub fn forward_add(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Linear::Dense(lin) => crate::kernels::linear(lin, x, residual),
            Linear::Quantized { weight, bias, .. } => {
                let y = weight.forward(&x.contiguous()?)?;
                let y = match bias {
                    Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
                    None => y,
                };
                match residual {
                    Some(r) => y + r,
                    None => Ok(y),
                }
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }
}
