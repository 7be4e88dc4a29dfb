//! Turning a request from any of the three APIs into a validated job: the pipeline's
//! defaults filled in ([`crate::pipeline::resolve`], as the CLI does), then every value
//! checked against the pipeline's limits and [`crate::pipeline::Job::check`], with an error
//! naming the field as that API spells it.

use std::sync::Arc;

use super::catalog::Pipeline;
use super::errors::ApiError;
use super::service::Service;
use crate::lora::{extract_lora_tags, LoraCatalog, LoraError, LoraRequest};
use crate::pipeline::{random_seed, resolve, ImageRequest, InputRequest, Job, JobRequest, Refiner};
use crate::prompt::PromptSyntax;
use crate::schedulers::Schedule;
use crate::{defaults, limits, Error};

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
    /// True CFG scale on families with distilled guidance (FLUX-dev's negative pass).
    pub true_cfg: Option<f64>,
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
    /// How the prompts are read (default: the pipeline's, else a1111).
    pub prompt_syntax: Option<PromptSyntax>,
    /// Pad prompt and negative prompt to the same chunk count.
    pub pad_prompts: Option<bool>,
    /// Emit a preview every this many steps.
    pub preview_every: Option<i64>,
    /// LoRAs by catalog name, applied after any `<lora:name:weight>` tags in the prompt.
    pub loras: Vec<LoraRequest>,
    /// The picture (and mask) of an image-to-image or inpainting job.
    pub image: Option<ImageRequest>,
    /// Pre-processors to run on the picture, after the pipeline's own.
    pub pre_processors: Vec<String>,
    /// A pack (or pipeline) of the catalog whose model finishes the denoising (default: the
    /// pipeline's `refiner`).
    pub refiner: Option<String>,
    /// The share of the schedule the base runs before the refiner, in (0, 1) (default: the
    /// pipeline's, else 0.8).
    pub refiner_switch_at: Option<f64>,
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
    /// The strength field.
    pub strength: &'static str,
    /// The refiner field.
    pub refiner: &'static str,
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
    strength: "strength",
    refiner: "refiner",
};

impl FieldNames {
    /// The field an engine error about `name` (see [`crate::pipeline::Job::check`]) is about.
    fn field(&self, name: &str) -> &'static str {
        match name {
            "guidance" => self.guidance,
            "width" => self.width,
            "height" => self.height,
            "batch" => self.batch,
            "strength" => self.strength,
            "steps" => "steps",
            "prompt" => "prompt",
            "clip skip" => "clip_skip",
            "mask blur" => "mask_blur",
            "inpaint padding" => "inpaint_padding",
            "pre-processor" => "pre_processors",
            "post-processor" => "post_processors",
            "refiner switch" => "refiner_switch_at",
            _ => "request",
        }
    }
}

/// A validated job: the pipeline, the resolved job and how to run it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    /// One iteration's job (its `batch` images, seeds from `seed`).
    pub job: Job,
    /// Iterations; iteration `k` starts at seed `seed + k × batch`.
    pub iterations: usize,
    /// Preview interval in steps, if previews were asked for.
    pub preview_every: Option<usize>,
    /// LoRAs asked for by field (the prompt's `<lora:...>` tags are still in the prompt);
    /// names and weights checked against `lora_catalog`.
    pub loras: Vec<LoraRequest>,
    /// The catalog the worker resolves and reads the job's LoRAs through.
    pub lora_catalog: Arc<LoraCatalog>,
    /// The sampler's AUTOMATIC1111 display name (`DPM++ 2M Karras`).
    pub sampler_name: String,
    /// The request as received, when it carries no picture: what a fleet API node publishes
    /// for a worker to validate again (see [`crate::fleet`]).
    pub text_request: Option<GenerateRequest>,
}

impl JobSpec {
    /// Images the job makes.
    pub fn images(&self) -> usize {
        self.job.settings.batch.saturating_mul(self.iterations)
    }

    /// The seed of every image, in order.
    pub fn seeds(&self) -> Vec<u64> {
        (0..self.images() as u64)
            .map(|i| self.job.settings.seed.wrapping_add(i))
            .collect()
    }

    /// Steps over all iterations.
    pub fn total_steps(&self) -> usize {
        self.job.settings.steps.saturating_mul(self.iterations)
    }

    /// The settings used, as JSON (the native API's `parameters`).
    pub fn parameters(&self) -> serde_json::Value {
        let j = &self.job.settings;
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
            "scheduler": self.job.sampler.name,
            "schedule": self.job.sampler.schedule_name(),
            "sampler": self.sampler_name,
            "clip_skip": j.clip_skip,
            "mode": self.job.input.mode(),
            // "" (no refiner) when the pipeline has one the request turned off.
            "refiner": match (&self.job.refiner, &self.pipeline.refiner) {
                (Some(r), _) => Some(r.name.as_str()),
                (None, Some(_)) => Some(""),
                (None, None) => None,
            },
            "refiner_switch_at": self.job.refiner.as_ref().map(|r| r.switch_at),
            "strength": self.job.input.image().map(|i| i.strength),
            "loras": self.loras,
            "pre_processors": self.job.pre_processors,
            "post_processors": self.job.post_processors,
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

/// The pipeline `req` names, else the catalog's first.
fn pipeline(
    service: &Service,
    req: &GenerateRequest,
    names: &FieldNames,
) -> Result<Arc<Pipeline>, ApiError> {
    let catalog = &service.catalog;
    match &req.pipeline {
        Some(name) => catalog.get(name).cloned().ok_or_else(|| {
            ApiError::invalid(
                names.pipeline,
                "unknown_pipeline",
                format!(
                    "unknown {} `{name}`: available: {}",
                    names.pipeline,
                    catalog.names()
                ),
            )
        }),
        None => catalog.default_pipeline().cloned().ok_or_else(|| {
            ApiError::invalid(
                names.pipeline,
                "unknown_pipeline",
                "no pipelines are configured",
            )
        }),
    }
}

/// Validates `req` against the service's catalog, extensions and the pipeline's limits.
pub fn validate(
    service: &Service,
    req: GenerateRequest,
    names: &FieldNames,
) -> Result<JobSpec, ApiError> {
    let pipeline = pipeline(service, &req, names)?;
    let text_request = req.image.is_none().then(|| req.clone());
    let extensions = &service.extensions;
    check_values(&req, names)?;
    let mut loras: Vec<LoraRequest> = (pipeline.lora_set.iter())
        .map(|name| LoraRequest {
            name: name.clone(),
            weight: None,
        })
        .collect();
    loras.extend(req.loras.iter().cloned());
    check_loras(service.catalog.loras(), &req.prompt, &loras)?;
    let asked_schedule = req.schedule.is_some() && req.scheduler.is_none();
    let iterations = at_least(req.iterations, "n_iter", 1)?.unwrap_or(1);
    let preview_every = at_least(req.preview_every, "preview_every", 1)?;
    let refiner = refiner(service, &pipeline, &req, names)?;
    let mut request = job_request(&pipeline, req, names)?;
    request.refiner = refiner;
    let job = resolve(
        &pipeline.model,
        &pipeline.defaults,
        &extensions.schedulers,
        request,
    )
    .map_err(|e| {
        let (param, code) = if asked_schedule {
            (names.schedule, "unknown_schedule")
        } else {
            (names.scheduler, "unknown_scheduler")
        };
        ApiError::invalid(param, code, format!("{param}: {e}"))
    })?;
    check_limits(&pipeline, &job, iterations, names)?;
    if let Some(refiner) = &job.refiner {
        refiner.check(&pipeline.model, &job.settings).map_err(|e| {
            let field = match &e {
                Error::InvalidArgument { name, .. } => names.field(name),
                _ => names.refiner,
            };
            ApiError::invalid(field, "invalid_refiner", format!("{field}: {e}"))
        })?;
    }
    job.check(&pipeline.model)
        .and_then(|()| {
            crate::pipeline::check_scheduler(&pipeline.model, &job, &extensions.schedulers)
        })
        .map_err(|e| engine_error(e, names, asked_schedule))?;
    Ok(JobSpec {
        sampler_name: extensions.schedulers.display_name(&job.sampler),
        pipeline,
        job,
        iterations,
        preview_every,
        loras,
        lora_catalog: service.catalog.loras().clone(),
        text_request,
    })
}

/// The refiner the request (else the pipeline) names, looked up in the catalog, with its
/// switch point (the request's, else the pipeline's, else [`crate::defaults::REFINER_SWITCH_AT`]).
fn refiner(
    service: &Service,
    pipeline: &Pipeline,
    req: &GenerateRequest,
    names: &FieldNames,
) -> Result<Option<Refiner>, ApiError> {
    let asked = req.refiner.as_deref().map(str::trim);
    let name = match asked {
        Some("") => None,
        Some(name) => Some(name),
        None => pipeline.refiner.as_deref(),
    };
    let Some(name) = name else {
        if req.refiner_switch_at.is_some() && asked.is_none() {
            return Err(ApiError::invalid(
                "refiner_switch_at",
                "missing_refiner",
                format!(
                    "refiner_switch_at needs a refiner: name one in {} (available: {})",
                    names.refiner,
                    service.catalog.names()
                ),
            ));
        }
        return Ok(None);
    };
    let switch_at = req
        .refiner_switch_at
        .or(pipeline.refiner_switch_at)
        .unwrap_or(defaults::REFINER_SWITCH_AT);
    if !limits::switch_at_ok(switch_at) {
        return Err(ApiError::invalid(
            "refiner_switch_at",
            "out_of_range",
            format!(
                "refiner_switch_at {switch_at} must be above 0 and below 1 (the share of the \
                 schedule the base runs before the refiner)"
            ),
        ));
    }
    let Some(found) = service.catalog.get(name) else {
        return Err(ApiError::invalid(
            names.refiner,
            "unknown_refiner",
            format!(
                "unknown {} `{name}`: available: {}",
                names.refiner,
                service.catalog.names()
            ),
        ));
    };
    Ok(Some(Refiner {
        name: found.pack.clone(),
        model: (*found.model).clone(),
        switch_at,
    }))
}

/// The request's values that need no model: the prompt's length, guidance, schedule name.
fn check_values(req: &GenerateRequest, names: &FieldNames) -> Result<(), ApiError> {
    if req.prompt.chars().count() > limits::PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            "over_limit",
            format!("prompt is longer than {} characters", limits::PROMPT_CHARS),
        ));
    }
    if let Some(g) = req.guidance {
        if !limits::GUIDANCE.contains(&g) {
            return Err(ApiError::invalid(
                names.guidance,
                "out_of_range",
                format!(
                    "{} must be {} (got {g})",
                    names.guidance,
                    limits::describe(&limits::GUIDANCE)
                ),
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
    Ok(())
}

/// The request in the engine's terms, the pipeline's processors first.
fn job_request(
    pipeline: &Pipeline,
    req: GenerateRequest,
    names: &FieldNames,
) -> Result<JobRequest, ApiError> {
    let seed = match req.seed {
        Some(s) if s >= 0 => s as u64,
        _ => random_seed(),
    };
    let mut pre_processors = pipeline.pre_processors.clone();
    pre_processors.extend(req.pre_processors);
    Ok(JobRequest {
        steps: at_least(req.steps, "steps", 1)?,
        width: at_least(req.width, names.width, 1)?,
        height: at_least(req.height, names.height, 1)?,
        batch: at_least(req.batch, names.batch, 1)?,
        clip_skip: at_least(req.clip_skip, "clip_skip", 1)?,
        prompt_syntax: req.prompt_syntax,
        pad_prompts: req.pad_prompts,
        prompt: req.prompt,
        negative_prompt: req.negative_prompt,
        guidance: req.guidance,
        true_cfg: req.true_cfg,
        size_conditioning: Default::default(),
        sampler: req.scheduler,
        schedule: req.schedule,
        seed: Some(seed),
        input: match req.image {
            Some(image) => InputRequest::Image(image),
            None => InputRequest::Text,
        },
        pre_processors,
        post_processors: pipeline.post_processors.clone(),
        refiner: None,
    })
}

/// The pipeline's limits: size, steps, images.
fn check_limits(
    pipeline: &Pipeline,
    job: &Job,
    iterations: usize,
    names: &FieldNames,
) -> Result<(), ApiError> {
    let (limits, s) = (pipeline.limits, &job.settings);
    let f = pipeline.model.vae_scale_factor();
    for (name, value, limit) in [
        (names.width, s.width, limits.max_width),
        (names.height, s.height, limits.max_height),
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
    if s.steps > limits.max_steps {
        return Err(over_limit("steps", s.steps, limits.max_steps, "steps"));
    }
    match s.batch.checked_mul(iterations) {
        Some(images) if iterations == 1 && images > limits.max_images => {
            return Err(over_limit(
                names.batch,
                images,
                limits.max_images,
                "images per request",
            ));
        }
        Some(images) if images <= limits.max_images => {}
        _ => {
            return Err(ApiError::invalid(
                names.batch,
                "over_limit",
                format!(
                    "{} {} × {iterations} iterations is over this server's limit of {} images \
                     per request; ask for at most {} in all",
                    names.batch, s.batch, limits.max_images, limits.max_images
                ),
            ))
        }
    }
    Ok(())
}

/// An engine validation error as a 400 on the field the API calls it.
fn engine_error(e: Error, names: &FieldNames, asked_schedule: bool) -> ApiError {
    match e {
        Error::InvalidArgument { ref name, .. } => {
            let field = names.field(name);
            ApiError::invalid(field, "out_of_range", format!("{field}: {e}"))
        }
        Error::Scheduler(_) => {
            let (param, code) = if asked_schedule {
                (names.schedule, "unknown_schedule")
            } else {
                (names.scheduler, "unknown_scheduler")
            };
            ApiError::invalid(param, code, format!("{param}: {e}"))
        }
        other => ApiError::invalid("request", "invalid_request", other.to_string()),
    }
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
