//! `beeswax generate`: flags, then pack defaults, then the model's own defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use beeswax::image_out::{numbered_path, write_png};
use beeswax::lora;
use beeswax::manifest::ManifestFolder;
use beeswax::params::GenerationParams;
use beeswax::pipeline::{resolve, text_to_image, JobRequest};
use beeswax::schedulers;
use candle_core::{Device, Tensor};

use crate::args::{GenerateArgs, Global};
use crate::{image_job, progress, source};

pub fn run(global: &Global, a: GenerateArgs) -> Result<()> {
    let files = source::read_manifests(global)?;
    let folder = files.as_ref().map(|f| f.parse()).transpose()?;
    let plugins = crate::plugins::load(folder.as_ref())?;
    let post = crate::plugins::post_processors(&plugins, &a.post)?;
    let pre = crate::plugins::pre_processors(&plugins, &a.pre)?;
    crate::schedulers::check_names(a.scheduler.as_deref(), a.schedule.as_deref())?;
    let chosen = source::load(global, folder.as_ref(), &a.model)?;
    if a.vae_tiling {
        (chosen.model.vae_decoder).set_tiling(beeswax::models::vae::Tiling::On);
    }
    let job_loras = job_loras(global, folder.as_ref(), &a)?;
    let mut request = JobRequest {
        prompt: job_loras.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps.map(|v| v as usize),
        guidance: a.guidance,
        width: a.width.map(|v| v as usize),
        height: a.height.map(|v| v as usize),
        scheduler: a.scheduler.clone(),
        schedule: a.schedule.clone(),
        seed: a.seed,
        batch: Some(a.batch as usize),
        clip_skip: a.clip_skip.map(|v| v as usize),
        init_latents: match &a.init_latents {
            Some(path) => Some(read_latents(path)?),
            None => None,
        },
    };
    let image_input = match image_job::read(&a)? {
        Some(input) => Some(crate::plugins::apply_pre(&pre, input)?),
        None => None,
    };
    if let Some(input) = &image_input {
        let (w, h) = image_job::default_size(&a, input, chosen.model.vae_scale_factor());
        request.width = request.width.or(w);
        request.height = request.height.or(h);
    }
    let job = resolve(&chosen.model, &chosen.defaults, request);
    // Sampler, schedule and step count must work together before any model runs.
    schedulers::build(&job.scheduler, &chosen.model.scheduler_config, job.steps)?;
    let (model, seed, batch) = (&chosen.model, job.seed, job.batch);
    if !a.quiet {
        eprintln!(
            "{}: {} steps of {} at {}x{}, guidance {}, seed {seed}",
            chosen.name, job.steps, job.scheduler, job.width, job.height, job.guidance
        );
    }
    let applied = lora::apply(model, &job_loras.loras)?;
    if !a.quiet {
        for r in &applied.reports {
            eprintln!(
                "LoRA {} at {}: {} UNet and {} text-encoder weights",
                r.name,
                job_loras
                    .loras
                    .iter()
                    .find(|l| l.name == r.name)
                    .map_or(1.0, |l| l.weight),
                r.unet_layers,
                r.text_encoder_layers
            );
        }
        for note in &job_loras.notes {
            eprintln!("note: {note}");
        }
    }
    for w in applied.warnings() {
        eprintln!("warning: {w}");
    }
    let out = match &image_input {
        None => text_to_image(&applied.model, &job, &mut progress::bar(a.quiet))?,
        Some(input) => image_job::run(
            &applied.model,
            job.clone(),
            input,
            &a,
            &mut progress::bar(a.quiet),
        )?,
    };
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
            prompt: job_loras.recorded_prompt.clone(),
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
        let text = match &image_input {
            Some(input) => image_job::annotate(params.to_a1111(), &a, input),
            None => params.to_a1111(),
        };
        let image = crate::plugins::apply_post(&post, image)?;
        write_png(&path, &image, &text)?;
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

/// The job's LoRAs: `<lora:...>` tags in the prompt, then `--lora` flags, resolved through the
/// manifests' `[[lora]]`/`[[lora_set]]` entries (or as files).
fn job_loras(
    global: &Global,
    folder: Option<&ManifestFolder<'_>>,
    a: &GenerateArgs,
) -> Result<lora::JobLoras> {
    let mut catalog = match folder {
        Some(folder) => lora::LoraCatalog::from_manifests(folder)?,
        None => lora::LoraCatalog::default(),
    };
    catalog.range = a.lora_weight_range;
    catalog.allow_download = global.allow_download;
    let requests = a
        .loras
        .iter()
        .map(|s| lora::LoraRequest::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lora::prepare_job(&catalog, &a.prompt, &requests, true)?)
}

/// The AUTOMATIC1111 display name of a scheduler (its first alias), for PNG parameters,
/// followed by its schedule's when one is chosen (`DPM++ 2M Karras`).
fn display_name(name: &str) -> String {
    crate::schedulers::display_name(name)
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
