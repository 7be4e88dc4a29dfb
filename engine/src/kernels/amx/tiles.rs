//! The AMX instructions this module uses, and the micro-kernel built of them.
//!
//! Linux hands out AMX's tile state only to processes that ask for it (`arch_prctl` with
//! `ARCH_REQ_XCOMP_PERM`); [`available`] asks once. Each product then loads its tile
//! configuration on the thread before its first tile instruction ([`with_tiles`]) and puts
//! back what the thread had after its last one: candle's quantized kernels use AMX too and
//! keep their own configuration between calls (a product that released the tiles under them
//! made their next tile instruction fault), and a thread with nothing configured gets its
//! tiles released, so that the kernel does not save 8 KiB of tile state at every context
//! switch. All eight tiles are 16 rows × 64 bytes: tiles 0–3 hold a 32 × 32 block
//! of f32 sums, 4–5 two 16-row tiles of the left operand, 6–7 two 16-column tiles of the right
//! one.
#![allow(unsafe_code)]

use std::ops::Range;

use super::pack::Packed;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;

    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;

    /// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22) and the
    /// kernel lets this process use them.
    pub fn available() -> bool {
        // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that runs this binary's baseline
        // (leaf 0 reports at least 7 on them; an absent leaf reads as zeros anyway).
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
            return false;
        }
        // SAFETY: a plain system call with integer arguments; it only changes what this
        // process may do.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        rc == 0
    }

    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// Palette 1, eight tiles of 16 rows × 64 bytes.
    fn config() -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        Config(c)
    }

    /// Loads this module's configuration on this thread and returns the one it replaces (all
    /// zeros when the tiles were not configured). Only called after [`available`].
    pub fn configure() -> [u8; 64] {
        let mut previous = Config([0; 64]);
        let c = config();
        // SAFETY: `previous` has room for the 64 bytes `sttilecfg` writes; `c` is a valid
        // palette-1 configuration; AMX is available to this process.
        unsafe {
            asm!("sttilecfg [{}]", in(reg) previous.0.as_mut_ptr(), options(nostack, preserves_flags));
            asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly, preserves_flags));
        }
        previous.0
    }

    /// Puts back the configuration [`configure`] replaced: other code on this thread (candle's
    /// quantized AMX kernels) may keep its tiles configured between its calls.
    pub fn restore(previous: [u8; 64]) {
        let c = Config(previous);
        if c.0[0] == 0 {
            // SAFETY: releases this thread's tiles; valid whether or not they are configured.
            unsafe { asm!("tilerelease", options(nomem, nostack, preserves_flags)) };
        } else {
            // SAFETY: `c` is what `sttilecfg` stored from a configuration the CPU had accepted.
            unsafe {
                asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly, preserves_flags))
            };
        }
    }

    macro_rules! tile_op {
        ($name:ident, $text:literal, load) => {
            /// # Safety
            /// 16 rows of 64 bytes from `p`, `stride` bytes apart, must be readable; tiles
            /// configured on this thread.
            #[inline(always)]
            pub unsafe fn $name(p: *const u8, stride: usize) {
                asm!($text, p = in(reg) p, s = in(reg) stride, options(nostack, readonly, preserves_flags));
            }
        };
        ($name:ident, $text:literal, store) => {
            /// # Safety
            /// 16 rows of 64 bytes at `p`, `stride` bytes apart, must be writable; tiles
            /// configured on this thread.
            #[inline(always)]
            pub unsafe fn $name(p: *mut u8, stride: usize) {
                asm!($text, p = in(reg) p, s = in(reg) stride, options(nostack, preserves_flags));
            }
        };
    }
    tile_op!(load0, "tileloadd tmm0, [{p} + {s}*1]", load);
    tile_op!(load1, "tileloadd tmm1, [{p} + {s}*1]", load);
    tile_op!(load2, "tileloadd tmm2, [{p} + {s}*1]", load);
    tile_op!(load3, "tileloadd tmm3, [{p} + {s}*1]", load);
    tile_op!(load4, "tileloadd tmm4, [{p} + {s}*1]", load);
    tile_op!(load5, "tileloadd tmm5, [{p} + {s}*1]", load);
    tile_op!(load6, "tileloadd tmm6, [{p} + {s}*1]", load);
    tile_op!(load7, "tileloadd tmm7, [{p} + {s}*1]", load);
    tile_op!(store0, "tilestored [{p} + {s}*1], tmm0", store);
    tile_op!(store1, "tilestored [{p} + {s}*1], tmm1", store);
    tile_op!(store2, "tilestored [{p} + {s}*1], tmm2", store);
    tile_op!(store3, "tilestored [{p} + {s}*1], tmm3", store);

    /// tmm0..3 = 0.
    ///
    /// # Safety
    /// Tiles configured on this thread.
    #[inline(always)]
    pub unsafe fn zero_sums() {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nomem, nostack, preserves_flags)
        );
    }

    /// tmm0..3 += (tmm4, tmm5) × (tmm6, tmm7).
    ///
    /// # Safety
    /// Tiles configured on this thread.
    #[inline(always)]
    pub unsafe fn dot4() {
        asm!(
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            options(nomem, nostack, preserves_flags)
        );
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    pub fn available() -> bool {
        false
    }
}

/// Never called: [`available`] is false here.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub(super) fn with_tiles<R>(_: impl FnOnce() -> R) -> R {
    unreachable!("amx: no AMX on this platform")
}

/// Never called: [`available`] is false here.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block(
    _: &Packed,
    _: usize,
    _: &Packed,
    _: usize,
    _: Range<usize>,
    _: &[(usize, usize)],
    _: (*mut f32, usize),
    _: bool,
) {
    unreachable!("amx: no AMX on this platform")
}

pub(super) use imp::available;

/// Runs `f` with tiles configured on this thread, then puts back the configuration the
/// thread had (releasing the tiles when it had none).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(super) fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    let previous = imp::configure();
    let r = f();
    imp::restore(previous);
    r
}

/// The 32 × 32 f32 block at `c` (rows `ldc` values apart): its values (zeros when `fresh`)
/// plus the products of the left operand's block pair `ma`, `ma + 1` and the right one's
/// `nb`, `nb + 1` over the depth tiles `kts`, for each (left piece, right piece) of `pairs`
/// (a piece's tiles are loaded only when it differs from the previous pair's). Only called
/// inside [`with_tiles`]. Panics if a tile lies outside its operand.
///
/// # Safety
/// The 32 rows of 32 values from `c`, `ldc` apart, must be this call's to read and write
/// (read only when not `fresh`, and then initialised).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block(
    a: &Packed,
    ma: usize,
    b: &Packed,
    nb: usize,
    kts: Range<usize>,
    pairs: &[(usize, usize)],
    (c, ldc): (*mut f32, usize),
    fresh: bool,
) {
    assert!(
        ma + 1 < a.blocks && nb + 1 < b.blocks,
        "amx: block outside the operands"
    );
    assert!(
        kts.end <= a.depth_tiles && kts.end <= b.depth_tiles,
        "amx: depth"
    );
    assert!(
        pairs.iter().all(|&(i, j)| i < a.pieces && j < b.pieces),
        "amx: pieces"
    );
    let cs = ldc * 4;
    let c = c as *mut u8;
    let (ap, bp) = (a.base(), b.base());
    let (ar, br) = (a.row_bytes(), b.row_bytes());
    // In bounds: the asserts above keep every (block, kt, piece) inside its operand, where
    // `tile_bytes` puts the whole tile.
    let at = |block: usize, kt: usize, p: usize| ap.wrapping_add(a.tile_bytes(block, kt, p));
    let bt = |block: usize, kt: usize, p: usize| bp.wrapping_add(b.tile_bytes(block, kt, p));
    // SAFETY: the caller gives the four 16 × 16 f32 tiles at `c` (rows `cs` bytes apart);
    // the asserts above put every operand tile read below (16 rows of 64 bytes, `ar` or `br`
    // bytes apart) inside its buffer; tiles are configured by `with_tiles`.
    if fresh {
        imp::zero_sums();
    } else {
        imp::load0(c, cs);
        imp::load1(c.add(64), cs);
        imp::load2(c.add(16 * cs), cs);
        imp::load3(c.add(16 * cs + 64), cs);
    }
    for kt in kts {
        let (mut left, mut right) = (usize::MAX, usize::MAX);
        for &(i, j) in pairs {
            if i != left {
                imp::load4(at(ma, kt, i), ar);
                imp::load5(at(ma + 1, kt, i), ar);
                left = i;
            }
            if j != right {
                imp::load6(bt(nb, kt, j), br);
                imp::load7(bt(nb + 1, kt, j), br);
                right = j;
            }
            imp::dot4();
        }
    }
    imp::store0(c, cs);
    imp::store1(c.add(64), cs);
    imp::store2(c.add(16 * cs), cs);
    imp::store3(c.add(16 * cs + 64), cs);
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_threads_own_configuration_is_put_back() {
        if !available() {
            eprintln!("no AMX on this machine: test skipped");
            return;
        }
        // Another user of AMX on this thread (like candle's quantized kernels) with its own
        // configuration: tile 0 as 8 rows of 32 bytes.
        let mut other = [0u8; 64];
        other[0] = 1;
        other[16] = 32;
        other[48] = 8;
        imp::restore(other);
        with_tiles(|| ());
        let mut now = imp::configure();
        assert_eq!(
            now, other,
            "the other configuration is back after a product"
        );
        imp::restore([0; 64]);
        now = imp::configure();
        assert_eq!(now[0], 0, "released when nothing was configured");
        imp::restore(now);
    }
}
