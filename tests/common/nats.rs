//! A real `nats-server -js` for the fleet tests (Debian's `nats-server` package): on a free
//! loopback port with its store in a temporary folder, killed when dropped; restartable on the
//! same port and store. Plus fleet processes: API nodes (`beeswax serve --nats`) and workers
//! (`beeswax worker --nats`) as [`ServeProcess`]es.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::command::{pack_toml, Dir, TINY_SD_DEFAULTS};
use super::server::{tiny_manifests, ServeProcess, PATIENCE};

/// A running nats-server with JetStream.
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// Its port.
    pub port: u16,
    config: Option<PathBuf>,
    child: Option<Child>,
    dir: Dir,
}

impl NatsServer {
    /// Starts one on a free port; panics with a hint when `nats-server` is not installed.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts one with `config` (nats-server configuration text: authorization, tls...)
    /// besides the command-line settings.
    pub fn with_config(config: &str) -> Self {
        Self::start_with(Some(config))
    }

    fn start_with(config: Option<&str>) -> Self {
        let port = free_port();
        let dir = Dir::new("nats");
        let config = config.map(|text| {
            let path = dir.join("nats.conf");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            config,
            child: None,
            dir,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let store = self.dir.join("store");
        let mut command = Command::new("nats-server");
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nats-server ({e}): install it (apt-get install nats-server)")
            });
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < PATIENCE, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it as an operator would (SIGTERM: nats-server flushes its store and exits) and
    /// starts it again on the same port and store. (A SIGKILL may lose the last
    /// acknowledged writes that nats-server had not yet flushed to its files.)
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let id = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &id]).status();
            // A paused server (see `pause`) handles the TERM once it runs again.
            let _ = Command::new("kill").args(["-CONT", &id]).status();
            let _ = child.wait();
        }
        self.launch();
    }

    /// Freezes it (SIGSTOP): requests in flight get no answer until it runs again or is
    /// restarted.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status();
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its store folder.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on (yet).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `beeswax serve --nats URL` (an API node) on the test manifests, with `args` added.
pub fn api_node(nats: &NatsServer, args: &[&str]) -> ServeProcess {
    let mut all = vec!["--nats", nats.url.as_str()];
    all.extend_from_slice(args);
    ServeProcess::start(&all)
}

/// `beeswax serve --nats URL` without a manifests folder: an API node without models, which
/// serves what the fleet's workers announce.
pub fn model_less_api_node(nats: &NatsServer, args: &[&str]) -> ServeProcess {
    let mut all = vec!["--nats", nats.url.as_str()];
    all.extend_from_slice(args);
    let mut node = ServeProcess::launch(
        &["serve", "--port", "0"],
        |dir| dir.join("no-manifests"),
        &all,
        "beeswax listening on ",
    );
    node.url = node.url.trim().to_string();
    node
}

/// `beeswax worker --nats URL` on `manifests(dir)` (e.g. [`tiny_manifests`]), with `args`.
pub fn worker_with(
    nats: &NatsServer,
    manifests: impl FnOnce(&Path) -> PathBuf,
    args: &[&str],
) -> ServeProcess {
    let mut all = vec!["--nats", nats.url.as_str()];
    all.extend_from_slice(args);
    ServeProcess::launch(&["worker"], manifests, &all, "beeswax worker ready")
}

/// A worker serving the test manifests (tiny-sd and tiny-fast).
pub fn worker(nats: &NatsServer, args: &[&str]) -> ServeProcess {
    worker_with(nats, tiny_manifests, args)
}

/// Manifests with the pack `tiny-sd` under another name, `name` (its own pipeline only).
pub fn renamed_pack(name: &'static str) -> impl FnOnce(&Path) -> PathBuf {
    move |dir: &Path| {
        std::fs::write(
            dir.join("other.toml"),
            pack_toml(name, "tiny-sd", TINY_SD_DEFAULTS),
        )
        .unwrap();
        dir.to_path_buf()
    }
}
