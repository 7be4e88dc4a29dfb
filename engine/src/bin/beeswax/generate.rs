//! `beeswax generate`: flags, then pack defaults, then the model's own defaults; the job is
//! built and run exactly as the HTTP service does ([`beeswax::pipeline::resolve`] and
//! [`beeswax::pipeline::run`]).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use beeswax::defaults;
use beeswax::family::SizeConditioning;
use beeswax::image_out::{numbered_path, write_png};
use beeswax::lora;
use beeswax::manifest::ManifestFolder;
use beeswax::params::GenerationParams;
use beeswax::pipeline::{resolve, run as run_job, JobRequest, Refiner};
use candle_core::Device;

use crate::args::{GenerateArgs, Global};
use crate::{image_input, progress, source};

pub fn run(global: &Global, a: GenerateArgs) -> Result<()> {
    let files = source::read_manifests(global)?;
    let folder = files.as_ref().map(|f| f.parse()).transpose()?;
    let (_plugins, extensions) = extensions(global, folder.as_ref(), &a)?;
    let chosen = source::load(global, folder.as_ref(), &a.model)?;
    if a.vae_tiling {
        chosen
            .model
            .vae
            .set_tiling(beeswax::models::vae::Tiling::On);
    }
    let refiner = match &a.refiner {
        Some(spec) => Some(source::load_refiner(
            global,
            folder.as_ref(),
            spec,
            a.refiner_config.as_deref(),
        )?),
        None => None,
    };
    let job_loras = job_loras(global, folder.as_ref(), &a)?;
    let request = job_request(&a, &job_loras, refiner.as_ref())?;
    let job = resolve(
        &chosen.model,
        &chosen.defaults,
        &extensions.schedulers,
        request,
    )?;
    // Sampler, schedule and step count must work together before any model runs.
    job.check(&chosen.model)?;
    let sampler = extensions.schedulers.display_name(&job.sampler);
    let s = &job.settings;
    if !a.quiet {
        eprintln!(
            "{}: {} steps of {} at {}x{}, guidance {}, seed {}",
            chosen.name, s.steps, job.sampler, s.width, s.height, s.guidance, s.seed
        );
        if let (Some(r), Some(refiner)) = (&refiner, &job.refiner) {
            eprintln!(
                "refiner {} from {} of the schedule",
                r.name, refiner.switch_at
            );
        }
    }
    let applied = lora::apply(&chosen.model, &job_loras.loras)?;
    if !a.quiet {
        report_loras(&applied, &job_loras);
    }
    for w in applied.warnings() {
        eprintln!("warning: {w}");
    }
    let out = run_job(
        &applied.model,
        &job,
        &extensions,
        &mut progress::bar(a.quiet),
    )?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }

    write_outputs(
        &a,
        &job,
        &out,
        &sampler,
        &chosen.name,
        &job_loras.recorded_prompt,
    )
}

/// The samplers and processors (built-ins and the plugins'), with the embeddings; the names
/// the flags give are checked before any model loads, so unknown ones fail at once.
fn extensions(
    global: &Global,
    folder: Option<&ManifestFolder<'_>>,
    a: &GenerateArgs,
) -> Result<(beeswax::plugins::Plugins, beeswax::extensions::Extensions)> {
    let (plugins, mut extensions) = crate::plugins::load(folder)?;
    let embeddings = match folder {
        Some(folder) => beeswax::manifest::embeddings(folder)?,
        None => Vec::new(),
    };
    extensions.set_embeddings(&embeddings, a.embeddings.as_deref(), global.allow_download)?;
    if let Some(name) = &a.scheduler {
        extensions.schedulers.sampler(name, a.schedule.as_deref())?;
    }
    extensions.check_processors(beeswax::extensions::ProcessorKind::Pre, &a.pre)?;
    extensions.check_processors(beeswax::extensions::ProcessorKind::Post, &a.post)?;
    Ok((plugins, extensions))
}

/// The job the flags ask for: prompt (LoRA tags resolved), sizes, sampler, input picture,
/// processors and the refiner.
fn job_request(
    a: &GenerateArgs,
    job_loras: &lora::JobLoras,
    refiner: Option<&source::Chosen>,
) -> Result<JobRequest> {
    Ok(JobRequest {
        prompt: job_loras.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps.map(|v| v as usize),
        guidance: a.guidance,
        true_cfg: a.true_cfg,
        size_conditioning: SizeConditioning {
            original_size: a.original_size,
            crop_top_left: a.crop_top_left.unwrap_or_default(),
            target_size: a.target_size,
        },
        width: a.width.map(|v| v as usize),
        height: a.height.map(|v| v as usize),
        sampler: a.scheduler.clone(),
        schedule: a.schedule.clone(),
        seed: a.seed,
        batch: Some(a.batch as usize),
        clip_skip: a.clip_skip.map(|v| v as usize),
        prompt_syntax: a.prompt_syntax,
        pad_prompts: a.pad_prompts.then_some(true),
        input: image_input::read(a)?,
        pre_processors: a.pre.clone(),
        post_processors: a.post.clone(),
        refiner: refiner.map(|r| Refiner {
            name: r.name.clone(),
            model: r.model.clone(),
            switch_at: a.refiner_switch.unwrap_or(defaults::REFINER_SWITCH_AT),
        }),
    })
}

/// Writes each image as a PNG with its A1111 parameters (the prompt as recorded, LoRA tags
/// included), and the latents when `--output-latents` asks.
fn write_outputs(
    a: &GenerateArgs,
    job: &beeswax::pipeline::Job,
    out: &beeswax::pipeline::Generated,
    sampler: &str,
    model: &str,
    recorded_prompt: &str,
) -> Result<()> {
    let s = &job.settings;
    let output = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("beeswax-{}.png", s.seed)));
    for (i, image) in out.images.iter().enumerate() {
        let mut params = GenerationParams::for_image(job, i, sampler, model);
        params.prompt = recorded_prompt.to_string();
        params.set_embeddings(&out.embeddings);
        let path = numbered_path(&output, i, s.batch);
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

fn report_loras(applied: &lora::Applied, job_loras: &lora::JobLoras) {
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
