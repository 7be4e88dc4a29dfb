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
        let Some(p) = self.prepare(xs, shift)? else {
            return self.plain_forward(xs, shift, then_silu);
        };
        let group_len = p.cpg * p.hw;
        let mut out = zeros(p.dims.iter().product());
        with_f32(xs, |x| {
            out.par_chunks_mut(group_len)
                .zip(x.par_chunks(group_len))
                .enumerate()
                .for_each(|(bg, (out, x))| {
                    simd(
                        #[inline(always)]
                        || {
                            let (mut scale, mut offset) = (vec![0f32; p.cpg], vec![0f32; p.cpg]);
                            p.coefficients(bg, x, &mut scale, &mut offset);
                            for ch in 0..p.cpg {
                                let range = ch * p.hw..(ch + 1) * p.hw;
                                let (src, dst) = (&x[range.clone()], &mut out[range]);
                                normalize(src, dst, scale[ch], offset[ch], then_silu);
                            }
                        },
                    );
                });
        })?;
        Tensor::from_vec(out, p.dims, xs.device())
    }

    /// The norm of `xs` (with `shift` and `then_silu` as in [`forward`](Self::forward)) as the
    /// per-(image, channel) map it applies, for a consumer to apply as it reads `xs`; `None`
    /// where [`forward`](Self::forward) would not take its fast path.
    pub fn affine(
        &self,
        xs: &Tensor,
        shift: Option<&Tensor>,
        then_silu: bool,
    ) -> Result<Option<ChannelAffine>> {
        let Some(p) = self.prepare(xs, shift)? else {
            return Ok(None);
        };
        let n = p.dims[0] * p.dims[1];
        let (mut scale, mut offset) = (vec![0f32; n], vec![0f32; n]);
        with_f32(xs, |x| {
            scale
                .par_chunks_mut(p.cpg)
                .zip(offset.par_chunks_mut(p.cpg))
                .zip(x.par_chunks(p.cpg * p.hw))
                .enumerate()
                .for_each(|(bg, ((scale, offset), x))| {
                    simd(
                        #[inline(always)]
                        || p.coefficients(bg, x, scale, offset),
                    )
                });
        })?;
        Ok(Some(ChannelAffine {
            scale,
            offset,
            silu: then_silu,
        }))
    }

    /// What the fast path needs, `None` where it does not apply (not a CPU f32 tensor of at
    /// least 3 dims whose channels match the weights and divide into the groups).
    fn prepare(&self, xs: &Tensor, shift: Option<&Tensor>) -> Result<Option<Prepared>> {
        let dims = xs.dims().to_vec();
        if !fast(xs) || dims.len() < 3 || dims[1] % self.groups != 0 {
            return Ok(None);
        }
        let (b, c) = (dims[0], dims[1]);
        let cpg = c / self.groups;
        if self.weight.dim(0)? != c {
            return Ok(None);
        }
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
        Ok(Some(Prepared {
            hw: dims[2..].iter().product(),
            dims,
            cpg,
            groups: self.groups,
            gamma: to_vec(&self.weight)?,
            beta: to_vec(&self.bias)?,
            shift,
            eps: self.eps,
        }))
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

/// The inputs of the fast path for one tensor.
struct Prepared {
    dims: Vec<usize>,
    hw: usize,
    cpg: usize,
    groups: usize,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    shift: Option<Vec<f32>>,
    eps: f64,
}

impl Prepared {
    /// The statistics of group `bg` (image `bg / groups`), whose values are `x` (`cpg` channels
    /// of `hw`), as each channel's `scale` and `offset`: the norm of a value `v` of channel `ch`
    /// is `v * scale[ch] + offset[ch]`.
    #[inline(always)]
    fn coefficients(&self, bg: usize, x: &[f32], scale: &mut [f32], offset: &mut [f32]) {
        let (cpg, hw, c) = (self.cpg, self.hw, self.dims[1]);
        let c0 = (bg % self.groups) * cpg;
        let first = (bg / self.groups) * c + c0;
        let sh = |ch: usize| self.shift.as_ref().map_or(0.0, |s| s[first + ch]);
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
        let rstd = 1.0 / (sq / n + self.eps).sqrt();
        for ch in 0..cpg {
            let g = self.gamma[c0 + ch] as f64;
            scale[ch] = (rstd * g) as f32;
            offset[ch] = (self.beta[c0 + ch] as f64 + (sh(ch) as f64 - mean) * rstd * g) as f32;
        }
    }
}

/// The map a norm applies to each (image, channel) plane of its input, `silu?(v * scale +
/// offset)` (`scale` and `offset` indexed by image · channels + channel), from
/// [`GroupNorm::affine`].
#[derive(Debug, Clone)]
pub struct ChannelAffine {
    scale: Vec<f32>,
    offset: Vec<f32>,
    silu: bool,
}

impl ChannelAffine {
    /// Applies the map of plane `plane` to the values `src`, into `dst`.
    #[inline(always)]
    pub(super) fn apply(&self, plane: usize, src: &[f32], dst: &mut [f32]) {
        normalize(src, dst, self.scale[plane], self.offset[plane], self.silu);
    }

    /// How many planes it maps.
    pub(super) fn planes(&self) -> usize {
        self.scale.len()
    }
}

/// `dst = silu?(src * scale + offset)`, the one place both the norm and its consumers compute it
/// (so that a consumer applying [`ChannelAffine`] gets the norm's values bit for bit).
#[inline(always)]
fn normalize(src: &[f32], dst: &mut [f32], scale: f32, offset: f32, then_silu: bool) {
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
