//! `dst = lhs · w` for a weight `w` (`[k, n]` row-major, f32 or 16-bit) on the `gemm` crate's
//! own AVX-512 microkernels (register tiles of 64 weight columns x 6 activation rows), driven
//! here so that each block of the weight is widened straight into the packed panels the
//! microkernels read.
//!
//! Through the `gemm` crate a 16-bit weight took two passes per block: widened into an f32
//! block ([`super::narrow_gemm`]), which the GEMM then read again to pack into its panels.
//! Here the widening is the packing: each weight value is read once per product, as 16 bits,
//! and written once, into a panel that stays in the core's L2 cache while every activation row
//! is multiplied by it. The activations are read in place (the microkernels broadcast their
//! values from the rows of `lhs`). A weight on the left ([`product_left`], the convolutions by
//! im2col) is the broadcast operand instead, widened a few rows at a time.
//!
//! Every output value is the same sum in the same order whatever the number of rows, the
//! threads or the way they share the work: blocks of [`KC`] terms (as deep as the weight
//! allows, by its depth alone), each summed in a register by fused multiply-adds and added
//! to the output in turn. An image's result does not depend on its batch.

use rayon::prelude::*;

use super::gemm::{assume_written, span, Mat, MatUninit};
use super::narrow_gemm::with_buf;
use super::widen::Stored;

/// Weight columns per panel: the microkernel's four 16-lane vectors.
pub(super) const MR: usize = 64;

/// Activation rows per microkernel call.
pub(super) const NR: usize = 6;

/// Most terms per block of the sum: a panel of 128 KiB (in L2), the activations' part of a
/// call (6 rows, 12 KiB) in L1. Measured on the Zen 4 (`narrow_product_speed`): with 256 terms
/// (and the rows shared out more often) the products ran 1–23% slower than the gemm crate's
/// f32 ones, with 512 within ±5%.
const KC: usize = 512;

/// Panels packed together (512 KiB: half the L2 of the machines measured); each group of
/// activation rows is multiplied by all of them while it is in L1.
const PANELS: usize = 4;

/// Activation columns per chunk of a product with the weight on the left ([`product_left`]):
/// each group of [`NR`] weight rows is multiplied by a chunk's columns, re-read from L2 for
/// every group (at most 256 x 512 values, 512 KiB).
const LEFT_COLUMNS: usize = 256;

/// Whether this CPU runs the microkernels (AVX-512F).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst = lhs · w`, `w` being `[lhs.cols, n]` row-major, on up to `threads` rayon threads.
/// Writes every element of `dst`'s view, and zeroes the values of its slice between and past
/// the view's rows. Panics if the shapes do not chain, a view reaches past its slice, or
/// [`available`] is false.
pub(crate) fn product(mut dst: MatUninit, lhs: Mat, w: Stored, n: usize, threads: usize) {
    let (m, k) = (lhs.rows, lhs.cols);
    let sums = checked(&mut dst, &lhs, w, [(m, n), (k, n)], k);
    let out = Out(dst.data.as_mut_ptr().cast::<f32>());
    let job = Job {
        lhs,
        w,
        n,
        out,
        stride: dst.stride,
    };
    if sums {
        shares(m, n, threads.max(1))
            .into_par_iter()
            .for_each(|(cols, rows)| job.run(cols, rows));
    }
    // SAFETY: the shares cover every row and column of the view, and `Job::run` writes
    // every element of its share (the first block of the sum stores, the others add).
    #[allow(unsafe_code)]
    unsafe {
        assume_written(dst);
    }
}

/// `dst = w · rhs`, `w` being `[m, rhs.rows]` row-major (the convolutions by im2col): the
/// weight is the microkernels' broadcast operand, widened [`NR`] rows at a time into a small
/// buffer that stays in L1, and the activations are read in place as their vector operand
/// (copied into panels of the 16-lane vectors the kernels load), [`LEFT_COLUMNS`] columns at
/// a time; the threads share out the weight's rows. Each column's sums are the same whatever
/// the number of columns (an image's result does not depend on its batch). Writes every
/// element of `dst`'s view and zeroes the rest of its slice as [`product`] does. Panics on
/// shapes that do not chain or views past their slices.
pub(crate) fn product_left(mut dst: MatUninit, w: Stored, m: usize, rhs: Mat, threads: usize) {
    let (k, p) = (rhs.rows, rhs.cols);
    let sums = checked(&mut dst, &rhs, w, [(m, p), (m, k)], k);
    let out = Out(dst.data.as_mut_ptr().cast::<f32>());
    if sums {
        row_shares(m, threads.max(1))
            .into_par_iter()
            .for_each(|rows| left_rows(w, rhs, out, dst.stride, rows));
    }
    // SAFETY: the threads' rows cover the view, and `left_rows` writes every element of its
    // rows (the first block of the sum stores, the others add).
    #[allow(unsafe_code)]
    unsafe {
        assume_written(dst);
    }
}

/// Rows `rows` of [`product_left`]'s output (at `os` from `out`), block of the sum by block:
/// the block's part of those rows of the weight widened once, then chunk of [`LEFT_COLUMNS`]
/// columns by chunk, the chunk's part of `rhs` copied into panels of [`MR`] columns
/// (contiguous: read in place, rows a power of two apart fall in the same L1 sets) that stay in L2 while every group of [`NR`] rows is multiplied by them.
fn left_rows(w: Stored, rhs: Mat, out: Out, os: usize, rows: std::ops::Range<usize>) {
    let k = rhs.rows;
    let blocks = k.div_ceil(KC);
    let most = k.div_ceil(blocks);
    // The widened rows (all of them for several chunks, a group's at a time for one: then
    // they stay in L1), then the panels of the activations (stale values: every value the
    // kernels store is written first).
    let all = rhs.cols > LEFT_COLUMNS;
    let widened = if all { rows.len() } else { NR };
    with_buf((widened + LEFT_COLUMNS) * most, |buf| {
        let (b, a) = buf.split_at_mut(widened * most);
        left_blocks(w, rhs, out, os, rows, (b, a), all)
    })
}

/// [`left_rows`] with its buffers `b` (the widened rows: all of them when `all`, else one
/// group's) and `a` (the panels).
fn left_blocks(
    w: Stored,
    rhs: Mat,
    out: Out,
    os: usize,
    rows: std::ops::Range<usize>,
    (b, a): (&mut [f32], &mut [f32]),
    all: bool,
) {
    let (k, p) = (rhs.rows, rhs.cols);
    let blocks = k.div_ceil(KC);
    // Rows `js` of the weight's block `ks` widened into `b`, the next rows' part fetched
    // while each is widened.
    let widen_rows = |b: &mut [f32], js: std::ops::Range<usize>, ks: std::ops::Range<usize>| {
        for (j, row) in js.clone().zip(b.chunks_exact_mut(ks.len())) {
            Ahead::new(&w, k, j + 2..(j + 3).min(rows.end), ks.start, ks.len()).fetch(1);
            w.widen_ahead(j * k + ks.start, row, 0);
        }
    };
    for blk in 0..blocks {
        let ks = blk * k / blocks..(blk + 1) * k / blocks;
        let depth = ks.len();
        if all {
            widen_rows(b, rows.clone(), ks.clone());
        }
        for c0 in (0..p).step_by(LEFT_COLUMNS) {
            let cols = c0..(c0 + LEFT_COLUMNS).min(p);
            let panels = cols.len().div_ceil(MR);
            for (q, panel) in a.chunks_mut(depth * MR).take(panels).enumerate() {
                let (i0, lanes) = (c0 + q * MR, MR.min(cols.end - c0 - q * MR));
                for (kk, dst) in ks.clone().zip(panel.chunks_exact_mut(MR)) {
                    dst[..lanes].copy_from_slice(&rhs.data[kk * rhs.stride + i0..][..lanes]);
                }
            }
            for j0 in rows.clone().step_by(NR) {
                let nr = NR.min(rows.end - j0);
                let b = if all {
                    &b[(j0 - rows.start) * depth..][..nr * depth]
                } else {
                    widen_rows(b, j0..j0 + nr, ks.clone());
                    &b[..nr * depth]
                };
                for (q, panel) in a.chunks(depth * MR).take(panels).enumerate() {
                    let i0 = c0 + q * MR;
                    let shape = (MR.min(cols.end - i0), nr, depth);
                    tile(
                        (panel, MR),
                        shape,
                        (b, depth),
                        (out, j0 * os + i0, os),
                        ks.start,
                    );
                }
            }
        }
    }
}

/// One microkernel call, for both sides: `width` (at most [`MR`]) weight or activation
/// columns of `panel` (`depth` columns of contiguous values, `ps` apart: [`MR`] in a packed
/// panel; whole 16-lane vectors are read, lanes past `width` ignored) times `nr` (at most
/// [`NR`]) rows of the broadcast operand (`depth` values each, rows `stride` apart), into the
/// output tile `offset` values from `out` (rows `os` apart): stored when the block starts the
/// sum (`k0` is 0), else added.
fn tile(
    (panel, ps): (&[f32], usize),
    (width, nr, depth): (usize, usize, usize),
    (rhs, stride): (&[f32], usize),
    (out, offset, os): (Out, usize, usize),
    k0: usize,
) {
    assert!(width <= MR && nr <= NR && ps >= width.div_ceil(16) * 16);
    assert!(panel.len() >= span(depth, width.div_ceil(16) * 16, ps));
    assert!(rhs.len() >= span(nr, depth, stride));
    // SAFETY: the asserts above bound the kernel's reads of `panel` (`depth` columns of whole
    // vectors, `ps` apart) and of `rhs` (`nr` rows of `depth`); the caller's output holds `nr`
    // rows of `width` values from `offset`, which this thread alone writes (its share); AVX-512F
    // is there (`available`, checked by `product`, `product_left` and `tile_into`).
    #[allow(unsafe_code)]
    unsafe {
        kernel(width, nr)(
            width,
            nr,
            depth,
            out.0.add(offset),
            panel.as_ptr(),
            rhs.as_ptr(),
            os as isize,
            1,
            ps as isize,
            1,
            stride as isize,
            1.0,
            1.0,
            u8::from(k0 > 0),
            false,
            false,
            false,
            panel.as_ptr(),
        )
    }
}

/// [`tile`] for a caller on one thread, into `dst`: `nr` rows of `width` values from
/// `offset`, rows `os` apart. Panics unless this CPU runs the microkernels and the tile lies
/// inside `dst`.
pub(super) fn tile_into(
    (dst, offset, os): (&mut [f32], usize, usize),
    panel: (&[f32], usize),
    shape: (usize, usize, usize),
    rhs: (&[f32], usize),
    k0: usize,
) {
    let (width, nr, _) = shape;
    assert!(available(), "panels: this CPU has no AVX-512");
    assert!(
        offset.saturating_add(span(nr, width, os)) <= dst.len() && (nr <= 1 || width <= os),
        "panels: a tile of {nr} x {width} from {offset} (rows {os} apart) past {} values",
        dst.len()
    );
    tile(panel, shape, rhs, (Out(dst.as_mut_ptr()), offset, os), k0)
}

/// Checks a product's operands (panics unless this CPU runs the microkernels, `dst` is
/// `[rows, cols]` of `shapes[0]`, `w` holds the values of `shapes[1]`, and the views lie
/// inside their slices), and writes `dst`'s zeros when the sum has no terms (`k` is 0).
/// Returns whether there is anything to multiply.
fn checked(
    dst: &mut MatUninit,
    other: &Mat,
    w: Stored,
    shapes: [(usize, usize); 2],
    k: usize,
) -> bool {
    let [out, weight] = shapes;
    assert!(available(), "panels: this CPU has no AVX-512");
    assert_eq!(
        w.len(),
        weight.0 * weight.1,
        "panels: weight of {} values is not {weight:?}",
        w.len()
    );
    assert_eq!((dst.rows, dst.cols), out, "panels: output is not {out:?}");
    assert!(
        other.data.len() >= span(other.rows, other.cols, other.stride),
        "panels: activations past their slice"
    );
    assert!(
        dst.data.len() >= span(dst.rows, dst.cols, dst.stride),
        "panels: output past its slice"
    );
    if k == 0 {
        for r in 0..dst.rows {
            for v in &mut dst.data[r * dst.stride..][..dst.cols] {
                v.write(0.0);
            }
        }
    }
    k > 0 && dst.rows > 0 && dst.cols > 0
}

/// The threads' shares of the output, as (weight columns, activation rows): the columns in
/// whole panels (each thread packs only its part of the weight; the activations are read in
/// place, so nothing is packed twice) when they share out evenly enough, else the rows in
/// whole groups of [`NR`] (each thread packing the whole weight: 5 panels on 2 threads would
/// leave one idle a sixth of the time).
fn shares(
    m: usize,
    n: usize,
    threads: usize,
) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let panels = n.div_ceil(MR);
    if panels % threads == 0 || panels >= 8 * threads {
        let count = threads.min(panels);
        (0..count)
            .map(|t| {
                (
                    t * panels / count * MR..((t + 1) * panels / count * MR).min(n),
                    0..m,
                )
            })
            .collect()
    } else {
        row_shares(m, threads)
            .into_iter()
            .map(|rows| (0..n, rows))
            .collect()
    }
}

/// `m` rows shared out among at most `threads` threads in whole groups of [`NR`], as evenly
/// as they go (one share per thread that gets a group).
fn row_shares(m: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    let groups = m.div_ceil(NR);
    let count = threads.min(groups);
    (0..count)
        .map(|t| t * groups / count * NR..((t + 1) * groups / count * NR).min(m))
        .collect()
}

/// The output's first element, shared by the threads, which write disjoint parts of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);

// SAFETY: the pointer is only written through in `Job::run`, each thread within its own share
// of the output (disjoint rows or disjoint columns), and the slice outlives the threads.
#[allow(unsafe_code)]
unsafe impl Send for Out {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Out {}

/// One product's operands (checked against their slices by [`product`]).
struct Job<'a> {
    lhs: Mat<'a>,
    w: Stored<'a>,
    n: usize,
    out: Out,
    stride: usize,
}

impl Job<'_> {
    /// The output's `rows` x `cols`, block of the sum by block, each block's panels packed
    /// then multiplied by every row.
    fn run(&self, cols: std::ops::Range<usize>, rows: std::ops::Range<usize>) {
        let k = self.lhs.cols;
        let blocks = k.div_ceil(KC);
        with_buf(PANELS * MR * k.div_ceil(blocks), |packed| {
            self.blocks(cols, rows, packed)
        })
    }

    /// [`Job::run`] with `packed` (stale values) to pack into.
    fn blocks(
        &self,
        cols: std::ops::Range<usize>,
        rows: std::ops::Range<usize>,
        packed: &mut [f32],
    ) {
        let k = self.lhs.cols;
        let blocks = k.div_ceil(KC);
        let depth = |b: usize| b * k / blocks..(b + 1) * k / blocks;
        let steps: Vec<(std::ops::Range<usize>, usize)> = (0..blocks)
            .flat_map(|b| {
                cols.clone()
                    .step_by(PANELS * MR)
                    .map(move |c0| (depth(b), c0))
            })
            .collect();
        for (i, (ks, c0)) in steps.iter().enumerate() {
            let width = (PANELS * MR).min(cols.end - c0);
            self.pack(ks.clone(), *c0, width, packed);
            // The next step's part of the weight, fetched while this one multiplies.
            let next = steps.get(i + 1).map(|(ks, c0)| {
                Ahead::new(
                    &self.w,
                    self.n,
                    ks.clone(),
                    *c0,
                    (PANELS * MR).min(cols.end - c0),
                )
            });
            self.multiply(ks.clone(), *c0, width, rows.clone(), packed, next);
        }
    }

    /// Weight rows `ks`, columns `c0..c0 + width`, widened into `packed` as panels of
    /// `[ks.len()][MR]` one after another.
    fn pack(&self, ks: std::ops::Range<usize>, c0: usize, width: usize, packed: &mut [f32]) {
        let depth = ks.len();
        // Two weight rows ahead: each row's part is a short run the prefetchers miss.
        let ahead = 2 * self.n;
        for (p, panel) in packed
            .chunks_mut(depth * MR)
            .take(width.div_ceil(MR))
            .enumerate()
        {
            let lanes = MR.min(width - p * MR);
            for (kk, row) in ks.clone().zip(panel.chunks_exact_mut(MR)) {
                let start = kk * self.n + c0 + p * MR;
                self.w.widen_ahead(start, &mut row[..lanes], ahead);
            }
        }
    }

    /// Adds (or, for the first block, stores) `rows` of the activations' columns `ks` times
    /// the packed panels into the output's columns `c0..c0 + width`.
    fn multiply(
        &self,
        ks: std::ops::Range<usize>,
        c0: usize,
        width: usize,
        rows: std::ops::Range<usize>,
        packed: &[f32],
        mut next: Option<Ahead>,
    ) {
        let depth = ks.len();
        let calls = rows.len().div_ceil(NR) * width.div_ceil(MR);
        let (ls, os) = (self.lhs.stride, self.stride);
        for r0 in rows.clone().step_by(NR) {
            let nr = NR.min(rows.end - r0);
            for p in 0..width.div_ceil(MR) {
                let mr = MR.min(width - p * MR);
                let panel = &packed[p * depth * MR..][..depth * MR];
                let lhs = &self.lhs.data[r0 * ls + ks.start..];
                let shape = (mr, nr, depth);
                tile(
                    (panel, MR),
                    shape,
                    (lhs, ls),
                    (self.out, r0 * os + c0 + p * MR, os),
                    ks.start,
                );
                if let Some(next) = &mut next {
                    next.fetch(calls);
                }
            }
        }
    }
}

/// The cache lines of a part of the weight (rows `ks`, `width` columns from `c0`), fetched a
/// share at a time.
struct Ahead {
    base: *const u8,
    row_bytes: usize,
    rows: std::ops::Range<usize>,
    first: usize,
    lines: usize,
    done: usize,
}

impl Ahead {
    fn new(w: &Stored, n: usize, ks: std::ops::Range<usize>, c0: usize, width: usize) -> Self {
        let (base, size) = match w {
            Stored::F32(s) => (s.as_ptr().cast::<u8>(), 4),
            Stored::F16(s) => (s.as_ptr().cast::<u8>(), 2),
            Stored::Bf16(s) => (s.as_ptr().cast::<u8>(), 2),
        };
        let lines = (width * size).div_ceil(64) + 1;
        Ahead {
            base,
            row_bytes: n * size,
            first: c0 * size,
            lines,
            done: 0,
            rows: ks,
        }
    }

    /// Fetches the next of `calls` shares of the lines.
    fn fetch(&mut self, calls: usize) {
        let total = self.rows.len() * self.lines;
        let share = total.div_ceil(calls.max(1));
        let end = (self.done + share).min(total);
        for l in self.done..end {
            let (r, c) = (self.rows.start + l / self.lines, l % self.lines);
            let at = self
                .base
                .wrapping_add(r * self.row_bytes + self.first + c * 64);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch reads nothing the program sees and does not fault.
            #[allow(unsafe_code)]
            unsafe {
                std::arch::x86_64::_mm_prefetch(at.cast::<i8>(), std::arch::x86_64::_MM_HINT_T1)
            }
        }
        self.done = end;
    }
}

/// The `gemm` crate's microkernel signature: `(m, n, k, dst, packed_lhs, packed_rhs, dst_cs,
/// dst_rs, lhs_cs, rhs_rs, rhs_cs, alpha, beta, alpha_status, conj_dst, conj_lhs, conj_rhs,
/// next_lhs)`; `dst = beta·Σ lhs·rhs` (`alpha_status` 0) or `dst + beta·Σ lhs·rhs` (1).
#[allow(unsafe_code)]
type Kernel = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    isize,
    isize,
    isize,
    isize,
    isize,
    f32,
    f32,
    u8,
    bool,
    bool,
    bool,
    *const f32,
);

/// The microkernel for `mr` (1..=64) weight columns and `nr` (1..=6) activation rows.
#[cfg(target_arch = "x86_64")]
fn kernel(mr: usize, nr: usize) -> Kernel {
    gemm_f32::microkernel::avx512f::f32::UKR[mr.div_ceil(16) - 1][nr - 1]
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel(_: usize, _: usize) -> Kernel {
    unreachable!("panels: no microkernels off x86-64 (`available` is false)")
}

#[cfg(test)]
#[path = "panels_tests.rs"]
mod tests;
