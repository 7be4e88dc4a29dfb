//! The HTTP service behind `beeswax serve` (axum on tokio).
//!
//! Operators declare pipelines in the manifests (`[[pipeline]]`, see [`crate::manifest::pipeline`]); every
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
//! pictures (decoding what clients send), jobs/queue/worker (running jobs through
//! [`crate::pipeline::run`]), service (shared state: catalog, extensions, queue, jobs),
//! retention (finished jobs kept by age, count and bytes), store (the `--data-dir` files),
//! keeper (jobs in memory and on disk, restored at start-up), output (`--output-dir`),
//! native/sse/gallery/choices/openai/a1111 (routes), webui (the page), auth, errors, metrics,
//! openapi, ops, site (base URL, Host and Origin checks), http (router and serve).

mod a1111;
mod a1111_img2img;
mod auth;
mod catalog;
mod choices;
mod config;
mod embeddings;
mod errors;
mod gallery;
mod http;
mod jobs;
mod keeper;
mod metrics;
mod native;
mod offer;
mod openai;
mod openai_edits;
mod openapi;
mod ops;
mod output;
mod params;
mod pictures;
mod queue;
mod remote;
mod request;
mod retention;
mod service;
mod site;
mod sse;
pub mod store;
pub mod webui;
mod worker;

pub use catalog::{check_pack_files, Catalog, Pipeline, Plan};
pub use config::{Limits, ServerConfig, DEFAULT_MAX_FINISHED_BYTES};
pub use errors::{A1111Error, A1111Json, ApiError, JsonBody};
pub use http::{router, serve, shutdown_signal};
pub use jobs::{
    from_unix_millis, unix_millis, unix_secs, Event, Job, JobState, Origin, Status, Summary,
};
pub use keeper::Restored;
pub use native::describe as describe_pipeline;
pub use offer::{DescribedJob, Offer, Pictures};
pub use remote::{Remote, RemoteFuture, RemoteHealth};
pub use request::{validate, FieldNames, GenerateRequest, JobSpec, NATIVE};
pub use retention::{JobStore, Retention};
pub use service::{Cancelled, Service};
pub use site::{parse_origin, parse_public_url, Site};

/// A header map of `pairs`, for the routes' unit tests.
#[cfg(test)]
fn test_headers(pairs: &[(axum::http::HeaderName, &str)]) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(k.clone(), v.parse().unwrap());
    }
    h
}
