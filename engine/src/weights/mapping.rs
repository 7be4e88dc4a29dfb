//! Weights used in place from the page cache.
//!
//! A weights file is mapped once, privately (`MAP_PRIVATE`: a write to a tensor copies its
//! page and never reaches the file). A tensor stored in the dtype the model wants becomes a
//! candle tensor over the mapped bytes themselves: no copy, and no fresh memory for the kernel
//! to fault in and zero. Zeroing fresh pages was three quarters of a cold load (`perf`:
//! `clear_page_erms`), so this is what makes a cold start cost about what the copies that are
//! left (transposed matrices, dtype conversions) cost.
//!
//! Candle's CPU storage is a `Vec`, and a `Vec` frees through the global allocator. So
//! [`Allocator`], the `beeswax` binary's global allocator (a library cannot impose one on the
//! programs that link it), counts its mappings among its allocations: it
//! forwards every call to the system allocator, except for memory inside a live mapping. A
//! vector over mapped bytes holds one reference to its mapping (so does the [`Mapping`] value
//! itself), and the file is unmapped when the last one is freed. A vector that grows is moved
//! to the system allocator like any reallocation.
//!
//! Where the allocator is not the global one (a program that links this crate with its own),
//! or a tensor's bytes are not aligned for its dtype, [`Mapping::tensor`] returns `None` and
//! the caller copies. Truncating a weights file while a process maps it makes that process
//! fail (`SIGBUS`), as with every engine that maps weights: replace model files by renaming a
//! new file over the old one, never by writing into it.
//!
//! This module is one of the crate's `unsafe` places: `mmap`/`munmap`/`madvise`, the global
//! allocator, and `Vec::from_raw_parts` over mapped memory.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor, WithDType};

/// How many mappings may be live at once; past that, files are read by copying.
const SLOTS: usize = 64;

/// One live mapping's address range and reference count, read lock-free by the allocator.
/// `seq` is odd while the range is being written (a sequence lock).
struct Slot {
    seq: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    refs: AtomicUsize,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            seq: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            refs: AtomicUsize::new(0),
        }
    }

    /// The slot's range, read consistently; `(0, 0)` when free.
    fn range(&self) -> (usize, usize) {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let start = self.start.load(Ordering::Relaxed);
            let end = self.end.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return (start, end);
            }
        }
    }

    /// Writes the range (the caller owns the slot: it claimed it, or dropped its last
    /// reference).
    fn set_range(&self, start: usize, end: usize) {
        self.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release);
    }
}

static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// Every mapping ever made lies in `[LOW, HIGH)`: most frees are told apart by two loads.
static LOW: AtomicUsize = AtomicUsize::new(usize::MAX);
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Set by the first allocation through [`Allocator`]: whether it is the global allocator.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Slots taken (claimed for a mapping being made, or holding a live one).
static CLAIMED: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
/// One past the highest slot ever claimed: frees scan only the slots below. A mapping takes
/// the lowest free slot, so this stays at the most files mapped at once (a few per model).
static USED: AtomicUsize = AtomicUsize::new(0);

/// The index of the slot whose live mapping holds address `p`. Memory the system allocator
/// gave out is never inside a live mapping, so it finds none.
fn slot_of(p: usize) -> Option<usize> {
    if p < LOW.load(Ordering::Relaxed) || p >= HIGH.load(Ordering::Relaxed) {
        return None;
    }
    TABLE[..USED.load(Ordering::Acquire)]
        .iter()
        .position(|slot| {
            let (start, end) = slot.range();
            start <= p && p < end
        })
}

/// Drops one reference to the mapping holding `p`; unmaps it with the last. Returns whether
/// `p` was mapped memory.
fn release(p: usize) -> bool {
    let Some(index) = slot_of(p) else {
        return false;
    };
    let slot = &TABLE[index];
    if slot.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
        let (start, end) = slot.range();
        slot.set_range(0, 0);
        CLAIMED[index].store(false, Ordering::Release);
        // SAFETY: [start, end) is a mapping this module made and no reference to it is left.
        unsafe { libc::munmap(start as *mut libc::c_void, end - start) };
    }
    true
}

/// The global allocator: the system allocator, with mapped weights counted as allocations
/// (see the module documentation).
pub struct Allocator;

// SAFETY: every call forwards to `System` except those on memory inside a live mapping, which
// this module made and counts; such memory is never handed to `System`.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !release(ptr as usize) {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if slot_of(ptr as usize).is_none() {
            return System.realloc(ptr, layout, new_size);
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = System.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            release(ptr as usize);
        }
        new
    }
}

/// A file mapped privately; holds one reference to its mapping.
#[derive(Debug)]
pub struct Mapping {
    start: usize,
    len: usize,
}

/// The system's page size (4 KiB on x86-64; 16 or 64 KiB on some ARM systems).
fn page_size() -> usize {
    // SAFETY: sysconf only reads a system parameter.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(1)
}

impl Mapping {
    /// Maps the first `len` bytes of `file`. `None` when the allocator is not the global one,
    /// every slot is taken, or the system refuses (the caller then reads by copying).
    pub fn new(file: &File, len: usize) -> Option<Mapping> {
        if !INSTALLED.load(Ordering::Relaxed) || len == 0 {
            return None;
        }
        let index = CLAIMED.iter().position(|c| {
            c.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        // SAFETY: a new private mapping of an open file; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            CLAIMED[index].store(false, Ordering::Release);
            return None;
        }
        let start = p as usize;
        let slot = &TABLE[index];
        slot.refs.store(1, Ordering::Relaxed);
        USED.fetch_max(index + 1, Ordering::AcqRel);
        LOW.fetch_min(start, Ordering::AcqRel);
        HIGH.fetch_max(start + len, Ordering::AcqRel);
        slot.set_range(start, start + len);
        Some(Mapping { start, len })
    }

    /// The address of mapped byte `offset`, after checking that `[offset, offset + len)` lies
    /// inside the mapping.
    ///
    /// # Panics
    /// If it does not (callers pass ranges checked against the file).
    fn address(&self, offset: usize, len: usize) -> usize {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        self.start + offset
    }

    /// The mapped bytes `[offset, offset + len)`.
    ///
    /// # Panics
    /// If the range is not inside the mapping (callers pass ranges checked against the file).
    pub fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let start = self.address(offset, len);
        // SAFETY: the range lies inside the mapping, which lives as long as `self`. Memory is
        // written only through vectors made by `vec`, each over its own tensor's range; a
        // file's tensor ranges do not overlap (`SafetensorsFile::open` checks), and callers
        // read a tensor's bytes either through a vector or through this slice, never both.
        unsafe { std::slice::from_raw_parts(start as *const u8, len) }
    }

    /// A vector over the mapped bytes `[offset, offset + len)`, holding a reference to the
    /// mapping; `None` when they are not aligned for `T` or not whole `T`s.
    fn vec<T: WithDType>(&self, offset: usize, len: usize) -> Option<Vec<T>> {
        let size = std::mem::size_of::<T>();
        let start = self.address(offset, len);
        if len == 0 || len % size != 0 || start % std::mem::align_of::<T>() != 0 {
            return None;
        }
        TABLE[slot_of(self.start)?]
            .refs
            .fetch_add(1, Ordering::AcqRel);
        // Fault the range's page-cache pages in now, in the loading thread, rather than one by
        // one in the first forward; an older kernel without MADV_POPULATE_READ only skips it.
        let page = page_size();
        let first = start / page * page;
        // SAFETY: the advice covers pages of this mapping only.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                start + len - first,
                libc::MADV_POPULATE_READ,
            )
        };
        let n = len / size;
        // SAFETY: [start, start + len) is inside a live mapping, aligned for `T`, and holds `n`
        // initialized `T`s (any bit pattern is a valid `WithDType` value). The mapping counts
        // as an allocation of the global allocator (`Allocator`), which frees it through the
        // reference taken above; capacity equals length, so the layout freed is the one given.
        Some(unsafe { Vec::from_raw_parts(start as *mut T, n, n) })
    }

    /// The tensor stored at `[offset, offset + len)` as `dtype` with `shape`, over the mapped
    /// bytes (no copy); `None` when those bytes are not aligned for `dtype` or not whole values
    /// of it, and the tensor must be copied instead.
    pub fn tensor(
        &self,
        offset: usize,
        len: usize,
        dtype: DType,
        shape: &[usize],
    ) -> Option<Tensor> {
        fn wrap<T: WithDType>(v: Option<Vec<T>>, shape: &[usize]) -> Option<Tensor> {
            Tensor::from_vec(v?, shape, &Device::Cpu).ok()
        }
        match dtype {
            DType::F32 => wrap(self.vec::<f32>(offset, len), shape),
            DType::F16 => wrap(self.vec::<half::f16>(offset, len), shape),
            DType::BF16 => wrap(self.vec::<half::bf16>(offset, len), shape),
            DType::F64 => wrap(self.vec::<f64>(offset, len), shape),
            DType::I64 => wrap(self.vec::<i64>(offset, len), shape),
            DType::U32 => wrap(self.vec::<u32>(offset, len), shape),
            DType::U8 => wrap(self.vec::<u8>(offset, len), shape),
            _ => None,
        }
    }

    /// Whether `t`'s storage is inside this mapping.
    pub fn holds(&self, t: &Tensor) -> bool {
        use candle_core::{CpuStorage as C, Storage};
        let (storage, _) = t.storage_and_layout();
        let p = match &*storage {
            Storage::Cpu(C::F32(v)) => v.as_ptr() as usize,
            Storage::Cpu(C::F16(v)) => v.as_ptr() as usize,
            Storage::Cpu(C::BF16(v)) => v.as_ptr() as usize,
            Storage::Cpu(C::F64(v)) => v.as_ptr() as usize,
            Storage::Cpu(C::I64(v)) => v.as_ptr() as usize,
            Storage::Cpu(C::U32(v)) => v.as_ptr() as usize,
            Storage::Cpu(C::U8(v)) => v.as_ptr() as usize,
            _ => return false,
        };
        self.start <= p && p < self.start + self.len
    }

    /// Unmaps the whole pages inside `[offset, offset + len)` from this process (the page
    /// cache keeps them, and a later read faults them in again): for a tensor that was copied
    /// out, so that its file pages stop counting in the process's memory. The caller makes
    /// sure no vector over those bytes exists, since a page one had written would be lost.
    pub fn forget(&self, offset: usize, len: usize) {
        let start = self.address(offset, len);
        let page = page_size();
        let first = start.div_ceil(page) * page;
        let last = (start + len) / page * page;
        if first < last {
            // SAFETY: whole pages of this mapping that no vector covers (the caller's promise);
            // they read the file's bytes again if touched.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                )
            };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        release(self.start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(values: &[f32]) -> (tempfile::NamedTempFile, usize) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all(&bytes).unwrap();
        (f, bytes.len())
    }

    fn in_range(mapping: &Mapping, p: usize) -> bool {
        mapping.start <= p && p < mapping.start + mapping.len
    }

    /// The mapping's slot and its sequence number now. The slot is written again only when
    /// the mapping is unmapped (another test may map a file at the same address afterwards,
    /// so the address alone cannot tell).
    fn slot_state(mapping: &Mapping) -> (&'static Slot, usize) {
        let slot = &TABLE[slot_of(mapping.start).expect("a live mapping has a slot")];
        (slot, slot.seq.load(Ordering::Acquire))
    }

    /// Whether the slot was written (its mapping unmapped) since [`slot_state`] read `seq`.
    fn unmapped_since((slot, seq): (&Slot, usize)) -> bool {
        slot.seq.load(Ordering::Acquire) != seq
    }

    #[test]
    fn a_tensor_reads_the_mapped_bytes_and_outlives_the_mapping() {
        let (f, len) = file_of(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mapping = Mapping::new(f.as_file(), len).expect("the test binary maps");
        let t = mapping.tensor(8, 16, DType::F32, &[2, 2]).unwrap();
        let (storage, _) = t.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage else {
            panic!("f32 storage expected")
        };
        assert!(in_range(&mapping, v.as_ptr() as usize), "no copy was made");
        drop(storage);
        let state = slot_state(&mapping);
        drop(mapping);
        assert!(!unmapped_since(state), "the tensor keeps the file mapped");
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[3.0, 4.0], [5.0, 6.0]]);
        drop(t);
        assert!(unmapped_since(state), "the last reference unmaps");
    }

    #[test]
    fn writes_stay_private_and_growing_moves_to_the_heap() {
        let (f, len) = file_of(&[1.0, 2.0, 3.0]);
        let mapping = Mapping::new(f.as_file(), len).unwrap();
        let mut v = mapping.vec::<f32>(0, len).unwrap();
        v[0] = 9.0;
        assert_eq!(std::fs::read(f.path()).unwrap()[..4], 1f32.to_le_bytes());
        v.push(4.0);
        assert!(!in_range(&mapping, v.as_ptr() as usize));
        assert_eq!(v, [9.0, 2.0, 3.0, 4.0]);
        let state = slot_state(&mapping);
        drop(mapping);
        assert!(unmapped_since(state), "the moved vector holds no reference");
    }

    #[test]
    fn unaligned_or_partial_ranges_are_refused() {
        let (f, len) = file_of(&[1.0, 2.0, 3.0]);
        let mapping = Mapping::new(f.as_file(), len).unwrap();
        assert!(mapping.vec::<f32>(2, 8).is_none());
        assert!(mapping.vec::<f32>(0, 6).is_none());
        assert!(mapping.vec::<f32>(0, 0).is_none());
        assert!(mapping.vec::<half::f16>(2, 8).is_some());
    }
}
