//! The filter transform of Winograd's F(m x m, 3x3), `G g Gᵀ` for every 3x3 filter of a
//! convolution, one output channel's filters at a time, vectorised along the input channels:
//! [`LANES`] channels' nine taps go through the whole transform in registers.
//!
//! The filters are stored `[c, 3, 3]`, a channel's nine taps together, and the transform wants
//! each tap of [`LANES`] channels in one vector. As a plain loop (nine passes picking every
//! ninth value into rows of taps, then reading the rows back) that regrouping took about half
//! of the transform; with AVX-512 the 144 values of 16 channels are regrouped by register
//! permutes instead ([`taps_v4`]).

use std::mem::MaybeUninit;

use super::super::math::simd;
use super::super::stream::prefetch;
use super::super::widen::Stored;
use super::tiling::Tiling;

#[cfg(target_arch = "x86_64")]
use pulp::{bytemuck::cast, x86::V4};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m256i, __m512, __m512i};

/// Channels per step of [`transform_filters`]: one 512-bit vector.
const LANES: usize = 16;

/// How far ahead of the transform (in f32 values: eight steps of [`LANES`] filters, 4.5 KiB)
/// the filters are prefetched. The transform of a large layer reads its weight from memory
/// once per call, and waited on those loads: measured on a 2-core Zen 4
/// (`winograd::speed::block_filter_speed`, one thread), SD 1.5's 1280 -> 1280 filters by
/// F(2x2, 3x3) took 11–12.6 ms without prefetches and 7.1–7.5 ms with them (2304 and 4608
/// values ahead: the same; regrouping the taps by scalar loops, as before: 15–17 ms).
const AHEAD: usize = 8 * 9 * LANES;

/// One output channel's filters `weight` (`[c, 3, 3]`, f32 or 16-bit) transformed into `u`
/// as `[positions][c]`: position `ξ = n·i + j` of `G g Gᵀ` for every input channel, [`LANES`]
/// channels at a time ([`transform_lanes`]). With AVX-512 their taps are loaded (and 16-bit
/// ones widened) and regrouped in registers ([`taps_v4`]); otherwise, and for the channels
/// after the last whole vector, they are widened into `scratch` and written there tap by tap
/// in nine rows. With `stream`, the rows of `u` are computed in `scratch` and copied by
/// non-temporal stores ([`copy`](super::super::stream::copy); the caller fences).
pub(super) fn transform_filters(
    t: Tiling,
    weight: Stored,
    c: usize,
    u: &mut [MaybeUninit<f32>],
    scratch: &mut Vec<f32>,
    stream: bool,
) {
    assert_eq!(weight.len(), 9 * c, "filters of {c} channels");
    let done = in_registers(c);
    let rest = c - done;
    let rows = if stream { t.positions() * c } else { 0 };
    scratch.resize(18 * rest + rows, 0.0);
    let (wide, more) = scratch.split_at_mut(9 * rest);
    let (taps, staged) = more.split_at_mut(9 * rest);
    let filters = match weight {
        Stored::F32(w) => &w[9 * done..],
        narrow => {
            narrow.widen_into(9 * done, wide);
            &*wide
        }
    };
    // Tap by tap: contiguous writes, reads 9 apart (cheaper than the other way round).
    for (k, row) in taps.chunks_exact_mut(rest.max(1)).enumerate() {
        for (t, g) in row.iter_mut().zip(filters.chunks_exact(9)) {
            *t = g[k];
        }
    }
    let taps = &*taps;
    let mut out = Out {
        u,
        staged,
        c,
        stream,
    };
    simd(
        #[inline(always)]
        || {
            #[cfg(target_arch = "x86_64")]
            if let Some(v4) = V4::try_new() {
                for c0 in (0..done).step_by(LANES) {
                    prefetch_filters(weight, 9 * c0 + AHEAD);
                    transform_lanes(
                        t,
                        &taps_v4(v4, filters_v4(v4, weight, 9 * c0)),
                        #[inline(always)]
                        |xi, v| out.put(xi, c0, LANES, v),
                    );
                }
            }
            for j0 in (0..rest).step_by(LANES) {
                let len = LANES.min(rest - j0);
                let lanes = lanes_of(taps, j0, len);
                let c0 = done + j0;
                if len == LANES {
                    transform_lanes(
                        t,
                        &lanes,
                        #[inline(always)]
                        |xi, v| out.put(xi, c0, LANES, v),
                    );
                } else {
                    transform_lanes(
                        t,
                        &lanes,
                        #[inline(always)]
                        |xi, v| out.put(xi, c0, len, v),
                    );
                }
            }
        },
    );
    if stream {
        for (dst, src) in out.u.chunks_exact_mut(c).zip(out.staged.chunks_exact(c)) {
            super::super::stream::copy(src, dst);
        }
    }
}

/// The channels of `c` whose taps [`transform_filters`] regroups in registers: the whole
/// vectors of them with AVX-512, none without.
fn in_registers(c: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if V4::try_new().is_some() {
        return c - c % LANES;
    }
    let _ = c;
    0
}

/// Prefetches the cache lines of [`LANES`] filters from value `start` of `weight` on (past
/// its end too: a layer's output channels follow each other in memory, and prefetches do not
/// fault).
#[inline(always)]
fn prefetch_filters(weight: Stored, start: usize) {
    let (at, bytes): (*const u8, usize) = match weight {
        Stored::F32(w) => (w.as_ptr().wrapping_add(start).cast(), 4),
        Stored::F16(w) => (w.as_ptr().wrapping_add(start).cast(), 2),
        Stored::Bf16(w) => (w.as_ptr().wrapping_add(start).cast(), 2),
    };
    for line in (0..9 * LANES * bytes).step_by(64) {
        prefetch(at.wrapping_add(line));
    }
}

/// Channels `j0 .. j0 + len` (`len` at most [`LANES`]) of the nine rows of taps `taps`, a
/// vector per tap (zeros past `len`).
#[inline(always)]
fn lanes_of(taps: &[f32], j0: usize, len: usize) -> [[f32; LANES]; 9] {
    let c = taps.len() / 9;
    let mut lanes = [[0f32; LANES]; 9];
    for (k, l) in lanes.iter_mut().enumerate() {
        l[..len].copy_from_slice(&taps[k * c + j0..][..len]);
    }
    lanes
}

/// Where [`transform_filters`] puts its positions: `u`, or with `stream` `staged` (laid out as
/// `u`), rows of `c` values.
struct Out<'a> {
    u: &'a mut [MaybeUninit<f32>],
    staged: &'a mut [f32],
    c: usize,
    stream: bool,
}

impl Out<'_> {
    /// Channels `c0 .. c0 + len` of position `xi`, from `v`. Called with `len` a constant for
    /// whole vectors.
    #[inline(always)]
    fn put(&mut self, xi: usize, c0: usize, len: usize, v: &[f32; LANES]) {
        let at = xi * self.c + c0;
        if self.stream {
            self.staged[at..][..len].copy_from_slice(&v[..len]);
        } else {
            for (d, &v) in self.u[at..][..len].iter_mut().zip(v) {
                d.write(v);
            }
        }
    }
}

/// `TAP_INDEX[k][i]`: where tap `k` of channel `i` (value `9·i + k` of 16 channels' filters)
/// lies in the pair of vectors holding it, for [`taps_v4`]'s two-vector permutes.
#[cfg(target_arch = "x86_64")]
const TAP_INDEX: [[u32; LANES]; 9] = {
    let mut t = [[0; LANES]; 9];
    let mut k = 0;
    while k < 9 {
        let mut i = 0;
        while i < LANES {
            t[k][i] = ((9 * i + k) % 32) as u32;
            i += 1;
        }
        k += 1;
    }
    t
};

/// `TAP_MASK[k][p]`: the channels whose tap `k` lies in vectors `2p` and `2p + 1` of the 16
/// channels' filters (the ninth vector alone for `p = 4`).
#[cfg(target_arch = "x86_64")]
const TAP_MASK: [[u16; 5]; 9] = {
    let mut t = [[0; 5]; 9];
    let mut k = 0;
    while k < 9 {
        let mut i = 0;
        while i < LANES {
            t[k][(9 * i + k) / 32] |= 1 << i;
            i += 1;
        }
        k += 1;
    }
    t
};

/// The filters of 16 channels from value `start` of `weight` (`[16, 3, 3]`, 144 values) as
/// nine f32 vectors, 16-bit ones widened in registers (exactly, as [`Stored::widen_into`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn filters_v4(v4: V4, weight: Stored, start: usize) -> [__m512; 9] {
    let avx = v4.avx512f;
    let mut a = [avx._mm512_setzero_ps(); 9];
    // Plain loops, not closures: a closure around the intrinsics would be compiled outside
    // the AVX-512 context and call each one.
    match weight {
        Stored::F32(w) => {
            for (v, a) in a.iter_mut().enumerate() {
                let x: [f32; LANES] = w[start + LANES * v..][..LANES].try_into().expect("16");
                *a = cast(x);
            }
        }
        Stored::Bf16(w) => {
            for (v, a) in a.iter_mut().enumerate() {
                let x = bits(&w[start + LANES * v..][..LANES], |h| h.to_bits());
                // A bf16 is the high half of the f32 with the same bits.
                *a = cast(avx._mm512_slli_epi32::<16>(avx._mm512_cvtepu16_epi32(x)));
            }
        }
        Stored::F16(w) => {
            for (v, a) in a.iter_mut().enumerate() {
                let x = bits(&w[start + LANES * v..][..LANES], |h| h.to_bits());
                *a = avx._mm512_cvtph_ps(x);
            }
        }
    }
    a
}

/// The bits of 16 16-bit values as a vector.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bits<T: Copy>(values: &[T], to_bits: impl Fn(T) -> u16) -> __m256i {
    let mut b = [0u16; LANES];
    for (b, &v) in b.iter_mut().zip(values) {
        *b = to_bits(v);
    }
    cast(b)
}

/// The nine taps of 16 channels' filters `a` (`[16, 3, 3]` in nine vectors), tap `k` of
/// every channel in vector `k`: each tap gathered from the nine vectors by two-vector
/// permutes (one per pair of vectors, and one of the ninth) merged by the channels' masks.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn taps_v4(v4: V4, a: [__m512; 9]) -> [[f32; LANES]; 9] {
    let avx = v4.avx512f;
    let mut taps = [[0f32; LANES]; 9];
    for (k, tap) in taps.iter_mut().enumerate() {
        let index: __m512i = cast(TAP_INDEX[k]);
        let mut r = avx._mm512_permutex2var_ps(a[0], index, a[1]);
        for p in 1..4 {
            let q = avx._mm512_permutex2var_ps(a[2 * p], index, a[2 * p + 1]);
            r = avx._mm512_mask_blend_ps(TAP_MASK[k][p], r, q);
        }
        let q = avx._mm512_permutexvar_ps(index, a[8]);
        *tap = cast(avx._mm512_mask_blend_ps(TAP_MASK[k][4], r, q));
    }
    taps
}

/// `G g Gᵀ` of [`LANES`] filters given tap by tap (`taps[3·r + k]` is row r, column k of
/// each), position by position into `put(ξ, values)`: the same operations in the same order
/// as `filter_tile` (the scalar definition its test compares with), each on a vector of
/// channels.
#[inline(always)]
fn transform_lanes(t: Tiling, taps: &[[f32; LANES]; 9], mut put: impl FnMut(usize, &[f32; LANES])) {
    let (g, n) = (t.g(), t.n());
    let mut gg = [[0f32; LANES]; 3];
    let mut out = [0f32; LANES];
    for i in 0..n {
        // Row i of G g: column k is Σ_r G[i][r] g[r][k].
        for k in 0..3 {
            combine(&g[i], [&taps[k], &taps[3 + k], &taps[6 + k]], &mut gg[k]);
        }
        // (G g) Gᵀ: row i, column j is Σ_k (G g)[i][k] G[j][k].
        for (j, gj) in g.iter().enumerate() {
            combine(gj, [&gg[0], &gg[1], &gg[2]], &mut out);
            put(n * i + j, &out);
        }
    }
}

/// `out = w₀·a + w₁·b + w₂·c`, lane by lane.
#[inline(always)]
fn combine(w: &[f32; 3], [a, b, c]: [&[f32; LANES]; 3], out: &mut [f32; LANES]) {
    for l in 0..LANES {
        out[l] = w[0] * a[l] + w[1] * b[l] + w[2] * c[l];
    }
}

/// `G g Gᵀ` for one 3x3 filter `g` (row-major), row-major `n x n`: the scalar definition
/// [`transform_filters`] vectorises (same operations in the same order), kept for its test.
#[cfg(test)]
pub(super) fn filter_tile(t: Tiling, g: &[f32]) -> Vec<f32> {
    let gm = t.g();
    let dot = |w: &[f32; 3], v: [f32; 3]| w[0] * v[0] + w[1] * v[1] + w[2] * v[2];
    let gg: Vec<[f32; 3]> = gm
        .iter()
        .map(|gi| std::array::from_fn(|k| dot(gi, [g[k], g[3 + k], g[6 + k]])))
        .collect();
    gg.iter()
        .flat_map(|row| gm.iter().map(|gj| dot(gj, *row)))
        .collect()
}
