//! The WASM plugin host: wasmtime without WASI, a memory cap per instance, a deadline per call.
//!
//! * **Compiled once:** [`WasmPlugin::load`] compiles the module at startup and keeps an
//!   `InstancePre`; each job gets a fresh instance ([`WasmPlugin::instantiate`]), so a trap
//!   or a corrupted heap ends with that job.
//! * **No ambient authority:** the only import a module may have is `beeswax.log`; anything
//!   else (WASI included) is refused at load time.
//! * **Memory:** a [`wasmtime::ResourceLimiter`] caps linear memory at the manifest's
//!   `memory_mib`; growing past it traps the call (a memory bomb stops at the cap).
//! * **Time:** epoch interruption; a process-wide thread ticks every [`TICK`], and every call
//!   runs with a deadline of `timeout_ms`, so an endless loop traps within one tick of it.
//! * **Pointers:** every pointer and length a module returns is checked against its memory
//!   before the host reads; out-of-range buffers are refused.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use beeswax_plugin_sdk::abi::{self, exports};
use wasmtime::{
    Caller, Config, Engine, Extern, ExternType, Instance as WasmtimeInstance, InstancePre, Linker,
    Memory, Module, ResourceLimiter, Store, Trap, TypedFunc, ValType,
};

use super::call::{self, Call, Instance};
use super::log::{Level, PluginLog, MAX_LINE_BYTES};
use super::manifest::Limits;
use super::PluginError;

/// Epoch tick: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);

static ENGINE: LazyLock<Result<Engine, String>> = LazyLock::new(|| {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.max_wasm_stack(1 << 20);
    let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
    let ticker = engine.clone();
    std::thread::Builder::new()
        .name("beeswax-wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            ticker.increment_epoch();
        })
        .map_err(|e| format!("cannot start the WASM deadline thread: {e}"))?;
    Ok(engine)
});

fn engine(plugin: &str) -> Result<&'static Engine, PluginError> {
    ENGINE.as_ref().map_err(|message| PluginError::Load {
        plugin: plugin.to_string(),
        message: format!("the WASM engine failed to start: {message}"),
    })
}

/// Per-store state: the limiter and the plugin's log.
struct StoreData {
    limiter: Limiter,
    log: Arc<PluginLog>,
}

/// Caps linear memory and records when the cap stopped a growth.
struct Limiter {
    memory_cap: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit reached: {desired} bytes asked for, the cap is {} bytes",
                self.memory_cap
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// A compiled WASM plugin.
pub struct WasmPlugin {
    name: Arc<str>,
    log: Arc<PluginLog>,
    pre: InstancePre<StoreData>,
    limits: Limits,
    capabilities: u32,
    abi_version: u32,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl WasmPlugin {
    /// Compiles `bytes`, checks the imports, then (in a first instance, under the limits)
    /// calls `beeswax_abi_version` before anything else, refusing a version this host does
    /// not support, and reads the capabilities.
    pub fn load(name: &str, bytes: &[u8], limits: Limits) -> Result<Self, PluginError> {
        let engine = engine(name)?;
        let load_err = |message: String| PluginError::Load {
            plugin: name.to_string(),
            message,
        };
        let module = Module::new(engine, bytes)
            .map_err(|e| load_err(format!("is not a valid WebAssembly module: {e:#}")))?;
        for import in module.imports() {
            let is_log = import.module() == exports::LOG_MODULE
                && import.name() == exports::LOG_NAME
                && matches!(import.ty(), ExternType::Func(ref f)
                    if f.params().len() == 3
                        && f.params().all(|p| matches!(p, ValType::I32))
                        && f.results().len() == 0);
            if !is_log {
                return Err(load_err(format!(
                    "imports `{}.{}`, which beeswax does not provide: plugins get no WASI and \
                     no host functions except `beeswax.log(level: i32, ptr: i32, len: i32)`",
                    import.module(),
                    import.name()
                )));
            }
        }
        let mut linker: Linker<StoreData> = Linker::new(engine);
        linker
            .func_wrap(exports::LOG_MODULE, exports::LOG_NAME, log)
            .map_err(|e| load_err(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| load_err(format!("cannot be linked: {e:#}")))?;
        let name: Arc<str> = Arc::from(name);
        let mut plugin = Self {
            log: Arc::new(PluginLog::new(name.clone())),
            name: name.clone(),
            pre,
            limits,
            capabilities: 0,
            abi_version: 0,
        };
        let mut first = plugin.instantiate_bare()?;
        let version = first.call_u32(exports::ABI_VERSION)?;
        let (major, minor) = abi::split_version(version);
        if major != abi::ABI_MAJOR || minor > abi::ABI_MINOR {
            return Err(PluginError::AbiMismatch {
                plugin: name.to_string(),
                found: format!("{major}.{minor}"),
                host: format!("{}.{}", abi::ABI_MAJOR, abi::ABI_MINOR),
            });
        }
        plugin.abi_version = version;
        plugin.capabilities = first.call_u32(exports::CAPABILITIES)?;
        first.check_exports(plugin.capabilities)?;
        Ok(plugin)
    }

    /// The capability bits the plugin reported.
    pub fn capabilities(&self) -> u32 {
        self.capabilities
    }

    /// The ABI version the plugin reported.
    pub fn abi_version(&self) -> u32 {
        self.abi_version
    }

    /// A fresh instance with its own memory, ready for calls.
    pub fn instantiate(&self) -> Result<WasmInstance, PluginError> {
        let mut inst = self.instantiate_bare()?;
        inst.out_slot = inst.alloc(8, exports::ALLOC)?;
        Ok(inst)
    }

    fn instantiate_bare(&self) -> Result<WasmInstance, PluginError> {
        let engine = engine(&self.name)?;
        let cap =
            usize::try_from(self.limits.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let mut store = Store::new(
            engine,
            StoreData {
                limiter: Limiter {
                    memory_cap: cap,
                    hit: false,
                },
                log: self.log.clone(),
            },
        );
        store.limiter(|data| &mut data.limiter);
        store.set_epoch_deadline(deadline_ticks(self.limits.timeout_ms));
        let mut inst = WasmInstance {
            name: self.name.clone(),
            store,
            instance: None,
            memory: None,
            limits: self.limits,
            out_slot: 0,
            poisoned: None,
        };
        let instance = match self.pre.instantiate(&mut inst.store) {
            Ok(i) => i,
            Err(e) => return Err(inst.classify("instantiation", e)),
        };
        let memory = instance
            .get_memory(&mut inst.store, "memory")
            .ok_or_else(|| PluginError::Load {
                plugin: self.name.to_string(),
                message: "does not export its linear memory as `memory`".into(),
            })?;
        inst.instance = Some(instance);
        inst.memory = Some(memory);
        Ok(inst)
    }
}

fn deadline_ticks(timeout_ms: u64) -> u64 {
    timeout_ms.div_ceil(TICK.as_millis() as u64).max(1)
}

/// `beeswax.log(level, ptr, len)`: one line through the plugin's [`PluginLog`] (escaped,
/// rate-limited, through `tracing`).
fn log(mut caller: Caller<'_, StoreData>, level: i32, ptr: i32, len: i32) {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return;
    };
    let (start, len) = (
        ptr as u32 as usize,
        (len as u32 as usize).min(MAX_LINE_BYTES),
    );
    let data = memory.data(&caller);
    let Some(bytes) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
        return;
    };
    let log = caller.data().log.clone();
    log.line(Level::from_abi(level), bytes);
}

/// One instance of a WASM plugin: its own store, memory and allocator state.
pub struct WasmInstance {
    name: Arc<str>,
    store: Store<StoreData>,
    instance: Option<WasmtimeInstance>,
    memory: Option<Memory>,
    limits: Limits,
    out_slot: u32,
    /// Set after a trap, timeout or bad buffer: the instance is not used again.
    poisoned: Option<String>,
}

impl WasmInstance {
    fn instance(&self) -> Result<WasmtimeInstance, PluginError> {
        self.instance.ok_or_else(|| PluginError::Poisoned {
            plugin: self.name.to_string(),
            reason: "not instantiated".into(),
        })
    }

    fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        export: &'static str,
    ) -> Result<TypedFunc<P, R>, PluginError> {
        let instance = self.instance()?;
        instance
            .get_typed_func::<P, R>(&mut self.store, export)
            .map_err(|e| PluginError::Load {
                plugin: self.name.to_string(),
                message: format!("export `{export}` is missing or has the wrong signature: {e:#}"),
            })
    }

    /// Turns a wasmtime error during `export` into a [`PluginError`] and poisons the instance.
    fn classify(&mut self, export: &'static str, e: wasmtime::Error) -> PluginError {
        let plugin = self.name.to_string();
        let err = if self.store.data().limiter.hit {
            PluginError::MemoryLimit {
                plugin,
                export,
                cap_mib: self.limits.memory_mib,
            }
        } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            PluginError::Timeout {
                plugin,
                export,
                timeout_ms: self.limits.timeout_ms,
            }
        } else {
            let mut message = format!("{e:#}");
            message.truncate(2000);
            PluginError::Trap {
                plugin,
                export,
                message,
            }
        };
        self.poisoned = Some(err.to_string());
        err
    }

    fn call_u32(&mut self, export: &'static str) -> Result<u32, PluginError> {
        let f = self.func::<(), i32>(export)?;
        f.call(&mut self.store, ())
            .map(|v| v as u32)
            .map_err(|e| self.classify(export, e))
    }

    fn check_exports(&mut self, capabilities: u32) -> Result<(), PluginError> {
        self.func::<i32, i32>(exports::ALLOC)?;
        self.func::<(i32, i32), ()>(exports::FREE)?;
        if capabilities & abi::CAP_SCHEDULER != 0 {
            self.func::<(i32, i32, i32), i32>(exports::SCHEDULER_NEW)?;
            for export in [
                exports::SCHEDULER_SCALE,
                exports::SCHEDULER_STEP,
                exports::SCHEDULER_ADD_NOISE,
            ] {
                self.func::<(i64, i32, i32, i32, i32), i32>(export)?;
            }
            self.func::<i64, ()>(exports::SCHEDULER_DROP)?;
        }
        if capabilities & abi::CAP_POSTPROCESSOR != 0 {
            self.func::<(i32, i32, i32, i32, i32), i32>(exports::POSTPROCESS)?;
        }
        if capabilities & abi::CAP_PREPROCESSOR != 0 {
            self.func::<(i32, i32, i32, i32, i32), i32>(exports::PREPROCESS)?;
        }
        Ok(())
    }

    fn memory(&self) -> Result<Memory, PluginError> {
        self.memory.ok_or_else(|| PluginError::Poisoned {
            plugin: self.name.to_string(),
            reason: "no memory".into(),
        })
    }

    fn out_of_bounds(&mut self, export: &'static str, what: String) -> PluginError {
        let err = PluginError::OutOfBounds {
            plugin: self.name.to_string(),
            export,
            what,
        };
        self.poisoned = Some(err.to_string());
        err
    }

    /// Allocates `len` bytes in the plugin and checks the block lies inside its memory.
    fn alloc(&mut self, len: usize, export: &'static str) -> Result<u32, PluginError> {
        let len32 = u32::try_from(len).map_err(|_| {
            self.out_of_bounds(export, format!("a {len}-byte input exceeds wasm32"))
        })?;
        let f = self.func::<i32, i32>(exports::ALLOC)?;
        let ptr = f
            .call(&mut self.store, len32 as i32)
            .map_err(|e| self.classify(exports::ALLOC, e))? as u32;
        if ptr == 0 && len > 0 {
            return Err(PluginError::Status {
                plugin: self.name.to_string(),
                export: exports::ALLOC,
                code: abi::STATUS_OUT_OF_MEMORY,
                kind: "out of memory",
                message: format!("could not allocate {len} bytes"),
            });
        }
        let size = self.memory()?.data_size(&self.store);
        if (ptr as usize).checked_add(len).is_none_or(|end| end > size) {
            return Err(self.out_of_bounds(
                exports::ALLOC,
                format!("allocation [{ptr}, {ptr}+{len}) outside its {size}-byte memory"),
            ));
        }
        Ok(ptr)
    }

    /// Copies `bytes` into a fresh plugin buffer.
    fn put(&mut self, bytes: &[u8], export: &'static str) -> Result<u32, PluginError> {
        let ptr = self.alloc(bytes.len(), export)?;
        let memory = self.memory()?;
        memory
            .write(&mut self.store, ptr as usize, bytes)
            .map_err(|_| self.out_of_bounds(export, format!("input buffer at {ptr}")))?;
        Ok(ptr)
    }

    fn free(&mut self, ptr: u32, len: u32) -> Result<(), PluginError> {
        if len == 0 {
            return Ok(());
        }
        let f = self.func::<(i32, i32), ()>(exports::FREE)?;
        f.call(&mut self.store, (ptr as i32, len as i32))
            .map_err(|e| self.classify(exports::FREE, e))
    }

    /// Reads the output buffer the plugin stored in the out slot, after checking it.
    fn take_output(&mut self, export: &'static str) -> Result<Vec<u8>, PluginError> {
        let memory = self.memory()?;
        let mut slot = [0u8; 8];
        memory
            .read(&self.store, self.out_slot as usize, &mut slot)
            .map_err(|_| self.out_of_bounds(export, "output slot".into()))?;
        let ptr = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
        let len = u32::from_le_bytes([slot[4], slot[5], slot[6], slot[7]]);
        let size = memory.data_size(&self.store);
        let end = ptr as usize + len as usize;
        if end > size {
            return Err(self.out_of_bounds(
                export,
                format!("output buffer [{ptr}, {ptr}+{len}) outside its {size}-byte memory"),
            ));
        }
        let out = memory.data(&self.store)[ptr as usize..end].to_vec();
        self.free(ptr, len)?;
        Ok(out)
    }

    fn run(&mut self, call: Call<'_>) -> Result<Vec<u8>, PluginError> {
        let export = call.export();
        // Clear the out slot so a plugin that never writes it yields an empty buffer.
        let memory = self.memory()?;
        let slot = self.out_slot as usize;
        memory
            .write(&mut self.store, slot, &[0u8; 8])
            .map_err(|_| self.out_of_bounds(export, "output slot".into()))?;
        let out = self.out_slot as i32;
        let (status, inputs) = match call {
            Call::SchedulerNew(cfg) => {
                let p = self.put(cfg, export)?;
                let f = self.func::<(i32, i32, i32), i32>(export)?;
                let r = f.call(&mut self.store, (p as i32, cfg.len() as i32, out));
                (r, vec![(p, cfg.len())])
            }
            Call::Scale(h, i, data) | Call::Step(h, i, data) | Call::AddNoise(h, i, data) => {
                let p = self.put(data, export)?;
                let f = self.func::<(i64, i32, i32, i32, i32), i32>(export)?;
                let r = f.call(
                    &mut self.store,
                    (h as i64, i as i32, p as i32, data.len() as i32, out),
                );
                (r, vec![(p, data.len())])
            }
            Call::PostProcess(params, data) | Call::PreProcess(params, data) => {
                let a = self.put(params, export)?;
                let b = self.put(data, export)?;
                let f = self.func::<(i32, i32, i32, i32, i32), i32>(export)?;
                let r = f.call(
                    &mut self.store,
                    (
                        a as i32,
                        params.len() as i32,
                        b as i32,
                        data.len() as i32,
                        out,
                    ),
                );
                (r, vec![(a, params.len()), (b, data.len())])
            }
        };
        let status = status.map_err(|e| self.classify(export, e))?;
        let bytes = self.take_output(export)?;
        for (ptr, len) in inputs {
            self.free(ptr, len as u32)?;
        }
        call::status(&self.name, export, status, bytes)
    }
}

impl Instance for WasmInstance {
    fn call(&mut self, call: Call<'_>) -> Result<Vec<u8>, PluginError> {
        if let Some(reason) = &self.poisoned {
            return Err(PluginError::Poisoned {
                plugin: self.name.to_string(),
                reason: reason.clone(),
            });
        }
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.timeout_ms));
        self.run(call)
    }

    fn drop_scheduler(&mut self, handle: u64) {
        if self.poisoned.is_some() {
            return;
        }
        self.store
            .set_epoch_deadline(deadline_ticks(self.limits.timeout_ms));
        if let Ok(f) = self.func::<i64, ()>(exports::SCHEDULER_DROP) {
            if let Err(e) = f.call(&mut self.store, handle as i64) {
                self.classify(exports::SCHEDULER_DROP, e);
            }
        }
    }
}
