//! Products with a 16-bit weight ([`super::widen`]) widened block by block: each block of the
//! weight is widened into a buffer small enough to stay in the shared cache and multiplied in
//! (the GEMM adding into the output) before the next block is widened. Widening a whole large
//! weight first would write its f32 copy to memory and read it back, which costs more than the
//! conversion and made 16-bit weights slower than f32 ones; block by block, the only memory
//! traffic is the 16-bit weight itself, half of an f32 weight's. Widening is a branch-free
//! vector loop ([`super::widen`]); on the 2-core AVX-512 Xeon this was tuned on, these paths
//! put 16-bit weights at f32's speed (a SD 1.5 UNet forward at 256x256 batch 2: 1.43 s vs
//! 1.42 s, where widening whole weights first took 1.60 s). On CPUs with AMX, bf16 weights go
//! to [`super::amx`] instead (multiplied without widening, at f32 accuracy); on other CPUs with
//! AVX-512, they go to
//! [`super::panels`], which widens them straight into the microkernels' operands (no widened
//! block for a GEMM to pack again). The blocked paths here serve the rest.

use rayon::prelude::*;
use std::cell::RefCell;

use super::amx;
use super::gemm::{assume_written, matmul_add, matmul_uninit, written, Mat, MatMut, MatUninit};
use super::panels;
use super::widen::{Stored, AHEAD};

/// Values of a widened block (4 MiB of f32: in the shared L3 cache). Measured per GEMM shape of
/// the SD 1.5 UNet on a 2-core Zen 5 (weights read from memory, f32 and bf16 runs
/// alternating): 1 MiB blocks (the L2) made the im2col convolutions at 8x8 (`[1280, 11520]`
/// weights) 8–15% slower than f32, 4 MiB ones 1–9%; the GEGLU projection at 32x32
/// (`[320, 2560]`, 2048 tokens) needs its whole weight in one block to match f32.
pub(crate) const BLOCK: usize = 1 << 20;

/// Activations of at most 1/`SPLIT_RATIO` rows of the weight's columns (`m · SPLIT_RATIO <=
/// n`) in [`matmul_narrow_rhs`] have the weight's columns split between the threads; with
/// more, both threads work on each block: splitting had each pack all of the activations
/// (measured 6–15% slower than f32 at 512 tokens x 5120 and 2048 x 2560, 1–4% shared).
const SPLIT_RATIO: usize = 16;

/// Least depth (summed dimension) of a block: the GEMM reads and writes its output once per
/// block, so much shallower blocks than its own blocking would cost more than they save.
const MIN_DEPTH: usize = 256;

thread_local! {
    /// The calling thread's buffer for widened blocks.
    static BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The depth of the blocks for a weight whose other dimension is `width`, out of `k`.
fn depth(k: usize, width: usize, block: usize) -> usize {
    // As many blocks as the buffer needs, all about as deep: a last, shallow block would cost
    // a whole pass over the output for little arithmetic.
    let blocks = (k * width).div_ceil(block.max(1)).max(1);
    k.div_ceil(blocks).max(MIN_DEPTH).min(k).max(1)
}

/// Runs `f` with this thread's block buffer of `len` values (taken out of the cell for the
/// call, so that a nested call on this thread gets a buffer of its own).
pub(super) fn with_buf<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    BUF.with(|b| {
        let mut cell = b.borrow_mut();
        if cell.capacity() < buf.capacity() {
            *cell = buf;
        }
    });
    r
}

/// A view of a 16-bit weight: `rows x cols` values, row `r` at `start + r * stride` of `w`.
#[derive(Clone, Copy)]
struct View<'a> {
    w: Stored<'a>,
    start: usize,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl View<'_> {
    /// Rows `r0..r0 + rows`, columns `c0..c0 + cols` widened into `buf` (row-major, `cols` a
    /// row), on the rayon threads when `parallel`.
    fn widen(
        &self,
        (r0, rows): (usize, usize),
        (c0, cols): (usize, usize),
        buf: &mut [f32],
        parallel: bool,
    ) {
        // Two rows ahead: the rows of a block are short segments of the weight's rows (a
        // convolution's weight on the left, `depth` of its `c_in·9` columns at a time), too
        // short for the hardware prefetcher to learn each. On the 2-core AMX Xeon (`amx`'s
        // module doc): an f16 `[1280, 11520]` weight times 32 columns 6.9 → 5.9 ms (f32 6.1
        // ms), `[1280, 23040]` 14.5–15.3 → 11.2 ms (f32 11.2–11.5); the SD 1.5 UNet at 256x256
        // batch 2 with f16 weights 1.41–1.50 → 1.38–1.40 s (f32 1.27–1.32 s).
        let ahead = (2 * self.stride).max(AHEAD);
        let row = |(r, d): (usize, &mut [f32])| {
            self.w
                .widen_ahead(self.start + (r0 + r) * self.stride + c0, d, ahead)
        };
        let buf = &mut buf[..rows * cols];
        if parallel {
            let per_task = (1 << 14) / cols.max(1) + 1;
            buf.par_chunks_mut(cols)
                .with_min_len(per_task)
                .enumerate()
                .for_each(row);
        } else {
            buf.chunks_mut(cols).enumerate().for_each(row);
        }
    }
}

/// Largest f16 weight (in values) multiplied on AMX as the right operand. Measured per
/// product on the 2-core AMX Xeon (`amx`'s module doc), AMX against widening, f16 weights:
/// `[640, 5120]` (3.3 M values) with 512 rows 7.1 ms against 12.1, `[2560, 640]` 4.8 against
/// 6.3, `[320, 2560]` with 2048 rows 6.6 against 11.4; but `[1280, 10240]` (13 M) 30–40 ms
/// against 11–28 from 32 to 256 rows and `[5120, 1280]` (6.6 M) 13–16 against 3.4–14.
const AMX_F16_VALUES: usize = 1 << 22;

/// Which operand of the product the weight is.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// `dst = other · w`: the weight's rows are the summed dimension.
    Right,
    /// `dst = w · other`: the weight's columns are the summed dimension.
    Left,
}

/// `dst = other · w` or `w · other` (`side`), the weight widened `depth` rows (Right) or
/// columns (Left) at a time into this thread's buffer: the first block's product written to
/// `dst` (not zeroed before: that would be a pass over the output of its own), each further
/// block's added into it; `threads` for the widening and the GEMM. Writes every element of
/// `dst` (its view, and any values of the slice between and past the view's rows).
fn blocked(dst: MatUninit, other: Mat, w: View, side: Side, depth: usize, threads: usize) {
    let (k, width) = match side {
        Side::Right => (w.rows, w.cols),
        Side::Left => (w.cols, w.rows),
    };
    with_buf(depth * width, |buf| {
        // A weight with nothing to sum (k = 0) takes one empty block: the GEMM writes zeros.
        let (a, b) = block_operands(other, &w, side, (0, depth.min(k)), buf, threads);
        matmul_uninit(
            MatUninit {
                data: &mut *dst.data,
                ..dst
            },
            a,
            b,
            threads,
        );
        // SAFETY: `matmul_uninit` wrote every element of the view.
        #[allow(unsafe_code)]
        let out = unsafe { assume_written(dst) };
        for k0 in (depth..k).step_by(depth.max(1)) {
            let (a, b) = block_operands(other, &w, side, (k0, depth.min(k - k0)), buf, threads);
            let out = MatMut {
                data: &mut *out.data,
                ..out
            };
            matmul_add(out, a, b, threads);
        }
    });
}

/// The operands `(a, b)` of block `k0..k0 + kb` of [`blocked`]'s product, the weight's part
/// widened into `buf`.
fn block_operands<'a>(
    other: Mat<'a>,
    w: &View,
    side: Side,
    (k0, kb): (usize, usize),
    buf: &'a mut [f32],
    threads: usize,
) -> (Mat<'a>, Mat<'a>) {
    // The weight's block: `kb` of its rows (Right) or columns (Left), widened as `[rows, cols]`.
    let (rows, cols) = match side {
        Side::Right => {
            w.widen((k0, kb), (0, w.cols), buf, threads > 1);
            (kb, w.cols)
        }
        Side::Left => {
            w.widen((0, w.rows), (k0, kb), buf, threads > 1);
            (w.rows, kb)
        }
    };
    let wm = Mat {
        data: &buf[..rows * cols],
        rows,
        cols,
        stride: cols,
    };
    let len = other.data.len();
    match side {
        Side::Right => {
            let part = Mat {
                data: &other.data[k0.min(len)..],
                cols: kb,
                ..other
            };
            (part, wm)
        }
        Side::Left => {
            let part = Mat {
                data: &other.data[(k0 * other.stride).min(len)..],
                rows: kb,
                ..other
            };
            (wm, part)
        }
    }
}

/// Whether the 16-bit weight `w`, on `side` of the product, is multiplied on AMX
/// ([`amx::narrow_weights`]) rather than widened for the AVX GEMM: a bf16 weight on either
/// side, an f16 one on the right (linear layers). An f16 weight on the left (a convolution's
/// `[c_out, c_in·kh·kw]`, multiplied by few columns in the deep layers) is split into two
/// pieces and packed on every call, a pass over memory larger than the widening's: measured on
/// the SD 1.5 UNet at 512x512 on the 2-core AMX Xeon (module doc of `amx`), 2.77–2.78 s per
/// forward against 2.62–2.64 s with those weights widened (f32 weights: 2.57–2.73 s; f16
/// weights all widened, before: 2.69 s).
///
/// An f16 weight on the right goes to AMX only up to [`AMX_F16_VALUES`]: larger ones take
/// longer to split and pack than the widening path takes to multiply them (a choice by the
/// weight's shape alone, so that an image's result does not depend on its batch).
fn amx_weight(w: Stored, side: Side) -> bool {
    let kind = match side {
        Side::Left => matches!(w, Stored::Bf16(_)),
        Side::Right => match w {
            Stored::Bf16(_) => true,
            Stored::F16(_) => w.len() <= AMX_F16_VALUES,
            Stored::F32(_) => false,
        },
    };
    kind && amx::narrow_weights()
}

/// `lhs · w` as [`matmul_narrow_rhs`] computes it, as a new row-major `lhs.rows × n` vector
/// (written, not zeroed first: zeroing it was a pass over memory of its own).
pub(crate) fn narrow_rhs_product(
    lhs: Mat,
    w: Stored,
    n: usize,
    block: usize,
    threads: usize,
) -> Vec<f32> {
    // SAFETY: `matmul_narrow_rhs` writes every element of its output view.
    #[allow(unsafe_code)]
    unsafe {
        written(lhs.rows, n, |dst| {
            matmul_narrow_rhs(dst, lhs, w, n, block, threads)
        })
    }
}

/// `w · rhs` as [`matmul_narrow_lhs`] computes it, as a new row-major `m × rhs.cols` vector
/// (written, not zeroed first, as [`narrow_rhs_product`]).
pub(crate) fn narrow_lhs_product(
    w: Stored,
    m: usize,
    rhs: Mat,
    block: usize,
    threads: usize,
) -> Vec<f32> {
    // SAFETY: `matmul_narrow_lhs` writes every element of its output view.
    #[allow(unsafe_code)]
    unsafe {
        written(m, rhs.cols, |dst| {
            matmul_narrow_lhs(dst, w, m, rhs, block, threads)
        })
    }
}

/// `dst = lhs · w` for the weight `w` (`[k, n]` row-major, `k = lhs.cols`), widened in blocks
/// of rows of about `block` values.
///
/// A weight much larger than the activations (`lhs.rows · SPLIT_RATIO <= n`) is memory-bound:
/// its columns (and the output's) are split between the threads, each widening and multiplying
/// its own on its own, so that while one waits for its part of the weight to come from memory
/// the other computes (widening a block together would leave both waiting at once). Each
/// thread packs `lhs`, which costs less than it saves only when it is much smaller than the
/// weight ([`SPLIT_RATIO`]).
pub(crate) fn matmul_narrow_rhs(
    dst: MatUninit,
    lhs: Mat,
    w: Stored,
    n: usize,
    block: usize,
    threads: usize,
) {
    let (m, k) = (lhs.rows, lhs.cols);
    assert_eq!(
        w.len(),
        k * n,
        "narrow gemm: weight of {} values is not [{k}, {n}]",
        w.len()
    );
    if amx_weight(w, Side::Right) {
        return amx::product_weight_rhs_uninit(dst, lhs, w, n, threads);
    }
    if panels::available() {
        return panels::product(dst, lhs, w, n, threads);
    }
    let whole = View {
        w,
        start: 0,
        rows: k,
        cols: n,
        stride: n,
    };
    if threads <= 1 || m * SPLIT_RATIO > n {
        return blocked(dst, lhs, whole, Side::Right, depth(k, n, block), threads);
    }
    let per = n.div_ceil(threads);
    let parts: Vec<(usize, usize, Vec<f32>)> = (0..n.div_ceil(per))
        .into_par_iter()
        .map(|t| {
            let (n0, nb) = (t * per, per.min(n - t * per));
            let view = View {
                start: n0,
                cols: nb,
                ..whole
            };
            // SAFETY: `blocked` writes every element of its output view.
            #[allow(unsafe_code)]
            let out = unsafe {
                written(m, nb, |dst| {
                    blocked(dst, lhs, view, Side::Right, depth(k, nb, block), 1)
                })
            };
            (n0, nb, out)
        })
        .collect();
    for (n0, nb, out) in parts {
        for r in 0..m {
            let row = &mut dst.data[r * dst.stride + n0..][..nb];
            for (d, &v) in row.iter_mut().zip(&out[r * nb..][..nb]) {
                d.write(v);
            }
        }
    }
}

/// `dst = w · rhs` for the weight `w` (`[m, k]` row-major, `k = rhs.rows`), widened in
/// blocks of columns of about `block` values; a weight at least as large as the activations
/// (`rhs.cols <= m`) has its rows split between the threads, as [`matmul_narrow_rhs`] splits
/// columns.
pub(crate) fn matmul_narrow_lhs(
    dst: MatUninit,
    w: Stored,
    m: usize,
    rhs: Mat,
    block: usize,
    threads: usize,
) {
    let k = rhs.rows;
    assert_eq!(
        w.len(),
        m * k,
        "narrow gemm: weight of {} values is not [{m}, {k}]",
        w.len()
    );
    if amx_weight(w, Side::Left) {
        return amx::product_weight_lhs_uninit(dst, w, m, rhs, threads);
    }
    if panels::available() {
        return panels::product_left(dst, w, m, rhs, threads);
    }
    let whole = View {
        w,
        start: 0,
        rows: m,
        cols: k,
        stride: k,
    };
    // The blocks' depth and the rows of each GEMM (more than 64 whenever the rows are split,
    // out of the GEMM's small-matrix path) make every column's sum independent of how many
    // columns there are: a convolution's images may be multiplied together or one by one.
    let depth = depth(k, m, block);
    let per = m.div_ceil(threads.max(1));
    if threads <= 1 || rhs.cols > m || per <= 64 {
        return blocked(dst, rhs, whole, Side::Left, depth, threads);
    }
    let (stride, cols) = (dst.stride, dst.cols);
    dst.data
        .par_chunks_mut(per * stride)
        .enumerate()
        .filter(|(t, _)| t * per < m)
        .for_each(|(t, d)| {
            let rows = per.min(m - t * per);
            let view = View {
                start: t * per * k,
                rows,
                ..whole
            };
            let dst = MatUninit {
                data: d,
                rows,
                cols,
                stride,
            };
            blocked(dst, rhs, view, Side::Left, depth, 1);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::nan_view;
    use half::{bf16, f16};

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| a[r * k + i] * b[i * n + c]).sum();
            }
        }
        out
    }

    fn close(got: &[f32], want: &[f32]) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }

    #[test]
    fn blocked_products_equal_the_widened_product() {
        // Depths that split into whole and partial blocks, and a block as deep as the weight.
        // Activations larger than the weight (one multi-threaded GEMM per block) and smaller
        // (threads split the weight).
        for (m, k, n) in [(7, 600, 5), (3, 257, 9), (5, 300, 1), (2, 300, 40)] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let w32: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            for (stored, wide) in [
                (
                    Stored::F16(&wh),
                    wh.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                ),
                (Stored::Bf16(&wb), wb.iter().map(|v| v.to_f32()).collect()),
            ] {
                for (block, threads) in [(1, 1), (n * 256, 2), (BLOCK, 2)] {
                    let mut out = vec![f32::NAN; m * n];
                    let dst = nan_view(&mut out, m, n, n);
                    let lhs = Mat {
                        data: &x,
                        rows: m,
                        cols: k,
                        stride: k,
                    };
                    matmul_narrow_rhs(dst, lhs, stored, n, block, threads);
                    close(&out, &naive(&x, &wide, m, k, n));

                    // The weight on the left: `[n, k]` (the transposed values) times `xᵀ`.
                    let wt: Vec<f32> = (0..n * k).map(|i| wide[(i % k) * n + i / k]).collect();
                    let xt: Vec<f32> = (0..k * m).map(|i| x[(i % m) * k + i / m]).collect();
                    let wt16: Vec<f16> = wt.iter().map(|&v| f16::from_f32(v)).collect();
                    let mut out = vec![f32::NAN; n * m];
                    let dst = nan_view(&mut out, n, m, m);
                    let rhs = Mat {
                        data: &xt,
                        rows: k,
                        cols: m,
                        stride: m,
                    };
                    matmul_narrow_lhs(dst, Stored::F16(&wt16), n, rhs, block, threads);
                    let wt_wide: Vec<f32> = wt16.iter().map(|v| v.to_f32()).collect();
                    close(&out, &naive(&wt_wide, &xt, n, k, m));
                }
            }
        }
    }

    #[test]
    fn f16_weights_past_the_amx_limit_are_widened_alike() {
        // A weight one row past AMX_F16_VALUES takes the widening path on every CPU, with its
        // columns split between the threads (2 rows of activations).
        let (m, n) = (2, 2048);
        let k = AMX_F16_VALUES / n + 1;
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let wh: Vec<f16> = (0..k * n)
            .map(|i| f16::from_f32((i as f32 * 0.11).cos()))
            .collect();
        let wide: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
        let lhs = Mat {
            data: &x,
            rows: m,
            cols: k,
            stride: k,
        };
        assert!(!amx_weight(Stored::F16(&wh), Side::Right));
        let out = narrow_rhs_product(lhs, Stored::F16(&wh), n, BLOCK, 2);
        // The f64 sums and the sums of the terms' magnitudes.
        let (mut want, mut size) = (vec![0f64; m * n], vec![0f64; m * n]);
        for r in 0..m {
            for (kk, &xv) in x[r * k..][..k].iter().enumerate() {
                let row = wide[kk * n..][..n].iter();
                for ((c, s), &wv) in want[r * n..][..n]
                    .iter_mut()
                    .zip(&mut size[r * n..])
                    .zip(row)
                {
                    *c += f64::from(xv) * f64::from(wv);
                    *s += (f64::from(xv) * f64::from(wv)).abs();
                }
            }
        }
        for ((&g, &w), &s) in out.iter().zip(&want).zip(&size) {
            assert!((f64::from(g) - w).abs() <= 2e-5 * s, "{g} vs {w}");
        }
    }

    #[test]
    fn new_outputs_equal_the_products_into_views() {
        // The new outputs (memory not zeroed first) against products into NaN-filled views
        // whose rows are further apart than their width: every element of the view written,
        // the values between the rows too (zeros), on every path (threads split the weight,
        // or not; on AMX where there is one).
        let (m, k, n) = (37, 70, 45);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.23).sin()).collect();
        let w32: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.19).cos()).collect();
        let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
        for stored in [Stored::F16(&wh), Stored::Bf16(&wb)] {
            // `x · w` (`[m, k] · [k, n]`), and `w` read as `[n, k]` times `x` read as `[k, m]`.
            for (left, rows, depth, cols) in [(false, m, k, n), (true, n, k, m)] {
                let other = Mat {
                    data: &x,
                    rows: if left { depth } else { rows },
                    cols: if left { cols } else { depth },
                    stride: if left { cols } else { depth },
                };
                for threads in [1, 2] {
                    let stride = cols + 3;
                    let mut out = vec![f32::NAN; rows * stride];
                    let dst = nan_view(&mut out, rows, cols, stride);
                    let new = if left {
                        matmul_narrow_lhs(dst, stored, rows, other, BLOCK, threads);
                        narrow_lhs_product(stored, rows, other, BLOCK, threads)
                    } else {
                        matmul_narrow_rhs(dst, other, stored, cols, BLOCK, threads);
                        narrow_rhs_product(other, stored, cols, BLOCK, threads)
                    };
                    for r in 0..rows {
                        let row = &out[r * stride..][..stride];
                        assert!(row[..cols] == new[r * cols..][..cols], "left: {left}");
                        assert!(row[cols..].iter().all(|&v| v == 0.0 || v.is_nan()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "narrow_gemm_speed.rs"]
mod speed;
