//! Fused multi-head attention for CPU f32: each task takes a block of query rows of one head,
//! computes the block's scores `q·kᵀ` into a small buffer that stays in cache, turns them into
//! probabilities in place (the `1/sqrt(d)` scale folded into the softmax) and multiplies them
//! by `v` straight into the head's output rows. The score matrix is never held whole (it is
//! 1 GiB at 64x64 latents with batch 2), no pass over it goes to main memory, and queries are
//! read in the `[B, S, heads·D]` layout (outputs are written head by head, then interleaved
//! into it). Keys and values are first laid out per head (`kᵀ` in packed tiles, `v` as
//! `[Sk, D]` padded: see [`Layout`]) for the products' register tiles ([`tiles`]), faster than
//! a general GEMM on these narrow shapes. On the 2-core AMX Xeon (FMA peak 400–420 GFLOP/s)
//! the whole attention at 4096 keys and 8 heads of 40 runs at about 200 GFLOP/s (104–106 ms in
//! `speed`; 110–112 ms before the register tiles read their operands through pointers bounded
//! once per tile): `p·v` near the FMA rate on its padded width, `q·kᵀ` (a reduction of 40 per
//! tile) well below it. On a 2-core Zen 4 (peak 228 GFLOP/s) it runs at 178 GFLOP/s (120–121
//! ms; 129–132 ms before `p·v` ended rows of 40 in an 8-lane vector rather than a padded 16).

use std::mem::MaybeUninit;

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::math::{max, pow2_nonpositive, sum};
use super::slices::{fast, with_f32, zeros};

mod tiles;

/// Most scores one task holds at once, in f32 values (512 KiB, inside a core's L2 cache),
/// though at least [`tiles::ROW_MULTIPLE`] rows.
pub const BLOCK_SCORES: usize = 128 << 10;

/// Attention of `q` [B, Sq, H·D] over `k`, `v` [B, Sk, H·D] with `heads` heads; returns
/// [B, Sq, H·D]. Softmax runs in f32 whatever the input dtype (diffusers' upcast).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    if !(fast(q) && fast(k) && fast(v)) {
        return plain(q, k, v, heads);
    }
    fused(q, k, v, heads, |block| pulp::Arch::new().dispatch(block))
}

/// [`attention`] on CPU f32 tensors, each block of queries run by `run` (for the best SIMD
/// level, or in tests a given one).
fn fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    run: impl Fn(Block) + Sync,
) -> Result<Tensor> {
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
    if sq == 0 || d == 0 {
        return Tensor::zeros((b, sq, inner), DType::F32, q.device());
    }
    let l = Layout::new(sk, d);
    // Enough blocks to keep every thread busy, each small enough to stay in cache, of whole
    // tiles (but for the last).
    let threads = rayon::current_num_threads().max(1);
    let whole = |rows: usize| rows.next_multiple_of(tiles::ROW_MULTIPLE);
    let block = (BLOCK_SCORES / l.stride / tiles::ROW_MULTIPLE * tiles::ROW_MULTIPLE)
        .min(whole(sq.div_ceil(2 * threads)))
        .max(tiles::ROW_MULTIPLE);
    let plan = Plan {
        sq,
        heads,
        block,
        blocks: sq.div_ceil(block),
        scale: (d as f64).powf(-0.5) as f32,
        l,
    };
    // Not zeroed first: `item` writes every value of each batch item's rows.
    let mut out = Box::<[f32]>::new_uninit_slice(b * sq * inner);
    let mut by_head = zeros(heads * plan.blocks * block * d);
    with_f32(q, |q| {
        with_f32(k, |k| {
            with_f32(v, |v| {
                let (qs, kvs) = (sq * inner, sk * inner);
                for i in 0..b {
                    let (k, v) = (&k[i * kvs..][..kvs], &v[i * kvs..][..kvs]);
                    let q = &q[i * qs..][..qs];
                    item(
                        &plan,
                        (q, k, v),
                        &mut by_head,
                        &mut out[i * qs..][..qs],
                        &run,
                    );
                }
            })
        })
    })???;
    // SAFETY: `item` wrote every value of each item's `qs` values (see its loop over rows).
    #[allow(unsafe_code)]
    let out = unsafe { out.assume_init() };
    Tensor::from_vec(out.into_vec(), (b, sq, inner), q.device())
}

/// How [`fused`] cuts its work: `blocks` blocks of up to `block` query rows (of `sq`) per
/// head.
struct Plan {
    sq: usize,
    heads: usize,
    block: usize,
    blocks: usize,
    scale: f32,
    l: Layout,
}

/// The attention of one batch item's `q` ([Sq, H·D]) over its `k`, `v` ([Sk, H·D]) into `out`
/// ([Sq, H·D]), by way of `by_head`, which holds the outputs head by head, each head's rows
/// padded to whole blocks (`[H][blocks · block][d]`).
fn item(
    plan: &Plan,
    (q, k, v): (&[f32], &[f32], &[f32]),
    by_head: &mut [f32],
    out: &mut [MaybeUninit<f32>],
    run: &(impl Fn(Block) + Sync),
) {
    let Plan {
        sq,
        heads,
        block,
        blocks,
        scale,
        ref l,
    } = *plan;
    let (d, inner) = (l.d, heads * l.d);
    let (kt, vh) = per_head(k, v, l, heads);
    // Tasks in head-major order: a thread runs consecutive blocks of one head, whose keys and
    // values then stay in its L2 cache. Blocks of all heads in turn read every head's from L3
    // for every block (measured 15% slower at 64x64 latents).
    by_head.par_chunks_mut(block * d).enumerate().for_each_init(
        || {
            let padded = block.next_multiple_of(tiles::ROW_MULTIPLE);
            Scratch {
                scores: vec![0f32; padded * l.stride],
                outs: vec![0f32; padded * l.dp],
                inv_sums: vec![0f32; padded],
                zero_q: vec![0f32; d],
            }
        },
        |scratch, (task, rows)| {
            let (h, t) = (task / blocks, task % blocks);
            let len = block.min(sq - t * block);
            run(Block {
                q: &q[t * block * inner + h * d..],
                kt: &kt[h * d * l.cols..][..d * l.cols],
                vh: &vh[h * l.sk * l.dp..][..l.sk * l.dp],
                len,
                rows: &mut rows[..len * d],
                scratch,
                l,
                q_stride: inner,
                scale,
            });
        },
    );
    out.par_chunks_mut(inner)
        .with_min_len(64)
        .enumerate()
        .for_each(|(s, row)| {
            // Every value of the row: its `heads` chunks of `d`.
            for (h, dst) in row.chunks_exact_mut(d).enumerate() {
                let src = &by_head[(h * blocks * block + s) * d..][..d];
                for (dst, &v) in dst.iter_mut().zip(src) {
                    dst.write(v);
                }
            }
        });
}

/// How keys, values and scores are laid out for the tiles of [`tiles`]. Keys are packed per
/// head in tiles of [`tiles::KEY_TILE`] columns (the last ones [`tiles::KEY_TAIL`] wide): tile
/// by tile `[d][width]`, so that each tile of `q·kᵀ` reads one contiguous stretch of memory
/// (the whole padded `kᵀ` of a head, 16 KiB rows apart, defeated the prefetchers). Rows of
/// the scores hold `sk` values at a `stride` padded past a multiple of 4 KiB (so that the
/// rows of a tile do not all land in one cache set); rows of `v` are padded from `d` to `dp`,
/// a multiple of the 16-lane vector.
struct Layout {
    sk: usize,
    /// `sk` rounded up to the narrowest key tile: the columns of packed keys.
    cols: usize,
    stride: usize,
    d: usize,
    dp: usize,
}

impl Layout {
    fn new(sk: usize, d: usize) -> Self {
        let cols = sk.next_multiple_of(tiles::KEY_TAIL);
        Layout {
            sk,
            cols,
            stride: cols + 16,
            d,
            dp: d.next_multiple_of(16),
        }
    }
}

/// A task's buffers, for its block's rows rounded up to whole tiles: the scores of one head,
/// the head's unscaled outputs (`dp` wide), the reciprocals of the softmax sums, and a zero
/// query row for the rows past the block's end.
struct Scratch {
    scores: Vec<f32>,
    outs: Vec<f32>,
    inv_sums: Vec<f32>,
    zero_q: Vec<f32>,
}

/// `kᵀ` packed as `[H][tiles]` of `[d][width]` key tiles (see [`Layout`]) and `v` as
/// `[H][Sk][dp]` (zero padded), from `[Sk, H·D]` rows.
fn per_head(k: &[f32], v: &[f32], l: &Layout, heads: usize) -> (Vec<f32>, Vec<f32>) {
    let Layout {
        sk, cols, d, dp, ..
    } = *l;
    let inner = heads * d;
    let mut kt = zeros(heads * d * cols);
    let mut vh = zeros(heads * sk * dp);
    kt.par_chunks_mut(d * cols)
        .zip(vh.par_chunks_mut(sk * dp))
        .enumerate()
        .for_each(|(h, (kt, vh))| {
            for s in 0..sk {
                let (first, width) = tiles::key_tile(s, cols);
                let tile = &mut kt[first * d..][..d * width];
                for (j, &x) in k[s * inner + h * d..][..d].iter().enumerate() {
                    tile[j * width + s - first] = x;
                }
            }
            for (s, row) in vh.chunks_exact_mut(dp).enumerate() {
                row[..d].copy_from_slice(&v[s * inner + h * d..][..d]);
            }
        });
    (kt, vh)
}

/// One block of `len` query rows of one head: `q` holds row `r`'s query at `r * q_stride`,
/// `kt` and `vh` the head's keys and values (see [`Layout`]); the outputs go to `rows`
/// (`[len, d]`).
struct Block<'a> {
    q: &'a [f32],
    kt: &'a [f32],
    vh: &'a [f32],
    rows: &'a mut [f32],
    scratch: &'a mut Scratch,
    len: usize,
    l: &'a Layout,
    q_stride: usize,
    scale: f32,
}

impl pulp::WithSimd for Block<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Layout {
            sk,
            cols,
            stride,
            d,
            dp,
        } = *self.l;
        let Scratch {
            scores,
            outs,
            inv_sums,
            zero_q,
        } = self.scratch;
        let head = tiles::Head {
            q: self.q,
            q_stride: self.q_stride,
            zero_q,
            kt: self.kt,
            v: self.vh,
            rows: self.len,
            sk,
            cols,
            stride,
            d,
            dp,
        };
        let padded = head.padded_rows();
        tiles::scores(simd, &head, scores);
        for (row, inv) in scores[..padded * stride]
            .chunks_exact_mut(stride)
            .zip(inv_sums.iter_mut())
        {
            *inv = unnormalised_softmax(&mut row[..sk], self.scale);
        }
        tiles::values(simd, &head, scores, outs);
        // The softmax's division, on the d outputs of each row rather than its sk inputs.
        for ((row, o), &inv) in self
            .rows
            .chunks_exact_mut(d)
            .zip(outs.chunks_exact(dp))
            .zip(&*inv_sums)
        {
            for (dst, &o) in row.iter_mut().zip(o) {
                *dst = o * inv;
            }
        }
    }
}

/// `exp(scale · (row − max))` in place (as `2^(scale·log2(e) · (row − max))`), returning the
/// reciprocal of its sum (the caller scales the product with `v` by it, which finishes the
/// softmax); each a vectorised pass over the row while it is in L1 or L2.
#[inline(always)]
fn unnormalised_softmax(row: &mut [f32], scale: f32) -> f32 {
    let c = scale * std::f32::consts::LOG2_E;
    let shift = -max(row) * c;
    for v in row.iter_mut() {
        *v = pow2_nonpositive(v.mul_add(c, shift));
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
    use pulp::WithSimd;

    /// Runs the fused attention at every SIMD level this CPU has (and the scalar one), so
    /// that each set of tile shapes is checked here.
    fn at_every_level(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Vec<Tensor> {
        let mut outs = vec![
            attention(q, k, v, heads).unwrap(),
            fused(q, k, v, heads, |b| b.with_simd(pulp::Scalar::new())).unwrap(),
        ];
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = pulp::x86::V3::try_new() {
            let run = |b: Block| {
                s.vectorize(
                    #[inline(always)]
                    || b.with_simd(s),
                )
            };
            outs.push(fused(q, k, v, heads, run).unwrap());
        }
        outs
    }

    #[test]
    fn matches_plain_attention() {
        let dev = Device::Cpu;
        // Key counts across whole and narrow key tiles; head widths of 1 to 10 vectors
        // (split into value tiles of up to 5), some ending in half a 16-lane vector (8-lane
        // tails: 5, 8, 24, 40, 136); query counts off the 24-row tiles.
        for (b, sq, sk, heads, d) in [
            (2, 33, 33, 3, 8),
            (1, 50, 7, 2, 5),
            (2, 9, 77, 1, 16),
            (1, 1, 1, 1, 3),
            (1, 61, 130, 2, 40),
            (1, 30, 64, 1, 64),
            (1, 25, 80, 1, 80),
            (1, 7, 200, 1, 96),
            (1, 13, 19, 2, 112),
            (1, 49, 150, 1, 160),
            (1, 21, 45, 2, 24),
            (2, 10, 33, 1, 136),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, sq, heads * d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, sk, heads * d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, sk, heads * d), &dev).unwrap();
            let want = plain(&q, &k, &v, heads).unwrap();
            for got in at_every_level(&q, &k, &v, heads) {
                assert_eq!(got.dims(), want.dims());
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-5, "{b}x{sq} over {sk} keys, {heads}x{d}: {diff}");
            }
        }
    }

    #[test]
    fn long_sequences_are_cut_into_blocks() {
        // 2100 keys: blocks of 48 query rows (BLOCK_SCORES / 2128-value score rows, in
        // whole tiles), the last one shorter.
        let dev = Device::Cpu;
        let (sq, heads, d) = (2100, 4, 8);
        let q = Tensor::randn(0f32, 1.0, (2, sq, heads * d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, sq, heads * d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, sq, heads * d), &dev).unwrap();
        let rows = tiles::ROW_MULTIPLE;
        assert!(sq % 48 != 0 && BLOCK_SCORES / Layout::new(sq, d).stride / rows * rows == 48);
        let want = plain(&q, &k, &v, heads).unwrap();
        for got in at_every_level(&q, &k, &v, heads) {
            assert!(max_diff(&got, &want) < 1e-5);
        }
    }

    #[test]
    fn rows_of_large_scores_keep_their_softmax() {
        // Scores far below zero (scaled, -300 to -1000) must not underflow to a 0/0 row.
        let dev = Device::Cpu;
        let q = (Tensor::ones((1, 5, 16), DType::F32, &dev).unwrap() * 10.0).unwrap();
        let k = (Tensor::randn(0f32, 1.0, (1, 70, 16), &dev)
            .unwrap()
            .abs()
            .unwrap()
            * -20.0)
            .unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 70, 16), &dev).unwrap();
        let want = plain(&q, &k, &v, 1).unwrap();
        for got in at_every_level(&q, &k, &v, 1) {
            assert!(max_diff(&got, &want) < 1e-5);
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use candle_core::Device;

    /// Times the fused attention on the SD 1.5 UNet's shapes (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn speed() {
        crate::kernels::malloc::tune();
        let dev = Device::Cpu;
        for (sq, sk, heads, d) in [(4096, 4096, 8, 40), (1024, 1024, 8, 80), (4096, 77, 8, 40)] {
            let q = Tensor::randn(0f32, 1.0, (1, sq, heads * d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (1, sk, heads * d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (1, sk, heads * d), &dev).unwrap();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                let _ = attention(&q, &k, &v, heads).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            let flop = 4.0 * (sq * sk * heads * d) as f64;
            println!(
                "{sq}x{sk} {heads}x{d}: {:.2} ms, {:.0} GFLOP/s",
                best * 1e3,
                flop / best / 1e9
            );
        }
    }
}
