//! Benchmark helpers: timing repeated runs, peak memory, and models with random weights so
//! that any diffusers config can be timed without its weights.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::weights::{gemm_layout, is_kept, is_kernel_weight, WeightsDtype};

use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::Result;

/// Minimum and median of timed runs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Fastest run.
    pub min: Duration,
    /// Median run.
    pub median: Duration,
}

/// Runs `f` once to warm up, then `iters` times, timing each run.
pub fn time_runs<T>(iters: usize, mut f: impl FnMut() -> Result<T>) -> Result<Timing> {
    f()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(Timing {
        min: times[0],
        median: times[times.len() / 2],
    })
}

/// Peak resident memory of this process so far (`VmHWM`), in bytes, where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How long this process has been running, from the kernel's record of its start
/// (`/proc/self/stat` start time against `/proc/uptime`, both in hundredths of a second), so
/// that a cold measurement includes loading the binary and everything before `main`. `None`
/// where the OS does not report it.
pub fn process_age() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count the fields after its closing ')'.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    // Field 22 (start time, in clock ticks since boot) is the 20th after the name.
    let start_ticks: f64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let now: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    // Linux reports /proc times in USER_HZ, which is 100 on every architecture.
    let age = now - start_ticks / 100.0;
    Some(Duration::from_secs_f64(age.max(0.0)))
}

/// A UNet with random weights for `config` (initialised like candle's layers: Kaiming for
/// weights, zeros and ones for biases and norms), for timing.
pub fn random_unet(
    config: &UNetConfig,
    dtype: DType,
    device: &Device,
) -> Result<UNet2DConditionModel> {
    random_unet_held(config, dtype, WeightsDtype::F32, device)
}

/// [`random_unet`] with its weight matrices and filters held in `weights_dtype` (f16 or bf16
/// for f32 compute on CPU, as a 16-bit file's are; see [`crate::weights::WeightsDtype`]).
pub fn random_unet_held(
    config: &UNetConfig,
    dtype: DType,
    weights_dtype: WeightsDtype,
    device: &Device,
) -> Result<UNet2DConditionModel> {
    let vb = VarBuilder::from_backend(
        Box::new(RandomWeights(weights_dtype)),
        dtype,
        device.clone(),
    );
    Ok(UNet2DConditionModel::new(vb, config)?)
}

/// Weights drawn from each layer's initialiser, in the layout the file loader gives them
/// ([`gemm_layout`]) and the dtype it holds them in, so that timings match a loaded model's.
struct RandomWeights(WeightsDtype);

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let held = self.0.held(DType::F32);
        let kept = is_kernel_weight(name, shape.dims()) && is_kept(held, dtype, device);
        // Drawn in the held dtype directly (an f32 draw narrowed after would leave its freed
        // buffer in the process's peak memory).
        let drawn = if kept { held } else { dtype };
        let tensor = init.var(shape, drawn, device)?.as_tensor().clone();
        gemm_layout(name, tensor)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights: {name} has no shape to draw from")
    }

    /// Like an empty `VarMap`: nothing exists until a layer asks for it.
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// Random UNet inputs: latents [batch, in_channels, h, w] and text states [batch, 77, D].
pub fn random_unet_inputs(
    config: &UNetConfig,
    batch: usize,
    latent_hw: (usize, usize),
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let plan = config
        .plan()
        .map_err(|m| crate::Error::invalid("unet config", "", m))?;
    let latents = Tensor::randn(
        0f32,
        1.0,
        (batch, config.in_channels, latent_hw.0, latent_hw.1),
        device,
    )?
    .to_dtype(dtype)?;
    let context = Tensor::randn(0f32, 1.0, (batch, 77, plan.cross_attention_dim[0]), device)?
        .to_dtype(dtype)?;
    Ok((latents, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn process_age_is_the_time_since_this_process_started() {
        let first = process_age().unwrap();
        // A test process is seconds or minutes old, never hours (boot time misread as start).
        assert!(first < Duration::from_secs(3600), "{first:?}");
        std::thread::sleep(Duration::from_millis(50));
        let later = process_age().unwrap();
        assert!(
            later >= first + Duration::from_millis(20),
            "{first:?} then {later:?}"
        );
    }
}
