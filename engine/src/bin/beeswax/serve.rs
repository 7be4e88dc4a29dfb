//! `beeswax serve`: the HTTP service (see `beeswax::server`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use beeswax::family::LoadOptions;
use beeswax::manifest::ManifestFiles;
use beeswax::server::{serve, shutdown_signal, Catalog, Limits, ServerConfig, Service};
use clap::Args;

use crate::args::Global;

/// `beeswax serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; anything else should set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0: any free port, printed at start-up).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "BEESWAX_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Jobs that may wait; more get 429 with Retry-After.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub queue_size: u32,
    /// Jobs that run at once (worker threads).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
    /// Seconds finished jobs and their images stay available.
    #[arg(long, default_value_t = 600)]
    pub keep_finished: u64,
    /// Most finished jobs kept (oldest dropped first).
    #[arg(long, default_value_t = 1000)]
    pub max_finished: usize,
    /// Most bytes the finished jobs kept may hold together (images, previews, texts; oldest
    /// dropped first).
    #[arg(long, default_value_t = beeswax::server::DEFAULT_MAX_FINISHED_BYTES)]
    pub max_finished_bytes: usize,
    /// Where accepted jobs and finished images are kept, so that they survive a crash or a
    /// restart (default: beeswax in the platform's data folder, e.g. ~/.local/share/beeswax);
    /// `none`: in memory only.
    #[arg(long, value_name = "DIR|none")]
    pub data_dir: Option<PathBuf>,
    /// Also save every finished image here, as PNG with its parameters, named as
    /// AUTOMATIC1111 does (00000-SEED.png, numbers continuing from the folder's highest).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Largest width a request may ask for (pipelines may set their own).
    #[arg(long, default_value_t = 2048)]
    pub max_width: usize,
    /// Largest height a request may ask for.
    #[arg(long, default_value_t = 2048)]
    pub max_height: usize,
    /// Most steps a request may ask for.
    #[arg(long, default_value_t = 150)]
    pub max_steps: usize,
    /// Most images one request may ask for (batch × n_iter, or `n`).
    #[arg(long, default_value_t = 8)]
    pub max_images: usize,
    /// On SIGTERM/Ctrl-C, seconds running jobs may take to finish before they are cancelled.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Weights requests may give LoRAs (`loras` field or `<lora:NAME:WEIGHT>` tags), MIN:MAX.
    #[arg(
        long,
        value_name = "MIN:MAX",
        default_value = "-5:5",
        allow_hyphen_values = true
    )]
    pub lora_weight_range: beeswax::lora::WeightRange,
    /// A folder of textual-inversion embeddings (.safetensors; the file name is the name used
    /// in prompts), besides the manifests' [[embedding]] entries.
    #[arg(long, value_name = "DIR")]
    pub embeddings: Option<PathBuf>,
    /// Logs as JSON lines instead of text (RUST_LOG filters either way; default `info`).
    #[arg(long)]
    pub log_json: bool,
    /// Do not serve the web UI at `/` (the APIs only).
    #[arg(long)]
    pub no_ui: bool,
    /// The address clients reach this server at (behind a proxy, or on another name), e.g.
    /// https://sd.example.com: links in responses start with it, and a loopback server also
    /// answers to its host name. Default: the address listened on.
    #[arg(long, value_name = "URL", value_parser = beeswax::server::parse_public_url)]
    pub public_url: Option<String>,
    /// A web site whose pages may use this API from the browser (scheme://host[:port], as the
    /// browser sends `Origin`; `*` for any). Repeat for several. Pages of other sites are
    /// refused (403), so a site you visit cannot queue jobs on your server.
    #[arg(long, value_name = "ORIGIN", value_parser = beeswax::server::parse_origin)]
    pub cors_origin: Vec<String>,
    /// Fleet mode: publish jobs on this NATS JetStream server for `beeswax worker`s
    /// (--queue-size becomes the most jobs waiting per pipeline).
    #[command(flatten)]
    pub nats: crate::fleet::NatsArgs,
    /// With --nats: also run jobs in this process, as a worker of the fleet.
    #[arg(long, requires = "nats")]
    pub worker: bool,
}

pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The data directory: the one given, none for `none`, else beeswax in the platform's data
/// folder. In fleet mode (`fleet`) jobs live in NATS JetStream: none, and an explicit
/// directory is refused rather than silently unused.
fn data_dir(given: Option<PathBuf>, fleet: bool) -> Result<Option<PathBuf>> {
    match given {
        Some(dir) if dir.as_os_str() == "none" => Ok(None),
        Some(dir) if fleet => bail!(
            "--data-dir {} cannot be used with --nats: in fleet mode accepted jobs and their \
             images are kept by NATS JetStream (stream, key-value bucket, object store); drop \
             --data-dir (--output-dir still saves finished images)",
            dir.display()
        ),
        Some(dir) => Ok(Some(dir)),
        None if fleet => Ok(None),
        None => match dirs::data_dir() {
            Some(base) => Ok(Some(base.join("beeswax"))),
            None => bail!(
                "no data folder is known for this platform (is HOME set?): pass --data-dir DIR, \
                 or --data-dir none to keep jobs in memory only"
            ),
        },
    }
}

/// Loads the manifests' pipelines (models included), with the plugins' extensions and the
/// embeddings; fails when none loads.
pub fn load_pipelines(
    global: &Global,
    embeddings: Option<&std::path::Path>,
    limits: Limits,
    lora_range: beeswax::lora::WeightRange,
) -> Result<(Catalog, beeswax::extensions::Extensions)> {
    let files = ManifestFiles::read(&global.manifests)?;
    let folder = files.parse()?;
    // The plugins' samplers and processors join the extensions every job runs with.
    let (_plugins, mut extensions) = crate::plugins::load(Some(&folder))?;
    extensions.set_embeddings(
        &beeswax::manifest::embeddings(&folder)?,
        embeddings,
        global.allow_download,
    )?;
    let (device, dtype) = crate::source::device_and_dtype(global)?;
    let mut options = LoadOptions::new(device, dtype);
    options.max_sequence_length = global.max_sequence_length.map(|n| n as usize);
    options.low_memory = global.low_memory;
    let mut catalog = Catalog::load(
        &folder,
        &options,
        global.allow_download,
        limits,
        &extensions,
    )
    .with_context(|| format!("loading the pipelines in {}", global.manifests.display()))?;
    catalog.set_lora_range(lora_range);
    if catalog.all().is_empty() {
        bail!(
            "no pipeline could be loaded from {}: add a pack manifest (see `beeswax packs`)",
            global.manifests.display()
        );
    }
    Ok((catalog, extensions))
}

pub fn run(global: &Global, a: ServeArgs) -> Result<()> {
    init_logs(a.log_json);
    crate::fleet::check_serve_flags(&a)?;
    let limits = Limits {
        max_width: a.max_width,
        max_height: a.max_height,
        max_steps: a.max_steps,
        max_images: a.max_images,
    };
    // An API node of a fleet needs no models: without a manifests folder it checks jobs
    // against what the fleet's workers announce.
    let model_less = a.nats.nats.is_some() && !a.worker && !global.manifests.is_dir();
    let (catalog, extensions) = if model_less {
        tracing::info!(manifests = %global.manifests.display(), "no manifests folder: API node without models, serving the pipelines the fleet's workers announce");
        (
            Catalog::default(),
            beeswax::extensions::Extensions::default(),
        )
    } else {
        load_pipelines(global, a.embeddings.as_deref(), limits, a.lora_weight_range)?
    };
    if a.host.is_unspecified() && a.public_url.is_none() {
        tracing::warn!(host = %a.host, "links in OpenAI responses will point at 127.0.0.1: set --public-url to the address clients use");
    }
    if !a.host.is_loopback() && a.api_key.is_none() {
        tracing::warn!(host = %a.host, "listening beyond loopback without --api-key: anyone who can reach this port can use it");
    }
    let config = ServerConfig {
        queue_size: a.queue_size as usize,
        concurrency: a.concurrency as usize,
        keep_finished: Duration::from_secs(a.keep_finished),
        max_finished: a.max_finished,
        max_finished_bytes: a.max_finished_bytes,
        data_dir: data_dir(a.data_dir.clone(), a.nats.nats.is_some())?,
        output_dir: a.output_dir.clone(),
        max_body_bytes: a.max_body_bytes,
        limits,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        web_ui: !a.no_ui,
        public_url: a.public_url.clone(),
        cors_origins: a.cors_origin.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host, a.port))
            .await
            .with_context(|| format!("listening on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let data_dir = config.data_dir.clone();
        let service = Service::start(catalog, extensions, config).with_context(|| match &data_dir {
            Some(dir) => format!("starting the workers with the data directory {}", dir.display()),
            None => "starting the workers".to_string(),
        })?;
        if let Some(dir) = &data_dir {
            let r = service.restored;
            tracing::info!(dir = %dir.display(), queued = r.queued, finished = r.finished, failed = r.failed, "data directory");
        }
        let (stop, stopping) = crate::fleet::stop_signal();
        let worker = crate::fleet::attach(&a, &service, &stopping).await?;
        tracing::info!(%addr, pipelines = service.catalog.names(), "listening");
        println!("beeswax listening on http://{addr}");
        if !a.no_ui {
            println!("web UI: http://{addr}/");
        }
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        if let Some(worker) = worker {
            // The fleet worker drains first: its jobs run on the service's threads.
            let drained = crate::fleet::stopped(stopping.clone());
            let server = serve(listener, service, drained);
            let (served, worked) = tokio::join!(server, worker);
            served?;
            worked.context("the fleet worker stopped")??;
        } else {
            serve(listener, service, crate::fleet::stopped(stopping)).await?;
        }
        tracing::info!("stopped");
        Ok(())
    })
}
