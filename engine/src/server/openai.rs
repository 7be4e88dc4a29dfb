//! OpenAI Images: `POST /v1/images/generations`, answered when the images are ready.
//! `model` is a pipeline or pack name; errors use OpenAI's error shape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::{ApiError, JsonBody};
use super::jobs::{unix_secs, Job, Origin, Status};
use super::request::{validate, FieldNames, GenerateRequest, JobSpec};
use super::service::{CancelOnDrop, Service};
use super::site::Site;
use crate::prompt::PromptSyntax;

pub(super) const NAMES: FieldNames = FieldNames {
    pipeline: "model",
    guidance: "guidance",
    width: "size",
    height: "size",
    batch: "n",
    scheduler: "scheduler",
    schedule: "schedule",
    strength: "strength",
    refiner: "refiner",
};

/// The request body; OpenAI's other fields (`quality`, `style`, `user`, ...) are ignored.
/// `negative_prompt`, `steps`, `guidance`, `seed`, `scheduler` and `schedule` are beeswax
/// extras (the OpenAI client sends them with `extra_body`).
#[derive(Debug, Deserialize)]
pub struct GenerationsBody {
    prompt: String,
    model: Option<String>,
    n: Option<i64>,
    size: Option<String>,
    response_format: Option<String>,
    output_format: Option<String>,
    negative_prompt: Option<String>,
    steps: Option<i64>,
    guidance: Option<f64>,
    seed: Option<i64>,
    scheduler: Option<String>,
    schedule: Option<String>,
}

/// `size`: `WIDTHxHEIGHT` or `auto` (the pipeline's default).
pub(super) fn parse_size(size: Option<&str>) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let Some(size) = size
        .map(str::trim)
        .filter(|s| !s.eq_ignore_ascii_case("auto"))
    else {
        return Ok((None, None));
    };
    let parsed = size
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some((w, h)) => Ok((Some(w), Some(h))),
        None => Err(ApiError::invalid(
            "size",
            "invalid_size",
            format!("size `{size}` is not WIDTHxHEIGHT in pixels, e.g. `512x512`, or `auto`"),
        )),
    }
}

/// `response_format`: whether images are sent as base64 (`b64_json`) or as URLs (`url`).
pub(super) fn response_format(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("url") => Ok(false),
        Some("b64_json") => Ok(true),
        Some(other) => Err(ApiError::invalid(
            "response_format",
            "invalid_response_format",
            format!("response_format `{other}` is not supported: use `url` or `b64_json`"),
        )),
    }
}

/// The handler.
pub async fn generations(
    State(service): State<Arc<Service>>,
    Extension(site): Extension<Arc<Site>>,
    JsonBody(body): JsonBody<GenerationsBody>,
) -> Result<Json<Value>, ApiError> {
    if body.prompt.trim().is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "invalid_prompt",
            "prompt must not be empty",
        ));
    }
    let b64 = response_format(body.response_format.as_deref())?;
    if let Some(f) = body.output_format.as_deref().filter(|f| *f != "png") {
        return Err(ApiError::invalid(
            "output_format",
            "invalid_output_format",
            format!("output_format `{f}` is not supported: this server makes `png`"),
        ));
    }
    let (width, height) = parse_size(body.size.as_deref())?;
    let request = GenerateRequest {
        pipeline: body.model,
        prompt: body.prompt,
        negative_prompt: body.negative_prompt,
        steps: body.steps,
        guidance: body.guidance,
        true_cfg: None,
        width,
        height,
        seed: body.seed,
        batch: Some(body.n.unwrap_or(1)),
        iterations: None,
        scheduler: body.scheduler,
        schedule: body.schedule,
        clip_skip: None,
        // OpenAI clients send natural language: read it literally, as diffusers does.
        prompt_syntax: Some(PromptSyntax::Plain),
        pad_prompts: None,
        preview_every: None,
        loras: Vec::new(),
        image: None,
        pre_processors: Vec::new(),
        refiner: None,
        refiner_switch_at: None,
    };
    let not_found = |mut e: ApiError| {
        if e.code == "unknown_pipeline" || e.code == "pipeline_not_served" {
            e.status = StatusCode::NOT_FOUND;
            e.code = "model_not_found";
        }
        e
    };
    if service.model_less() {
        let submitted = service.submit_described(&request, &NAMES, Origin::OpenAi);
        let job = submitted.await.map_err(not_found)?;
        return answer(&service, job, b64, &site).await;
    }
    let spec = validate(&service, request, &NAMES).map_err(not_found)?;
    respond(&service, spec, b64, &site).await
}

/// Queues `spec`, waits for it and answers with OpenAI's images shape.
pub(super) async fn respond(
    service: &Arc<Service>,
    spec: JobSpec,
    b64: bool,
    site: &Site,
) -> Result<Json<Value>, ApiError> {
    let job = service.submit(spec, Origin::OpenAi).await?;
    answer(service, job, b64, site).await
}

/// Waits for `job` and answers with OpenAI's images shape.
pub(super) async fn answer(
    service: &Arc<Service>,
    job: Arc<Job>,
    b64: bool,
    site: &Site,
) -> Result<Json<Value>, ApiError> {
    let guard = CancelOnDrop::new(service.clone(), job.clone());
    let status = job.finished().await;
    guard.disarm();
    let s = job.state();
    match status {
        Status::Completed => {}
        Status::Cancelled => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "cancelled",
                "the job was cancelled before it finished",
            ))
        }
        _ => {
            return Err(ApiError::internal(
                s.error
                    .clone()
                    .unwrap_or_else(|| "the job failed".to_string()),
            ))
        }
    }
    let base = site.base_url();
    let data: Vec<Value> = s
        .images
        .iter()
        .enumerate()
        .map(|(n, png)| {
            if b64 {
                json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png)})
            } else {
                json!({"url": format!("{base}{}", job.image_path(n))})
            }
        })
        .collect();
    Ok(Json(json!({
        "created": unix_secs(job.created_at),
        "data": data,
        "output_format": "png",
        "size": format!(
            "{}x{}",
            job.summary.parameters["width"], job.summary.parameters["height"]
        ),
    })))
}
