//! `beeswax schedulers` (every sampler and noise schedule with its aliases) and
//! `beeswax bench scheduler`.

use anyhow::{bail, Result};
use beeswax::bench::{random_unet, random_unet_inputs, time_runs};
use beeswax::extensions::Extensions;
use beeswax::models::config_file::read_json;
use beeswax::models::unet::UNetConfig;
use beeswax::noise::BatchNoise;
use beeswax::schedulers::{BuildContext, Registry, SchedulerConfig, SCHEDULES};
use candle_core::{DType, Device, Tensor};

use crate::args::{BenchSchedulerArgs, Global};

/// Prints two tab-separated tables, `# samplers` and `# schedules`: canonical name, aliases
/// (comma separated), for samplers the family kinds they drive (`diffusion`, `flow`), and a
/// summary per line. Every name printed is accepted by `generate` (on a family of a kind it
/// lists).
pub fn list(extensions: &Extensions) -> Result<()> {
    println!("# samplers (--scheduler; name, aliases, family kinds, summary)");
    for entry in extensions.schedulers.entries() {
        let kinds: Vec<&str> = entry.kinds.iter().map(|k| k.as_str()).collect();
        println!(
            "{}\t{}\t{}\t{}",
            entry.name,
            entry.aliases.join(", "),
            kinds.join(","),
            entry.summary
        );
    }
    println!("# schedules (--schedule, or appended to the sampler: \"DPM++ 2M Karras\")");
    for info in SCHEDULES {
        println!(
            "{}\t{}\t{}",
            info.name,
            info.aliases.join(", "),
            info.summary
        );
    }
    Ok(())
}

/// `beeswax bench scheduler`: the mean time of one scheduler call (`scale_model_input` plus
/// `step`) of every built-in sampler over a whole run, next to one UNet call, on
/// `[batch, 4, size, size]` f32 latents.
pub fn bench(global: &Global, a: BenchSchedulerArgs) -> Result<()> {
    let (device, _) = crate::source::device_and_dtype(global)?;
    if a.latent_size == 0 || a.batch == 0 {
        bail!("--latent-size and --batch must be at least 1");
    }
    let shape = [a.batch, 4, a.latent_size, a.latent_size];
    // Stable Diffusion 1.x's schedule.
    let config: SchedulerConfig = serde_json::from_str(
        r#"{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "steps_offset": 1, "clip_sample": false, "set_alpha_to_one": false}"#,
    )?;
    let steps = a.steps as usize;

    let unet = match &a.unet_config {
        Some(path) => Some(unet_step(path, &a, &device)?),
        None => None,
    };
    let rows = sampler_steps(&config, &shape, steps, &device)?;

    if a.json {
        let samplers: Vec<String> = rows
            .iter()
            .map(|(name, calls, s)| {
                format!("{{\"name\": \"{name}\", \"calls\": {calls}, \"step_s\": {s:.7}}}")
            })
            .collect();
        println!(
            "{{\"latents\": {:?}, \"unet_step_s\": {}, \"samplers\": [{}]}}",
            shape,
            unet.map_or("null".into(), |u| format!("{u:.5}")),
            samplers.join(", ")
        );
        return Ok(());
    }
    println!(
        "scheduler step cost on {}x4x{}x{} f32 latents, {steps} steps, best of 3 runs:",
        a.batch, a.latent_size, a.latent_size
    );
    if let Some(u) = unet {
        println!("  unet step      {:>10.3} ms", u * 1e3);
    }
    for (name, calls, s) in &rows {
        let share = unet.map_or(String::new(), |u| {
            format!("  ({:.1e} of a UNet step)", s / u)
        });
        println!(
            "  {name:<14} {:>10.3} ms per call, {calls} calls{share}",
            s * 1e3
        );
    }
    Ok(())
}

/// The median time of one UNet call with random weights for the config at `path`.
fn unet_step(path: &std::path::Path, a: &BenchSchedulerArgs, device: &Device) -> Result<f64> {
    let unet_config: UNetConfig = read_json(path)?;
    let model = random_unet(&unet_config, DType::F32, device)?;
    let (latents, context) = random_unet_inputs(
        &unet_config,
        a.batch,
        (a.latent_size, a.latent_size),
        DType::F32,
        device,
    )?;
    let timing = time_runs(a.iters as usize, || {
        let out = model.forward(&latents, 500.0, &context, None)?;
        device.synchronize()?;
        Ok(out)
    })?;
    Ok(timing.median.as_secs_f64())
}

/// Per built-in sampler: its name, calls per run and the best mean time of one call
/// (`scale_model_input` plus `step`) over three whole runs on latents of `shape`.
fn sampler_steps(
    config: &SchedulerConfig,
    shape: &[usize; 4],
    steps: usize,
    device: &Device,
) -> Result<Vec<(String, usize, f64)>> {
    let start = Tensor::randn(0f32, 1f32, &shape[..], device)?;
    let output = Tensor::randn(0f32, 1f32, &shape[..], device)?;
    let mut rows = Vec::new();
    for entry in Registry::with_builtins().entries() {
        let steps = if entry.name == "lcm" || entry.name == "tcd" {
            steps.min(config.original_inference_steps)
        } else {
            steps
        };
        let mut best = f64::INFINITY;
        let mut calls = 0;
        for _ in 0..3 {
            let mut sched = (entry.build)(config, &BuildContext::diffusion(steps))?;
            let mut noise = BatchNoise::new(0, shape[0]);
            let mut x = (&start * sched.init_noise_sigma())?;
            calls = sched.timesteps().len();
            let clock = std::time::Instant::now();
            for i in 0..calls {
                let _scaled = sched.scale_model_input(&x, i)?;
                x = sched.step(&output, i, &x, &mut noise)?;
            }
            to_host(&x, device)?;
            best = best.min(clock.elapsed().as_secs_f64() / calls as f64);
        }
        rows.push((entry.name.clone(), calls, best));
    }
    Ok(rows)
}

/// Waits for the device by copying a tensor to the host.
fn to_host(x: &Tensor, device: &Device) -> Result<()> {
    device.synchronize()?;
    x.to_device(&Device::Cpu)?;
    Ok(())
}
