//! End-to-end tests of the HTTP service (`beeswax serve`): the real server on a loopback port
//! with the `tiny-sd` pack, driven over HTTP: native jobs with events, cancellation, a full
//! queue, the bad-input table, operations routes, graceful shutdown, the official `openai` and
//! `webuiapi` Python clients, and a load test (50 clients against a queue of 8).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use beeswax::extensions::Extensions;
use beeswax::family::LoadOptions;
use beeswax::manifest::ManifestFiles;
use beeswax::pipeline::{resolve, JobRequest};
use beeswax::server::{serve, Catalog, Limits, ServerConfig, Service};
use candle_core::{DType, Device};
use common::{fixture, root};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Manifests for the tests: the tiny-sd pack and a `tiny-fast` pipeline with tighter limits.
fn manifests(dir: &Path) -> PathBuf {
    let model = fixture("models/tiny-sd");
    let text = format!(
        r#"[pack]
name = "tiny-sd"
family = "sd1"
path = "{}"

[pack.defaults]
steps = 20
guidance = 7.5
scheduler = "euler"
width = 64
height = 64

[[pipeline]]
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
"#,
        model.display().to_string().replace('\\', "/")
    );
    std::fs::write(dir.join("tiny.toml"), text).unwrap();
    dir.to_path_buf()
}

/// The service's catalog of manifest folder `dir` on the CPU, the folder read and parsed once.
fn load_catalog(dir: &Path, limits: Limits, extensions: &Extensions) -> beeswax::Result<Catalog> {
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
    };
    let files = ManifestFiles::read(dir)?;
    Catalog::load(&files.parse()?, &options, false, limits, extensions)
}

/// The tests of this file run concurrently in one process; a test that measures the process
/// (the load test's RSS) takes this lock alone, every other server shares it.
static ALONE: std::sync::OnceLock<tokio::sync::RwLock<()>> = std::sync::OnceLock::new();

/// A test's hold on [`ALONE`].
#[allow(dead_code)] // held for its drop
enum Turn {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

impl Turn {
    async fn shared() -> Self {
        Turn::Shared(ALONE.get_or_init(Default::default).read().await)
    }

    async fn alone() -> Self {
        Turn::Alone(ALONE.get_or_init(Default::default).write().await)
    }
}

/// A server running in this process on 127.0.0.1:0.
struct TestServer {
    url: String,
    service: Arc<Service>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
    _turn: Turn,
}

impl TestServer {
    async fn start(config: ServerConfig) -> Self {
        Self::start_in_turn(config, Turn::shared().await).await
    }

    /// A server while no other test's server runs in this process.
    async fn start_alone(config: ServerConfig) -> Self {
        Self::start_in_turn(config, Turn::alone().await).await
    }

    async fn start_in_turn(config: ServerConfig, turn: Turn) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let m = manifests(dir.path());
        let extensions = Extensions::builtin();
        let catalog = load_catalog(&m, config.limits, &extensions).unwrap();
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
            _turn: turn,
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

async fn post(url: &str, body: Value) -> reqwest::Response {
    client().post(url).json(&body).send().await.unwrap()
}

/// Reads server-sent events until the stream ends: (event name, data JSON) pairs.
async fn read_events(
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
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if name.is_empty() {
                continue; // keep-alive comment
            }
            let data: Value = serde_json::from_str(&data).unwrap();
            on_event(&name, &data);
            events.push((name, data));
        }
    }
    events
}

/// Decodes a PNG: (width, height, RGB bytes, `parameters` text).
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, String) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    buf.truncate(frame.buffer_size());
    let info = reader.info();
    let params = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .map(|c| c.text.clone())
        .unwrap_or_default();
    (info.width, info.height, buf, params)
}

async fn wait_status(server: &TestServer, id: &str, want: &str) -> Value {
    for _ in 0..6000 {
        let job: Value = client()
            .get(server.at(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == want {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never became {want}");
}

fn config() -> ServerConfig {
    ServerConfig::default()
}

/// A PNG of `width × height` pixels of `channels` (3 = RGB, 4 = RGBA) made by `pixel(x, y)`.
fn make_png(
    width: u32,
    height: u32,
    channels: usize,
    pixel: impl Fn(u32, u32) -> [u8; 4],
) -> Vec<u8> {
    let mut data = Vec::new();
    for y in 0..height {
        for x in 0..width {
            data.extend_from_slice(&pixel(x, y)[..channels]);
        }
    }
    let mut bytes = Vec::new();
    let mut e = png::Encoder::new(&mut bytes, width, height);
    e.set_color(if channels == 4 {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    e.set_depth(png::BitDepth::Eight);
    let mut w = e.write_header().unwrap();
    w.write_image_data(&data).unwrap();
    w.finish().unwrap();
    bytes
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A colourful test picture.
fn picture(width: u32, height: u32) -> Vec<u8> {
    make_png(width, height, 3, |x, y| {
        [(x * 5) as u8, (y * 3) as u8, ((x + y) * 2) as u8, 255]
    })
}

/// The first image of an A1111 answer, decoded.
fn a1111_image(body: &Value) -> (u32, u32, Vec<u8>, String) {
    let png = base64::engine::general_purpose::STANDARD
        .decode(body["images"][0].as_str().unwrap())
        .unwrap();
    decode_png(&png)
}

#[path = "server/clients.rs"]
mod clients;
#[path = "server/images.rs"]
mod images;
#[path = "server/jobs.rs"]
mod jobs;
#[path = "server/validation.rs"]
mod validation;
