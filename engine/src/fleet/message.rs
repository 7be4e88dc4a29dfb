//! The job message on the work-queue stream: what an API node publishes on
//! `beeswax.jobs.<pipeline>` and a worker runs. JSON, versioned (`v`), carrying the request as
//! the data directory records it ([`StoredRequest`]: validated, its seed fixed, so every
//! delivery makes the same images) and what the routes show of the job ([`Summary`], so that
//! any API node can answer for it without validating it again). An image job's picture and
//! mask do not travel in the message (NATS's default payload limit is 1 MB): the API node puts
//! them in the `BEESWAX_INPUTS` object store as PNGs ([`picture_name`], [`mask_name`]).

use serde::{Deserialize, Serialize};

use super::FleetError;
use crate::server::store::StoredRequest;
use crate::server::{Origin, Summary};

/// The message format version this build writes and reads (2: the request as
/// [`StoredRequest`], pictures in the object store).
pub const VERSION: u32 = 2;

/// A job on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    /// Format version ([`VERSION`]).
    pub v: u32,
    /// The job id (a UUID), the same on every node.
    pub id: String,
    /// The API that accepted it.
    pub origin: Origin,
    /// When it was accepted, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// What the routes show of it.
    pub summary: Summary,
    /// What to run (`pipeline` always set: it is also the subject); with `image` set, the
    /// picture (and mask) wait in the inputs object store.
    pub request: StoredRequest,
}

/// The input object store's name of job `id`'s picture.
pub fn picture_name(id: &str) -> String {
    format!("{id}/picture")
}

/// The input object store's name of job `id`'s mask.
pub fn mask_name(id: &str) -> String {
    format!("{id}/mask")
}

impl JobMessage {
    /// The JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The pipeline it runs on.
    pub fn pipeline(&self) -> &str {
        self.request
            .pipeline
            .as_deref()
            .unwrap_or(&self.summary.pipeline)
    }

    /// Reads a message; the error says what is wrong with it (such a message is
    /// dead-lettered, never retried).
    pub fn parse(bytes: &[u8]) -> Result<Self, FleetError> {
        #[derive(Deserialize)]
        struct Version {
            v: Option<u32>,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| FleetError::BadMessage {
                reason: format!("not a JSON job message: {e}"),
            })?;
        match version.v {
            Some(VERSION) => {}
            Some(v) => {
                return Err(FleetError::BadMessage {
                    reason: format!(
                        "message format version {v}; this worker reads version {VERSION}: \
                         run workers of the same beeswax version as the API nodes"
                    ),
                })
            }
            None => {
                return Err(FleetError::BadMessage {
                    reason: "no `v` (format version) field".to_string(),
                })
            }
        }
        serde_json::from_slice(bytes).map_err(|e| FleetError::BadMessage {
            reason: format!("job message version {VERSION} does not parse: {e}"),
        })
    }
}

/// What a worker publishes on `beeswax.events.<id>` (core NATS, not kept) while it runs a
/// job; the accepting API node turns it into the job's server-sent events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireEvent {
    /// A worker took the job.
    Started {
        /// The worker.
        node: String,
    },
    /// A step finished.
    Progress {
        /// Steps done.
        step: usize,
        /// Steps in all.
        total: usize,
        /// A preview, `data:image/png;base64,...`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraRequest;
    use crate::server::store::record::StoredImage;

    fn message() -> JobMessage {
        JobMessage {
            v: VERSION,
            id: "0a1b".to_string(),
            origin: Origin::OpenAi,
            created_at_ms: 7,
            summary: Summary {
                pipeline: "tiny-sd".to_string(),
                parameters: serde_json::json!({"steps": 3}),
                image_parameters: vec![serde_json::json!({"seed": 42})],
            },
            request: StoredRequest {
                pipeline: Some("tiny-sd".to_string()),
                prompt: "a bee".to_string(),
                steps: Some(3),
                seed: Some(42),
                loras: vec![LoraRequest {
                    name: "x".to_string(),
                    weight: Some(0.5),
                }],
                image: Some(StoredImage {
                    strength: Some(0.5),
                    resize: None,
                    sample_posterior: false,
                    mask: None,
                }),
                ..StoredRequest::default()
            },
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = message();
        let back = JobMessage::parse(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.pipeline(), "tiny-sd");
        assert_eq!(picture_name(&m.id), "0a1b/picture");
    }

    #[test]
    fn refuses_garbage_other_versions_and_unknown_fields() {
        let garbage = JobMessage::parse(b"\x00not json").unwrap_err().to_string();
        assert!(garbage.contains("not a JSON job message"), "{garbage}");
        let mut v1 = serde_json::to_value(message()).unwrap();
        v1["v"] = 1.into();
        let e = JobMessage::parse(v1.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 1"), "{e}");
        let mut extra = serde_json::to_value(message()).unwrap();
        extra["colour"] = "red".into();
        let e = JobMessage::parse(extra.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
    }
}
