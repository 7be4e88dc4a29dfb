//! 2-D convolution as one GEMM on the weight's native layout.
//!
//! The OIHW weight `[c_out, c_in, kh, kw]` is already the row-major matrix
//! `[c_out, c_in·kh·kw]`, so it is used as the GEMM's left operand as stored: nothing is
//! repacked per call (candle's conv copies the whole weight on every call). The right operand
//! is the im2col matrix `[c_in·kh·kw, pixels]`, built in parallel (one task per input channel;
//! each row is a shifted copy of an input plane), and the product `[c_out, pixels]` is already
//! NCHW. Each image is its own GEMM (so an image's result does not depend on the batch it is in,
//! which keeps batch output byte-identical to single-image runs); large maps are cut into bands
//! of output rows so that the im2col matrix stays under [`COLS_BUDGET`]. The bias, an optional residual and an output scale are applied in the pass
//! that moves the product into place. A weight kept in f16/bf16 ([`super::widen`]) is widened
//! once per call into a reused f32 buffer (Winograd transforms its filters from the 16-bit
//! values directly).

use candle_core::{Module, Result, Tensor};
use candle_nn::Conv2d;
use rayon::prelude::*;

use super::gemm::{matmul_tensors, Mat, MatMut};
use super::math::simd;
use super::narrow_gemm::{matmul_narrow_lhs, BLOCK};
use super::slices::{fast, to_vec, with_f32, zeros};
use super::widen::{is_narrow, widened, with_stored, Stored};
use super::winograd;

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
    conv2d_with(conv, xs, residual, out_scale, false)
}

/// `relu(conv(xs) + residual)`, as [`conv2d`] then `relu()`; on the Winograd path the ReLU is
/// applied as the output is written (one pass over the activations less).
pub fn conv2d_relu(conv: &Conv2d, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    conv2d_with(conv, xs, residual, 1.0, true)
}

/// `conv(upsample_nearest2d(xs, 2h, 2w))`, as diffusers' `Upsample2D` and TAESD's decoder
/// do: on the Winograd path the upsampled input (4x `xs`) is never materialised, its rows are
/// widened as the input transform reads them; other convolutions upsample first.
pub fn conv2d_upsampled(conv: &Conv2d, xs: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = xs.dims4()?;
    let weight = conv.weight();
    let shape = winograd::Shape {
        c,
        h: 2 * h,
        w: 2 * w,
        co: weight.dim(0)?,
    };
    let tiling = fast(xs).then(|| winograd_tiling(conv, &shape)).flatten();
    let Some(tiling) = tiling else {
        return conv2d(conv, &xs.upsample_nearest2d(2 * h, 2 * w)?, None, 1.0);
    };
    let bias = conv.bias().map(to_vec).transpose()?;
    by_winograd(
        xs,
        weight,
        &shape,
        tiling,
        true,
        bias.as_deref(),
        None,
        1.0,
        false,
    )
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

fn conv2d_with(
    conv: &Conv2d,
    xs: &Tensor,
    residual: Option<&Tensor>,
    out_scale: f64,
    relu: bool,
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
    if let Some(tiling) = winograd_tiling(conv, &wshape) {
        return by_winograd(
            xs,
            weight,
            &wshape,
            tiling,
            false,
            bias.as_deref(),
            residual.as_ref(),
            out_scale,
            relu,
        );
    }
    let identity = kh == 1 && kw == 1 && stride == 1 && pad == 0;

    let pieces = pieces(&g, b, k, identity);

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
    let mut out = zeros(co * n);
    let threads = rayon::current_num_threads();
    with_f32(cols, |c| {
        let rhs = Mat {
            data: c,
            rows: k,
            cols: n,
            stride: n,
        };
        let dst = MatMut {
            data: &mut out,
            rows: co,
            cols: n,
            stride: n,
        };
        matmul_narrow_lhs(dst, w, co, rhs, BLOCK, threads)
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
fn pieces(g: &Geometry, batch: usize, k: usize, identity: bool) -> Vec<Piece> {
    let rows = if identity {
        g.oh
    } else {
        (COLS_BUDGET / (k * g.ow)).clamp(1, g.oh)
    };
    let mut pieces = Vec::new();
    for b0 in 0..batch {
        for r0 in (0..g.oh).step_by(rows) {
            pieces.push(Piece {
                b0,
                nb: 1,
                r0,
                nr: rows.min(g.oh - r0),
            });
        }
    }
    pieces
}

/// The 3x3 convolution by [`winograd`], all images at once, into an output that is not zeroed
/// first (the transform back writes every value).
#[allow(clippy::too_many_arguments)]
fn by_winograd(
    xs: &Tensor,
    weight: &Tensor,
    s: &winograd::Shape,
    tiling: winograd::Tiling,
    up: bool,
    bias: Option<&[f32]>,
    residual: Option<&Tensor>,
    out_scale: f64,
    relu: bool,
) -> Result<Tensor> {
    let b = xs.dim(0)?;
    let mut out = Box::<[f32]>::new_uninit_slice(b * s.co * s.h * s.w);
    let ep = winograd::Epilogue {
        bias,
        residual: None,
        scale: out_scale as f32,
        relu,
    };
    let weight = weight.contiguous()?;
    with_f32(xs, |x| {
        with_stored(&weight, |w| match residual {
            Some(r) => with_f32(r, |r| {
                let ep = winograd::Epilogue {
                    residual: Some(r),
                    ..ep
                };
                winograd::conv(winograd::Source { x, up }, b, w, s, tiling, &ep, &mut out)
            }),
            None => {
                winograd::conv(winograd::Source { x, up }, b, w, s, tiling, &ep, &mut out);
                Ok(())
            }
        })
    })???;
    // SAFETY: `winograd::conv` writes every value of its output (its `transform_output` writes
    // each row of every output plane whole, and the bands cover every row).
    #[allow(unsafe_code)]
    let out = unsafe { out.assume_init() };
    Tensor::from_vec(out.into_vec(), (b, s.co, s.h, s.w), xs.device())
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
mod tests {
    use super::*;
    use crate::kernels::test_util::{max_abs, max_diff};
    use candle_core::Device;
    use candle_nn::Conv2dConfig;

    fn check(
        b: usize,
        c: usize,
        co: usize,
        hw: (usize, usize),
        k: usize,
        stride: usize,
        pad: usize,
    ) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (co, c, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, co, &dev).unwrap();
        let cfg = Conv2dConfig {
            padding: pad,
            stride,
            ..Default::default()
        };
        let conv = Conv2d::new(w, Some(bias), cfg);
        let xs = Tensor::randn(0f32, 1.0, (b, c, hw.0, hw.1), &dev).unwrap();
        let want = conv.forward(&xs).unwrap();
        let res = Tensor::randn(0f32, 1.0, want.dims(), &dev).unwrap();
        let got = conv2d(&conv, &xs, None, 1.0).unwrap();
        assert_eq!(got.dims(), want.dims());
        // Relative to the largest output: F(4x4, 3x3) rounds to about 1e-5 of it.
        let tol = 4e-5 * max_abs(&want).max(1.0);
        let diff = max_diff(&got, &want);
        assert!(
            diff < tol,
            "{b} {c} {co} {hw:?} k{k} s{stride} p{pad}: {diff} >= {tol}"
        );
        let want = ((want + &res).unwrap() / 2.0).unwrap();
        let got = conv2d(&conv, &xs, Some(&res), 2.0).unwrap();
        assert!(max_diff(&got, &want) < tol);
    }

    #[test]
    fn matches_candle_conv() {
        check(2, 5, 7, (6, 9), 3, 1, 1);
        check(1, 5, 7, (6, 9), 3, 1, 1);
        check(2, 3, 4, (40, 36), 3, 1, 1); // per image
        check(2, 6, 8, (9, 8), 3, 2, 1); // stride 2
        check(1, 6, 8, (9, 8), 3, 2, 0);
        check(2, 6, 8, (9, 8), 1, 1, 0); // 1x1
        check(2, 6, 8, (40, 33), 1, 1, 0); // 1x1 on the input as is
    }

    #[test]
    fn images_do_not_depend_on_their_batch() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (64, 320, 3, 3), &dev).unwrap();
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv = Conv2d::new(w, None, cfg);
        let xs = Tensor::randn(0f32, 1.0, (3, 320, 8, 8), &dev).unwrap();
        let all = conv2d(&conv, &xs, None, 1.0).unwrap();
        let one = conv2d(&conv, &xs.narrow(0, 1, 1).unwrap(), None, 1.0).unwrap();
        let diff = (all.narrow(0, 1, 1).unwrap() - one).unwrap().abs().unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn sixteen_bit_filters_equal_their_widened_copy() {
        // im2col (small map, stride 2, 1x1) and Winograd (a 16x16 map of 96 channels).
        let dev = Device::Cpu;
        for (c, co, hw, k, stride, pad) in [
            (5, 7, 6, 3, 1, 1),
            (6, 8, 9, 3, 2, 1),
            (6, 8, 9, 1, 1, 0),
            (32, 96, 16, 3, 1, 1),
        ] {
            let w = Tensor::randn(0f32, 0.2, (co, c, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1.0, co, &dev).unwrap();
            let cfg = Conv2dConfig {
                padding: pad,
                stride,
                ..Default::default()
            };
            let xs = Tensor::randn(0f32, 1.0, (2, c, hw, hw), &dev).unwrap();
            for dtype in [candle_core::DType::F16, candle_core::DType::BF16] {
                let narrow = w.to_dtype(dtype).unwrap();
                let wide = narrow.to_dtype(candle_core::DType::F32).unwrap();
                let kept = Conv2d::new(narrow, Some(bias.clone()), cfg);
                let widened = Conv2d::new(wide, Some(bias.clone()), cfg);
                let want = conv2d(&widened, &xs, None, 1.0).unwrap();
                let res = Tensor::randn(0f32, 1.0, want.dims(), &dev).unwrap();
                let got = conv2d(&kept, &xs, None, 1.0).unwrap();
                assert!(max_diff(&got, &want) < 1e-5, "{c}->{co} k{k} {dtype:?}");
                let want = conv2d(&widened, &xs, Some(&res), 2.0).unwrap();
                let got = conv2d(&kept, &xs, Some(&res), 2.0).unwrap();
                assert!(max_diff(&got, &want) < 1e-5, "{c}->{co} k{k} {dtype:?}");
                // Activations that are not f32 take candle's path with the weight widened.
                let xs16 = xs.to_dtype(candle_core::DType::F64).unwrap();
                let got = conv2d(&kept, &xs16, None, 1.0).unwrap();
                assert_eq!(got.dtype(), candle_core::DType::F64);
            }
        }
    }

    #[test]
    fn bands_cover_large_maps() {
        // More than COLS_BUDGET values of im2col: the map is cut into bands of rows.
        check(1, 64, 4, (300, 100), 3, 1, 1);
    }
}
