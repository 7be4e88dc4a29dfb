//! A row of pixels split into its four phases (column `4·tx + k` is element `tx` of phase
//! `k`), for the input transform of F(4x4, 3x3), which then works on whole vectors of tiles.
//!
//! Written as a plain loop, the split compiles to one scalar load and store per value, and
//! the transform's vector loads of the phases then wait for those narrow stores to drain
//! (a store-to-load forwarding stall): measured on a 2-core Zen 4, the F(4x4, 3x3) input
//! transform was a fifth of TAESD's 512x512 decode. With AVX-512 the split is done 64 values
//! at a time by register permutes, stored as whole vectors; [`group_cols4_v4`] keeps them
//! in registers through the transform, and [`merge4_v4`] interleaves the output transform's
//! columns back the same way.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m512;

/// `q[k][tx] = row[4·tx + k]` for every `tx < tw` and `k < 4` (`row` at least `4·tw` long,
/// each `q[k]` at least `tw`).
#[inline(always)]
pub(super) fn split4(row: &[f32], q: [&mut [f32]; 4], tw: usize) {
    let row = &row[..4 * tw];
    let mut q = q.map(|q| &mut q[..tw]);
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = pulp::x86::V4::try_new() {
        done = split4_v4(v4, row, &mut q);
    }
    for (tx, four) in row.chunks_exact(4).enumerate().skip(done) {
        for (q, &v) in q.iter_mut().zip(four) {
            q[tx] = v;
        }
    }
}

/// [`split4`] for the whole groups of 16 tiles (64 values): returns the tiles done.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn split4_v4(v4: pulp::x86::V4, row: &[f32], q: &mut [&mut [f32]; 4]) -> usize {
    use pulp::bytemuck::cast;
    let groups = row.len() / 64;
    for (g, values) in row.chunks_exact(64).enumerate() {
        let values: &[f32; 64] = values.try_into().expect("64 values");
        for (q, v) in q.iter_mut().zip(phases_v4(v4, cast(*values))) {
            let dst: &mut [f32; 16] = (&mut q[16 * g..][..16]).try_into().expect("16 tiles");
            *dst = cast(v);
        }
    }
    groups * 16
}

/// The four phases of 16 tiles' 64 values `r` (four vectors), by register permutes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn phases_v4(v4: pulp::x86::V4, r: [__m512; 4]) -> [__m512; 4] {
    use pulp::bytemuck::cast;
    use std::arch::x86_64::__m512i;
    let avx = v4.avx512f;
    // From two vectors (8 tiles x 4 phases): phases 0 and 1 (low and high half), or 2 and 3.
    let even: __m512i = cast([0u32, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29]);
    let odd: __m512i = cast([
        2u32, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31,
    ]);
    let a01 = avx._mm512_permutex2var_ps(r[0], even, r[1]);
    let b01 = avx._mm512_permutex2var_ps(r[0], odd, r[1]);
    let a23 = avx._mm512_permutex2var_ps(r[2], even, r[3]);
    let b23 = avx._mm512_permutex2var_ps(r[2], odd, r[3]);
    // Tiles 0..8 of a phase from the first pair, 8..16 from the second.
    [
        avx._mm512_shuffle_f32x4::<0x44>(a01, a23),
        avx._mm512_shuffle_f32x4::<0xEE>(a01, a23),
        avx._mm512_shuffle_f32x4::<0x44>(b01, b23),
        avx._mm512_shuffle_f32x4::<0xEE>(b01, b23),
    ]
}

/// The six columns F(4x4, 3x3)'s input transform reads of the 16 tiles of group `g` of one
/// padded row (`row`, at least `64·g + 66` long: tile `tx` reads columns `4·tx .. 4·tx + 6`),
/// column `k` of every tile in vector `k`, straight from registers: the row's four phases,
/// then phases 0 and 1 one tile on (the two columns each tile shares with the next, the next
/// group's first values shifted in). Stored and read back one value off their stores, as
/// [`split4`]'s output is, they stalled on store-to-load forwarding: measured on the 2-core
/// Zen 4, TAESD's 64-channel input transform at 512x512 took 8.8 ms per layer on one thread
/// with its input in cache, 7.3–7.7 ms from registers.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn group_cols4_v4(v4: pulp::x86::V4, row: &[f32], g: usize) -> [__m512; 6] {
    use pulp::bytemuck::cast;
    let values: &[f32; 64] = row[64 * g..][..64].try_into().expect("64 values");
    let [a, b, c, d] = phases_v4(v4, cast(*values));
    let (e, f) = (
        shift_in(v4, a, row[64 * g + 64]),
        shift_in(v4, b, row[64 * g + 65]),
    );
    [a, b, c, d, e, f]
}

/// `p` moved down one lane, `v` shifted in at the top.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn shift_in(v4: pulp::x86::V4, p: __m512, v: f32) -> __m512 {
    use pulp::bytemuck::cast;
    use std::arch::x86_64::__m512i;
    let avx = v4.avx512f;
    let top: __m512i = cast(avx._mm512_set1_ps(v));
    cast(avx._mm512_alignr_epi32::<1>(top, cast(p)))
}

/// The inverse of the split: `row[4·tx + k] = v[k][tx]` for 16 tiles' four output columns
/// `v`, as four whole vectors `row[16·j ..]` (written value by value, the output transform's
/// rows were read back by whole vectors across four narrow stores: the same forwarding stall).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn merge4_v4(v4: pulp::x86::V4, v: [__m512; 4], row: &mut [f32; 64]) {
    use pulp::bytemuck::cast;
    use std::arch::x86_64::{__m512d, __m512i};
    let avx = v4.avx512f;
    // Pairs (v0, v1) and (v2, v3) of tiles 0..8 (lo) and 8..16 (hi), then pairs of pairs.
    let lo: __m512i = cast([0u32, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23]);
    let hi: __m512i = cast([
        8u32, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31,
    ]);
    let p01: [__m512d; 2] = [
        cast(avx._mm512_permutex2var_ps(v[0], lo, v[1])),
        cast(avx._mm512_permutex2var_ps(v[0], hi, v[1])),
    ];
    let p23: [__m512d; 2] = [
        cast(avx._mm512_permutex2var_ps(v[2], lo, v[3])),
        cast(avx._mm512_permutex2var_ps(v[2], hi, v[3])),
    ];
    let first: __m512i = cast([0u64, 8, 1, 9, 2, 10, 3, 11]);
    let second: __m512i = cast([4u64, 12, 5, 13, 6, 14, 7, 15]);
    let out: [__m512d; 4] = [
        avx._mm512_permutex2var_pd(p01[0], first, p23[0]),
        avx._mm512_permutex2var_pd(p01[0], second, p23[0]),
        avx._mm512_permutex2var_pd(p01[1], first, p23[1]),
        avx._mm512_permutex2var_pd(p01[1], second, p23[1]),
    ];
    *row = cast(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_every_fourth_value() {
        for tw in [0, 1, 5, 15, 16, 17, 31, 32, 33, 70, 128] {
            let row: Vec<f32> = (0..4 * tw + 2).map(|i| i as f32 * 0.25 - 3.0).collect();
            let mut q = vec![vec![f32::NAN; tw + 1]; 4];
            let [a, b, c, d] = &mut q[..] else {
                unreachable!()
            };
            crate::kernels::math::simd(
                #[inline(always)]
                || split4(&row, [a, b, c, d], tw),
            );
            for (k, q) in q.iter().enumerate() {
                for tx in 0..tw {
                    assert_eq!(q[tx], row[4 * tx + k], "tw {tw}, phase {k}, tile {tx}");
                }
                assert!(q[tw].is_nan(), "tw {tw}: phase {k} written past its end");
            }
        }
    }

    #[test]
    fn merged_phases_are_the_row() {
        #[cfg(target_arch = "x86_64")]
        if let Some(v4) = pulp::x86::V4::try_new() {
            let v: [[f32; 16]; 4] =
                std::array::from_fn(|k| std::array::from_fn(|tx| (4 * tx + k) as f32));
            let mut row = [f32::NAN; 64];
            crate::kernels::math::simd(
                #[inline(always)]
                || merge4_v4(v4, v.map(pulp::bytemuck::cast), &mut row),
            );
            for (x, &y) in row.iter().enumerate() {
                assert_eq!(y, x as f32, "column {x}");
            }
        }
    }
}
