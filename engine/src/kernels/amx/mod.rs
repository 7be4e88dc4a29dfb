//! f32 matrix products on Intel AMX tiles, for CPUs that have AMX-BF16 (Sapphire Rapids and
//! later Xeons).
//!
//! AMX multiplies bf16 matrices into f32 sums (`TDPBF16PS`: 16 × 16 sums of 32 products, in
//! about the time an AVX-512 core takes for 16 × 16 × 2). An f32 product is computed from bf16
//! pieces of its operands ([`pack::split`]): with `x = x₀ + x₁ + x₂` and `y = y₀ + y₁ + y₂`,
//! `x·y` is the sum of the nine piece products, of which the six with `i + j < 3` carry every
//! bit an f32 product keeps (the other three are below 2⁻²⁴ of it). Products of bf16 values
//! are exact and the sums are f32, so [`Precision::Bf16x6`] computes the f32 product to f32's
//! own accuracy (what JAX calls `HIGHEST`, "bf16_6x"); [`Precision::Bf16x3`] keeps two
//! pieces and the three products with `i + j < 2` (relative error about 2⁻¹⁷ per product, 30x
//! f32's rounding; JAX's `HIGH`), twice as fast.
//!
//! Weights kept in bf16 (`--weights-dtype bf16`) are multiplied here by default on CPUs with
//! AMX ([`bf16_weights`]): a bf16 weight is its own single piece, so the three products of the
//! other operand's pieces with it give the f32 product of the f32 activations and the bf16
//! weight to f32's accuracy, with the weight only laid out in pairs (right operand) or read in
//! place (a convolution's `[c_out, c_in·kh·kw]` weight on the left), never split. On the
//! 2-core Xeon (AMX, AVX-512) this was measured on, SD 1.5 UNet forward with bf16 weights:
//! 1.32 s at 256x256 batch 2 and 2.88 s at 512x512 batch 1, against 1.65 s and 3.27 s widening
//! them for the AVX-512 GEMM and 1.55 s and 3.15 s with f32 weights.
//!
//! For every other product the choice is made once per process by `BEESWAX_MATMUL`: unset
//! (or `f32`) keeps it on the AVX-512/AVX2 path; `bf16x6` or `bf16x3` put every product on AMX
//! when the CPU has it and the kernel grants it; `f32` also keeps bf16 weights off AMX. AMX
//! is opt-in for f32 operands because it is not faster for them yet: both are split and
//! packed on every call (weights included), and the tile loop runs at 9–16 ns per
//! `TDPBF16PS` against 7 ns in a bare loop of the same products (each 32 × 32 block's tiles
//! stored after a few hundred products, operands of consecutive blocks missing L2): on the
//! Xeon above, 2048x320x2560 took 10.9 ms at bf16x6 and 10.8 ms on AVX-512.
//!
//! An element of the product depends only on its row of the left operand and its column of
//! the right one (the sums run over the depth in the same order whatever the shape), so an
//! image's result does not depend on the batch it is in.

mod pack;
mod tiles;

use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{span, Mat, MatMut, MatUninit};
use half::bf16;
pub(crate) use pack::Rhs;
use pack::{pack_lhs, pack_lhs_bf16, pack_rhs, pack_rhs_bf16, Packed};

/// How f32 products are computed on AMX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Two bf16 pieces per operand, three products (relative error about 2⁻¹⁷).
    Bf16x3,
    /// Three bf16 pieces per operand, six products: f32 accuracy.
    Bf16x6,
}

impl Precision {
    fn pieces(self) -> usize {
        match self {
            Precision::Bf16x3 => 2,
            Precision::Bf16x6 => 3,
        }
    }

    /// The (left, right) piece pairs multiplied, sorted by left piece.
    fn pairs(self) -> Vec<(usize, usize)> {
        let p = self.pieces();
        (0..p)
            .flat_map(|i| (0..p - i).map(move |j| (i, j)))
            .collect()
    }
}

/// The environment variable that chooses the products' precision.
pub const ENV: &str = "BEESWAX_MATMUL";

/// What `BEESWAX_MATMUL` asks for f32 products: `None` for the AVX path (unset or `f32`), or
/// AMX at a precision.
/// An unknown value is an error naming the ones accepted.
pub fn requested() -> Result<Option<Precision>, String> {
    parse(std::env::var(ENV).ok().as_deref())
}

/// [`requested`] for the variable's value (`None`: not set).
fn parse(value: Option<&str>) -> Result<Option<Precision>, String> {
    match value {
        None | Some("") | Some("f32") => Ok(None),
        Some("bf16x6") => Ok(Some(Precision::Bf16x6)),
        Some("bf16x3") => Ok(Some(Precision::Bf16x3)),
        Some(other) => Err(format!(
            "{ENV}={other:?} is not a matrix-product mode; use f32 (AVX-512/AVX2, the \
             default), bf16x6 (AMX at f32 accuracy) or bf16x3 (AMX, about 2^-17 relative error)"
        )),
    }
}

/// The precision products run at on AMX in this process, or `None` when they do not use AMX
/// (no AMX, or `BEESWAX_MATMUL=f32`; an unknown value also falls back to the AVX path, and the
/// binary reports it at start through [`requested`]).
pub fn precision() -> Option<Precision> {
    static CHOICE: OnceLock<Option<Precision>> = OnceLock::new();
    *CHOICE.get_or_init(|| requested().ok().flatten().filter(|_| tiles::available()))
}

/// Rows and columns of the output one task computes.
const TASK: usize = 128;
/// Depth tiles (of 32) summed into a task's block before the next ones are loaded.
const DEPTH_TILES: usize = 4;

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `add`) on AMX at `precision`, on up to
/// `threads` rayon threads. Panics if the shapes do not chain or a view reaches past its
/// slice.
pub(crate) fn product(
    dst: MatMut,
    lhs: Mat,
    rhs: Rhs,
    threads: usize,
    add: bool,
    precision: Precision,
) {
    let out = Out::new(
        dst.data.as_mut_ptr(),
        dst.data.len(),
        dst.rows,
        dst.cols,
        dst.stride,
    );
    run(out, lhs, rhs, threads, add, precision);
}

/// [`product`] (without adding) into memory that need not be initialised: every element of
/// the view is written, nothing else touched.
pub(crate) fn product_uninit(
    dst: MatUninit,
    lhs: Mat,
    rhs: Rhs,
    threads: usize,
    precision: Precision,
) {
    let ptr = dst.data.as_mut_ptr().cast();
    let out = Out::new(ptr, dst.data.len(), dst.rows, dst.cols, dst.stride);
    run(out, lhs, rhs, threads, false, precision);
}

/// The product into `out` (read first when `add`).
fn run(out: Out, lhs: Mat, rhs: Rhs, threads: usize, add: bool, precision: Precision) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.shape().1);
    assert!(
        rhs.shape().0 == k && out.rows == m && out.cols == n,
        "amx: shapes"
    );
    let (rm, rk) = match rhs {
        Rhs::Rows(b) | Rhs::Cols(b) => (b, b.rows),
    };
    assert!(lhs.data.len() >= span(m, k, lhs.stride), "amx: lhs");
    assert!(rm.data.len() >= span(rk, rm.cols, rm.stride), "amx: rhs");
    if m == 0 || n == 0 {
        return;
    }
    let parallel = threads > 1;
    let pieces = precision.pieces();
    let a = pack_lhs(&lhs, pieces, parallel);
    let b = pack_rhs(&rhs, pieces, parallel);
    multiply(out, &a, &b, &precision.pairs(), threads, add);
}

/// Whether products with a bf16 weight run on AMX (`product_bf16_rhs`, `product_bf16_lhs`): when the CPU has it and `BEESWAX_MATMUL` is not `f32`. A bf16 value
/// is its own single piece, so the three products of the other operand's three pieces with it
/// are the f32 product itself (to f32's accuracy): no precision is traded, and the weight is
/// only laid out, not split.
pub fn bf16_weights() -> bool {
    static CHOICE: OnceLock<bool> = OnceLock::new();
    *CHOICE.get_or_init(|| std::env::var(ENV).ok().as_deref() != Some("f32") && tiles::available())
}

/// `dst = lhs · w` for the bf16 weight `w` (`[k, n]` row-major, `k = lhs.cols`) on AMX, to
/// f32 accuracy (see [`bf16_weights`]); on up to `threads` rayon threads. Panics if the
/// shapes do not chain or a view reaches past its slice.
pub(crate) fn product_bf16_rhs(dst: MatMut, lhs: Mat, w: &[bf16], n: usize, threads: usize) {
    let (m, k) = (lhs.rows, lhs.cols);
    assert!(w.len() == k * n, "amx: bf16 weight is not [{k}, {n}]");
    assert!(lhs.data.len() >= span(m, k, lhs.stride), "amx: lhs");
    let Some(out) = Out::whole(dst, m, n) else {
        return;
    };
    let parallel = threads > 1;
    let a = pack_lhs(&lhs, 3, parallel);
    let b = pack_rhs_bf16(w, k, n, parallel);
    multiply(out, &a, &b, &[(0, 0), (1, 0), (2, 0)], threads, false);
}

/// `dst = w · rhs` for the bf16 weight `w` (`[m, k]` row-major, `k = rhs.rows`) on AMX, as
/// [`product_bf16_rhs`].
pub(crate) fn product_bf16_lhs(dst: MatMut, w: &[bf16], m: usize, rhs: Mat, threads: usize) {
    let (k, n) = (rhs.rows, rhs.cols);
    assert!(w.len() == m * k, "amx: bf16 weight is not [{m}, {k}]");
    assert!(rhs.data.len() >= span(k, n, rhs.stride), "amx: rhs");
    let Some(out) = Out::whole(dst, m, n) else {
        return;
    };
    let parallel = threads > 1;
    // A convolution's weight (`[c_out, c_in·kh·kw]`) is read in place where its shape allows.
    let a = Packed::in_place(w, m, k).unwrap_or_else(|| pack_lhs_bf16(w, m, k, parallel));
    let b = pack_rhs(&Rhs::Rows(rhs), 3, parallel);
    multiply(out, &a, &b, &[(0, 0), (0, 1), (0, 2)], threads, false);
}

/// `out (+)= a · b` for packed operands, summing the (left piece, right piece) products of
/// `pairs` (sorted by left piece), in tasks of [`TASK`] × [`TASK`] outputs.
fn multiply(out: Out, a: &Packed, b: &Packed, pairs: &[(usize, usize)], threads: usize, add: bool) {
    let (m, n) = (out.rows, out.cols);
    assert!(a.depth_tiles == b.depth_tiles, "amx: depth");
    assert!(a.blocks * 16 >= m && b.blocks * 16 >= n, "amx: operands");
    assert!(out.len >= span(m, n, out.stride), "amx: dst");
    assert!(m <= 1 || out.stride >= n, "amx: dst rows overlap");
    let tasks: Vec<(usize, usize)> = (0..m)
        .step_by(TASK)
        .flat_map(|r| (0..n).step_by(TASK).map(move |c| (r, c)))
        .collect();
    let run = |&(r0, c0): &(usize, usize)| {
        let (rows, cols) = (TASK.min(m - r0), TASK.min(n - c0));
        let (pr, pc) = (rows.div_ceil(32) * 32, cols.div_ceil(32) * 32);
        let mut buf = vec![0f32; pr * pc + 16];
        let start = buf.as_ptr().align_offset(64).min(16);
        let acc = &mut buf[start..][..pr * pc];
        if add {
            out.read(r0, c0, rows, cols, acc, pc);
        }
        tiles::with_tiles(|| {
            for kt0 in (0..a.depth_tiles).step_by(DEPTH_TILES) {
                let kts = kt0..(kt0 + DEPTH_TILES).min(a.depth_tiles);
                for cb in (0..pc).step_by(32) {
                    for rb in (0..pr).step_by(32) {
                        let (ma, nb) = ((r0 + rb) / 16, (c0 + cb) / 16);
                        let acc = &mut acc[rb * pc + cb..];
                        tiles::block(a, ma, b, nb, kts.clone(), pairs, acc, pc);
                    }
                }
            }
        });
        out.write(r0, c0, rows, cols, acc, pc);
    };
    if threads > 1 && tasks.len() > 1 {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}

/// The output, shared by tasks that each read and write their own block of it: a slice of
/// `len` values at `ptr`, borrowed mutably by the caller for the whole product, holding a
/// `rows × cols` view with row stride `stride`.
struct Out {
    ptr: *mut f32,
    len: usize,
    rows: usize,
    cols: usize,
    stride: usize,
}

// SAFETY: tasks access disjoint blocks of the output (see `Out::row`).
#[allow(unsafe_code)]
unsafe impl Sync for Out {}

impl Out {
    /// `dst` as the output of an `m × n` product, `None` when that is empty. Panics if `dst`
    /// is not `m × n`.
    fn whole(dst: MatMut, m: usize, n: usize) -> Option<Self> {
        assert!(dst.rows == m && dst.cols == n, "amx: shapes");
        let (len, stride) = (dst.data.len(), dst.stride);
        (m > 0 && n > 0).then(|| Self::new(dst.data.as_mut_ptr(), len, m, n, stride))
    }

    fn new(ptr: *mut f32, len: usize, rows: usize, cols: usize, stride: usize) -> Self {
        Self {
            ptr,
            len,
            rows,
            cols,
            stride,
        }
    }

    /// Where row `r` of the block at (`r0`, `c0`) starts.
    ///
    /// Each task of [`run`] has its own (`r0`, `c0`) and `rows × cols` within the `m × n`
    /// output whose span `run` checked against the slice `ptr` comes from; rows of the
    /// output do not overlap (`stride ≥ n`). So no two tasks touch the same element, and every
    /// element a task copies is inside the slice, which `product` borrows mutably for the
    /// whole call.
    fn row(&self, r0: usize, c0: usize, r: usize) -> *mut f32 {
        self.ptr.wrapping_add((r0 + r) * self.stride + c0)
    }

    /// Copies the block (`rows × cols` at `r0`, `c0`) into `acc` (rows `ld` apart).
    #[allow(unsafe_code)]
    fn read(&self, r0: usize, c0: usize, rows: usize, cols: usize, acc: &mut [f32], ld: usize) {
        for r in 0..rows {
            let to = &mut acc[r * ld..][..cols];
            // SAFETY: see `row`: `cols` elements from there are this task's, in the slice.
            unsafe { std::ptr::copy_nonoverlapping(self.row(r0, c0, r), to.as_mut_ptr(), cols) };
        }
    }

    /// Copies `acc` (rows `ld` apart) into the block (`rows × cols` at `r0`, `c0`).
    #[allow(unsafe_code)]
    fn write(&self, r0: usize, c0: usize, rows: usize, cols: usize, acc: &[f32], ld: usize) {
        for r in 0..rows {
            let from = &acc[r * ld..][..cols];
            // SAFETY: see `row`: `cols` elements from there are this task's, in the slice.
            unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), self.row(r0, c0, r), cols) };
        }
    }
}

#[cfg(test)]
mod tests;
