//! Scaled dot-product attention, shared by the UNet's transformer blocks and the VAE's
//! mid-block attention.

use candle_core::{Result, Tensor};

/// Multi-head attention of `q` [B, Sq, H·D] over `k`, `v` [B, Sk, H·D] with `heads` heads;
/// returns [B, Sq, H·D]. Softmax runs in f32 whatever the input dtype (diffusers' upcast).
/// On CPU in f32 the queries are processed in chunks (see [`crate::kernels::attention`]), so
/// the full score matrix is never held.
pub fn scaled_dot_product(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    crate::kernels::attention(q, k, v, heads)
}
