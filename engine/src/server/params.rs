//! Path and query-string parameters with JSON errors: axum's own extractors answer a bad
//! parameter (`?limit=1&limit=2`, a path segment that is not UTF-8) in plain text, which no
//! client of a JSON API expects and /openapi.json does not promise.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::errors::{A1111Error, ApiError};

/// Path parameters; a bad one is a 400 in the native error shape.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

/// Query parameters; a bad one is a 400 in the native error shape.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

/// Query parameters on `/sdapi/...`; a bad one is a 400 in AUTOMATIC1111's error shape.
#[derive(Debug)]
pub struct A1111Query<T>(pub T);

fn path_error(e: PathRejection) -> ApiError {
    ApiError::invalid(
        "path",
        "invalid_path",
        format!("the URL path is not valid here: {}", e.body_text()),
    )
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::invalid(
        "query",
        "invalid_query",
        format!(
            "the query string is not valid here: {}; see /openapi.json",
            e.body_text()
        ),
    )
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(path_error)?;
        Ok(Self(value))
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(query_error)?;
        Ok(Self(value))
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for A1111Query<T> {
    type Rejection = A1111Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| A1111Error(query_error(e)))?;
        Ok(Self(value))
    }
}
