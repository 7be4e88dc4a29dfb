//! The router (routes, body limit, authentication, request ids, tracing) and the server loop
//! with graceful shutdown.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::errors::BodyLimit;
use super::service::Service;
use super::site::{self, Site};
use super::{
    a1111, a1111_img2img, auth, choices, embeddings, gallery, native, openai, openai_edits, ops,
    sse, webui,
};

/// After shutdown, how long open connections may take to close before the server stops anyway.
const CONNECTION_GRACE: Duration = Duration::from_secs(10);

/// Every route of the service, answering as `site`.
pub fn router(service: Arc<Service>, site: Arc<Site>) -> Router {
    let limit = service.config.max_body_bytes;
    let mut routes = Router::new();
    if service.config.web_ui {
        routes = routes
            .route("/", get(webui::index))
            .route("/ui/{version}/{file}", get(webui::asset));
    }
    routes
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/pipelines", get(native::pipelines))
        .route("/v1/embeddings", get(embeddings::list))
        .route("/v1/jobs", post(native::create))
        .route("/v1/jobs/{id}", get(native::status).delete(native::cancel))
        .route("/v1/jobs/{id}/events", get(sse::events))
        .route("/v1/jobs/{id}/images/{n}", get(native::image))
        .route("/v1/gallery", get(gallery::list))
        .route("/v1/samplers", get(choices::samplers))
        .route("/v1/loras", get(choices::loras))
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai_edits::edits))
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/img2img", post(a1111_img2img::img2img))
        .route("/sdapi/v1/progress", get(a1111::progress))
        .route("/sdapi/v1/interrupt", post(a1111::interrupt))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/schedulers", get(a1111::schedulers_list))
        .route("/sdapi/v1/options", get(a1111::options).post(a1111::set_options))
        .route("/sdapi/v1/scripts", get(a1111::scripts))
        .route("/sdapi/v1/embeddings", get(embeddings::a1111))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(from_fn_with_state(service.clone(), auth::require_key))
        .layer(from_fn_with_state(site.clone(), site::guard))
        .layer(Extension(site))
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(BodyLimit(limit)))
        .layer(from_fn_with_state(service.clone(), ops::count_status))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", id, method = %req.method(), path = %req.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(service)
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops gracefully: no new
/// connections or jobs, waiting jobs cancelled, running jobs given the configured timeout to
/// finish (then cancelled), workers joined, open connections given a short grace to close.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let site = Site::new(
        listener.local_addr()?,
        service.config.public_url.as_deref(),
        &service.config.cors_origins,
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(service.clone(), Arc::new(site)))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutdown requested: no new connections or jobs");
            let _ = tx.send(());
        })
        .into_future();
    let server = tokio::spawn(server);
    let signalled = rx.await.is_ok();
    let timeout = if signalled {
        service.config.shutdown_timeout
    } else {
        Duration::ZERO
    };
    service.shutdown(timeout).await;
    match tokio::time::timeout(CONNECTION_GRACE, server).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!("connections still open after the grace period: stopping anyway");
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
