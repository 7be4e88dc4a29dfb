//! f32 matrices split into bf16 pieces and laid out as AMX tiles.
//!
//! A value `x` is split into `pieces` bf16 values whose sum is `x`: the first is `x` rounded
//! to bf16, each next one the remainder rounded again. Every piece carries 8 significant bits
//! and a sign, so three pieces hold all 24 bits of an f32 exactly (two hold about 17).
//!
//! A 16-bit weight is split the same way: a bf16 value is its own single piece, and an f16
//! value (11 significant bits) is exactly the sum of two pieces, the second holding at most 3
//! bits ([`pack_lhs_f16`], [`pack_rhs_f16`]).
//!
//! Tiles are 16 rows of 64 bytes. The left operand is stored as tiles of 16 rows × 32 depth
//! values; the right one in AMX's pair layout (`TDPBF16PS` takes it as 16 rows of depth pairs,
//! each row holding 16 columns × 2 consecutive depth values). Both are padded with zeros to
//! whole tiles and to an even number of 16-row (16-column) blocks, so the micro-kernel always
//! works on 32 × 32 blocks of the output.

use half::{bf16, f16};

use super::super::gemm::Mat;
use super::super::math::simd;
use super::super::widen::f16_to_f32;
use std::mem::MaybeUninit;

use super::super::slices::for_each_chunk;

/// Values of one tile, as pairs of bf16 in a `u32` (the lower half first in memory): 16 rows
/// of 16 pairs.
pub(super) const TILE: usize = 256;
/// Depth of one tile.
pub(super) const DEPTH: usize = 32;

/// `x` rounded to the nearest bf16 (ties to even), in the upper half of an f32's bits (the
/// lower half zero). NaN stays NaN. Branch-free, so that loops over it vectorise.
#[inline(always)]
fn round_bf16(x: f32) -> u32 {
    let b = x.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    if x.is_nan() {
        0x7fc0_0000
    } else {
        r
    }
}

/// The first `N` bf16 pieces of `x` (their sum is `x` when `N` = 3), as bits.
#[cfg(test)]
fn split<const N: usize>(x: f32) -> [u16; N] {
    let mut out = [0u16; N];
    let mut rest = x;
    for piece in out.iter_mut() {
        let r = round_bf16(rest);
        *piece = (r >> 16) as u16;
        rest -= f32::from_bits(r);
    }
    out
}

/// The `pieces` bf16 pieces of the pairs (`first[i]`, `second[i]`), piece by piece, each
/// pair in one `u32` (`first` in the lower half). Consumes the values.
#[inline(always)]
fn split_pairs<const L: usize>(
    first: &mut [f32; L],
    second: &mut [f32; L],
    pieces: usize,
) -> [[u32; L]; 3] {
    let mut out = [[0u32; L]; 3];
    for piece in out.iter_mut().take(pieces) {
        for j in 0..L {
            let (a, b) = (round_bf16(first[j]), round_bf16(second[j]));
            piece[j] = b | (a >> 16);
            first[j] -= f32::from_bits(a);
            second[j] -= f32::from_bits(b);
        }
    }
    out
}

/// Up to `L` values of `src` as an array, zeros after them (a whole row is copied as an
/// array: a slice copy of unknown length calls memcpy).
#[inline(always)]
fn padded<const L: usize>(src: &[f32]) -> [f32; L] {
    match <&[f32; L]>::try_from(src) {
        Ok(whole) => *whole,
        Err(_) => {
            let mut r = [0f32; L];
            for (r, &s) in r.iter_mut().zip(src) {
                *r = s;
            }
            r
        }
    }
}

/// Up to `L` values of `src` widened to f32, zeros after them.
#[inline(always)]
fn padded_f16<const L: usize>(src: &[f16]) -> [f32; L] {
    let mut r = [0f32; L];
    match <&[f16; L]>::try_from(src) {
        Ok(whole) => {
            for (r, s) in r.iter_mut().zip(whole) {
                *r = f16_to_f32(s.to_bits());
            }
        }
        Err(_) => {
            for (r, s) in r.iter_mut().zip(src) {
                *r = f16_to_f32(s.to_bits());
            }
        }
    }
    r
}

/// The even- and odd-indexed values of `row`.
#[inline(always)]
fn deinterleave(row: [f32; DEPTH]) -> ([f32; 16], [f32; 16]) {
    let (mut even, mut odd) = ([0f32; 16], [0f32; 16]);
    for i in 0..16 {
        even[i] = row[2 * i];
        odd[i] = row[2 * i + 1];
    }
    (even, odd)
}

/// A matrix of `blocks` blocks of 16 rows (left operand) or 16 columns (right operand) by
/// `depth_tiles` tiles of depth, `pieces` tiles per position, as laid out by [`pack_lhs`] and
/// [`pack_rhs`] (tile (block, depth tile, piece) at `tile(block, kt, p)`), or a bf16 left
/// operand read in place ([`Packed::in_place`]).
pub(super) struct Packed<'a> {
    buf: Vec<u32>,
    /// Where the tiles start in `buf`: the first 64-byte boundary (a tile's rows are cache
    /// lines; a row across two lines would double the loads' traffic).
    start: usize,
    len: usize,
    /// The row-major bf16 matrix whose rows are the tiles' rows, when read in place.
    rows: Option<&'a [bf16]>,
    pub blocks: usize,
    pub depth_tiles: usize,
    pub pieces: usize,
}

impl<'a> Packed<'a> {
    /// `blocks` blocks of `depth` (rounded up to whole tiles) × `pieces` tiles each, every
    /// block's tiles filled by `fill` (with the block's index) after they are zeroed, on all
    /// rayon threads when `parallel`. A block is zeroed just before it is filled, while it is
    /// in cache: zeroing the whole buffer first was a pass over memory of its own (about 7% of
    /// a UNet forward with bf16 weights, with the outputs zeroed before the products).
    #[allow(unsafe_code)]
    fn filled(
        blocks: usize,
        depth: usize,
        pieces: usize,
        parallel: bool,
        fill: impl Fn((usize, &mut [u32])) + Sync + Send,
    ) -> Self {
        let depth_tiles = depth.div_ceil(DEPTH);
        let block_stride = depth_tiles * pieces * TILE;
        let len = blocks * block_stride;
        let mut buf: Vec<u32> = Vec::with_capacity(len + 16);
        let start = buf.as_ptr().align_offset(64).min(16);
        let spare = &mut buf.spare_capacity_mut()[..len + 16];
        let (head, rest) = spare.split_at_mut(start);
        let (tiles, tail) = rest.split_at_mut(len);
        for v in head.iter_mut().chain(tail) {
            v.write(0);
        }
        if len > 0 {
            for_each_chunk(tiles, block_stride, parallel, |(block, chunk)| {
                for v in chunk.iter_mut() {
                    v.write(0);
                }
                // SAFETY: every element of `chunk` was initialised just above, and `u32` has
                // the layout of `MaybeUninit<u32>`.
                let chunk = unsafe { &mut *(chunk as *mut [MaybeUninit<u32>] as *mut [u32]) };
                fill((block, chunk));
            });
        }
        // SAFETY: the capacity is `len + 16`; the values before `start` and after the tiles
        // were written above, and the tiles (`len` values from `start`, cut into whole blocks
        // of `block_stride`) each by their block's task.
        unsafe { buf.set_len(len + 16) };
        Self {
            buf,
            start,
            len,
            rows: None,
            blocks,
            depth_tiles,
            pieces,
        }
    }

    /// The bf16 matrix `w` (`m × k`, row-major) as a left operand of one piece, read in place:
    /// a tile is 16 of its rows × 32 of its columns, loaded with the rows' stride (the tiles'
    /// rows are its rows' values in order, as [`pack_lhs_bf16`] would copy them). Only for
    /// whole tiles and block pairs: `None` unless `m` is a multiple of 32 and `k` of 32.
    pub fn in_place(w: &'a [bf16], m: usize, k: usize) -> Option<Self> {
        (m % 32 == 0 && k % DEPTH == 0 && k > 0 && w.len() >= m * k).then_some(Self {
            buf: Vec::new(),
            start: 0,
            len: 0,
            rows: Some(&w[..m * k]),
            blocks: m / 16,
            depth_tiles: k / DEPTH,
            pieces: 1,
        })
    }

    /// The first byte of the tiles.
    pub fn base(&self) -> *const u8 {
        match self.rows {
            Some(w) => w.as_ptr().cast(),
            None => self.data().as_ptr().cast(),
        }
    }

    /// Bytes from [`Packed::base`] to the tile of `block`, depth tile `kt`, piece `p`; every
    /// byte of that tile (16 rows of 64 bytes, [`Packed::row_bytes`] apart) is inside the
    /// operand when `block < blocks`, `kt < depth_tiles` and `p < pieces`.
    pub fn tile_bytes(&self, block: usize, kt: usize, p: usize) -> usize {
        match self.rows {
            Some(_) => 2 * (block * 16 * self.depth_tiles * DEPTH + kt * DEPTH),
            None => 4 * self.tile(block, kt, p),
        }
    }

    /// Bytes between a tile's rows.
    pub fn row_bytes(&self) -> usize {
        match self.rows {
            Some(_) => 2 * self.depth_tiles * DEPTH,
            None => 64,
        }
    }

    /// The tiles.
    pub fn data(&self) -> &[u32] {
        &self.buf[self.start..][..self.len]
    }

    /// Values between the tiles of consecutive blocks.
    pub fn block_stride(&self) -> usize {
        self.depth_tiles * self.pieces * TILE
    }

    /// Offset of the tile of `block`, depth tile `kt`, piece `p` in [`Packed::data`].
    pub fn tile(&self, block: usize, kt: usize, p: usize) -> usize {
        block * self.block_stride() + (kt * self.pieces + p) * TILE
    }
}

/// Blocks of 16 for `len` rows or columns, rounded up to an even number.
pub(super) fn blocks(len: usize) -> usize {
    len.div_ceil(32) * 2
}

/// The left operand `a` (`m × k`) as tiles of 16 rows × 32 depth values, `pieces` per tile.
pub(super) fn pack_lhs(a: &Mat, pieces: usize, parallel: bool) -> Packed<'static> {
    pack_lhs_with(
        a.rows,
        a.cols,
        pieces,
        parallel,
        #[inline(always)]
        |r, c0| {
            let row = &a.data[r * a.stride..][..a.cols];
            padded::<DEPTH>(&row[c0..(c0 + DEPTH).min(a.cols)])
        },
    )
}

/// The f16 matrix `w` (`rows × cols`, row-major) as the left operand's tiles, in the two
/// pieces that hold each value exactly.
pub(super) fn pack_lhs_f16(w: &[f16], rows: usize, cols: usize, parallel: bool) -> Packed<'static> {
    assert!(w.len() >= rows * cols, "amx: f16 left operand");
    pack_lhs_with(
        rows,
        cols,
        2,
        parallel,
        #[inline(always)]
        |r, c0| {
            let row = &w[r * cols..][..cols];
            padded_f16::<DEPTH>(&row[c0..(c0 + DEPTH).min(cols)])
        },
    )
}

/// A `rows × cols` left operand as tiles, `pieces` per tile, its values read by `chunk(r,
/// c0)`: the 32 values of row `r` from column `c0` (zeros past the last column).
#[inline(always)]
fn pack_lhs_with(
    rows: usize,
    cols: usize,
    pieces: usize,
    parallel: bool,
    chunk: impl Fn(usize, usize) -> [f32; DEPTH] + Sync,
) -> Packed<'static> {
    let fill = |(mb, dst): (usize, &mut [u32])| {
        simd(
            #[inline(always)]
            || {
                for r in 0..16.min(rows.saturating_sub(mb * 16)) {
                    for kt in 0..cols.div_ceil(DEPTH) {
                        let (mut even, mut odd) = deinterleave(chunk(mb * 16 + r, kt * DEPTH));
                        let split = split_pairs(&mut even, &mut odd, pieces);
                        for (q, piece) in split.iter().take(pieces).enumerate() {
                            let at = (kt * pieces + q) * TILE + r * 16;
                            dst[at..at + 16].copy_from_slice(piece);
                        }
                    }
                }
            },
        )
    };
    Packed::filled(blocks(rows), cols, pieces, parallel, fill)
}

/// The bf16 matrix `w` (`rows × cols`, row-major) as the left operand's tiles, one piece: a
/// tile row is 32 consecutive values of a matrix row, in their order.
pub(super) fn pack_lhs_bf16(
    w: &[bf16],
    rows: usize,
    cols: usize,
    parallel: bool,
) -> Packed<'static> {
    assert!(w.len() >= rows * cols, "amx: bf16 left operand");
    let fill = |(mb, dst): (usize, &mut [u32])| {
        for r in 0..16.min(rows.saturating_sub(mb * 16)) {
            let src = &w[(mb * 16 + r) * cols..][..cols];
            for (kt, chunk) in src.chunks(DEPTH).enumerate() {
                let to = &mut dst[kt * TILE + r * 16..][..16];
                for (t, pair) in to.iter_mut().zip(chunk.chunks(2)) {
                    *t = pair_bits(pair[0], pair.get(1).copied());
                }
            }
        }
    };
    Packed::filled(blocks(rows), cols, 1, parallel, fill)
}

/// The bf16 matrix `w` (`k × n`, row-major) as the right operand's tiles, one piece: depth
/// pair `q` of column `j` is rows `2q` and `2q + 1` of column `j`, side by side.
pub(super) fn pack_rhs_bf16(w: &[bf16], k: usize, n: usize, parallel: bool) -> Packed<'static> {
    assert!(w.len() >= k * n, "amx: bf16 right operand");
    let fill = |(nb, dst): (usize, &mut [u32])| {
        let (c0, cols) = (nb * 16, n.saturating_sub(nb * 16).min(16));
        if cols == 0 {
            return;
        }
        for kk in (0..k).step_by(2) {
            let even = &w[kk * n + c0..][..cols];
            let odd = (kk + 1 < k).then(|| &w[(kk + 1) * n + c0..][..cols]);
            let to = &mut dst[(kk / DEPTH) * TILE + (kk % DEPTH / 2) * 16..][..cols];
            for (j, t) in to.iter_mut().enumerate() {
                *t = pair_bits(even[j], odd.map(|o| o[j]));
            }
        }
    };
    Packed::filled(blocks(n), k, 1, parallel, fill)
}

/// The f16 matrix `w` (`k × n`, row-major) as the right operand's tiles, in the two pieces
/// that hold each value exactly.
pub(super) fn pack_rhs_f16(w: &[f16], k: usize, n: usize, parallel: bool) -> Packed<'static> {
    assert!(w.len() >= k * n, "amx: f16 right operand");
    pack_rows_with(
        k,
        n,
        2,
        parallel,
        #[inline(always)]
        |r, c0, cols| padded_f16::<16>(&w[r * n + c0..][..cols]),
    )
}

/// Two bf16 values as one pair of a tile (`first` in the lower half; zero for a missing
/// `second`).
#[inline(always)]
fn pair_bits(first: bf16, second: Option<bf16>) -> u32 {
    first.to_bits() as u32 | (second.map_or(0, |s| s.to_bits()) as u32) << 16
}

/// How the right operand is stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rhs<'a> {
    /// `k × n`, row-major: the matrix itself.
    Rows(Mat<'a>),
    /// `n × k`, row-major: the product uses its transpose (a linear layer's weight).
    Cols(Mat<'a>),
}

impl Rhs<'_> {
    /// (depth, columns) of the operand the product uses.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Rhs::Rows(m) => (m.rows, m.cols),
            Rhs::Cols(m) => (m.cols, m.rows),
        }
    }
}

/// The right operand (`k × n`) in the pair layout: in a tile, depth pair `q` and column `j`
/// hold the values at depths `2q` and `2q + 1` side by side, at `32q + 2j`.
pub(super) fn pack_rhs(b: &Rhs, pieces: usize, parallel: bool) -> Packed<'static> {
    let m = match b {
        Rhs::Rows(m) => {
            return pack_rows_with(
                m.rows,
                m.cols,
                pieces,
                parallel,
                #[inline(always)]
                |r, c0, cols| padded::<16>(&m.data[r * m.stride + c0..][..cols]),
            )
        }
        Rhs::Cols(m) => m,
    };
    let (k, n) = b.shape();
    let fill = |(nb, dst): (usize, &mut [u32])| {
        let cols = n.saturating_sub(nb * 16).min(16);
        simd(
            #[inline(always)]
            || cols_to_pairs(m, nb * 16, cols, pieces, dst),
        )
    };
    Packed::filled(blocks(n), k, pieces, parallel, fill)
}

/// A `k × n` right operand given by rows as tiles, `pieces` per tile, its values read by
/// `row(r, c0, cols)`: the `cols` (at most 16) values of row `r` from column `c0`, zeros
/// after them.
#[inline(always)]
fn pack_rows_with(
    k: usize,
    n: usize,
    pieces: usize,
    parallel: bool,
    row: impl Fn(usize, usize, usize) -> [f32; 16] + Sync,
) -> Packed<'static> {
    let fill = |(nb, dst): (usize, &mut [u32])| {
        let (c0, cols) = (nb * 16, n.saturating_sub(nb * 16).min(16));
        simd(
            #[inline(always)]
            || {
                rows_to_pairs(
                    k,
                    cols,
                    #[inline(always)]
                    |r| row(r, c0, cols),
                    pieces,
                    dst,
                )
            },
        )
    };
    Packed::filled(blocks(n), k, pieces, parallel, fill)
}

/// `cols` columns of a `k × n` matrix into one block's tiles `dst`, its rows read by
/// `row(r)` (the block's columns of row `r < k`, zeros after them): two depth rows at a time,
/// split into pairs.
#[inline(always)]
fn rows_to_pairs(
    k: usize,
    cols: usize,
    row: impl Fn(usize) -> [f32; 16],
    pieces: usize,
    dst: &mut [u32],
) {
    if cols == 0 {
        return;
    }
    for kk in (0..k).step_by(2) {
        let (mut even, mut odd) = (row(kk), if kk + 1 < k { row(kk + 1) } else { [0f32; 16] });
        let split = split_pairs(&mut even, &mut odd, pieces);
        for (q, piece) in split.iter().take(pieces).enumerate() {
            let at = ((kk / DEPTH) * pieces + q) * TILE + (kk % DEPTH / 2) * 16;
            dst[at..at + 16].copy_from_slice(piece);
        }
    }
}

/// Columns `c0..c0 + cols` of the product's operand given as its transpose `m` (`n × k`):
/// column `j` is row `c0 + j` of `m`, whose depth pairs go to row `pair`, column `j` of the
/// tiles.
#[inline(always)]
fn cols_to_pairs(m: &Mat, c0: usize, cols: usize, pieces: usize, dst: &mut [u32]) {
    for j in 0..cols {
        let src = &m.data[(c0 + j) * m.stride..][..m.cols];
        for (kt, chunk) in src.chunks(DEPTH).enumerate() {
            let (mut even, mut odd) = deinterleave(padded::<DEPTH>(chunk));
            let split = split_pairs(&mut even, &mut odd, pieces);
            for (q, piece) in split.iter().take(pieces).enumerate() {
                let tile = &mut dst[(kt * pieces + q) * TILE..][..TILE];
                for (pair, &v) in piece.iter().enumerate() {
                    tile[pair * 16 + j] = v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widen(h: u16) -> f32 {
        f32::from_bits((h as u32) << 16)
    }

    #[test]
    fn three_pieces_hold_an_f32_exactly() {
        for x in [
            1.0f32,
            -3.1415925,
            1.0e-3,
            65504.0,
            1.2345678e7,
            -7.0e-20,
            0.0,
        ] {
            let [a, b, c] = split::<3>(x);
            let sum = widen(a) as f64 + widen(b) as f64 + widen(c) as f64;
            assert_eq!(sum, x as f64, "{x}");
        }
        let [a, b] = split::<2>(1.0 / 3.0);
        let two = widen(a) + widen(b);
        assert!(((two - 1.0 / 3.0) / (1.0 / 3.0)).abs() < 1.0 / 65536.0);
        assert!(widen(split::<1>(f32::NAN)[0]).is_nan());
    }

    #[test]
    fn both_layouts_of_the_right_operand_pack_alike() {
        let (k, n) = (37, 21);
        let rows: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut cols = vec![0f32; n * k];
        for kk in 0..k {
            for j in 0..n {
                cols[j * k + kk] = rows[kk * n + j];
            }
        }
        let by_rows = Rhs::Rows(Mat {
            data: &rows,
            rows: k,
            cols: n,
            stride: n,
        });
        let by_cols = Rhs::Cols(Mat {
            data: &cols,
            rows: n,
            cols: k,
            stride: k,
        });
        let (a, b) = (pack_rhs(&by_rows, 2, false), pack_rhs(&by_cols, 2, true));
        assert!(a.data() == b.data());
        // Depth 33 of column 20 sits in depth tile 1, block 1, pair 0, column 4, upper half.
        let v = a.data()[a.tile(1, 1, 0) + 4] >> 16;
        assert_eq!(v as u16, split::<2>(rows[33 * n + 20])[0]);
    }
}
