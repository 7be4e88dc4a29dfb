//! AUTOMATIC1111 web UI API: `/sdapi/v1/txt2img`, `progress`, `interrupt`, `sd-models`,
//! `samplers`, `schedulers`, `options`, `scripts`, with A1111's field names and shapes.
//! Unknown request fields are ignored, as A1111 does (clients send `enable_hr` and friends).

use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::{A1111Error, A1111Json, ApiError};
use super::jobs::{Job, Origin, Status};
use super::params::A1111Query;
use super::request::{validate, FieldNames, GenerateRequest, JobSpec};
use super::service::{CancelOnDrop, Service};
use crate::prompt::PromptSyntax;
use crate::schedulers::{self, SCHEDULES};

pub(super) const NAMES: FieldNames = FieldNames {
    pipeline: "override_settings.sd_model_checkpoint",
    guidance: "cfg_scale",
    width: "width",
    height: "height",
    batch: "batch_size",
    scheduler: "sampler_name",
    schedule: "scheduler",
    strength: "denoising_strength",
    refiner: "refiner_checkpoint",
};

/// Live previews of A1111 jobs every this many steps (A1111's `show_progress_every_n_steps`).
pub const PREVIEW_EVERY: usize = 5;

/// `override_settings`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OverrideSettings {
    sd_model_checkpoint: Option<String>,
    #[serde(rename = "CLIP_stop_at_last_layers")]
    clip_stop_at_last_layers: Option<i64>,
}

/// The txt2img request (the fields beeswax uses).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Txt2ImgBody {
    prompt: String,
    negative_prompt: Option<String>,
    steps: Option<i64>,
    cfg_scale: Option<f64>,
    width: Option<i64>,
    height: Option<i64>,
    seed: Option<i64>,
    sampler_name: Option<String>,
    sampler_index: Option<String>,
    scheduler: Option<String>,
    batch_size: Option<i64>,
    n_iter: Option<i64>,
    clip_skip: Option<i64>,
    override_settings: Option<OverrideSettings>,
    pub(super) send_images: Option<bool>,
    /// A1111's refiner: a checkpoint title (`None` or empty: no refiner).
    refiner_checkpoint: Option<String>,
    /// The share of the steps before the refiner takes over (A1111's default 0.8).
    refiner_switch_at: Option<f64>,
}

/// The pipeline an A1111 checkpoint title names: `name`, `name.safetensors`, `name [hash]`.
fn checkpoint<'a>(service: &Service, title: &'a str) -> &'a str {
    let t = title.trim();
    let t = t.rsplit_once(" [").map_or(t, |(name, _)| name);
    let t = [".safetensors", ".ckpt"]
        .iter()
        .find_map(|ext| t.strip_suffix(ext))
        .unwrap_or(t);
    if service.catalog.get(t).is_some() {
        t
    } else {
        title
    }
}

/// A txt2img (or img2img) body in neutral terms, with the checkpoint it names or selected.
pub(super) fn request(service: &Service, body: Txt2ImgBody) -> GenerateRequest {
    let overrides = body.override_settings.unwrap_or_default();
    let selected = service
        .a1111_checkpoint
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let model = overrides
        .sd_model_checkpoint
        .or(selected)
        .map(|m| checkpoint(service, &m).to_string());
    let schedule = body
        .scheduler
        .filter(|s| !s.trim().is_empty() && !s.eq_ignore_ascii_case("automatic"));
    GenerateRequest {
        pipeline: model,
        prompt: body.prompt,
        negative_prompt: body.negative_prompt.filter(|n| !n.is_empty()),
        steps: body.steps,
        guidance: body.cfg_scale,
        true_cfg: None,
        width: body.width,
        height: body.height,
        seed: body.seed,
        batch: body.batch_size,
        iterations: body.n_iter,
        scheduler: body
            .sampler_name
            .or(body.sampler_index)
            .filter(|s| !s.is_empty()),
        schedule,
        clip_skip: body.clip_skip.or(overrides.clip_stop_at_last_layers),
        // A1111 reads every prompt in its own syntax, whatever the pipeline's default.
        prompt_syntax: Some(PromptSyntax::A1111),
        pad_prompts: None,
        preview_every: Some(PREVIEW_EVERY as i64),
        // `<lora:name:weight>` tags stay in the prompt: the worker parses them out.
        loras: Vec::new(),
        image: None,
        pre_processors: Vec::new(),
        // A1111 sends `refiner_checkpoint: "None"` or "" for no refiner, and its switch then.
        // Without `refiner_checkpoint` the pipeline's own refiner (if any) runs.
        refiner_switch_at: body
            .refiner_switch_at
            .filter(|_| body.refiner_checkpoint.is_some()),
        refiner: body.refiner_checkpoint.map(|title| match title.trim() {
            "" | "None" => String::new(),
            t => checkpoint(service, t).to_string(),
        }),
    }
}

/// `POST /sdapi/v1/txt2img`.
pub async fn txt2img(
    State(service): State<Arc<Service>>,
    A1111Json(body): A1111Json<Txt2ImgBody>,
) -> Result<Json<Value>, A1111Error> {
    let send_images = body.send_images.unwrap_or(true);
    let request = request(&service, body);
    if service.model_less() {
        return run_described(&service, &request, send_images).await;
    }
    let spec = validate(&service, request, &NAMES)?;
    run(&service, spec, send_images).await
}

/// Publishes `request` from an API node without models, waits for it and answers as A1111
/// does.
pub(super) async fn run_described(
    service: &Arc<Service>,
    request: &GenerateRequest,
    send_images: bool,
) -> Result<Json<Value>, A1111Error> {
    let job = (service.submit_described(request, &NAMES, Origin::A1111)).await?;
    let guard = CancelOnDrop::new(service.clone(), job.clone());
    let status = job.finished().await;
    guard.disarm();
    if status == Status::Failed {
        let error = job.state().error.clone().unwrap_or_default();
        return Err(ApiError::internal(error).into());
    }
    Ok(Json(described_result(&job, send_images)))
}

/// The txt2img (or img2img) answer of a job accepted by an API node without models, from its summary.
fn described_result(job: &Job, send_images: bool) -> Value {
    let s = job.state();
    let p = &job.summary.parameters;
    let images: Vec<String> = (s.images.iter())
        .filter(|_| send_images)
        .map(|png| base64::engine::general_purpose::STANDARD.encode(png))
        .collect();
    let parameters = json!({
        "prompt": p["prompt"],
        "negative_prompt": p["negative_prompt"],
        "steps": p["steps"],
        "cfg_scale": p["guidance"],
        "width": p["width"],
        "height": p["height"],
        "seed": p["seed"],
        "sampler_name": p["scheduler"],
        "scheduler": p["schedule"],
        "batch_size": p["batch"],
        "n_iter": p["iterations"],
        "clip_skip": p["clip_skip"],
        "denoising_strength": p["strength"],
        "override_settings": {"sd_model_checkpoint": job.summary.pipeline},
    });
    let mut info = parameters.clone();
    if let Some(map) = info.as_object_mut() {
        map.insert("all_seeds".into(), p["seeds"].clone());
        map.insert("sd_model_name".into(), json!(job.summary.pipeline));
        map.insert("infotexts".into(), json!(s.infotexts));
        map.insert("job_timestamp".into(), json!(timestamp(job.created_at)));
        map.insert("interrupted".into(), json!(s.status == Status::Cancelled));
    }
    json!({"images": images, "parameters": parameters, "info": info.to_string()})
}

/// Queues `spec`, waits for it and answers as A1111 does.
pub(super) async fn run(
    service: &Arc<Service>,
    spec: JobSpec,
    send_images: bool,
) -> Result<Json<Value>, A1111Error> {
    let job = service.submit(spec, Origin::A1111).await?;
    let guard = CancelOnDrop::new(service.clone(), job.clone());
    let status = job.finished().await;
    guard.disarm();
    if status == Status::Failed {
        let error = job.state().error.clone().unwrap_or_default();
        return Err(ApiError::internal(error).into());
    }
    let Some(spec) = &job.spec else {
        return Err(ApiError::internal("the job has no settings to answer with").into());
    };
    Ok(Json(result(&job, spec, send_images)))
}

/// The txt2img answer: images (those made before an interrupt, if any), parameters, info.
fn result(job: &Job, spec: &JobSpec, send_images: bool) -> Value {
    let s = job.state();
    let j = &spec.job.settings;
    let sampler = &spec.sampler_name;
    let schedule = spec.job.sampler.schedule_name();
    let strength = spec.job.input.image().map(|i| i.strength);
    let seeds: Vec<u64> = spec.seeds().into_iter().take(s.images.len()).collect();
    let images: Vec<String> = if send_images {
        s.images
            .iter()
            .map(|png| base64::engine::general_purpose::STANDARD.encode(png))
            .collect()
    } else {
        Vec::new()
    };
    let n = s.images.len();
    let info = json!({
        "prompt": j.prompt,
        "all_prompts": vec![&j.prompt; n],
        "negative_prompt": j.negative_prompt,
        "all_negative_prompts": vec![&j.negative_prompt; n],
        "seed": j.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": vec![-1; n],
        "subseed_strength": 0,
        "width": j.width,
        "height": j.height,
        "sampler_name": sampler,
        "scheduler": schedule,
        "cfg_scale": j.guidance,
        "steps": j.steps,
        "batch_size": j.batch,
        "n_iter": spec.iterations,
        "clip_skip": j.clip_skip,
        "sd_model_name": spec.pipeline.name,
        "sd_model_hash": Value::Null,
        "restore_faces": false,
        "denoising_strength": strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": s.infotexts,
        "styles": [],
        "job_timestamp": timestamp(job.created_at),
        "interrupted": s.status == Status::Cancelled,
        "version": format!("beeswax {}", env!("CARGO_PKG_VERSION")),
    });
    json!({
        "images": images,
        "parameters": {
            "prompt": j.prompt,
            "negative_prompt": j.negative_prompt,
            "steps": j.steps,
            "cfg_scale": j.guidance,
            "width": j.width,
            "height": j.height,
            "seed": j.seed,
            "sampler_name": sampler,
            "scheduler": schedule,
            "batch_size": j.batch,
            "n_iter": spec.iterations,
            "clip_skip": j.clip_skip,
            "denoising_strength": strength,
            "override_settings": {"sd_model_checkpoint": spec.pipeline.name},
        },
        "info": info.to_string(),
    })
}

/// `YYYYMMDDhhmmss` in UTC, as A1111's `job_timestamp`.
fn timestamp(t: SystemTime) -> String {
    let secs = super::jobs::unix_secs(t) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `GET /sdapi/v1/progress` query.
#[derive(Debug, Deserialize)]
pub struct ProgressQuery {
    #[serde(default)]
    skip_current_image: bool,
}

/// `GET /sdapi/v1/progress`: the running job (A1111 jobs first), else idle.
pub async fn progress(
    State(service): State<Arc<Service>>,
    A1111Query(q): A1111Query<ProgressQuery>,
) -> Json<Value> {
    let mut running = service.running_jobs();
    running.sort_by_key(|j| j.origin != Origin::A1111);
    let queued = service.waiting_jobs();
    let Some(job) = running.first() else {
        return Json(json!({
            "progress": 0.0,
            "eta_relative": 0.0,
            "state": {
                "skipped": false, "interrupted": false, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0,
            },
            "current_image": Value::Null,
            "textinfo": Value::Null,
        }));
    };
    let s = job.state();
    let (steps, iterations) = job.spec.as_ref().map_or((1, 1), |spec| {
        (spec.job.settings.steps.max(1), spec.iterations)
    });
    let fraction = s.step as f64 / s.total.max(1) as f64;
    let elapsed = s
        .started_at
        .and_then(|t| t.elapsed().ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let eta = if fraction > 0.0 {
        elapsed / fraction - elapsed
    } else {
        0.0
    };
    let image = if q.skip_current_image {
        None
    } else {
        s.preview
            .as_ref()
            .map(|png| base64::engine::general_purpose::STANDARD.encode(png))
    };
    Json(json!({
        "progress": fraction,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": job.cancel_requested(),
            "job": format!("job {}", job.id),
            "job_count": iterations + queued,
            "job_timestamp": timestamp(job.created_at),
            "job_no": (s.step / steps).min(iterations.saturating_sub(1)),
            "sampling_step": s.step % steps,
            "sampling_steps": steps,
        },
        "current_image": image,
        "textinfo": Value::Null,
    }))
}

/// `POST /sdapi/v1/interrupt`: stops the running A1111 jobs at their next step.
pub async fn interrupt(State(service): State<Arc<Service>>) -> Json<Value> {
    for job in service.running_jobs() {
        if job.origin == Origin::A1111 {
            service.cancel(&job);
        }
    }
    Json(json!({}))
}

/// `GET /sdapi/v1/sd-models`: every pipeline, as a checkpoint (no file paths).
pub async fn sd_models(State(service): State<Arc<Service>>) -> Json<Value> {
    let offered: Option<Vec<String>> = service.offered_pipelines().map(|list| {
        (list.iter())
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect()
    });
    let names = offered.unwrap_or_else(|| {
        service
            .catalog
            .all()
            .iter()
            .map(|p| p.name.clone())
            .collect()
    });
    let models: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({
                "title": name,
                "model_name": name,
                "hash": Value::Null,
                "sha256": Value::Null,
                "filename": name,
                "config": Value::Null,
            })
        })
        .collect();
    Json(Value::Array(models))
}

/// `GET /sdapi/v1/samplers`: the service's samplers, by A1111 display name.
pub async fn samplers(State(service): State<Arc<Service>>) -> Json<Value> {
    let list: Vec<Value> = service
        .extensions
        .schedulers
        .entries()
        .iter()
        .map(|e| {
            let display = e.display_name();
            let others: Vec<&str> = std::iter::once(e.name.as_str())
                .chain(e.aliases.iter().map(String::as_str))
                .filter(|a| *a != display)
                .collect();
            json!({"name": display, "aliases": others, "options": {}})
        })
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/schedulers`: the noise schedules.
pub async fn schedulers_list() -> Json<Value> {
    let list: Vec<Value> = SCHEDULES
        .iter()
        .map(|info| {
            let name = if info.schedule == schedulers::Schedule::Default {
                "automatic"
            } else {
                info.name
            };
            json!({
                "name": name,
                "label": info.schedule.label(),
                "aliases": info.aliases,
                "default_rho": -1,
                "need_inner_model": false,
            })
        })
        .collect();
    Json(Value::Array(list))
}

fn current_checkpoint(service: &Service) -> Option<String> {
    service
        .a1111_checkpoint
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .or_else(|| service.catalog.default_pipeline().map(|p| p.name.clone()))
}

/// `GET /sdapi/v1/options`.
pub async fn options(State(service): State<Arc<Service>>) -> Json<Value> {
    Json(json!({
        "sd_model_checkpoint": current_checkpoint(&service),
        "sd_checkpoint_hash": Value::Null,
        "CLIP_stop_at_last_layers": 1,
        "show_progress_every_n_steps": PREVIEW_EVERY,
        "samples_format": "png",
    }))
}

/// `POST /sdapi/v1/options`: `sd_model_checkpoint` selects the default pipeline for A1111
/// requests; other options are accepted and ignored.
pub async fn set_options(
    State(service): State<Arc<Service>>,
    A1111Json(body): A1111Json<OverrideSettings>,
) -> Result<Json<Value>, A1111Error> {
    if let Some(title) = body.sd_model_checkpoint {
        let name = checkpoint(&service, &title).to_string();
        let known = match service.offered_pipelines() {
            Some(list) => list
                .iter()
                .any(|p| p["name"].as_str() == Some(name.as_str())),
            None => service.catalog.get(&name).is_some(),
        };
        if !known {
            let available = match service.offered_pipelines() {
                Some(list) => (list.iter())
                    .filter_map(|p| p["name"].as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                None => service.catalog.names(),
            };
            return Err(ApiError::invalid(
                "sd_model_checkpoint",
                "unknown_pipeline",
                format!("unknown checkpoint `{title}`: available: {available}"),
            )
            .into());
        }
        *service
            .a1111_checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(name);
    }
    Ok(Json(Value::Null))
}

/// `GET /sdapi/v1/scripts`: beeswax runs no A1111 scripts.
pub async fn scripts() -> Json<Value> {
    Json(json!({"txt2img": [], "img2img": []}))
}
