//! Linear layers with their bias (and a residual) added in the pass that follows the GEMM, and
//! diffusers' GEGLU (`a * gelu(g)` of the two halves of a projection) in one pass. A weight
//! kept in f16/bf16 ([`super::widen`]) is widened to f32 just before its GEMM.

use candle_core::{CpuStorage, Layout, Module, Result, Tensor, D};
use candle_nn::Linear;
use rayon::prelude::*;

use super::gemm::{matmul_tensors, Mat};
use super::math::{gelu, simd};
use super::narrow_gemm::{narrow_rhs_product, BLOCK};
use super::slices::{fast, to_vec, with_f32};
use super::widen::{is_narrow, widened, with_stored};

/// Rows handed to one rayon task by the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// `x · Wᵀ` over the last dim of `x` (any leading dims), without the bias.
fn matmul_t(lin: &Linear, x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    let mut dims = x.dims().to_vec();
    let k = dims.pop().unwrap_or(1);
    let rows = x.elem_count() / k.max(1);
    let w = lin.weight();
    let y = if is_narrow(w) {
        matmul_t_narrow(&x, w, rows, k)?
    } else {
        matmul_tensors(&x.reshape((rows, k))?, &w.t()?)?
    };
    dims.push(w.dim(0)?);
    y.reshape(dims)
}

/// `x · Wᵀ` (`x` contiguous `[rows, k]` values) for a 16-bit weight `w` (`[n, k]`): the
/// weight's storage (`[k, n]` in the GEMM layout the loader gives linear weights) widened and
/// multiplied block by block ([`super::narrow_gemm`]).
fn matmul_t_narrow(x: &Tensor, w: &Tensor, rows: usize, k: usize) -> Result<Tensor> {
    let n = w.dim(0)?;
    let wt = w.t()?;
    if !wt.is_contiguous() {
        return x.reshape((rows, k))?.matmul(&widened(w)?.t()?);
    }
    let threads = rayon::current_num_threads();
    let out = with_f32(x, |xs| {
        with_stored(&wt, |ws| {
            let lhs = Mat {
                data: xs,
                rows,
                cols: k,
                stride: k,
            };
            narrow_rhs_product(lhs, ws, n, BLOCK, threads)
        })
    })??;
    Tensor::from_vec(out, (rows, n), x.device())
}

/// `lin` with its weight in `x`'s dtype, for candle's own forward on the slow paths.
fn plain(lin: &Linear, x: &Tensor) -> Result<Tensor> {
    let w = lin.weight();
    if w.dtype() == x.dtype() {
        return lin.forward(x);
    }
    let w = widened(w)?.to_dtype(x.dtype())?;
    let b = lin.bias().map(|b| b.to_dtype(x.dtype())).transpose()?;
    Linear::new(w, b).forward(x)
}

/// `lin(x) + residual`: the GEMM, then one pass adding the bias and the residual to its
/// output in place (candle adds each in its own pass, into a new tensor each). `residual` must
/// have the output's shape.
pub fn linear(lin: &Linear, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    if !fast(x) {
        let y = plain(lin, x)?;
        return match residual {
            Some(r) => y + r,
            None => Ok(y),
        };
    }
    let y = matmul_t(lin, x)?;
    if lin.bias().is_none() && residual.is_none() {
        return Ok(y);
    }
    let n = y.dim(D::Minus1)?;
    let bias = lin.bias().map(to_vec).transpose()?;
    let bias = bias.as_deref();
    match residual {
        Some(r) => {
            if r.dims() != y.dims() {
                candle_core::bail!(
                    "linear residual {:?} does not match output {:?}",
                    r.dims(),
                    y.dims()
                )
            }
            with_f32(r, |r| {
                y.inplace_op1(&AddRows {
                    n,
                    bias,
                    res: Some(r),
                })
            })??
        }
        None => y.inplace_op1(&AddRows { n, bias, res: None })?,
    }
    Ok(y)
}

/// Adds a bias to every row of `n` values of a product just made, then a residual laid out
/// like it, in place: `y + b + r` in that order, as one expression would.
struct AddRows<'a> {
    n: usize,
    bias: Option<&'a [f32]>,
    res: Option<&'a [f32]>,
}

impl candle_core::InplaceOp1 for AddRows<'_> {
    fn name(&self) -> &'static str {
        "linear-bias-residual"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (CpuStorage::F32(y), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("linear: the product is not a contiguous f32 tensor")
        };
        let y = &mut y[start..end];
        let n = self.n.max(1);
        if self.res.is_some_and(|r| r.len() != y.len()) || y.len() % n != 0 {
            candle_core::bail!("linear: {} output values do not fit rows of {n}", y.len())
        }
        y.par_chunks_mut(n * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(t, y)| {
                let res = self.res.map(|r| &r[t * n * ROWS_PER_TASK..][..y.len()]);
                simd(
                    #[inline(always)]
                    || add_rows(y, self.bias, res, n),
                );
            });
        Ok(())
    }
}

#[inline(always)]
fn add_rows(y: &mut [f32], bias: Option<&[f32]>, res: Option<&[f32]>, n: usize) {
    for (r, y) in y.chunks_mut(n).enumerate() {
        if let Some(b) = bias {
            for (y, &b) in y.iter_mut().zip(b) {
                *y += b;
            }
        }
        if let Some(res) = res {
            for (y, &r) in y.iter_mut().zip(&res[r * n..(r + 1) * n]) {
                *y += r;
            }
        }
    }
}

/// diffusers' `GEGLU`: `proj(x)` split into halves `a, g` on the last dim, returns
/// `a * gelu(g)` with the exact (erf) GELU. The bias add, GELU and product are one pass.
pub fn geglu(proj: &Linear, x: &Tensor) -> Result<Tensor> {
    if !fast(x) {
        let h = plain(proj, x)?;
        let half = h.dim(D::Minus1)? / 2;
        return h.narrow(D::Minus1, 0, half)? * h.narrow(D::Minus1, half, half)?.gelu_erf()?;
    }
    let y = matmul_t(proj, x)?;
    let n2 = y.dim(D::Minus1)?;
    let n = n2 / 2;
    let bias = match proj.bias() {
        Some(b) => to_vec(b)?,
        None => vec![0f32; n2],
    };
    let mut dims = y.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    // Not zeroed first: every value is written below.
    let mut out = Box::<[f32]>::new_uninit_slice(y.elem_count() / 2);
    with_f32(&y, |y| {
        out.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(y.par_chunks(n2 * ROWS_PER_TASK))
            .for_each(|(out, y)| {
                simd(
                    #[inline(always)]
                    || {
                        for (out, y) in out.chunks_mut(n).zip(y.chunks(n2)) {
                            let (a, g) = y.split_at(n);
                            let (ba, bg) = bias.split_at(n);
                            let gates = g.iter().zip(bg);
                            for (((o, &a), &ba), (&g, &bg)) in
                                out.iter_mut().zip(a).zip(ba).zip(gates)
                            {
                                o.write((a + ba) * gelu(g + bg));
                            }
                        }
                    },
                )
            })
    })?;
    // SAFETY: the rows of `out` are the rows of `y` (n values each for 2n), and every value of
    // each was written above.
    #[allow(unsafe_code)]
    let out = unsafe { out.assume_init() };
    Tensor::from_vec(out.into_vec(), dims, x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::max_diff;
    use candle_core::Device;

    fn lin(out: usize, inp: usize, bias: bool) -> Linear {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.3, (out, inp), &dev).unwrap();
        let b = bias.then(|| Tensor::randn(0f32, 1.0, out, &dev).unwrap());
        Linear::new(w, b)
    }

    #[test]
    fn linear_matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 37, 24), &dev).unwrap();
        let res = Tensor::randn(0f32, 1.0, (2, 37, 16), &dev).unwrap();
        for bias in [true, false] {
            let l = lin(16, 24, bias);
            let want = (l.forward(&x).unwrap() + &res).unwrap();
            assert!(max_diff(&linear(&l, &x, Some(&res)).unwrap(), &want) < 1e-5);
            let want = l.forward(&x).unwrap();
            assert!(max_diff(&linear(&l, &x, None).unwrap(), &want) < 1e-5);
        }
    }

    /// `kept`'s linear (with the residual `res`) and GEGLU of `x` equal `want`'s, the same
    /// layer with its weight held another way.
    fn assert_same_layer(kept: &Linear, want: &Linear, x: &Tensor, res: &Tensor, what: &str) {
        let (got, expected) = (linear(kept, x, Some(res)), linear(want, x, Some(res)));
        assert!(
            max_diff(&got.unwrap(), &expected.unwrap()) < 1e-5,
            "linear, {what}"
        );
        let (got, expected) = (geglu(kept, x), geglu(want, x));
        assert!(
            max_diff(&got.unwrap(), &expected.unwrap()) < 1e-5,
            "geglu, {what}"
        );
    }

    #[test]
    fn sixteen_bit_weights_equal_their_widened_copy() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 37, 24), &dev).unwrap();
        let res = Tensor::randn(0f32, 1.0, (2, 37, 80), &dev).unwrap();
        let l = lin(80, 24, true);
        for dtype in [candle_core::DType::F16, candle_core::DType::BF16] {
            let narrow = l.weight().to_dtype(dtype).unwrap();
            let wide = narrow.to_dtype(candle_core::DType::F32).unwrap();
            // The loader's GEMM layout (a transposed view of [in, out] storage), and as stored.
            let layouts = [
                narrow.t().unwrap().contiguous().unwrap().t().unwrap(),
                narrow,
            ];
            let widened = Linear::new(wide, l.bias().cloned());
            for w in layouts {
                let kept = Linear::new(w, l.bias().cloned());
                assert_same_layer(&kept, &widened, &x, &res, &format!("{dtype:?}"));
                let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
                let got = linear(&kept, &x64, None).unwrap();
                assert_eq!(got.dtype(), candle_core::DType::F64);
            }
        }
    }

    #[test]
    fn padded_weights_multiply_like_contiguous_ones() {
        // The loader's layout for f32 weights of 256 outputs: rows of the [in, out] storage
        // padded (`unaliased_stride`), read in place by the GEMM; also through candle (f64 x).
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 9, 24), &dev).unwrap();
        let res = Tensor::randn(0f32, 1.0, (2, 9, 256), &dev).unwrap();
        let l = lin(256, 24, true);
        let padded = crate::kernels::transpose::transposed_storage(l.weight()).unwrap();
        assert!(!padded.t().unwrap().is_contiguous());
        let kept = Linear::new(padded, l.bias().cloned());
        assert_same_layer(&kept, &l, &x, &res, "padded f32");
        let x64 = x.to_dtype(candle_core::DType::F64).unwrap();
        let want = l
            .forward(&x64.to_dtype(candle_core::DType::F32).unwrap())
            .unwrap();
        let got = linear(&kept, &x64, None)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        assert!(max_diff(&got, &want) < 1e-4);
    }

    #[test]
    fn geglu_matches_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 19, 24), &dev).unwrap();
        let l = lin(2 * 40, 24, true);
        let h = l.forward(&x).unwrap();
        let want = (h.narrow(D::Minus1, 0, 40).unwrap()
            * h.narrow(D::Minus1, 40, 40).unwrap().gelu_erf().unwrap())
        .unwrap();
        let got = geglu(&l, &x).unwrap();
        assert_eq!(got.dims(), &[2, 19, 40]);
        assert!(max_diff(&got, &want) < 1e-5);
    }
}
