//! The running service: catalog, queue, workers, jobs and metrics, shared by every handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;

use super::catalog::Catalog;
use super::config::ServerConfig;
use super::errors::ApiError;
use super::jobs::{Event, Job, Origin, Status};
use super::keeper::{self, Keeper, Restored};
use super::metrics::{Gauges, Metrics, Outcome};
use super::output::OutputDir;
use super::pictures::{decode_slots, Decoder};
use super::queue::Queue;
use super::remote::Remote;
use super::request::{FieldNames, GenerateRequest, JobSpec};
use super::retention::{JobStore, Retention};
use super::store::DataDir;
use super::worker;
use crate::extensions::Extensions;

/// What [`Service::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was waiting and is now cancelled.
    Dequeued,
    /// It is running and will stop at its next step.
    Stopping,
    /// It had already finished with this status.
    AlreadyFinished(Status),
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Service {
    /// The pipelines.
    pub catalog: Arc<Catalog>,
    /// Samplers and processors (built-ins and plugins'), passed to every job.
    pub extensions: Arc<Extensions>,
    /// The settings.
    pub config: ServerConfig,
    /// Every job held in memory.
    pub jobs: Arc<JobStore>,
    /// The jobs in memory and in the data directory.
    pub keeper: Arc<Keeper>,
    /// What was restored from the data directory at start-up.
    pub restored: Restored,
    /// Waiting and running jobs.
    pub queue: Arc<Queue>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Decodes the pictures clients send (limits, a bounded number at once).
    pub decoder: Decoder,
    /// The checkpoint AUTOMATIC1111 clients selected with `POST /sdapi/v1/options`.
    pub a1111_checkpoint: Mutex<Option<String>>,
    accepting: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
    remote: OnceLock<Arc<dyn Remote>>,
}

impl Service {
    /// Opens the data directory and output folder (if configured), starts the worker threads
    /// and queues again the jobs the data directory holds (see [`keeper::restore`]).
    pub fn start(
        catalog: Catalog,
        extensions: Extensions,
        config: ServerConfig,
    ) -> std::io::Result<Arc<Self>> {
        let queue = Arc::new(Queue::new(config.queue_size));
        let metrics = Arc::new(Metrics::default());
        let extensions = Arc::new(extensions);
        let jobs = Arc::new(JobStore::new(Retention {
            keep: config.keep_finished,
            max_finished: config.max_finished,
            max_bytes: config.max_finished_bytes,
        }));
        let (data, stored) = match &config.data_dir {
            Some(dir) => {
                let (data, stored, _problems) =
                    DataDir::open(dir).map_err(std::io::Error::other)?;
                (Some(data), stored)
            }
            None => (None, Vec::new()),
        };
        let output = (config.output_dir.as_deref())
            .map(OutputDir::open)
            .transpose()
            .map_err(std::io::Error::other)?;
        let keeper = Arc::new(Keeper::new(jobs.clone(), data, output));
        let workers = worker::spawn(
            config.concurrency,
            queue.clone(),
            metrics.clone(),
            extensions.clone(),
            keeper.clone(),
        )?;
        let decoder = Decoder::new(&config, &catalog, decode_slots());
        let mut service = Self {
            decoder,
            catalog: Arc::new(catalog),
            extensions,
            jobs,
            keeper,
            restored: Restored::default(),
            config,
            queue,
            metrics,
            a1111_checkpoint: Mutex::new(None),
            accepting: AtomicBool::new(true),
            workers: Mutex::new(workers),
            remote: OnceLock::new(),
        };
        // Restored jobs queue before the service answers any request, in their old order.
        service.restored = keeper::restore(&service, stored);
        Ok(Arc::new(service))
    }

    /// Sends jobs to `remote` from now on instead of the local queue (a fleet API node); the
    /// local workers then only run what [`Service::run_here`] gives them. Set once.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) -> Result<(), Arc<dyn Remote>> {
        self.remote.set(remote)
    }

    /// The remote job backend, if one is set.
    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.get()
    }

    /// Accepts a job: to the remote backend when one is set, else into the local queue (see
    /// [`Service::submit_local`]).
    pub async fn submit(&self, spec: JobSpec, origin: Origin) -> Result<Arc<Job>, ApiError> {
        let Some(remote) = self.remote.get() else {
            return self.submit_local(spec, origin);
        };
        self.check_accepting()?;
        let job = Arc::new(Job::new(spec, origin));
        if let Err(e) = remote.submit(job.clone()).await {
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                self.metrics.outcome(Outcome::Rejected);
            }
            return Err(e);
        }
        self.keeper.hold(job.clone());
        tracing::info!(job = %job.id, pipeline = %job.summary.pipeline, "job published");
        Ok(job)
    }

    /// Whether this is a fleet API node without models: jobs are checked against what the
    /// fleet's workers announce ([`Service::submit_described`]) instead of loaded pipelines.
    pub fn model_less(&self) -> bool {
        self.catalog.all().is_empty() && self.remote.get().is_some()
    }

    /// The `/v1/pipelines` entries of what this node serves: its catalog's, or on a node
    /// without models, those the fleet's workers announce. `None`: use the catalog.
    pub fn offered_pipelines(&self) -> Option<Vec<serde_json::Value>> {
        self.model_less()
            .then(|| self.remote.get().map(|r| r.offer().pipelines))
            .flatten()
    }

    /// On a fleet API node without models: checks `req` against what the fleet's workers
    /// offer (a pipeline a live worker serves, its limits, known samplers) and publishes it.
    pub async fn submit_described(
        &self,
        req: &GenerateRequest,
        names: &FieldNames,
        origin: Origin,
    ) -> Result<Arc<Job>, ApiError> {
        let Some(remote) = self.remote.get() else {
            return Err(ApiError::internal(
                "a job without a loaded pipeline needs a fleet (--nats)",
            ));
        };
        self.check_accepting()?;
        let described = remote
            .offer()
            .describe_job(req, names, &self.config.limits)?;
        let total = described.total_steps;
        let job = Arc::new(Job::closed(
            uuid::Uuid::new_v4().to_string(),
            origin,
            described.summary,
            SystemTime::now(),
            |s| {
                s.status = Status::Queued;
                s.total = total;
            },
        ));
        let submitted =
            remote.submit_described(job.clone(), described.request, described.pictures, total);
        if let Err(e) = submitted.await {
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                self.metrics.outcome(Outcome::Rejected);
            }
            return Err(e);
        }
        self.keeper.hold(job.clone());
        tracing::info!(job = %job.id, pipeline = %job.summary.pipeline, "job published");
        Ok(job)
    }

    /// The job with `id`: held here, else (with a remote backend) one the backend knows,
    /// which is then held here too.
    pub async fn find_job(&self, id: &str) -> Option<Arc<Job>> {
        if let Some(job) = self.jobs.get(id) {
            return Some(job);
        }
        let job = self.remote.get()?.adopt(id).await?;
        // Two requests may adopt it at once: keep the first.
        if let Some(held) = self.jobs.get(id) {
            return Some(held);
        }
        self.keeper.hold(job.clone());
        Some(job)
    }

    /// 503 when shutting down.
    fn check_accepting(&self) -> Result<(), ApiError> {
        if self.accepting.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "shutting_down",
            "the server is shutting down and takes no new jobs",
        );
        e.retry_after = Some(5);
        Err(e)
    }

    /// Queues a job on this process's workers: 429 with `Retry-After` when the queue is full,
    /// 503 when shutting down.
    pub fn submit_local(&self, spec: JobSpec, origin: Origin) -> Result<Arc<Job>, ApiError> {
        self.check_accepting()?;
        self.enqueue(Arc::new(Job::new(spec, origin)), true)
    }

    /// Queues a job a fleet worker took from the stream (built with its fleet id by
    /// [`Job::accepted`]) on this process's workers, without listing it among the service's
    /// jobs (the fleet's API nodes answer for it).
    pub fn run_here(&self, job: Job) -> Result<Arc<Job>, ApiError> {
        self.enqueue(Arc::new(job), false)
    }

    fn enqueue(&self, job: Arc<Job>, listed: bool) -> Result<Arc<Job>, ApiError> {
        self.keeper.accept(&job)?;
        match self.queue.push(job.clone()) {
            Ok(_) => {
                if listed {
                    self.keeper.hold(job.clone());
                }
                tracing::info!(job = %job.id, pipeline = %job.summary.pipeline, "job queued");
                Ok(job)
            }
            Err(full) => {
                self.keeper.refused(&job.id);
                self.metrics.outcome(Outcome::Rejected);
                let secs = self.retry_after(full.waiting + full.running);
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "queue_full",
                    format!(
                        "the server is busy: the queue is full ({} jobs waiting, {} running); \
                         retry after {secs} s",
                        full.waiting, full.running
                    ),
                );
                e.retry_after = Some(secs);
                Err(e)
            }
        }
    }

    /// Seconds until about `ahead` jobs have run, from the mean job time (at least 1).
    fn retry_after(&self, ahead: usize) -> u64 {
        let mean = self.metrics.mean_job_seconds().unwrap_or(1.0);
        let workers = self.config.concurrency.max(1) as f64;
        ((mean * ahead as f64 / workers).ceil() as u64).clamp(1, 3600)
    }

    /// Cancels `job`: a waiting job at once, a running one at its next step (through the
    /// remote backend when one is set).
    pub fn cancel(&self, job: &Arc<Job>) -> Cancelled {
        let status = job.state().status;
        if status.is_final() {
            return Cancelled::AlreadyFinished(status);
        }
        if let Some(remote) = self.remote.get() {
            job.request_cancel();
            remote.cancel(job.clone());
            return Cancelled::Stopping;
        }
        self.cancel_local(job)
    }

    /// Cancels a job of this process's queue: a waiting job at once, a running one at its
    /// next step.
    pub fn cancel_local(&self, job: &Job) -> Cancelled {
        let status = job.state().status;
        if status.is_final() {
            return Cancelled::AlreadyFinished(status);
        }
        job.request_cancel();
        if self.queue.remove(&job.id) {
            // It will never run: its input pictures go now, not when it expires.
            drop(job.take_input());
            // Counted and recorded before the final state is published (see `worker::spawn`).
            self.metrics.outcome(Outcome::Cancelled);
            self.keeper.finishing(job, Status::Cancelled);
            job.finish(Status::Cancelled, Event::Cancelled);
            self.keeper.prune();
            Cancelled::Dequeued
        } else {
            Cancelled::Stopping
        }
    }

    /// Holds the workers: new jobs queue (up to `queue_size`, then 429) but none starts until
    /// [`Service::resume_workers`]; running jobs carry on.
    pub fn pause_workers(&self) {
        self.queue.pause();
    }

    /// Lets the workers take jobs again after [`Service::pause_workers`].
    pub fn resume_workers(&self) {
        self.queue.resume();
    }

    /// The jobs running now: on this process's workers, or (with a remote backend) the
    /// accepted jobs a worker elsewhere is running.
    pub fn running_jobs(&self) -> Vec<Arc<Job>> {
        match self.remote.get() {
            None => self.queue.running(),
            Some(_) => self.jobs_with(Status::Running),
        }
    }

    /// How many jobs wait (locally, or accepted here and not yet started elsewhere).
    pub fn waiting_jobs(&self) -> usize {
        match self.remote.get() {
            None => self.queue.depth(),
            Some(_) => self.jobs_with(Status::Queued).len(),
        }
    }

    fn jobs_with(&self, status: Status) -> Vec<Arc<Job>> {
        let mut jobs = self.jobs.all();
        jobs.retain(|j| j.state().status == status);
        jobs
    }

    /// Current gauge values.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            queue_depth: self.queue.depth(),
            queue_capacity: self.queue.capacity(),
            running: self.queue.running().len(),
            models_loaded: self.catalog.models_loaded(),
            pipelines: self.catalog.all().len(),
        }
    }

    /// Whether new jobs are accepted.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Graceful stop: refuse new jobs, cancel waiting ones, let running jobs finish for up
    /// to `timeout`, then cancel them (they stop at their next step) and join the workers.
    /// With a data directory, the jobs cancelled by the shutdown stay accepted there and run
    /// at the next start.
    pub async fn shutdown(&self, timeout: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        for job in self.queue.close() {
            self.metrics.outcome(Outcome::Cancelled);
            job.stop_for_shutdown();
            job.finish(Status::Cancelled, Event::Cancelled);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.queue.running();
            if running.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    jobs = running.len(),
                    "shutdown timeout: cancelling running jobs"
                );
                for job in running {
                    job.stop_for_shutdown();
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let handles: Vec<_> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        })
        .await;
        tracing::info!("workers stopped");
    }
}

/// Cancels a job if the request waiting for it goes away (the client hung up) first.
#[derive(Debug)]
pub struct CancelOnDrop {
    service: Arc<Service>,
    job: Option<Arc<Job>>,
}

impl CancelOnDrop {
    /// Watches `job`.
    pub fn new(service: Arc<Service>, job: Arc<Job>) -> Self {
        Self {
            service,
            job: Some(job),
        }
    }

    /// The job finished: nothing to cancel.
    pub fn disarm(mut self) {
        self.job = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            tracing::info!(job = %job.id, "client went away: cancelling its job");
            self.service.cancel(&job);
        }
    }
}
