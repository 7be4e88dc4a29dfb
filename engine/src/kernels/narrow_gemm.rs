//! Products with a 16-bit weight ([`super::widen`]) widened block by block: each block of the
//! weight is widened into a buffer small enough to stay in the core's cache and multiplied in
//! (the GEMM adding into the output) before the next block is widened. Widening a whole large
//! weight first would write its f32 copy to memory and read it back, which costs more than the
//! conversion and made 16-bit weights slower than f32 ones; block by block, the only memory
//! traffic is the 16-bit weight itself, half of an f32 weight's. Widening is a branch-free
//! vector loop ([`super::widen`]); on the 2-core AVX-512 Xeon this was tuned on, these paths
//! put 16-bit weights at f32's speed (a SD 1.5 UNet forward at 256x256 batch 2: 1.43 s vs
//! 1.42 s, where widening whole weights first took 1.60 s).

use rayon::prelude::*;
use std::cell::RefCell;

use super::gemm::{matmul, matmul_add, Mat, MatMut};
use super::widen::Stored;

/// Values of a widened block (1 MiB of f32, within the L2 cache of the CPUs this runs on).
pub(crate) const BLOCK: usize = 1 << 18;

/// Least depth (summed dimension) of a block: the GEMM reads and writes its output once per
/// block, so much shallower blocks than its own blocking would cost more than they save.
const MIN_DEPTH: usize = 256;

thread_local! {
    /// The calling thread's buffer for widened blocks.
    static BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The depth of the blocks for a weight whose other dimension is `width`, out of `k`.
fn depth(k: usize, width: usize, block: usize) -> usize {
    (block / width.max(1)).max(MIN_DEPTH).min(k).max(1)
}

/// Runs `f` with this thread's block buffer of `len` values (taken out of the cell for the
/// call, so that a nested call on this thread gets a buffer of its own).
fn with_buf<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
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

/// `dst = lhs · w` for the weight `w` (`[k, n]` row-major, `k = lhs.cols`), widened in blocks
/// of rows of about `block` values.
pub(crate) fn matmul_narrow_rhs(
    dst: MatMut,
    lhs: Mat,
    w: Stored,
    n: usize,
    block: usize,
    threads: usize,
) {
    let k = lhs.cols;
    assert_eq!(
        w.len(),
        k * n,
        "narrow gemm: weight of {} values is not [{k}, {n}]",
        w.len()
    );
    // A weight at least as large as the activations: memory-bound, each thread widens its own
    // part (see [`by_columns`]).
    if threads > 1 && lhs.rows <= n {
        return by_columns(dst, lhs, w, n, block, threads);
    }
    let kc = depth(k, n, block);
    with_buf(kc * n, |buf| {
        for k0 in (0..k).step_by(kc) {
            let rows = kc.min(k - k0);
            let wb = &mut buf[..rows * n];
            let chunk = (block / 8).max(n);
            wb.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, d)| w.widen_into(k0 * n + i * chunk, d));
            let part = Mat {
                data: &lhs.data[k0.min(lhs.data.len())..],
                rows: lhs.rows,
                cols: rows,
                stride: lhs.stride,
            };
            let wm = Mat {
                data: wb,
                rows,
                cols: n,
                stride: n,
            };
            let out = MatMut {
                data: &mut *dst.data,
                rows: dst.rows,
                cols: dst.cols,
                stride: dst.stride,
            };
            if k0 == 0 {
                matmul(out, part, wm, threads);
            } else {
                matmul_add(out, part, wm, threads);
            }
        }
    });
}

/// `dst = w · rhs` for the weight `w` (`[m, k]` row-major, `k = rhs.rows`), widened in
/// blocks of columns of about `block` values.
pub(crate) fn matmul_narrow_lhs(
    dst: MatMut,
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
    // A weight at least as large as the activations: memory-bound, each thread widens its own
    // part (see [`by_rows`]).
    if threads > 1 && rhs.cols <= m {
        return by_rows(dst, w, m, rhs, block, threads);
    }
    let kc = depth(k, m, block);
    with_buf(m * kc, |buf| {
        for k0 in (0..k).step_by(kc) {
            let cols = kc.min(k - k0);
            let wb = &mut buf[..m * cols];
            wb.par_chunks_mut(cols)
                .with_min_len(16)
                .enumerate()
                .for_each(|(r, d)| w.widen_into(r * k + k0, d));
            let wm = Mat {
                data: wb,
                rows: m,
                cols,
                stride: cols,
            };
            let part = Mat {
                data: &rhs.data[(k0 * rhs.stride).min(rhs.data.len())..],
                rows: cols,
                cols: rhs.cols,
                stride: rhs.stride,
            };
            let out = MatMut {
                data: &mut *dst.data,
                rows: dst.rows,
                cols: dst.cols,
                stride: dst.stride,
            };
            if k0 == 0 {
                matmul(out, wm, part, threads);
            } else {
                matmul_add(out, wm, part, threads);
            }
        }
    });
}

/// [`matmul_narrow_rhs`] with the columns of `w` (and of the output) split between `threads`
/// threads, each widening and multiplying its own columns block by block on its own: while
/// one thread waits for its part of the weight to come from memory the other computes, where
/// widening the whole block together would leave both waiting at once. The other operand is
/// packed by every thread, which costs less than it saves only when it is no larger than the
/// weight.
fn by_columns(dst: MatMut, lhs: Mat, w: Stored, n: usize, block: usize, threads: usize) {
    let (m, k) = (lhs.rows, lhs.cols);
    let per = n.div_ceil(threads);
    let parts: Vec<(usize, usize, Vec<f32>)> = (0..n.div_ceil(per))
        .into_par_iter()
        .map(|t| {
            let n0 = t * per;
            let nb = per.min(n - n0);
            let mut out = vec![0f32; m * nb];
            let kc = depth(k, nb, block);
            with_buf(kc * nb, |buf| {
                for k0 in (0..k).step_by(kc) {
                    let rows = kc.min(k - k0);
                    for r in 0..rows {
                        w.widen_into((k0 + r) * n + n0, &mut buf[r * nb..][..nb]);
                    }
                    let part = Mat {
                        data: &lhs.data[k0.min(lhs.data.len())..],
                        rows: m,
                        cols: rows,
                        stride: lhs.stride,
                    };
                    let wm = Mat {
                        data: &buf[..rows * nb],
                        rows,
                        cols: nb,
                        stride: nb,
                    };
                    let o = MatMut {
                        data: &mut out,
                        rows: m,
                        cols: nb,
                        stride: nb,
                    };
                    if k0 == 0 {
                        matmul(o, part, wm, 1);
                    } else {
                        matmul_add(o, part, wm, 1);
                    }
                }
            });
            (n0, nb, out)
        })
        .collect();
    for (n0, nb, out) in parts {
        for r in 0..m {
            dst.data[r * dst.stride + n0..][..nb].copy_from_slice(&out[r * nb..][..nb]);
        }
    }
}

/// [`matmul_narrow_lhs`] with the rows of `w` (and of the output) split between `threads`
/// threads, as [`by_columns`] splits columns.
fn by_rows(dst: MatMut, w: Stored, m: usize, rhs: Mat, block: usize, threads: usize) {
    let k = rhs.rows;
    let per = m.div_ceil(threads);
    let stride = dst.stride;
    let cols_out = dst.cols;
    dst.data
        .par_chunks_mut(per * stride)
        .enumerate()
        .for_each(|(t, d)| {
            let r0 = t * per;
            if r0 >= m {
                return;
            }
            let rows = per.min(m - r0);
            let kc = depth(k, rows, block);
            with_buf(rows * kc, |buf| {
                for k0 in (0..k).step_by(kc) {
                    let cols = kc.min(k - k0);
                    for r in 0..rows {
                        w.widen_into((r0 + r) * k + k0, &mut buf[r * cols..][..cols]);
                    }
                    let wm = Mat {
                        data: &buf[..rows * cols],
                        rows,
                        cols,
                        stride: cols,
                    };
                    let part = Mat {
                        data: &rhs.data[(k0 * rhs.stride).min(rhs.data.len())..],
                        rows: cols,
                        cols: rhs.cols,
                        stride: rhs.stride,
                    };
                    let o = MatMut {
                        data: &mut *d,
                        rows,
                        cols: cols_out,
                        stride,
                    };
                    if k0 == 0 {
                        matmul(o, wm, part, 1);
                    } else {
                        matmul_add(o, wm, part, 1);
                    }
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;
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
                    let dst = MatMut {
                        data: &mut out,
                        rows: m,
                        cols: n,
                        stride: n,
                    };
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
                    let dst = MatMut {
                        data: &mut out,
                        rows: n,
                        cols: m,
                        stride: m,
                    };
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
}
