//! 16-bit weights multiplied by f32 activations: a weight kept in f16 or bf16 in memory (half
//! the memory of f32) is widened to f32 just before its layer uses it, into a scratch buffer
//! that is reused from call to call, so the GEMM and the accumulation stay f32 and the result
//! equals the f32 model's up to the weight's own rounding to 16 bits.
//!
//! The conversion uses `half`'s slice conversion (F16C / AVX-512 when the CPU has them, picked
//! at run time), split over the rayon threads for large weights.

use candle_core::{bail, CpuStorage, DType, Result, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;
use std::cell::RefCell;

/// Values converted per task when a weight is widened in parallel.
const CHUNK: usize = 1 << 16;

/// A weight's stored values: f32, or 16-bit to be widened.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stored<'a> {
    /// f32 values, used as they are.
    F32(&'a [f32]),
    /// IEEE half-precision values.
    F16(&'a [f16]),
    /// bfloat16 values.
    Bf16(&'a [bf16]),
}

impl Stored<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Stored::F32(s) => s.len(),
            Stored::F16(s) => s.len(),
            Stored::Bf16(s) => s.len(),
        }
    }

    /// Writes values `start..start + dst.len()` to `dst` as f32.
    pub fn widen_into(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            Stored::F32(s) => dst.copy_from_slice(&s[start..end]),
            Stored::F16(s) => s[start..end].convert_to_f32_slice(dst),
            Stored::Bf16(s) => s[start..end].convert_to_f32_slice(dst),
        }
    }

    /// Every value as f32 into `dst` (`dst.len() == self.len()`), in parallel.
    fn widen_all(&self, dst: &mut [f32]) {
        dst.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, d)| self.widen_into(i * CHUNK, d));
    }
}

/// Whether `t` is a CPU tensor stored in f16 or bf16 (a weight kept 16-bit in memory).
pub(crate) fn is_narrow(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F16 | DType::BF16)
}

/// Runs `f` on the stored values of the CPU tensor `t` (f32, f16 or bf16), row-major; `t`
/// must be contiguous (a view's contiguous storage, e.g. a transposed weight's `.t()`).
pub(crate) fn with_stored<R>(t: &Tensor, f: impl FnOnce(Stored) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!(
            "kernels: a weight of shape {:?} is not contiguous",
            t.dims()
        )
    };
    Ok(match &*storage {
        Storage::Cpu(CpuStorage::F32(d)) => f(Stored::F32(&d[start..end])),
        Storage::Cpu(CpuStorage::F16(d)) => f(Stored::F16(&d[start..end])),
        Storage::Cpu(CpuStorage::BF16(d)) => f(Stored::Bf16(&d[start..end])),
        _ => bail!(
            "kernels: expected a CPU f32, f16 or bf16 weight, got {:?} on {:?}",
            t.dtype(),
            t.device().location()
        ),
    })
}

/// Largest scratch buffer kept for the next call, in f32 values (32 MiB: every linear layer
/// of the SD UNets and CLIP, and their convolutions up to 640 channels). The few larger
/// filter banks (1280-channel 3x3 convolutions on small maps) get a buffer per call, which
/// goes back to the allocator after it, so that it is not held through the VAE's decoding.
const KEPT_SCRATCH: usize = 8 << 20;

thread_local! {
    /// The calling thread's scratch for widened weights (grown to the largest weight used, up
    /// to [`KEPT_SCRATCH`]).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the values of the contiguous CPU tensor `t` as f32: f32 storage as it is,
/// 16-bit storage widened into this thread's reusable scratch buffer.
pub(crate) fn with_widened<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    with_stored(t, |stored| match stored {
        Stored::F32(s) => f(s),
        narrow => {
            // Taken out of the cell for the call, so that a nested call on this thread (rayon
            // may run another task here while `f` waits) gets a buffer of its own.
            let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
            buf.resize(narrow.len(), 0.0);
            narrow.widen_all(&mut buf);
            let r = f(&buf);
            if buf.capacity() <= KEPT_SCRATCH {
                SCRATCH.with(|s| {
                    let mut cell = s.borrow_mut();
                    if cell.capacity() < buf.capacity() {
                        *cell = buf;
                    }
                });
            }
            r
        }
    })
}

/// `t` as an f32 tensor (a copy, widened in parallel); for the rare paths that hand a 16-bit
/// weight to candle's own ops.
pub(crate) fn widened(t: &Tensor) -> Result<Tensor> {
    if !is_narrow(t) {
        return Ok(t.clone());
    }
    let c = t.contiguous()?;
    let data = with_stored(&c, |stored| {
        let mut out = vec![0f32; stored.len()];
        stored.widen_all(&mut out);
        out
    })?;
    Tensor::from_vec(data, c.dims(), c.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn widening_equals_candles_conversion() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (300, 700), &dev).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let narrow = w.to_dtype(dtype).unwrap();
            assert!(is_narrow(&narrow));
            let want: Vec<f32> = narrow
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = with_widened(&narrow, |s| s.to_vec()).unwrap();
            assert_eq!(got, want);
            let got: Vec<f32> = widened(&narrow.t().unwrap())
                .unwrap()
                .t()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want);
        }
        assert!(!is_narrow(&w));
    }
}
