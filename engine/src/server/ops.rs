//! Operations routes and layers: `/health`, `/metrics`, `/openapi.json`, JSON answers for
//! unknown routes and methods, and HTTP status counting.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::errors::{A1111Error, ApiError};
use super::service::Service;

/// `GET /health`: 200 while serving, 503 while shutting down or (fleet mode) while NATS is
/// unreachable. Never needs the API key.
pub async fn health(State(service): State<Arc<Service>>) -> (StatusCode, Json<Value>) {
    let g = service.gauges();
    let accepting = service.accepting();
    let remote = service.remote().map(|r| r.health());
    let reachable = remote.as_ref().is_none_or(|r| r.ok);
    let status = if accepting && reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = match (accepting, reachable) {
        (false, _) => "shutting_down",
        (true, false) => "nats_unreachable",
        (true, true) => "ok",
    };
    let mut body = json!({
        "status": word,
        "pipelines": g.pipelines,
        "models_loaded": g.models_loaded,
        "queue": {"depth": g.queue_depth, "capacity": g.queue_capacity},
        "running": g.running,
    });
    if let Some(remote) = remote {
        body["nats"] = remote.details;
    }
    (status, Json(body))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(service): State<Arc<Service>>) -> Response {
    let mut text = service.metrics.render(service.gauges());
    if let Some(remote) = service.remote() {
        text.push_str(&remote.metrics(&service).await);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /openapi.json`: every route, with this server's limits and names.
pub async fn openapi(State(service): State<Arc<Service>>) -> Json<Value> {
    Json(super::openapi::document(&service))
}

fn shaped(uri: &Uri, e: ApiError) -> Response {
    if uri.path().starts_with("/sdapi/") {
        A1111Error(e).into_response()
    } else {
        e.into_response()
    }
}

/// Unknown routes.
pub async fn not_found(uri: Uri) -> Response {
    let message = format!(
        "no route {}: see /openapi.json for the native API",
        uri.path()
    );
    shaped(&uri, ApiError::not_found("unknown_route", message))
}

/// Known routes, wrong method.
pub async fn method_not_allowed(uri: Uri) -> Response {
    let e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!(
            "{} does not take this method: see /openapi.json",
            uri.path()
        ),
    );
    shaped(&uri, e)
}

/// Counts every response by status for `/metrics`.
pub async fn count_status(
    State(service): State<Arc<Service>>,
    req: Request,
    next: Next,
) -> Response {
    let response = next.run(req).await;
    service.metrics.http(response.status().as_u16());
    response
}
