//! What the host asks of a plugin instance, independent of how it runs (WASM or native).

use super::PluginError;

/// One ABI call with buffer arguments.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// `beeswax_scheduler_new(config)`.
    SchedulerNew(&'a [u8]),
    /// `beeswax_scheduler_scale(handle, index, tensors)`.
    Scale(u64, u32, &'a [u8]),
    /// `beeswax_scheduler_step(handle, index, tensors)`.
    Step(u64, u32, &'a [u8]),
    /// `beeswax_scheduler_add_noise(handle, index, tensors)`.
    AddNoise(u64, u32, &'a [u8]),
    /// `beeswax_postprocess(params, image)`.
    PostProcess(&'a [u8], &'a [u8]),
    /// `beeswax_preprocess(params, image + mask)`.
    PreProcess(&'a [u8], &'a [u8]),
}

impl Call<'_> {
    /// The export this call uses.
    pub fn export(&self) -> &'static str {
        use beeswax_plugin_sdk::abi::exports;
        match self {
            Call::SchedulerNew(_) => exports::SCHEDULER_NEW,
            Call::Scale(..) => exports::SCHEDULER_SCALE,
            Call::Step(..) => exports::SCHEDULER_STEP,
            Call::AddNoise(..) => exports::SCHEDULER_ADD_NOISE,
            Call::PostProcess(..) => exports::POSTPROCESS,
            Call::PreProcess(..) => exports::PREPROCESS,
        }
    }
}

/// A live plugin instance: one per scheduler job (WASM: its own store and memory) or a
/// shared library handle (native).
pub trait Instance: Send {
    /// Makes `call` and returns its output bytes; a non-OK status becomes
    /// [`PluginError::Status`] with the plugin's message.
    fn call(&mut self, call: Call<'_>) -> Result<Vec<u8>, PluginError>;

    /// `beeswax_scheduler_drop(handle)`; failures are ignored (the job is over).
    fn drop_scheduler(&mut self, handle: u64);
}

/// Turns a status and message into a result.
pub fn status(
    plugin: &str,
    export: &'static str,
    code: i32,
    out: Vec<u8>,
) -> Result<Vec<u8>, PluginError> {
    if code == beeswax_plugin_sdk::abi::STATUS_OK {
        return Ok(out);
    }
    let kind = match code {
        1 => "invalid input",
        2 => "unsupported",
        3 => "internal error",
        4 => "out of memory",
        _ => "unknown status",
    };
    let mut message = String::from_utf8_lossy(&out).into_owned();
    message.truncate(4096);
    Err(PluginError::Status {
        plugin: plugin.to_string(),
        export,
        code,
        kind,
        message,
    })
}
