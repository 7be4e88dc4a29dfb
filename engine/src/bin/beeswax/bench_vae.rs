//! `beeswax bench vae`: one VAE decode at a given size, whole or tiled, or a tiny
//! autoencoder's (TAESD), with peak memory.

use anyhow::{Context, Result};
use beeswax::bench::{peak_rss_bytes, time_runs, Timing};
use beeswax::family::Vae;
use beeswax::model_files;
use beeswax::models::config_file::read_json;
use beeswax::models::vae::{Decoder, Tiling, VaeConfig};
use beeswax::weights::WeightSource;
use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::args::{BenchVaeArgs, Global};

pub fn run(global: &Global, a: BenchVaeArgs) -> Result<()> {
    let (device, dtype) = crate::source::device_and_dtype(global)?;
    if let Some(path) = &a.tiny {
        let vae = Vae::tiny(path, dtype, &device)
            .with_context(|| format!("loading the tiny autoencoder {}", path.display()))?;
        let z = latents(&a, vae.scale_factor(), vae.latent_channels(), &device)?;
        let timing = time_runs(a.iters as usize, || {
            let image = vae.decode(&z)?;
            device.synchronize()?;
            Ok(image)
        })?;
        return report(&a, timing, " (tiny)");
    }
    // Random weights live in the VarMap for as long as the decoder.
    let varmap = VarMap::new();
    let (config, vb) = match (&a.model, &a.config) {
        (Some(dir), _) => {
            let config: VaeConfig = read_json(&model_files::config(dir, "vae", "config.json")?)?;
            let path = model_files::weights(dir, "vae", "diffusion_pytorch_model")?;
            (
                config,
                WeightSource::open(&path)?.var_builder(dtype, &device),
            )
        }
        (None, Some(file)) => {
            let config: VaeConfig = read_json(file)?;
            (config, VarBuilder::from_varmap(&varmap, dtype, &device))
        }
        (None, None) => anyhow::bail!("give --config FILE (random weights) or --model DIR"),
    };
    let decoder = Decoder::new(vb, &config).context("building the VAE decoder")?;
    decoder.set_tiling(if a.tiling { Tiling::On } else { Tiling::Off });
    let f = 1usize << config.block_out_channels.len().saturating_sub(1);
    let z = latents(&a, f, config.latent_channels, &device)?.to_dtype(dtype)?;
    let timing = time_runs(a.iters as usize, || {
        let image = decoder.forward(&z)?;
        device.synchronize()?;
        Ok(image)
    })?;
    report(&a, timing, if a.tiling { " (tiled)" } else { "" })
}

/// Random latents for a `--width` x `--height` image of a VAE that shrinks by `f`.
fn latents(a: &BenchVaeArgs, f: usize, channels: usize, device: &Device) -> Result<Tensor> {
    if a.width % f != 0 || a.height % f != 0 {
        anyhow::bail!(
            "--width and --height must be multiples of {f}, got {}x{}",
            a.width,
            a.height
        );
    }
    Ok(Tensor::randn(
        0f32,
        1.0,
        (1, channels, a.height / f, a.width / f),
        device,
    )?)
}

fn report(a: &BenchVaeArgs, timing: Timing, what: &str) -> Result<()> {
    let peak_mb = peak_rss_bytes().map(|b| b as f64 / 1048576.0);
    if a.json {
        println!(
            "{{\"min_s\": {:.4}, \"median_s\": {:.4}, \"peak_rss_mb\": {}}}",
            timing.min.as_secs_f64(),
            timing.median.as_secs_f64(),
            peak_mb.map_or("null".into(), |m| format!("{m:.1}"))
        );
    } else {
        println!(
            "vae decode {}x{}{what}: min {:.3} s, median {:.3} s over {} runs",
            a.width,
            a.height,
            timing.min.as_secs_f64(),
            timing.median.as_secs_f64(),
            a.iters
        );
        if let Some(mb) = peak_mb {
            println!("  peak RSS {mb:.1} MB");
        }
    }
    Ok(())
}
