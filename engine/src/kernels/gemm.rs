//! A bounds-checked, safe entry to the `gemm` crate for row-major f32 matrices given as slices
//! with a row stride, for kernels that multiply blocks inside their own parallel loops (where
//! building candle tensors per block would cost more than the block's arithmetic). On CPUs
//! with AMX the products run on its tiles instead ([`super::amx`]).

use std::mem::MaybeUninit;

use candle_core::{Result, Tensor};

use super::amx::{self, Rhs};
use super::slices::{fast, with_f32, with_f32_rows};

/// A row-major matrix view: `rows x cols` values of `data`, row `r` starting at `r * stride`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `rows x cols` matrix `data` (its rows one after another).
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            stride: cols,
        }
    }
}

/// The mutable counterpart of [`Mat`].
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// Elements a view spans: up to the last element of its last row; `usize::MAX` when that
/// does not fit a `usize` (so that the bounds asserts fail instead of wrapping in release
/// builds).
pub(super) fn span(rows: usize, cols: usize, stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1)
            .checked_mul(stride)
            .and_then(|s| s.checked_add(cols))
            .unwrap_or(usize::MAX)
    }
}

/// `dst = lhs · rhs` (as [`matmul_uninit`], into initialised memory).
#[cfg(test)]
pub(crate) fn matmul(dst: MatMut, lhs: Mat, rhs: Mat, threads: usize) {
    product(dst, lhs, rhs, threads, false)
}

/// `dst += lhs · rhs`, on the calling thread (`threads == 1`) or on up to `threads` rayon
/// threads. Panics if the shapes do not chain or a view reaches past its slice.
pub(crate) fn matmul_add(dst: MatMut, lhs: Mat, rhs: Mat, threads: usize) {
    product(dst, lhs, rhs, threads, true)
}

/// The distance to give rows of `len` f32 values that a GEMM reads in place: `len`, or one
/// cache line more when the rows would be a multiple of 1 KiB long. Rows 4 KiB apart fall in
/// the same L1 and L2 sets, so the panel of rows the GEMM works through would evict itself.
/// Measured on a 2-core Zen 5 at the text encoders' shapes (77 tokens, weights in cache): a
/// 1024x1024 weight 0.34 ms against 0.41 ms, 4096x1024 1.38 ms against 1.68 ms, 1280x1280
/// with 64 rows 0.45 ms against 0.58 ms; products with many rows are unchanged.
pub(crate) fn unaliased_stride(len: usize) -> usize {
    if len % 256 == 0 {
        len + 16
    } else {
        len
    }
}

/// `a · b` for 2-D CPU f32 tensors, into an output that is not zeroed first (candle's own
/// `matmul` zeroes it on one thread): by the `gemm` crate, or on AMX ([`super::amx`]) when
/// this process multiplies there. `b` is read in place when its rows' values are adjacent
/// (contiguous, or rows further apart as in linear layers' padded weights) or, on AMX, when it
/// is the transpose of such a matrix; other layouts are made contiguous, or (transposed, off
/// AMX) go to candle.
pub(crate) fn matmul_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !fast(a) || !fast(b) || a.rank() != 2 || b.rank() != 2 {
        return a.matmul(b);
    }
    let ((m, k), (kb, n)) = (a.dims2()?, b.dims2()?);
    if kb != k {
        return a.matmul(b); // candle's error names the shapes
    }
    let precision = amx::precision();
    let transposed = !b.is_contiguous() && b.t()?.is_contiguous();
    let b = match (transposed, precision) {
        (true, None) => return a.matmul(b), // candle multiplies by the strided view
        (true, Some(_)) => b.t()?,
        (false, _) => b.clone(),
    };
    let mut out = Box::<[f32]>::new_uninit_slice(m * n);
    let threads = rayon::current_num_threads();
    with_f32(a, |ad| {
        let dst = MatUninit {
            data: &mut out,
            rows: m,
            cols: n,
            stride: n,
        };
        let lhs = Mat {
            data: ad,
            rows: m,
            cols: k,
            stride: k,
        };
        with_f32_rows(&b, |bd, stride| match (transposed, precision) {
            (true, Some(p)) => {
                let rhs = Rhs::Cols(Mat {
                    data: bd,
                    rows: n,
                    cols: k,
                    stride,
                });
                amx::product_uninit(dst, lhs, rhs, threads, p)
            }
            _ => {
                let rhs = Mat {
                    data: bd,
                    rows: k,
                    cols: n,
                    stride,
                };
                matmul_uninit(dst, lhs, rhs, threads)
            }
        })
    })??;
    // SAFETY: both products write every element of the m × n view, which with row stride n
    // is the whole buffer.
    #[allow(unsafe_code)]
    let out = unsafe { out.assume_init() };
    Tensor::from_vec(out.into_vec(), (m, n), a.device())
}

/// (m, k, n) of `dst = lhs · rhs` after checking that the shapes chain and every view lies
/// inside its slice (panics otherwise).
fn check(dst: &MatMut, lhs: &Mat, rhs: &Mat) -> (usize, usize, usize) {
    check_dims((dst.data.len(), dst.rows, dst.cols, dst.stride), lhs, rhs)
}

/// [`check`] for a destination given as (slice length, rows, cols, stride).
fn check_dims(
    (len, rows, cols, stride): (usize, usize, usize, usize),
    lhs: &Mat,
    rhs: &Mat,
) -> (usize, usize, usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && rows == m && cols == n,
        "gemm: [{m}, {k}] x [{}, {n}] into [{rows}, {cols}]",
        rhs.rows,
    );
    assert!(lhs.data.len() >= span(m, k, lhs.stride));
    assert!(rhs.data.len() >= span(k, n, rhs.stride));
    assert!(len >= span(m, n, stride));
    // Rows of dst must not overlap (rows of the inputs may, they are only read).
    assert!(m <= 1 || stride >= n, "gemm: dst rows overlap");
    (m, k, n)
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `add`.
fn product(dst: MatMut, lhs: Mat, rhs: Mat, threads: usize, add: bool) {
    let (m, k, n) = check(&dst, &lhs, &rhs);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if add {
            return;
        }
        for r in 0..m {
            dst.data[r * dst.stride..][..n].fill(0.0);
        }
        return;
    }
    if let Some(precision) = amx::precision() {
        return amx::product(dst, lhs, Rhs::Rows(rhs), threads, add, precision);
    }
    by_gemm_crate(dst, lhs, rhs, threads, add);
}

/// [`matmul`] by the `gemm` crate (AVX-512 or AVX2) even where AMX is used: the AMX tests'
/// comparison.
#[cfg(test)]
pub(crate) fn matmul_simd(dst: MatMut, lhs: Mat, rhs: Mat, threads: usize) {
    let (m, k, n) = check(&dst, &lhs, &rhs);
    if m == 0 || n == 0 || k == 0 {
        return product(dst, lhs, rhs, threads, false);
    }
    by_gemm_crate(dst, lhs, rhs, threads, false)
}

/// The counterpart of [`MatMut`] for memory that need not be initialised.
#[derive(Debug)]
pub(crate) struct MatUninit<'a> {
    pub data: &'a mut [MaybeUninit<f32>],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// A new `rows × cols` row-major vector, every element of which `write` writes (a product's
/// output that zeroing first would cost a pass over memory).
///
/// # Safety
/// `write` must write every element of the view it is given.
#[allow(unsafe_code)]
pub(crate) unsafe fn written(rows: usize, cols: usize, write: impl FnOnce(MatUninit)) -> Vec<f32> {
    let len = rows * cols;
    let mut out = Vec::with_capacity(len);
    write(MatUninit {
        data: &mut out.spare_capacity_mut()[..len],
        rows,
        cols,
        stride: cols,
    });
    // SAFETY: the capacity is `len`, and the caller's `write` wrote every element of the
    // view, which with row stride `cols` is all `len` of them.
    unsafe { out.set_len(len) };
    out
}

/// `dst` as initialised memory once every element of its view has been written: the values
/// of the slice outside the view (between its rows and past the last) are zeroed first, so
/// that the whole slice is initialised.
///
/// # Safety
/// Every element of the view must have been written.
#[allow(unsafe_code)]
pub(crate) unsafe fn assume_written(dst: MatUninit) -> MatMut {
    let MatUninit {
        data,
        rows,
        cols,
        stride,
    } = dst;
    let len = data.len();
    let gaps = (0..rows).map(|r| ((r * stride + cols).min(len), ((r + 1) * stride).min(len)));
    for (from, to) in gaps.chain([((rows * stride).min(len), len)]) {
        for v in &mut data[from..to] {
            v.write(0.0);
        }
    }
    // SAFETY: the view's elements were written (the caller's contract) and all others just
    // now; `MaybeUninit<f32>` has the layout of `f32`.
    let data = unsafe { &mut *(data as *mut [MaybeUninit<f32>] as *mut [f32]) };
    MatMut {
        data,
        rows,
        cols,
        stride,
    }
}

/// `dst = lhs · rhs` into memory that need not be initialised (a large output zeroed first
/// only to be overwritten costs a pass over memory): every element of the `rows × cols` view
/// is written, nothing else is touched. Panics like [`matmul_add`].
pub(crate) fn matmul_uninit(dst: MatUninit, lhs: Mat, rhs: Mat, threads: usize) {
    let (m, k, n) = check_dims((dst.data.len(), dst.rows, dst.cols, dst.stride), &lhs, &rhs);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for r in 0..m {
            for v in &mut dst.data[r * dst.stride..][..n] {
                v.write(0.0);
            }
        }
        return;
    }
    if let Some(precision) = amx::precision() {
        return amx::product_uninit(dst, lhs, Rhs::Rows(rhs), threads, precision);
    }
    // SAFETY: as in `by_gemm_crate`, with `add` false: gemm writes every element of the view
    // (and reads none of dst's), all inside `dst.data` by `check_dims`.
    #[allow(unsafe_code)]
    unsafe {
        gemm_raw(
            dst.data.as_mut_ptr().cast(),
            dst.stride,
            lhs,
            rhs,
            threads,
            false,
        )
    }
}

/// `dst (+)= lhs · rhs` by the `gemm` crate; shapes checked by the caller.
fn by_gemm_crate(dst: MatMut, lhs: Mat, rhs: Mat, threads: usize, add: bool) {
    // SAFETY: see `gemm_raw`; `check` put the view inside `dst.data`, borrowed mutably.
    #[allow(unsafe_code)]
    unsafe {
        gemm_raw(dst.data.as_mut_ptr(), dst.stride, lhs, rhs, threads, add)
    }
}

/// `dst (+)= lhs · rhs` by the `gemm` crate into the `lhs.rows × rhs.cols` view at `dst` with
/// row stride `stride`.
///
/// # Safety
/// The shapes must have passed [`check_dims`] for a destination slice starting at `dst` that
/// nothing else accesses during the call; its elements must be initialised when `add`.
#[allow(unsafe_code)]
unsafe fn gemm_raw(dst: *mut f32, stride: usize, lhs: Mat, rhs: Mat, threads: usize, add: bool) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let parallelism = if threads <= 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    // SAFETY: every element gemm reads is `lhs.data[r·lhs.stride + c]` (r < m, c < k) or
    // `rhs.data[r·rhs.stride + c]` (r < k, c < n), and every element it writes is
    // `dst[r·stride + c]` (r < m, c < n); `check_dims` put the largest such index inside each
    // slice, and dst's rows are disjoint. Nothing else accesses dst (the caller's contract);
    // dst's old values are read only when `add`, within the same elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            stride as isize,
            add,
            lhs.data.as_ptr(),
            1,
            lhs.stride as isize,
            rhs.data.as_ptr(),
            1,
            rhs.stride as isize,
            if add { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::nan_view;

    #[test]
    fn strided_blocks_match_a_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let lhs: Vec<f32> = (0..m * 9).map(|i| (i as f32 * 0.37).sin()).collect();
        let rhs: Vec<f32> = (0..k * 4).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut dst = vec![f32::NAN; m * 6];
        for threads in [1, 2] {
            matmul(
                MatMut {
                    data: &mut dst,
                    rows: m,
                    cols: n,
                    stride: 6,
                },
                Mat {
                    data: &lhs,
                    rows: m,
                    cols: k,
                    stride: 9,
                },
                Mat {
                    data: &rhs,
                    rows: k,
                    cols: n,
                    stride: 4,
                },
                threads,
            );
            for r in 0..m {
                for c in 0..n {
                    let want: f32 = (0..k).map(|i| lhs[r * 9 + i] * rhs[i * 4 + c]).sum();
                    assert!((dst[r * 6 + c] - want).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "gemm")]
    fn mismatched_shapes_panic() {
        let a = vec![0f32; 12];
        let mut d = vec![0f32; 12];
        matmul(
            MatMut {
                data: &mut d,
                rows: 3,
                cols: 4,
                stride: 4,
            },
            Mat {
                data: &a,
                rows: 3,
                cols: 4,
                stride: 4,
            },
            Mat {
                data: &a,
                rows: 3,
                cols: 4,
                stride: 4,
            },
            1,
        );
    }

    #[test]
    #[should_panic]
    fn views_past_their_slice_panic() {
        let a = vec![0f32; 11];
        let mut d = vec![0f32; 9];
        matmul(
            MatMut {
                data: &mut d,
                rows: 3,
                cols: 3,
                stride: 3,
            },
            Mat {
                data: &a,
                rows: 3,
                cols: 4,
                stride: 4,
            },
            Mat {
                data: &a,
                rows: 4,
                cols: 3,
                stride: 3,
            },
            1,
        );
    }

    #[test]
    fn written_views_have_their_gaps_zeroed() {
        let mut out = vec![f32::NAN; 4 * 5 + 2];
        let view = nan_view(&mut out, 4, 3, 5);
        for r in 0..4 {
            for v in &mut view.data[r * 5..][..3] {
                v.write(1.0);
            }
        }
        // SAFETY: every element of the view was written just above.
        #[allow(unsafe_code)]
        let done = unsafe { assume_written(view) };
        assert_eq!(done.data.len(), 22);
        for (i, &v) in out.iter().enumerate() {
            let in_view = i < 20 && i % 5 < 3;
            assert_eq!(v, if in_view { 1.0 } else { 0.0 }, "{i}");
        }
    }
}
