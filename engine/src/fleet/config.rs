//! Fleet settings (`--nats`, `--nats-creds`, `--nats-stream`, ...).

use std::path::PathBuf;
use std::time::Duration;

/// How to reach NATS and how the job stream behaves.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Server URL(s), comma-separated: `nats://host:4222`, `tls://host:4222`.
    pub url: String,
    /// A `.creds` file (JWT and NKey seed) or an NKey user seed file, if the server wants one.
    pub creds: Option<PathBuf>,
    /// A PEM file of the certificate authorities to trust for `tls://` (besides the system's),
    /// e.g. a self-signed server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// The jobs stream's name.
    pub stream: String,
    /// Deliveries of a job before it is dead-lettered as failed.
    pub max_deliver: i64,
    /// Jobs that may wait per pipeline; beyond it the API node answers 429.
    pub max_waiting: usize,
    /// How long a worker may hold a job without acknowledging (it sends progress acks every
    /// third of it while it runs).
    pub ack_wait: Duration,
    /// How long finished jobs' state and images stay.
    pub keep_finished: Duration,
    /// This process's name in job records (`node`).
    pub node: String,
    /// How long to keep trying to connect at start.
    pub connect_timeout: Duration,
}

impl FleetConfig {
    /// Defaults for `url`: stream `BEESWAX_JOBS`, 3 deliveries, 16 waiting jobs per pipeline,
    /// 30 s ack wait, 600 s retention.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            creds: None,
            tls_ca: None,
            stream: "BEESWAX_JOBS".to_string(),
            max_deliver: 3,
            max_waiting: 16,
            ack_wait: Duration::from_secs(30),
            keep_finished: Duration::from_secs(600),
            node: default_node_name(),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// `<host name>-<process id>`.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_string());
    format!("{host}-{}", std::process::id())
}
