//! The OpenAPI 3.1 description of the native API, served at `/openapi.json`.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "beeswax",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Stable Diffusion pipelines behind a jobs API with live progress. \
                OpenAI Images (`POST /v1/images/generations`) and AUTOMATIC1111 (`/sdapi/v1/...`) \
                compatible endpoints are also served. With an API key configured, every route but \
                /health needs `Authorization: Bearer KEY`."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        },
        "security": [{"bearer": []}],
        "paths": paths()
    })
}

/// The request and response schemas.
fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": "string"}
                }
            }}
        },
        "JobRequest": {
            "type": "object",
            "required": ["prompt"],
            "additionalProperties": false,
            "properties": {
                "pipeline": {"type": "string", "description": "a name from GET /v1/pipelines (default: the first)"},
                "prompt": {"type": "string"},
                "negative_prompt": {"type": "string"},
                "steps": {"type": "integer", "minimum": 1},
                "guidance": {"type": "number", "minimum": 0, "maximum": 100},
                "width": {"type": "integer", "description": "a multiple of 8, at most the pipeline's max_width"},
                "height": {"type": "integer", "description": "a multiple of 8, at most the pipeline's max_height"},
                "seed": {"type": "integer", "description": "negative or absent: random"},
                "batch": {"type": "integer", "minimum": 1},
                "scheduler": {"type": "string", "description": "a scheduler name or alias (A1111 names work)"},
                "schedule": {"type": "string", "description": "a noise schedule: default, karras, exponential, ..."},
                "clip_skip": {"type": "integer", "minimum": 1},
                "preview_every": {"type": "integer", "minimum": 1, "description": "send a preview with every Nth progress event"},
                "loras": {"type": "array", "description": "LoRAs by [[lora]]/[[lora_set]] name, after any <lora:NAME:WEIGHT> tags in the prompt", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "weight": {"type": "number"}}}},
                "init_image": {"type": "string", "description": "image to image: a base64 PNG, JPEG or WebP (a data-URL prefix is allowed)"},
                "mask": {"type": "string", "description": "inpainting: a base64 mask, white or opaque = repaint (needs init_image)"},
                "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "how much is repainted (default 0.75)"},
                "resize": {"enum": ["stretch", "crop", "fill"], "description": "how init_image is fitted to width x height"},
                "mask_blur": {"type": "number", "minimum": 0, "maximum": 256, "description": "mask blur in pixels (default 4)"},
                "inpaint_area": {"enum": ["whole", "masked"]},
                "inpaint_padding": {"type": "integer", "minimum": 0, "description": "context pixels around the mask with inpaint_area masked (default 32)"},
                "masked_content": {"enum": ["original", "fill", "latent-noise"]},
                "pre_processors": {"type": "array", "items": {"type": "string"}, "description": "pre-processors (plugin names) run on init_image and mask, after the pipeline's own"},
                "refiner": {"type": "string", "description": "a pack (or pipeline) from GET /v1/pipelines whose model finishes the denoising from refiner_switch_at on, e.g. an sdxl-refiner pack for an sdxl pipeline (default: the pipeline's `refiner`; \"\": none)"},
                "refiner_switch_at": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "description": "share of the schedule the base model runs before the refiner takes over (diffusers' denoising_end/denoising_start; default: the pipeline's, else 0.8); needs a refiner"}
            }
        },
        "Job": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "pipeline": {"type": "string"},
                "status": {"enum": ["queued", "running", "completed", "failed", "cancelled"]},
                "position": {"type": ["integer", "null"]},
                "progress": {"type": "object", "properties": {"step": {"type": "integer"}, "total": {"type": "integer"}}},
                "created_at": {"type": "integer"},
                "started_at": {"type": ["integer", "null"]},
                "finished_at": {"type": ["integer", "null"]},
                "images": {"type": "array", "items": {"type": "string"}},
                "parameters": {"type": "object"},
                "warnings": {"type": "array", "items": {"type": "string"}},
                "error": {"type": ["string", "null"]},
                "urls": {"type": "object"}
            }
        }
    })
}

/// The routes.
fn paths() -> Value {
    let id_param =
        json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    json!({
        "/": {"get": {"summary": "the web UI (unless `serve --no-ui`); the page and its /ui/ assets need no key, the page asks for it", "security": [],
            "responses": {"200": {"description": "text/html"}}}},
        "/health": {"get": {"summary": "liveness; 503 while shutting down", "security": [],
            "responses": {"200": {"description": "serving"}, "503": {"description": "shutting down"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format 0.0.4"}}}},
        "/v1/pipelines": {"get": {"summary": "the pipelines and packs served, with defaults and limits; `form` holds what a request that sets nothing gets (steps, guidance, width, height, scheduler, schedule, negative_prompt, clip_skip) and the bounds of a form (native_width, native_height, size_multiple, max_clip_skip)",
            "responses": {"200": {"description": "{\"pipelines\": [...]}"}}}},
        "/v1/samplers": {"get": {"summary": "every sampler (name for `scheduler`, label, aliases, summary) and noise schedule (name for `schedule`, label, aliases, summary), plugins included",
            "responses": {"200": {"description": "{\"samplers\": [...], \"schedules\": [...]}"}}}},
        "/v1/loras": {"get": {"summary": "the LoRAs (`kind` lora: default weight, triggers) and LoRA sets (`kind` set: members) a request's `loras` may name, and the allowed weights",
            "responses": {"200": {"description": "{\"loras\": [...], \"weight_range\": {\"min\", \"max\"}}"}}}},
        "/v1/gallery": {"get": {
            "summary": "the finished images this server holds (completed jobs of every API, kept --keep-finished seconds), newest first: url, width, height, pipeline, finished_at, infotext (the PNG's AUTOMATIC1111 `parameters` text) and parameters (a /v1/jobs body giving this image: its own seed, scheduler and schedule apart)",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 24}},
                {"name": "before", "in": "query", "schema": {"type": "string"}, "description": "the `next` cursor of the previous page"}
            ],
            "responses": {"200": {"description": "{\"images\": [...], \"next\": cursor or null, \"total\": images held}"},
                "400": error_response("bad limit or cursor")}
        }},
        "/v1/jobs": {"post": {
            "summary": "queue a job",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}}},
            "responses": {
                "202": {"description": "queued; Location is the job's URL",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}},
                "400": error_response("invalid request (the message names the field)"),
                "401": error_response("missing or wrong API key"),
                "413": error_response("body over the size limit"),
                "429": error_response("queue full; see Retry-After"),
                "503": error_response("shutting down")
            }
        }},
        "/v1/jobs/{id}": {
            "get": {"summary": "job status", "parameters": [id_param],
                "responses": {"200": {"description": "the job",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}},
                    "404": error_response("unknown or expired job")}},
            "delete": {"summary": "cancel: a queued job at once, a running one at its next step", "parameters": [id_param],
                "responses": {"200": {"description": "cancelled"}, "202": {"description": "stopping"},
                    "404": error_response("unknown job"), "409": error_response("already finished")}}
        },
        "/v1/jobs/{id}/events": {"get": {
            "summary": "server-sent events: queued {position}, started, progress {step, total, preview?}, completed {images, parameters}, failed {error}, cancelled; replayed from the start or after Last-Event-ID",
            "parameters": [id_param],
            "responses": {"200": {"description": "text/event-stream"}, "404": error_response("unknown job")}
        }},
        "/v1/jobs/{id}/images/{n}": {"get": {
            "summary": "image n (from 0) as PNG with an AUTOMATIC1111 `parameters` text chunk",
            "parameters": [id_param, {"name": "n", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "image/png"}, "404": error_response("no such image"),
                "409": error_response("job not completed")}
        }}
    })
}
