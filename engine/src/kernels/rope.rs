//! Per-head RMS norm followed by rotary position embedding, in one pass: what FLUX's attention
//! does to its queries and keys (diffusers' `norm_q`/`norm_k` then `apply_rotary_emb` with
//! `use_real_unbind_dim=-1`). Heads stay in the `[B, S, H·D]` layout the linear layers write
//! and the fused attention reads, so no transpose is needed on either side.
//!
//! The rotation is the interleaved one: each pair `(x[2j], x[2j+1])` of a head turns by the
//! angle whose cosine and sine are `cos[s, j]` and `sin[s, j]`.

use candle_core::{DType, Result, Tensor, D};
use rayon::prelude::*;

use super::math::{simd, sum};
use super::slices::{fast, to_vec, with_f32};

/// Rows (of one head each) handed to one rayon task.
const ROWS_PER_TASK: usize = 64;

/// `rope(rms_norm(x) · weight)` per head: `x` is `[B, S, heads·D]`, `weight` `[D]`, `cos` and
/// `sin` `[S, D/2]` (f32); returns `x`'s shape and dtype. The norm is
/// `x / √(mean(x²) + eps)` (torch's `RMSNorm`); everything is computed in f32, as diffusers
/// applies the rotation in f32.
pub fn rms_norm_rope(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (b, s, inner) = x.dims3()?;
    if heads == 0 || inner % heads != 0 || (inner / heads) % 2 != 0 {
        candle_core::bail!("rms_norm_rope: width {inner} does not split into {heads} even heads")
    }
    let d = inner / heads;
    if weight.dims() != [d] || cos.dims() != [s, d / 2] || sin.dims() != [s, d / 2] {
        candle_core::bail!(
            "rms_norm_rope: weight {:?}, cos {:?}, sin {:?} do not fit {s} positions of heads of {d}",
            weight.dims(),
            cos.dims(),
            sin.dims()
        )
    }
    if !(fast(x) && fast(weight) && fast(cos) && fast(sin)) {
        return plain(x, weight, eps, cos, sin, heads);
    }
    let w = to_vec(weight)?;
    let mut out = vec![0f32; x.elem_count()];
    with_f32(x, |x| {
        with_f32(cos, |cos| {
            with_f32(sin, |sin| {
                out.par_chunks_mut(d * ROWS_PER_TASK)
                    .zip(x.par_chunks(d * ROWS_PER_TASK))
                    .enumerate()
                    .for_each(|(t, (out, x))| {
                        simd(
                            #[inline(always)]
                            || {
                                for (r, (out, x)) in
                                    out.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate()
                                {
                                    // Row r of this task is head h of position p.
                                    let p = ((t * ROWS_PER_TASK + r) / heads) % s;
                                    let half = d / 2;
                                    let (c, sn) =
                                        (&cos[p * half..][..half], &sin[p * half..][..half]);
                                    norm_rotate(out, x, &w, eps as f32, c, sn);
                                }
                            },
                        )
                    })
            })
        })
    })???;
    Tensor::from_vec(out, (b, s, inner), x.device())
}

/// One head: RMS norm with `w`, then the interleaved rotation.
#[inline(always)]
fn norm_rotate(out: &mut [f32], x: &[f32], w: &[f32], eps: f32, cos: &[f32], sin: &[f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * v;
    }
    let r = 1.0 / (sum(out) / x.len() as f32 + eps).sqrt();
    for (j, (pair, xs)) in out.chunks_exact_mut(2).zip(x.chunks_exact(2)).enumerate() {
        let a = xs[0] * r * w[2 * j];
        let b = xs[1] * r * w[2 * j + 1];
        pair[0] = a * cos[j] - b * sin[j];
        pair[1] = b * cos[j] + a * sin[j];
    }
}

/// The same with candle's ops, for other devices and dtypes (computed in f32).
fn plain(
    x: &Tensor,
    weight: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (b, s, inner) = x.dims3()?;
    let d = inner / heads;
    let normed = candle_nn::ops::rms_norm(
        &x.to_dtype(DType::F32)?.reshape((b, s, heads, d))?,
        &weight.to_dtype(DType::F32)?,
        eps as f32,
    )?;
    let pairs = normed.reshape((b, s, heads, d / 2, 2))?;
    let a = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let odd = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let cos = cos.to_dtype(DType::F32)?.reshape((1, s, 1, d / 2))?;
    let sin = sin.to_dtype(DType::F32)?.reshape((1, s, 1, d / 2))?;
    let first = (a.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
    let second = (odd.broadcast_mul(&cos)? + a.broadcast_mul(&sin)?)?;
    Tensor::stack(&[first, second], D::Minus1)?
        .reshape((b, s, inner))?
        .to_dtype(x.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_matches_plain_ops() {
        let dev = Device::Cpu;
        let (b, s, heads, d) = (2, 37, 3, 10);
        let x = Tensor::randn(0f32, 1.5, (b, s, heads * d), &dev).unwrap();
        let w = (Tensor::randn(0f32, 0.2, d, &dev).unwrap() + 1.0).unwrap();
        let angles = Tensor::randn(0f32, 2.0, (s, d / 2), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let got = rms_norm_rope(&x, &w, 1e-6, &cos, &sin, heads).unwrap();
        let want = plain(&x, &w, 1e-6, &cos, &sin, heads).unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn rotation_by_zero_is_the_norm_alone() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[3f32, 4.0, 0.0, 0.0]]], &dev).unwrap();
        let w = Tensor::new(&[1f32, 2.0, 1.0, 1.0], &dev).unwrap();
        let cos = Tensor::ones((1, 2), DType::F32, &dev).unwrap();
        let sin = Tensor::zeros((1, 2), DType::F32, &dev).unwrap();
        let got: Vec<f32> = rms_norm_rope(&x, &w, 0.0, &cos, &sin, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // rms = sqrt(25 / 4) = 2.5
        for (g, w) in got.iter().zip([1.2f32, 3.2, 0.0, 0.0]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn quarter_turn_swaps_the_pair() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[1f32, 2.0]]], &dev).unwrap();
        let w = Tensor::ones(2, DType::F32, &dev).unwrap();
        let cos = Tensor::zeros((1, 1), DType::F32, &dev).unwrap();
        let sin = Tensor::ones((1, 1), DType::F32, &dev).unwrap();
        let got: Vec<f32> = rms_norm_rope(&x, &w, 0.0, &cos, &sin, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let r = (2.5f32).sqrt();
        assert!((got[0] + 2.0 / r).abs() < 1e-6 && (got[1] - 1.0 / r).abs() < 1e-6);
    }
}
