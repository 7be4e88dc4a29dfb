//! Fused multi-head attention for CPU f32: each task takes a block of query rows and, head by
//! head, computes the block's scores `q·kᵀ` into a small buffer that stays in cache, turns them
//! into probabilities in place (the `1/sqrt(d)` scale folded into the softmax) and multiplies
//! them by `v` straight into the output rows. The score matrix is never held whole (it is
//! 1 GiB at 64x64 latents with batch 2), no pass over it goes to main memory, and heads are read
//! and written in the `[B, S, heads·D]` layout. Keys and values are first laid out per head
//! (`kᵀ` as `[D, Sk]`, `v` as `[Sk, D]`, both padded: see [`Layout`]), the layouts the GEMM
//! reads without repacking.

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul_simd, Mat, MatMut};
use super::math::{exp, max, simd, sum};
use super::slices::{fast, with_f32, zeros};

/// Most scores one task holds at once, in f32 values (256 KiB, inside a core's L2 cache).
pub const BLOCK_SCORES: usize = 64 << 10;

/// Attention of `q` [B, Sq, H·D] over `k`, `v` [B, Sk, H·D] with `heads` heads; returns
/// [B, Sq, H·D]. Softmax runs in f32 whatever the input dtype (diffusers' upcast).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    if !(fast(q) && fast(k) && fast(v)) {
        return plain(q, k, v, heads);
    }
    let (b, sq, inner) = q.dims3()?;
    let sk = k.dim(1)?;
    if heads == 0 || inner % heads != 0 || k.dims3()? != (b, sk, inner) || v.dims() != k.dims() {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let d = inner / heads;
    let scale = (d as f64).powf(-0.5) as f32;
    let l = Layout::new(sk, d);
    // Enough blocks to keep every thread busy, each small enough to stay in cache.
    let threads = rayon::current_num_threads().max(1);
    let block = (BLOCK_SCORES / l.stride)
        .min(sq.div_ceil(2 * threads))
        .clamp(1, sq.max(1));
    let mut out = zeros(b * sq * inner);
    with_f32(q, |q| {
        with_f32(k, |k| {
            with_f32(v, |v| {
                for i in 0..b {
                    let (kt, vh) = per_head(
                        &k[i * sk * inner..][..sk * inner],
                        &v[i * sk * inner..][..sk * inner],
                        &l,
                        heads,
                    );
                    let qi = &q[i * sq * inner..][..sq * inner];
                    out[i * sq * inner..][..sq * inner]
                        .par_chunks_mut(block * inner)
                        .enumerate()
                        .for_each_init(
                            || Scratch {
                                scores: vec![0f32; block * l.stride],
                                outs: vec![0f32; block * l.dp],
                                inv_sums: vec![0f32; block],
                            },
                            |scratch, (t, rows)| {
                                let len = rows.len() / inner;
                                let qb = &qi[t * block * inner..][..len * inner];
                                attend_block(qb, &kt, &vh, rows, scratch, len, &l, heads, scale);
                            },
                        );
                }
            })
        })
    })???;
    Tensor::from_vec(out, (b, sq, inner), q.device())
}

/// How keys, values and scores are laid out for the GEMM. Rows of `kᵀ` and of the scores
/// hold `sk` values at a `stride` padded past a multiple of 4 KiB (at 4096 keys an unpadded
/// row is 16 KiB, and the GEMM's reads down a column would all land in one cache set); rows
/// of `v` are padded from `d` to `dp`, a multiple of the 16-lane vector, which the GEMM reads
/// in place where it would otherwise repack all of `v` for every block of queries.
struct Layout {
    sk: usize,
    stride: usize,
    d: usize,
    dp: usize,
}

impl Layout {
    fn new(sk: usize, d: usize) -> Self {
        Layout {
            sk,
            stride: sk.next_multiple_of(16) + 16,
            d,
            dp: d.next_multiple_of(16),
        }
    }
}

/// A task's buffers: the scores of its block for one head, the head's unscaled outputs
/// (`dp` wide) and the reciprocals of the softmax sums.
struct Scratch {
    scores: Vec<f32>,
    outs: Vec<f32>,
    inv_sums: Vec<f32>,
}

/// `kᵀ` as `[H][D][stride]` and `v` as `[H][Sk][dp]` (zero padded), from `[Sk, H·D]` rows.
fn per_head(k: &[f32], v: &[f32], l: &Layout, heads: usize) -> (Vec<f32>, Vec<f32>) {
    let Layout {
        sk, stride, d, dp, ..
    } = *l;
    let inner = heads * d;
    let mut kt = zeros(heads * d * stride);
    let mut vh = zeros(heads * sk * dp);
    kt.par_chunks_mut(d * stride)
        .zip(vh.par_chunks_mut(sk * dp))
        .enumerate()
        .for_each(|(h, (kt, vh))| {
            // Row by row of kᵀ, so that the writes are contiguous.
            for (j, row) in kt.chunks_exact_mut(stride).enumerate() {
                for (s, x) in row[..sk].iter_mut().enumerate() {
                    *x = k[s * inner + h * d + j];
                }
            }
            for (s, row) in vh.chunks_exact_mut(dp).enumerate() {
                row[..d].copy_from_slice(&v[s * inner + h * d..][..d]);
            }
        });
    (kt, vh)
}

/// One block of `len` query rows `qb` (`[len, H·D]`), all heads, into `rows`.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    qb: &[f32],
    kt: &[f32],
    vh: &[f32],
    rows: &mut [f32],
    scratch: &mut Scratch,
    len: usize,
    l: &Layout,
    heads: usize,
    scale: f32,
) {
    let Layout { sk, stride, d, dp } = *l;
    let inner = heads * d;
    let scores = &mut scratch.scores[..len * stride];
    let outs = &mut scratch.outs[..len * dp];
    let inv_sums = &mut scratch.inv_sums[..len];
    for h in 0..heads {
        matmul_simd(
            MatMut {
                data: scores,
                rows: len,
                cols: sk,
                stride,
            },
            Mat {
                data: &qb[h * d..],
                rows: len,
                cols: d,
                stride: inner,
            },
            Mat {
                data: &kt[h * d * stride..][..d * stride],
                rows: d,
                cols: sk,
                stride,
            },
            1,
        );
        simd(
            #[inline(always)]
            || {
                for (row, inv) in scores.chunks_exact_mut(stride).zip(inv_sums.iter_mut()) {
                    *inv = unnormalised_softmax(&mut row[..sk], scale);
                }
            },
        );
        matmul_simd(
            MatMut {
                data: outs,
                rows: len,
                cols: dp,
                stride: dp,
            },
            Mat {
                data: scores,
                rows: len,
                cols: sk,
                stride,
            },
            Mat {
                data: &vh[h * sk * dp..][..sk * dp],
                rows: sk,
                cols: dp,
                stride: dp,
            },
            1,
        );
        // The softmax's division, on the d outputs of each row rather than its sk inputs.
        for ((row, o), &inv) in rows
            .chunks_exact_mut(inner)
            .zip(outs.chunks_exact(dp))
            .zip(&*inv_sums)
        {
            for (dst, &o) in row[h * d..(h + 1) * d].iter_mut().zip(o) {
                *dst = o * inv;
            }
        }
    }
}

/// `exp(scale · (row − max))` in place, returning the reciprocal of its sum (the caller
/// scales the product with `v` by it, which finishes the softmax); each a vectorised pass
/// over the row while it is in L1.
#[inline(always)]
fn unnormalised_softmax(row: &mut [f32], scale: f32) -> f32 {
    let max = max(row);
    for v in row.iter_mut() {
        *v = exp((*v - max) * scale);
    }
    1.0 / sum(row)
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
    use crate::kernels::test_util::max_diff;
    use candle_core::Device;

    #[test]
    fn matches_plain_attention() {
        let dev = Device::Cpu;
        for (b, sq, sk, heads, d) in [
            (2, 33, 33, 3, 8),
            (1, 50, 7, 2, 5),
            (2, 9, 77, 1, 16),
            (1, 1, 1, 1, 3),
        ] {
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
    fn long_sequences_are_cut_into_blocks() {
        // 2100 keys: blocks of BLOCK_SCORES / 2100 = 31 query rows, the last one shorter.
        let dev = Device::Cpu;
        let (sq, heads, d) = (2100, 4, 8);
        let q = Tensor::randn(0f32, 1.0, (2, sq, heads * d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, sq, heads * d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, sq, heads * d), &dev).unwrap();
        assert!(BLOCK_SCORES / sq < sq && sq % (BLOCK_SCORES / sq) != 0);
        let want = plain(&q, &k, &v, heads).unwrap();
        assert!(max_diff(&attention(&q, &k, &v, heads).unwrap(), &want) < 1e-5);
    }
}
