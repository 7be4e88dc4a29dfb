//! 16-bit weights multiplied by f32 activations: a weight kept in f16 or bf16 in memory (half
//! the memory of f32) is widened to f32 as its layer uses it, block by block
//! ([`super::narrow_gemm`]) or one filter at a time ([`super::winograd`]), so the GEMM and the
//! accumulation stay f32 and the result equals the f32 model's up to the weight's own rounding
//! to 16 bits.
//!
//! The conversion is a branch-free loop compiled for the CPU's widest vectors (picked at run
//! time), split over the rayon threads for large weights.

use candle_core::{bail, CpuStorage, DType, Result, Storage, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::math::simd;
use super::stream::prefetch;

/// Values converted per task when a weight is widened in parallel.
const CHUNK: usize = 1 << 16;

/// How far ahead of its conversion a 16-bit value is prefetched by [`Stored::widen_into`]
/// (2 KiB of f16): one thread widening a weight from memory read it at about 6 GB/s without
/// software prefetches and 9 GB/s with them (256 values ahead: 7 GB/s; 4096 as 1024), on the
/// 2-core AMX Xeon of `amx`'s module doc.
pub(crate) const AHEAD: usize = 1024;

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

impl<'a> Stored<'a> {
    /// Values `start..start + len`. Panics if they are not all there.
    pub fn part(&self, start: usize, len: usize) -> Stored<'a> {
        match *self {
            Stored::F32(s) => Stored::F32(&s[start..][..len]),
            Stored::F16(s) => Stored::F16(&s[start..][..len]),
            Stored::Bf16(s) => Stored::Bf16(&s[start..][..len]),
        }
    }

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
        self.widen_ahead(start, dst, AHEAD)
    }

    /// [`Stored::widen_into`], each value's cache line fetched `ahead` values before it is
    /// read (software prefetches).
    pub fn widen_ahead(&self, start: usize, dst: &mut [f32], ahead: usize) {
        let end = start + dst.len();
        match self {
            Stored::F32(s) => dst.copy_from_slice(&s[start..end]),
            Stored::F16(s) => {
                let src = &s[start..end];
                #[cfg(target_arch = "x86_64")]
                if let Some(v4) = pulp::x86::V4::try_new() {
                    return v4.vectorize(
                        #[inline(always)]
                        || convert_f16_v4(v4, src, dst, ahead),
                    );
                }
                simd(
                    #[inline(always)]
                    || {
                        convert(
                            src,
                            dst,
                            ahead,
                            #[inline(always)]
                            |h| f16_to_f32(h.to_bits()),
                        )
                    },
                )
            }
            Stored::Bf16(s) => simd(
                #[inline(always)]
                || {
                    convert(
                        &s[start..end],
                        dst,
                        ahead,
                        #[inline(always)]
                        |h| f32::from_bits(u32::from(h.to_bits()) << 16),
                    )
                },
            ),
        }
    }

    /// Every value as f32 into `dst` (`dst.len() == self.len()`), in parallel.
    fn widen_all(&self, dst: &mut [f32]) {
        dst.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, d)| self.widen_into(i * CHUNK, d));
    }
}

/// `dst[i] = wide(src[i])` (same lengths), each value's cache line prefetched `ahead` values
/// before it is converted.
#[inline(always)]
fn convert<T: Copy>(src: &[T], dst: &mut [f32], ahead: usize, wide: impl Fn(T) -> f32) {
    for (i, (d, s)) in dst.chunks_mut(32).zip(src.chunks(32)).enumerate() {
        prefetch(src.as_ptr().wrapping_add(i * 32 + ahead));
        for (d, &s) in d.iter_mut().zip(s) {
            *d = wide(s);
        }
    }
}

/// [`convert`] for f16 with AVX-512: 16 values per `vcvtph2ps` (where [`f16_to_f32`] takes a
/// dozen integer operations), the values after the last 16 by [`f16_to_f32`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn convert_f16_v4(v4: pulp::x86::V4, src: &[f16], dst: &mut [f32], ahead: usize) {
    use std::arch::x86_64::__m256i;
    let avx = v4.avx512f;
    let whole = src.len().min(dst.len()) / 16 * 16;
    for (i, (d, s)) in dst[..whole]
        .chunks_exact_mut(16)
        .zip(src[..whole].chunks_exact(16))
        .enumerate()
    {
        if i % 2 == 0 {
            prefetch(src.as_ptr().wrapping_add(i * 16 + ahead));
        }
        // SAFETY: `s` holds 16 f16 values, the 32 bytes read (unaligned).
        #[allow(unsafe_code)]
        let h = unsafe { s.as_ptr().cast::<__m256i>().read_unaligned() };
        let f: [f32; 16] = pulp::bytemuck::cast(avx._mm512_cvtph_ps(h));
        d.copy_from_slice(&f);
    }
    for (d, s) in dst[whole..].iter_mut().zip(&src[whole..]) {
        *d = f16_to_f32(s.to_bits());
    }
}

/// The f16 with bits `h` as f32, exactly (zeros, subnormals, infinities and NaNs included),
/// without branches, so that the loops above vectorise with the CPU's widest registers
/// (`half`'s slice conversion handles 8 values per step with scalar fix-ups).
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    const EXP: u32 = 0x7c00 << 13;
    // 2^-14, the smallest normal f16: subtracted to renormalise a subnormal.
    const SMALLEST_NORMAL: f32 = f32::from_bits(113 << 23);
    let bits = u32::from(h & 0x7fff) << 13;
    let exp = bits & EXP;
    let rebiased = bits + ((127 - 15) << 23);
    let magnitude = if exp == EXP {
        // Infinity or NaN: the largest exponent.
        rebiased + ((128 - 16) << 23)
    } else if exp == 0 {
        (f32::from_bits(rebiased + (1 << 23)) - SMALLEST_NORMAL).to_bits()
    } else {
        rebiased
    };
    f32::from_bits(magnitude | (u32::from(h & 0x8000) << 16))
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
    fn every_f16_widens_like_half() {
        for bits in 0..=u16::MAX {
            let want = f16::from_bits(bits).to_f32();
            let got = f16_to_f32(bits);
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
        // Every f16 again through the slice widening (by `vcvtph2ps` where there is AVX-512).
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut wide = vec![0f32; all.len()];
        Stored::F16(&all).widen_into(0, &mut wide);
        for (&h, w) in all.iter().zip(&wide) {
            let want = f16_to_f32(h.to_bits());
            if want.is_nan() {
                assert!(w.is_nan(), "{:#06x}", h.to_bits());
            } else {
                assert_eq!(w.to_bits(), want.to_bits(), "{:#06x}", h.to_bits());
            }
        }
        let narrow: Vec<bf16> = [1.5f32, -0.0, f32::INFINITY, 3.0e-39, -7.25e20]
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let mut out = [0f32; 5];
        Stored::Bf16(&narrow).widen_into(0, &mut out);
        for (o, n) in out.iter().zip(&narrow) {
            assert_eq!(o.to_bits(), n.to_f32().to_bits());
        }
    }

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
            let got = with_stored(&narrow, |s| {
                let mut out = vec![0f32; s.len()];
                s.widen_all(&mut out);
                out
            })
            .unwrap();
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
