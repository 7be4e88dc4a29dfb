//! The input and output transforms of one band of tile rows ([`super::Band`]), channel by
//! channel and output plane by output plane, over the 1-D transforms of [`super::tiling`]: the
//! input is read as stored, through a group norm + SiLU or as its 2x upsampling
//! ([`super::Source`]); the output goes through the epilogue ([`super::Epilogue`]). Each
//! keeps its row buffers ([`InputRows`], [`OutputRows`]) per thread and call.

use std::mem::MaybeUninit;

use super::super::math::simd;
use super::super::slices::for_each_chunk_init;
use super::super::stream::prefetch_all;
use super::tiling::{input_cols, input_rows, output_cols, output_rows};
use super::{block, Band, Epilogue, Shape, Source, Tiling};

/// `Bᵀ d B` for the n x n input patch of every tile of the band, every image, as
/// `[c][positions][images·nt]` with [`super::PAD`] values after each channel; the patch of tile
/// (ty, tx) starts at input (m·ty − 1, m·tx − 1), with zeros outside the image. The channels
/// are shared among rayon's threads when `parallel`.
pub(super) fn transform_input(x: Source, s: &Shape, band: &Band, parallel: bool) -> Box<[f32]> {
    // Not zeroed first: every value but the padding is written below, the padding here.
    let mut v = Box::<[f32]>::new_uninit_slice(s.c * block(band.t, band.stride));
    let size = block(band.t, band.stride);
    let scratch = || InputRows::new(x, s, band.t);
    for_each_chunk_init(&mut v, size, parallel, scratch, |rows, (ci, dst)| {
        transform_channel(x, s, band, ci, dst, rows)
    });
    // SAFETY: for every channel, `transform_channel` wrote rows n·i .. n·i + n - 1 (i < n)
    // at columns image·nt + r·tw + tx for every image, tile row r < rows and tile tx < tw,
    // which is every column below stride = images·nt; and the padding after the rows: all
    // initialised.
    #[allow(unsafe_code)]
    unsafe {
        v.assume_init()
    }
}

/// The rows [`transform_channel`] works in, made once per thread and call (allocating them per
/// channel and band cost TAESD's 512x512 decode 7% in `calloc` and `free`): zeros for rows
/// outside the image, the input rows as the convolution sees them when `pre` maps them or `up`
/// widens them (with the mapped stored row [`Source::row_into`] needs), the padded rows and
/// the phases of one row. Every value read is written first for each tile row, but the zeros
/// and the padding columns, which are never written.
struct InputRows {
    zero: Vec<f32>,
    seen: Vec<f32>,
    mapped: Vec<f32>,
    padded: Vec<f32>,
    phases: Vec<f32>,
}

impl InputRows {
    fn new(x: Source, s: &Shape, t: Tiling) -> Self {
        let (_, tw) = s.tiles(t);
        let (m, n) = (t.m(), t.n());
        let (_, iw) = x.plane(s);
        Self {
            zero: vec![0f32; s.w],
            seen: vec![0f32; if x.copies_rows() { n * s.w } else { 0 }],
            mapped: vec![0f32; if x.pre.is_some() { iw } else { 0 }],
            padded: vec![0f32; n * (m * tw + 2)],
            phases: vec![0f32; m * (tw + 1)],
        }
    }
}

/// Input channel `ci` of [`transform_input`] into `dst` (its rows and padding).
fn transform_channel(
    x: Source,
    s: &Shape,
    band: &Band,
    ci: usize,
    dst: &mut [MaybeUninit<f32>],
    scratch: &mut InputRows,
) {
    let Band {
        t,
        ty0,
        rows,
        nt,
        stride,
    } = *band;
    let (_, tw) = s.tiles(t);
    let (m, n) = (t.m(), t.n());
    let pw = m * tw + 2;
    for p in &mut dst[t.positions() * stride..] {
        p.write(0.0);
    }
    // Rows outside the image read as zeros; so do the columns of `padded` outside it (never
    // written). The input rows mapped by `pre` or widened by `up` go to rows of their own
    // (`seen`); others are read where they are stored.
    let InputRows {
        zero,
        seen,
        mapped,
        padded,
        phases,
    } = scratch;
    let copied = x.copies_rows();
    simd(
        #[inline(always)]
        || {
            for (image, r) in (0..stride / nt).flat_map(|i| (0..rows).map(move |r| (i, r))) {
                let plane = image * s.c + ci;
                // The n input rows m·ty - 1 .. m·ty + m (`None` outside the image).
                let row = |k: usize| (m * (ty0 + r) + k).checked_sub(1).filter(|&iy| iy < s.h);
                if ci + AHEAD < s.c {
                    prefetch_rows(x, s, plane + AHEAD, (0..n).filter_map(row));
                }
                if copied {
                    for (k, dst) in seen.chunks_exact_mut(s.w).enumerate() {
                        if let Some(iy) = row(k) {
                            x.row_into(s, plane, iy, dst, mapped);
                        }
                    }
                }
                let mut p = [&zero[..]; 6];
                for (k, p) in p[..n].iter_mut().enumerate() {
                    if let Some(iy) = row(k) {
                        *p = match copied {
                            true => &seen[k * s.w..][..s.w],
                            false => x.stored_row(s, plane, iy),
                        };
                    }
                }
                input_rows(t, &p[..n], padded, pw);
                let base = image * nt + r * tw;
                for (i, row) in padded.chunks_exact(pw).enumerate() {
                    let dst = &mut dst[n * i * stride + base..];
                    input_cols(t, row, phases, dst, stride, tw);
                }
            }
        },
    );
}

/// How many channels ahead of its transform an input channel's rows are prefetched
/// ([`prefetch_rows`]): on the 2-core Zen 4, one thread's TAESD 512x512 input transform per
/// layer took 11.0–11.5 ms with 2, 12.8–14.5 ms without prefetches (`band_step_speed`).
const AHEAD: usize = 2;

/// Asks for the stored rows of input plane `p` that the rows `iys` of the convolution's input
/// read ([`AHEAD`] channels on, while this one is transformed): read from memory, the planes of
/// a large map are far apart and each band reads only a few rows of each, too short a run
/// for the hardware's prefetchers.
#[inline(always)]
fn prefetch_rows(x: Source, s: &Shape, p: usize, iys: impl Iterator<Item = usize>) {
    let mut last = usize::MAX;
    for iy in iys {
        let sy = if x.up { iy / 2 } else { iy };
        if sy == last {
            continue;
        }
        last = sy;
        prefetch_all(x.stored_row(s, p, sy));
    }
}

/// `Aᵀ m A` for every tile of the band in `image` (`prod` starts at output channel `o`'s
/// row of the first position's products, laid out as [`super::products`] writes them for
/// `channels` output channels per position), through the epilogue `ep`, into that channel's
/// output rows `dst` (cropped to the image, every value written); `dst` and `residual` (this
/// channel's part of the epilogue's) start at the band's first row, `m·ty0`.
#[allow(clippy::too_many_arguments)]
pub(super) fn transform_output(
    (prod, channels): (&[f32], usize),
    s: &Shape,
    band: &Band,
    (image, o): (usize, usize),
    ep: &Epilogue,
    res: Option<&[f32]>,
    dst: &mut [MaybeUninit<f32>],
    scratch: &mut OutputRows,
) {
    let b = ep.bias.map_or(0.0, |b| b[o]);
    let Band {
        t,
        ty0,
        rows,
        nt,
        stride,
    } = *band;
    let (_, tw) = s.tiles(t);
    let (m, n) = (t.m(), t.n());
    // From one position's row of products to the next position's.
    let position = super::product_block(channels, stride);
    let OutputRows { srows, row } = scratch;
    simd(
        #[inline(always)]
        || {
            for r in 0..rows {
                let base = image * nt + r * tw;
                output_rows(t, &prod[base..], position, tw, srows);
                // A on the column index, into output rows m·ty .. m·ty + m - 1.
                for (i, sr) in srows.chunks_exact(n * tw).enumerate() {
                    if m * (ty0 + r) + i >= s.h {
                        break;
                    }
                    let oy = m * r + i;
                    output_cols(t, sr, tw, b, row);
                    let res = res.map(|res| &res[oy * s.w..][..s.w]);
                    ep.write_row(&mut dst[oy * s.w..][..s.w], row, res);
                }
            }
        },
    );
}

/// The rows [`transform_output`] works in, made once per thread and call (see [`InputRows`]):
/// a tile row's results after `Aᵀ` on the row index, and one output row. Both are written
/// whole before they are read.
pub(super) struct OutputRows {
    srows: Vec<f32>,
    row: Vec<f32>,
}

impl OutputRows {
    pub(super) fn new(s: &Shape, t: Tiling) -> Self {
        let (_, tw) = s.tiles(t);
        Self {
            srows: vec![0f32; t.m() * t.n() * tw],
            row: vec![0f32; s.w],
        }
    }
}
