//! Where jobs live: the jobs held in memory ([`JobStore`]), and, with `--data-dir`, on disk
//! ([`DataDir`]) so they survive a restart; finished images also go to `--output-dir`. The
//! service records a job when it accepts it, the worker when it finishes, and at start-up
//! [`restore`] brings back what the data directory holds.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::errors::ApiError;
use super::jobs::{from_unix_millis, unix_millis, Event, Job, Status};
use super::output::OutputDir;
use super::request::{validate, NATIVE};
use super::retention::JobStore;
use super::service::Service;
use super::store::record::{Accepted, Finished, VERSION};
use super::store::{DataDir, StoreError, Stored};
use crate::pipeline::Input;

/// The jobs in memory, and on disk when the service has a data directory.
#[derive(Debug)]
pub struct Keeper {
    jobs: Arc<JobStore>,
    data: Option<DataDir>,
    output: Option<OutputDir>,
}

impl Keeper {
    /// A keeper over `jobs`, with an optional data directory and output folder.
    pub fn new(jobs: Arc<JobStore>, data: Option<DataDir>, output: Option<OutputDir>) -> Self {
        Self { jobs, data, output }
    }

    /// Records an accepted job (with its input pictures) before it is queued; an error means
    /// it could not be made durable and must not be accepted.
    pub fn accept(&self, job: &Job) -> Result<(), ApiError> {
        let (Some(data), Some(spec)) = (&self.data, &job.spec) else {
            return Ok(());
        };
        let record = Accepted {
            version: VERSION,
            id: job.id.clone(),
            seq: data.next_seq(),
            origin: job.origin,
            created_at_ms: unix_millis(job.created_at),
            summary: job.summary.clone(),
            request: spec.request.clone(),
        };
        blocking(|| {
            job.with_input(|input| {
                let (picture, mask) = match input {
                    Some(Input::Image(i)) => (Some(&i.picture), None),
                    Some(Input::Inpaint { image, mask }) => {
                        (Some(&image.picture), Some(&mask.mask))
                    }
                    _ => (None, None),
                };
                data.accept(&record, picture, mask)
            })
        })
        .map_err(|e| {
            tracing::error!(job = %job.id, error = %e, "could not record an accepted job");
            ApiError::internal(format!("the job could not be recorded: {e}"))
        })
    }

    /// Adds an accepted (or restored) job to the jobs held.
    pub fn hold(&self, job: Arc<Job>) {
        let dropped = self.jobs.insert(job);
        self.forget(&dropped);
    }

    /// Drops a job that was recorded but not queued (the queue was full).
    pub fn refused(&self, id: &str) {
        self.forget(&[id.to_string()]);
    }

    /// Records how `job` ends, before its final state is published: its images and record in
    /// the data directory, its images in the output folder. A job stopped by a shutdown is not
    /// recorded as cancelled: it stays accepted and runs again at the next start.
    pub fn finishing(&self, job: &Job, status: Status) {
        if status == Status::Cancelled && job.stopped_for_shutdown() {
            return;
        }
        let (record, images) = {
            let s = job.state();
            let record = Finished {
                version: VERSION,
                status,
                started_at_ms: s.started_at.map(unix_millis),
                finished_at_ms: unix_millis(SystemTime::now()),
                error: s.error.clone(),
                warnings: s.warnings.clone(),
                infotexts: s.infotexts.clone(),
                images: s.images.len(),
            };
            let images = if status == Status::Completed {
                s.images.clone()
            } else {
                Vec::new()
            };
            (record, images)
        };
        if let Some(data) = &self.data {
            if let Err(e) = data.finish(&job.id, &record, &images) {
                tracing::error!(job = %job.id, error = %e, "could not record a finished job");
            }
        }
        if let (Some(output), Some(spec)) = (&self.output, &job.spec) {
            match output.save(&images, &spec.seeds()) {
                Ok(files) => tracing::debug!(job = %job.id, files = files.len(), "images saved"),
                Err(e) => tracing::error!(job = %job.id, error = %e, "could not save images"),
            }
        }
    }

    /// Drops finished jobs beyond the retention, from memory and disk.
    pub fn prune(&self) {
        let dropped = self.jobs.prune();
        self.forget(&dropped);
    }

    fn forget(&self, ids: &[String]) {
        if let Some(data) = &self.data {
            for id in ids {
                data.forget(id);
            }
        }
    }
}

/// Runs `f`, which blocks on the disk, off the async runtime's scheduling when called on a
/// multi-threaded runtime (the binary's).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What [`restore`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Jobs queued again, in their original order.
    pub queued: usize,
    /// Finished jobs held again (their images served until they expire).
    pub finished: usize,
    /// Jobs that could not run again, now failed with the reason.
    pub failed: usize,
    /// Finished jobs past their retention, removed.
    pub expired: usize,
}

/// Brings back the jobs of the data directory: unfinished ones queue again in acceptance
/// order (validated again against today's pipelines), finished ones are held until they
/// expire (counted from their original finish time), and a job that cannot run again is
/// failed with the reason.
pub fn restore(service: &Service, stored: Vec<Stored>) -> Restored {
    let keeper = &service.keeper;
    let Some(data) = &keeper.data else {
        return Restored::default();
    };
    let mut count = Restored::default();
    for s in stored {
        let a = s.accepted;
        match s.finished {
            Some(Ok(done)) => {
                let age = SystemTime::now()
                    .duration_since(from_unix_millis(done.finished_at_ms))
                    .unwrap_or_default();
                if age > service.config.keep_finished {
                    data.forget(&a.id);
                    count.expired += 1;
                    continue;
                }
                match finished_job(data, &a, &done, age) {
                    Ok(job) => {
                        keeper.hold(Arc::new(job));
                        count.finished += 1;
                    }
                    Err(e) => {
                        fail(service, a, format!("its images are damaged ({e})"));
                        count.failed += 1;
                    }
                }
            }
            Some(Err(reason)) => {
                fail(
                    service,
                    a,
                    format!("its finish record is damaged ({reason})"),
                );
                count.failed += 1;
            }
            None => match queue_again(service, data, &a) {
                Ok(()) => count.queued += 1,
                Err(reason) => {
                    fail(service, a, format!("it cannot run again: {reason}"));
                    count.failed += 1;
                }
            },
        }
    }
    tracing::info!(
        queued = count.queued,
        finished = count.finished,
        failed = count.failed,
        expired = count.expired,
        "restored the jobs of the data directory"
    );
    count
}

/// A finished job from its records, `age` after it finished.
fn finished_job(
    data: &DataDir,
    a: &Accepted,
    done: &Finished,
    age: std::time::Duration,
) -> Result<Job, StoreError> {
    let images = match done.status {
        Status::Completed => data.images(&a.id, done.images)?,
        _ => Vec::new(),
    };
    let event = match done.status {
        Status::Completed => Event::Completed {
            images: (0..images.len())
                .map(|n| format!("/v1/jobs/{}/images/{n}", a.id))
                .collect(),
            parameters: a.summary.parameters.clone(),
        },
        Status::Cancelled => Event::Cancelled,
        _ => Event::Failed {
            error: done.error.clone().unwrap_or_default(),
        },
    };
    Ok(Job::closed(
        a.id.clone(),
        a.origin,
        a.summary.clone(),
        from_unix_millis(a.created_at_ms),
        |s| {
            s.status = done.status;
            s.images = images;
            s.infotexts = done.infotexts.clone();
            s.warnings = done.warnings.clone();
            s.error = done.error.clone();
            s.started_at = done.started_at_ms.map(from_unix_millis);
            s.finished_at = Some(from_unix_millis(done.finished_at_ms));
            s.finished = Some(Instant::now().checked_sub(age).unwrap_or_else(Instant::now));
            s.events.push(event);
        },
    ))
}

/// Validates an unfinished job's request again and queues it with its id.
fn queue_again(service: &Service, data: &DataDir, a: &Accepted) -> Result<(), String> {
    let (picture, mask) = data.inputs(a).map_err(|e| e.to_string())?;
    let request = a.request.clone().into_request(picture, mask)?;
    let spec = validate(service, request, &NATIVE).map_err(|e| e.message)?;
    let created = from_unix_millis(a.created_at_ms);
    let job = Arc::new(Job::accepted(a.id.clone(), spec, a.origin, created));
    service.queue.push_restored(job.clone());
    service.keeper.hold(job.clone());
    tracing::info!(job = %job.id, pipeline = %job.summary.pipeline, "job queued again after a restart");
    Ok(())
}

/// Fails a job accepted before the restart with `reason`, on disk and in memory.
fn fail(service: &Service, a: Accepted, reason: String) {
    let error = format!("accepted before the server restarted, but {reason}");
    tracing::warn!(job = %a.id, %error, "restored job failed");
    let job = Job::closed(
        a.id,
        a.origin,
        a.summary,
        from_unix_millis(a.created_at_ms),
        |s| {
            s.status = Status::Failed;
            s.error = Some(error.clone());
            s.finished_at = Some(SystemTime::now());
            s.finished = Some(Instant::now());
            s.events.push(Event::Failed { error });
        },
    );
    service.keeper.finishing(&job, Status::Failed);
    service.keeper.hold(Arc::new(job));
}
