//! What a client can choose from, for building a form: `GET /v1/samplers` (samplers and noise
//! schedules, from the scheduler registry, plugins included), `GET /v1/loras` (the manifests'
//! `[[lora]]` and `[[lora_set]]` names, never their files) and each pipeline's [`form`]
//! (the settings a request that sets nothing gets, and the bounds of each field).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::catalog::Pipeline;
use super::service::Service;
use crate::manifest::PackDefaults;
use crate::pipeline::{resolve, JobRequest};
use crate::schedulers::{Registry, Schedule, SCHEDULES};

/// `GET /v1/samplers`: every sampler (canonical name, display label, aliases, summary) and
/// every noise schedule, in listing order.
pub async fn samplers(State(service): State<Arc<Service>>) -> Json<Value> {
    let samplers: Vec<Value> = (service.extensions.schedulers.entries().iter())
        .map(|e| {
            json!({
                "name": e.name,
                "label": e.display_name(),
                "aliases": e.aliases,
                "summary": e.summary,
            })
        })
        .collect();
    let schedules: Vec<Value> = SCHEDULES
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "label": s.schedule.label(),
                "aliases": s.aliases,
                "summary": s.summary,
            })
        })
        .collect();
    Json(json!({ "samplers": samplers, "schedules": schedules }))
}

/// `GET /v1/loras`: the LoRAs and LoRA sets requests may name, with their default weights,
/// trigger words and the weights this server allows.
pub async fn loras(State(service): State<Arc<Service>>) -> Json<Value> {
    let catalog = service.catalog.loras();
    let entries = catalog.entries.iter().map(|e| {
        json!({
            "name": e.name,
            "kind": "lora",
            "weight": e.weight,
            "triggers": e.triggers,
            "description": e.description,
        })
    });
    let sets = catalog.sets.iter().map(|s| {
        let members: Vec<Value> = (s.loras.iter())
            .map(|(name, weight)| json!({"name": name, "weight": weight}))
            .collect();
        json!({
            "name": s.name,
            "kind": "set",
            "weight": 1.0,
            "members": members,
            "description": s.description,
        })
    });
    Json(json!({
        "loras": entries.chain(sets).collect::<Vec<_>>(),
        "weight_range": {"min": catalog.range.min, "max": catalog.range.max},
    }))
}

/// What a form for `pipeline` needs: the settings a request that sets nothing gets (sampler
/// and schedule apart), the model's native size, the multiple sizes must be, and the most CLIP
/// layers `clip_skip` may skip.
/// `None` when the pipeline's defaults do not make a valid job (a sampler a plugin took away).
pub fn form(pipeline: &Pipeline, registry: &Registry) -> Option<Value> {
    let model = &pipeline.model;
    let request = || JobRequest {
        seed: Some(0),
        ..JobRequest::default()
    };
    let job = resolve(model, &pipeline.defaults, registry, request()).ok()?;
    let native = resolve(model, &PackDefaults::default(), registry, request()).ok()?;
    let settings = &job.settings;
    Some(json!({
        "steps": settings.steps,
        "guidance": settings.guidance,
        "width": settings.width,
        "height": settings.height,
        "scheduler": job.sampler.name,
        "schedule": job.sampler.schedule.unwrap_or(Schedule::Default).name(),
        "negative_prompt": settings.negative_prompt,
        "clip_skip": settings.clip_skip,
        "native_width": native.settings.width,
        "native_height": native.settings.height,
        "size_multiple": model.vae_scale_factor(),
        "max_clip_skip": model.networks.text_layers(),
    }))
}
