//! The worker's side of the fleet: pull jobs of the pipelines this process serves, run each
//! through the service's own worker threads ([`Service::run_here`]), publish its progress,
//! store its images and state, and acknowledge it only once everything is stored.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::jetstream::{AckKind, Message};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::message::{mask_name, picture_name, JobMessage, WireEvent};
use super::node::delete_inputs;
use super::record::{cancel_key, image_name, JobRecord, RecordStatus};
use super::roster::{announce, Heartbeat};
use super::{dead_subject, event_subject, is_subject_token, Fleet, FleetError};
use crate::server::store::{decode_mask, decode_rgb};
use crate::server::{
    from_unix_millis, unix_secs, validate, Event, GenerateRequest, Job, Service, Status, NATIVE,
};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs at once (the service's worker threads should be at least as many).
    pub concurrency: usize,
    /// On stop, how long running jobs may take to finish; unfinished ones are left
    /// unacknowledged and go to another worker after the ack wait.
    pub shutdown_timeout: Duration,
}

/// How long one pull waits for a job before trying the next pipeline.
const PULL_WAIT: Duration = Duration::from_millis(500);
/// Least time between two progress records of one job in the state bucket.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// Pulls and runs jobs of every pipeline of `service`'s catalog until `stop` resolves, then
/// drains: no more pulls, running jobs get `options.shutdown_timeout` to finish.
pub async fn run_worker(
    fleet: Fleet,
    service: Arc<Service>,
    options: WorkerOptions,
    stop: impl Future<Output = ()>,
) -> Result<(), FleetError> {
    tokio::pin!(stop);
    let consumers = tokio::select! {
        _ = &mut stop => return Ok(()),
        consumers = consumers(&fleet, &service) => consumers?,
    };
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    // Flipped when the drain timeout ends: running jobs stop and are handed back (nak).
    let (hand_back, handing_back) = watch::channel(false);
    let heartbeat = Heartbeat {
        node: fleet.config.node.clone(),
        pipelines: (service.catalog.all().iter())
            .map(|p| p.name.clone())
            .collect(),
        concurrency: options.concurrency,
        described: (service.catalog.all().iter())
            .map(|p| crate::server::describe_pipeline(p, &service.extensions.schedulers))
            .collect(),
        samplers: sampler_names(&service.extensions.schedulers),
    };
    let announcing = tokio::spawn(announce(fleet.clone(), heartbeat));
    let mut turn = 0usize;
    tracing::info!(
        pipelines = consumers.len(),
        concurrency = options.concurrency,
        "fleet worker pulling"
    );
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let consumer = &consumers[turn % consumers.len()];
        turn = turn.wrapping_add(1);
        let pulled = tokio::select! {
            _ = &mut stop => break,
            pulled = pull_one(consumer) => pulled,
        };
        match pulled {
            Ok(Some(message)) => {
                let (fleet, service) = (fleet.clone(), service.clone());
                let handing_back = handing_back.clone();
                tasks.spawn(async move {
                    handle(&fleet, &service, message, handing_back).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "pulling a job failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    announcing.abort();
    tracing::info!(running = tasks.len(), "draining: no more pulls");
    let drained = tokio::time::timeout(options.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            running = tasks.len(),
            "drain timeout: handing the unfinished jobs back to the stream for other workers"
        );
        let _ = hand_back.send(true);
        // Each stops its local job and naks its message (a few NATS round trips).
        let handed = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if handed.is_err() {
            tasks.abort_all();
        }
    }
    Ok(())
}

/// Every name a job may give a sampler by: names, aliases and A1111 display names.
fn sampler_names(registry: &crate::schedulers::Registry) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for e in registry.entries() {
        let all = std::iter::once(e.name.as_str())
            .chain(e.aliases.iter().map(String::as_str))
            .chain(std::iter::once(e.display_name()));
        for name in all {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// The consumers of every pipeline of `service`'s catalog ([`Fleet::lasting_consumer`]: asked
/// for again while NATS does not answer).
async fn consumers(
    fleet: &Fleet,
    service: &Service,
) -> Result<Vec<Consumer<pull::Config>>, FleetError> {
    let mut out = Vec::new();
    for pipeline in service.catalog.all() {
        out.push(fleet.lasting_consumer(&pipeline.name).await?);
    }
    if out.is_empty() {
        return Err(FleetError::Nats {
            what: "starting the worker".to_string(),
            reason: "no pipeline to serve".to_string(),
        });
    }
    Ok(out)
}

/// One job if one comes within [`PULL_WAIT`]. Bounded by a timeout of its own: a pull request
/// in flight when the server went away is never answered.
async fn pull_one(consumer: &Consumer<pull::Config>) -> Result<Option<Message>, FleetError> {
    let pulled = tokio::time::timeout(PULL_WAIT + Duration::from_secs(5), pull(consumer)).await;
    pulled.unwrap_or_else(|_| {
        Err(FleetError::nats(
            "pulling a job",
            "no answer (reconnecting?)",
        ))
    })
}

async fn pull(consumer: &Consumer<pull::Config>) -> Result<Option<Message>, FleetError> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(PULL_WAIT)
        .messages()
        .await
        .map_err(|e| FleetError::nats("pulling a job", e))?;
    match batch.next().await {
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(e)) => Err(FleetError::nats("pulling a job", e)),
        None => Ok(None),
    }
}

/// Runs one delivery of a job to the end; acknowledges it once its outcome is stored.
async fn handle(
    fleet: &Fleet,
    service: &Service,
    message: Message,
    handing_back: watch::Receiver<bool>,
) {
    let deliveries = message.info().map_or(1, |i| i.delivered);
    let pipeline = message
        .subject
        .as_str()
        .strip_prefix("beeswax.jobs.")
        .unwrap_or("unknown")
        .to_string();
    let job = match JobMessage::parse(&message.payload) {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(%pipeline, error = %e, "dead-lettering a message that does not parse");
            dead_letter(fleet, &pipeline, &message, None, &e.to_string()).await;
            return;
        }
    };
    let span = tracing::info_span!("fleet_job", id = %job.id, %pipeline, deliveries);
    let delivery = Delivery {
        message: &message,
        pipeline: &pipeline,
        deliveries,
        handing_back,
    };
    run(fleet, service, delivery, job).instrument(span).await;
}

/// One delivery of a job message.
struct Delivery<'a> {
    message: &'a Message,
    /// The pipeline its subject names.
    pipeline: &'a str,
    /// Deliveries so far, this one included.
    deliveries: i64,
    /// Turns true when the worker stops for good with this job unfinished.
    handing_back: watch::Receiver<bool>,
}

/// Runs a parsed job (or settles it without running: finished, cancelled, delivered too
/// often, refused).
async fn run(fleet: &Fleet, service: &Service, delivery: Delivery<'_>, job: JobMessage) {
    let (message, pipeline) = (delivery.message, delivery.pipeline);
    let Some(mut record) = settle(fleet, &delivery, &job).await else {
        return;
    };
    let spec = match request(fleet, &job)
        .await
        .and_then(|req| validate(service, req, &NATIVE).map_err(|e| e.message))
    {
        Ok(spec) => spec,
        Err(e) => {
            let reason = format!("worker {} refused the job: {e}", fleet.config.node);
            fail(fleet, message, record, &reason, pipeline, &job.id).await;
            return;
        }
    };
    let created = from_unix_millis(job.created_at_ms);
    let local = match service.run_here(Job::accepted(job.id.clone(), spec, job.origin, created)) {
        Ok(local) => local,
        Err(e) => {
            tracing::warn!(error = %e.message, "local queue refused the job: handing it back");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    };
    record.status = RecordStatus::Started;
    record.total = local.state().total;
    record.started_at = Some(unix_secs(SystemTime::now()));
    put_record(fleet, &record).await;
    publish_event(
        fleet,
        &job.id,
        &WireEvent::Started {
            node: fleet.config.node.clone(),
        },
    )
    .await;
    tracing::info!("fleet job started");
    let mut handing_back = delivery.handing_back;
    let finished = watch_local(
        fleet,
        service,
        message,
        &local,
        &mut record,
        &mut handing_back,
    );
    // Stopped because this process shuts down (its own drain, or the service's shutdown in
    // `serve --nats --worker`): not the job's outcome, so another worker runs it.
    if !finished.await || local.stopped_for_shutdown() {
        hand_back(service, message, &local).await;
        return;
    }
    store_outcome(fleet, message, &local, record).await;
}

/// The job's record for this delivery, or `None` when the delivery is settled without running:
/// the job already finished (a repeated delivery), was cancelled before it ran, or was
/// delivered too often (dead-lettered).
async fn settle(fleet: &Fleet, delivery: &Delivery<'_>, job: &JobMessage) -> Option<JobRecord> {
    let (message, pipeline) = (delivery.message, delivery.pipeline);
    let previous = read_record(fleet, &job.id).await;
    if previous.as_ref().is_some_and(|r| r.status.is_final()) {
        tracing::info!("already finished: acknowledging the repeated delivery");
        ack(message).await;
        return None;
    }
    let mut record =
        previous.unwrap_or_else(|| JobRecord::new(&job.id, pipeline, &fleet.config.node, 0));
    record.node = fleet.config.node.clone();
    record.deliveries = delivery.deliveries;
    let cancel = fleet.state.get(cancel_key(&job.id)).await.ok().flatten();
    if cancel.is_some() {
        record.status = RecordStatus::Cancelled;
        record.finished_at = Some(unix_secs(SystemTime::now()));
        finish(fleet, message, &record).await;
        delete_inputs(fleet, &job.id).await;
        return None;
    }
    if delivery.deliveries > fleet.config.max_deliver {
        let reason = format!(
            "the job was delivered {} times and its worker stopped every time before finishing \
             it (crashed, killed or lost its connection); last worker: {}",
            delivery.deliveries - 1,
            record.node
        );
        fail(fleet, message, record, &reason, pipeline, &job.id).await;
        return None;
    }
    Some(record)
}

/// The job's request with its input picture and mask read from the inputs object store; an
/// error says what is missing or unreadable.
async fn request(fleet: &Fleet, job: &JobMessage) -> Result<GenerateRequest, String> {
    let image = job.request.image.as_ref();
    let picture = match image {
        Some(_) => Some(decode_rgb(
            &read_input(fleet, &picture_name(&job.id)).await?,
        )?),
        None => None,
    };
    let mask = match image.and_then(|i| i.mask.as_ref()) {
        Some(_) => Some(decode_mask(&read_input(fleet, &mask_name(&job.id)).await?)?),
        None => None,
    };
    job.request.clone().into_request(picture, mask)
}

async fn read_input(fleet: &Fleet, name: &str) -> Result<Vec<u8>, String> {
    let mut object = (fleet.inputs.get(name).await)
        .map_err(|e| format!("its input {name} is missing from the object store: {e}"))?;
    let mut png = Vec::new();
    object
        .read_to_end(&mut png)
        .await
        .map_err(|e| format!("reading its input {name} from the object store: {e}"))?;
    Ok(png)
}

/// Stops the local job (this worker is going away) and hands its message back at once (nak),
/// so that another worker takes it without waiting for the ack wait.
async fn hand_back(service: &Service, message: &Message, local: &Job) {
    local.stop_for_shutdown();
    service.cancel_local(local);
    match message.ack_with(AckKind::Nak(None)).await {
        Ok(()) => tracing::info!("job handed back to the stream"),
        Err(e) => {
            tracing::warn!(error = %e, "handing the job back failed; it returns after the ack wait")
        }
    }
}

/// Stores the finished local job's images and final record, then acknowledges the message
/// (not when a write failed: the job is then delivered again).
async fn store_outcome(fleet: &Fleet, message: &Message, local: &Job, mut record: JobRecord) {
    let (status, images, infotexts, warnings, error, step) = {
        let s = local.state();
        (
            s.status,
            s.images.clone(),
            s.infotexts.clone(),
            s.warnings.clone(),
            s.error.clone(),
            s.step,
        )
    };
    record.finished_at = Some(unix_secs(SystemTime::now()));
    record.step = step;
    match status {
        Status::Completed => {
            for (n, png) in images.iter().enumerate() {
                let name = image_name(&record.id, n);
                if let Err(e) = fleet.images.put(name.as_str(), &mut png.as_slice()).await {
                    tracing::warn!(error = %e, %name, "storing an image failed: leaving the job for another delivery");
                    return;
                }
            }
            record.status = RecordStatus::Completed;
            record.images = images.len();
            record.infotexts = infotexts;
            record.warnings = warnings;
        }
        Status::Cancelled => record.status = RecordStatus::Cancelled,
        _ => {
            record.status = RecordStatus::Failed;
            record.error = Some(error.unwrap_or_else(|| "the job failed".to_string()));
        }
    }
    finish(fleet, message, &record).await;
    delete_inputs(fleet, &record.id).await;
    tracing::info!(status = ?record.status, "fleet job finished");
}

/// Follows the local job until it finishes: its progress events to the event subject (and,
/// at most every [`RECORD_EVERY`], to the record), in-progress acks every third of the ack
/// wait, and a cancel request to the job. False when the worker hands the job back instead
/// (`handing_back` turned true before it finished).
async fn watch_local(
    fleet: &Fleet,
    service: &Service,
    message: &Message,
    local: &Arc<Job>,
    record: &mut JobRecord,
    handing_back: &mut watch::Receiver<bool>,
) -> bool {
    let mut rx = local.subscribe();
    let mut next = 0;
    let mut keepalive =
        tokio::time::interval((fleet.config.ack_wait / 3).max(Duration::from_millis(100)));
    keepalive.tick().await;
    let mut cancel = fleet.state.watch(cancel_key(&record.id)).await.ok();
    let mut recorded = Instant::now();
    loop {
        let (events, status, step) = {
            let s = local.state();
            (
                s.events.get(next..).unwrap_or_default().to_vec(),
                s.status,
                s.step,
            )
        };
        next += events.len();
        for event in events {
            if let Event::Progress {
                step,
                total,
                preview,
            } = event
            {
                let wire = WireEvent::Progress {
                    step,
                    total,
                    preview,
                };
                publish_event(fleet, &record.id, &wire).await;
            }
        }
        if status.is_final() {
            return true;
        }
        if *handing_back.borrow() {
            return false;
        }
        if step != record.step && recorded.elapsed() >= RECORD_EVERY {
            record.step = step;
            record.status = RecordStatus::Progress;
            put_record(fleet, record).await;
            recorded = Instant::now();
        }
        let cancelled = async {
            match cancel.as_mut() {
                Some(watch) => watch.next().await.is_some(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return true },
            Ok(()) = handing_back.changed() => {}
            _ = keepalive.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "in-progress ack failed");
                }
            }
            true = cancelled => {
                tracing::info!("cancel requested");
                service.cancel_local(local);
                cancel = None;
            }
        }
    }
}

async fn read_record(fleet: &Fleet, id: &str) -> Option<JobRecord> {
    let bytes = fleet.state.get(id).await.ok().flatten()?;
    JobRecord::parse(&bytes).ok()
}

async fn put_record(fleet: &Fleet, record: &JobRecord) -> bool {
    match fleet.state.put(&record.id, record.to_bytes().into()).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "writing the job state failed");
            false
        }
    }
}

async fn publish_event(fleet: &Fleet, id: &str, event: &WireEvent) {
    let payload = serde_json::to_vec(event).unwrap_or_default();
    if let Err(e) = fleet
        .client
        .publish(event_subject(id), payload.into())
        .await
    {
        tracing::debug!(error = %e, "publishing a progress event failed");
    }
}

/// Stores the final record, then acknowledges (only then: a worker dying in between leaves
/// the job to be redelivered, and the next delivery sees the final record and just acks).
async fn finish(fleet: &Fleet, message: &Message, record: &JobRecord) {
    if put_record(fleet, record).await {
        ack(message).await;
    }
}

async fn ack(message: &Message) {
    if let Err(e) = message.double_ack().await {
        tracing::warn!(error = %e, "acknowledging the job failed; it may be delivered again");
    }
}

/// Marks the job failed with `reason`, dead-letters it, acknowledges it.
async fn fail(
    fleet: &Fleet,
    message: &Message,
    mut record: JobRecord,
    reason: &str,
    pipeline: &str,
    id: &str,
) {
    tracing::warn!(reason, "job failed for good: dead-lettering it");
    record.status = RecordStatus::Failed;
    record.error = Some(reason.to_string());
    record.finished_at = Some(unix_secs(SystemTime::now()));
    if put_record(fleet, &record).await {
        dead_letter(fleet, pipeline, message, Some(id), reason).await;
        delete_inputs(fleet, id).await;
    }
}

/// Publishes the message to `beeswax.dead.<pipeline>` with the reason in headers, then
/// acknowledges the original (never retried).
async fn dead_letter(
    fleet: &Fleet,
    pipeline: &str,
    message: &Message,
    id: Option<&str>,
    reason: &str,
) {
    let mut headers = async_nats::HeaderMap::new();
    // Header values are one line.
    headers.insert("Beeswax-Reason", reason.replace(['\r', '\n'], " ").as_str());
    if let Some(id) = id {
        headers.insert("Beeswax-Job-Id", id);
    }
    let subject = dead_subject(if is_subject_token(pipeline) {
        pipeline
    } else {
        "unknown"
    });
    let published = match fleet
        .js
        .publish_with_headers(subject, headers, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
        Ok(()) => ack(message).await,
        Err(e) => tracing::warn!(error = %e, "dead-lettering failed; the job stays in the stream"),
    }
}
