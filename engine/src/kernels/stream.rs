//! Copies that bypass the caches (non-temporal stores), for outputs much larger than the
//! caches that are written once and read later by another pass: a plain store first reads
//! each cache line it writes from memory (read-for-ownership), so writing such an output costs
//! twice its size in memory traffic; a non-temporal store writes whole lines without reading
//! them. Stores of this kind are weakly ordered: the writing thread calls [`fence`] before
//! another thread may read what it wrote.

use std::mem::MaybeUninit;

/// Copies `src` into `dst` (of the same length), by non-temporal stores on x86-64 (16-byte
/// SSE stores, part of the x86-64 baseline) from the first 16-byte aligned element on, by
/// plain stores elsewhere. Panics if the lengths differ.
#[allow(unsafe_code)]
pub(crate) fn copy(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(src.len(), dst.len(), "stream::copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        let len = dst.len();
        let head = dst.as_ptr().align_offset(16).min(len);
        let body = (len - head) / 4 * 4;
        for (d, &s) in dst[..head].iter_mut().zip(src) {
            d.write(s);
        }
        for i in (head..head + body).step_by(4) {
            // SAFETY: `i + 4 <= len` for both slices (same length), `dst`'s element `i` is
            // 16-byte aligned (`head`, then steps of four f32), and SSE is part of every
            // x86-64 CPU.
            unsafe {
                let v = _mm_loadu_ps(src.as_ptr().add(i));
                _mm_stream_ps(dst.as_mut_ptr().add(i).cast::<f32>(), v);
            }
        }
        for (d, &s) in dst[head + body..].iter_mut().zip(&src[head + body..]) {
            d.write(s);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Asks for the cache line holding `p` to be brought into the caches (a hint on x86-64,
/// nothing elsewhere). Any address may be given: a prefetch never faults and is dropped when
/// the address is not mapped.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the caches; it reads nothing the program sees and does
    // not fault on any address. SSE is part of every x86-64 CPU.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`] of every cache line of `values`.
#[inline(always)]
pub(crate) fn prefetch_all(values: &[f32]) {
    for line in values.chunks(16) {
        prefetch(line.as_ptr());
    }
}

/// Orders this thread's earlier non-temporal stores before its later stores (and so before
/// whatever synchronisation hands the data to another thread).
#[allow(unsafe_code)]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and SSE is part of every x86-64 CPU.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_element_at_every_alignment() {
        let src: Vec<f32> = (0..103).map(|i| i as f32 * 0.5 - 7.0).collect();
        for start in 0..5 {
            for len in [0, 1, 3, 4, 5, 17, 64, 98] {
                let mut buf = vec![MaybeUninit::new(f32::NAN); 110];
                copy(&src[..len], &mut buf[start..start + len]);
                fence();
                for (i, v) in buf[start..start + len].iter().enumerate() {
                    // SAFETY: every element was initialised (NaN, then the copy).
                    #[allow(unsafe_code)]
                    let v = unsafe { v.assume_init() };
                    assert_eq!(v, src[i], "start {start}, len {len}, element {i}");
                }
            }
        }
    }
}
