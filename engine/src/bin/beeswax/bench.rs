//! `beeswax bench`: UNet forward timings and whole-pipeline stage times with peak memory.

use anyhow::Result;
use beeswax::bench::{random_unet_held, random_unet_inputs, time_runs};
use beeswax::models::config_file::read_json;
use beeswax::models::unet::UNetConfig;
use candle_core::Tensor;

use crate::args::{BenchCommand, BenchUnetArgs, Global};
use crate::source;

pub fn run(global: &Global, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Unet(a) => unet(global, a),
        BenchCommand::Pipeline(a) => crate::bench_pipeline::run(global, a),
        BenchCommand::Vae(a) => crate::bench_vae::run(global, a),
        BenchCommand::Scheduler(a) => crate::schedulers::bench(global, a),
    }
}

fn unet(global: &Global, a: BenchUnetArgs) -> Result<()> {
    let (device, dtype) = source::device_and_dtype(global)?;
    let config: UNetConfig = read_json(&a.config)?;
    let weights_dtype = source::weights_dtype(global)?;
    let model = random_unet_held(&config, dtype, weights_dtype, &device)?;
    let latent_hw = (a.height / 8, a.width / 8);
    let (latents, context) = if a.guidance_pair {
        let (latents, uncond) = random_unet_inputs(&config, a.batch, latent_hw, dtype, &device)?;
        let (_, cond) = random_unet_inputs(&config, a.batch, latent_hw, dtype, &device)?;
        (
            Tensor::cat(&[&latents, &latents], 0)?,
            Tensor::cat(&[&uncond, &cond], 0)?,
        )
    } else {
        random_unet_inputs(&config, a.batch, latent_hw, dtype, &device)?
    };
    let timing = time_runs(a.iters as usize, || {
        let out = model.forward(&latents, 500.0, &context, None)?;
        device.synchronize()?;
        Ok(out)
    })?;
    if a.json {
        println!(
            "{{\"min_s\": {:.4}, \"median_s\": {:.4}}}",
            timing.min.as_secs_f64(),
            timing.median.as_secs_f64()
        );
    } else {
        println!(
            "unet {}x{} batch {}{}: min {:.3} s, median {:.3} s over {} runs",
            a.width,
            a.height,
            a.batch,
            if a.guidance_pair {
                ", twice as a guidance pair"
            } else {
                ""
            },
            timing.min.as_secs_f64(),
            timing.median.as_secs_f64(),
            a.iters
        );
    }
    Ok(())
}
