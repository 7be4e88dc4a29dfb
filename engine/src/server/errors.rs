//! API errors: one type, [`ApiError`], rendered in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`) on the native and OpenAI routes and in
//! AUTOMATIC1111's shape (`{"error", "detail", "body", "errors"}`) on `/sdapi/...` via
//! [`A1111Error`]. Request bodies are read by [`JsonBody`] and [`A1111Json`], which turn
//! every problem (too large, not JSON, a field of the wrong type) into a 4xx naming it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

/// An error answer: status, OpenAI-style type and code, the parameter at fault and a message
/// that says what was wrong and how to fix it.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `server_error`, ...
    pub kind: &'static str,
    /// A stable machine-readable code, e.g. `unknown_pipeline`.
    pub code: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// What was wrong.
    pub message: String,
    /// Seconds for a `Retry-After` header (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 about request field `param`.
    pub fn invalid(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code,
            param: Some(param.to_string()),
            message: message.into(),
            retry_after: None,
        }
    }

    /// An error with any status and no parameter.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 404 for something that does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// A 500 for a job that failed while running.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "job_failed",
            message,
        )
    }

    /// Sets the parameter at fault.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    fn headers(&self, response: &mut Response) {
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the oversized body was never read, so the connection cannot carry
            // another request: tell the client to open a new one instead of reusing it.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, Json(body)).into_response();
        self.headers(&mut response);
        response
    }
}

/// An [`ApiError`] rendered as AUTOMATIC1111's API renders errors.
#[derive(Debug)]
pub struct A1111Error(pub ApiError);

impl From<ApiError> for A1111Error {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for A1111Error {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = json!({
            "error": e.code,
            "detail": e.message,
            "body": "",
            "errors": e.message,
        });
        let mut response = (e.status, Json(body)).into_response();
        e.headers(&mut response);
        response
    }
}

/// A JSON request body, parsed with errors that name the field at fault.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// [`JsonBody`] for the `/sdapi/...` routes: errors in AUTOMATIC1111's shape.
#[derive(Debug)]
pub struct A1111Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(read_json(req, state).await?))
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for A1111Json<T> {
    type Rejection = A1111Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(read_json(req, state).await?))
    }
}

/// Reads the body (bounded by the router's body limit) and parses it as `T`.
async fn read_json<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<T, ApiError> {
    require_json(req.headers())?;
    let limit = req.extensions().get::<BodyLimit>().map(|l| l.0);
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let limit = limit.map_or(String::new(), |l| format!(" of {l} bytes"));
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "body_too_large",
                format!("the request body is larger than the limit{limit}; send a smaller request"),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unreadable_body",
                format!("could not read the request body: {rejection}"),
            )
        }
    })?;
    parse_json(&bytes)
}

/// Refuses a body that is not declared JSON: a web page on another site can send a form
/// or `text/plain` body without asking, but not an `application/json` one.
fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim().to_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return Ok(());
    }
    let given = if given.is_empty() {
        "no Content-Type".to_string()
    } else {
        format!("Content-Type `{given}`")
    };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        "unsupported_media_type",
        format!(
            "the request body must be JSON sent with `Content-Type: application/json` (got \
             {given}); with curl use --json or -H 'Content-Type: application/json'"
        ),
    ))
}

/// Parses `bytes` as `T`, naming the field of a type error (`steps: invalid type: ...`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "malformed_json",
                format!("the request body is not valid JSON: {inner}"),
            )
        } else if path == "." || path.is_empty() {
            ApiError::invalid(
                "body",
                "invalid_body",
                format!("the request body is not the expected JSON object: {inner}"),
            )
        } else {
            let message = inner
                .to_string()
                .replace("expected i64", "expected a whole number")
                .replace("expected f64", "expected a number")
                .replace("expected a string", "expected a string (text)");
            ApiError::invalid(
                &path,
                "invalid_field",
                format!("field `{path}`: {message}; fix its value"),
            )
        }
    })
}

/// The configured body limit, stored in request extensions so errors can state it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);
