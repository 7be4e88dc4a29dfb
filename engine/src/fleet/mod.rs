//! Fleet mode: API nodes and workers on separate machines, joined by NATS JetStream
//! (`beeswax serve --nats URL`, `beeswax worker --nats URL`).
//!
//! - Jobs: a work-queue stream (default `BEESWAX_JOBS`, file storage) with one subject per
//!   pipeline, `beeswax.jobs.<pipeline>`; the message is [`JobMessage`] (JSON, versioned).
//!   Workers serving a pipeline share one durable pull consumer on its subject (a work-queue
//!   stream allows one consumer per subject) and each fetches only while it has a free slot.
//!   A running job sends in-progress acks every third of the ack wait; a job whose worker
//!   died is redelivered, and delivered more than `max_deliver` times it is dead-lettered
//!   (`beeswax.dead.<pipeline>`, kept in the `BEESWAX_DEAD` stream) and reported failed.
//! - State: the key-value bucket `BEESWAX_JOB_STATE`, one [`JobRecord`] per job id, and
//!   `cancel.<id>` keys a worker watches while it runs the job.
//! - Workers: each announces itself on `beeswax.workers` every 5 s (its pipelines, what
//!   `/v1/pipelines` shows of them, the sampler names it knows); API nodes count the workers
//!   heard from (`/metrics`, `/health`), and an API node without models (no manifests folder)
//!   lists and checks jobs against what they announce ([`crate::server::Offer`]).
//! - Events: progress and previews on core subjects `beeswax.events.<id>`, which the API node
//!   that accepted the job turns into the same server-sent events as embedded mode.
//! - Images: the object store `BEESWAX_IMAGES`, `<id>/<n>`, PNGs with their parameters chunk,
//!   kept for `keep_finished`. An image job's input picture and mask wait in `BEESWAX_INPUTS`
//!   (`<id>/picture`, `<id>/mask`) until its worker has finished it.
//!
//! Layout: [`config`](FleetConfig) and [`Fleet`] (connecting, creating and checking the stream
//! and buckets), message (the job message), record (the state record), node (the API node's
//! [`crate::server::Remote`]), metrics (its Prometheus lines), roster (worker heartbeats),
//! worker (the pull loop running jobs through the service's own workers).

mod config;
mod connect;
mod error;
mod message;
mod metrics;
mod node;
mod record;
mod roster;
mod worker;

pub use config::FleetConfig;
pub use connect::Fleet;
pub use error::FleetError;
pub use message::{mask_name, picture_name, JobMessage, WireEvent, VERSION};
pub use node::ApiNode;
pub use record::{JobRecord, RecordStatus};
pub use roster::{Heartbeat, Roster, HEARTBEAT_SUBJECT};
pub use worker::{run_worker, WorkerOptions};

/// The subject of `pipeline`'s jobs.
pub fn job_subject(pipeline: &str) -> String {
    format!("beeswax.jobs.{pipeline}")
}

/// The dead-letter subject of `pipeline`.
pub fn dead_subject(pipeline: &str) -> String {
    format!("beeswax.dead.{pipeline}")
}

/// The core subject of job `id`'s progress events.
pub fn event_subject(id: &str) -> String {
    format!("beeswax.events.{id}")
}

/// Whether `name` can be one subject token (and a consumer name): no dots, spaces,
/// wildcards or control characters, not empty.
pub fn is_subject_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens() {
        assert!(is_subject_token("tiny-sd_2"));
        for bad in ["", "a.b", "a b", "a*", ">", "sd/xl"] {
            assert!(!is_subject_token(bad), "{bad}");
        }
        assert_eq!(job_subject("tiny-sd"), "beeswax.jobs.tiny-sd");
    }
}
