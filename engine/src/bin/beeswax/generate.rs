//! `beeswax generate`: flags, then pack defaults, then the model's own defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use beeswax::image_out::{numbered_path, write_png};
use beeswax::params::GenerationParams;
use beeswax::pipeline::{resolve, text_to_image, JobRequest};
use beeswax::schedulers;
use candle_core::{Device, Tensor};

use crate::args::{GenerateArgs, Global};
use crate::{progress, source};

pub fn run(global: &Global, a: GenerateArgs) -> Result<()> {
    let chosen = source::load(global, &a.model)?;
    let request = JobRequest {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps.map(|v| v as usize),
        guidance: a.guidance,
        width: a.width.map(|v| v as usize),
        height: a.height.map(|v| v as usize),
        scheduler: a.scheduler.clone(),
        seed: a.seed,
        batch: Some(a.batch as usize),
        clip_skip: a.clip_skip.map(|v| v as usize),
        init_latents: match &a.init_latents {
            Some(path) => Some(read_latents(path)?),
            None => None,
        },
    };
    let job = resolve(&chosen.model, &chosen.defaults, request);
    let (model, seed, batch) = (&chosen.model, job.seed, job.batch);
    if !a.quiet {
        eprintln!(
            "{}: {} steps of {} at {}x{}, guidance {}, seed {seed}",
            chosen.name, job.steps, job.scheduler, job.width, job.height, job.guidance
        );
    }
    let out = text_to_image(model, &job, &mut progress::bar(a.quiet))?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }

    let output = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("beeswax-{seed}.png")));
    let sampler = display_name(&job.scheduler);
    for (i, image) in out.images.iter().enumerate() {
        let params = GenerationParams {
            prompt: job.prompt.clone(),
            negative_prompt: job.negative_prompt.clone(),
            steps: job.steps,
            sampler: sampler.clone(),
            guidance: job.guidance,
            seed: seed.wrapping_add(i as u64),
            width: job.width,
            height: job.height,
            model: chosen.name.clone(),
            clip_skip: job.clip_skip,
        };
        let path = numbered_path(&output, i, batch);
        write_png(&path, image, &params.to_a1111())?;
        if !a.quiet {
            eprintln!("wrote {}", path.display());
        }
    }
    if let Some(path) = &a.output_latents {
        let latents =
            HashMap::from([("latents".to_string(), out.latents.to_device(&Device::Cpu)?)]);
        candle_core::safetensors::save(&latents, path)
            .with_context(|| format!("writing latents to {}", path.display()))?;
    }
    Ok(())
}

/// The AUTOMATIC1111 display name of a scheduler (its first alias), for PNG parameters.
fn display_name(name: &str) -> String {
    schedulers::names()
        .into_iter()
        .find(|(canonical, aliases)| {
            canonical.eq_ignore_ascii_case(name.trim())
                || aliases.iter().any(|a| a.eq_ignore_ascii_case(name.trim()))
        })
        .map(|(canonical, aliases)| aliases.first().copied().unwrap_or(canonical).to_string())
        .unwrap_or_else(|| name.to_string())
}

/// Reads tensor `latents` from a safetensors file.
fn read_latents(path: &Path) -> Result<Tensor> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading --init-latents {}", path.display()))?;
    let names: Vec<String> = tensors.keys().cloned().collect();
    tensors.remove("latents").ok_or_else(|| {
        anyhow!(
            "--init-latents {}: no tensor named `latents` (found: {})",
            path.display(),
            names.join(", ")
        )
    })
}
