//! Scaled dot-product attention, shared by the UNet's transformer blocks and the VAE's
//! mid-block attention.

use candle_core::{Result, Tensor};

/// Multi-head attention of `q` [B, Sq, H·D] over `k`, `v` [B, Sk, H·D] with `heads` heads;
/// returns [B, Sq, H·D]. Softmax runs in f32 whatever the input dtype (diffusers' upcast).
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, sq, inner) = q.dims3()?;
    let sk = k.dim(1)?;
    let head_dim = inner / heads;
    let split = |t: &Tensor, s: usize| -> Result<Tensor> {
        t.reshape((b, s, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q, sq)?, split(k, sk)?, split(v, sk)?);
    let scale = (head_dim as f64).powf(-0.5);
    let dtype = q.dtype();
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(candle_core::DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, sq, inner))
}
