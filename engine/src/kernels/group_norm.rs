//! Single-pass group norm, optionally with a per-channel shift added to the input first and
//! SiLU applied to the output (the `norm -> silu` pair of every resnet).
//!
//! candle's `GroupNorm` makes about eight full passes over the tensor (sum, subtract, square,
//! sum, divide, sqrt, multiply, add), each allocating; here each group is read twice for its
//! statistics (it is small enough to stay in cache) and written once.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::math::{silu, simd};
use super::slices::{fast, to_vec, with_f32, zeros};

/// diffusers' `nn.GroupNorm` (affine), with the same weight names as candle's `group_norm`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    plain: candle_nn::GroupNorm,
}

impl GroupNorm {
    /// Loads `weight` and `bias` of a norm over `channels` channels in `groups` groups.
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        let plain = candle_nn::group_norm(groups, channels, eps, vb.clone())?;
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?,
            groups,
            eps,
            plain,
        })
    }

    /// Normalises `xs` [B, C, ...]. With `shift` [B, C], normalises `xs + shift` (broadcast over
    /// the spatial dims); with `then_silu`, returns `silu(norm(..))`.
    pub fn forward(&self, xs: &Tensor, shift: Option<&Tensor>, then_silu: bool) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        if !fast(xs) || dims.len() < 3 || dims[1] % self.groups != 0 {
            return self.plain_forward(xs, shift, then_silu);
        }
        let (b, c) = (dims[0], dims[1]);
        if self.weight.dim(0)? != c {
            return self.plain_forward(xs, shift, then_silu);
        }
        let hw: usize = dims[2..].iter().product();
        let gamma = to_vec(&self.weight)?;
        let beta = to_vec(&self.bias)?;
        let shift = match shift {
            Some(s) => {
                let s = to_vec(s)?;
                if s.len() != b * c {
                    candle_core::bail!("group norm shift has {} values, want {}", s.len(), b * c)
                }
                Some(s)
            }
            None => None,
        };
        let cpg = c / self.groups;
        let group_len = cpg * hw;
        let mut out = zeros(b * c * hw);
        let eps = self.eps;
        with_f32(xs, |x| {
            out.par_chunks_mut(group_len)
                .zip(x.par_chunks(group_len))
                .enumerate()
                .for_each(|(bg, (out, x))| {
                    let c0 = (bg % self.groups) * cpg;
                    let first = (bg / self.groups) * c + c0;
                    let shift = shift.as_ref().map(|s| &s[first..first + cpg]);
                    let affine = (&gamma[c0..c0 + cpg], &beta[c0..c0 + cpg]);
                    simd(
                        #[inline(always)]
                        || norm_group(x, out, hw, shift, affine, eps, then_silu),
                    );
                });
        })?;
        Tensor::from_vec(out, dims, xs.device())
    }

    fn plain_forward(
        &self,
        xs: &Tensor,
        shift: Option<&Tensor>,
        then_silu: bool,
    ) -> Result<Tensor> {
        let xs = match shift {
            Some(s) => {
                let mut shape = s.dims().to_vec();
                shape.resize(xs.rank(), 1);
                xs.broadcast_add(&s.reshape(shape)?)?
            }
            None => xs.clone(),
        };
        let h = self.plain.forward(&xs)?;
        if then_silu {
            candle_nn::ops::silu(&h)
        } else {
            Ok(h)
        }
    }
}

/// Sum with 16 independent lanes so that the loop vectorises.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for ch in chunks {
        for i in 0..16 {
            acc[i] += f(ch[i]);
        }
    }
    let mut total: f64 = acc.iter().map(|&a| a as f64).sum();
    for &x in tail {
        total += f(x) as f64;
    }
    total
}

/// Normalises one group: `cpg` channels of `hw` values each.
#[inline(always)]
fn norm_group(
    x: &[f32],
    out: &mut [f32],
    hw: usize,
    shift: Option<&[f32]>,
    (gamma, beta): (&[f32], &[f32]),
    eps: f64,
    then_silu: bool,
) {
    let cpg = gamma.len();
    let sh = |ch: usize| shift.map_or(0.0, |s| s[ch]);
    let n = (cpg * hw) as f64;
    let mut sum = 0.0;
    for ch in 0..cpg {
        sum += lane_sum(&x[ch * hw..(ch + 1) * hw], |v| v) + sh(ch) as f64 * hw as f64;
    }
    let mean = sum / n;
    let mut sq = 0.0;
    for ch in 0..cpg {
        let d = (sh(ch) as f64 - mean) as f32;
        sq += lane_sum(&x[ch * hw..(ch + 1) * hw], |v| (v + d) * (v + d));
    }
    let rstd = 1.0 / (sq / n + eps).sqrt();
    for ch in 0..cpg {
        let scale = (rstd * gamma[ch] as f64) as f32;
        let offset = (beta[ch] as f64 + (sh(ch) as f64 - mean) * rstd * gamma[ch] as f64) as f32;
        let (src, dst) = (&x[ch * hw..(ch + 1) * hw], &mut out[ch * hw..(ch + 1) * hw]);
        if then_silu {
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = silu(v * scale + offset);
            }
        } else {
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = v * scale + offset;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::max_diff;
    use candle_core::{DType, Device};

    #[test]
    fn matches_candle_group_norm_with_shift_and_silu() {
        let dev = Device::Cpu;
        let (b, c, h, w, g) = (2, 12, 5, 7, 3);
        let weight = (Tensor::randn(0f32, 1.0, c, &dev).unwrap() + 1.0).unwrap();
        let bias = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let tensors = [("weight", &weight), ("bias", &bias)]
            .map(|(k, v)| (k.to_string(), v.clone()))
            .into();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let norm = GroupNorm::new(vb, g, c, 1e-5).unwrap();
        let plain = candle_nn::GroupNorm::new(weight, bias, c, g, 1e-5).unwrap();
        let xs = (Tensor::randn(0f32, 3.0, (b, c, h, w), &dev).unwrap() + 0.5).unwrap();
        let shift = Tensor::randn(0f32, 1.0, (b, c), &dev).unwrap();

        let want = plain.forward(&xs).unwrap();
        assert!(max_diff(&norm.forward(&xs, None, false).unwrap(), &want) < 1e-5);

        let shifted = xs
            .broadcast_add(&shift.reshape((b, c, 1, 1)).unwrap())
            .unwrap();
        let want = candle_nn::ops::silu(&plain.forward(&shifted).unwrap()).unwrap();
        let got = norm.forward(&xs, Some(&shift), true).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
    }
}
