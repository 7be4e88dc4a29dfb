//! The 3x3 convolutions of [`super::conv`] computed directly, for layers of at most
//! [`MOST_OUTPUTS`] output channels: the networks' last layers (the VAE's 128 channels and
//! TAESD's 64 to 3 RGB channels at the full image size, the UNet's 320 to 4 latent channels).
//! Winograd's input transform costs the same whatever the output channels, and for so few of
//! them it is most of the layer. Measured on the 2-core AMX Xeon (`amx`'s module doc) at
//! 512x512: 64 -> 3 channels 8.3–8.6 ms against 11.6–11.9 ms by F(4x4, 3x3), 128 -> 3 18.0–18.4
//! ms against 30.8–31.4 ms.
//!
//! Each task takes a band of [`BAND_ROWS`] output rows of one image and sums, input channel by
//! input channel, the nine taps of every output channel into rows of sums held in cache: each
//! input row is read once per band as [`super::Source`] maps it (through a group norm + SiLU,
//! or as a 2x upsampling), and each SIMD vector of it feeds the taps of every output channel.
//! The sums run over the input channels, then the taps, in f32, in the same order for every
//! image and band (an image's result does not depend on its batch). The epilogue
//! ([`super::Epilogue`]) is applied as the rows are written out.

use std::mem::MaybeUninit;

use pulp::Simd;
use rayon::prelude::*;

use super::super::widen::Stored;
use super::{band_jobs, Epilogue, Shape, Source};

/// Most output channels for which the direct path is taken. At 512x512 on the Xeon above, by
/// F(4x4, 3x3) a 64-channel input costs about 11 ms plus 0.5 ms per output channel (its input
/// transform, then the products and the output transform), directly about 2.8 ms per output
/// channel: even at five.
pub(in crate::kernels) const MOST_OUTPUTS: usize = 4;

/// Output rows per task: the band's sums (at most 4 x 8 rows) and the padded input rows of one
/// channel stay in L1 and L2 at 512 pixels wide.
const BAND_ROWS: usize = 8;

/// The convolution of the `images` images of `x` with the filters `weight` (`[co, c, 3, 3]`,
/// `co` from 1 to [`MOST_OUTPUTS`]), padding 1, through the epilogue `ep`, written whole to
/// `out` (`[images, co, h, w]`).
pub(in crate::kernels) fn conv(
    x: Source,
    images: usize,
    weight: Stored,
    s: &Shape,
    ep: &Epilogue,
    out: &mut [MaybeUninit<f32>],
) {
    assert!(
        (1..=MOST_OUTPUTS).contains(&s.co),
        "direct 3x3 convolution of {} outputs",
        s.co
    );
    assert_eq!(out.len(), images * s.co * s.h * s.w);
    let mut w = vec![0f32; s.co * s.c * 9];
    weight.widen_into(0, &mut w);
    let jobs = band_jobs(out, s.co, s.h * s.w, BAND_ROWS * s.w);
    jobs.into_par_iter().for_each(|(image, band, mut dsts)| {
        let task = Task {
            x,
            s,
            ep,
            w: &w,
            image,
            y0: band * BAND_ROWS,
            dsts: &mut dsts,
        };
        pulp::Arch::new().dispatch(task)
    });
}

/// One band of output rows `y0..` of one image, every output channel.
struct Task<'a, 'b> {
    x: Source<'a>,
    s: &'a Shape,
    ep: &'a Epilogue<'a>,
    /// The filters, f32, `[co][c][9]`.
    w: &'a [f32],
    image: usize,
    y0: usize,
    /// The band's rows of each output plane.
    dsts: &'b mut [&'a mut [MaybeUninit<f32>]],
}

impl pulp::WithSimd for Task<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Task {
            x,
            s,
            ep,
            w,
            image,
            y0,
            dsts,
        } = self;
        let rows = BAND_ROWS.min(s.h - y0);
        // Rows of sums and padded input rows, a whole number of vectors wide (at least 16
        // lanes, the widest): input column j at index j + 1, zeros left and right of it.
        let wp = s.w.next_multiple_of(16);
        let pw = wp + 2;
        let mut sums = vec![0f32; s.co * rows * wp];
        let mut input = vec![0f32; (rows + 2) * pw];
        let mut mapped = Vec::new();
        for ci in 0..s.c {
            let p = image * s.c + ci;
            for (k, row) in input.chunks_exact_mut(pw).enumerate() {
                match (y0 + k).checked_sub(1).filter(|&iy| iy < s.h) {
                    Some(iy) => x.row_into(s, p, iy, &mut row[1..=s.w], &mut mapped),
                    None => row.fill(0.0),
                }
            }
            let taps = |o: usize| &w[(o * s.c + ci) * 9..][..9];
            match s.co {
                1 => accumulate::<S, 1>(simd, taps, &input, pw, rows, &mut sums, wp),
                2 => accumulate::<S, 2>(simd, taps, &input, pw, rows, &mut sums, wp),
                3 => accumulate::<S, 3>(simd, taps, &input, pw, rows, &mut sums, wp),
                _ => accumulate::<S, MOST_OUTPUTS>(simd, taps, &input, pw, rows, &mut sums, wp),
            }
        }
        for (o, dst) in dsts.iter_mut().enumerate() {
            let bias = ep.bias.map_or(0.0, |b| b[o]);
            let plane = (image * s.co + o) * s.h * s.w;
            for r in 0..rows {
                let y = &mut sums[(o * rows + r) * wp..][..s.w];
                for y in y.iter_mut() {
                    *y += bias;
                }
                let at = plane + (y0 + r) * s.w;
                let res = ep.residual.map(|res| &res[at..][..s.w]);
                ep.write_row(&mut dst[r * s.w..][..s.w], y, res);
            }
        }
        ep.end_task();
    }
}

/// Adds the nine taps of one input channel for the `O` output channels: `sums[o][r][j] +=
/// Σ_{ky,kx} taps(o)[3·ky + kx] · input[r + ky][j + kx]` for the `rows` rows of `wp` sums
/// (`input`'s rows `pw` apart, padded as [`Task`] lays them out).
#[inline(always)]
fn accumulate<'w, S: Simd, const O: usize>(
    simd: S,
    taps: impl Fn(usize) -> &'w [f32],
    input: &[f32],
    pw: usize,
    rows: usize,
    sums: &mut [f32],
    wp: usize,
) {
    let lanes = S::F32_LANES;
    let weights: [[f32; 9]; O] = std::array::from_fn(|o| std::array::from_fn(|k| taps(o)[k]));
    for r in 0..rows {
        let rows_in: [&[f32]; 3] = std::array::from_fn(|ky| &input[(r + ky) * pw..][..pw]);
        // Row r of each output channel's sums.
        let mut picked = sums.chunks_exact_mut(wp).skip(r).step_by(rows);
        let mut outs: [&mut [f32]; O] =
            std::array::from_fn(|_| picked.next().expect("O rows of sums"));
        for j in (0..wp).step_by(lanes) {
            let v: [S::f32s; 9] = std::array::from_fn(|k| {
                let row = rows_in[k / 3];
                S::as_simd_f32s(&row[j + k % 3..][..lanes]).0[0]
            });
            for (out, weights) in outs.iter_mut().zip(&weights) {
                let acc = &mut S::as_mut_simd_f32s(&mut out[j..][..lanes]).0[0];
                let mut a = *acc;
                for k in 0..9 {
                    a = simd.mul_add_f32s(simd.splat_f32s(weights[k]), v[k], a);
                }
                *acc = a;
            }
        }
    }
}
