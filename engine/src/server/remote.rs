//! The seam between the service and a job backend elsewhere: by default jobs go to this
//! process's queue and worker threads (embedded); with a [`Remote`] set (a fleet API node,
//! [`crate::fleet`]) they are published for workers on other machines instead, and the
//! remote keeps the local [`Job`] up to date so every route answers as in embedded mode.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::errors::ApiError;
use super::jobs::Job;
use super::offer::{Offer, Pictures};
use super::service::Service;
use super::store::StoredRequest;

/// A boxed future of a remote call.
pub type RemoteFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A job backend outside this process.
pub trait Remote: Send + Sync + Debug {
    /// Hands `job` (already in the job store, queued) to the backend; an error (e.g. 429 when
    /// its pipeline has too many jobs waiting) is the answer to the client. From then on the
    /// remote updates `job` as it runs elsewhere.
    fn submit(&self, job: Arc<Job>) -> RemoteFuture<'_, Result<(), ApiError>>;

    /// Hands over a job accepted by a node without models ([`Offer::describe_job`]): `job`
    /// (queued, without settings), the request the worker runs with an image job's pictures,
    /// `total_steps` in all.
    fn submit_described(
        &self,
        job: Arc<Job>,
        request: StoredRequest,
        pictures: Option<Pictures>,
        total_steps: usize,
    ) -> RemoteFuture<'_, Result<(), ApiError>>;

    /// What the backend's workers offer now (the pipelines and samplers they announce).
    fn offer(&self) -> Offer;

    /// A job accepted by another node (or by this one before a restart) that the backend
    /// knows by `id`, rebuilt from what the backend keeps of it and followed from now on;
    /// `None` when unknown.
    fn adopt<'a>(&'a self, id: &'a str) -> RemoteFuture<'a, Option<Arc<Job>>>;

    /// Asks whichever worker holds `job` to stop it (at once if it has not started).
    fn cancel(&self, job: Arc<Job>);

    /// Prometheus lines `/metrics` adds about the backend (for `service`'s pipelines).
    fn metrics<'a>(&'a self, service: &'a Service) -> RemoteFuture<'a, String>;

    /// What `/health` reports about the backend (`ok`: whether it is reachable).
    fn health(&self) -> RemoteHealth;
}

/// The backend's health.
#[derive(Debug, Clone)]
pub struct RemoteHealth {
    /// Whether it is reachable now.
    pub ok: bool,
    /// Details for `/health` (JSON object).
    pub details: serde_json::Value,
}
