//! The HTTP service behind `beeswax serve` (axum on tokio).
//!
//! Operators declare pipelines in the manifests (`[[pipeline]]`, see [`PipelineEntry`]); every
//! pack is served under its own name too. Models load once, eagerly, when the [`Catalog`] is
//! built. Jobs go through a bounded [`queue`](Service::submit) (full: 429 with `Retry-After`)
//! to worker threads that do all tensor work off the async runtime; handlers only validate,
//! queue and wait.
//!
//! Routes: the native jobs API (`/v1/pipelines`, `/v1/jobs/...` with server-sent events,
//! `/v1/gallery`, `/v1/samplers`, `/v1/loras`), OpenAI Images (`/v1/images/generations`),
//! AUTOMATIC1111 (`/sdapi/v1/...`), operations (`/health`, `/metrics`, `/openapi.json`) and the
//! web UI (`/`, `/ui/...`).
//!
//! Layout: [`config`](ServerConfig), catalog (pipelines and models), request (validation),
//! jobs/queue/worker/generate/preview (running jobs), service (shared state), native/sse/
//! gallery/choices/openai/a1111 (routes), webui (the page), auth, errors, metrics, openapi, ops,
//! http (router and serve).

mod a1111;
mod a1111_img2img;
mod auth;
mod catalog;
mod choices;
mod config;
mod errors;
mod gallery;
mod http;
mod image_job;
mod jobs;
mod metrics;
mod native;
mod openai;
mod openai_edits;
mod openapi;
mod ops;
mod pipeline_entry;
pub mod postprocess;
mod preview;
mod queue;
mod request;
mod samplers;
mod service;
mod sse;
pub mod webui;
mod worker;

pub use catalog::{Catalog, Pipeline};
pub use config::{Limits, ServerConfig};
pub use errors::{A1111Error, A1111Json, ApiError, JsonBody};
pub use http::{router, serve, shutdown_signal};
pub use image_job::Output;
pub use jobs::{Event, Job, Origin, Status};
pub use pipeline_entry::{
    load_dir as load_pipelines, LimitOverrides, Mode, PipelineConfig, PipelineEntry,
};
pub use preview::{latents_to_rgb, SD_LATENT_BIAS, SD_LATENT_RGB};
pub use request::{validate, GenerateRequest, JobSpec};
pub use service::Service;
