//! Service settings: queue, workers, retention, limits, authentication.

use std::path::PathBuf;
use std::time::Duration;

/// Request limits: the largest job a request may ask for. Pipelines may set their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest width in pixels.
    pub max_width: usize,
    /// Largest height in pixels.
    pub max_height: usize,
    /// Most denoising steps.
    pub max_steps: usize,
    /// Most images one request may make (batch × iterations, or OpenAI's `n`).
    pub max_images: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_width: 2048,
            max_height: 2048,
            max_steps: 150,
            max_images: 8,
        }
    }
}

/// The default bound of the bytes finished jobs hold: 1 GiB.
pub const DEFAULT_MAX_FINISHED_BYTES: usize = 1 << 30;

/// Everything `beeswax serve` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Jobs that may wait in the queue (running jobs do not count); beyond it, 429.
    pub queue_size: usize,
    /// Jobs that run at once, each on its own worker thread.
    pub concurrency: usize,
    /// How long finished jobs (and their images) stay available.
    pub keep_finished: Duration,
    /// Most finished jobs kept; the oldest go first.
    pub max_finished: usize,
    /// Most bytes the finished jobs kept may hold (images, previews, texts); the oldest go
    /// first.
    pub max_finished_bytes: usize,
    /// Where accepted jobs and finished images are kept across restarts (`--data-dir`);
    /// `None`: in memory only.
    pub data_dir: Option<PathBuf>,
    /// Where every finished image is also saved, AUTOMATIC1111-style (`--output-dir`).
    pub output_dir: Option<PathBuf>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Default request limits (pipelines may override them).
    pub limits: Limits,
    /// Bearer token every route but `/health` requires, when set.
    pub api_key: Option<String>,
    /// On shutdown, how long running jobs may take to finish before they are cancelled.
    pub shutdown_timeout: Duration,
    /// Serve the web UI at `/` (`beeswax serve --no-ui` turns it off).
    pub web_ui: bool,
    /// The base URL clients reach the service at (`--public-url`), for links in responses;
    /// `None`: the bound address.
    pub public_url: Option<String>,
    /// Other sites' origins whose web pages may use the service (`--cors-origin`; `*`: any).
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            queue_size: 16,
            concurrency: 1,
            keep_finished: Duration::from_secs(600),
            max_finished: 1000,
            max_finished_bytes: DEFAULT_MAX_FINISHED_BYTES,
            data_dir: None,
            output_dir: None,
            max_body_bytes: 4 << 20,
            limits: Limits::default(),
            api_key: None,
            shutdown_timeout: Duration::from_secs(30),
            web_ui: true,
            public_url: None,
            cors_origins: Vec::new(),
        }
    }
}
