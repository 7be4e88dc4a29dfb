//! The attention's two products on SIMD registers, for one head and one block of query rows:
//! `q·kᵀ` by tiles of query rows x key columns, and `p·v` by tiles of query rows x value
//! lanes. Each tile keeps its sums in registers for the whole reduction (`d` for the scores,
//! every key for the values) and reads its operands where they lie: `kᵀ` and `v` in the
//! per-head layouts of [`super::Layout`], `q` in its `[S, H·D]` rows, `p` in the score rows.
//! The general GEMM this replaces packed `kᵀ` afresh for every block of 15 queries and ran
//! its narrow tiles at a fraction of the FMA rate.
//!
//! Rows past a block's end still get computed (from a zero query row), so that every tile is
//! whole: the score and output buffers hold [`ROW_MULTIPLE`]-rounded row counts.

use pulp::Simd;

use super::super::gemm::span;

/// Every tile height used here divides it: the row count the buffers are rounded to.
pub(super) const ROW_MULTIPLE: usize = 24;

/// Key columns per packed tile of `kᵀ` (see [`key_tile`]).
pub(super) const KEY_TILE: usize = 64;
/// Key columns of the last tiles, past the last whole [`KEY_TILE`].
pub(super) const KEY_TAIL: usize = 16;

/// The first column and the width of the packed key tile holding column `s` of `cols`
/// (a multiple of [`KEY_TAIL`]): tiles of [`KEY_TILE`] columns, then of [`KEY_TAIL`].
#[inline(always)]
pub(super) fn key_tile(s: usize, cols: usize) -> (usize, usize) {
    let whole = cols / KEY_TILE * KEY_TILE;
    if s < whole {
        (s / KEY_TILE * KEY_TILE, KEY_TILE)
    } else {
        (s / KEY_TAIL * KEY_TAIL, KEY_TAIL)
    }
}

/// Most SIMD vectors of `v`'s lanes one `p·v` tile spans (wider heads take several tiles).
const MAX_VALUE_VECTORS: usize = 5;

/// One head's operands for a block of `rows` query rows (rounded up to [`ROW_MULTIPLE`] in
/// `scores` and `outs`).
pub(super) struct Head<'a> {
    /// The block's query rows for this head: row `r` is `q[r * q_stride..][..d]`.
    pub q: &'a [f32],
    pub q_stride: usize,
    /// `d` zeros: the query of the rows past the block's end.
    pub zero_q: &'a [f32],
    /// `kᵀ` packed in key tiles (see [`key_tile`]), zero past the keys.
    pub kt: &'a [f32],
    /// `v` as `[sk][dp]`, zero past `d`.
    pub v: &'a [f32],
    pub rows: usize,
    pub sk: usize,
    /// The packed keys' columns, a multiple of [`KEY_TAIL`].
    pub cols: usize,
    pub stride: usize,
    pub d: usize,
    pub dp: usize,
}

impl Head<'_> {
    /// Query row `r`, or zeros past the block.
    #[inline(always)]
    fn q_row(&self, r: usize) -> &[f32] {
        if r < self.rows {
            &self.q[r * self.q_stride..][..self.d]
        } else {
            &self.zero_q[..self.d]
        }
    }

    /// The block's rows rounded up to whole tiles.
    pub fn padded_rows(&self) -> usize {
        self.rows.next_multiple_of(ROW_MULTIPLE)
    }
}

/// `scores[r][c] = q_r · kᵀ[.][c]` for every padded row and every packed key column (those
/// past the keys are 0). Rows of `scores` at `stride`.
#[inline(always)]
pub(super) fn scores<S: Simd>(simd: S, h: &Head, scores: &mut [f32]) {
    if S::F32_LANES >= 16 {
        scores_by::<S, 6, 4>(simd, h, scores)
    } else {
        scores_by::<S, 4, 2>(simd, h, scores)
    }
}

/// Key tile by key tile, each in `MR x NV·lanes` tiles of scores (a tile whole, when it is
/// that wide, else in narrower parts).
#[inline(always)]
fn scores_by<S: Simd, const MR: usize, const NV: usize>(simd: S, h: &Head, scores: &mut [f32]) {
    let lanes = S::F32_LANES;
    let mut c = 0;
    while c < h.cols {
        let (_, width) = key_tile(c, h.cols);
        let tile = &h.kt[c * h.d..][..h.d * width];
        for r in (0..h.padded_rows()).step_by(MR) {
            let q: [&[f32]; MR] = std::array::from_fn(|i| h.q_row(r + i));
            let out = &mut scores[r * h.stride + c..];
            // Whole NV-vector tiles when the key tile is that wide, else one vector at a time.
            let wide = width >= NV * lanes;
            for x in (0..width).step_by(if wide { NV * lanes } else { lanes }) {
                let (b, o) = (&tile[x..], &mut out[x..]);
                if wide {
                    outer_tile::<S, MR, NV>(simd, q, b, width, o, h.stride, false);
                } else {
                    outer_tile::<S, MR, 1>(simd, q, b, width, o, h.stride, false);
                }
            }
        }
        c += width;
    }
}

/// `out[r][..NV·lanes] = Σ_t a[r][t] · b[t][..NV·lanes]` (added to `out` when `add`) for the
/// `MR` rows of `a` (all of one length, the reduction's), `b`'s rows `b_stride` apart and
/// `out`'s `out_stride` apart: the register tile of both products (`q·kᵀ`: `a` the queries,
/// `b` a key tile; `p·v`: `a` the probabilities, `b` the values), its `MR x NV` sums in
/// registers throughout.
#[inline(always)]
fn outer_tile<S: Simd, const MR: usize, const NV: usize>(
    simd: S,
    a: [&[f32]; MR],
    b: &[f32],
    b_stride: usize,
    out: &mut [f32],
    out_stride: usize,
    add: bool,
) {
    let lanes = S::F32_LANES;
    let len = a[0].len();
    // Every read in the reduction lies inside these bounds, checked once here instead of
    // per step.
    for row in &a {
        assert_eq!(row.len(), len);
    }
    assert!(b.len() >= span(len, NV * lanes, b_stride));
    let rows = a.map(<[f32]>::as_ptr);
    let b = b.as_ptr();
    let mut acc = [[simd.splat_f32s(0.0); NV]; MR];
    if add {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(S::as_simd_f32s(&out[r * out_stride..][..NV * lanes]).0);
        }
    }
    for t in 0..len {
        let mut row = [simd.splat_f32s(0.0); NV];
        for (v, row) in row.iter_mut().enumerate() {
            // SAFETY: `t < len`, so `b`'s row `t` (NV·lanes values from `t·b_stride`) lies
            // inside `b` by the assert above; the read is unaligned.
            #[allow(unsafe_code)]
            let value = unsafe {
                b.add(t * b_stride + v * lanes)
                    .cast::<S::f32s>()
                    .read_unaligned()
            };
            *row = value;
        }
        for r in 0..MR {
            // SAFETY: `t < len`, the length of every row of `a` (asserted above).
            #[allow(unsafe_code)]
            let x = simd.splat_f32s(unsafe { *rows[r].add(t) });
            for v in 0..NV {
                acc[r][v] = simd.mul_add_f32s(x, row[v], acc[r][v]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let o = S::as_mut_simd_f32s(&mut out[r * out_stride..][..NV * lanes]).0;
        o.copy_from_slice(acc);
    }
}

/// `outs[r][..dp] = Σ_{s < sk} p[r][s] · v[s][..dp]` for every padded row, `p` being the
/// score rows (at `stride`) after the softmax's exponentials; rows of `outs` at `dp`.
#[inline(always)]
pub(super) fn values<S: Simd>(simd: S, h: &Head, p: &[f32], outs: &mut [f32]) {
    let lanes = S::F32_LANES;
    let vectors = h.dp / lanes;
    // Split the row's vectors into as few tiles as possible, of near-equal widths.
    let tiles = vectors.div_ceil(MAX_VALUE_VECTORS);
    let mut first = 0;
    for t in 0..tiles {
        let width = (vectors - first) / (tiles - t);
        let col = first * lanes;
        match width {
            1 => values_by::<S, 1>(simd, h, p, col, outs),
            2 => values_by::<S, 2>(simd, h, p, col, outs),
            3 => values_by::<S, 3>(simd, h, p, col, outs),
            4 => values_by::<S, 4>(simd, h, p, col, outs),
            _ => values_by::<S, 5>(simd, h, p, col, outs),
        }
        first += width;
    }
}

/// The `p·v` tiles `NV` vectors wide starting at lane `col`, with as many rows as the
/// registers allow (about 24 sums).
#[inline(always)]
fn values_by<S: Simd, const NV: usize>(simd: S, h: &Head, p: &[f32], col: usize, outs: &mut [f32]) {
    if S::F32_LANES >= 16 {
        match NV {
            1..=3 => values_tiles::<S, 8, NV>(simd, h, p, col, outs),
            4 => values_tiles::<S, 6, NV>(simd, h, p, col, outs),
            _ => values_tiles::<S, 4, NV>(simd, h, p, col, outs),
        }
    } else {
        match NV {
            1..=3 => values_tiles::<S, 4, NV>(simd, h, p, col, outs),
            _ => values_tiles::<S, 2, NV>(simd, h, p, col, outs),
        }
    }
}

#[inline(always)]
fn values_tiles<S: Simd, const MR: usize, const NV: usize>(
    simd: S,
    h: &Head,
    p: &[f32],
    col: usize,
    outs: &mut [f32],
) {
    // Key chunk by key chunk, every row tile over each: a chunk of `v` stays in L1 for all the
    // block's rows, where all of `v` was read from L2 again for every row tile.
    let chunk = value_chunk(h.dp);
    for c0 in (0..h.sk).step_by(chunk) {
        let kc = chunk.min(h.sk - c0);
        for r in (0..h.padded_rows()).step_by(MR) {
            let rows: [&[f32]; MR] = std::array::from_fn(|i| &p[(r + i) * h.stride + c0..][..kc]);
            let out = &mut outs[r * h.dp + col..];
            let v = &h.v[c0 * h.dp + col..];
            outer_tile::<S, MR, NV>(simd, rows, v, h.dp, out, h.dp, c0 > 0);
        }
    }
}

/// Keys per chunk of `p·v` for rows of `v` `dp` wide: about 16 KiB of `v`, a third to a half
/// of a core's L1 data cache (measured 3–7% faster than whole rows of `v` at 4096 and 1024
/// keys on the 2-core AMX Xeon).
fn value_chunk(dp: usize) -> usize {
    ((16 << 10) / (4 * dp.max(1))).next_multiple_of(16)
}
