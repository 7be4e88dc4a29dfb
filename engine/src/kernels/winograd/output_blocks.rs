//! The Winograd convolution of small maps with large filter banks (the UNet's 640- to
//! 2560-channel layers at 16x16 and 32x32), block of output channels by block.
//!
//! Transformed whole, such a layer's filter bank is 1.8x (F(2x2, 3x3)) or 4x (F(4x4, 3x3))
//! its filters: 105 MB for 1280 -> 1280 by F(2x2, 3x3), 210 MB for 2560 -> 1280, written to
//! memory and read back by the GEMMs on every call. Here the threads share out blocks of
//! about [`BLOCK_ROWS`] output channels: each block's filters are transformed into a buffer
//! of the thread's that stays in the shared cache, multiplied by the whole layer's transformed
//! input (transformed once, layer-wide, and read by every block) and transformed back into
//! the block's output planes. Only the filters themselves are read from memory.
//!
//! Measured on a 2-core Zen 4 (`beeswax bench unet`, SD 1.5 at 512x512 batch 1, the
//! convolutions' own times summed per forward): 2560 -> 1280 at 16x16 55 ms against 67 ms per
//! call, all convolutions 1179–1204 ms against 1242–1255 ms per forward.
//!
//! With AVX-512 (and no AMX asked for) each block's filters are transformed a chunk of input
//! channels at a time and multiplied straight away ([`super::block_products`]): its
//! transformed filters never leave L2. Its sums are blocked by the input channels alone, so an
//! image's result does not depend on its batch, and they differ from the layer-wide path's
//! by f32 rounding (`tests::blocks_give_the_layer_wide_bits`). Otherwise the block's filters
//! are transformed whole and multiplied by the `gemm` crate, and the results equal the
//! layer-wide path's bit for bit: splitting a GEMM's rows changes no sum as long as no block
//! takes the GEMM's small-matrix path (at most 64 rows and 64 columns, which sums in another
//! order), so every block has more than 64 rows ([`blocks`]). Either way, whether a layer goes
//! by blocks depends on one image only.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::super::widen::Stored;
use super::transforms::{transform_input, transform_output, OutputRows};
use super::{block, block_products, filter_block, products, Band, Epilogue, Shape, Source, Tiling};

/// Output channels per block (at least; the blocks share the channels evenly). Above 64, so
/// that no block's GEMMs take the small-matrix path; 80 channels of 1280-channel filters by
/// F(2x2, 3x3) are 6.5 MB, a fifth of the 32 MiB L3 of the machines measured.
const BLOCK_ROWS: usize = 80;

/// [`super::conv`] by blocks of output channels: the input transformed layer-wide in one band
/// (every tile row of every image), then per block its filters transformed, multiplied and
/// transformed back into its planes of every image of `out`.
pub(super) fn conv(
    x: Source,
    images: usize,
    weight: Stored,
    s: &Shape,
    t: Tiling,
    ep: &Epilogue,
    out: &mut [MaybeUninit<f32>],
) {
    let band = Band::whole(s, t, images);
    let v = transform_input(x, s, &band, true);
    let plane = s.h * s.w;
    let blocks = blocks(s.co);
    let widest = blocks.iter().map(|r| r.len()).max().unwrap_or(0);
    let planes = block_planes(out, s.co, plane, &blocks);
    let mut jobs: Vec<_> = blocks.into_iter().zip(planes).collect();
    // The blocks shared out evenly, each thread's in one task with one filter buffer: a fresh
    // buffer per block is fresh pages to fault in (measured: the filter transform twice as
    // slow).
    let per_task = jobs.len().div_ceil(rayon::current_num_threads().max(1));
    let fused = block_products::available();
    jobs.par_chunks_mut(per_task).for_each(|group| {
        let mut work = match fused {
            true => Work::Fused(block_products::Buffers::default()),
            false => Work::Whole {
                u: Box::<[f32]>::new_uninit_slice(widest * block(t, s.c)),
                scratch: Vec::new(),
            },
        };
        let mut rows = OutputRows::new(s, t);
        for (range, dsts) in group.iter_mut() {
            let n = range.len();
            // This block's `n` output channels per position.
            let m: &[f32] = match &mut work {
                Work::Fused(bufs) => {
                    block_products::products(weight, s, &band, &v, range.clone(), bufs)
                }
                Work::Whole { u, scratch } => {
                    &by_gemm_crate(weight, s, &band, &v, range.clone(), (u, scratch))
                }
            };
            for (j, dst) in dsts.iter_mut().enumerate() {
                let (image, k) = (j / n, j % n);
                let o = range.start + k;
                let i = image * s.co + o;
                let residual = ep.residual.map(|r| &r[i * plane..(i + 1) * plane]);
                let m = &m[k * band.stride..];
                transform_output((m, n), s, &band, (image, o), ep, residual, dst, &mut rows);
            }
        }
        ep.end_task();
    });
}

/// A task's buffers for the products of its blocks, made once per task: those of
/// [`block_products`], or the transformed filters of the widest block and the filter
/// transform's scratch ([`by_gemm_crate`]).
enum Work {
    Fused(block_products::Buffers),
    Whole {
        u: Box<[MaybeUninit<f32>]>,
        scratch: Vec<f32>,
    },
}

/// The products of the output channels `range` as [`products`] computes them: the block's
/// filters transformed whole into `u` (a buffer for the widest block), then multiplied by the
/// `gemm` crate (or AMX).
fn by_gemm_crate(
    weight: Stored,
    s: &Shape,
    band: &Band,
    v: &[f32],
    range: Range<usize>,
    (u, scratch): (&mut [MaybeUninit<f32>], &mut Vec<f32>),
) -> Box<[f32]> {
    let (t, n) = (band.t, range.len());
    let u = &mut u[..n * block(t, s.c)];
    for (u, o) in u.chunks_mut(block(t, s.c)).zip(range) {
        filter_block(weight, s, t, o, u, scratch, false);
    }
    // SAFETY: `filter_block` wrote every value of each channel's block, and the blocks tile
    // `u`: all of it is initialised f32 values.
    #[allow(unsafe_code)]
    let u = unsafe { &*(u as *const [MaybeUninit<f32>] as *const [f32]) };
    products(u, v, n, s.c, band, 1)
}

/// `co` output channels cut into blocks of at least [`BLOCK_ROWS`] (one block when there are
/// fewer), the channels shared as evenly as they go.
fn blocks(co: usize) -> Vec<Range<usize>> {
    let count = (co / BLOCK_ROWS).max(1);
    (0..count)
        .map(|b| b * co / count..(b + 1) * co / count)
        .collect()
}

/// For each block of output channels, its planes (`plane` values each) of every image of
/// `out` (images of `co` planes), image by image.
fn block_planes<'a>(
    out: &'a mut [MaybeUninit<f32>],
    co: usize,
    plane: usize,
    blocks: &[Range<usize>],
) -> Vec<Vec<&'a mut [MaybeUninit<f32>]>> {
    let mut jobs: Vec<Vec<_>> = blocks.iter().map(|_| Vec::new()).collect();
    for image in out.chunks_mut(co * plane) {
        let mut rest = image;
        for (job, range) in jobs.iter_mut().zip(blocks) {
            let (planes, tail) = rest.split_at_mut(range.len() * plane);
            job.extend(planes.chunks_mut(plane));
            rest = tail;
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::super::{by_blocks, by_layer_bands, transformed_filters};
    use super::*;
    use crate::kernels::test_util::noise;

    /// The output of `run` on a buffer of `n` values, as bits.
    fn bits(n: usize, run: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<u32> {
        let mut out = vec![MaybeUninit::new(f32::NAN); n];
        run(&mut out);
        // SAFETY: every element was initialised (to NaN) when the vector was made.
        #[allow(unsafe_code)]
        out.into_iter()
            .map(|v| unsafe { v.assume_init() }.to_bits())
            .collect()
    }

    #[test]
    fn blocks_give_the_layer_wide_bits() {
        // Uneven blocks (420 = 5 x 84, 300 = 3 x 100, 400 = 5 x 80 over 25 tiles), one image
        // and two, f32 and f16 filters: the layer-wide path's output (bit for bit through the
        // gemm crate; summed in other blocks by `block_products`, so within f32 rounding), and
        // each image bit for bit its own alone.
        let shapes = [
            (Tiling::F2, 640, 420, 16),
            (Tiling::F4, 400, 300, 32),
            (Tiling::F4, 400, 400, 20),
        ];
        for (t, c, co, hw) in shapes {
            let s = Shape {
                c,
                h: hw,
                w: hw,
                co,
            };
            assert!(by_blocks(&s, t), "{t:?} {s:?}");
            let x = noise(2 * c * hw * hw, 51);
            let w32: Vec<f32> = noise(co * c * 9, 52).iter().map(|v| v * 0.05).collect();
            let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let (bias, res) = (noise(co, 53), noise(2 * co * hw * hw, 54));
            let plane = co * hw * hw;
            for (weight, images) in [(Stored::F32(&w32), 2), (Stored::F16(&w16), 1)] {
                let ep = Epilogue {
                    bias: Some(&bias),
                    residual: Some(&res),
                    scale: 2.0,
                    relu: true,
                    stream: false,
                };
                let x = Source {
                    x: &x[..images * c * hw * hw],
                    up: false,
                    pre: None,
                };
                let n = images * plane;
                let blocks = bits(n, |out| conv(x, images, weight, &s, t, &ep, out));
                let u = transformed_filters(weight, &s, t);
                let wide = bits(n, |out| by_layer_bands(x, images, &u, &s, t, &ep, out));
                let what = format!("{t:?} {c}->{co} {hw}x{hw} x{images}");
                if block_products::available() {
                    // Against the largest output: the output transform adds products of both
                    // signs (F(4x4, 3x3)'s scaled by up to 8 twice, so a decimal digit more;
                    // as `winograd::tests::tolerance`), a small output carries a larger one's
                    // rounding. Measured: 1.8e-6 and 4.8e-5 of 3.1 and 2.8.
                    let (worst, largest) =
                        blocks.iter().zip(&wide).fold((0f32, 0f32), |w, (&a, &b)| {
                            let (a, b) = (f32::from_bits(a), f32::from_bits(b));
                            (w.0.max((a - b).abs()), w.1.max(b.abs()))
                        });
                    let relative = if t == Tiling::F2 { 1e-5 } else { 1e-4 };
                    assert!(worst < relative * largest, "{what}: {worst} of {largest}");
                } else {
                    assert!(blocks == wide, "{what}");
                }
                if images == 2 {
                    let one = Source {
                        x: &x.x[c * hw * hw..],
                        ..x
                    };
                    let ep = Epilogue {
                        residual: Some(&res[plane..]),
                        ..ep
                    };
                    let alone = bits(plane, |out| conv(one, 1, weight, &s, t, &ep, out));
                    assert!(alone == blocks[plane..], "{t:?} {c}->{co}: image 1 alone");
                }
            }
        }
    }

    #[test]
    fn blocks_share_the_channels_evenly() {
        assert_eq!(blocks(1280).len(), 16);
        for co in [65, 80, 159, 160, 420, 1280, 1999] {
            let b = blocks(co);
            assert_eq!(b.first().map(|r| r.start), Some(0));
            assert_eq!(b.last().map(|r| r.end), Some(co));
            assert!(b.windows(2).all(|p| p[0].end == p[1].start));
            assert!(
                b.iter().all(|r| r.len() > 64 && r.len() < 2 * BLOCK_ROWS),
                "{co}: {b:?}"
            );
        }
    }
}
