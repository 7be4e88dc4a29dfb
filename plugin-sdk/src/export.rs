//! The glue behind [`crate::export_plugin!`]: the C ABI functions, generic over the plugin's
//! types. Plugins do not call these directly.
//!
//! Every function turns the plugin's `Result` into a status code plus an output buffer, and
//! (with the `std` feature) catches panics so that they never unwind into the host.
#![allow(unsafe_code, clippy::missing_safety_doc)]

use alloc::alloc::{alloc as raw_alloc, dealloc, Layout};
use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::abi::{self, Buf};
use crate::plugin::{Error, PostProcessor, PreProcessor, SchedulerPlugin};
use crate::wire::{self, Image, Params, Reader, Schedule, SchedulerInit, Tensor};

/// Allocation alignment of `beeswax_alloc`.
const ALIGN: usize = 8;

/// `beeswax_alloc`: `len` bytes, 8-byte aligned; null on failure. `len == 0` gives a dangling,
/// aligned, non-null pointer.
pub fn alloc(len: usize) -> *mut u8 {
    if len == 0 {
        return ALIGN as *mut u8;
    }
    match Layout::from_size_align(len, ALIGN) {
        // SAFETY: the layout has a non-zero size.
        Ok(layout) => unsafe { raw_alloc(layout) },
        Err(_) => core::ptr::null_mut(),
    }
}

/// `beeswax_free`: frees a buffer from [`alloc`] given its length.
pub unsafe fn free(ptr: *mut u8, len: usize) {
    if ptr.is_null() || len == 0 {
        return;
    }
    if let Ok(layout) = Layout::from_size_align(len, ALIGN) {
        // SAFETY: the caller passes a pointer from `alloc(len)`.
        unsafe { dealloc(ptr, layout) }
    }
}

/// The input bytes at `ptr`.
unsafe fn input<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the host passes `len` readable bytes at `ptr`.
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }
}

/// Copies `bytes` into a fresh buffer and stores it in `*out`.
unsafe fn write_out(out: *mut Buf, bytes: &[u8]) -> bool {
    if out.is_null() {
        return false;
    }
    let ptr = alloc(bytes.len());
    if ptr.is_null() {
        // SAFETY: `out` is the host's valid `Buf`.
        unsafe {
            *out = Buf {
                ptr: core::ptr::null_mut(),
                len: 0,
            }
        };
        return false;
    }
    // SAFETY: `ptr` has `bytes.len()` writable bytes; `out` is valid.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len());
        *out = Buf {
            ptr,
            len: bytes.len(),
        };
    }
    true
}

/// Runs `f`, catching panics with the `std` feature.
fn guard(f: impl FnOnce() -> Result<Vec<u8>, Error>) -> Result<Vec<u8>, Error> {
    #[cfg(feature = "std")]
    {
        extern crate std;
        match std::panic::catch_unwind(core::panic::AssertUnwindSafe(f)) {
            Ok(result) => result,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(alloc::string::ToString::to_string)
                    .or_else(|| payload.downcast_ref::<alloc::string::String>().cloned())
                    .unwrap_or_default();
                Err(Error::internal(alloc::format!(
                    "the plugin panicked: {what}"
                )))
            }
        }
    }
    #[cfg(not(feature = "std"))]
    {
        f()
    }
}

/// Stores the result in `*out` and returns its status.
unsafe fn finish(out: *mut Buf, result: Result<Vec<u8>, Error>) -> i32 {
    match result {
        // SAFETY: `out` comes from the host.
        Ok(bytes) => match unsafe { write_out(out, &bytes) } {
            true => abi::STATUS_OK,
            false => abi::STATUS_OUT_OF_MEMORY,
        },
        Err(e) => {
            // SAFETY: as above.
            unsafe { write_out(out, e.message.as_bytes()) };
            e.status
        }
    }
}

fn encode(t: Tensor) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(Tensor::encoded_len(&t.shape, t.data.dtype()));
    t.encode_into(&mut out)?;
    Ok(out)
}

/// The scheduler behind a handle.
unsafe fn scheduler<'a, S>(handle: u64) -> Result<&'a mut S, Error> {
    let ptr = handle as usize as *mut S;
    if ptr.is_null() {
        return Err(Error::invalid("null scheduler handle"));
    }
    // SAFETY: handles are pointers from `Box::into_raw` in `scheduler_new`, used by one host
    // thread at a time and not yet dropped.
    Ok(unsafe { &mut *ptr })
}

/// `beeswax_scheduler_new`.
pub unsafe fn scheduler_new<S: SchedulerPlugin>(cfg: *const u8, len: usize, out: *mut Buf) -> i32 {
    // SAFETY: the host passes `len` bytes at `cfg`.
    let bytes = unsafe { input(cfg, len) };
    let result = guard(|| {
        let init = SchedulerInit::decode(bytes)?;
        let s = S::new(&init)?;
        let timesteps = s.timesteps().to_vec();
        let init_noise_sigma = s.init_noise_sigma();
        let flags = if s.wants_noise() {
            abi::SCHEDULE_WANTS_NOISE
        } else {
            0
        };
        let handle = Box::into_raw(Box::new(s)) as usize as u64;
        Ok(Schedule {
            handle,
            flags,
            init_noise_sigma,
            timesteps,
        }
        .encode()?)
    });
    // SAFETY: `out` comes from the host.
    unsafe { finish(out, result) }
}

/// `beeswax_scheduler_scale`.
pub unsafe fn scheduler_scale<S: SchedulerPlugin>(
    handle: u64,
    index: u32,
    ptr: *const u8,
    len: usize,
    out: *mut Buf,
) -> i32 {
    // SAFETY: host-provided input and handle.
    let bytes = unsafe { input(ptr, len) };
    let result = guard(|| {
        let s = unsafe { scheduler::<S>(handle)? };
        let mut t = wire::decode_tensors(bytes, 1)?;
        let sample = t.pop().ok_or_else(|| Error::invalid("no sample"))?;
        encode(s.scale_model_input(sample, index as usize)?)
    });
    // SAFETY: `out` comes from the host.
    unsafe { finish(out, result) }
}

/// `beeswax_scheduler_step`.
pub unsafe fn scheduler_step<S: SchedulerPlugin>(
    handle: u64,
    index: u32,
    ptr: *const u8,
    len: usize,
    out: *mut Buf,
) -> i32 {
    // SAFETY: host-provided input and handle.
    let bytes = unsafe { input(ptr, len) };
    let result = guard(|| {
        let s = unsafe { scheduler::<S>(handle)? };
        let mut r = Reader::new(bytes);
        let model_output = Tensor::decode(&mut r)?;
        let sample = Tensor::decode(&mut r)?;
        let noise = if s.wants_noise() {
            Some(Tensor::decode(&mut r)?)
        } else {
            None
        };
        encode(s.step(model_output, index as usize, sample, noise)?)
    });
    // SAFETY: `out` comes from the host.
    unsafe { finish(out, result) }
}

/// `beeswax_scheduler_add_noise`.
pub unsafe fn scheduler_add_noise<S: SchedulerPlugin>(
    handle: u64,
    index: u32,
    ptr: *const u8,
    len: usize,
    out: *mut Buf,
) -> i32 {
    // SAFETY: host-provided input and handle.
    let bytes = unsafe { input(ptr, len) };
    let result = guard(|| {
        let s = unsafe { scheduler::<S>(handle)? };
        let mut r = Reader::new(bytes);
        let original = Tensor::decode(&mut r)?;
        let noise = Tensor::decode(&mut r)?;
        encode(s.add_noise(original, noise, index as usize)?)
    });
    // SAFETY: `out` comes from the host.
    unsafe { finish(out, result) }
}

/// `beeswax_scheduler_drop`.
pub unsafe fn scheduler_drop<S: SchedulerPlugin>(handle: u64) {
    let ptr = handle as usize as *mut S;
    if !ptr.is_null() {
        let _ = guard(|| {
            // SAFETY: the handle came from `Box::into_raw` and is dropped once.
            drop(unsafe { Box::from_raw(ptr) });
            Ok(Vec::new())
        });
    }
}

/// `beeswax_postprocess`.
pub unsafe fn postprocess<P: PostProcessor>(
    params: *const u8,
    params_len: usize,
    image: *const u8,
    image_len: usize,
    out: *mut Buf,
) -> i32 {
    // SAFETY: host-provided inputs.
    let (params, image) = unsafe { (input(params, params_len), input(image, image_len)) };
    let result = guard(|| {
        let params = Params::decode(params)?;
        let image = Image::decode(&mut Reader::new(image))?;
        let processed = P::process(&params, image)?;
        let mut out = Vec::new();
        processed.encode_into(&mut out)?;
        Ok(out)
    });
    // SAFETY: `out` comes from the host.
    unsafe { finish(out, result) }
}

/// `beeswax_preprocess`.
pub unsafe fn preprocess<P: PreProcessor>(
    params: *const u8,
    params_len: usize,
    data: *const u8,
    data_len: usize,
    out: *mut Buf,
) -> i32 {
    // SAFETY: host-provided inputs.
    let (params, data) = unsafe { (input(params, params_len), input(data, data_len)) };
    let result = guard(|| {
        let params = Params::decode(params)?;
        let mut r = Reader::new(data);
        let image = Image::decode(&mut r)?;
        let mask = Image::decode(&mut r)?;
        let (image, mask) = P::process(&params, image, mask)?;
        let mut out = Vec::new();
        image.encode_into(&mut out)?;
        mask.encode_into(&mut out)?;
        Ok(out)
    });
    // SAFETY: `out` comes from the host.
    unsafe { finish(out, result) }
}

/// Used by the macro to OR a capability bit in when a type is named.
#[doc(hidden)]
pub const fn cap<T: ?Sized>(bit: u32) -> u32 {
    bit
}

/// Exports a plugin's C ABI: the version, capabilities, allocator and one set of functions
/// per extension point named. Any subset, in this order:
///
/// ```ignore
/// beeswax_plugin_sdk::export_plugin! {
///     scheduler = MyEuler;
///     postprocessor = MySharpen;
///     preprocessor = MyMaskBlur;
/// }
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($(scheduler = $s:ty;)? $(postprocessor = $p:ty;)? $(preprocessor = $q:ty;)?) => {
        /// The ABI version this plugin was built against.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn beeswax_abi_version() -> u32 {
            $crate::abi::ABI_VERSION
        }

        /// What this plugin provides.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn beeswax_capabilities() -> u32 {
            0 $(| $crate::export::cap::<$s>($crate::abi::CAP_SCHEDULER))?
              $(| $crate::export::cap::<$p>($crate::abi::CAP_POSTPROCESSOR))?
              $(| $crate::export::cap::<$q>($crate::abi::CAP_PREPROCESSOR))?
        }

        /// Allocates `len` bytes for the host.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn beeswax_alloc(len: usize) -> *mut u8 {
            $crate::export::alloc(len)
        }

        /// Frees a buffer from `beeswax_alloc`.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub unsafe extern "C" fn beeswax_free(ptr: *mut u8, len: usize) {
            unsafe { $crate::export::free(ptr, len) }
        }

        $(
            /// Builds a schedule.
            #[allow(unsafe_code)]
            #[no_mangle]
            pub unsafe extern "C" fn beeswax_scheduler_new(
                cfg: *const u8, len: usize, out: *mut $crate::abi::Buf,
            ) -> i32 {
                unsafe { $crate::export::scheduler_new::<$s>(cfg, len, out) }
            }

            /// Scales the model input.
            #[allow(unsafe_code)]
            #[no_mangle]
            pub unsafe extern "C" fn beeswax_scheduler_scale(
                handle: u64, index: u32, ptr: *const u8, len: usize, out: *mut $crate::abi::Buf,
            ) -> i32 {
                unsafe { $crate::export::scheduler_scale::<$s>(handle, index, ptr, len, out) }
            }

            /// One step.
            #[allow(unsafe_code)]
            #[no_mangle]
            pub unsafe extern "C" fn beeswax_scheduler_step(
                handle: u64, index: u32, ptr: *const u8, len: usize, out: *mut $crate::abi::Buf,
            ) -> i32 {
                unsafe { $crate::export::scheduler_step::<$s>(handle, index, ptr, len, out) }
            }

            /// Noises clean latents.
            #[allow(unsafe_code)]
            #[no_mangle]
            pub unsafe extern "C" fn beeswax_scheduler_add_noise(
                handle: u64, index: u32, ptr: *const u8, len: usize, out: *mut $crate::abi::Buf,
            ) -> i32 {
                unsafe { $crate::export::scheduler_add_noise::<$s>(handle, index, ptr, len, out) }
            }

            /// Frees a schedule.
            #[allow(unsafe_code)]
            #[no_mangle]
            pub unsafe extern "C" fn beeswax_scheduler_drop(handle: u64) {
                unsafe { $crate::export::scheduler_drop::<$s>(handle) }
            }
        )?

        $(
            /// Post-processes an image.
            #[allow(unsafe_code)]
            #[no_mangle]
            pub unsafe extern "C" fn beeswax_postprocess(
                params: *const u8, params_len: usize, image: *const u8, image_len: usize,
                out: *mut $crate::abi::Buf,
            ) -> i32 {
                unsafe { $crate::export::postprocess::<$p>(params, params_len, image, image_len, out) }
            }
        )?

        $(
            /// Pre-processes an image and mask.
            #[allow(unsafe_code)]
            #[no_mangle]
            pub unsafe extern "C" fn beeswax_preprocess(
                params: *const u8, params_len: usize, data: *const u8, data_len: usize,
                out: *mut $crate::abi::Buf,
            ) -> i32 {
                unsafe { $crate::export::preprocess::<$q>(params, params_len, data, data_len, out) }
            }
        )?
    };
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::wire::Image;

    struct Panicky;

    impl PostProcessor for Panicky {
        fn process(_: &Params, _: Image) -> Result<Image, Error> {
            panic!("boom")
        }
    }

    #[test]
    fn panics_become_internal_errors() {
        let mut image = Vec::new();
        Image {
            width: 1,
            height: 1,
            channels: 3,
            data: alloc::vec![0, 0, 0],
        }
        .encode_into(&mut image)
        .unwrap();
        let mut out = Buf {
            ptr: core::ptr::null_mut(),
            len: 0,
        };
        // SAFETY: valid buffers; the output is freed below.
        let status = unsafe {
            postprocess::<Panicky>(core::ptr::null(), 0, image.as_ptr(), image.len(), &mut out)
        };
        assert_eq!(status, abi::STATUS_INTERNAL);
        // SAFETY: the SDK wrote `len` bytes at `ptr` with `alloc`.
        let message = unsafe { core::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
        unsafe { free(out.ptr, out.len) };
        assert_eq!(message, b"the plugin panicked: boom");
    }
}
