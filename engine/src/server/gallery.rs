//! `GET /v1/gallery`: the finished images this server still holds (completed jobs of every
//! API, kept `--keep-finished` seconds), newest first, paged, each with its parameters: the
//! AUTOMATIC1111 `parameters` text of its PNG chunk and the same settings as JSON, ready to
//! post again to `/v1/jobs`.
//!
//! Paging is by cursor, not offset, so images finishing while a client pages do not shift the
//! pages: `next` is the position of the last image of a page, and `?before=NEXT` lists what
//! comes after it.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::jobs::{unix_secs, Job, Status};
use super::params::QueryParams;
use super::service::Service;

/// Images per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 24;
/// Most images one page may hold.
pub const MAX_LIMIT: usize = 100;

/// The query string.
#[derive(Debug, Deserialize)]
pub struct GalleryQuery {
    /// Images per page, 1 to [`MAX_LIMIT`].
    limit: Option<String>,
    /// The `next` cursor of the previous page.
    before: Option<String>,
}

/// An image's place in the listing: later finish first, then job id, then index in the job.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    finished: Reverse<u128>,
    job: Reverse<String>,
    index: usize,
}

impl Position {
    /// The opaque cursor naming this position: `NANOS.JOB.INDEX`.
    fn cursor(&self) -> String {
        format!("{}.{}.{}", self.finished.0, self.job.0, self.index)
    }

    fn parse(cursor: &str) -> Option<Self> {
        let mut parts = cursor.trim().split('.');
        let finished = parts.next()?.parse().ok()?;
        let job = parts.next()?.to_string();
        let index = parts.next()?.parse().ok()?;
        if parts.next().is_some() || job.is_empty() {
            return None;
        }
        Some(Self {
            finished: Reverse(finished),
            job: Reverse(job),
            index,
        })
    }
}

/// Page size from `limit`.
fn limit(value: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = value else {
        return Ok(DEFAULT_LIMIT);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(
            "limit",
            "out_of_range",
            format!("limit must be a whole number from 1 to {MAX_LIMIT} (got `{text}`)"),
        )),
    }
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    let be = |at: usize| -> Option<u32> {
        let b: [u8; 4] = png.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b))
    };
    (png.get(12..16) == Some(b"IHDR")).then_some(())?;
    Some((be(16)?, be(20)?))
}

/// One listed image.
fn entry(job: &Job, index: usize, png: &[u8], infotext: Option<&String>) -> Value {
    let (width, height) = png_size(png).unwrap_or((0, 0));
    let finished_at = job.state().finished_at.map(unix_secs);
    json!({
        "job": job.id,
        "index": index,
        "url": job.image_path(index),
        "width": width,
        "height": height,
        "pipeline": job.summary.pipeline,
        "created_at": unix_secs(job.created_at),
        "finished_at": finished_at,
        "infotext": infotext,
        "parameters": job.summary.image_parameters.get(index),
    })
}

/// Every held image's position, with its job and index.
fn positions(jobs: &[Arc<Job>]) -> Vec<(Position, Arc<Job>, usize)> {
    let mut all = Vec::new();
    for job in jobs {
        let (count, finished) = {
            let s = job.state();
            if s.status != Status::Completed {
                continue;
            }
            (s.images.len(), s.finished_at)
        };
        let nanos = finished
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        for index in 0..count {
            let position = Position {
                finished: Reverse(nanos),
                job: Reverse(job.id.clone()),
                index,
            };
            all.push((position, job.clone(), index));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// The handler.
pub async fn list(
    State(service): State<Arc<Service>>,
    QueryParams(q): QueryParams<GalleryQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(q.limit.as_deref())?;
    let after = match q.before.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Position::parse(c).ok_or_else(|| {
            ApiError::invalid(
                "before",
                "invalid_cursor",
                format!("before `{c}` is not a gallery cursor: pass the `next` value of a page"),
            )
        })?),
    };
    let all = positions(&service.jobs.all());
    let total = all.len();
    let page: Vec<_> = all
        .into_iter()
        .filter(|(p, ..)| after.as_ref().is_none_or(|a| p > a))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    let page = &page[..page.len().min(limit)];
    let next = if more {
        page.last().map(|(p, ..)| p.cursor())
    } else {
        None
    };
    let images: Vec<Value> = page
        .iter()
        .filter_map(|(_, job, index)| {
            let s = job.state();
            let png = s.images.get(*index)?.clone();
            let text = s.infotexts.get(*index).cloned();
            drop(s);
            Some(entry(job, *index, &png, text.as_ref()))
        })
        .collect();
    Ok(Json(
        json!({ "images": images, "next": next, "total": total }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(finished: u128, job: &str, index: usize) -> Position {
        Position {
            finished: Reverse(finished),
            job: Reverse(job.into()),
            index,
        }
    }

    #[test]
    fn newest_first_then_in_batch_order() {
        let mut v = vec![at(5, "a", 1), at(9, "b", 0), at(5, "a", 0), at(7, "c", 0)];
        v.sort();
        assert_eq!(
            v,
            vec![at(9, "b", 0), at(7, "c", 0), at(5, "a", 0), at(5, "a", 1)]
        );
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let p = at(1_700_000_000_123_456_789, "0b1c-22", 3);
        assert_eq!(Position::parse(&p.cursor()), Some(p));
        for bad in ["", "x.y.z", "1.job", "1..0", "1.job.2.3", "-1.job.0"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some("7")).unwrap(), 7);
        for bad in ["0", "101", "ten", "-1"] {
            assert_eq!(
                limit(Some(bad)).unwrap_err().param.as_deref(),
                Some("limit")
            );
        }
    }

    #[test]
    fn reads_the_png_size() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend(640u32.to_be_bytes());
        png.extend(48u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((640, 48)));
        assert_eq!(png_size(b"GIF89a"), None);
    }
}
