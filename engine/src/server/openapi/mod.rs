//! The OpenAPI 3.1 description of every route, served at `/openapi.json`: the native jobs API
//! (with its server-sent events), OpenAI Images, AUTOMATIC1111, operations, the gallery, the
//! embeddings and the web UI's pages. Limits (sizes, steps, images, body size) and choices
//! (pipelines, samplers, schedules, LoRAs) come from the running service, so the document
//! says what this server accepts, not what a default one would.
//!
//! Layout: [`Bounds`] (what the service accepts), `schemas` (request and response bodies),
//! `paths` (the routes).

mod paths;
mod schemas;

use serde_json::{json, Value};

use super::service::Service;
use crate::limits;
use crate::schedulers::SCHEDULES;

/// What the running service accepts: the largest values over its pipelines and the names a
/// request may use.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Largest width in pixels over the pipelines.
    pub max_width: usize,
    /// Largest height in pixels over the pipelines.
    pub max_height: usize,
    /// Most denoising steps over the pipelines.
    pub max_steps: usize,
    /// Most images per request over the pipelines.
    pub max_images: usize,
    /// A multiple of every pipeline's VAE scale factor: widths and heights must be multiples.
    pub size_multiple: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Pipeline (and pack) names.
    pub pipelines: Vec<String>,
    /// Scheduler names and aliases (plugins' included).
    pub samplers: Vec<String>,
    /// Noise schedule names and aliases.
    pub schedules: Vec<String>,
    /// LoRA and LoRA set names.
    pub loras: Vec<String>,
    /// Pre-processor names (plugins').
    pub pre_processors: Vec<String>,
    /// Allowed LoRA weights.
    pub lora_weights: (f64, f64),
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Bounds {
    /// The bounds of `service`: the server's limits when it has no pipelines.
    pub fn of(service: &Service) -> Self {
        let all = service.catalog.all();
        let fallback = service.config.limits;
        let largest = |f: fn(&super::Limits) -> usize| {
            all.iter()
                .map(|p| f(&p.limits))
                .max()
                .unwrap_or(f(&fallback))
        };
        let size_multiple = all
            .iter()
            .map(|p| p.model.vae_scale_factor().max(1))
            .fold(limits::SIZE_MULTIPLE, |m, f| m / gcd(m, f) * f);
        let registry = &service.extensions.schedulers;
        let mut samplers: Vec<String> = Vec::new();
        for e in registry.entries() {
            for name in std::iter::once(&e.name).chain(&e.aliases) {
                if !samplers.contains(name) {
                    samplers.push(name.clone());
                }
            }
        }
        let mut schedules: Vec<String> = Vec::new();
        for info in SCHEDULES {
            for name in std::iter::once(&info.name).chain(info.aliases) {
                if !schedules.iter().any(|s| s == name) {
                    schedules.push(name.to_string());
                }
            }
        }
        let loras = service.catalog.loras();
        Self {
            max_width: largest(|l| l.max_width),
            max_height: largest(|l| l.max_height),
            max_steps: largest(|l| l.max_steps),
            max_images: largest(|l| l.max_images),
            size_multiple,
            max_body_bytes: service.config.max_body_bytes,
            pipelines: all.iter().map(|p| p.name.clone()).collect(),
            samplers,
            schedules,
            loras: (loras.entries.iter().map(|e| e.name.clone()))
                .chain(loras.sets.iter().map(|s| s.name.clone()))
                .collect(),
            lora_weights: (loras.range.min, loras.range.max),
            pre_processors: service.extensions.pre_names(),
        }
    }

    /// An array schema of names from `names` (empty when there are none).
    fn list_of(names: &[String], description: &str) -> Value {
        if names.is_empty() {
            json!({"type": "array", "maxItems": 0, "description": format!("{description} (this server has none)")})
        } else {
            json!({"type": "array", "items": {"enum": names}, "description": description})
        }
    }

    /// A string schema taking one of `names` (any string when there are none).
    fn one_of(names: &[String], description: &str) -> Value {
        if names.is_empty() {
            json!({"type": "string", "description": description})
        } else {
            json!({"type": "string", "enum": names, "description": description})
        }
    }
}

/// The document for `service`.
pub fn document(service: &Service) -> Value {
    let bounds = Bounds::of(service);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "beeswax",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("Stable Diffusion pipelines behind a jobs API with live \
                progress. OpenAI Images (`/v1/images/generations`, `/v1/images/edits`) and \
                AUTOMATIC1111 (`/sdapi/v1/...`) compatible endpoints are also served. With an \
                API key configured, every route but /health, / and /ui/ needs \
                `Authorization: Bearer KEY`. Request bodies are JSON (`Content-Type: \
                application/json`; multipart on /v1/images/edits) of at most {} bytes. Limits \
                below are this server's: the largest any of its pipelines allows.",
                bounds.max_body_bytes)
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas::all(&bounds)
        },
        "security": if service.config.api_key.is_some() { json!([{"bearer": []}]) } else { json!([{"bearer": []}, {}]) },
        "paths": paths::all(&bounds, service.config.web_ui)
    })
}

/// A response with an `Error` body.
fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// A response with an AUTOMATIC1111 error body.
fn a1111_error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/A1111Error"}}}
    })
}

/// A JSON response with `schema`.
fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

#[cfg(test)]
mod tests;
