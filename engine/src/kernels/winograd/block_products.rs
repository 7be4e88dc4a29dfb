//! The GEMMs of one block of output channels ([`super::output_blocks`]) with the block's
//! filters transformed [`CHUNK`] input channels at a time, on the AVX-512 microkernels that
//! [`panels`] drives.
//!
//! Through the `gemm` crate a block's filters were transformed whole before its GEMMs: for 80
//! output channels of 1280 inputs by F(4x4, 3x3), 14.7 MB written to the shared cache and
//! read back, the transform's stores waiting on it (one thread, the 1280 -> 1280 layer's
//! filters: 21 ms by F(4x4, 3x3), 7.6 ms by F(2x2, 3x3), as long as the layer's GEMMs at
//! 512x512); and each block's GEMMs packed the layer's transformed input again. Here the
//! block's filters of [`CHUNK`] input channels go into a buffer that stays in L2, and each
//! position's product over those channels is added to the block's products straight away; the
//! transformed input is read in place (its rows of tiles are the microkernels' vectors).
//!
//! Measured on a 2-core Zen 4 (`conv::tests::small_map_speed`, two rounds alternating with
//! the gemm crate's way, the tilings `winograd::tiling` picks): 1280 -> 1280 at 16x16 by
//! F(4x4, 3x3) 35–40 -> 22 ms for one image and 52–54 -> 34–42 ms for two, 1920 -> 1280 62–67
//! -> 34 ms, 640 -> 640 8.8–12 -> 6.5–6.8 ms, 2560 -> 1280 at 8x8 by F(2x2, 3x3) 29–30 ->
//! 20–23 ms; the SD 1.5 UNet at 512x512 (`beeswax bench unet`, 4 rounds alternating, a noisy
//! VM) 3.31–3.82 s against 3.70–4.33 s, faster in every round.
//!
//! Each product is summed over the input channels in blocks of [`CHUNK`] (by the number of
//! channels alone), each block by fused multiply-adds in a register and added in turn: an
//! image's result does not depend on its batch or on the threads.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::super::amx;
use super::super::panels::{self, tile_into, MR, NR};
use super::super::widen::Stored;
use super::filters::transform_filters;
use super::{block, product_block, Band, Shape, Tiling};

/// Input channels per chunk: the block's transformed filters for them (80 x 36 x 64 values,
/// 720 KiB, by F(4x4, 3x3)) stay in a 1 MiB L2.
const CHUNK: usize = 64;

/// Whether blocks go this way: the CPU runs the microkernels, and no AMX precision was asked
/// for (then the GEMMs run on AMX).
pub(super) fn available() -> bool {
    panels::available() && amx::precision().is_none()
}

/// One thread's buffers, kept from block to block (fresh pages per block would be faulted in
/// again).
#[derive(Default)]
pub(super) struct Buffers {
    filters: Vec<MaybeUninit<f32>>,
    products: Vec<f32>,
    scratch: Vec<f32>,
}

/// The products of the output channels `range` (the filters `weight`, `[co, c, 3, 3]`) with
/// the transformed input `v` of `band` (as `transform_input` lays it out), laid out as
/// [`super::products`] writes them: per position, `n` rows of `band.stride` values, then
/// [`PAD`](super::PAD) zeros.
pub(super) fn products<'a>(
    weight: Stored,
    s: &Shape,
    band: &Band,
    v: &[f32],
    range: Range<usize>,
    bufs: &'a mut Buffers,
) -> &'a [f32] {
    let (t, nt, n) = (band.t, band.stride, range.len());
    let positions = t.positions();
    let (vb, pb) = (block(t, nt), product_block(n, nt));
    assert!(
        v.len() >= s.c * vb,
        "transformed input of {} values",
        v.len()
    );
    let Buffers {
        filters,
        products: m,
        scratch,
    } = bufs;
    // Only the padding after each position's rows is zeroed: the first chunk's kernels store
    // every other value (and with no input channels there are no chunks: all zeros).
    m.resize(positions * pb, 0.0);
    if s.c == 0 {
        m.fill(0.0);
    }
    for pad in m.chunks_exact_mut(pb) {
        pad[n * nt..].fill(0.0);
    }
    for k0 in (0..s.c).step_by(CHUNK) {
        let kc = CHUNK.min(s.c - k0);
        let u = chunk_filters(weight, s, t, (range.clone(), k0..k0 + kc), filters, scratch);
        let us = positions * kc;
        for xi in 0..positions {
            let v = &v[k0 * vb + xi * nt..];
            for o0 in (0..n).step_by(NR) {
                let nr = NR.min(n - o0);
                let rhs = (&u[o0 * us + xi * kc..], us);
                for j0 in (0..nt).step_by(MR) {
                    let shape = (MR.min(nt - j0), nr, kc);
                    let out = (&mut m[..], xi * pb + o0 * nt + j0, nt);
                    tile_into(out, (&v[j0..], vb), shape, rhs, k0);
                }
            }
        }
    }
    m
}

/// The filters of the output channels `range` over the input channels `ks`, transformed into
/// `u` as `[range][positions][ks]`.
fn chunk_filters<'a>(
    weight: Stored,
    s: &Shape,
    t: Tiling,
    (range, ks): (Range<usize>, Range<usize>),
    u: &'a mut Vec<MaybeUninit<f32>>,
    scratch: &mut Vec<f32>,
) -> &'a [f32] {
    let (positions, kc, n) = (t.positions(), ks.len(), range.len());
    u.resize(n * positions * kc, MaybeUninit::new(0.0));
    let u = &mut u[..n * positions * kc];
    for (u, o) in u.chunks_exact_mut(positions * kc).zip(range) {
        let filters = weight.part(9 * (o * s.c + ks.start), 9 * kc);
        transform_filters(t, filters, kc, u, scratch, false);
    }
    // SAFETY: `u` was made of initialised values (the resize), and `transform_filters`
    // wrote every value of each channel's rows: all of it is initialised f32 values.
    #[allow(unsafe_code)]
    unsafe {
        &*(u as *const [MaybeUninit<f32>] as *const [f32])
    }
}

#[cfg(test)]
mod tests {
    use super::super::{products as by_gemm, transform_input, transformed_filters, Source};
    use super::*;
    use crate::kernels::test_util::noise;

    #[test]
    fn products_equal_the_gemm_crates() {
        // Chunks of input channels with a partial last one (150, 70), blocks of output
        // channels that are not whole groups of six (13, 70), tiles that are not whole vectors
        // (25 and 50) and more than one panel of them (80 x 2); f32 and f16 filters.
        if !available() {
            eprintln!("no AVX-512 here (or AMX asked for): the gemm crate's products alone");
            return;
        }
        let cases = [
            (Tiling::F2, 70, 13, 16, 1),
            (Tiling::F4, 150, 70, 20, 2),
            (Tiling::F2, 64, 7, 18, 2),
        ];
        for (t, c, co, hw, images) in cases {
            let s = Shape {
                c,
                h: hw,
                w: hw,
                co,
            };
            let band = Band::whole(&s, t, images);
            let x = noise(images * c * hw * hw, 61);
            let x = Source {
                x: &x,
                up: false,
                pre: None,
            };
            let v = transform_input(x, &s, &band, false);
            let w32: Vec<f32> = noise(co * c * 9, 62).iter().map(|v| v * 0.1).collect();
            let w16: Vec<half::f16> = w32.iter().map(|&v| half::f16::from_f32(v)).collect();
            for weight in [Stored::F32(&w32), Stored::F16(&w16)] {
                let u = transformed_filters(weight, &s, t);
                let mut bufs = Buffers::default();
                // On the same buffers: all the channels twice, then the last ones (fewer rows
                // per position): nothing of an earlier call stays in a later one.
                for first in [0, 0, co / 2] {
                    let n = co - first;
                    let want = by_gemm(&u[first * block(t, c)..], &v, n, c, &band, 1);
                    let got = products(weight, &s, &band, &v, first..co, &mut bufs);
                    assert_eq!(got.len(), want.len());
                    let worst = got.iter().zip(want.iter()).fold(0f32, |worst, (&a, &b)| {
                        worst.max((a - b).abs() / b.abs().max(1.0))
                    });
                    assert!(worst < 1e-5, "{t:?} {c}->{co} {hw}x{hw} x{images}: {worst}");
                }
            }
        }
    }
}
