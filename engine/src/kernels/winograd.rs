//! 3x3, stride-1, padding-1 convolutions by Winograd's minimal filtering F(m x m, 3x3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015), m = 2 or 4
//! ([`Tiling`]).
//!
//! Each m x m block of output pixels is computed from the n x n input patch around it
//! (n = m + 2) with n² multiplications per (input, output) channel pair instead of 9m²: the
//! patch is transformed (`Bᵀ d B`), the 3x3 filter is transformed (`G g Gᵀ`), the n² transformed
//! positions are multiplied channel-by-channel as n² independent GEMMs `[c_out, c_in] ×
//! [c_in, tiles]`, and the products are transformed back (`Aᵀ m A`). The GEMMs do 2.25x
//! (F(2x2, 3x3)) or 4x (F(4x4, 3x3)) fewer FLOPs than the im2col GEMM; the transforms are
//! cheap passes over memory. [`tiling`] picks the tiling by the layer's shape.
//!
//! Numerics: the math is f32 throughout; `tests::error_is_that_of_a_direct_convolution`
//! checks each tiling's error against an f64 reference (see [`tiling`] for how they differ).
//!
//! Each image is its own set of GEMMs (an image's result does not depend on its batch), and
//! large maps are cut into bands of tile rows so that the transformed input and product stay
//! under [`BUDGET`] values.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm::{matmul_uninit, Mat, MatUninit};
use super::widen::Stored;

mod block_products;
pub(super) mod direct;
mod filters;
mod output_blocks;
mod phases;
mod source;
mod tiling;
mod transforms;

use filters::transform_filters;
pub(super) use source::{Pre, Source};
pub(super) use tiling::Tiling;
use transforms::{transform_input, transform_output, OutputRows};

/// Largest transformed input plus product of one band, in f32 values (64 MiB).
const BUDGET: usize = 16 << 20;

/// Largest transformed filter bank (in f32 values, 16 MiB: half the L3 of the machines
/// measured) for which each thread takes whole bands of [`LOCAL_BAND`] values through all
/// three steps by itself (the local path). The steps are passes over memory as much as
/// arithmetic: done layer-wide, the transformed input and the products (2.25–4x the map each)
/// stream through main memory twice; done band by band on one thread they stay in its cache,
/// while the filter bank is re-read per band from the shared cache. Larger banks (the UNet's
/// 640 channels and up) would be re-read from memory: measured slower.
const LOCAL_FILTERS: usize = 1 << 22;

/// Least size of a transformed filter bank (in f32 values, 16 Mi: 64 MiB) written by
/// non-temporal stores ([`super::stream`]): larger than the caches, so that plain stores
/// would read every line of it from memory before writing it. Measured on the SD 1.5 UNet at
/// 512x512 on the 2-core AMX Xeon (module doc of `amx`): the per-call filter transforms
/// took 12% of a forward (16.7 ms for a 1280-channel layer at 16x16, whose bank is 105 MB),
/// a pass over memory rather than arithmetic.
const STREAM_FILTERS: usize = 1 << 24;

/// Fewest tiles of a band on the local path: fewer make the GEMMs too narrow, and at most 64
/// would let a layer of at most 64 output channels take the GEMM's small-matrix path, which
/// sums in another order than the layer-wide path's GEMMs.
const MIN_BAND_TILES: usize = 65;

/// Transformed input plus product of one thread's band on the local path, in f32 values
/// (1 MiB; at least one tile row).
const LOCAL_BAND: usize = 1 << 18;

/// Extra f32 values after each channel's block of the filters and transformed input, and
/// after each position's block of products (one cache line). The blocks are otherwise a
/// multiple of 4 KiB long whenever the channels or tiles are a multiple of 64, so the rows
/// each GEMM reads would all fall in the same L1 sets and evict one another while it packs
/// them.
const PAD: usize = 16;

/// Length of one channel's block: the tiling's positions of `len` values each, then [`PAD`].
fn block(t: Tiling, len: usize) -> usize {
    t.positions() * len + PAD
}

/// Fewest tiles per image for which Winograd pays off: 7x7 maps by F(2x2, 3x3), 13x13 by
/// F(4x4, 3x3). It saves about 5·c·co multiply-adds per output pixel but transforms the
/// filters once per call, which over few tiles pays off only because such layers go by
/// blocks of output channels ([`output_blocks`]: each block's transformed filters stay in
/// cache). Measured on a 2-core Zen 4 (hand-run `conv::tests::small_map_speed`), 1280 ->
/// 1280 at 8x8 takes 8.6–9.0 ms against 9.5–10.3 ms by im2col for one image, 13.7–14.4 ms
/// against 18.7–19.4 ms for two; at 4x4 (4 tiles) it is 1.7–4x slower than im2col.
pub(super) const MIN_TILES: usize = 16;

/// The convolution's shape: `c` input channels of `h` x `w`, `co` output channels (same size).
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
}

impl Shape {
    /// Tile rows and tiles per row of the tiling `t`.
    fn tiles(&self, t: Tiling) -> (usize, usize) {
        (self.h.div_ceil(t.m()), self.w.div_ceil(t.m()))
    }
}

/// What happens to each output value after the convolution: `relu((y + bias + residual) /
/// scale)`, the bias per output channel, the residual laid out like the output. With
/// `stream`, the rows are written by non-temporal stores ([`super::stream`]): for outputs
/// larger than the caches ([`STREAM_OUTPUTS`]), which the next layer reads back from memory
/// anyway.
#[derive(Debug, Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub scale: f32,
    pub relu: bool,
    pub stream: bool,
}

/// Least output size (f32 values, 16 Mi: 64 MiB) written by non-temporal stores, as for the
/// filter banks ([`STREAM_FILTERS`]): twice the 32 MiB L3 of the Zen 4 measured, so that
/// outputs that fit in a shared cache stay there for the next layer. Only the VAE's and
/// TAESD's full-size maps reach it (the UNet's largest conv output is 5 MiB per image).
pub(super) const STREAM_OUTPUTS: usize = 1 << 24;

impl Epilogue<'_> {
    /// Writes one output row `dst` from its values `y` (bias added; `y` is overwritten) and,
    /// with a residual, the residual's row `res`: `relu((y + res) / scale)`. Each step is its
    /// own pass over the row (the branches out of the loops), in the same order per value as
    /// one expression. A task that writes rows calls [`Epilogue::end_task`] before it ends.
    #[inline(always)]
    fn write_row(&self, dst: &mut [MaybeUninit<f32>], y: &mut [f32], res: Option<&[f32]>) {
        let y = &mut y[..dst.len()];
        if let Some(res) = res {
            for (y, &r) in y.iter_mut().zip(res) {
                *y += r;
            }
        }
        if self.scale != 1.0 {
            let scale = self.scale;
            for y in y.iter_mut() {
                *y /= scale;
            }
        }
        if self.relu {
            for y in y.iter_mut() {
                *y = y.max(0.0);
            }
        }
        if self.stream {
            super::stream::copy(y, dst);
        } else {
            for (d, &y) in dst.iter_mut().zip(y.iter()) {
                d.write(y);
            }
        }
    }

    /// Ends a task's writes: with `stream`, orders its non-temporal stores before whatever
    /// hands the rows to another thread ([`super::stream::fence`]).
    fn end_task(&self) {
        if self.stream {
            super::stream::fence();
        }
    }
}

/// The tiling the Winograd path takes for images of this shape, `None` for im2col. The
/// choice depends on one image only, never on the batch, so that an image's result does not
/// depend on its batch; for the same reason the GEMM must not take its small-matrix path (at
/// most 64 rows and 64 columns, which blocks the reduction differently) for one image when it
/// would not for several: layers of at most 64 output channels need more than 64 tiles.
///
/// F(4x4, 3x3) is taken wherever it is usable (from 13x13 maps on), F(2x2, 3x3) on smaller
/// maps (from 7x7 on, [`MIN_TILES`]). Its 1.78x fewer multiplications outweigh its 2.25x
/// larger filter bank, by far where it goes by blocks of output channels ([`by_blocks`]: its
/// bank never leaves the caches) while F(2x2, 3x3), over 4x the tiles, would take the
/// layer-wide path (writing its whole bank to memory and reading it back). Measured on a
/// 2-core Zen 4 (hand-run `conv::tests::small_map_speed`, one image, best of 6 to 30):
///
/// - 32x32: 1280 -> 1280 56–58 ms against 104–110 ms by F(2x2, 3x3), 1920 -> 640 48–51 ms
///   against 80–84 ms, 2560 -> 1280 120 ms against 218 ms; 24x24 (SD 2.x at 768x768):
///   1280 -> 1280 45 ms against 75 ms; 48x48 and up 13–30% faster.
/// - 16x16, where both go by blocks: 1280 -> 1280 19.4 ms against 21.6 ms, 640 -> 640 5.3–5.5
///   ms against 5.8–6.3 ms, but 1920 -> 1280 34.6 ms against 32.7 ms and 2560 -> 1280 48.5 ms
///   against 46.6 ms; for two images (every job with classifier-free guidance) F(4x4, 3x3) is
///   7–24% faster for all of them.
/// - 13x13 to 15x15: F(4x4, 3x3) 3–5% faster than F(2x2, 3x3) for 1280 -> 1280; 7x7 to 12x12:
///   F(2x2, 3x3) 16–18% faster than im2col, F(4x4, 3x3) slower than both.
pub(super) fn tiling(s: &Shape) -> Option<Tiling> {
    [Tiling::F4, Tiling::F2].into_iter().find(|&t| usable(s, t))
}

/// Whether the tiling `t` pays off and keeps images independent of their batch (see [`tiling`]).
pub(super) fn usable(s: &Shape, t: Tiling) -> bool {
    let (th, tw) = s.tiles(t);
    let tiles = th * tw;
    tiles >= MIN_TILES && (s.co > 64 || tiles > 64)
}

/// Most tiles per image of a layer with a filter bank larger than [`LOCAL_FILTERS`] that is
/// taken by blocks of output channels ([`output_blocks`]): up to 16x16 maps by F(2x2, 3x3),
/// 32x32 by F(4x4, 3x3). Above it, the bank's pass over memory is small beside the GEMMs.
const BLOCK_TILES: usize = 64;

/// Whether a layer of shape `s` by the tiling `t` is taken by blocks of output channels
/// ([`output_blocks`]): a filter bank too large for the local path over few tiles. Depends
/// on one image only, as the tiling does.
fn by_blocks(s: &Shape, t: Tiling) -> bool {
    let (th, tw) = s.tiles(t);
    t.positions() * s.c * s.co > LOCAL_FILTERS && th * tw <= BLOCK_TILES
}

/// The convolution of the `images` images of `x` (`[images, c, h, w]`) with the filters
/// `weight` (`[co, c, 3, 3]`) by the tiling `t`, through the epilogue `ep`, written whole to
/// `out` (`[images, co, h, w]`). Large filter banks over few tiles go by blocks of output
/// channels ([`output_blocks`]). Otherwise the filters are transformed once per call; the
/// input is then transformed, multiplied (one GEMM per position) and transformed back band by
/// band: per thread in cache for small filter banks ([`by_local_bands`]), layer-wide
/// otherwise ([`by_layer_bands`]).
///
/// An image's result does not depend on the batch it is in: the GEMM's blocking along the
/// reduction depends only on `c` outside its small-matrix path, which [`tiling`] keeps
/// out of reach, so every output is summed in the same order whatever the number of columns
/// (`tests::images_do_not_depend_on_their_batch`).
pub(super) fn conv(
    x: Source,
    images: usize,
    weight: Stored,
    s: &Shape,
    t: Tiling,
    ep: &Epilogue,
    out: &mut [MaybeUninit<f32>],
) {
    if by_blocks(s, t) {
        return output_blocks::conv(x, images, weight, s, t, ep, out);
    }
    let u = transformed_filters(weight, s, t);
    let (th, _) = s.tiles(t);
    let jobs = images * th.div_ceil(local_band_rows(s, t));
    let bank = t.positions() * s.c * s.co;
    if jobs >= rayon::current_num_threads() && bank <= LOCAL_FILTERS {
        by_local_bands(x, &u, s, t, ep, out)
    } else {
        by_layer_bands(x, images, &u, s, t, ep, out)
    }
}

/// Every output channel's filters transformed ([`transform_filters`]) as `[co][positions][c]`,
/// with [`PAD`] values after each channel; 16-bit filters are widened as they are transformed.
fn transformed_filters(weight: Stored, s: &Shape, t: Tiling) -> Box<[f32]> {
    // Not zeroed first: `filter_block` writes every value.
    let mut u = Box::<[f32]>::new_uninit_slice(s.co * block(t, s.c));
    let stream = u.len() >= STREAM_FILTERS;
    u.par_chunks_mut(block(t, s.c))
        .enumerate()
        .for_each_init(Vec::new, |scratch, (o, u)| {
            filter_block(weight, s, t, o, u, scratch, stream);
            if stream {
                super::stream::fence();
            }
        });
    // SAFETY: `filter_block` wrote every value of every channel's block.
    #[allow(unsafe_code)]
    unsafe {
        u.assume_init()
    }
}

/// Output channel `o`'s block of transformed filters (`u`, [`block`] long): its filters
/// transformed as `[positions][c]` ([`transform_filters`]), then [`PAD`] zeros. Every value
/// of `u` is written.
fn filter_block(
    weight: Stored,
    s: &Shape,
    t: Tiling,
    o: usize,
    u: &mut [MaybeUninit<f32>],
    scratch: &mut Vec<f32>,
    stream: bool,
) {
    let (u, pad) = u.split_at_mut(t.positions() * s.c);
    for p in pad {
        p.write(0.0);
    }
    let filters = weight.part(o * 9 * s.c, 9 * s.c);
    transform_filters(t, filters, s.c, u, scratch, stream)
}

/// [`conv`] for large filter banks `u`, or too few local bands for the threads: each step runs
/// layer-wide on all threads, over bands of tile rows (of every image) whose transformed input
/// and products stay under [`BUDGET`].
fn by_layer_bands(
    x: Source,
    images: usize,
    u: &[f32],
    s: &Shape,
    t: Tiling,
    ep: &Epilogue,
    out: &mut [MaybeUninit<f32>],
) {
    let (th, tw) = s.tiles(t);
    let plane = s.h * s.w;
    let threads = rayon::current_num_threads().max(1);
    let band_rows = (BUDGET / (t.positions() * (s.c + s.co) * tw * images)).clamp(1, th);
    for ty0 in (0..th).step_by(band_rows) {
        let rows = band_rows.min(th - ty0);
        let nt = rows * tw;
        let band = Band {
            t,
            ty0,
            rows,
            nt,
            stride: images * nt,
        };
        let v = transform_input(x, s, &band, true);
        let m = products(u, &v, s.co, s.c, &band, threads);
        drop(v);
        let first = t.m() * ty0 * s.w;
        let scratch = || OutputRows::new(s, t);
        let planes = out.par_chunks_mut(plane).enumerate();
        planes.for_each_init(scratch, |rows, (i, dst)| {
            let (image, o) = (i / s.co, i % s.co);
            let residual = ep.residual.map(|r| &r[i * plane + first..(i + 1) * plane]);
            let m = &m[o * band.stride..];
            let dst = &mut dst[first..];
            transform_output((m, s.co), s, &band, (image, o), ep, residual, dst, rows);
            ep.end_task();
        });
    }
}

/// Tile rows per band on the local path: about [`LOCAL_BAND`] values, at least
/// [`MIN_BAND_TILES`] tiles, rounded up (by less than double) to a multiple of 64 tiles where
/// one exists: the GEMM's widest kernel takes 64 columns at a time and runs the rest through
/// narrower, slower ones (measured: the SD 1.5 UNet at 512x512 3% faster, TAESD 4%).
fn local_band_rows(s: &Shape, t: Tiling) -> usize {
    let (th, tw) = s.tiles(t);
    let rows = (LOCAL_BAND / (t.positions() * (s.c + s.co) * tw)).max(MIN_BAND_TILES.div_ceil(tw));
    let whole = (rows..2 * rows).find(|r| r * tw % 64 == 0).unwrap_or(rows);
    whole.clamp(1, th)
}

/// One band's rows of each output plane of its image.
type OutRows<'a> = Vec<&'a mut [MaybeUninit<f32>]>;

/// `out` (images of `co` planes of `plane` values) cut into bands of `span` values of every
/// plane: for every image and band, its index, the band's index and its part of each of the
/// image's output planes.
fn band_jobs(
    out: &mut [MaybeUninit<f32>],
    co: usize,
    plane: usize,
    span: usize,
) -> Vec<(usize, usize, OutRows<'_>)> {
    let bands = plane.div_ceil(span);
    let mut jobs = Vec::new();
    for (image, planes) in out.chunks_mut(co * plane).enumerate() {
        let mut rows: Vec<_> = (0..bands).map(|b| (image, b, Vec::new())).collect();
        for dst in planes.chunks_mut(plane) {
            for (job, part) in rows.iter_mut().zip(dst.chunks_mut(span)) {
                job.2.push(part);
            }
        }
        jobs.extend(rows);
    }
    jobs
}

/// [`conv`] for filter banks `u` of at most [`LOCAL_FILTERS`] values when every thread gets a
/// band: every image's tile rows are cut into bands ([`local_band_rows`]), and each band is
/// transformed, multiplied (on one thread) and transformed back by one rayon task into its own
/// rows of every output plane. Its results equal the layer-wide path's bit for bit (the GEMMs
/// sum in the same order; `tests::both_paths_give_the_same_bits`), so that the choice may
/// depend on the batch and the threads.
fn by_local_bands(
    x: Source,
    u: &[f32],
    s: &Shape,
    t: Tiling,
    ep: &Epilogue,
    out: &mut [MaybeUninit<f32>],
) {
    let (th, tw) = s.tiles(t);
    let plane = s.h * s.w;
    let band_rows = local_band_rows(s, t);
    // Output rows m·ty0 .. of a band: `band_rows` tile rows are m·band_rows pixel rows.
    let span = t.m() * band_rows * s.w;
    let jobs = band_jobs(out, s.co, plane, span);
    jobs.into_par_iter().for_each(|(image, b, mut dsts)| {
        let ty0 = b * band_rows;
        let rows = band_rows.min(th - ty0);
        let band = Band {
            t,
            ty0,
            rows,
            nt: rows * tw,
            stride: rows * tw,
        };
        let (ih, iw) = x.plane(s);
        let x = Source {
            x: &x.x[image * s.c * ih * iw..][..s.c * ih * iw],
            up: x.up,
            pre: x.pre.map(|p| Pre {
                first: p.first + image * s.c,
                ..p
            }),
        };
        let v = transform_input(x, s, &band, false);
        let m = products(u, &v, s.co, s.c, &band, 1);
        drop(v);
        band_outputs(
            &m,
            s,
            &band,
            image,
            ep,
            &mut dsts,
            &mut OutputRows::new(s, t),
        );
        ep.end_task();
    });
}

/// The products `m` of a band of one image (laid out as [`products`] writes them) transformed
/// back into its rows `dsts` of each output plane of `image`, through the epilogue. (Its
/// residual rows prefetched a few channels ahead, as the input's are, measured no faster.)
fn band_outputs(
    m: &[f32],
    s: &Shape,
    band: &Band,
    image: usize,
    ep: &Epilogue,
    dsts: &mut [&mut [MaybeUninit<f32>]],
    rows: &mut OutputRows,
) {
    let plane = s.h * s.w;
    for (o, dst) in dsts.iter_mut().enumerate() {
        let first = (image * s.co + o) * plane + band.t.m() * band.ty0 * s.w;
        let residual = ep.residual.map(|r| &r[first..first + dst.len()]);
        let m = &m[o * band.nt..];
        transform_output((m, s.co), s, band, (0, o), ep, residual, dst, rows);
    }
}

/// The position-wise GEMMs `m[ξ][o] = u[o][ξ] · v[ξ]` for `n` output channels: `u` is
/// `[n][positions][c]`, `v` is `[c][positions][stride]`, the result `m` is
/// `[positions][n][stride]` (the band's `stride` columns: tiles) with [`PAD`] values after
/// every position's block ([`product_block`] long). `m` is not zeroed first: the GEMMs write all
/// of it but the padding, which is written here.
///
/// With several threads the positions are shared out among them, each GEMM on one thread
/// (more threads than positions split each GEMM too): one fork-join per band instead of one
/// per position, and each GEMM keeps its packed panels in one core's cache (measured: the
/// SD 1.5 UNet's 640- and 1280-channel layers faster than with every GEMM on all threads).
fn products(u: &[f32], v: &[f32], n: usize, c: usize, band: &Band, threads: usize) -> Box<[f32]> {
    let (t, nt) = (band.t, band.stride);
    let mut m = Box::<[f32]>::new_uninit_slice(t.positions() * product_block(n, nt));
    let gemm = |xi: usize, m: &mut [MaybeUninit<f32>], threads: usize| {
        let (m, pad) = m.split_at_mut(n * nt);
        for p in pad {
            p.write(0.0);
        }
        matmul_uninit(
            MatUninit {
                data: m,
                rows: n,
                cols: nt,
                stride: nt,
            },
            Mat {
                data: &u[xi * c..],
                rows: n,
                cols: c,
                stride: block(t, c),
            },
            Mat {
                data: &v[xi * nt..],
                rows: c,
                cols: nt,
                stride: block(t, nt),
            },
            threads,
        );
    };
    if threads <= 1 {
        let blocks = m.chunks_mut(product_block(n, nt)).enumerate();
        blocks.for_each(|(xi, m)| gemm(xi, m, 1));
    } else {
        let per_gemm = (threads / t.positions()).max(1);
        let blocks = m.par_chunks_mut(product_block(n, nt)).enumerate();
        blocks.for_each(|(xi, m)| gemm(xi, m, per_gemm));
    }
    // SAFETY: the GEMM of position ξ wrote its block's `n` rows of `nt` values, and the
    // padding after them was written before it: every element is initialised.
    #[allow(unsafe_code)]
    unsafe {
        m.assume_init()
    }
}

/// Length of one position's block of products: `n` rows of `stride` values, then [`PAD`].
fn product_block(n: usize, stride: usize) -> usize {
    n * stride + PAD
}

/// Tile rows `ty0..ty0 + rows` (`nt` tiles per image) of every image, in the tiling `t`; the
/// transformed input and the products hold `stride` = images·nt columns per row, image after
/// image.
struct Band {
    t: Tiling,
    ty0: usize,
    rows: usize,
    nt: usize,
    stride: usize,
}

impl Band {
    /// Every tile row of every one of `images` images of shape `s` in one band.
    fn whole(s: &Shape, t: Tiling, images: usize) -> Band {
        let (th, tw) = s.tiles(t);
        Band {
            t,
            ty0: 0,
            rows: th,
            nt: th * tw,
            stride: images * th * tw,
        }
    }
}

#[cfg(test)]
#[path = "winograd_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "winograd_speed.rs"]
mod speed;
