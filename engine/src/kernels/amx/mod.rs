//! f32 matrix products on Intel AMX tiles, for CPUs that have AMX-BF16 (Sapphire Rapids and
//! later Xeons).
//!
//! AMX multiplies bf16 matrices into f32 sums (`TDPBF16PS`: 16 × 16 sums of 32 products, in
//! about the time an AVX-512 core takes for 16 × 16 × 2). An f32 product is computed from bf16
//! pieces of its operands (`pack::split`): with `x = x₀ + x₁ + x₂` and `y = y₀ + y₁ + y₂`,
//! `x·y` is the sum of the nine piece products, of which the six with `i + j < 3` carry every
//! bit an f32 product keeps (the other three are below 2⁻²⁴ of it). Products of bf16 values
//! are exact and the sums are f32, so [`Precision::Bf16x6`] computes the f32 product to f32's
//! own accuracy (what JAX calls `HIGHEST`, "bf16_6x"); [`Precision::Bf16x3`] keeps two
//! pieces and the three products with `i + j < 2` (relative error about 2⁻¹⁷ per product, 30x
//! f32's rounding; JAX's `HIGH`), twice as fast.
//!
//! Weights kept in bf16 (`--weights-dtype bf16`) are multiplied here by default on CPUs with
//! AMX ([`narrow_weights`]): a bf16 weight is its own single piece, so the three products of the
//! other operand's pieces with it give the f32 product of the f32 activations and the bf16
//! weight to f32's accuracy, with the weight only laid out in pairs (right operand) or read in
//! place (a convolution's `[c_out, c_in·kh·kw]` weight on the left), never split. On the
//! 2-core Xeon (AMX, AVX-512) this was measured on, SD 1.5 UNet forward with bf16 weights:
//! 1.32 s at 256x256 batch 2 and 2.88 s at 512x512 batch 1, against 1.65 s and 3.27 s widening
//! them for the AVX-512 GEMM and 1.55 s and 3.15 s with f32 weights. The tile loop of
//! `multiply` and outputs and packed operands no longer zeroed in a pass of their own took that
//! to 1.18–1.22 s and 2.56 s (1.29 s and 2.74 s before, in the same alternating runs; f32
//! weights 1.50 s at 256x256).
//!
//! f16 weights (`--weights-dtype f16`, the default for an f16 file) are two bf16 pieces each
//! and take five products; only linear layers' weights (the right operand) of at most 4 Mi
//! values come here, split as they are laid out (`narrow_gemm`'s `amx_weight` says why the
//! others are widened). With f16 weights the SD 1.5 UNet forward went from 2.69 s to 2.62–2.64
//! s at 512x512 with every linear layer's f16 weight here, and to 2.43–2.51 s with the size
//! limit and the widening's prefetches (f32 weights: 2.66–2.68 s in those runs).
//!
//! For every other product the choice is made once per process by `BEESWAX_MATMUL`: unset
//! (or `f32`) keeps it on the AVX-512/AVX2 path; `bf16x6` or `bf16x3` put every product on AMX
//! when the CPU has it and the kernel grants it; `f32` also keeps bf16 weights off AMX. AMX
//! is opt-in for f32 operands because it is not faster for them yet. The tile loop
//! (`multiply`) now beats the AVX-512 GEMM on large products (on the Xeon above,
//! 2048x320x2560 in 8.1–9.2 ms at bf16x6 against 10.6–10.9 ms), but both operands are split and
//! packed on every call, weights included, and most of the UNet's products are narrow (a
//! few hundred columns, or Winograd's per-position products of 128 tiles): the SD 1.5 UNet at
//! 256x256 batch 2 took 2.27–2.45 s with `bf16x6` against 1.49–1.54 s on AVX-512. Weights
//! packed once, at load, would cost half as much memory again as f32 weights.
//!
//! An element of the product depends only on its row of the left operand and its column of
//! the right one (the sums run over the depth in the same order whatever the shape), so an
//! image's result does not depend on the batch it is in.

mod pack;
mod tiles;

use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{span, Mat, MatMut, MatUninit};
use super::widen::Stored;
pub(crate) use pack::Rhs;
use pack::{pack_lhs, pack_lhs_bf16, pack_lhs_f16, pack_rhs, pack_rhs_bf16, pack_rhs_f16, Packed};

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

    /// The (left, right) piece pairs multiplied, sorted by right piece: a block's right
    /// tiles come from L2, its left ones from L1 (see [`multiply`]).
    fn pairs(self) -> Vec<(usize, usize)> {
        let p = self.pieces();
        (0..p)
            .flat_map(|j| (0..p - j).map(move |i| (i, j)))
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

/// Columns of the output one task computes at most: the right operand's tiles for them (over
/// [`DEPTH_SPAN`]) stay in L2 while every row block of the task passes over them.
const PANEL: usize = 384;
/// Rows of the output one task computes at most.
const TASK_ROWS: usize = 512;
/// Most depth tiles (of 32) summed into a block before the next block: a panel's right tiles
/// over this depth are at most 384 × 640 values × 3 pieces of bf16, 1.4 MiB (L2 is 2 MiB per
/// core on the Xeon of the module doc).
const DEPTH_SPAN: usize = 20;

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
    run(Out::of(dst), lhs, rhs, threads, add, precision);
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
    run(Out::of_uninit(dst), lhs, rhs, threads, false, precision);
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

/// Whether products with a 16-bit weight run on AMX ([`product_weight_rhs_uninit`],
/// [`product_weight_lhs_uninit`]): when the CPU has it and `BEESWAX_MATMUL` is not `f32`. A bf16
/// value is its own single piece, so the three products of the other operand's three pieces
/// with it are the f32 product itself (to f32's accuracy): no precision is traded, and the
/// weight is only laid out, not split. An f16 value is exactly two pieces (11 significant
/// bits: 8 and at most 3), and the five products whose pieces' indices sum to less than 3 give
/// the f32 product to f32's accuracy, as [`Precision::Bf16x6`] does for two f32 operands (the
/// sixth is below 2⁻²⁶ of it).
pub fn narrow_weights() -> bool {
    static CHOICE: OnceLock<bool> = OnceLock::new();
    *CHOICE.get_or_init(|| std::env::var(ENV).ok().as_deref() != Some("f32") && tiles::available())
}

/// The (left piece, right piece) products of a weight of `pieces` pieces (on the left when
/// `left`) and an f32 operand of three: those that carry an f32 product's bits
/// ([`Precision::Bf16x6`]'s pairs), in its order.
fn weight_pairs(pieces: usize, left: bool) -> Vec<(usize, usize)> {
    let weight = |&(i, j): &(usize, usize)| if left { i } else { j };
    Precision::Bf16x6
        .pairs()
        .into_iter()
        .filter(|pair| weight(pair) < pieces)
        .collect()
}

/// Pieces of a weight stored as `w`: one for bf16, two for f16, three for f32.
fn weight_pieces(w: Stored) -> usize {
    match w {
        Stored::Bf16(_) => 1,
        Stored::F16(_) => 2,
        Stored::F32(_) => 3,
    }
}

/// [`product_weight_rhs_uninit`] into initialised memory (the tests' entry).
#[cfg(test)]
pub(crate) fn product_weight_rhs(dst: MatMut, lhs: Mat, w: Stored, n: usize, threads: usize) {
    weight_rhs(Out::of(dst), lhs, w, n, threads)
}

/// `dst = lhs · w` for the weight `w` (`[k, n]` row-major, `k = lhs.cols`) on AMX, to f32
/// accuracy (see [`narrow_weights`]); on up to `threads` rayon threads, into memory that need
/// not be initialised: every element of the view is written, nothing else touched. Panics if
/// the shapes do not chain or a view reaches past its slice.
pub(crate) fn product_weight_rhs_uninit(
    dst: MatUninit,
    lhs: Mat,
    w: Stored,
    n: usize,
    threads: usize,
) {
    weight_rhs(Out::of_uninit(dst), lhs, w, n, threads)
}

/// `out = lhs · w` for [`product_weight_rhs_uninit`].
fn weight_rhs(out: Out, lhs: Mat, w: Stored, n: usize, threads: usize) {
    let (m, k) = (lhs.rows, lhs.cols);
    assert!(out.rows == m && out.cols == n, "amx: shapes");
    assert!(w.len() == k * n, "amx: weight is not [{k}, {n}]");
    assert!(lhs.data.len() >= span(m, k, lhs.stride), "amx: lhs");
    if m == 0 || n == 0 {
        return;
    }
    let parallel = threads > 1;
    let a = pack_lhs(&lhs, 3, parallel);
    let b = match w {
        Stored::Bf16(w) => pack_rhs_bf16(w, k, n, parallel),
        Stored::F16(w) => pack_rhs_f16(w, k, n, parallel),
        Stored::F32(w) => pack_rhs(&Rhs::Rows(Mat::dense(w, k, n)), 3, parallel),
    };
    let pairs = weight_pairs(weight_pieces(w), false);
    multiply(out, &a, &b, &pairs, threads, false);
}

/// [`product_weight_lhs_uninit`] into initialised memory (the tests' entry).
#[cfg(test)]
pub(crate) fn product_weight_lhs(dst: MatMut, w: Stored, m: usize, rhs: Mat, threads: usize) {
    weight_lhs(Out::of(dst), w, m, rhs, threads)
}

/// `dst = w · rhs` for the weight `w` (`[m, k]` row-major, `k = rhs.rows`) on AMX, as
/// [`product_weight_rhs_uninit`].
pub(crate) fn product_weight_lhs_uninit(
    dst: MatUninit,
    w: Stored,
    m: usize,
    rhs: Mat,
    threads: usize,
) {
    weight_lhs(Out::of_uninit(dst), w, m, rhs, threads)
}

/// `out = w · rhs` for [`product_weight_lhs_uninit`].
fn weight_lhs(out: Out, w: Stored, m: usize, rhs: Mat, threads: usize) {
    let (k, n) = (rhs.rows, rhs.cols);
    assert!(out.rows == m && out.cols == n, "amx: shapes");
    assert!(w.len() == m * k, "amx: weight is not [{m}, {k}]");
    assert!(rhs.data.len() >= span(k, n, rhs.stride), "amx: rhs");
    if m == 0 || n == 0 {
        return;
    }
    let parallel = threads > 1;
    let a = match w {
        // A convolution's bf16 weight (`[c_out, c_in·kh·kw]`) is read in place where its shape
        // allows.
        Stored::Bf16(w) => {
            Packed::in_place(w, m, k).unwrap_or_else(|| pack_lhs_bf16(w, m, k, parallel))
        }
        Stored::F16(w) => pack_lhs_f16(w, m, k, parallel),
        Stored::F32(w) => pack_lhs(&Mat::dense(w, m, k), 3, parallel),
    };
    let b = pack_rhs(&Rhs::Rows(rhs), 3, parallel);
    let pairs = weight_pairs(weight_pieces(w), true);
    multiply(out, &a, &b, &pairs, threads, false);
}

/// `out (+)= a · b` for packed operands, summing the (left piece, right piece) products of
/// `pairs`, on up to `threads` rayon threads.
///
/// The output is cut into tasks of up to [`TASK_ROWS`] × [`PANEL`] values. A task sums its
/// 32 × 32 blocks over up to [`DEPTH_SPAN`] depth tiles at a time in the tile registers,
/// straight into the output (a block at the output's edge goes through a scratch block): its
/// row blocks in turn, each against every column block of the panel, so that the left
/// operand's tiles of a row block stay in L1 and the panel's tiles in L2. Against the loop
/// this replaced (tasks of 128 × 128, sums stored and reloaded every 4 depth tiles), on the
/// Xeon of the module doc: 2048x320x2560 at bf16x6 in 8.1–9.2 ms against 11.2–11.5 ms (a C
/// model of both loops on one core: 9.3–9.9 against 13.5–14.4 ns per `TDPBF16PS`).
fn multiply(out: Out, a: &Packed, b: &Packed, pairs: &[(usize, usize)], threads: usize, add: bool) {
    let (m, n) = (out.rows, out.cols);
    assert!(a.depth_tiles == b.depth_tiles, "amx: depth");
    assert!(a.blocks * 16 >= m && b.blocks * 16 >= n, "amx: operands");
    assert!(out.len >= span(m, n, out.stride), "amx: dst");
    assert!(m <= 1 || out.stride >= n, "amx: dst rows overlap");
    let depth = a.depth_tiles;
    if depth == 0 {
        // An empty sum: the output is zero (or stays as it is when adding).
        if !add {
            let zeros = vec![0.0; n];
            (0..m).for_each(|r| out.write(r, 0, 1, n, &zeros, n));
        }
        return;
    }
    let spans = depth.div_ceil(DEPTH_SPAN);
    let depth_span = depth.div_ceil(spans);
    let panels = n.div_ceil(PANEL);
    let width = n.div_ceil(panels).div_ceil(32) * 32;
    let chunks = m.div_ceil(TASK_ROWS).max((2 * threads).div_ceil(panels));
    let height = m.div_ceil(chunks).div_ceil(32) * 32;
    let tasks: Vec<(usize, usize)> = (0..n)
        .step_by(width)
        .flat_map(|c| (0..m).step_by(height).map(move |r| (r, c)))
        .collect();
    let run = |&(r0, c0): &(usize, usize)| {
        let (rows, cols) = (height.min(m - r0), width.min(n - c0));
        let mut scratch = Scratch([0.0; 1024]);
        tiles::with_tiles(|| {
            for kt0 in (0..depth).step_by(depth_span) {
                let kts = kt0..(kt0 + depth_span).min(depth);
                let fresh = kt0 == 0 && !add;
                for r in (r0..r0 + rows).step_by(32) {
                    for c in (c0..c0 + cols).step_by(32) {
                        let whole = r + 32 <= m && c + 32 <= n;
                        let (br, bc) = (32.min(m - r), 32.min(n - c));
                        let sums = if whole {
                            (out.row(r, c, 0), out.stride)
                        } else {
                            if !fresh {
                                out.read(r, c, br, bc, &mut scratch.0, 32);
                            }
                            (scratch.0.as_mut_ptr(), 32)
                        };
                        // SAFETY: a whole block's 32 rows of 32 values at (r, c) are this
                        // task's and inside the output (see `Out::row`), initialised when
                        // read (by the caller when `add`, by the previous span otherwise);
                        // the scratch block is 32 × 32 and filled before it is read.
                        #[allow(unsafe_code)]
                        unsafe {
                            tiles::block(a, r / 16, b, c / 16, kts.clone(), pairs, sums, fresh)
                        };
                        if !whole {
                            out.write(r, c, br, bc, &scratch.0, 32);
                        }
                    }
                }
            }
        });
    };
    if threads > 1 && tasks.len() > 1 {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
}

/// A 32 × 32 block of sums for the output's edges, aligned as a tile's rows.
#[repr(C, align(64))]
struct Scratch([f32; 1024]);

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
    /// The view `dst`, borrowed mutably for the product.
    fn of(dst: MatMut) -> Self {
        Self::new(
            dst.data.as_mut_ptr(),
            dst.data.len(),
            dst.rows,
            dst.cols,
            dst.stride,
        )
    }

    /// The view `dst` of memory that need not be initialised (the product writes every
    /// element before it reads any), borrowed mutably for the product.
    fn of_uninit(dst: MatUninit) -> Self {
        let ptr = dst.data.as_mut_ptr().cast();
        Self::new(ptr, dst.data.len(), dst.rows, dst.cols, dst.stride)
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
    /// Each task of [`multiply`] has its own (`r0`, `c0`) and `rows × cols` within the `m × n`
    /// output whose span `multiply` checked against the slice `ptr` comes from; rows of the
    /// output do not overlap (`stride ≥ n`). So no two tasks touch the same element, and every
    /// element a task copies or loads and stores as tiles is inside the slice, which `product`
    /// borrows mutably for the whole call.
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
