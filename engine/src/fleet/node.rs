//! The API node's side of the fleet: [`ApiNode`] publishes accepted jobs on the stream and
//! keeps each local [`Job`] up to date from the worker's events and state record, so the
//! service's routes (status, server-sent events, images, the A1111 progress endpoint) answer
//! exactly as in embedded mode.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use axum::http::StatusCode;
use base64::Engine;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::message::{mask_name, picture_name, JobMessage, WireEvent, VERSION};
use super::metrics::{render, Totals};
use super::record::{cancel_key, image_name, JobRecord, RecordStatus};
use super::roster::Roster;
use super::{event_subject, is_subject_token, job_subject, Fleet, FleetError};
use crate::image_in::Mask;
use crate::image_out::RgbImage;
use crate::pipeline::Input;
use crate::server::store::{encode_mask, encode_rgb, StoredRequest};
use crate::server::{
    from_unix_millis, unix_millis, ApiError, Event, Job, Offer, Pictures, Remote, RemoteFuture,
    RemoteHealth, Service, Status,
};

/// How often the API node reads a job's record directly, besides watching it (covers
/// updates missed while reconnecting).
const POLL: Duration = Duration::from_secs(2);

/// Longest wait for a finished job's images from the object store before reading them again.
const FETCH_WAIT: Duration = Duration::from_secs(20);

/// The API node's job backend.
#[derive(Debug, Clone)]
pub struct ApiNode {
    fleet: Fleet,
    /// The workers heard from.
    roster: Roster,
    /// Deliveries after the first of the jobs this node accepted, once they finished.
    redeliveries: Arc<AtomicU64>,
}

impl ApiNode {
    /// A backend publishing on `fleet`, listening to the workers' heartbeats.
    pub async fn start(fleet: Fleet) -> Result<Self, FleetError> {
        Ok(Self {
            roster: Roster::listen(&fleet).await?,
            fleet,
            redeliveries: Arc::default(),
        })
    }

    /// Jobs in the stream for `pipeline` (waiting, and running but not yet acknowledged).
    async fn in_stream(&self, pipeline: &str) -> Result<usize, ApiError> {
        let subject = job_subject(pipeline);
        let mut info = self
            .fleet
            .jobs
            .info_with_subjects(&subject)
            .await
            .map_err(unavailable)?;
        let mut count = 0;
        while let Some(entry) = info.next().await {
            let (name, n) = entry.map_err(unavailable)?;
            if name == subject {
                count += n;
            }
        }
        Ok(count)
    }

    async fn publish(&self, job: Arc<Job>) -> Result<(), ApiError> {
        let Some(spec) = &job.spec else {
            return Err(ApiError::internal(
                "a job without settings cannot be published",
            ));
        };
        let (request, total) = (spec.request.clone(), spec.total_steps());
        let pngs = job.with_input(|input| match input {
            Some(Input::Image(i)) => input_pngs(Some(&i.picture), None),
            Some(Input::Inpaint { image, mask }) => {
                input_pngs(Some(&image.picture), Some(&mask.mask))
            }
            _ => Ok([None, None]),
        });
        self.publish_request(job, request, pngs.map_err(ApiError::internal)?, total)
            .await
    }

    /// Publishes `job` running `request`, its picture and mask (`pngs`) put in the inputs
    /// store first.
    async fn publish_request(
        &self,
        job: Arc<Job>,
        request: StoredRequest,
        pngs: [Option<Vec<u8>>; 2],
        total_steps: usize,
    ) -> Result<(), ApiError> {
        let pipeline = job.summary.pipeline.clone();
        if !is_subject_token(&pipeline) {
            return Err(ApiError::invalid(
                "pipeline",
                "invalid_pipeline",
                format!("pipeline `{pipeline}` cannot be a NATS subject token: rename it (letters, digits, - and _)"),
            ));
        }
        self.check_room(&pipeline).await?;
        let fleet = &self.fleet;
        let message = JobMessage {
            v: VERSION,
            id: job.id.clone(),
            origin: job.origin,
            created_at_ms: unix_millis(job.created_at),
            summary: job.summary.clone(),
            request,
        };
        self.put_inputs(&job.id, pngs).await?;
        let events = fleet
            .client
            .subscribe(event_subject(&job.id))
            .await
            .map_err(unavailable)?;
        let record = JobRecord::queued(&message, &fleet.config.node, total_steps);
        fleet
            .state
            .put(&job.id, record.to_bytes().into())
            .await
            .map_err(unavailable)?;
        let watch = fleet.state.watch(&job.id).await.map_err(unavailable)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", job.id.as_str());
        let ack = fleet
            .js
            .publish_with_headers(job_subject(&pipeline), headers, message.to_bytes().into())
            .await
            .map_err(unavailable)?;
        if let Err(e) = ack.await {
            let _ = fleet.state.delete(&job.id).await;
            delete_inputs(fleet, &job.id).await;
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "queue_full",
                format!("the job stream did not take the job ({e}); retry later"),
            );
            err.retry_after = Some(5);
            return Err(err);
        }
        // The pictures are in the object store now: this node no longer needs them.
        drop(job.take_input());
        let count = Some(self.redeliveries.clone());
        tokio::spawn(follow(fleet.clone(), job, events, watch, count));
        Ok(())
    }

    /// 429 with `Retry-After` when `pipeline` has its most jobs waiting or running.
    async fn check_room(&self, pipeline: &str) -> Result<(), ApiError> {
        let waiting = self.in_stream(pipeline).await?;
        let max = self.fleet.config.max_waiting;
        if waiting < max {
            return Ok(());
        }
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "queue_full",
            format!(
                "the fleet is busy: pipeline `{pipeline}` has {waiting} jobs waiting or \
                 running (at most {max}); retry later"
            ),
        );
        e.retry_after = Some(5);
        Err(e)
    }

    /// Puts job `id`'s picture and mask (`pngs`, PNGs) in the inputs object store.
    async fn put_inputs(&self, id: &str, pngs: [Option<Vec<u8>>; 2]) -> Result<(), ApiError> {
        let names = [picture_name(id), mask_name(id)];
        for (name, png) in names.iter().zip(pngs) {
            let Some(png) = png else { continue };
            self.fleet
                .inputs
                .put(name.as_str(), &mut png.as_slice())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

/// An image job's picture and mask as PNGs, for the inputs store.
fn input_pngs(
    picture: Option<&RgbImage>,
    mask: Option<&Mask>,
) -> Result<[Option<Vec<u8>>; 2], String> {
    Ok([
        picture.map(encode_rgb).transpose()?,
        mask.map(encode_mask).transpose()?,
    ])
}

/// Deletes job `id`'s input picture and mask (absent ones are fine).
pub(super) async fn delete_inputs(fleet: &Fleet, id: &str) {
    for name in [picture_name(id), mask_name(id)] {
        let _ = fleet.inputs.delete(name.as_str()).await;
    }
}

/// 503: NATS did not answer.
fn unavailable(e: impl std::fmt::Display) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "nats_unavailable",
        format!("the job backbone (NATS) did not answer: {e}; retry later"),
    );
    err.retry_after = Some(5);
    err
}

impl ApiNode {
    /// Rebuilds job `id` from its record (the summary its accepting node published: nothing
    /// is validated again, so any API node can answer for any job) and follows it.
    async fn adopt_job(&self, id: &str) -> Option<Arc<Job>> {
        let fleet = &self.fleet;
        let bytes = fleet.state.get(id).await.ok().flatten()?;
        let record = JobRecord::parse(&bytes).ok()?;
        let message = record.message.clone()?;
        let job = Arc::new(Job::closed(
            message.id.clone(),
            message.origin,
            message.summary.clone(),
            from_unix_millis(message.created_at_ms),
            |s| {
                s.status = Status::Queued;
                s.total = record.total;
            },
        ));
        if record.status.is_final() {
            apply_record(fleet, &job, record).await;
            return Some(job);
        }
        let events = fleet.client.subscribe(event_subject(id)).await.ok()?;
        let watch = fleet.state.watch(id).await.ok()?;
        tokio::spawn(follow(fleet.clone(), job.clone(), events, watch, None));
        Some(job)
    }
}

impl Remote for ApiNode {
    fn metrics<'a>(&'a self, service: &'a Service) -> RemoteFuture<'a, String> {
        let mut pipelines: Vec<String> = (service.catalog.all().iter())
            .map(|p| p.name.clone())
            .collect();
        for beat in self.roster.alive() {
            pipelines.extend(beat.pipelines);
        }
        pipelines.sort();
        pipelines.dedup();
        let totals = Totals {
            workers: self.roster.alive().len(),
            redeliveries: self.redeliveries.load(Ordering::Relaxed),
        };
        Box::pin(async move { render(&self.fleet, &pipelines, totals).await })
    }

    fn adopt<'a>(&'a self, id: &'a str) -> RemoteFuture<'a, Option<Arc<Job>>> {
        Box::pin(self.adopt_job(id))
    }

    fn submit(&self, job: Arc<Job>) -> RemoteFuture<'_, Result<(), ApiError>> {
        Box::pin(self.publish(job))
    }

    fn submit_described(
        &self,
        job: Arc<Job>,
        request: StoredRequest,
        pictures: Option<Pictures>,
        total_steps: usize,
    ) -> RemoteFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            let pngs = match &pictures {
                Some(p) => input_pngs(Some(&p.picture), p.mask.as_ref()),
                None => Ok([None, None]),
            };
            let pngs = pngs.map_err(ApiError::internal)?;
            self.publish_request(job, request, pngs, total_steps).await
        })
    }

    fn offer(&self) -> Offer {
        self.roster.offer()
    }

    fn cancel(&self, job: Arc<Job>) {
        let state = self.fleet.state.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(job = %job.id, "cannot cancel a fleet job outside the runtime");
            return;
        };
        runtime.spawn(async move {
            if let Err(e) = state.put(cancel_key(&job.id), "cancel".into()).await {
                tracing::warn!(job = %job.id, error = %e, "cannot write the cancel request");
            }
        });
    }

    fn health(&self) -> RemoteHealth {
        let ok = self.fleet.connected();
        let workers: Vec<_> = (self.roster.alive().into_iter())
            .map(|beat| serde_json::json!({"node": beat.node, "pipelines": beat.pipelines}))
            .collect();
        RemoteHealth {
            ok,
            details: serde_json::json!({
                "connected": ok,
                "stream": self.fleet.config.stream,
                "node": self.fleet.config.node,
                "workers": workers,
            }),
        }
    }
}

/// Keeps `job` up to date until it finishes: progress from the event subject, the rest from
/// its state record (watched, and read every [`POLL`] in case an update was missed). With
/// `redeliveries`, the job's deliveries after the first are added to it when it finishes.
async fn follow(
    fleet: Fleet,
    job: Arc<Job>,
    mut events: async_nats::Subscriber,
    mut watch: kv::Watch,
    redeliveries: Option<Arc<AtomicU64>>,
) {
    let mut poll = tokio::time::interval(POLL);
    let mut watching = true;
    loop {
        let record = tokio::select! {
            Some(message) = events.next() => {
                apply_event(&job, &message.payload);
                continue;
            }
            entry = watch.next(), if watching => match entry {
                Some(Ok(entry)) if entry.operation == kv::Operation::Put => Some(entry.value),
                Some(Ok(_)) => None,
                Some(Err(e)) => {
                    tracing::warn!(job = %job.id, error = %e, "state watch failed; polling");
                    watching = false;
                    None
                }
                None => {
                    watching = false;
                    None
                }
            },
            _ = poll.tick() => fleet.state.get(&job.id).await.ok().flatten(),
        };
        let Some(bytes) = record else { continue };
        let record = match JobRecord::parse(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "unreadable state record");
                continue;
            }
        };
        let again = u64::try_from(record.deliveries.saturating_sub(1)).unwrap_or(0);
        if apply_record(&fleet, &job, record).await {
            if let Some(count) = &redeliveries {
                count.fetch_add(again, Ordering::Relaxed);
            }
            break;
        }
    }
    let _ = events.unsubscribe().await;
}

/// Marks `job` running (once).
fn started(job: &Job) {
    if job.state().status != Status::Queued {
        return;
    }
    job.update(|s| {
        s.status = Status::Running;
        s.position = None;
        s.started_at = Some(SystemTime::now());
        s.events.push(Event::Started);
    });
}

fn apply_event(job: &Job, payload: &[u8]) {
    let Ok(event) = serde_json::from_slice::<WireEvent>(payload) else {
        return;
    };
    match event {
        WireEvent::Started { .. } => started(job),
        WireEvent::Progress {
            step,
            total,
            preview,
        } => {
            started(job);
            let png = preview.as_deref().and_then(|url| {
                let data = url.strip_prefix("data:image/png;base64,")?;
                base64::engine::general_purpose::STANDARD.decode(data).ok()
            });
            job.update(|s| {
                if s.status.is_final() || step < s.step {
                    return;
                }
                s.step = step;
                s.total = total;
                if let Some(png) = png {
                    s.preview = Some(png);
                }
                s.events.push(Event::Progress {
                    step,
                    total,
                    preview,
                });
            });
        }
    }
}

/// Applies a state record; true once the job has finished.
async fn apply_record(fleet: &Fleet, job: &Job, record: JobRecord) -> bool {
    match record.status {
        RecordStatus::Queued => false,
        RecordStatus::Started | RecordStatus::Progress => {
            started(job);
            false
        }
        RecordStatus::Completed => {
            let fetched =
                tokio::time::timeout(FETCH_WAIT, fetch_images(fleet, &job.id, record.images));
            let Ok(fetched) = fetched.await else {
                // A read whose answer was lost (the connection dropped under it) would wait
                // for ever: the record is read again at the next poll, and the images with it.
                tracing::warn!(job = %job.id, wait = ?FETCH_WAIT, "reading the images timed out; retrying");
                return false;
            };
            match fetched {
                Ok(images) => {
                    job.update(|s| {
                        s.step = s.total;
                        s.images = images;
                        s.infotexts = record.infotexts;
                        s.warnings = record.warnings;
                    });
                    let paths = (0..record.images).map(|n| job.image_path(n)).collect();
                    let parameters = job.summary.parameters.clone();
                    job.finish(
                        Status::Completed,
                        Event::Completed {
                            images: paths,
                            parameters,
                        },
                    );
                }
                Err(error) => {
                    job.update(|s| s.error = Some(error.clone()));
                    job.finish(Status::Failed, Event::Failed { error });
                }
            }
            true
        }
        RecordStatus::Failed => {
            let error = record
                .error
                .unwrap_or_else(|| "the job failed on a worker".to_string());
            job.update(|s| s.error = Some(error.clone()));
            job.finish(Status::Failed, Event::Failed { error });
            true
        }
        RecordStatus::Cancelled => {
            job.finish(Status::Cancelled, Event::Cancelled);
            true
        }
    }
}

/// The job's `count` PNGs from the object store.
async fn fetch_images(fleet: &Fleet, id: &str, count: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut images = Vec::with_capacity(count);
    for n in 0..count {
        let name = image_name(id, n);
        let mut object = fleet
            .images
            .get(&name)
            .await
            .map_err(|e| format!("image {name} is missing from the object store: {e}"))?;
        let mut png = Vec::new();
        object
            .read_to_end(&mut png)
            .await
            .map_err(|e| format!("reading image {name} from the object store: {e}"))?;
        images.push(png);
    }
    Ok(images)
}
