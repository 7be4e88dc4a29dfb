//! `beeswax bench`: UNet forward timings and whole-pipeline stage times with peak memory.

use anyhow::Result;
use beeswax::bench::{peak_rss_bytes, random_unet_held, random_unet_inputs, time_runs};
use beeswax::extensions::Extensions;
use beeswax::models::config_file::read_json;
use beeswax::models::unet::UNetConfig;
use beeswax::pipeline::{resolve, run as run_job, JobRequest};

use crate::args::{BenchCommand, BenchPipelineArgs, BenchUnetArgs, Global};
use crate::source;

pub fn run(global: &Global, command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Unet(a) => unet(global, a),
        BenchCommand::Pipeline(a) => pipeline(global, a),
        BenchCommand::Vae(a) => crate::bench_vae::run(global, a),
        BenchCommand::Scheduler(a) => crate::schedulers::bench(global, a),
    }
}

fn unet(global: &Global, a: BenchUnetArgs) -> Result<()> {
    let (device, dtype) = source::device_and_dtype(global)?;
    let config: UNetConfig = read_json(&a.config)?;
    let weights_dtype = source::weights_dtype(global)?;
    let model = random_unet_held(&config, dtype, weights_dtype, &device)?;
    let (latents, context) = random_unet_inputs(
        &config,
        a.batch,
        (a.height / 8, a.width / 8),
        dtype,
        &device,
    )?;
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
            "unet {}x{} batch {}: min {:.3} s, median {:.3} s over {} runs",
            a.width,
            a.height,
            a.batch,
            timing.min.as_secs_f64(),
            timing.median.as_secs_f64(),
            a.iters
        );
    }
    Ok(())
}

fn pipeline(global: &Global, a: BenchPipelineArgs) -> Result<()> {
    let files = source::read_manifests(global)?;
    let folder = files.as_ref().map(|f| f.parse()).transpose()?;
    let chosen = source::load(global, folder.as_ref(), &a.model)?;
    let request = JobRequest {
        prompt: a.prompt.clone(),
        steps: a.steps,
        guidance: a.guidance,
        width: a.width,
        height: a.height,
        sampler: a.scheduler.clone(),
        seed: Some(0),
        ..Default::default()
    };
    let extensions = Extensions::builtin();
    let job = resolve(
        &chosen.model,
        &chosen.defaults,
        &extensions.schedulers,
        request,
    )?;
    let model = &chosen.model;
    let start = std::time::Instant::now();
    let out = run_job(model, &job, &extensions, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    let total = start.elapsed().as_secs_f64();
    let t = &out.times;
    let s = &job.settings;
    let mean_step = t.denoising.as_secs_f64() / s.steps as f64;
    let peak_mb = peak_rss_bytes().map(|b| b as f64 / 1048576.0);
    if a.json {
        println!(
            "{{\"total_s\": {total:.4}, \"text_encoding_s\": {:.4}, \"mean_step_s\": {mean_step:.4}, \"decode_s\": {:.4}, \"peak_rss_mb\": {}}}",
            t.text_encoding.as_secs_f64(),
            t.decoding.as_secs_f64(),
            peak_mb.map_or("null".into(), |m| format!("{m:.1}"))
        );
    } else {
        println!(
            "pipeline {} {}x{}, {} steps of {}:",
            chosen.name, s.width, s.height, s.steps, job.sampler
        );
        println!("  text encoding {:>9.4} s", t.text_encoding.as_secs_f64());
        println!("  mean step     {mean_step:>9.4} s");
        println!("  vae decode    {:>9.4} s", t.decoding.as_secs_f64());
        println!("  total         {total:>9.4} s");
        if let Some(mb) = peak_mb {
            println!("  peak RSS      {mb:>9.1} MB");
        }
    }
    Ok(())
}
