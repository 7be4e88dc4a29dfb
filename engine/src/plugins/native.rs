//! The native plugin host: shared libraries loaded with `libloading`.
//!
//! Native plugins are **trusted code**: they run in the beeswax process with its full
//! authority, and nothing here can stop one from crashing it or reading its files. The host
//! only makes the boundary well-defined: the file's SHA-256 is checked before it is opened
//! (the manifest must pin it); `beeswax_abi_version` is the first symbol called and a
//! mismatch is refused with both versions; the SDK catches panics so they never unwind into
//! the host; and a library is never unloaded: every instance holds an `Arc` to it, and the
//! loaded set lives for the whole process (unloading breaks thread-local destructors).
#![allow(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use beeswax_plugin_sdk::abi::{self, exports, Buf};
use libloading::Library;

use super::call::{self, Call, Instance};
use super::PluginError;

type VersionFn = unsafe extern "C" fn() -> u32;
type AllocFn = unsafe extern "C" fn(usize) -> *mut u8;
type FreeFn = unsafe extern "C" fn(*mut u8, usize);
type NewFn = unsafe extern "C" fn(*const u8, usize, *mut Buf) -> i32;
type SchedFn = unsafe extern "C" fn(u64, u32, *const u8, usize, *mut Buf) -> i32;
type DropFn = unsafe extern "C" fn(u64);
type ProcFn = unsafe extern "C" fn(*const u8, usize, *const u8, usize, *mut Buf) -> i32;

/// The plugin's functions, resolved once at load time.
struct Fns {
    free: FreeFn,
    scheduler_new: Option<NewFn>,
    scale: Option<SchedFn>,
    step: Option<SchedFn>,
    add_noise: Option<SchedFn>,
    drop: Option<DropFn>,
    postprocess: Option<ProcFn>,
    preprocess: Option<ProcFn>,
}

/// A loaded native plugin.
pub struct NativePlugin {
    name: Arc<str>,
    fns: Fns,
    capabilities: u32,
    abi_version: u32,
    /// Kept last so it outlives the function pointers; never dropped while an `Arc` to this
    /// plugin exists.
    _library: Library,
}

impl std::fmt::Debug for NativePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativePlugin")
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl NativePlugin {
    /// Opens the library at `path` (whose hash the caller has checked), calls
    /// `beeswax_abi_version` first and refuses a mismatch, then resolves the exports its
    /// capabilities require.
    pub fn load(name: &str, path: &Path) -> Result<Arc<Self>, PluginError> {
        let load_err = |message: String| PluginError::Load {
            plugin: name.to_string(),
            message,
        };
        // SAFETY: loading a library runs its initialisers: native plugins are trusted code,
        // pinned by the manifest's sha256 (checked by the caller).
        let library = unsafe { Library::new(path) }
            .map_err(|e| load_err(format!("cannot open {}: {e}", path.display())))?;
        let version_fn: VersionFn = symbol(&library, exports::ABI_VERSION).ok_or_else(|| {
            load_err(format!(
                "{} does not export `{}`: it is not a beeswax plugin (build it with \
                 beeswax-plugin-sdk or include beeswax_plugin.h)",
                path.display(),
                exports::ABI_VERSION
            ))
        })?;
        // SAFETY: a trusted plugin's `uint32_t beeswax_abi_version(void)`.
        let version = unsafe { version_fn() };
        let (major, minor) = abi::split_version(version);
        if major != abi::ABI_MAJOR || minor > abi::ABI_MINOR {
            return Err(PluginError::AbiMismatch {
                plugin: name.to_string(),
                found: format!("{major}.{minor}"),
                host: format!("{}.{}", abi::ABI_MAJOR, abi::ABI_MINOR),
            });
        }
        let need = |export: &str| {
            load_err(format!(
                "does not export `{export}`, which its capabilities require"
            ))
        };
        let caps_fn: VersionFn =
            symbol(&library, exports::CAPABILITIES).ok_or_else(|| need(exports::CAPABILITIES))?;
        // SAFETY: as above.
        let capabilities = unsafe { caps_fn() };
        let _alloc: AllocFn =
            symbol(&library, exports::ALLOC).ok_or_else(|| need(exports::ALLOC))?;
        let free: FreeFn = symbol(&library, exports::FREE).ok_or_else(|| need(exports::FREE))?;
        let sched = capabilities & abi::CAP_SCHEDULER != 0;
        let post = capabilities & abi::CAP_POSTPROCESSOR != 0;
        let pre = capabilities & abi::CAP_PREPROCESSOR != 0;
        let require = |want: bool, export: &'static str| -> Result<(), PluginError> {
            if want && !has(&library, export) {
                return Err(need(export));
            }
            Ok(())
        };
        for export in [
            exports::SCHEDULER_NEW,
            exports::SCHEDULER_SCALE,
            exports::SCHEDULER_STEP,
            exports::SCHEDULER_ADD_NOISE,
            exports::SCHEDULER_DROP,
        ] {
            require(sched, export)?;
        }
        require(post, exports::POSTPROCESS)?;
        require(pre, exports::PREPROCESS)?;
        let fns = Fns {
            free,
            scheduler_new: symbol(&library, exports::SCHEDULER_NEW).filter(|_| sched),
            scale: symbol(&library, exports::SCHEDULER_SCALE).filter(|_| sched),
            step: symbol(&library, exports::SCHEDULER_STEP).filter(|_| sched),
            add_noise: symbol(&library, exports::SCHEDULER_ADD_NOISE).filter(|_| sched),
            drop: symbol(&library, exports::SCHEDULER_DROP).filter(|_| sched),
            postprocess: symbol(&library, exports::POSTPROCESS).filter(|_| post),
            preprocess: symbol(&library, exports::PREPROCESS).filter(|_| pre),
        };
        Ok(Arc::new(Self {
            name: Arc::from(name),
            fns,
            capabilities,
            abi_version: version,
            _library: library,
        }))
    }

    /// The capability bits the plugin reported.
    pub fn capabilities(&self) -> u32 {
        self.capabilities
    }

    /// The ABI version the plugin reported.
    pub fn abi_version(&self) -> u32 {
        self.abi_version
    }
}

/// A function pointer for `name`, if the library exports it.
fn symbol<T: Copy>(library: &Library, name: &str) -> Option<T> {
    // SAFETY: the ABI fixes each export's C signature; `T` is that signature.
    unsafe { library.get::<T>(name.as_bytes()).ok().map(|s| *s) }
}

fn has(library: &Library, name: &str) -> bool {
    // SAFETY: only checks that the symbol exists.
    unsafe { library.get::<*const ()>(name.as_bytes()).is_ok() }
}

/// A native "instance": the shared library itself (schedulers are separate handles).
pub struct NativeInstance(pub Arc<NativePlugin>);

impl Instance for NativeInstance {
    fn call(&mut self, call: Call<'_>) -> Result<Vec<u8>, PluginError> {
        let p = &self.0;
        let export = call.export();
        let missing = || PluginError::Load {
            plugin: p.name.to_string(),
            message: format!("does not export `{export}`"),
        };
        let mut out = Buf {
            ptr: std::ptr::null_mut(),
            len: 0,
        };
        // SAFETY: trusted code called with the ABI's signatures; inputs are valid slices that
        // outlive the call, and `out` is a valid `Buf`.
        let status = unsafe {
            match call {
                Call::SchedulerNew(cfg) => {
                    (p.fns.scheduler_new.ok_or_else(missing)?)(cfg.as_ptr(), cfg.len(), &mut out)
                }
                Call::Scale(h, i, d) => {
                    (p.fns.scale.ok_or_else(missing)?)(h, i, d.as_ptr(), d.len(), &mut out)
                }
                Call::Step(h, i, d) => {
                    (p.fns.step.ok_or_else(missing)?)(h, i, d.as_ptr(), d.len(), &mut out)
                }
                Call::AddNoise(h, i, d) => {
                    (p.fns.add_noise.ok_or_else(missing)?)(h, i, d.as_ptr(), d.len(), &mut out)
                }
                Call::PostProcess(a, b) => (p.fns.postprocess.ok_or_else(missing)?)(
                    a.as_ptr(),
                    a.len(),
                    b.as_ptr(),
                    b.len(),
                    &mut out,
                ),
                Call::PreProcess(a, b) => (p.fns.preprocess.ok_or_else(missing)?)(
                    a.as_ptr(),
                    a.len(),
                    b.as_ptr(),
                    b.len(),
                    &mut out,
                ),
            }
        };
        let bytes = if out.ptr.is_null() || out.len == 0 {
            Vec::new()
        } else {
            // SAFETY: the plugin returned `len` readable bytes at `ptr` from its allocator,
            // which we copy, then hand back to its `beeswax_free`.
            unsafe {
                let v = std::slice::from_raw_parts(out.ptr, out.len).to_vec();
                (p.fns.free)(out.ptr, out.len);
                v
            }
        };
        call::status(&p.name, export, status, bytes)
    }

    fn drop_scheduler(&mut self, handle: u64) {
        if let Some(drop) = self.0.fns.drop {
            // SAFETY: a handle this plugin returned, dropped once.
            unsafe { drop(handle) }
        }
    }
}
