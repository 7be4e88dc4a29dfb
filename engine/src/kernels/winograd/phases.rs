//! A row of pixels split into its four phases (column `4·tx + k` is element `tx` of phase
//! `k`), for the input transform of F(4x4, 3x3), which then works on whole vectors of tiles.
//!
//! Written as a plain loop, the split compiles to one scalar load and store per value, and
//! the transform's vector loads of the phases then wait for those narrow stores to drain
//! (a store-to-load forwarding stall): measured on a 2-core Zen 4, the F(4x4, 3x3) input
//! transform was a fifth of TAESD's 512x512 decode. With AVX-512 the split is done 64 values
//! at a time by register permutes, stored as whole vectors.

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
    use std::arch::x86_64::{__m512, __m512i};
    let avx = v4.avx512f;
    // From two vectors (8 tiles x 4 phases): phases 0 and 1 (low and high half), or 2 and 3.
    let even: __m512i = cast([0u32, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29]);
    let odd: __m512i = cast([
        2u32, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31,
    ]);
    let groups = row.len() / 64;
    for (g, values) in row.chunks_exact(64).enumerate() {
        let values: &[f32; 64] = values.try_into().expect("64 values");
        let r: [__m512; 4] = cast(*values);
        let a01 = avx._mm512_permutex2var_ps(r[0], even, r[1]);
        let b01 = avx._mm512_permutex2var_ps(r[0], odd, r[1]);
        let a23 = avx._mm512_permutex2var_ps(r[2], even, r[3]);
        let b23 = avx._mm512_permutex2var_ps(r[2], odd, r[3]);
        // Tiles 0..8 of a phase from the first pair, 8..16 from the second.
        let phases = [
            avx._mm512_shuffle_f32x4::<0x44>(a01, a23),
            avx._mm512_shuffle_f32x4::<0xEE>(a01, a23),
            avx._mm512_shuffle_f32x4::<0x44>(b01, b23),
            avx._mm512_shuffle_f32x4::<0xEE>(b01, b23),
        ];
        for (q, v) in q.iter_mut().zip(phases) {
            let dst: &mut [f32; 16] = (&mut q[16 * g..][..16]).try_into().expect("16 tiles");
            *dst = cast(v);
        }
    }
    groups * 16
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
}
