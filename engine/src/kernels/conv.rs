//! 2-D convolution as one GEMM on the weight's native layout.
//!
//! The OIHW weight `[c_out, c_in, kh, kw]` is already the row-major matrix
//! `[c_out, c_in·kh·kw]`, so it is used as the GEMM's left operand as stored: nothing is
//! repacked per call (candle's conv copies the whole weight on every call). The right operand
//! is the im2col matrix `[c_in·kh·kw, pixels]`, built in parallel (one task per input channel;
//! each row is a shifted copy of an input plane), and the product `[c_out, pixels]` is already
//! NCHW. An image's result does not depend on the batch it is in (batch output is
//! byte-identical to single-image runs): small maps of layers with more than 64 output channels
//! share one GEMM, whose column sums do not depend on the column count there, others are one
//! GEMM per image (`pieces`); large maps are cut into bands of output rows so that the im2col
//! matrix stays under [`COLS_BUDGET`]. The bias, an optional residual and an output scale are
//! applied in the pass that moves the product into place. A weight kept in f16/bf16
//! ([`super::widen`]) is widened block by block as it is multiplied (Winograd transforms its
//! filters from the 16-bit values directly). [`conv2d_normed`] and [`conv2d_upsampled`] read
//! their input through a group norm + SiLU or a 2x nearest upsampling on the Winograd path
//! (and on its direct sibling for layers of at most four output channels, `winograd::direct`).

use candle_core::{Module, Result, Tensor};
use candle_nn::Conv2d;
use rayon::prelude::*;

use super::gemm::{matmul_tensors, Mat};
use super::group_norm::{ChannelAffine, GroupNorm};
use super::math::simd;
use super::narrow_gemm::{narrow_lhs_product, BLOCK};
use super::slices::{fast, to_vec, with_f32, zeros};
use super::widen::{is_narrow, widened, with_stored, Stored};
use super::winograd::{self, direct};

/// Largest im2col matrix, in f32 values (64 MiB).
pub const COLS_BUDGET: usize = 16 << 20;

#[derive(Debug, Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

/// Images `b0..b0 + nb` and output rows `r0..r0 + nr` of each.
#[derive(Debug, Clone, Copy)]
struct Piece {
    b0: usize,
    nb: usize,
    r0: usize,
    nr: usize,
}

impl Piece {
    fn pixels(&self, g: &Geometry) -> usize {
        self.nb * self.nr * g.ow
    }
}

/// `(conv(xs) + residual) / out_scale`, with `conv`'s bias. `xs` is [B, C, H, W]; `residual`
/// has the output's shape. Non-f32 or non-CPU tensors, groups and dilation go through candle.
pub fn conv2d(
    conv: &Conv2d,
    xs: &Tensor,
    residual: Option<&Tensor>,
    out_scale: f64,
) -> Result<Tensor> {
    conv2d_with(conv, xs, residual, out_scale, false, winograd_tiling)
}

/// `relu(conv(xs) + residual)`, as [`conv2d`] then `relu()`; on the Winograd path the ReLU is
/// applied as the output is written (one pass over the activations less).
pub fn conv2d_relu(conv: &Conv2d, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    conv2d_with(conv, xs, residual, 1.0, true, winograd_tiling)
}

/// `conv(upsample_nearest2d(xs, 2h, 2w))`, as diffusers' `Upsample2D` and TAESD's decoder
/// do: on the Winograd path the upsampled input (4x `xs`) is never materialised, its rows are
/// widened as the input transform reads them; other convolutions upsample first.
pub fn conv2d_upsampled(conv: &Conv2d, xs: &Tensor) -> Result<Tensor> {
    let Some((shape, tiling)) = winograd_plan(conv, xs, true)? else {
        let (_, _, h, w) = xs.dims4()?;
        return conv2d(conv, &xs.upsample_nearest2d(2 * h, 2 * w)?, None, 1.0);
    };
    let bias = conv.bias().map(to_vec).transpose()?;
    let ep = Epilogue::new(bias.as_deref(), None, 1.0, false);
    let read = Read {
        up: true,
        pre: None,
    };
    by_winograd(xs, read, conv.weight(), &shape, tiling, &ep)
}

/// `(conv(silu(norm(xs + shift))) + residual) / out_scale`, as [`GroupNorm::forward`] then
/// [`conv2d`] (`shift` [B, C] as there): on the Winograd path the normalised input is never
/// materialised, each value is normalised as the input transform reads it (bit for bit the
/// norm's own values); otherwise the norm is applied first.
pub fn conv2d_normed(
    conv: &Conv2d,
    norm: &GroupNorm,
    xs: &Tensor,
    shift: Option<&Tensor>,
    residual: Option<&Tensor>,
    out_scale: f64,
) -> Result<Tensor> {
    let normed_first = || conv2d(conv, &norm.forward(xs, shift, true)?, residual, out_scale);
    let Some((shape, tiling)) = winograd_plan(conv, xs, false)? else {
        return normed_first();
    };
    let Some(affine) = norm.affine(xs, shift, true)? else {
        return normed_first();
    };
    let residual = checked_residual(residual, [xs.dim(0)?, shape.co, shape.h, shape.w])?;
    let bias = conv.bias().map(to_vec).transpose()?;
    let ep = Epilogue::new(bias.as_deref(), residual.as_ref(), out_scale, false);
    let read = Read {
        up: false,
        pre: Some(&affine),
    };
    by_winograd(xs, read, conv.weight(), &shape, tiling, &ep)
}

/// The output shape and Winograd tiling of `conv` applied to the CPU f32 `[B, C, H, W]` tensor
/// `xs` (read as its 2x upsampling when `up`), `None` where the convolution does not take the
/// Winograd path.
fn winograd_plan(
    conv: &Conv2d,
    xs: &Tensor,
    up: bool,
) -> Result<Option<(winograd::Shape, winograd::Tiling)>> {
    let &[_, c, h, w] = xs.dims() else {
        return Ok(None);
    };
    let f = if up { 2 } else { 1 };
    let shape = winograd::Shape {
        c,
        h: f * h,
        w: f * w,
        co: conv.weight().dim(0)?,
    };
    let tiling = fast(xs).then(|| winograd_tiling(conv, &shape)).flatten();
    Ok(tiling.map(|t| (shape, t)))
}

/// The Winograd tiling `conv` takes for an input of `s.c` channels and an output of `s`'s size:
/// `None` unless it is a 3x3, stride-1, padding-1 convolution without groups or dilation and
/// [`winograd::tiling`] picks one for the shape.
fn winograd_tiling(conv: &Conv2d, s: &winograd::Shape) -> Option<winograd::Tiling> {
    let cfg = conv.config();
    let simple = cfg.groups == 1 && cfg.dilation == 1 && cfg.stride == 1 && cfg.padding == 1;
    let square3 = conv.weight().dims() == [s.co, s.c, 3, 3];
    (simple && square3).then(|| winograd::tiling(s)).flatten()
}

/// How [`conv2d_with`] chooses the Winograd tiling of a convolution of shape `s`.
type Pick = fn(&Conv2d, &winograd::Shape) -> Option<winograd::Tiling>;

/// [`conv2d`], with a ReLU after it when `relu`, by the Winograd tiling `pick` chooses
/// ([`winograd_tiling`]; tests force one), im2col when it chooses none.
fn conv2d_with(
    conv: &Conv2d,
    xs: &Tensor,
    residual: Option<&Tensor>,
    out_scale: f64,
    relu: bool,
    pick: Pick,
) -> Result<Tensor> {
    let after = |y: Tensor| if relu { y.relu() } else { Ok(y) };
    let cfg = conv.config();
    let weight = conv.weight();
    if !fast(xs) || cfg.groups != 1 || cfg.dilation != 1 || xs.rank() != 4 || weight.rank() != 4 {
        return after(plain(conv, xs, residual, out_scale)?);
    }
    let (b, c, h, w) = xs.dims4()?;
    let (co, ci, kh, kw) = weight.dims4()?;
    let (stride, pad) = (cfg.stride, cfg.padding);
    if ci != c || h + 2 * pad < kh || w + 2 * pad < kw || stride == 0 {
        return after(plain(conv, xs, residual, out_scale)?);
    }
    let g = Geometry {
        c,
        h,
        w,
        kh,
        kw,
        stride,
        pad,
        oh: (h + 2 * pad - kh) / stride + 1,
        ow: (w + 2 * pad - kw) / stride + 1,
    };
    let k = c * kh * kw;
    let pixels = g.oh * g.ow;
    let w2 = weight.reshape((co, k))?;
    let bias = conv.bias().map(to_vec).transpose()?;
    let residual = checked_residual(residual, [b, co, g.oh, g.ow])?;
    let wshape = winograd::Shape { c, h, w, co };
    if let Some(tiling) = pick(conv, &wshape) {
        let ep = Epilogue::new(bias.as_deref(), residual.as_ref(), out_scale, relu);
        let read = Read {
            up: false,
            pre: None,
        };
        return by_winograd(xs, read, weight, &wshape, tiling, &ep);
    }
    let identity = kh == 1 && kw == 1 && stride == 1 && pad == 0;

    let pieces = pieces(&g, b, k, co, identity);

    let mut out = zeros(b * co * pixels);
    let mut run = |narrow: Option<Stored>| -> Result<()> {
        for &piece in &pieces {
            let cols = if identity && piece.nb == 1 {
                xs.get(piece.b0)?.reshape((c, pixels))?
            } else {
                let cols = with_f32(xs, |x| im2col(x, &g, piece))?;
                Tensor::from_vec(cols, (k, piece.pixels(&g)), xs.device())?
            };
            let product = match narrow {
                Some(w) => product(w, co, k, &cols)?,
                None => matmul_tensors(&w2, &cols)?,
            };
            drop(cols);
            let mut place = |res: Option<&[f32]>| {
                with_f32(&product, |p| {
                    place_piece(p, &mut out, &g, piece, co, bias.as_deref(), res, out_scale)
                })
            };
            match &residual {
                Some(r) => with_f32(r, |r| place(Some(r)))??,
                None => place(None)?,
            }
        }
        Ok(())
    };
    if is_narrow(weight) {
        with_stored(&weight.contiguous()?, |w| run(Some(w)))??;
    } else {
        run(None)?;
    }
    after(Tensor::from_vec(out, (b, co, g.oh, g.ow), xs.device())?)
}

/// `w · cols` for the 16-bit weight `w` (`[co, k]`), widened and multiplied block by block
/// ([`super::narrow_gemm`]), and the im2col matrix `cols` (`[k, n]`).
fn product(w: Stored, co: usize, k: usize, cols: &Tensor) -> Result<Tensor> {
    let n = cols.dim(1)?;
    let threads = rayon::current_num_threads();
    let out = with_f32(cols, |c| {
        let rhs = Mat {
            data: c,
            rows: k,
            cols: n,
            stride: n,
        };
        narrow_lhs_product(w, co, rhs, BLOCK, threads)
    })?;
    Tensor::from_vec(out, (co, n), cols.device())
}

/// The residual, contiguous, after checking it has the output's shape `want`.
fn checked_residual(residual: Option<&Tensor>, want: [usize; 4]) -> Result<Option<Tensor>> {
    match residual {
        Some(r) => {
            if r.dims() != want {
                candle_core::bail!(
                    "conv residual {:?} does not match output {:?}",
                    r.dims(),
                    want
                )
            }
            Ok(Some(r.contiguous()?))
        }
        None => Ok(None),
    }
}

/// The pieces the output is computed in: per image, bands of output rows whose im2col columns
/// fit [`COLS_BUDGET`] (the whole image for a 1x1 identity convolution, which needs none).
/// Whole images whose columns fit together are one piece, one GEMM, when the layer has more
/// than 64 output channels: at the UNet's 4x4 and 8x8 maps the weight (up to 23040 x 1280) is
/// then read once for all images instead of once per image. The GEMM sums each column in the
/// same order whatever the number of columns outside its small-matrix path (at most 64 rows
/// and 64 columns), which more than 64 rows keep it out of, so an image's result still does
/// not depend on its batch.
fn pieces(g: &Geometry, batch: usize, k: usize, co: usize, identity: bool) -> Vec<Piece> {
    let rows = if identity {
        g.oh
    } else {
        (COLS_BUDGET / (k * g.ow)).clamp(1, g.oh)
    };
    let together = match identity || rows < g.oh || co <= 64 {
        true => 1,
        false => (COLS_BUDGET / (k * g.oh * g.ow)).clamp(1, batch),
    };
    let mut pieces = Vec::new();
    for b0 in (0..batch).step_by(together) {
        for r0 in (0..g.oh).step_by(rows) {
            pieces.push(Piece {
                b0,
                nb: together.min(batch - b0),
                r0,
                nr: rows.min(g.oh - r0),
            });
        }
    }
    pieces
}

/// How [`by_winograd`] reads its input (see [`winograd::Source`]): as its nearest 2x upsampling
/// (`up`), through a norm (`pre`).
#[derive(Debug, Clone, Copy)]
struct Read<'a> {
    up: bool,
    pre: Option<&'a ChannelAffine>,
}

/// What [`by_winograd`] does to each output value: `relu((y + bias + residual) / out_scale)`.
#[derive(Debug, Clone, Copy)]
struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    residual: Option<&'a Tensor>,
    out_scale: f64,
    relu: bool,
}

impl<'a> Epilogue<'a> {
    fn new(
        bias: Option<&'a [f32]>,
        residual: Option<&'a Tensor>,
        out_scale: f64,
        relu: bool,
    ) -> Self {
        Self {
            bias,
            residual,
            out_scale,
            relu,
        }
    }
}

/// The 3x3 convolution by [`winograd`] (or [`direct`]), all images at once, into an output
/// that is not zeroed first (the transform back writes every value).
fn by_winograd(
    xs: &Tensor,
    read: Read,
    weight: &Tensor,
    s: &winograd::Shape,
    tiling: winograd::Tiling,
    ep: &Epilogue,
) -> Result<Tensor> {
    let b = xs.dim(0)?;
    if let Some(pre) = read.pre {
        if pre.planes() != b * s.c {
            candle_core::bail!(
                "conv input norm maps {} planes, want {}",
                pre.planes(),
                b * s.c
            )
        }
    }
    let mut out = Box::<[f32]>::new_uninit_slice(b * s.co * s.h * s.w);
    let wep = winograd::Epilogue {
        bias: ep.bias,
        residual: None,
        scale: ep.out_scale as f32,
        relu: ep.relu,
        stream: out.len() >= winograd::STREAM_OUTPUTS,
    };
    let weight = weight.contiguous()?;
    with_f32(xs, |x| {
        let source = winograd::Source {
            x,
            up: read.up,
            pre: read.pre.map(|affine| winograd::Pre { affine, first: 0 }),
        };
        with_stored(&weight, |w| match ep.residual {
            Some(r) => with_f32(r, |r| {
                let wep = winograd::Epilogue {
                    residual: Some(r),
                    ..wep
                };
                conv3x3(source, b, w, s, tiling, &wep, &mut out)
            }),
            None => {
                conv3x3(source, b, w, s, tiling, &wep, &mut out);
                Ok(())
            }
        })
    })???;
    // SAFETY: `winograd::conv` writes every value of its output (its `transform_output` writes
    // each row of every output plane whole, and the bands cover every row), and so does
    // `direct::conv` (each task writes its band's rows of every output plane whole).
    #[allow(unsafe_code)]
    let out = unsafe { out.assume_init() };
    Tensor::from_vec(out.into_vec(), (b, s.co, s.h, s.w), xs.device())
}

/// The 3x3 convolution of [`by_winograd`]: by Winograd's tiling `t`, or directly for layers of
/// at most [`direct::MOST_OUTPUTS`] output channels, whose Winograd input transform would cost
/// more than the products.
fn conv3x3(
    x: winograd::Source,
    images: usize,
    w: Stored,
    s: &winograd::Shape,
    t: winograd::Tiling,
    ep: &winograd::Epilogue,
    out: &mut [std::mem::MaybeUninit<f32>],
) {
    if (1..=direct::MOST_OUTPUTS).contains(&s.co) {
        direct::conv(x, images, w, s, ep, out)
    } else {
        winograd::conv(x, images, w, s, t, ep, out)
    }
}

fn plain(conv: &Conv2d, xs: &Tensor, residual: Option<&Tensor>, out_scale: f64) -> Result<Tensor> {
    let mut y = if conv.weight().dtype() == xs.dtype() {
        conv.forward(xs)?
    } else {
        let w = widened(conv.weight())?.to_dtype(xs.dtype())?;
        let b = conv.bias().map(|b| b.to_dtype(xs.dtype())).transpose()?;
        Conv2d::new(w, b, *conv.config()).forward(xs)?
    };
    if let Some(r) = residual {
        y = (y + r)?;
    }
    if out_scale != 1.0 {
        y = (y / out_scale)?;
    }
    Ok(y)
}

/// The im2col matrix of `piece`: row `ci·kh·kw + ky·kw + kx`, column
/// `(image, output row, output column)`; zeros where the kernel reads padding.
fn im2col(x: &[f32], g: &Geometry, piece: Piece) -> Vec<f32> {
    let pn = piece.pixels(g);
    let taps = g.kh * g.kw;
    let mut cols = zeros(g.c * taps * pn);
    cols.par_chunks_mut(taps * pn)
        .enumerate()
        .for_each(|(ci, block)| {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let row = &mut block[(ky * g.kw + kx) * pn..][..pn];
                    for bl in 0..piece.nb {
                        let plane = &x[((piece.b0 + bl) * g.c + ci) * g.h * g.w..][..g.h * g.w];
                        for r in 0..piece.nr {
                            let iy = (piece.r0 + r) * g.stride + ky;
                            if iy < g.pad || iy - g.pad >= g.h {
                                continue;
                            }
                            let src = &plane[(iy - g.pad) * g.w..][..g.w];
                            let dst = &mut row[(bl * piece.nr + r) * g.ow..][..g.ow];
                            copy_row(src, dst, g, kx);
                        }
                    }
                }
            }
        });
    cols
}

/// Output column `ox` reads input column `ox·stride + kx - pad`.
#[inline]
fn copy_row(src: &[f32], dst: &mut [f32], g: &Geometry, kx: usize) {
    if g.stride == 1 {
        let ox0 = g.pad.saturating_sub(kx);
        let ox1 = g.ow.min((g.w + g.pad).saturating_sub(kx));
        if ox0 < ox1 {
            let s0 = ox0 + kx - g.pad;
            dst[ox0..ox1].copy_from_slice(&src[s0..s0 + (ox1 - ox0)]);
        }
    } else {
        for (ox, d) in dst.iter_mut().enumerate() {
            let ix = ox * g.stride + kx;
            if ix >= g.pad && ix - g.pad < g.w {
                *d = src[ix - g.pad];
            }
        }
    }
}

/// Moves the GEMM product `[co, piece pixels]` into the NCHW output, adding the bias and the
/// residual and dividing by `scale` on the way.
#[allow(clippy::too_many_arguments)]
fn place_piece(
    product: &[f32],
    out: &mut [f32],
    g: &Geometry,
    piece: Piece,
    co: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    scale: f64,
) {
    let pixels = g.oh * g.ow;
    let pn = piece.pixels(g);
    let span = piece.nr * g.ow;
    let first = piece.r0 * g.ow;
    let lo = piece.b0 * co;
    let hi = (piece.b0 + piece.nb) * co;
    out[lo * pixels..hi * pixels]
        .par_chunks_mut(pixels)
        .enumerate()
        .for_each(|(i, plane)| {
            let (bl, o) = (i / co, i % co);
            let src = &product[o * pn + bl * span..][..span];
            let dst = &mut plane[first..first + span];
            let at = (lo + i) * pixels + first;
            let res = residual.map(|r| &r[at..at + span]);
            let b = bias.map_or(0.0, |b| b[o]);
            simd(
                #[inline(always)]
                || {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = s + b;
                    }
                    if let Some(res) = res {
                        for (d, &r) in dst.iter_mut().zip(res) {
                            *d += r;
                        }
                    }
                    if scale != 1.0 {
                        let s = scale as f32;
                        for d in dst.iter_mut() {
                            *d /= s;
                        }
                    }
                },
            );
        });
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
