//! Jobs and their state: status, the event history that SSE streams replay, the images.
//! A job is shared (`Arc<Job>`) between the HTTP handlers and the worker thread running it;
//! its state sits behind a mutex and every change bumps a `watch` counter that waiting
//! handlers and event streams wake on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use super::request::JobSpec;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting in the queue.
    Queued,
    /// On a worker.
    Running,
    /// Done, images available.
    Completed,
    /// Stopped by an error.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl Status {
    /// Whether the job has finished (completed, failed or cancelled).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Which API submitted a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `/v1/jobs`.
    Native,
    /// `/v1/images/generations`.
    OpenAi,
    /// `/sdapi/v1/txt2img`.
    A1111,
}

/// One server-sent event of a job.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Waiting; `position` 1 is next.
    Queued {
        /// Place in the queue.
        position: usize,
    },
    /// A worker took the job.
    Started,
    /// A step finished.
    Progress {
        /// Steps done (over all iterations).
        step: usize,
        /// Steps in all.
        total: usize,
        /// A small preview decoded cheaply from the latents: `data:image/png;base64,...`.
        #[serde(skip_serializing_if = "Option::is_none")]
        preview: Option<String>,
    },
    /// Done.
    Completed {
        /// Image URLs.
        images: Vec<String>,
        /// The settings used.
        parameters: serde_json::Value,
    },
    /// Stopped by an error.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// Stopped on request.
    Cancelled,
}

impl Event {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Queued { .. } => "queued",
            Event::Started => "started",
            Event::Progress { .. } => "progress",
            Event::Completed { .. } => "completed",
            Event::Failed { .. } => "failed",
            Event::Cancelled => "cancelled",
        }
    }
}

/// A job's changing state.
#[derive(Debug)]
pub struct JobState {
    /// Where it is.
    pub status: Status,
    /// Every event so far, in order.
    pub events: Vec<Event>,
    /// Queue position while queued (1 is next).
    pub position: Option<usize>,
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
    /// The latest preview PNG.
    pub preview: Option<Vec<u8>>,
    /// The finished PNGs (with their parameters chunk).
    pub images: Vec<Vec<u8>>,
    /// AUTOMATIC1111 `parameters` text of each image.
    pub infotexts: Vec<String>,
    /// Warnings (e.g. a truncated prompt).
    pub warnings: Vec<String>,
    /// The error, when failed.
    pub error: Option<String>,
    /// When it started running.
    pub started_at: Option<SystemTime>,
    /// When it finished.
    pub finished_at: Option<SystemTime>,
    /// When it finished, monotonic (for retention).
    pub finished: Option<Instant>,
}

/// A submitted job.
#[derive(Debug)]
pub struct Job {
    /// Its id (a UUID).
    pub id: String,
    /// The API that submitted it.
    pub origin: Origin,
    /// What to run.
    pub spec: JobSpec,
    /// When it was submitted.
    pub created_at: SystemTime,
    cancel: AtomicBool,
    state: Mutex<JobState>,
    version: watch::Sender<u64>,
}

impl Job {
    /// A new queued job.
    pub fn new(spec: JobSpec, origin: Origin) -> Self {
        let total = spec.total_steps();
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            origin,
            spec,
            created_at: SystemTime::now(),
            cancel: AtomicBool::new(false),
            state: Mutex::new(JobState {
                status: Status::Queued,
                events: Vec::new(),
                position: None,
                step: 0,
                total,
                preview: None,
                images: Vec::new(),
                infotexts: Vec::new(),
                warnings: Vec::new(),
                error: None,
                started_at: None,
                finished_at: None,
                finished: None,
            }),
            version: watch::channel(0).0,
        }
    }

    /// Locks the state for reading.
    pub fn state(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes everyone waiting on the job.
    pub fn update(&self, f: impl FnOnce(&mut JobState)) {
        f(&mut self.state());
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that changes whenever the state does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Asks a running job to stop at its next step.
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Whether cancellation was asked for.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Sets the queue position, with a `queued` event when it changes.
    pub fn set_position(&self, position: usize) {
        if self.state().position == Some(position) {
            return;
        }
        self.update(|s| {
            s.position = Some(position);
            s.events.push(Event::Queued { position });
        });
    }

    /// Ends the job with `status` and its closing `event`, unless it already ended.
    pub fn finish(&self, status: Status, event: Event) {
        self.update(|s| {
            if s.status.is_final() {
                return;
            }
            s.status = status;
            s.position = None;
            s.events.push(event);
            s.finished_at = Some(SystemTime::now());
            s.finished = Some(Instant::now());
        });
    }

    /// Waits until the job has finished; returns its final status.
    pub async fn finished(&self) -> Status {
        let mut rx = self.subscribe();
        loop {
            let status = self.state().status;
            if status.is_final() {
                return status;
            }
            if rx.changed().await.is_err() {
                return self.state().status;
            }
        }
    }

    /// The URL path of image `n` (0-based).
    pub fn image_path(&self, n: usize) -> String {
        format!("/v1/jobs/{}/images/{n}", self.id)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Jobs by id, and their ids in submission order.
type JobMap = (HashMap<String, Arc<Job>>, VecDeque<String>);

/// Every job the service knows, finished ones kept for a while.
#[derive(Debug)]
pub struct JobStore {
    jobs: Mutex<JobMap>,
    keep: Duration,
    max_finished: usize,
}

impl JobStore {
    /// A store keeping finished jobs for `keep`, at most `max_finished` of them.
    pub fn new(keep: Duration, max_finished: usize) -> Self {
        Self {
            jobs: Mutex::new((HashMap::new(), VecDeque::new())),
            keep,
            max_finished,
        }
    }

    /// Adds a job, first dropping finished jobs past their retention.
    pub fn insert(&self, job: Arc<Job>) {
        let mut guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, order) = &mut *guard;
        let now = Instant::now();
        let mut finished = 0;
        let mut expired = Vec::new();
        // Newest first, so the oldest finished jobs are the ones over the count.
        for id in order.iter().rev() {
            let Some(j) = map.get(id) else { continue };
            if let Some(at) = j.state().finished {
                finished += 1;
                if now.duration_since(at) > self.keep || finished > self.max_finished {
                    expired.push(id.clone());
                }
            }
        }
        for id in &expired {
            map.remove(id);
        }
        order.retain(|id| map.contains_key(id));
        order.push_back(job.id.clone());
        map.insert(job.id.clone(), job);
    }

    /// The job with `id`, unless unknown or expired.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let job = guard.0.get(id)?.clone();
        drop(guard);
        let expired = job
            .state()
            .finished
            .is_some_and(|at| at.elapsed() > self.keep);
        (!expired).then_some(job)
    }

    /// Every job held and not expired, in submission order.
    pub fn all(&self) -> Vec<Arc<Job>> {
        let jobs: Vec<Arc<Job>> = {
            let guard = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            let (map, order) = &*guard;
            order.iter().filter_map(|id| map.get(id).cloned()).collect()
        };
        jobs.into_iter()
            .filter(|j| {
                j.state()
                    .finished
                    .is_none_or(|at| at.elapsed() <= self.keep)
            })
            .collect()
    }

    /// How many jobs are held.
    pub fn len(&self) -> usize {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .len()
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
