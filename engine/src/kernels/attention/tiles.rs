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
                    outer_tile::<S, _, MR, NV>((simd, NoTail), q, b, width, o, h.stride, false);
                } else {
                    outer_tile::<S, _, MR, 1>((simd, NoTail), q, b, width, o, h.stride, false);
                }
            }
        }
        c += width;
    }
}

/// `out[r][..w] = Σ_t a[r][t] · b[t][..w]` (added to `out` when `add`) for the `MR` rows of
/// `a` (all of one length, the reduction's), `b`'s rows `b_stride` apart and `out`'s
/// `out_stride` apart, `w` being `NV` vectors of `simd` and the lanes of `tail`: the register
/// tile of both products (`q·kᵀ`: `a` the queries, `b` a key tile; `p·v`: `a` the
/// probabilities, `b` the values), its `MR x (NV + tail)` sums in registers throughout.
#[inline(always)]
fn outer_tile<S: Simd, T: Tail, const MR: usize, const NV: usize>(
    (simd, tail): (S, T),
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
    let width = NV * lanes + T::LANES;
    assert!(b.len() >= span(len, width, b_stride));
    assert!(out.len() >= span(MR, width, out_stride));
    let rows = a.map(<[f32]>::as_ptr);
    let b = b.as_ptr();
    let mut acc = [[simd.splat_f32s(0.0); NV]; MR];
    let mut acc_tail = [tail.splat(0.0); MR];
    if add {
        for (r, (acc, acc_tail)) in acc.iter_mut().zip(&mut acc_tail).enumerate() {
            let out = &out[r * out_stride..][..width];
            acc.copy_from_slice(S::as_simd_f32s(&out[..NV * lanes]).0);
            *acc_tail = tail.read(&out[NV * lanes..]);
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
        // SAFETY: as above, for the tail's lanes past the NV vectors.
        #[allow(unsafe_code)]
        let row_tail = unsafe { tail.load(b.add(t * b_stride + NV * lanes)) };
        for r in 0..MR {
            // SAFETY: `t < len`, the length of every row of `a` (asserted above).
            #[allow(unsafe_code)]
            let x = unsafe { *rows[r].add(t) };
            let xs = simd.splat_f32s(x);
            for v in 0..NV {
                acc[r][v] = simd.mul_add_f32s(xs, row[v], acc[r][v]);
            }
            acc_tail[r] = tail.mul_add(tail.splat(x), row_tail, acc_tail[r]);
        }
    }
    for (r, (acc, &acc_tail)) in acc.iter().zip(&acc_tail).enumerate() {
        let out = &mut out[r * out_stride..][..width];
        let (o, o_tail) = out.split_at_mut(NV * lanes);
        S::as_mut_simd_f32s(o).0.copy_from_slice(acc);
        tail.write(acc_tail, o_tail);
    }
}

/// `outs[r][..d] = Σ_{s < sk} p[r][s] · v[s][..d]` for every padded row, `p` being the
/// score rows (at `stride`) after the softmax's exponentials; rows of `outs` at `dp` (lanes
/// from `d` to `dp` hold zeros or nothing).
#[inline(always)]
pub(super) fn values<S: Simd>(simd: S, h: &Head, p: &[f32], outs: &mut [f32]) {
    // A head width that ends in at most half a 16-lane vector (SD 1.x's 40) ends its tiles in
    // an 8-lane vector instead: the same instructions where a 512-bit FMA issues as fast as a
    // 256-bit one (Intel), a sixth fewer FMA cycles where it issues as two halves (Zen 4).
    #[cfg(target_arch = "x86_64")]
    if S::F32_LANES == 16 && (1..=8).contains(&(h.d % 16)) {
        if let Some(v3) = pulp::x86::V3::try_new() {
            return values_in_tiles(simd, Narrow(v3), h.d / 16, h, p, outs);
        }
    }
    values_in_tiles(simd, NoTail, h.dp / S::F32_LANES, h, p, outs)
}

/// [`values`] over `vectors` whole vectors of each row of `v`, then `tail`'s lanes.
#[inline(always)]
fn values_in_tiles<S: Simd, T: Tail>(
    simd: S,
    tail: T,
    vectors: usize,
    h: &Head,
    p: &[f32],
    outs: &mut [f32],
) {
    let lanes = S::F32_LANES;
    // Split the row's vectors (the tail counted as one) into as few tiles as possible, of
    // near-equal widths; the last tile takes the tail.
    let all = vectors + usize::from(T::LANES > 0);
    let tiles = all.div_ceil(MAX_VALUE_VECTORS);
    let mut first = 0;
    for t in 0..tiles {
        let width = (all - first) / (tiles - t);
        let col = first * lanes;
        if t + 1 < tiles || T::LANES == 0 {
            values_by(simd, NoTail, width, h, p, col, outs);
        } else {
            values_by(simd, tail, width - 1, h, p, col, outs);
        }
        first += width;
    }
}

/// The `p·v` tiles `nv` vectors (and `tail`) wide starting at lane `col`, with as many rows
/// as the registers allow (about 24 sums).
#[inline(always)]
fn values_by<S: Simd, T: Tail>(
    simd: S,
    tail: T,
    nv: usize,
    h: &Head,
    p: &[f32],
    col: usize,
    outs: &mut [f32],
) {
    let sums = nv + usize::from(T::LANES > 0);
    macro_rules! tiles {
        ($($nv:literal),*) => {
            match nv {
                $($nv => {
                    if S::F32_LANES >= 16 {
                        match sums {
                            ..=3 => values_tiles::<S, T, 8, $nv>(simd, tail, h, p, col, outs),
                            4 => values_tiles::<S, T, 6, $nv>(simd, tail, h, p, col, outs),
                            _ => values_tiles::<S, T, 4, $nv>(simd, tail, h, p, col, outs),
                        }
                    } else {
                        match sums {
                            ..=3 => values_tiles::<S, T, 4, $nv>(simd, tail, h, p, col, outs),
                            _ => values_tiles::<S, T, 2, $nv>(simd, tail, h, p, col, outs),
                        }
                    }
                })*
                _ => unreachable!("p·v tiles are at most {MAX_VALUE_VECTORS} vectors wide"),
            }
        };
    }
    tiles!(0, 1, 2, 3, 4, 5)
}

#[inline(always)]
fn values_tiles<S: Simd, T: Tail, const MR: usize, const NV: usize>(
    simd: S,
    tail: T,
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
            outer_tile::<S, T, MR, NV>((simd, tail), rows, v, h.dp, out, h.dp, c0 > 0);
        }
    }
}

/// Lanes a register tile carries past its whole vectors: none ([`NoTail`]) or one narrower
/// vector ([`Narrow`]).
pub(super) trait Tail: Copy {
    type V: Copy;
    const LANES: usize;
    fn splat(self, x: f32) -> Self::V;
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// # Safety
    /// `LANES` values from `p` must be readable.
    #[allow(unsafe_code)]
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// From the first `LANES` values of `x`.
    fn read(self, x: &[f32]) -> Self::V;
    /// To the first `LANES` values of `out`.
    fn write(self, v: Self::V, out: &mut [f32]);
}

#[derive(Clone, Copy)]
pub(super) struct NoTail;

impl Tail for NoTail {
    type V = ();
    const LANES: usize = 0;
    #[inline(always)]
    fn splat(self, _: f32) {}
    #[inline(always)]
    fn mul_add(self, _: (), _: (), _: ()) {}
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load(self, _: *const f32) {}
    #[inline(always)]
    fn read(self, _: &[f32]) {}
    #[inline(always)]
    fn write(self, _: (), _: &mut [f32]) {}
}

/// One vector of a narrower SIMD level (8 lanes inside 16-lane code).
#[derive(Clone, Copy)]
pub(super) struct Narrow<N>(N);

impl<N: Simd> Tail for Narrow<N> {
    type V = N::f32s;
    const LANES: usize = N::F32_LANES;
    #[inline(always)]
    fn splat(self, x: f32) -> N::f32s {
        self.0.splat_f32s(x)
    }
    #[inline(always)]
    fn mul_add(self, a: N::f32s, b: N::f32s, c: N::f32s) -> N::f32s {
        self.0.mul_add_f32s(a, b, c)
    }
    #[inline(always)]
    #[allow(unsafe_code)]
    unsafe fn load(self, p: *const f32) -> N::f32s {
        // SAFETY: the caller keeps `LANES` values readable from `p`; the read is unaligned.
        unsafe { p.cast::<N::f32s>().read_unaligned() }
    }
    #[inline(always)]
    fn read(self, x: &[f32]) -> N::f32s {
        N::as_simd_f32s(&x[..N::F32_LANES]).0[0]
    }
    #[inline(always)]
    fn write(self, v: N::f32s, out: &mut [f32]) {
        N::as_mut_simd_f32s(&mut out[..N::F32_LANES]).0[0] = v;
    }
}

/// Keys per chunk of `p·v` for rows of `v` `dp` wide: about 16 KiB of `v`, a third to a half
/// of a core's L1 data cache (measured 3–7% faster than whole rows of `v` at 4096 and 1024
/// keys on the 2-core AMX Xeon).
fn value_chunk(dp: usize) -> usize {
    ((16 << 10) / (4 * dp.max(1))).next_multiple_of(16)
}
