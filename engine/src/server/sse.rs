//! `GET /v1/jobs/{id}/events`: the job's events as server-sent events, replayed from the start
//! (or after `Last-Event-ID`), then live until the job finishes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;

use super::errors::ApiError;
use super::jobs::{Event, Job};
use super::params::PathParams;
use super::service::Service;

/// The handler.
pub async fn events(
    State(service): State<Arc<Service>>,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let job = service
        .find_job(&id)
        .await
        .ok_or_else(|| ApiError::not_found("unknown_job", format!("no job `{id}`")))?;
    let start = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(0, |last| last + 1);
    Ok(Sse::new(stream(job, start)).keep_alive(KeepAlive::default()))
}

/// Event `index` of the job, as SSE (`id` is the index, `event` the type, `data` JSON).
fn to_sse(index: usize, event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_string());
    SseEvent::default()
        .id(index.to_string())
        .event(event.name())
        .data(data)
}

/// The job's events from `start` on; ends after the final one.
pub fn stream(job: Arc<Job>, start: usize) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let rx = job.subscribe();
    futures_util::stream::unfold((job, rx, start), |(job, mut rx, next)| async move {
        loop {
            let (event, finished, len) = {
                let s = job.state();
                (
                    s.events.get(next).cloned(),
                    s.status.is_final(),
                    s.events.len(),
                )
            };
            if let Some(event) = event {
                return Some((Ok(to_sse(next, &event)), (job, rx, next + 1)));
            }
            if finished && next >= len {
                return None;
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
}
