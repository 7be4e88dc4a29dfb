//! Fleet mode in the binary: the `--nats*` flags of `beeswax serve` and `beeswax worker`
//! (see `beeswax::fleet`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use beeswax::fleet::{ApiNode, Fleet, FleetConfig, FleetError, WorkerOptions};
use beeswax::server::{shutdown_signal, Limits, ServerConfig, Service};
use clap::Args;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::args::Global;

/// How to reach the fleet's NATS JetStream.
#[derive(Debug, Args, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (nats://host:4222, tls://host:4222).
    #[arg(long, value_name = "URL", env = "BEESWAX_NATS")]
    pub nats: Option<String>,
    /// A NATS credentials file: a .creds file (user JWT and NKey seed, as `nsc` writes it) or
    /// a file holding an NKey user seed (SU...).
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_creds: Option<PathBuf>,
    /// A PEM file of certificate authorities to trust for tls:// URLs (e.g. a self-signed
    /// server certificate), besides the system's.
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_tls_ca: Option<PathBuf>,
    /// The jobs stream (work queue, one subject per pipeline: beeswax.jobs.<pipeline>).
    #[arg(long, default_value = "BEESWAX_JOBS", requires = "nats")]
    pub nats_stream: String,
    /// Deliveries of a job before it is dead-lettered and reported failed (a worker that
    /// dies mid-job costs one).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i64).range(1..=100))]
    pub nats_max_deliver: i64,
    /// Seconds a worker may hold a job without acknowledging it (running jobs send progress
    /// acks every third of it); a dead worker's job goes to another after this.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub nats_ack_wait: u64,
    /// Seconds to keep trying to reach NATS at start.
    #[arg(long, default_value_t = 30)]
    pub nats_connect_timeout: u64,
}

impl NatsArgs {
    /// The fleet settings; `max_waiting` jobs per pipeline, finished jobs kept `keep` s.
    pub fn config(&self, max_waiting: usize, keep: u64) -> FleetConfig {
        let mut config = FleetConfig::new(self.nats.clone().unwrap_or_default());
        config.creds = self.nats_creds.clone();
        config.tls_ca = self.nats_tls_ca.clone();
        config.stream = self.nats_stream.clone();
        config.max_deliver = self.nats_max_deliver;
        config.max_waiting = max_waiting;
        config.ack_wait = Duration::from_secs(self.nats_ack_wait);
        config.keep_finished = Duration::from_secs(keep);
        config.connect_timeout = Duration::from_secs(self.nats_connect_timeout);
        config
    }

    /// Connects and sets up the stream and buckets.
    pub async fn connect(&self, max_waiting: usize, keep: u64) -> Result<Fleet> {
        let config = self.config(max_waiting, keep);
        let url = config.url.clone();
        let fleet = Fleet::connect(config).await?;
        tracing::info!(%url, stream = %self.nats_stream, "fleet mode: NATS JetStream ready");
        Ok(fleet)
    }
}

/// A stop switch: flip the sender, every [`stopped`] future resolves.
pub fn stop_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Resolves once the switch is flipped (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Flags of `beeswax serve` that do not fit fleet mode, refused with what to do instead.
pub fn check_serve_flags(a: &crate::serve::ServeArgs) -> Result<()> {
    if a.nats.nats.is_some() && !a.worker && a.output_dir.is_some() {
        anyhow::bail!(
            "--output-dir saves the images a worker makes: with --nats, give it to `beeswax \
             worker` (or add --worker to run jobs in this process too)"
        );
    }
    Ok(())
}

/// The fleet part of `beeswax serve --nats` (nothing without `--nats`): connects, creates
/// the pipelines' consumers (asking again while NATS does not answer, as a worker does),
/// makes `service` an API node publishing its jobs, and with `--worker` starts pulling jobs
/// for it too (the returned task ends once `stopping` flips and the worker has drained).
pub async fn attach(
    a: &crate::serve::ServeArgs,
    service: &Arc<Service>,
    stopping: &watch::Receiver<bool>,
) -> Result<Option<JoinHandle<Result<(), FleetError>>>> {
    if a.nats.nats.is_none() {
        return Ok(None);
    }
    let fleet = a
        .nats
        .connect(a.queue_size as usize, a.keep_finished)
        .await?;
    for pipeline in service.catalog.all() {
        fleet.lasting_consumer(&pipeline.name).await?;
    }
    let _ = service.set_remote(Arc::new(ApiNode::start(fleet.clone()).await?));
    if !a.worker {
        return Ok(None);
    }
    let options = WorkerOptions {
        concurrency: a.concurrency as usize,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
    };
    Ok(Some(tokio::spawn(beeswax::fleet::run_worker(
        fleet,
        service.clone(),
        options,
        stopped(stopping.clone()),
    ))))
}

/// `beeswax worker` flags.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The fleet's NATS.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Jobs that run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
    /// Seconds finished jobs' images stay in the object store (when this worker creates it).
    #[arg(long, default_value_t = 600)]
    pub keep_finished: u64,
    /// On SIGTERM/Ctrl-C, seconds running jobs may take to finish; unfinished ones go to
    /// another worker.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Weights jobs may give LoRAs, MIN:MAX.
    #[arg(
        long,
        value_name = "MIN:MAX",
        default_value = "-5:5",
        allow_hyphen_values = true
    )]
    pub lora_weight_range: beeswax::lora::WeightRange,
    /// A folder of textual-inversion embeddings, besides the manifests' [[embedding]] entries.
    #[arg(long, value_name = "DIR")]
    pub embeddings: Option<PathBuf>,
    /// Also save every image this worker makes here, as PNG with its parameters, named as
    /// AUTOMATIC1111 does (00000-SEED.png).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Logs as JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

/// `beeswax worker`: runs the manifests' pipelines for the fleet until SIGTERM, then drains.
pub fn run(global: &Global, a: WorkerArgs) -> Result<()> {
    crate::serve::init_logs(a.log_json);
    if a.nats.nats.is_none() {
        anyhow::bail!("beeswax worker needs --nats URL (the fleet's NATS JetStream server)");
    }
    // The API node that accepted a job checked it against its --max-* limits; the worker
    // does not second-guess them (the pipelines' own limits still apply on both).
    let unlimited = Limits {
        max_width: usize::MAX,
        max_height: usize::MAX,
        max_steps: usize::MAX,
        max_images: usize::MAX,
    };
    let (catalog, extensions) = crate::serve::load_pipelines(
        global,
        a.embeddings.as_deref(),
        unlimited,
        a.lora_weight_range,
    )?;
    let concurrency = a.concurrency as usize;
    let config = ServerConfig {
        queue_size: concurrency,
        concurrency,
        keep_finished: Duration::from_secs(a.keep_finished),
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        web_ui: false,
        data_dir: None,
        output_dir: a.output_dir.clone(),
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let service: Arc<Service> =
            Service::start(catalog, extensions, config).context("starting the workers")?;
        let fleet = a.nats.connect(concurrency, a.keep_finished).await?;
        let names = service.catalog.names();
        tracing::info!(pipelines = ?names, concurrency, "worker ready");
        println!(
            "beeswax worker ready ({} pipelines)",
            service.catalog.all().len()
        );
        let options = WorkerOptions {
            concurrency,
            shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        };
        beeswax::fleet::run_worker(fleet, service.clone(), options, shutdown_signal()).await?;
        service.shutdown(Duration::ZERO).await;
        tracing::info!("worker stopped");
        Ok(())
    })
}
