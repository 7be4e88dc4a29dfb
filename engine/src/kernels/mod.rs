//! Hand-written CPU kernels for the places where plain candle loses time or memory on Stable
//! Diffusion (see `../shared/notes/performance-profile.md`): 3x3 convolutions by Winograd's
//! F(2x2, 3x3) on larger maps and as one GEMM on the native weight layout otherwise,
//! single-pass group norm (+ SiLU), fused GEGLU, bias and residual adds folded into one pass,
//! a fused block attention that never holds the full score matrix, and FLUX's per-head RMS
//! norm + rotary embedding in one pass.
//!
//! Every kernel takes and returns candle [`Tensor`](candle_core::Tensor)s. The fast paths run
//! on CPU f32 tensors; any other device or dtype falls back to candle's plain ops, so results
//! on GPUs and in f16/bf16 are unchanged. The fast paths compute the same f32 math as
//! diffusers (no reduced precision); each is unit-tested against candle's plain ops.
//!
//! GEMMs go through candle's `matmul`, or, where a kernel multiplies strided blocks inside its
//! own loops (Winograd), through the bounds-checked `gemm` module; both reach the `gemm` crate
//! with its AVX-512 kernels enabled by the workspace's `x86-v4` feature. Attention multiplies
//! on its own register tiles.
//! Elementwise loops are compiled for the best SIMD level at run time through `pulp`'s
//! dispatch (see `math::simd` for what that requires of them), with a scalar fallback.

pub mod amx;
pub mod attention;
pub mod conv;
pub mod elementwise;
mod gemm;
pub mod group_norm;
pub mod malloc;
mod math;
mod narrow_gemm;
mod panels;
pub mod rope;
mod slices;
mod stream;
#[cfg(test)]
mod test_util;
pub mod transpose;
mod widen;
mod winograd;

pub use attention::attention;
pub use conv::{conv2d, conv2d_normed, conv2d_relu, conv2d_upsampled};
pub use elementwise::{geglu, linear};
pub use group_norm::GroupNorm;
pub use rope::rms_norm_rope;
