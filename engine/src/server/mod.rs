//! The HTTP service behind `beeswax serve` (axum on tokio).
//!
//! Operators declare pipelines in the manifests (`[[pipeline]]`, see [`crate::manifest::pipeline`]); every
//! pack is served under its own name too. Models load once, eagerly, when the [`Catalog`] is
//! built. Jobs go through a bounded [`queue`](Service::submit) (full: 429 with `Retry-After`)
//! to worker threads that do all tensor work off the async runtime; handlers only validate,
//! queue and wait.
//!
//! Routes: the native jobs API (`/v1/pipelines`, `/v1/jobs/...` with server-sent events),
//! OpenAI Images (`/v1/images/generations`), AUTOMATIC1111 (`/sdapi/v1/...`) and operations
//! (`/health`, `/metrics`, `/openapi.json`).
//!
//! Layout: [`config`](ServerConfig), catalog (pipelines and models), request (validation),
//! jobs/queue/worker/generate/preview (running jobs), service (shared state), native/sse/
//! openai/a1111 (routes), auth, errors, metrics, openapi, ops, http (router and serve).

mod a1111;
mod a1111_img2img;
mod auth;
mod catalog;
mod config;
mod errors;
mod http;
mod image_job;
mod jobs;
mod metrics;
mod native;
mod openai;
mod openai_edits;
mod openapi;
mod ops;
pub mod postprocess;
mod preview;
mod queue;
mod request;
mod samplers;
mod service;
mod sse;
mod worker;

pub use catalog::{Catalog, Pipeline};
pub use config::{Limits, ServerConfig};
pub use errors::{A1111Error, A1111Json, ApiError, JsonBody};
pub use http::{router, serve, shutdown_signal};
pub use image_job::Output;
pub use jobs::{Event, Job, Origin, Status};
pub use preview::{latents_to_rgb, SD_LATENT_BIAS, SD_LATENT_RGB};
pub use request::{validate, GenerateRequest, JobSpec};
pub use service::Service;
