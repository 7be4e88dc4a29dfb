//! 3x3, stride-1, padding-1 convolutions by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).
//!
//! Each 2x2 block of output pixels is computed from the 4x4 input patch around it with 16
//! multiplications per (input, output) channel pair instead of 36: the patch is transformed
//! (`Bᵀ d B`), the 3x3 filter is transformed (`G g Gᵀ`), the 16 transformed positions are
//! multiplied channel-by-channel as 16 independent GEMMs `[c_out, c_in] × [c_in, tiles]`, and
//! the 4x4 products are transformed back (`Aᵀ m A`). The GEMMs do 2.25x fewer FLOPs than the
//! im2col GEMM; the transforms are cheap passes over memory.
//!
//! Numerics: the math is f32 throughout. F(2x2, 3x3)'s transform matrices hold only 0, ±1 and
//! ±½ (exact in binary), so the result differs from a direct convolution only by the rounding
//! of a few extra additions; `tests::error_is_that_of_a_direct_convolution` checks against an
//! f64 reference that its error stays within a small factor of im2col's own. (The larger tiles
//! F(4x4, 3x3) would save more but lose about a decimal digit, so they are not used.)
//!
//! Each image is its own set of GEMMs (an image's result does not depend on its batch), and
//! large maps are cut into bands of tile rows so that the transformed input and product stay
//! under [`BUDGET`] values.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm::{matmul_uninit, Mat, MatUninit};
use super::math::simd;
use super::slices::for_each_chunk;
use super::widen::Stored;

/// Largest transformed input plus product of one band, in f32 values (64 MiB).
const BUDGET: usize = 16 << 20;

/// Largest transformed filter bank (in f32 values, 1 MiB) for which each thread takes whole
/// bands of [`LOCAL_BAND`] values through all three steps by itself. With few channels (TAESD's
/// 64, the VAE's 128 at full resolution) the steps are passes over memory more than arithmetic:
/// done layer-wide, the transformed input and the products (4x the map each) stream through
/// main memory twice; done band by band on one thread they stay in its cache, and the small
/// filter bank is read from cache too. Larger banks would be re-read per band.
const LOCAL_FILTERS: usize = 1 << 18;

/// Transformed input plus product of one thread's band on the local path, in f32 values
/// (1 MiB; at least one tile row).
const LOCAL_BAND: usize = 1 << 18;

/// Extra f32 values after each channel's block of the filters, transformed input and product
/// (one cache line). The blocks are otherwise a multiple of 4 KiB long whenever the channels
/// or tiles are a multiple of 64, so the rows each GEMM reads would all fall in the same L1
/// sets and evict one another while it packs them.
const PAD: usize = 16;

/// Length of one channel's block: the 16 positions of `len` values each, then [`PAD`].
fn block(len: usize) -> usize {
    16 * len + PAD
}

/// Fewest 2x2 tiles per image for which Winograd pays off (an 8x8 map has 16). It saves
/// about 5·c·co multiply-adds per output pixel, but transforms the filters once per call:
/// writing and re-reading 16·c·co values. Measured on the SD 1.5 UNet's layers, a
/// 1280-channel layer at 16x16 is already faster by Winograd for one image (34 ms against
/// 43 ms by im2col), at 8x8 slower even for two.
pub(super) const MIN_TILES: usize = 64;

/// The convolution's shape: `c` input channels of `h` x `w`, `co` output channels (same size).
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
}

impl Shape {
    fn tiles(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
    }
}

/// What happens to each output value after the convolution: `relu((y + bias + residual) /
/// scale)`, the bias per output channel, the residual laid out like the output.
#[derive(Debug, Clone, Copy)]
pub(super) struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub scale: f32,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// The scale and activation of one value that already holds its bias and residual.
    #[inline(always)]
    fn finish(&self, v: f32) -> f32 {
        let v = if self.scale != 1.0 { v / self.scale } else { v };
        if self.relu {
            v.max(0.0)
        } else {
            v
        }
    }
}

/// Whether the Winograd path is taken for images of this shape. The choice depends on one
/// image only, never on the batch, so that an image's result does not depend on its batch;
/// for the same reason the GEMM must not take its small-matrix path (at most 64 rows and 64
/// columns, which blocks the reduction differently) for one image when it would not for
/// several: layers of at most 64 output channels need more than 64 tiles.
pub(super) fn pays_off(s: &Shape) -> bool {
    let (th, tw) = s.tiles();
    let tiles = th * tw;
    tiles >= MIN_TILES && (s.co > 64 || tiles > 64)
}

/// One output channel's filters `weight` (`[c, 3, 3]`) transformed into `u` as `[16][c]`:
/// position `ξ = 4i + j` of `G g Gᵀ` for every input channel. The filters are first turned
/// into nine rows of `c` values (tap by tap), so that the transform is vector arithmetic
/// along the channels; `scratch` holds those rows and the intermediate `G g` (21·c values).
fn transform_filters(weight: &[f32], c: usize, u: &mut [MaybeUninit<f32>], scratch: &mut Vec<f32>) {
    scratch.resize(21 * c, 0.0);
    let (taps, gg) = scratch.split_at_mut(9 * c);
    // Tap by tap: contiguous writes, reads 9 apart (cheaper than the other way round).
    for (k, row) in taps.chunks_exact_mut(c).enumerate() {
        for (t, g) in row.iter_mut().zip(weight.chunks_exact(9)) {
            *t = g[k];
        }
    }
    simd(
        #[inline(always)]
        || {
            let tap = |k: usize| &taps[k * c..][..c];
            // G g, column by column: rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 (as filter_tile).
            for k in 0..3 {
                let (a, b, cc) = (tap(k), tap(3 + k), tap(6 + k));
                let rows = &mut gg[k * 4 * c..][..4 * c];
                let (r0, rest) = rows.split_at_mut(c);
                let (r1, rest) = rest.split_at_mut(c);
                let (r2, r3) = rest.split_at_mut(c);
                for ci in 0..c {
                    r0[ci] = a[ci];
                    r1[ci] = 0.5 * (a[ci] + b[ci] + cc[ci]);
                    r2[ci] = 0.5 * (a[ci] - b[ci] + cc[ci]);
                    r3[ci] = cc[ci];
                }
            }
            // (G g) Gᵀ, row i of G g: a, (a+b+c)/2, (a-b+c)/2, c from its three columns.
            for i in 0..4 {
                let col = |k: usize| &gg[(k * 4 + i) * c..][..c];
                let (a, b, cc) = (col(0), col(1), col(2));
                let out = &mut u[4 * i * c..][..4 * c];
                let (o0, rest) = out.split_at_mut(c);
                let (o1, rest) = rest.split_at_mut(c);
                let (o2, o3) = rest.split_at_mut(c);
                for ci in 0..c {
                    o0[ci].write(a[ci]);
                    o1[ci].write(0.5 * (a[ci] + b[ci] + cc[ci]));
                    o2[ci].write(0.5 * (a[ci] - b[ci] + cc[ci]));
                    o3[ci].write(cc[ci]);
                }
            }
        },
    );
}

/// `G g Gᵀ` for one 3x3 filter `g` (row-major), row-major 4x4: the scalar definition
/// [`transform_filters`] vectorises, kept for its test.
#[cfg(test)]
fn filter_tile(g: &[f32]) -> [f32; 16] {
    // G g: rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 (each a 3-vector).
    let mut gg = [[0f32; 3]; 4];
    for k in 0..3 {
        let (a, b, c) = (g[k], g[3 + k], g[6 + k]);
        gg[0][k] = a;
        gg[1][k] = 0.5 * (a + b + c);
        gg[2][k] = 0.5 * (a - b + c);
        gg[3][k] = c;
    }
    let mut u = [0f32; 16];
    for (i, [a, b, c]) in gg.into_iter().enumerate() {
        u[4 * i..4 * i + 4].copy_from_slice(&[a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]);
    }
    u
}

/// The convolution of the `images` images of `x` (`[images, c, h, w]`) with the filters
/// `weight` (`[co, c, 3, 3]`), through the epilogue `ep`, written whole to `out`
/// (`[images, co, h, w]`). The filters are transformed once per call; the input is then
/// transformed, multiplied (one GEMM per position) and transformed back band by band: per
/// thread in cache for small filter banks ([`by_local_bands`]), layer-wide otherwise
/// ([`by_layer_bands`]).
///
/// An image's result does not depend on the batch it is in: the GEMM's blocking along the
/// reduction depends only on `c` outside its small-matrix path, which [`pays_off`] keeps
/// out of reach, so every output is summed in the same order whatever the number of columns
/// (`tests::images_do_not_depend_on_their_batch`).
pub(super) fn conv(
    x: &[f32],
    images: usize,
    weight: Stored,
    s: &Shape,
    ep: &Epilogue,
    out: &mut [MaybeUninit<f32>],
) {
    let u = transformed_filters(weight, s);
    if 16 * s.c * s.co <= LOCAL_FILTERS {
        by_local_bands(x, &u, s, ep, out)
    } else {
        by_layer_bands(x, images, &u, s, ep, out)
    }
}

/// Every output channel's filters transformed ([`transform_filters`]) as `[co][16][c]`, with
/// [`PAD`] values after each channel; 16-bit filters are widened one output channel at a time.
fn transformed_filters(weight: Stored, s: &Shape) -> Box<[f32]> {
    // Not zeroed first: the transform writes every value but the padding, written here.
    let mut u = Box::<[f32]>::new_uninit_slice(s.co * block(s.c));
    let filters = 9 * s.c;
    u.par_chunks_mut(block(s.c)).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(scratch, wide), (o, u)| {
            let (u, pad) = u.split_at_mut(16 * s.c);
            for p in pad {
                p.write(0.0);
            }
            match weight {
                Stored::F32(w) => transform_filters(&w[o * filters..][..filters], s.c, u, scratch),
                narrow => {
                    wide.resize(filters, 0.0);
                    narrow.widen_into(o * filters, wide);
                    transform_filters(wide, s.c, u, scratch);
                }
            }
        },
    );
    // SAFETY: every block of `u` is its 16 rows of `c` values, all written by
    // `transform_filters` (the four rows o0..o3 of each of its four passes), then the padding
    // written above: all initialised.
    #[allow(unsafe_code)]
    unsafe {
        u.assume_init()
    }
}

/// [`conv`] for large filter banks `u`: each step runs layer-wide on all threads, over bands
/// of tile rows (of every image) whose transformed input and products stay under [`BUDGET`].
fn by_layer_bands(
    x: &[f32],
    images: usize,
    u: &[f32],
    s: &Shape,
    ep: &Epilogue,
    out: &mut [MaybeUninit<f32>],
) {
    let (th, tw) = s.tiles();
    let plane = s.h * s.w;
    let threads = rayon::current_num_threads().max(1);
    let band_rows = (BUDGET / (16 * (s.c + s.co) * tw * images)).clamp(1, th);
    for ty0 in (0..th).step_by(band_rows) {
        let rows = band_rows.min(th - ty0);
        let nt = rows * tw;
        let band = Band {
            ty0,
            rows,
            nt,
            stride: images * nt,
        };
        let v = transform_input(x, s, &band, true);
        let m = products(u, &v, s.co, s.c, band.stride, threads);
        drop(v);
        let first = 2 * ty0 * s.w;
        out.par_chunks_mut(plane).enumerate().for_each(|(i, dst)| {
            let (image, o) = (i / s.co, i % s.co);
            let residual = ep.residual.map(|r| &r[i * plane + first..(i + 1) * plane]);
            let m = &m[o * block(band.stride)..][..16 * band.stride];
            transform_output(m, s, &band, image, o, ep, residual, &mut dst[first..]);
        });
    }
}

/// One band's rows of each output plane of its image.
type OutRows<'a> = Vec<&'a mut [MaybeUninit<f32>]>;

/// [`conv`] for small filter banks `u` (see [`LOCAL_FILTERS`]): every image's tile rows are cut
/// into bands of about [`LOCAL_BAND`] values, and each band is transformed, multiplied (on one
/// thread) and transformed back by one rayon task into its own rows of every output plane.
/// The bands depend on the image's shape only, so an image's result does not depend on its
/// batch or on the number of threads.
fn by_local_bands(x: &[f32], u: &[f32], s: &Shape, ep: &Epilogue, out: &mut [MaybeUninit<f32>]) {
    let (th, tw) = s.tiles();
    let plane = s.h * s.w;
    let band_rows = (LOCAL_BAND / (16 * (s.c + s.co) * tw)).clamp(1, th);
    // Output rows 2·ty0 .. of a band: `band_rows` tile rows are 2·band_rows pixel rows.
    let span = 2 * band_rows * s.w;
    let bands = th.div_ceil(band_rows);
    // For every image and band, its rows of each of the image's output planes.
    let mut jobs: Vec<(usize, usize, OutRows)> = Vec::new();
    for (image, planes) in out.chunks_mut(s.co * plane).enumerate() {
        let mut rows: Vec<_> = (0..bands).map(|b| (image, b, Vec::new())).collect();
        for dst in planes.chunks_mut(plane) {
            for (job, part) in rows.iter_mut().zip(dst.chunks_mut(span)) {
                job.2.push(part);
            }
        }
        jobs.extend(rows);
    }
    jobs.into_par_iter().for_each(|(image, b, mut dsts)| {
        let ty0 = b * band_rows;
        let rows = band_rows.min(th - ty0);
        let band = Band {
            ty0,
            rows,
            nt: rows * tw,
            stride: rows * tw,
        };
        let x = &x[image * s.c * plane..][..s.c * plane];
        let v = transform_input(x, s, &band, false);
        let m = products(u, &v, s.co, s.c, band.nt, 1);
        drop(v);
        for (o, dst) in dsts.iter_mut().enumerate() {
            let i = image * s.co + o;
            let first = i * plane + 2 * ty0 * s.w;
            let residual = ep.residual.map(|r| &r[first..first + dst.len()]);
            let m = &m[o * block(band.nt)..][..16 * band.nt];
            transform_output(m, s, &band, 0, o, ep, residual, dst);
        }
    });
}

/// The 16 position-wise GEMMs `m[o][ξ] = u[o][ξ] · v[ξ]` for `n` output channels: `u` is
/// `[n][16][c]`, `v` is `[c][16][nt]`, the result `m` is `[n][16][nt]` (`nt` columns: tiles),
/// each with [`PAD`] values after every channel's block. `m` is not zeroed first: the GEMMs
/// write all of it but the padding, which is written here.
fn products(u: &[f32], v: &[f32], n: usize, c: usize, nt: usize, threads: usize) -> Box<[f32]> {
    let mut m = Box::<[f32]>::new_uninit_slice(n * block(nt));
    for xi in 0..16 {
        matmul_uninit(
            MatUninit {
                data: &mut m[xi * nt..],
                rows: n,
                cols: nt,
                stride: block(nt),
            },
            Mat {
                data: &u[xi * c..],
                rows: n,
                cols: c,
                stride: block(c),
            },
            Mat {
                data: &v[xi * nt..],
                rows: c,
                cols: nt,
                stride: block(nt),
            },
            threads,
        );
    }
    for pad in m.chunks_exact_mut(block(nt)) {
        for p in &mut pad[16 * nt..] {
            p.write(0.0);
        }
    }
    // SAFETY: for every channel o, the GEMM of position ξ wrote the `nt` values from
    // o·block(nt) + ξ·nt on, so the 16 positions cover o·block(nt) .. o·block(nt) + 16·nt,
    // and the loop above the padding after it: every element is initialised.
    #[allow(unsafe_code)]
    unsafe {
        m.assume_init()
    }
}

/// Tile rows `ty0..ty0 + rows` (`nt` tiles per image) of every image; the transformed
/// input and the products hold `stride` = images·nt columns per row, image after image.
struct Band {
    ty0: usize,
    rows: usize,
    nt: usize,
    stride: usize,
}

/// `Bᵀ d B` for the 4x4 input patch of every tile of the band, every image, as
/// `[c][16][images·nt]` with [`PAD`] values after each channel; the patch of tile (ty, tx)
/// starts at input (2ty − 1, 2tx − 1), with zeros outside the image. The channels are
/// shared among rayon's threads when `parallel`.
fn transform_input(x: &[f32], s: &Shape, band: &Band, parallel: bool) -> Box<[f32]> {
    // Not zeroed first: every value but the padding is written below, the padding here.
    let mut v = Box::<[f32]>::new_uninit_slice(s.c * block(band.stride));
    for_each_chunk(&mut v, block(band.stride), parallel, |(ci, dst)| {
        transform_channel(x, s, band, ci, dst)
    });
    // SAFETY: for every channel, the loops above wrote rows 4i .. 4i + 3 (i < 4) at columns
    // image·nt + r·tw + tx for every image, tile row r < rows and tile tx < tw, which is every
    // column below stride = images·nt; and the padding after the 16 rows: all initialised.
    #[allow(unsafe_code)]
    unsafe {
        v.assume_init()
    }
}

/// Input channel `ci` of [`transform_input`] into `dst` (its 16 rows and padding).
fn transform_channel(x: &[f32], s: &Shape, band: &Band, ci: usize, dst: &mut [MaybeUninit<f32>]) {
    let (_, tw) = s.tiles();
    let Band {
        ty0,
        rows,
        nt,
        stride,
    } = *band;
    let pw = 2 * tw + 2;
    for p in &mut dst[16 * stride..] {
        p.write(0.0);
    }
    // Rows outside the image read as zeros; so do the columns of `t` outside it (never written).
    let zero = vec![0f32; s.w];
    let mut t = vec![0f32; 4 * pw];
    let (mut even, mut odd) = (vec![0f32; tw + 1], vec![0f32; tw + 1]);
    simd(
        #[inline(always)]
        || {
            for (image, r) in (0..stride / nt).flat_map(|i| (0..rows).map(move |r| (i, r))) {
                let plane = &x[(image * s.c + ci) * s.h * s.w..][..s.h * s.w];
                let ty = ty0 + r;
                // The four input rows 2ty-1 .. 2ty+2, read in place.
                let input_row = |k: usize| match (2 * ty + k).checked_sub(1) {
                    Some(iy) if iy < s.h => &plane[iy * s.w..][..s.w],
                    _ => &zero[..],
                };
                let (p0, p1, p2, p3) = (input_row(0), input_row(1), input_row(2), input_row(3));
                // Bᵀ on the row index, into columns 1..=w of the padded rows of `t`.
                let (t0, rest) = t.split_at_mut(pw);
                let (t1, rest) = rest.split_at_mut(pw);
                let (t2, t3) = rest.split_at_mut(pw);
                let cols = 1..=s.w;
                let (t0, t1) = (&mut t0[cols.clone()], &mut t1[cols.clone()]);
                let (t2, t3) = (&mut t2[cols.clone()], &mut t3[cols]);
                for j in 0..s.w {
                    t0[j] = p0[j] - p2[j];
                    t1[j] = p1[j] + p2[j];
                    t2[j] = p2[j] - p1[j];
                    t3[j] = p1[j] - p3[j];
                }
                // B on the column index: tile tx reads padded columns 2tx .. 2tx + 3, that is
                // even columns tx, tx + 1 and odd columns tx, tx + 1 (split apart first, so
                // that the loop below reads and writes contiguous runs).
                let base = image * nt + r * tw;
                for (i, trow) in t.chunks_exact(pw).enumerate() {
                    let split = even.iter_mut().zip(odd.iter_mut());
                    for ((e, o), pair) in split.zip(trow.chunks_exact(2)) {
                        (*e, *o) = (pair[0], pair[1]);
                    }
                    let (a, c) = (&even[..tw], &even[1..]);
                    let (b, d) = (&odd[..tw], &odd[1..]);
                    let at = |k: usize| (4 * i + k) * stride + base;
                    let rows4 = &mut dst[at(0)..at(3) + tw];
                    let (d0, rest) = rows4.split_at_mut(stride);
                    let (d1, rest) = rest.split_at_mut(stride);
                    let (d2, d3) = rest.split_at_mut(stride);
                    let (d0, d1, d2) = (&mut d0[..tw], &mut d1[..tw], &mut d2[..tw]);
                    for tx in 0..tw {
                        d0[tx].write(a[tx] - c[tx]);
                        d1[tx].write(b[tx] + c[tx]);
                        d2[tx].write(c[tx] - b[tx]);
                        d3[tx].write(b[tx] - d[tx]);
                    }
                }
            }
        },
    );
}

/// `Aᵀ m A` for every tile of the band in `image` (`m` is `[16][images·nt]` for output channel
/// `o`), through the epilogue `ep`, into that channel's output rows `dst` (cropped to the
/// image, every value written); `dst` and `residual` (this channel's part of the epilogue's)
/// start at the band's first row, `2·ty0`.
#[allow(clippy::too_many_arguments)]
fn transform_output(
    m: &[f32],
    s: &Shape,
    band: &Band,
    image: usize,
    o: usize,
    ep: &Epilogue,
    res: Option<&[f32]>,
    dst: &mut [MaybeUninit<f32>],
) {
    let b = ep.bias.map_or(0.0, |b| b[o]);
    let (_, tw) = s.tiles();
    let Band {
        ty0,
        rows,
        nt,
        stride,
    } = *band;
    let mut srow = vec![0f32; 2 * 4 * tw];
    let mut row = vec![0f32; s.w];
    simd(
        #[inline(always)]
        || {
            for r in 0..rows {
                let base = image * nt + r * tw;
                let at = |xi: usize| &m[xi * stride + base..][..tw];
                // Aᵀ on the row index: s0 = m0 + m1 + m2, s1 = m1 − m2 − m3 (rows of 4).
                let (s0, s1) = srow.split_at_mut(4 * tw);
                for j in 0..4 {
                    let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                    let (a, b) = (&mut s0[j * tw..][..tw], &mut s1[j * tw..][..tw]);
                    for tx in 0..tw {
                        a[tx] = m0[tx] + m1[tx] + m2[tx];
                        b[tx] = m1[tx] - m2[tx] - m3[tx];
                    }
                }
                // A on the column index, into output rows 2ty and 2ty + 1.
                for (i, sr) in [&*s0, &*s1].into_iter().enumerate() {
                    if 2 * (ty0 + r) + i >= s.h {
                        continue;
                    }
                    let oy = 2 * r + i;
                    let (c0, c1, c2, c3) = (
                        &sr[..tw],
                        &sr[tw..2 * tw],
                        &sr[2 * tw..3 * tw],
                        &sr[3 * tw..],
                    );
                    let row = &mut row[..];
                    // Whole tiles without a branch (so that the loop vectorises), then an odd
                    // width's last column.
                    let mut pairs = row.chunks_exact_mut(2);
                    for (tx, pair) in (&mut pairs).enumerate() {
                        pair[0] = c0[tx] + c1[tx] + c2[tx] + b;
                        pair[1] = c1[tx] - c2[tx] - c3[tx] + b;
                    }
                    if let [y0] = pairs.into_remainder() {
                        let tx = s.w / 2;
                        *y0 = c0[tx] + c1[tx] + c2[tx] + b;
                    }
                    let out = &mut dst[oy * s.w..][..s.w];
                    match res {
                        Some(res) => {
                            let res = &res[oy * s.w..][..s.w];
                            for ((d, &y), &r) in out.iter_mut().zip(&*row).zip(res) {
                                d.write(ep.finish(y + r));
                            }
                        }
                        None => {
                            for (d, &y) in out.iter_mut().zip(&*row) {
                                d.write(ep.finish(y));
                            }
                        }
                    }
                }
            }
        },
    );
}

#[cfg(test)]
#[path = "winograd_tests.rs"]
mod tests;
