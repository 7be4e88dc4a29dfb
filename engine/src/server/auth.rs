//! Bearer authentication: with an API key set, every route but `/health` and the web UI's
//! page and assets (which hold no secrets; the page asks for the key) needs
//! `Authorization: Bearer KEY` (or HTTP Basic with the key as password, for AUTOMATIC1111
//! clients that only speak `--api-auth`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::errors::{A1111Error, ApiError};
use super::service::Service;

/// Whether `a` equals `b`, in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the request's credentials against `key`.
pub fn check(headers: &HeaderMap, key: &str) -> Result<(), ApiError> {
    let unauthorized = |code, message: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            code,
            message,
        )
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing_api_key",
            "this server needs an API key: send `Authorization: Bearer YOUR_KEY`",
        ));
    };
    let value = value.to_str().unwrap_or_default().trim();
    let given = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().as_bytes().to_vec()
    } else if let Some(basic) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .unwrap_or_default();
        match decoded.iter().position(|&b| b == b':') {
            Some(i) => decoded[i + 1..].to_vec(),
            None => decoded,
        }
    } else {
        return Err(unauthorized(
            "invalid_api_key",
            "the Authorization header is not `Bearer YOUR_KEY`",
        ));
    };
    if same(&given, key.as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized("invalid_api_key", "the API key is not valid"))
    }
}

/// The middleware.
pub async fn require_key(
    State(service): State<Arc<Service>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(key) = service.config.api_key.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/health" || (service.config.web_ui && super::webui::is_public(path)) {
        return next.run(req).await;
    }
    match check(req.headers(), key) {
        Ok(()) => next.run(req).await,
        Err(e) if path.starts_with("/sdapi/") => A1111Error(e).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bearer_and_basic_and_refuses_others() {
        let mut h = HeaderMap::new();
        assert_eq!(check(&h, "k1").unwrap_err().code, "missing_api_key");
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert!(check(&h, "k1").is_ok());
        assert_eq!(check(&h, "k2").unwrap_err().code, "invalid_api_key");
        let basic = base64::engine::general_purpose::STANDARD.encode("user:k1");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert!(check(&h, "k1").is_ok());
    }
}
