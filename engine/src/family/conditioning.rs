//! What a prompt becomes once encoded, for any family: the sequence the denoiser attends to,
//! plus what some families add (SDXL's pooled text embedding and time ids, FLUX's pooled CLIP
//! output). The denoising loop batches these values for classifier-free guidance without
//! knowing which fields a family uses.

use candle_core::Tensor;

use crate::Result;

/// An encoded prompt.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The text sequence: `[batch, tokens, width]`.
    pub context: Tensor,
    /// A pooled text embedding, `[batch, width]` (SDXL, FLUX).
    pub pooled: Option<Tensor>,
    /// Added conditioning such as SDXL's time ids, `[batch, n]`.
    pub added: Option<Tensor>,
}

impl Conditioning {
    /// Conditioning from a text sequence alone (SD 1.x/2.x).
    pub fn from_context(context: Tensor) -> Self {
        Self {
            context,
            pooled: None,
            added: None,
        }
    }

    /// Tokens in the sequence.
    pub fn tokens(&self) -> Result<usize> {
        Ok(self.context.dim(1)?)
    }

    /// Each row repeated `n` times along the batch (one per image of a batch).
    pub fn repeat(&self, n: usize) -> Result<Self> {
        let rep = |t: &Tensor| -> Result<Tensor> {
            let mut dims = vec![1; t.rank()];
            dims[0] = n;
            Ok(t.repeat(dims)?)
        };
        Ok(Self {
            context: rep(&self.context)?,
            pooled: self.pooled.as_ref().map(rep).transpose()?,
            added: self.added.as_ref().map(rep).transpose()?,
        })
    }

    /// `parts` stacked along the batch (e.g. `[uncond; cond]` for guidance). The parts must
    /// have the same fields and sequence lengths.
    pub fn cat(parts: &[&Self]) -> Result<Self> {
        let field = |get: &dyn Fn(&Self) -> Option<&Tensor>| -> Result<Option<Tensor>> {
            let tensors: Vec<&Tensor> = parts.iter().filter_map(|p| get(p)).collect();
            match tensors.len() {
                0 => Ok(None),
                n if n == parts.len() => Ok(Some(Tensor::cat(&tensors, 0)?)),
                _ => Err(crate::Error::invalid(
                    "conditioning",
                    "mixed",
                    "every part must have the same fields to be batched",
                )),
            }
        };
        let contexts: Vec<&Tensor> = parts.iter().map(|p| &p.context).collect();
        Ok(Self {
            context: Tensor::cat(&contexts, 0)?,
            pooled: field(&|p| p.pooled.as_ref())?,
            added: field(&|p| p.added.as_ref())?,
        })
    }
}
