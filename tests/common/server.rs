//! The HTTP service under test, on a loopback port: [`TestServer`] runs it in this process (the
//! test reaches its [`Service`]: the catalog, the jobs, holding the workers), [`ServeProcess`]
//! runs the real `beeswax serve` binary. Both serve the tiny-sd pack and a `tiny-fast` pipeline
//! ([`tiny_manifests`]). Then HTTP helpers over reqwest, and waits with generous timeouts
//! (waits end when the condition holds, so a generous bound costs nothing on a fast machine).

use std::future::Future;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use beeswax::server::{serve, Catalog, ServerConfig, Service};
use serde_json::Value;
use tokio::sync::oneshot;

use super::command::{pack_toml, Dir, TINY_SD_DEFAULTS};
use super::cpu_f32;

/// How long a wait may take before the test fails: generous, it only catches a hang.
pub const PATIENCE: Duration = Duration::from_secs(300);

/// The `[[pipeline]]` `tiny-fast` on the tiny-sd pack: DDIM, 4 steps, tighter limits.
const TINY_FAST: &str = r#"[[pipeline]]
name = "tiny-fast"
pack = "tiny-sd"
description = "few DDIM steps"
scheduler = "ddim"

[pipeline.defaults]
steps = 4

[pipeline.limits]
max_width = 128
max_height = 128
max_steps = 50
max_images = 4
"#;

/// Writes the service's test manifests into `dir` as `tiny.toml` (the tiny-sd pack with the
/// committed pack's defaults, then `tiny-fast`); returns `dir`.
pub fn tiny_manifests(dir: &Path) -> PathBuf {
    let text = format!(
        "{}\n{TINY_FAST}",
        pack_toml("tiny-sd", "tiny-sd", TINY_SD_DEFAULTS)
    );
    std::fs::write(dir.join("tiny.toml"), text).unwrap();
    dir.to_path_buf()
}

/// The service in this process on 127.0.0.1:0; stopped by [`TestServer::stop`].
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The running service.
    pub service: Arc<Service>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: Dir,
}

impl TestServer {
    /// A server on the test manifests with `config`.
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(config, &[]).await
    }

    /// A server on the test manifests plus `extra` manifest files (name, TOML text).
    pub async fn start_with(config: ServerConfig, extra: &[(&str, &str)]) -> Self {
        let dir = Dir::new("server");
        let manifests = tiny_manifests(dir.path());
        for (name, text) in extra {
            std::fs::write(manifests.join(name), text).unwrap();
        }
        let extensions = super::manifests::extensions(&manifests).unwrap();
        let catalog = super::manifests::catalog(&manifests, config.limits, &extensions).unwrap();
        let service = Service::start(catalog, extensions, config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, service.clone(), async {
            let _ = rx.await;
        }));
        Self {
            url,
            service,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    /// The URL of `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops gracefully and waits (generously) for the server to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

/// The real `beeswax serve` binary on a port the system picks, on the test manifests;
/// killed when dropped. Its stdout and stderr are collected as it runs.
pub struct ServeProcess {
    /// `http://ADDR` from its `beeswax listening on http://ADDR` line.
    pub url: String,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    _dir: Dir,
}

/// How a [`ServeProcess`] ended.
#[derive(Debug)]
pub struct Exit {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed to stdout.
    pub stdout: String,
    /// Everything it printed to stderr.
    pub stderr: String,
}

impl ServeProcess {
    /// Starts `beeswax serve --port 0 --manifests <test manifests>` with `args` added, and
    /// waits for it to listen. Without a `--data-dir` in `args` it runs with `--data-dir none`
    /// (memory only: tests never write in the user's data folder).
    pub fn start(args: &[&str]) -> Self {
        let mut process = Self::launch(
            &["serve", "--port", "0"],
            tiny_manifests,
            args,
            "beeswax listening on ",
        );
        process.url = process.url.trim().to_string();
        process
    }

    /// Starts `beeswax <command> --manifests <manifests(dir)> args` and waits for a first line
    /// starting with `ready` (what follows it becomes [`ServeProcess::url`]).
    pub fn launch(
        command: &[&str],
        manifests: impl FnOnce(&Path) -> PathBuf,
        args: &[&str],
        ready: &str,
    ) -> Self {
        let dir = Dir::new("serve");
        let manifests = manifests(dir.path());
        let memory_only: &[&str] =
            if command.first() == Some(&"serve") && !args.contains(&"--data-dir") {
                &["--data-dir", "none"]
            } else {
                &[]
            };
        let mut all = memory_only.to_vec();
        all.extend_from_slice(args);
        let (mut child, stdout, stderr, line) = spawn_beeswax(command, &manifests, &all);
        let Some(url) = line.trim_end().strip_prefix(ready) else {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
            panic!("beeswax {command:?} did not start: first line {line:?}\nstderr:\n{stderr}");
        };
        ServeProcess {
            url: url.to_string(),
            child,
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// What it printed to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The URL of `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The server's resident memory in MiB (Linux; 0 elsewhere).
    pub fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// The server's peak resident memory so far in MiB (Linux; 0 elsewhere).
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// A `/proc/PID/status` line in kB, as MiB.
    fn status_mib(&self, key: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()));
        status
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// Kills the server with SIGKILL (no clean-up at all, as a crash) and returns what it
    /// printed.
    pub fn kill(mut self) -> Exit {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        Exit {
            status,
            stdout: wait_text(&self.stdout),
            stderr: wait_text(&self.stderr),
        }
    }

    /// Sends SIGTERM and waits (generously) for the server to exit.
    pub fn terminate(mut self) -> Exit {
        let id = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &id]).status().unwrap();
        assert!(sent.success(), "kill -TERM {id} failed");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < PATIENCE, "beeswax serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        Exit {
            status,
            stdout: wait_text(&self.stdout),
            stderr: wait_text(&self.stderr),
        }
    }
}

/// Output being collected by a thread.
type Collected = Arc<Mutex<Vec<u8>>>;

/// Spawns `beeswax serve --port 0 --manifests <manifests> <args>` (no API key or manifests
/// from the environment): the child, its stdout and stderr being collected, and its first
/// stdout line (empty when none came within [`PATIENCE`]).
fn spawn_serve(manifests: &Path, args: &[&str]) -> (Child, Collected, Collected, String) {
    spawn_beeswax(&["serve", "--port", "0"], manifests, args)
}

/// Spawns `beeswax <command> --manifests <manifests> args` (without the environment's
/// BEESWAX_* settings) and waits for its first line.
fn spawn_beeswax(
    command: &[&str],
    manifests: &Path,
    args: &[&str],
) -> (Child, Collected, Collected, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_beeswax"))
        .args(command)
        .arg("--manifests")
        .arg(manifests)
        .args(args)
        .env_remove("BEESWAX_API_KEY")
        .env_remove("BEESWAX_MANIFESTS")
        .env_remove("BEESWAX_NATS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (first_line, lines) = mpsc::channel();
    let stdout = collect(child.stdout.take().unwrap(), Some(first_line));
    let stderr = collect(child.stderr.take().unwrap(), None);
    let line = lines.recv_timeout(PATIENCE).unwrap_or_default();
    (child, stdout, stderr, line)
}

/// What a collecting thread gathered, once it has ended (at end of file, right after the
/// process exits).
fn wait_text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(buf) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Runs `beeswax serve --port 0 --manifests <manifests>`, which must refuse to start: exit
/// non-zero before it listens, without a panic. Returns its stderr. Starting is a failure (the
/// server is killed), and so is running past [`PATIENCE`].
pub fn serve_refuses(manifests: &Path) -> String {
    let (mut child, stdout, stderr, line) = spawn_serve(manifests, &["--data-dir", "none"]);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if line.starts_with("beeswax listening") || start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = wait_text(&stderr);
    let stdout = wait_text(&stdout);
    match status {
        Some(status) if !status.success() && !stderr.contains("panicked") => stderr,
        _ => panic!(
            "beeswax serve on {} did not refuse cleanly ({status:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            manifests.display()
        ),
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `from` to its end on a thread, into the returned buffer; sends the first line to
/// `first_line` when given.
fn collect(
    from: impl Read + Send + 'static,
    first_line: Option<mpsc::Sender<String>>,
) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(from);
        if let Some(tx) = first_line {
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            sink.lock().unwrap().extend_from_slice(line.as_bytes());
            let _ = tx.send(line);
        }
        let mut chunk = [0u8; 4096];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

/// An HTTP client with a generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// POSTs `body` as JSON.
pub async fn post(url: &str, body: Value) -> reqwest::Response {
    client().post(url).json(&body).send().await.unwrap()
}

/// GETs `url`.
pub async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

/// GETs `url` and parses its JSON body.
pub async fn get_json(url: &str) -> Value {
    get(url).await.json().await.unwrap()
}

/// DELETEs `url`.
pub async fn delete(url: &str) -> reqwest::Response {
    client().delete(url).send().await.unwrap()
}

/// The JSON body of a response with `status`.
pub async fn expect_json(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Queues a native job (`POST base/v1/jobs`, 202) and returns its id.
pub async fn submit(base: &str, body: Value) -> String {
    let job = expect_json(post(&format!("{base}/v1/jobs"), body).await, 202).await;
    job["id"].as_str().unwrap().to_string()
}

/// The `/metrics` text of the server at `base`.
pub async fn metrics(base: &str) -> String {
    get(&format!("{base}/metrics")).await.text().await.unwrap()
}

/// Polls `check` until it gives a value; fails after [`PATIENCE`], naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the job `id` of the server at `base` has status `want`; returns its status JSON.
pub async fn wait_status(base: &str, id: &str, want: &str) -> Value {
    let url = format!("{base}/v1/jobs/{id}");
    wait_until(&format!("job {id} becomes {want}"), || async {
        let job = get_json(&url).await;
        (job["status"] == want).then_some(job)
    })
    .await
}

/// Reads server-sent events until the stream ends: (event name, data JSON) pairs, each also
/// given to `on_event` as it arrives.
pub async fn read_events(
    mut response: reqwest::Response,
    mut on_event: impl FnMut(&str, &Value),
) -> Vec<(String, Value)> {
    assert_eq!(response.status(), 200);
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some((name, data)) = parse_event(&block) else {
                continue; // keep-alive comment
            };
            on_event(&name, &data);
            events.push((name, data));
        }
    }
    events
}

/// One SSE block's event name and data, unless it is a comment.
fn parse_event(block: &str) -> Option<(String, Value)> {
    let mut name = String::new();
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim());
        }
    }
    (!name.is_empty()).then(|| (name, serde_json::from_str(&data).unwrap()))
}

/// Standard base64 of `bytes`.
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64.
pub fn unb64(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {text:.80}"))
}

/// The boundary of [`multipart`] bodies.
const BOUNDARY: &str = "beeswax-test-boundary";

/// A multipart/form-data body of PNG `files` and text `fields`.
pub fn multipart(files: &[(&str, &[u8])], fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// POSTs the [`multipart`] `body` to `url`.
pub async fn post_multipart(url: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(url)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap()
}
