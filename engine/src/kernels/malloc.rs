//! Allocator tuning for glibc: keep freed memory mapped so that fresh output buffers do not
//! page-fault.
//!
//! Every candle op allocates its output. glibc serves large allocations (above 128 KiB by
//! default, adaptively more) with a fresh `mmap` and returns them with `munmap` on free, so
//! every op's output is new memory that the kernel must fault in and zero page by page: about a
//! third of a UNet forward on CPU. [`tune`] tells glibc to serve all sizes from its heap and not
//! to give freed heap memory back below a threshold, so buffers are recycled instead.
//!
//! The cost is that memory freed is kept by the process (up to the trim threshold) rather than
//! returned to the OS, and counts in its RSS; [`release_free`] gives it back at the points
//! where a job's memory peaks (before decoding).
//!
//! The `mallopt` and `malloc_trim` calls are `unsafe` (each block says why it is sound, as in
//! the crate's other `unsafe` places: the GEMM wrapper, the mapped weights' allocator in
//! [`crate::weights::mapping`], the native plugin loader). `mallopt` only changes allocator
//! parameters and is safe to call at any time (glibc serialises it with the allocator's own
//! lock); we call it once, at the start of `main`.

/// Freed heap memory above this much at the top of the heap is returned to the OS.
pub const TRIM_THRESHOLD: usize = 1 << 30;
/// Extra memory requested from the OS whenever the heap grows, to amortise `brk` calls.
pub const TOP_PAD: usize = 64 << 20;

/// Applies the tuning (glibc on Linux only; a no-op elsewhere). Returns whether glibc accepted
/// every setting.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() -> bool {
    let settings = [
        (libc::M_MMAP_MAX, 0),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int),
        (libc::M_TOP_PAD, TOP_PAD as libc::c_int),
    ];
    settings.iter().all(|&(param, value)| {
        // SAFETY: mallopt takes plain integers, touches only the allocator's own parameters
        // under its lock, and reports failure through its return value (0).
        unsafe { libc::mallopt(param, value) == 1 }
    })
}

/// Gives the memory the allocator holds free back to the OS (glibc's `malloc_trim`): pages
/// of free chunks anywhere in the heap, not only at its top. Returns whether any was given back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free() -> bool {
    // SAFETY: malloc_trim only returns free pages of the allocator's own heaps to the OS
    // (under the allocator's lock); memory in use is not touched.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Gives free memory back to the OS (glibc only; a no-op elsewhere).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free() -> bool {
    false
}

/// Applies the tuning (glibc on Linux only; a no-op elsewhere).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::tune());
        // Allocation still works after tuning, and large blocks come from the heap.
        let v = vec![1f32; 1 << 22];
        assert_eq!(v.iter().sum::<f32>(), (1 << 22) as f32);
    }
}
