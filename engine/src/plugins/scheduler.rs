//! [`PluginScheduler`]: a plugin's scheduler behind beeswax's [`Scheduler`] trait.

use std::sync::{Arc, Mutex, PoisonError};

use beeswax_plugin_sdk::abi;
use beeswax_plugin_sdk::wire::Schedule;
use candle_core::Tensor;

use super::abi::{decode_tensor, encode_tensor, scheduler_init, wire_dtype};
use super::call::{Call, Instance};
use super::host::LoadedPlugin;
use crate::noise::NoiseSource;
use crate::schedulers::{
    check_index, work_dtype, BuildContext, Scheduler, SchedulerConfig, SchedulerError,
};

/// One job's schedule from a plugin: the plugin keeps its state behind a handle in its own
/// instance (for WASM, a fresh instance per job).
pub struct PluginScheduler {
    name: Arc<str>,
    instance: Mutex<Box<dyn Instance>>,
    handle: u64,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
    wants_noise: bool,
    /// Keeps the plugin (and a native library) alive while the job runs.
    _plugin: Arc<LoadedPlugin>,
}

impl PluginScheduler {
    /// Asks `plugin` for a schedule of `context.steps` steps of `config` for a model of
    /// `context.kind`.
    pub fn new(
        plugin: Arc<LoadedPlugin>,
        config: &SchedulerConfig,
        context: &BuildContext,
    ) -> Result<Self, SchedulerError> {
        let steps = context.steps;
        let name = plugin.entry.name.clone();
        let invalid = |message: String| SchedulerError::Invalid {
            scheduler: name.clone(),
            message,
        };
        let init = scheduler_init(&name, config, context, &plugin.entry.params)?;
        let bytes = init.encode().map_err(|e| invalid(e.0))?;
        let mut instance = plugin.instance().map_err(|e| invalid(e.to_string()))?;
        let out = instance
            .call(Call::SchedulerNew(&bytes))
            .map_err(|e| invalid(e.to_string()))?;
        let schedule = Schedule::decode(&out)
            .map_err(|e| invalid(format!("plugin returned a malformed schedule: {e}")))?;
        let scheduler = Self {
            name: Arc::from(name.as_str()),
            instance: Mutex::new(instance),
            handle: schedule.handle,
            timesteps: schedule.timesteps,
            init_noise_sigma: schedule.init_noise_sigma,
            wants_noise: schedule.flags & abi::SCHEDULE_WANTS_NOISE != 0,
            _plugin: plugin,
        };
        if scheduler.timesteps.len() != steps {
            return Err(invalid(format!(
                "plugin returned {} timesteps for {steps} steps",
                scheduler.timesteps.len()
            )));
        }
        if scheduler.timesteps.iter().any(|t| !t.is_finite())
            || !(scheduler.init_noise_sigma.is_finite() && scheduler.init_noise_sigma > 0.0)
        {
            return Err(invalid(
                "plugin returned a non-finite timestep or a non-positive init_noise_sigma".into(),
            ));
        }
        Ok(scheduler)
    }

    fn call(&self, call: Call<'_>) -> candle_core::Result<Vec<u8>> {
        let mut instance = self.instance.lock().unwrap_or_else(PoisonError::into_inner);
        instance
            .call(call)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn decode(
        &self,
        bytes: &[u8],
        like: &Tensor,
        dtype: candle_core::DType,
    ) -> candle_core::Result<Tensor> {
        decode_tensor(bytes, like, dtype)
            .map_err(|e| candle_core::Error::Msg(format!("plugin {}: {e}", self.name)))
    }

    fn index(&self, index: usize) -> candle_core::Result<u32> {
        check_index(&self.name, index, self.timesteps.len())?;
        u32::try_from(index).map_err(|_| candle_core::Error::Msg("step index too large".into()))
    }
}

impl Scheduler for PluginScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        let i = self.index(index)?;
        let dtype = wire_dtype(sample);
        let mut buf = Vec::new();
        encode_tensor(sample, dtype, &mut buf)?;
        let out = self.call(Call::Scale(self.handle, i, &buf))?;
        self.decode(&out, sample, dtype)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let i = self.index(index)?;
        let dtype = work_dtype(model_output, sample);
        let mut buf = Vec::new();
        encode_tensor(model_output, dtype, &mut buf)?;
        encode_tensor(sample, dtype, &mut buf)?;
        if self.wants_noise {
            encode_tensor(&noise.randn_like(sample)?, dtype, &mut buf)?;
        }
        let out = self.call(Call::Step(self.handle, i, &buf))?;
        self.decode(&out, sample, dtype)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        let i = self.index(index)?;
        let dtype = work_dtype(original, noise);
        let mut buf = Vec::new();
        encode_tensor(original, dtype, &mut buf)?;
        encode_tensor(noise, dtype, &mut buf)?;
        let out = self.call(Call::AddNoise(self.handle, i, &buf))?;
        self.decode(&out, original, dtype)
    }
}

impl Drop for PluginScheduler {
    fn drop(&mut self) {
        let mut instance = self.instance.lock().unwrap_or_else(PoisonError::into_inner);
        instance.drop_scheduler(self.handle);
    }
}
