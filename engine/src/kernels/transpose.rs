//! The transposed copy of a weight matrix, for the layout the GEMM streams fastest
//! ([`crate::weights::gemm_layout`]): candle's strided copy walks a transposed matrix element
//! by element and was a third of the time to load a model; this one copies 32x32 blocks (both
//! sides stay in cache) on every core.
//!
//! Rows of f32 storage a multiple of 1 KiB long are padded ([`unaliased_stride`]): the GEMM
//! reads the weight in place (it does not repack it when the activations have few rows).

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor, WithDType};
use rayon::prelude::*;

use super::gemm::unaliased_stride;
use super::slices::with_f32;

/// Side of the square blocks copied at once.
const BLOCK: usize = 32;

/// `t` (`[rows, cols]`) with the same shape and values, stored as the transposed view of
/// row-major `[cols, rows]` memory: what `t.t()?.contiguous()?.t()` gives, but for f32 with
/// rows of the storage padded ([`unaliased_stride`]) when they are a multiple of 1 KiB long.
/// Contiguous CPU matrices of f32, f16 and bf16 take the blocked copy; anything else goes
/// through candle.
pub fn transposed_storage(t: &Tensor) -> Result<Tensor> {
    let plain = || t.t()?.contiguous()?.t();
    if t.rank() != 2 || !t.device().is_cpu() || t.elem_count() == 0 {
        return plain();
    }
    let (rows, cols) = t.dims2()?;
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        drop(storage);
        return plain();
    };
    let out = match &*storage {
        Storage::Cpu(CpuStorage::F32(d)) => {
            transposed(&d[start..end], rows, cols, unaliased_stride(rows))?
        }
        Storage::Cpu(CpuStorage::F16(d)) => transposed(&d[start..end], rows, cols, rows)?,
        Storage::Cpu(CpuStorage::BF16(d)) => transposed(&d[start..end], rows, cols, rows)?,
        _ => {
            drop(storage);
            return plain();
        }
    };
    out.t()
}

/// The `[cols, rows]` tensor of `src` (`[rows, cols]`, row-major) transposed, its rows
/// `stride` values apart in memory (`stride >= rows`; the values after each row are zero).
fn transposed<T: WithDType>(src: &[T], rows: usize, cols: usize, stride: usize) -> Result<Tensor> {
    let mut dst = vec![T::zero(); stride * cols];
    transpose_into(src, rows, cols, &mut dst, stride);
    Tensor::from_vec(dst, (cols, stride), &Device::Cpu)?.narrow(1, 0, rows)
}

/// `dst[c * stride + r] = src[r * cols + c]` for the `[rows, cols]` row-major `src`, by
/// [`BLOCK`]-square blocks on every core (`dst` holds `cols` rows of `stride >= rows`).
fn transpose_into<T: Copy + Send + Sync>(
    src: &[T],
    rows: usize,
    cols: usize,
    dst: &mut [T],
    stride: usize,
) {
    dst[..stride * cols]
        .par_chunks_mut(BLOCK * stride)
        .enumerate()
        .for_each(|(block, out)| {
            let c0 = block * BLOCK;
            let n = out.len() / stride;
            for r0 in (0..rows).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(rows);
                for c in 0..n {
                    let line = &mut out[c * stride + r0..c * stride + r1];
                    for (i, o) in line.iter_mut().enumerate() {
                        *o = src[(r0 + i) * cols + c0 + c];
                    }
                }
            }
        });
}

/// `t.transpose(1, 2)?.contiguous()` for a `[B, R, C]` tensor: each item's matrix copied by
/// blocks on every core when `t` is a contiguous CPU f32 tensor (candle's strided copy goes
/// element by element: NCHW maps to tokens and back in the UNet's transformers took 1% of a
/// 512x512 forward), through candle otherwise.
pub fn swap_last_two(t: &Tensor) -> Result<Tensor> {
    let (b, rows, cols) = t.dims3()?;
    if !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous() {
        return t.transpose(1, 2)?.contiguous();
    }
    let per_item = rows * cols;
    let mut dst = super::slices::zeros(b * per_item);
    with_f32(t, |src| {
        for (src, dst) in src
            .chunks_exact(per_item.max(1))
            .zip(dst.chunks_exact_mut(per_item.max(1)))
        {
            transpose_into(src, rows, cols, dst, rows);
        }
    })?;
    Tensor::from_vec(dst, (b, cols, rows), t.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn check(rows: usize, cols: usize, dtype: DType) {
        let t = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let fast = transposed_storage(&t).unwrap();
        assert_eq!(fast.dims(), &[rows, cols]);
        // Stored as [cols, rows] with unit column stride, like candle's transposed copy; f32
        // rows a multiple of 1 KiB long are padded.
        let stride = fast.t().unwrap().stride().to_vec();
        let want = match dtype {
            DType::F32 => unaliased_stride(rows),
            _ => rows,
        };
        assert_eq!(stride, [want, 1], "{rows}x{cols} {dtype:?}");
        let diff = (fast.to_dtype(DType::F32).unwrap() - t.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{rows}x{cols} {dtype:?}");
    }

    #[test]
    fn equals_candles_transposed_copy_at_odd_sizes() {
        for (rows, cols) in [
            (1, 1),
            (3, 70),
            (70, 3),
            (33, 65),
            (64, 32),
            (100, 1),
            (256, 35),
        ] {
            check(rows, cols, DType::F32);
        }
        check(512, 3, DType::F16);
        check(37, 45, DType::F16);
        check(45, 37, DType::BF16);
    }

    #[test]
    fn swapping_the_last_two_dimensions_equals_candles_copy() {
        let dev = Device::Cpu;
        for (b, r, c) in [(1, 1, 1), (2, 33, 65), (3, 64, 7), (1, 0, 4)] {
            let t = Tensor::randn(0f32, 1.0, (b, r, c), &dev).unwrap();
            let want = t.transpose(1, 2).unwrap().contiguous().unwrap();
            let got = swap_last_two(&t).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert!(got.is_contiguous());
            let (got, want) = (got.flatten_all().unwrap(), want.flatten_all().unwrap());
            assert_eq!(
                got.to_vec1::<f32>().unwrap(),
                want.to_vec1::<f32>().unwrap()
            );
        }
        // A strided view goes through candle, with the same result.
        let t = Tensor::randn(0f32, 1.0, (2, 5, 6), &dev).unwrap();
        let view = t.transpose(1, 2).unwrap();
        let got = swap_last_two(&view).unwrap().flatten_all().unwrap();
        let want = view
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_eq!(
            got.to_vec1::<f32>().unwrap(),
            want.to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn other_layouts_and_dtypes_go_through_candle() {
        let t = Tensor::arange(0u32, 12, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let out = transposed_storage(&t).unwrap();
        assert_eq!(out.to_vec2::<u32>().unwrap(), t.to_vec2::<u32>().unwrap());
        let view = t.t().unwrap();
        let out = transposed_storage(&view).unwrap();
        assert_eq!(
            out.to_vec2::<u32>().unwrap(),
            view.to_vec2::<u32>().unwrap()
        );
    }
}
