//! Memory-lean multi-head attention: queries are processed in chunks so that the score matrix
//! held at any time is at most [`SCORE_BUDGET`] values (the full matrix is 1 GiB at 64x64
//! latents with batch 2), the `1/sqrt(d)` scale is folded into the softmax, and heads are read
//! and written in place in the `[B, S, heads·D]` layout (no head transposes copied).

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::math::{exp, simd};
use super::slices::{fast, with_f32};

/// Most attention scores alive at once, in f32 values (32 MiB).
pub const SCORE_BUDGET: usize = 8 << 20;

/// Attention of `q` [B, Sq, H·D] over `k`, `v` [B, Sk, H·D] with `heads` heads; returns
/// [B, Sq, H·D]. Softmax runs in f32 whatever the input dtype (diffusers' upcast).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    if !(fast(q) && fast(k) && fast(v)) {
        return plain(q, k, v, heads);
    }
    let (b, sq, inner) = q.dims3()?;
    let sk = k.dim(1)?;
    let d = inner / heads;
    let scale = (d as f64).powf(-0.5) as f32;
    let chunk = (SCORE_BUDGET / (heads * sk).max(1)).clamp(1, sq);
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let mut out = vec![0f32; b * sq * inner];
    let split = |t: &Tensor, i: usize, s: usize| -> Result<Tensor> {
        t.get(i)?.reshape((s, heads, d))?.transpose(0, 1)
    };
    for i in 0..b {
        let qh = split(&q, i, sq)?; // [H, Sq, D], a strided view
        let kt = split(&k, i, sk)?.t()?; // [H, D, Sk]
        let vh = split(&v, i, sk)?; // [H, Sk, D]
        for start in (0..sq).step_by(chunk) {
            let len = chunk.min(sq - start);
            let scores = qh.narrow(1, start, len)?.matmul(&kt)?;
            let probs = softmax_rows(&scores, scale)?;
            drop(scores);
            let o = probs.matmul(&vh)?; // [H, len, D]
            let rows = &mut out[(i * sq + start) * inner..(i * sq + start + len) * inner];
            with_f32(&o, |o| {
                rows.par_chunks_mut(inner).enumerate().for_each(|(r, row)| {
                    for h in 0..heads {
                        row[h * d..(h + 1) * d].copy_from_slice(&o[(h * len + r) * d..][..d]);
                    }
                })
            })?;
        }
    }
    Tensor::from_vec(out, (b, sq, inner), q.device())
}

/// `softmax(scale · x)` over the last dim, in one pass per row.
fn softmax_rows(x: &Tensor, scale: f32) -> Result<Tensor> {
    let n = x.dim(candle_core::D::Minus1)?;
    let mut out = vec![0f32; x.elem_count()];
    with_f32(x, |x| {
        out.par_chunks_mut(n * 8)
            .zip(x.par_chunks(n * 8))
            .for_each(|(out, x)| {
                simd(|| {
                    for (out, x) in out.chunks_mut(n).zip(x.chunks(n)) {
                        softmax_row(x, out, scale)
                    }
                })
            })
    })?;
    Tensor::from_vec(out, x.dims(), x.device())
}

/// Lane-wise reductions so that the loops vectorise.
#[inline(always)]
fn softmax_row(x: &[f32], out: &mut [f32], scale: f32) {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for ch in chunks {
        for i in 0..16 {
            lanes[i] = if ch[i] > lanes[i] { ch[i] } else { lanes[i] };
        }
    }
    max = lanes.iter().fold(max, |m, &v| m.max(v));
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp((v - max) * scale);
    }
    let mut acc = [0f32; 16];
    let chunks = out.chunks_exact(16);
    let mut sum: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        for i in 0..16 {
            acc[i] += ch[i];
        }
    }
    sum += acc.iter().sum::<f32>();
    out.iter_mut().for_each(|o| *o /= sum);
}

/// candle's plain ops: full score matrix, for GPUs and half precision.
fn plain(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
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
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, sq, inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_plain_attention() {
        let dev = Device::Cpu;
        for (b, sq, sk, heads, d) in [(2, 33, 33, 3, 8), (1, 50, 7, 2, 5), (2, 9, 77, 1, 16)] {
            let q = Tensor::randn(0f32, 1.0, (b, sq, heads * d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, sk, heads * d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, sk, heads * d), &dev).unwrap();
            let want = plain(&q, &k, &v, heads).unwrap();
            let got = attention(&q, &k, &v, heads).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(max_diff(&got, &want) < 1e-5);
        }
    }

    #[test]
    fn long_sequences_are_chunked() {
        // 4 heads x 2100 keys: several query chunks of SCORE_BUDGET / 8400 rows.
        let dev = Device::Cpu;
        let (sq, heads, d) = (2100, 4, 8);
        let q = Tensor::randn(0f32, 1.0, (1, sq, heads * d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, sq, heads * d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, sq, heads * d), &dev).unwrap();
        assert!(SCORE_BUDGET / (heads * sq) < sq);
        let want = plain(&q, &k, &v, heads).unwrap();
        assert!(max_diff(&attention(&q, &k, &v, heads).unwrap(), &want) < 1e-5);
    }
}
