//! The API node's side of the fleet: [`ApiNode`] publishes accepted jobs on the stream and
//! keeps each local [`Job`] up to date from the worker's events and state record, so the
//! service's routes (status, server-sent events, images, the A1111 progress endpoint) answer
//! exactly as in embedded mode.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use axum::http::StatusCode;
use base64::Engine;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::message::{origin_from, origin_name, JobMessage, WireEvent, WireRequest, VERSION};
use super::record::{cancel_key, image_name, JobRecord, RecordStatus};
use super::{event_subject, is_subject_token, job_subject, Fleet};
use crate::server::{
    validate, ApiError, Event, Job, Remote, RemoteFuture, RemoteHealth, Service, Status, NATIVE,
};

/// How often the API node reads a job's record directly, besides watching it (covers
/// updates missed while reconnecting).
const POLL: Duration = Duration::from_secs(2);

/// The API node's job backend.
#[derive(Debug, Clone)]
pub struct ApiNode {
    fleet: Fleet,
}

impl ApiNode {
    /// A backend publishing on `fleet`.
    pub fn new(fleet: Fleet) -> Self {
        Self { fleet }
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
        let spec = &job.spec;
        let pipeline = spec.pipeline.name.clone();
        let Some(request) = spec
            .text_request
            .as_ref()
            .and_then(|r| WireRequest::from_request(r, &pipeline, spec.job.settings.seed))
        else {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "invalid_request_error",
                "not_in_fleet_mode",
                "image-to-image and inpainting jobs are not carried over NATS yet: send them \
                 to a `beeswax serve` without --nats",
            ));
        };
        if !is_subject_token(&pipeline) {
            return Err(ApiError::invalid(
                "pipeline",
                "invalid_pipeline",
                format!("pipeline `{pipeline}` cannot be a NATS subject token: rename it (letters, digits, - and _)"),
            ));
        }
        let waiting = self.in_stream(&pipeline).await?;
        let max = self.fleet.config.max_waiting;
        if waiting >= max {
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
            return Err(e);
        }
        let fleet = &self.fleet;
        let events = fleet
            .client
            .subscribe(event_subject(&job.id))
            .await
            .map_err(unavailable)?;
        let message = JobMessage {
            v: VERSION,
            id: job.id.clone(),
            origin: origin_name(job.origin).to_string(),
            created_at: crate::server::unix_secs(job.created_at),
            request,
        };
        let record = JobRecord::queued(&message, &fleet.config.node, spec.total_steps());
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
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "queue_full",
                format!("the job stream did not take the job ({e}); retry later"),
            );
            err.retry_after = Some(5);
            return Err(err);
        }
        tokio::spawn(follow(fleet.clone(), job, events, watch));
        Ok(())
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
    /// Rebuilds job `id` from its record (validated again against `service`'s catalog) and
    /// follows it.
    async fn adopt_job(&self, service: &Service, id: &str) -> Option<Arc<Job>> {
        let fleet = &self.fleet;
        let bytes = fleet.state.get(id).await.ok().flatten()?;
        let record = JobRecord::parse(&bytes).ok()?;
        let message = record.message.clone()?;
        let spec = match validate(service, message.request.to_request(), &NATIVE) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::warn!(job = id, error = %e.message, "cannot answer for a fleet job here");
                return None;
            }
        };
        let mut job = Job::new(spec, origin_from(&message.origin));
        job.id = message.id.clone();
        job.created_at = UNIX_EPOCH + Duration::from_secs(message.created_at);
        let job = Arc::new(job);
        if record.status.is_final() {
            apply_record(fleet, &job, record).await;
            return Some(job);
        }
        let events = fleet.client.subscribe(event_subject(id)).await.ok()?;
        let watch = fleet.state.watch(id).await.ok()?;
        tokio::spawn(follow(fleet.clone(), job.clone(), events, watch));
        Some(job)
    }
}

impl ApiNode {
    /// The fleet's Prometheus lines: jobs in the stream, redeliveries, jobs held by workers
    /// and idle pulls per pipeline (from its consumer), dead letters.
    async fn fleet_metrics(&self, service: &Service) -> String {
        let mut lines = Vec::new();
        let mut family = |name: &str, help: &str, kind: &str, values: Vec<(String, u64)>| {
            lines.push(format!("# HELP {name} {help}\n# TYPE {name} {kind}"));
            for (labels, v) in values {
                lines.push(format!("{name}{labels} {v}"));
            }
        };
        let (mut depth, mut redelivered, mut running, mut pulls) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for pipeline in service.catalog.all() {
            let durable = format!("beeswax-{}", pipeline.name);
            let Ok(mut consumer) = self
                .fleet
                .jobs
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&durable)
                .await
            else {
                continue;
            };
            let Ok(info) = consumer.info().await else {
                continue;
            };
            let label = format!("{{pipeline=\"{}\"}}", pipeline.name);
            depth.push((label.clone(), info.num_pending));
            redelivered.push((label.clone(), info.num_redelivered as u64));
            running.push((label.clone(), info.num_ack_pending as u64));
            pulls.push((label, info.num_waiting as u64));
        }
        family(
            "beeswax_fleet_jobs_waiting",
            "Jobs in the stream no worker has taken yet, per pipeline.",
            "gauge",
            depth,
        );
        family(
            "beeswax_fleet_jobs_held",
            "Jobs a worker holds (running, unacknowledged), per pipeline.",
            "gauge",
            running,
        );
        family(
            "beeswax_fleet_jobs_redelivered",
            "Jobs held now that were delivered more than once, per pipeline.",
            "gauge",
            redelivered,
        );
        family(
            "beeswax_fleet_idle_pulls",
            "Pull requests of idle workers waiting for a job, per pipeline.",
            "gauge",
            pulls,
        );
        let dead = match self.fleet.js.get_stream(super::connect::DEAD_STREAM).await {
            Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
            Err(_) => 0,
        };
        family(
            "beeswax_fleet_dead_letters",
            "Jobs in the dead-letter stream.",
            "gauge",
            vec![(String::new(), dead)],
        );
        let up = u64::from(self.fleet.connected());
        family(
            "beeswax_fleet_nats_connected",
            "1 while NATS is reachable.",
            "gauge",
            vec![(String::new(), up)],
        );
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

impl Remote for ApiNode {
    fn metrics<'a>(&'a self, service: &'a Service) -> RemoteFuture<'a, String> {
        Box::pin(self.fleet_metrics(service))
    }

    fn adopt<'a>(
        &'a self,
        service: &'a Service,
        id: &'a str,
    ) -> RemoteFuture<'a, Option<Arc<Job>>> {
        Box::pin(self.adopt_job(service, id))
    }

    fn submit(&self, job: Arc<Job>) -> RemoteFuture<'_, Result<(), ApiError>> {
        Box::pin(self.publish(job))
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
        RemoteHealth {
            ok,
            details: serde_json::json!({
                "connected": ok,
                "stream": self.fleet.config.stream,
                "node": self.fleet.config.node,
            }),
        }
    }
}

/// Keeps `job` up to date until it finishes: progress from the event subject, the rest from
/// its state record (watched, and read every [`POLL`] in case an update was missed).
async fn follow(
    fleet: Fleet,
    job: Arc<Job>,
    mut events: async_nats::Subscriber,
    mut watch: kv::Watch,
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
        if apply_record(&fleet, &job, record).await {
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
            match fetch_images(fleet, &job.id, record.images).await {
                Ok(images) => {
                    job.update(|s| {
                        s.step = s.total;
                        s.images = images;
                        s.infotexts = record.infotexts;
                        s.warnings = record.warnings;
                    });
                    let paths = (0..record.images).map(|n| job.image_path(n)).collect();
                    let parameters = job.spec.parameters();
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
