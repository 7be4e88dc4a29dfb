//! Turning a request from any of the three APIs into a validated job: the pipeline's
//! defaults filled in ([`crate::pipeline::resolve`], as the CLI does), then every value
//! checked against the pipeline's limits with an error naming the field as that API spells it.

use std::sync::Arc;

use super::catalog::{Catalog, Pipeline};
use super::errors::ApiError;
use super::image_job::ImageJob;
use super::samplers;
use crate::lora::{extract_lora_tags, LoraCatalog, LoraError, LoraRequest};
use crate::pipeline::{random_seed, resolve, JobRequest, TextToImage};
use crate::schedulers::Schedule;

/// Longest prompt accepted, in characters (CLIP reads 77 tokens; this only bounds memory).
pub const MAX_PROMPT_CHARS: usize = 20_000;

/// A generation request in neutral terms, before validation.
#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    /// Pipeline name (default: the catalog's first).
    pub pipeline: Option<String>,
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    pub negative_prompt: Option<String>,
    /// Denoising steps.
    pub steps: Option<i64>,
    /// Guidance scale.
    pub guidance: Option<f64>,
    /// Width in pixels.
    pub width: Option<i64>,
    /// Height in pixels.
    pub height: Option<i64>,
    /// Seed; negative means random.
    pub seed: Option<i64>,
    /// Images per iteration.
    pub batch: Option<i64>,
    /// Iterations (AUTOMATIC1111's `n_iter`); seeds continue across them.
    pub iterations: Option<i64>,
    /// Scheduler (sampler) name or alias.
    pub scheduler: Option<String>,
    /// Noise schedule name.
    pub schedule: Option<String>,
    /// CLIP skip (1 = last layer).
    pub clip_skip: Option<i64>,
    /// Emit a preview every this many steps.
    pub preview_every: Option<i64>,
    /// LoRAs by catalog name, applied after any `<lora:name:weight>` tags in the prompt.
    pub loras: Vec<LoraRequest>,
}

/// How an API spells each field, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct FieldNames {
    /// The pipeline field.
    pub pipeline: &'static str,
    /// The guidance field.
    pub guidance: &'static str,
    /// The width field.
    pub width: &'static str,
    /// The height field.
    pub height: &'static str,
    /// The batch field.
    pub batch: &'static str,
    /// The scheduler field.
    pub scheduler: &'static str,
    /// The schedule field.
    pub schedule: &'static str,
}

/// The native API's names.
pub const NATIVE: FieldNames = FieldNames {
    pipeline: "pipeline",
    guidance: "guidance",
    width: "width",
    height: "height",
    batch: "batch",
    scheduler: "scheduler",
    schedule: "schedule",
};

/// A validated job: the pipeline, the resolved text-to-image settings and how to run them.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    /// One iteration's settings (its `batch` images, seeds from `seed`).
    pub job: TextToImage,
    /// Iterations; iteration `k` starts at seed `seed + k × batch`.
    pub iterations: usize,
    /// Preview interval in steps, if previews were asked for.
    pub preview_every: Option<usize>,
    /// The picture (and mask) of an image-to-image or inpainting job; `None` for text to image.
    pub image: Option<ImageJob>,
    /// LoRAs asked for by field (the prompt's `<lora:...>` tags are still in `job.prompt`);
    /// names and weights checked against `lora_catalog`.
    pub loras: Vec<LoraRequest>,
    /// The catalog the worker resolves and reads the job's LoRAs through.
    pub lora_catalog: Arc<LoraCatalog>,
}

impl JobSpec {
    /// Images the job makes.
    pub fn images(&self) -> usize {
        self.job.batch * self.iterations
    }

    /// The seed of every image, in order.
    pub fn seeds(&self) -> Vec<u64> {
        (0..self.images() as u64)
            .map(|i| self.job.seed.wrapping_add(i))
            .collect()
    }

    /// Steps over all iterations.
    pub fn total_steps(&self) -> usize {
        self.job.steps * self.iterations
    }

    /// The settings used, as JSON (the native API's `parameters`).
    pub fn parameters(&self) -> serde_json::Value {
        let j = &self.job;
        serde_json::json!({
            "pipeline": self.pipeline.name,
            "pack": self.pipeline.pack,
            "prompt": j.prompt,
            "negative_prompt": j.negative_prompt,
            "steps": j.steps,
            "guidance": j.guidance,
            "width": j.width,
            "height": j.height,
            "seed": j.seed,
            "seeds": self.seeds(),
            "batch": j.batch,
            "iterations": self.iterations,
            "scheduler": j.scheduler,
            "clip_skip": j.clip_skip,
            "mode": self.image.as_ref().map_or("txt2img", |i| i.mode()),
            "strength": self.image.as_ref().map(|i| i.strength),
            "loras": self.loras,
        })
    }
}

/// Whole number `value` of field `name`, at least `min`.
fn at_least(value: Option<i64>, name: &str, min: i64) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v >= min => usize::try_from(v).map(Some).map_err(|_| {
            ApiError::invalid(name, "out_of_range", format!("{name} {v} is too large"))
        }),
        Some(v) => Err(ApiError::invalid(
            name,
            "out_of_range",
            format!("{name} must be at least {min} (got {v})"),
        )),
    }
}

fn over_limit(name: &str, value: usize, limit: usize, what: &str) -> ApiError {
    ApiError::invalid(
        name,
        "over_limit",
        format!(
            "{name} {value} is over this server's limit of {limit} {what}; ask for at most {limit}"
        ),
    )
}

/// Validates `req` against the catalog and the pipeline's limits.
pub fn validate(
    catalog: &Catalog,
    req: GenerateRequest,
    names: &FieldNames,
) -> Result<JobSpec, ApiError> {
    let pipeline = match &req.pipeline {
        Some(name) => catalog.get(name).ok_or_else(|| {
            ApiError::invalid(
                names.pipeline,
                "unknown_pipeline",
                format!(
                    "unknown {} `{name}`: available: {}",
                    names.pipeline,
                    catalog.names()
                ),
            )
        })?,
        None => catalog.default_pipeline().ok_or_else(|| {
            ApiError::invalid(
                names.pipeline,
                "unknown_pipeline",
                "no pipelines are configured",
            )
        })?,
    }
    .clone();
    let limits = pipeline.limits;
    let model = &pipeline.model;

    if req.prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            "over_limit",
            format!("prompt is longer than {MAX_PROMPT_CHARS} characters"),
        ));
    }
    if let Some(g) = req.guidance {
        if !(0.0..=100.0).contains(&g) {
            return Err(ApiError::invalid(
                names.guidance,
                "out_of_range",
                format!("{} must be between 0 and 100 (got {g})", names.guidance),
            ));
        }
    }
    if let Some(s) = &req.schedule {
        Schedule::parse(s).map_err(|e| {
            ApiError::invalid(
                names.schedule,
                "unknown_schedule",
                format!("{}: {e}", names.schedule),
            )
        })?;
    }
    let mut loras: Vec<LoraRequest> = (pipeline.lora_set.iter())
        .map(|name| LoraRequest {
            name: name.clone(),
            weight: None,
        })
        .collect();
    loras.extend(req.loras);
    check_loras(catalog.loras(), &req.prompt, &loras)?;
    let asked_schedule = req.schedule.is_some() && req.scheduler.is_none();
    let steps = at_least(req.steps, "steps", 1)?;
    let width = at_least(req.width, names.width, 1)?;
    let height = at_least(req.height, names.height, 1)?;
    let batch = at_least(req.batch, names.batch, 1)?;
    let iterations = at_least(req.iterations, "n_iter", 1)?.unwrap_or(1);
    let clip_skip = at_least(req.clip_skip, "clip_skip", 1)?;
    let preview_every = at_least(req.preview_every, "preview_every", 1)?;
    let seed = match req.seed {
        Some(s) if s >= 0 => s as u64,
        _ => random_seed(),
    };

    let job = resolve(
        model,
        &pipeline.defaults,
        JobRequest {
            prompt: req.prompt,
            negative_prompt: req.negative_prompt,
            steps,
            guidance: req.guidance,
            width,
            height,
            scheduler: req.scheduler,
            schedule: req.schedule,
            seed: Some(seed),
            batch,
            clip_skip,
            init_latents: None,
        },
    );

    let f = model.vae_scale_factor();
    for (name, value, limit) in [
        (names.width, job.width, limits.max_width),
        (names.height, job.height, limits.max_height),
    ] {
        if value % f != 0 {
            return Err(ApiError::invalid(
                name,
                "not_multiple",
                format!(
                    "{name} {value} is not a multiple of {f}: use e.g. {}",
                    value / f * f + f
                ),
            ));
        }
        if value > limit {
            return Err(over_limit(name, value, limit, "pixels"));
        }
    }
    if job.steps > limits.max_steps {
        return Err(over_limit("steps", job.steps, limits.max_steps, "steps"));
    }
    if job.batch * iterations > limits.max_images {
        return Err(over_limit(
            names.batch,
            job.batch * iterations,
            limits.max_images,
            "images per request",
        ));
    }
    if let Err(e) = samplers::check(&job.scheduler, &model.scheduler_config, job.steps) {
        let (param, code) = if asked_schedule {
            (names.schedule, "unknown_schedule")
        } else {
            (names.scheduler, "unknown_scheduler")
        };
        return Err(ApiError::invalid(param, code, format!("{param}: {e}")));
    }
    let layers = model.text_encoder.num_layers();
    if job.clip_skip > layers {
        return Err(ApiError::invalid(
            "clip_skip",
            "out_of_range",
            format!(
                "clip_skip {} is more than the text encoder's {layers} layers",
                job.clip_skip
            ),
        ));
    }
    Ok(JobSpec {
        pipeline,
        job,
        iterations,
        preview_every,
        image: None,
        loras,
        lora_catalog: catalog.loras().clone(),
    })
}

/// Checks the LoRAs of a request, tags in `prompt` then `fields`, against the catalog: known
/// names (never server file paths) and allowed weights. The files are read by the worker.
fn check_loras(
    catalog: &LoraCatalog,
    prompt: &str,
    fields: &[LoraRequest],
) -> Result<(), ApiError> {
    let (_, mut requests) = extract_lora_tags(prompt).map_err(|e| lora_error("prompt", &e))?;
    let from_prompt = requests.len();
    requests.extend(fields.iter().cloned());
    for (i, r) in requests.iter().enumerate() {
        let param = if i < from_prompt { "prompt" } else { "loras" };
        catalog
            .resolve(std::slice::from_ref(r), false)
            .map_err(|e| lora_error(param, &e))?;
    }
    Ok(())
}

/// A LoRA request error as a 400 on field `param`, with the library's message.
fn lora_error(param: &str, e: &LoraError) -> ApiError {
    let code = match e {
        LoraError::UnknownName { .. } => "unknown_lora",
        LoraError::WeightOutOfRange { .. } => "out_of_range",
        _ => "invalid_lora",
    };
    ApiError::invalid(param, code, e.to_string())
}
