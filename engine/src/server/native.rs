//! The native jobs API: `/v1/pipelines` and `/v1/jobs/...`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::catalog::Pipeline;
use super::errors::{ApiError, JsonBody};
use super::jobs::{unix_secs, Job, Origin, Status};
use super::params::PathParams;
use super::pictures::{self, Sent};
use super::request::{validate, GenerateRequest, NATIVE};
use super::service::{Cancelled, Service};
use crate::image_in::{mask_from_picture, AlphaMask, ResizeMode};
use crate::pipeline::{ImageRequest, MaskRequest, MaskedContent};
use crate::prompt::PromptSyntax;

/// `POST /v1/jobs` body. Unknown fields are refused so typos do not pass silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    pipeline: Option<String>,
    prompt: String,
    negative_prompt: Option<String>,
    steps: Option<i64>,
    guidance: Option<f64>,
    /// True CFG scale on FLUX (a negative pass with the negative prompt).
    true_cfg: Option<f64>,
    width: Option<i64>,
    height: Option<i64>,
    seed: Option<i64>,
    batch: Option<i64>,
    scheduler: Option<String>,
    schedule: Option<String>,
    clip_skip: Option<i64>,
    /// `a1111` (default), `comfy` or `plain`.
    prompt_syntax: Option<String>,
    /// Pad prompt and negative prompt to the same chunk count (default false).
    pad_prompts: Option<bool>,
    preview_every: Option<i64>,
    /// LoRAs by catalog name: `[{"name": "...", "weight": 0.8}]` (weight optional).
    #[serde(default)]
    loras: Vec<crate::lora::LoraRequest>,
    /// Image-to-image / inpainting: the picture, base64 (a data-URL prefix is allowed).
    init_image: Option<String>,
    /// Inpainting: the mask, base64 (white or opaque = repaint).
    mask: Option<String>,
    /// How much to repaint, in (0, 1] (default 0.75).
    strength: Option<f64>,
    /// `stretch` (default), `crop` or `fill`.
    resize: Option<String>,
    /// Mask blur in pixels (default 4).
    mask_blur: Option<f32>,
    /// `whole` (default) or `masked`.
    inpaint_area: Option<String>,
    /// Context pixels around the mask for `inpaint_area: masked` (default 32).
    inpaint_padding: Option<usize>,
    /// `original` (default), `fill` or `latent-noise`.
    masked_content: Option<String>,
    /// Pre-processors (plugin names) run on `init_image` and `mask`, after the pipeline's.
    #[serde(default)]
    pre_processors: Vec<String>,
    /// A pack (or pipeline) whose model finishes the denoising (SDXL's refiner); `""`: none,
    /// even when the pipeline names one.
    refiner: Option<String>,
    /// The share of the schedule the base runs before the refiner, in (0, 1) (default: the
    /// pipeline's, else 0.8).
    refiner_switch_at: Option<f64>,
}

/// The picture side of a native job, if it has one.
async fn image_request(
    service: &Service,
    body: &JobBody,
) -> Result<Option<ImageRequest>, ApiError> {
    let Some(init) = body.init_image.clone() else {
        if body.mask.is_some() {
            return Err(ApiError::invalid(
                "mask",
                "missing_image",
                "mask needs an init_image to inpaint",
            ));
        }
        return Ok(None);
    };
    let resize: ResizeMode = match &body.resize {
        None => ResizeMode::default(),
        Some(r) => r
            .parse()
            .map_err(|e: String| ApiError::invalid("resize", "invalid_value", e))?,
    };
    let content: Option<MaskedContent> = match &body.masked_content {
        None => None,
        Some(c) => Some(
            c.parse()
                .map_err(|e: String| ApiError::invalid("masked_content", "invalid_value", e))?,
        ),
    };
    let only_masked = match body.inpaint_area.as_deref() {
        None | Some("whole") => None,
        Some("masked") => Some(body.inpaint_padding),
        Some(other) => {
            return Err(ApiError::invalid(
                "inpaint_area",
                "invalid_value",
                format!("inpaint_area `{other}` is not `whole` or `masked`"),
            ))
        }
    };
    let mask = body.mask.clone();
    let (init, mask) = service
        .decoder
        .decode_with_mask(
            ("init_image", Sent::Base64(init)),
            mask.map(|m| ("mask", Sent::Base64(m))),
        )
        .await?;
    let mask = match mask {
        None => None,
        Some(picture) => {
            let mask = mask_from_picture(&picture, AlphaMask::OpaqueRepaints);
            pictures::check_mask("mask", &mask, &init.rgb)?;
            Some(MaskRequest {
                mask,
                blur: body.mask_blur,
                only_masked,
                content,
            })
        }
    };
    Ok(Some(ImageRequest {
        picture: init.rgb,
        strength: body.strength,
        resize: Some(resize),
        sample_posterior: false,
        init_noise: None,
        mask,
    }))
}

/// `GET /v1/pipelines`.
pub async fn pipelines(State(service): State<Arc<Service>>) -> Json<Value> {
    if let Some(list) = service.offered_pipelines() {
        return Json(json!({ "pipelines": list }));
    }
    let registry = &service.extensions.schedulers;
    let list: Vec<Value> = (service.catalog.all().iter())
        .map(|p| describe(p, registry))
        .collect();
    Json(json!({ "pipelines": list }))
}

/// What `/v1/pipelines` shows of `p` (fleet workers announce the same in their heartbeats).
pub fn describe(p: &Pipeline, registry: &crate::schedulers::Registry) -> Value {
    let d = &p.defaults;
    json!({
        "name": p.name,
        "kind": if p.is_pack { "pack" } else { "pipeline" },
        "pack": p.pack,
        "family": p.family.as_str(),
        "mode": p.mode.as_str(),
        "description": p.description,
        "defaults": {
            "steps": d.steps, "guidance": d.guidance, "width": d.width,
            "height": d.height, "scheduler": d.scheduler,
            "schedule": d.schedule,
            "negative_prompt": d.negative_prompt, "clip_skip": d.clip_skip,
            "prompt_syntax": d.prompt_syntax.unwrap_or_default(),
            "pad_prompts": d.pad_prompts.unwrap_or(false),
        },
        "limits": {
            "max_width": p.limits.max_width, "max_height": p.limits.max_height,
            "max_steps": p.limits.max_steps, "max_images": p.limits.max_images,
        },
        "post_processors": p.post_processors,
        "form": super::choices::form(p, registry),
        "pre_processors": p.pre_processors,
        "refiner": p.refiner,
        "refiner_switch_at": p.refiner.as_ref().map(|_| {
            p.refiner_switch_at.unwrap_or(crate::defaults::REFINER_SWITCH_AT)
        }),
    })
}

/// `POST /v1/jobs`: 202 with the job id and its URLs.
pub async fn create(
    State(service): State<Arc<Service>>,
    JsonBody(body): JsonBody<JobBody>,
) -> Result<Response, ApiError> {
    if body.strength.is_some() && body.init_image.is_none() {
        return Err(ApiError::invalid(
            "strength",
            "missing_image",
            "strength needs an init_image to start from",
        ));
    }
    let image = image_request(&service, &body).await?;
    let prompt_syntax = body
        .prompt_syntax
        .as_deref()
        .map(|s| {
            s.parse::<PromptSyntax>().map_err(|e| {
                ApiError::invalid("prompt_syntax", "unknown_prompt_syntax", e.to_string())
            })
        })
        .transpose()?;
    let request = GenerateRequest {
        pipeline: body.pipeline,
        prompt: body.prompt,
        negative_prompt: body.negative_prompt,
        steps: body.steps,
        guidance: body.guidance,
        true_cfg: body.true_cfg,
        width: body.width,
        height: body.height,
        seed: body.seed,
        batch: body.batch,
        iterations: None,
        scheduler: body.scheduler,
        schedule: body.schedule,
        clip_skip: body.clip_skip,
        prompt_syntax,
        pad_prompts: body.pad_prompts,
        preview_every: body.preview_every,
        loras: body.loras,
        image,
        pre_processors: body.pre_processors,
        refiner: body.refiner,
        refiner_switch_at: body.refiner_switch_at,
    };
    let job = if service.model_less() {
        (service.submit_described(&request, &NATIVE, Origin::Native)).await?
    } else {
        let spec = validate(&service, request, &NATIVE)?;
        service.submit(spec, Origin::Native).await?
    };
    let location = format!("/v1/jobs/{}", job.id);
    let body = job_json(&job);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// The job's status document.
pub fn job_json(job: &Job) -> Value {
    let s = job.state();
    let base = format!("/v1/jobs/{}", job.id);
    let images: Vec<String> = (0..s.images.len()).map(|n| job.image_path(n)).collect();
    json!({
        "id": job.id,
        "pipeline": job.summary.pipeline,
        "status": s.status,
        "position": s.position,
        "progress": { "step": s.step, "total": s.total },
        "created_at": unix_secs(job.created_at),
        "started_at": s.started_at.map(unix_secs),
        "finished_at": s.finished_at.map(unix_secs),
        "images": if s.status == Status::Completed { images } else { Vec::new() },
        "parameters": job.summary.parameters,
        "warnings": s.warnings,
        "error": s.error,
        "urls": {
            "self": base,
            "events": format!("{base}/events"),
            "images": format!("{base}/images/{{n}}"),
            "cancel": base,
        },
    })
}

async fn find(service: &Service, id: &str) -> Result<Arc<Job>, ApiError> {
    service.find_job(id).await.ok_or_else(|| {
        ApiError::not_found(
            "unknown_job",
            format!(
                "no job `{id}`: it never existed or finished more than {} s ago",
                service.config.keep_finished.as_secs()
            ),
        )
    })
}

/// `GET /v1/jobs/{id}`.
pub async fn status(
    State(service): State<Arc<Service>>,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    let job = find(&service, &id).await?;
    Ok(Json(job_json(&job)))
}

/// `GET /v1/jobs/{id}/images/{n}`: the PNG, with its `parameters` chunk.
pub async fn image(
    State(service): State<Arc<Service>>,
    PathParams((id, n)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let job = find(&service, &id).await?;
    let s = job.state();
    if s.status != Status::Completed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "not_completed",
            format!(
                "job `{id}` is {}: images are available once it completes",
                s.status.as_str()
            ),
        ));
    }
    let count = s.images.len();
    let png = n
        .parse::<usize>()
        .ok()
        .and_then(|n| s.images.get(n))
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_image",
                format!(
                    "job `{id}` has images 0 to {}; `{n}` is not one of them",
                    count.saturating_sub(1)
                ),
            )
        })?
        .clone();
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// `DELETE /v1/jobs/{id}`: cancels a waiting job at once (200), a running one at its next
/// step (202); 409 if it already finished.
pub async fn cancel(
    State(service): State<Arc<Service>>,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let job = find(&service, &id).await?;
    match service.cancel(&job) {
        Cancelled::Dequeued => Ok((StatusCode::OK, Json(job_json(&job))).into_response()),
        Cancelled::Stopping => Ok((StatusCode::ACCEPTED, Json(job_json(&job))).into_response()),
        Cancelled::AlreadyFinished(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "already_finished",
            format!("job `{id}` already finished ({})", status.as_str()),
        )),
    }
}
