//! A job's state record in the `BEESWAX_JOB_STATE` bucket (key: the job id), written by the
//! API node (queued) and the worker running it (everything after).

use serde::{Deserialize, Serialize};

use super::message::JobMessage;
use super::FleetError;

/// Where a fleet job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// In the stream, waiting for a worker.
    Queued,
    /// A worker took it.
    Started,
    /// Running (step counts current).
    Progress,
    /// Done: `images` PNGs in the object store.
    Completed,
    /// Stopped by an error, or dead-lettered.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl RecordStatus {
    /// Whether the job has finished.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// The record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Format version (1).
    pub v: u32,
    /// The job id.
    pub id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// Where it is.
    pub status: RecordStatus,
    /// The node that wrote this record (API node when queued, then the worker).
    pub node: String,
    /// Deliveries so far (1 on the first worker).
    pub deliveries: i64,
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
    /// Images in the object store (`<id>/<n>`), when completed.
    pub images: usize,
    /// AUTOMATIC1111 `parameters` text of each image.
    #[serde(default)]
    pub infotexts: Vec<String>,
    /// Warnings of the run.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The error, when failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Unix seconds it started running.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Unix seconds it finished.
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// The job as published, so that any API node can answer for it.
    #[serde(default)]
    pub message: Option<JobMessage>,
}

impl JobRecord {
    /// A queued record of `message`, written by `node`.
    pub fn queued(message: &JobMessage, node: &str, total: usize) -> Self {
        Self {
            message: Some(message.clone()),
            ..Self::new(&message.id, message.pipeline(), node, total)
        }
    }

    /// A queued record without the message (one that did not come from an API node).
    pub fn new(id: &str, pipeline: &str, node: &str, total: usize) -> Self {
        Self {
            v: 1,
            id: id.to_string(),
            pipeline: pipeline.to_string(),
            status: RecordStatus::Queued,
            node: node.to_string(),
            deliveries: 0,
            step: 0,
            total,
            images: 0,
            infotexts: Vec::new(),
            warnings: Vec::new(),
            error: None,
            started_at: None,
            finished_at: None,
            message: None,
        }
    }

    /// The JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record.
    pub fn parse(bytes: &[u8]) -> Result<Self, FleetError> {
        serde_json::from_slice(bytes).map_err(|e| FleetError::BadMessage {
            reason: format!("job state record does not parse: {e}"),
        })
    }
}

/// The key of job `id`'s cancel request.
pub fn cancel_key(id: &str) -> String {
    format!("cancel.{id}")
}

/// The object name of image `n` of job `id`.
pub fn image_name(id: &str, n: usize) -> String {
    format!("{id}/{n}")
}
