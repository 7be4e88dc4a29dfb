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
use beeswax::pipeline::{resolve, text_to_image, JobRequest, LoadOptions, StableDiffusion};
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

/// A server running in this process on 127.0.0.1:0.
struct TestServer {
    url: String,
    service: Arc<Service>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let m = manifests(dir.path());
        let options = LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
        };
        let catalog = Catalog::load(&m, &options, false, config.limits).unwrap();
        let service = Service::start(catalog, config).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_job_streams_events_to_completion_with_previews() {
    let server = TestServer::start(config()).await;
    let response = post(
        &server.at("/v1/jobs"),
        json!({"pipeline": "tiny-sd", "prompt": "a red fox", "steps": 6, "seed": 1, "preview_every": 2}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["urls"]["events"], format!("/v1/jobs/{id}/events"));

    let events = read_events(
        client()
            .get(server.at(&format!("/v1/jobs/{id}/events")))
            .send()
            .await
            .unwrap(),
        |_, _| {},
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{names:?}");
    assert_eq!(events[0].1["position"], 1);
    assert!(names.contains(&"started"), "{names:?}");
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    let progress: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(progress.len(), 6);
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["step"], i + 1);
        assert_eq!(p["total"], 6);
        // Previews every 2 steps: after steps 2, 4 and 6.
        let preview = p["preview"].as_str();
        assert_eq!(preview.is_some(), (i + 1) % 2 == 0, "step {}", i + 1);
        if let Some(url) = preview {
            let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let (w, h, _, _) = decode_png(&bytes);
            assert_eq!((w, h), (8, 8), "latent-sized preview");
        }
    }
    let completed = &events.last().unwrap().1;
    assert_eq!(completed["parameters"]["seed"], 1);
    assert_eq!(completed["parameters"]["steps"], 6);
    let image_url = completed["images"][0].as_str().unwrap();

    let response = client().get(server.at(image_url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let png = response.bytes().await.unwrap();
    let (w, h, pixels, params) = decode_png(&png);
    assert_eq!((w, h), (64, 64));
    assert!(
        params.starts_with("a red fox\nSteps: 6, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: tiny-sd"),
        "{params}"
    );

    // The service's run makes exactly the image `text_to_image` (the CLI's path) makes.
    let model = StableDiffusion::load(
        &fixture("models/tiny-sd"),
        &LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
        },
    )
    .unwrap();
    let pack = server.service.catalog.get("tiny-sd").unwrap();
    let job = resolve(
        &model,
        &pack.defaults,
        JobRequest {
            prompt: "a red fox".into(),
            steps: Some(6),
            seed: Some(1),
            ..Default::default()
        },
    );
    let reference =
        text_to_image(&model, &job, &mut |_| std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!(
        pixels, reference.images[0].data,
        "same pixels as text_to_image"
    );

    let status = wait_status(&server, &id, "completed").await;
    assert_eq!(status["images"][0], image_url);
    assert_eq!(status["progress"]["step"], 6);
    // Replaying after the end, from Last-Event-ID, gives only the later events.
    let replay = read_events(
        client()
            .get(server.at(&format!("/v1/jobs/{id}/events")))
            .header("last-event-id", (events.len() - 2).to_string())
            .send()
            .await
            .unwrap(),
        |_, _| {},
    )
    .await;
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].0, "completed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_apply_their_defaults_and_list_themselves() {
    let server = TestServer::start(config()).await;
    let list: Value = client()
        .get(server.at("/v1/pipelines"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny-fast", "tiny-sd"]);
    assert_eq!(list["pipelines"][0]["kind"], "pipeline");
    assert_eq!(list["pipelines"][0]["limits"]["max_width"], 128);
    assert_eq!(list["pipelines"][1]["kind"], "pack");

    let job: Value = post(
        &server.at("/v1/jobs"),
        json!({"pipeline": "tiny-fast", "prompt": "x", "seed": 3}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = job["id"].as_str().unwrap();
    let done = wait_status(&server, id, "completed").await;
    assert_eq!(done["parameters"]["scheduler"], "ddim");
    assert_eq!(done["parameters"]["steps"], 4);
    assert_eq!(
        done["parameters"]["width"], 64,
        "size from the pack's defaults"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_running_job_at_its_next_step_and_a_queued_one_at_once() {
    let server = TestServer::start(config()).await;
    let long = json!({"pipeline": "tiny-sd", "prompt": "a long job", "steps": 150});
    let a: Value = post(&server.at("/v1/jobs"), long.clone())
        .await
        .json()
        .await
        .unwrap();
    let b: Value = post(&server.at("/v1/jobs"), long)
        .await
        .json()
        .await
        .unwrap();
    let (a, b) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );

    // B waits behind A: cancelling it is immediate.
    let response = client()
        .delete(server.at(&format!("/v1/jobs/{b}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");

    // A runs: cancel after its first progress event; it stops at its next step.
    let stream = client()
        .get(server.at(&format!("/v1/jobs/{a}/events")))
        .send()
        .await
        .unwrap();
    let url = server.at(&format!("/v1/jobs/{a}"));
    let mut sent = false;
    let mut cancel = None;
    let events = read_events(stream, |name, _| {
        if name == "progress" && !sent {
            sent = true;
            let url = url.clone();
            cancel = Some(tokio::spawn(async move {
                client().delete(url).send().await.unwrap().status()
            }));
        }
    })
    .await;
    assert_eq!(cancel.unwrap().await.unwrap(), 202);
    assert_eq!(events.last().unwrap().0, "cancelled");
    let steps = events.iter().filter(|(n, _)| n == "progress").count();
    assert!(steps < 150, "stopped early, after {steps} steps");
    let status = wait_status(&server, &a, "cancelled").await;
    assert!(status["images"].as_array().unwrap().is_empty());
    // Cancelling again: already finished.
    let again = client()
        .delete(server.at(&format!("/v1/jobs/{a}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    // Images of a cancelled job: 409 naming its status.
    let image = client()
        .get(server.at(&format!("/v1/jobs/{a}/images/0")))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 409);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = TestServer::start(ServerConfig {
        queue_size: 2,
        ..config()
    })
    .await;
    let long = json!({"prompt": "busy", "pipeline": "tiny-sd", "steps": 150});
    let first: Value = post(&server.at("/v1/jobs"), long.clone())
        .await
        .json()
        .await
        .unwrap();
    let first = first["id"].as_str().unwrap().to_string();
    wait_status(&server, &first, "running").await;
    let mut ids = vec![first];
    for position in 1..=2 {
        let r = post(&server.at("/v1/jobs"), long.clone()).await;
        assert_eq!(r.status(), 202);
        let job: Value = r.json().await.unwrap();
        assert_eq!(job["position"], position);
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for (url, body) in [
        ("/v1/jobs", json!({"prompt": "one too many"})),
        (
            "/v1/images/generations",
            json!({"prompt": "one too many", "model": "tiny-sd"}),
        ),
        ("/sdapi/v1/txt2img", json!({"prompt": "one too many"})),
    ] {
        let r = post(&server.at(url), body).await;
        assert_eq!(r.status(), 429, "{url}");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        let body: Value = r.json().await.unwrap();
        let text = body.to_string();
        assert!(text.contains("queue is full"), "{text}");
    }
    for id in &ids {
        client()
            .delete(server.at(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .unwrap();
    }
    wait_status(&server, &ids[0], "cancelled").await;
    // The next request is served normally.
    let r = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "after", "steps": 2}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let metrics = client()
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("beeswax_jobs_total{outcome=\"rejected\"} 3"),
        "{metrics}"
    );
    server.stop().await;
}

/// One row of the bad-input table.
struct Row {
    what: &'static str,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    needle: &'static str,
}

fn row(
    what: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    needle: &'static str,
) -> Row {
    Row {
        what,
        path,
        body: body.to_string().into_bytes(),
        status,
        needle,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table_each_gets_a_4xx_naming_the_problem() {
    let server = TestServer::start(ServerConfig {
        max_body_bytes: 64 * 1024,
        ..config()
    })
    .await;
    let rows = vec![
        Row {
            what: "malformed JSON",
            path: "/v1/jobs",
            body: b"{\"prompt\": ".to_vec(),
            status: 400,
            needle: "not valid JSON",
        },
        row(
            "wrong type (steps)",
            "/v1/jobs",
            json!({"prompt": "x", "steps": "many"}),
            400,
            "field `steps`: invalid type: string \"many\", expected a whole number",
        ),
        row(
            "wrong type (prompt)",
            "/v1/jobs",
            json!({"prompt": 5}),
            400,
            "field `prompt`",
        ),
        row(
            "missing prompt",
            "/v1/jobs",
            json!({"steps": 5}),
            400,
            "missing field `prompt`",
        ),
        row(
            "unknown field",
            "/v1/jobs",
            json!({"prompt": "x", "stepz": 5}),
            400,
            "unknown field `stepz`",
        ),
        row(
            "unknown pipeline",
            "/v1/jobs",
            json!({"prompt": "x", "pipeline": "nope"}),
            400,
            "unknown pipeline `nope`: available: tiny-fast, tiny-sd",
        ),
        row(
            "unknown sampler",
            "/v1/jobs",
            json!({"prompt": "x", "scheduler": "warp_drive"}),
            400,
            "warp_drive",
        ),
        row(
            "unknown schedule",
            "/v1/jobs",
            json!({"prompt": "x", "schedule": "wobbly"}),
            400,
            "wobbly",
        ),
        row(
            "width not a multiple of 8",
            "/v1/jobs",
            json!({"prompt": "x", "width": 65}),
            400,
            "width 65 is not a multiple of 8",
        ),
        row(
            "width over the limit",
            "/v1/jobs",
            json!({"prompt": "x", "pipeline": "tiny-sd", "width": 4096}),
            400,
            "width 4096 is over this server's limit of 2048",
        ),
        row(
            "height over the pipeline's limit",
            "/v1/jobs",
            json!({"prompt": "x", "pipeline": "tiny-fast", "height": 256}),
            400,
            "height 256 is over this server's limit of 128",
        ),
        row(
            "steps over the limit",
            "/v1/jobs",
            json!({"prompt": "x", "pipeline": "tiny-sd", "steps": 151}),
            400,
            "steps 151 is over this server's limit of 150",
        ),
        row(
            "zero steps",
            "/v1/jobs",
            json!({"prompt": "x", "steps": 0}),
            400,
            "steps must be at least 1 (got 0)",
        ),
        row(
            "batch over the limit",
            "/v1/jobs",
            json!({"prompt": "x", "pipeline": "tiny-sd", "batch": 9}),
            400,
            "batch 9 is over this server's limit of 8",
        ),
        row(
            "guidance out of range",
            "/v1/jobs",
            json!({"prompt": "x", "guidance": 1000.0}),
            400,
            "guidance must be between 0 and 100",
        ),
        row(
            "negative n",
            "/v1/images/generations",
            json!({"prompt": "x", "n": -1}),
            400,
            "n must be at least 1 (got -1)",
        ),
        row(
            "n over the limit",
            "/v1/images/generations",
            json!({"prompt": "x", "model": "tiny-sd", "n": 100}),
            400,
            "n 100 is over this server's limit of 8",
        ),
        row(
            "bad size",
            "/v1/images/generations",
            json!({"prompt": "x", "size": "huge"}),
            400,
            "size `huge` is not WIDTHxHEIGHT",
        ),
        row(
            "size over the limit",
            "/v1/images/generations",
            json!({"prompt": "x", "model": "tiny-sd", "size": "4096x64"}),
            400,
            "size 4096 is over this server's limit of 2048",
        ),
        row(
            "unknown model",
            "/v1/images/generations",
            json!({"prompt": "x", "model": "dall-e-9"}),
            404,
            "unknown model `dall-e-9`",
        ),
        row(
            "bad response_format",
            "/v1/images/generations",
            json!({"prompt": "x", "response_format": "gif"}),
            400,
            "response_format `gif`",
        ),
        row(
            "A1111 wrong type",
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "cfg_scale": "high"}),
            400,
            "field `cfg_scale`",
        ),
        row(
            "A1111 unknown sampler",
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "sampler_name": "Warp Drive"}),
            400,
            "Warp Drive",
        ),
        row(
            "A1111 unknown checkpoint",
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "override_settings": {"sd_model_checkpoint": "sd-99"}}),
            400,
            "unknown override_settings.sd_model_checkpoint `sd-99`",
        ),
        row(
            "A1111 width not a multiple of 8",
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "width": 100}),
            400,
            "width 100 is not a multiple of 8",
        ),
        Row {
            what: "huge body",
            path: "/v1/jobs",
            body: format!("{{\"prompt\": \"{}\"}}", "x".repeat(1 << 20)).into_bytes(),
            status: 413,
            needle: "larger than the limit of 65536 bytes",
        },
    ];
    let c = client();
    for r in rows {
        let response = c
            .post(server.at(r.path))
            .header("content-type", "application/json")
            .body(r.body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", r.what));
        let message = if r.path.starts_with("/sdapi") {
            body["detail"].as_str().unwrap_or_default().to_string()
        } else {
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(status, r.status, "{}: {body}", r.what);
        assert!(
            message.contains(r.needle),
            "{}: {message:?} lacks {:?}",
            r.what,
            r.needle
        );
        eprintln!("{:<36} {status} {message}", r.what);
        // ...and the server serves the next request normally.
        let next = c.get(server.at("/v1/pipelines")).send().await.unwrap();
        assert_eq!(next.status(), 200, "after {}", r.what);
    }
    for (what, method, path, status) in [
        ("unknown route", "GET", "/v1/nothing", 404),
        ("unknown job", "GET", "/v1/jobs/not-a-job", 404),
        ("wrong method", "PUT", "/v1/jobs", 405),
    ] {
        let response = c
            .request(method.parse().unwrap(), server.at(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{what}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(path.rsplit('/').next().unwrap()),
            "{what}: {body}"
        );
    }
    // After all that, a generation still works.
    let r: Value = post(
        &server.at("/v1/images/generations"),
        json!({"prompt": "fine", "size": "64x64", "response_format": "b64_json", "steps": 2}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(
        r["data"][0]["b64_json"].as_str().unwrap().len() > 100,
        "{r}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_everything_but_health() {
    let server = TestServer::start(ServerConfig {
        api_key: Some("s3cret".into()),
        ..config()
    })
    .await;
    let c = client();
    let health = c.get(server.at("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    for (what, auth, status, needle) in [
        ("missing key", None, 401, "needs an API key"),
        ("wrong key", Some("Bearer nope"), 401, "not valid"),
        ("not bearer", Some("Token s3cret"), 401, "Bearer"),
        ("right key", Some("Bearer s3cret"), 200, ""),
    ] {
        for path in ["/v1/pipelines", "/metrics", "/sdapi/v1/sd-models"] {
            let mut request = c.get(server.at(path));
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), status, "{what} {path}");
            if status == 401 {
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
                let body: Value = response.json().await.unwrap();
                let message = body["error"]["message"]
                    .as_str()
                    .or(body["detail"].as_str())
                    .unwrap();
                assert!(message.contains(needle), "{what} {path}: {body}");
            }
        }
    }
    let r = c
        .post(server.at("/v1/jobs"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "jobs need the key too");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_routes_health_metrics_openapi_and_request_ids() {
    let server = TestServer::start(config()).await;
    let c = client();
    let health: Value = c
        .get(server.at("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["models_loaded"], 1);

    let r: Value = post(
        &server.at("/v1/images/generations"),
        json!({"prompt": "m", "steps": 3}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(
        r["data"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with(&server.url),
        "{r}"
    );

    let response = c.get(server.at("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = response.text().await.unwrap();
    for needle in [
        "beeswax_queue_depth 0",
        "beeswax_models_loaded 1",
        "beeswax_jobs_total{outcome=\"completed\"} 1",
        "beeswax_step_seconds_count 3",
        "# TYPE beeswax_step_seconds histogram",
        "beeswax_http_responses_total{code=\"200\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }

    let api: Value = c
        .get(server.at("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["openapi"], "3.1.0");
    for path in [
        "/v1/pipelines",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/images/{n}",
    ] {
        assert!(api["paths"][path].is_object(), "{path}");
    }

    let generated = c.get(server.at("/health")).send().await.unwrap();
    assert!(!generated.headers()["x-request-id"].is_empty());
    let kept = c
        .get(server.at("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_running_job_and_cancels_the_queue() {
    let server = TestServer::start(config()).await;
    let running: Value = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "finish me", "steps": 40}),
    )
    .await
    .json()
    .await
    .unwrap();
    let running = running["id"].as_str().unwrap().to_string();
    let queued: Value = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "never", "steps": 40}),
    )
    .await
    .json()
    .await
    .unwrap();
    let queued = queued["id"].as_str().unwrap().to_string();
    wait_status(&server, &running, "running").await;
    let events = client()
        .get(server.at(&format!("/v1/jobs/{running}/events")))
        .send()
        .await
        .unwrap();
    let service = server.service.clone();
    let url = server.url.clone();
    server.stop().await;
    let names: Vec<String> = read_events(events, |_, _| {})
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names.last().unwrap(),
        "completed",
        "the running job finished: {names:?}"
    );
    let a = service.jobs.get(&running).unwrap();
    assert_eq!(a.state().status, beeswax::server::Status::Completed);
    assert_eq!(a.state().images.len(), 1);
    let b = service.jobs.get(&queued).unwrap();
    assert_eq!(b.state().status, beeswax::server::Status::Cancelled);
    assert!(
        client().get(format!("{url}/health")).send().await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifests(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_beeswax"))
        .args(["serve", "--port", "0", "--manifests"])
        .arg(&m)
        .env_remove("BEESWAX_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("beeswax listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "loopback by default: {url}"
    );
    let health: Value = client()
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let r = post(
        &format!("{url}/v1/jobs"),
        json!({"prompt": "x", "steps": 2}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("shutdown requested") && stderr.contains("request{id="),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn pipeline_manifest_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifests(dir.path());
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
    };
    let original = std::fs::read_to_string(m.join("tiny.toml")).unwrap();
    for (from, to, needles) in [
        (
            "pack = \"tiny-sd\"\ndescription",
            "pack = \"tiny-xl\"\ndescription",
            vec![
                "tiny.toml:15",
                "`pipeline.pack`",
                "tiny-xl",
                "available packs: tiny-sd",
            ],
        ),
        (
            "scheduler = \"ddim\"",
            "scheduler = \"warp\"",
            vec!["tiny.toml:17", "`pipeline.scheduler`", "warp"],
        ),
        (
            "steps = 4",
            "steps = \"four\"",
            vec!["tiny.toml:20", "pipeline.defaults.steps", "wrong type"],
        ),
        (
            "max_width = 128",
            "max_width = 100",
            vec![
                "tiny.toml:23",
                "`pipeline.limits.max_width`",
                "multiple of 8",
            ],
        ),
        (
            "name = \"tiny-fast\"",
            "name = \"tiny-sd\"",
            vec!["tiny.toml:14", "`pipeline.name`", "already a pack name"],
        ),
        (
            "description = \"few DDIM steps\"",
            "colour = \"blue\"",
            vec!["tiny.toml:16", "colour"],
        ),
    ] {
        assert!(original.contains(from), "{from}");
        std::fs::write(m.join("tiny.toml"), original.replace(from, to)).unwrap();
        let err = Catalog::load(&m, &options, false, Limits::default())
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(err.contains(n), "{to}: {err:?} lacks {n:?}");
        }
    }
}

/// A virtualenv under target/ with the official `openai` and `webuiapi` packages (no torch).
fn client_venv() -> PathBuf {
    let venv = root().join("target/client-venv");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import openai, webuiapi"])
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return python;
    }
    let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python3)
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .output()
        .unwrap_or_else(|e| panic!("the Python client tests need {python3} (with venv): {e}"));
    assert!(
        out.status.success(),
        "`{python3} -m venv` failed (on Debian: apt-get install python3-venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "openai",
            "webuiapi",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip could not install the `openai` and `webuiapi` packages into {}:\n{}{}",
        venv.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_and_webuiapi_python_clients_work_unchanged() {
    let python = tokio::task::spawn_blocking(client_venv).await.unwrap();
    let server = TestServer::start(config()).await;
    for script in ["openai_client.py", "webuiapi_client.py"] {
        let path = root().join("tests/clients").join(script);
        let python = python.clone();
        let url = server.url.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(path)
                .env("BEESWAX_URL", url)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{script}:\n{stdout}{stderr}");
        assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("ok"), "{script}: {stdout}");
    }
    server.stop().await;
}

/// Resident memory of this process, in MiB (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_test_fifty_clients_against_a_queue_of_eight() {
    let server = TestServer::start(ServerConfig {
        queue_size: 8,
        ..config()
    })
    .await;
    let url = server.at("/v1/images/generations");
    let c = client();
    let mut rss = Vec::new();
    let (mut total_ok, mut total_busy) = (0, 0);
    let rounds = 4;
    for round in 0..rounds {
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move {
                    let body = json!({"prompt": format!("client {i}"), "steps": 8, "size": "64x64", "response_format": "b64_json", "seed": i});
                    let r = tokio::time::timeout(Duration::from_secs(300), c.post(&url).json(&body).send())
                        .await
                        .expect("no request hangs")
                        .unwrap();
                    let status = r.status().as_u16();
                    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                    let body: Value = r.json().await.unwrap();
                    (status, retry, body)
                })
            })
            .collect();
        let (mut ok, mut busy) = (0, 0);
        for t in tasks {
            let (status, retry, body) = t.await.unwrap();
            match status {
                200 => {
                    let b64 = body["data"][0]["b64_json"].as_str().unwrap();
                    let png = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap();
                    assert_eq!(decode_png(&png).0, 64);
                    ok += 1;
                }
                429 => {
                    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
                    assert_eq!(body["error"]["code"], "queue_full");
                    busy += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(ok + busy, 50, "every request answered");
        assert!(ok >= 8, "at least a full queue of 8 succeeds: {ok}");
        assert!(busy >= 1, "50 clients overflow a queue of 8");
        total_ok += ok;
        total_busy += busy;
        let mib = rss_mib();
        rss.push(mib);
        eprintln!(
            "load round {}: {ok} images, {busy} × 429, {:.1} s, RSS {mib:.1} MiB",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    let metrics = c
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "beeswax_jobs_total{{outcome=\"completed\"}} {total_ok}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "beeswax_jobs_total{{outcome=\"rejected\"}} {total_busy}"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("beeswax_queue_depth 0"));
    // Memory stays flat: after the first round warmed the allocator up, later rounds add
    // little (finished jobs are kept, but a few KB each).
    let growth = rss[rounds - 1] - rss[0];
    eprintln!("load test: {total_ok} images, {total_busy} × 429 over {rounds} rounds; RSS {rss:.1?} MiB, growth after round 1: {growth:.1} MiB");
    assert!(growth < 64.0, "RSS grew {growth:.1} MiB: {rss:?}");
    server.stop().await;
}

/// A server on the test manifests plus a `[[lora]]` entry `fox-style` (the kohya fixture), a
/// `[[lora_set]]` `foxy` of it at 0.8, and a `[[pipeline]]` `tiny-foxy` that applies `foxy`.
async fn start_with_loras() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let m = manifests(dir.path());
    let lora = fixture("lora/tiny-sd/kohya.safetensors");
    std::fs::write(
        m.join("zz-loras.toml"),
        format!(
            "[[lora]]\nname = \"fox-style\"\npath = \"{}\"\n\n[[lora_set]]\nname = \"foxy\"\n\
             loras = [{{ name = \"fox-style\", weight = 0.8 }}]\n\n[[pipeline]]\n\
             name = \"tiny-foxy\"\npack = \"tiny-sd\"\nlora_set = \"foxy\"\n",
            lora.display().to_string().replace('\\', "/")
        ),
    )
    .unwrap();
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
    };
    let catalog = Catalog::load(&m, &options, false, config().limits).unwrap();
    let service = Service::start(catalog, config()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, service.clone(), async {
        let _ = rx.await;
    }));
    TestServer {
        url,
        service,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

/// Runs a native job to the end: its first image's (pixels, `parameters`).
async fn native_image(server: &TestServer, body: Value) -> (Vec<u8>, String) {
    let response = post(&server.at("/v1/jobs"), body).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = wait_status(server, &id, "completed").await;
    let url = done["images"][0].as_str().unwrap();
    let png = client()
        .get(server.at(url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_, _, pixels, params) = decode_png(&png);
    (pixels, params)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loras_by_field_and_a1111_prompt_tag_match_the_library() {
    let server = start_with_loras().await;
    let fox = json!([{"name": "fox-style", "weight": 0.8}]);
    let base_body = json!({"pipeline": "tiny-sd", "prompt": "a red fox", "steps": 4, "seed": 3});
    let mut lora_body = base_body.clone();
    lora_body["loras"] = fox;
    let (with_lora, params) = native_image(&server, lora_body).await;
    assert!(
        params.starts_with("a red fox <lora:fox-style:0.8>\nSteps: 4"),
        "{params}"
    );

    // The library's result: the same LoRA applied to a freshly loaded model.
    let model = StableDiffusion::load(
        &fixture("models/tiny-sd"),
        &LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
        },
    )
    .unwrap();
    let jl = beeswax::lora::prepare_job(
        server.service.catalog.loras(),
        "a red fox",
        &[beeswax::lora::LoraRequest {
            name: "fox-style".into(),
            weight: Some(0.8),
        }],
        false,
    )
    .unwrap();
    let applied = beeswax::lora::apply(&model, &jl.loras).unwrap();
    let pack = server.service.catalog.get("tiny-sd").unwrap();
    let job = resolve(
        &applied.model,
        &pack.defaults,
        JobRequest {
            prompt: jl.prompt.clone(),
            steps: Some(4),
            seed: Some(3),
            ..Default::default()
        },
    );
    let reference = text_to_image(&applied.model, &job, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(
        with_lora, reference.images[0].data,
        "same pixels as the library"
    );

    // AUTOMATIC1111's prompt syntax on /sdapi/v1/txt2img gives the same image.
    let r = post(
        &server.at("/sdapi/v1/txt2img"),
        json!({
            "prompt": "a red fox <lora:fox-style:0.8>", "steps": 4, "seed": 3,
            "width": 64, "height": 64, "cfg_scale": 7.5, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "tiny-sd"},
        }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(r["images"][0].as_str().unwrap())
        .unwrap();
    let (_, _, a1111, a1111_params) = decode_png(&png);
    assert!(
        a1111_params.starts_with("a red fox <lora:fox-style:0.8>\n"),
        "{a1111_params}"
    );
    assert_eq!(a1111, with_lora, "tag and field give the same image");
    // A pipeline's `lora_set` applies to every job.
    let mut foxy = base_body.clone();
    foxy["pipeline"] = json!("tiny-foxy");
    let (pipeline_set, _) = native_image(&server, foxy).await;
    assert_eq!(pipeline_set, with_lora, "the pipeline's lora_set");

    // Unknown names are a 400 listing the known ones, by field or by tag; so is a bad weight.
    let mut unknown = base_body.clone();
    unknown["loras"] = json!([{"name": "no-such-lora"}]);
    let r = post(&server.at("/v1/jobs"), unknown).await;
    assert_eq!(r.status(), 400);
    let message = r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("unknown LoRA `no-such-lora`")
            && message.contains("known LoRAs: fox-style"),
        "{message}"
    );
    let r = post(
        &server.at("/sdapi/v1/txt2img"),
        json!({"prompt": "a fox <lora:nope:1>", "steps": 2}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let detail = r.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("unknown LoRA `nope`") && detail.contains("fox-style"),
        "{detail}"
    );
    let mut heavy = base_body.clone();
    heavy["loras"] = json!([{"name": "fox-style", "weight": 9.0}]);
    let r = post(&server.at("/v1/jobs"), heavy).await;
    assert_eq!(r.status(), 400);
    let message = r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("outside the allowed range -5 to 5"),
        "{message}"
    );
    // A file path on the server is not a catalog name: refused the same way.
    let mut path = base_body.clone();
    path["loras"] = json!([{"name": fixture("lora/tiny-sd/kohya.safetensors")}]);
    assert_eq!(post(&server.at("/v1/jobs"), path).await.status(), 400);

    // The server still serves, and the next job without LoRAs is the base image.
    let (base, params) = native_image(&server, base_body).await;
    assert!(params.starts_with("a red fox\nSteps: 4"), "{params}");
    assert_ne!(base, with_lora, "the LoRA changes the image");
    let job = resolve(
        &model,
        &pack.defaults,
        JobRequest {
            prompt: "a red fox".into(),
            steps: Some(4),
            seed: Some(3),
            ..Default::default()
        },
    );
    let reference =
        text_to_image(&model, &job, &mut |_| std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!(
        base, reference.images[0].data,
        "the base model is untouched"
    );
    server.stop().await;

    // A pipeline naming a LoRA set the manifests lack does not load, naming it and the known ones.
    let dir = tempfile::tempdir().unwrap();
    let m = manifests(dir.path());
    std::fs::write(
        m.join("zz-bad.toml"),
        "[[pipeline]]\nname = \"bad\"\npack = \"tiny-sd\"\nlora_set = \"nope\"\n",
    )
    .unwrap();
    let options = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
    };
    let err = Catalog::load(&m, &options, false, Limits::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lora_set of [[pipeline]] `bad`") && err.contains("nope"),
        "{err}"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_img2img_and_inpaint_round_trips_at_the_requested_size() {
    let server = TestServer::start(config()).await;
    let url = server.at("/sdapi/v1/img2img");
    // Image to image from a 48x40 picture (a data URL) to 64x64, cropped.
    let init = format!("data:image/png;base64,{}", b64(&picture(48, 40)));
    let response = post(
        &url,
        json!({"init_images": [init], "prompt": "a red fox", "steps": 4, "seed": 3,
               "denoising_strength": 0.5, "width": 64, "height": 64, "resize_mode": 1,
               "enable_hr": false}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let (w, h, img2img, _) = a1111_image(&body);
    assert_eq!((w, h), (64, 64));
    assert_eq!(body["parameters"]["denoising_strength"], 0.5);
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], 0.5);

    // Inpainting the left half (white in the mask), whole picture, latent noise.
    let init = b64(&picture(64, 64));
    let mask = b64(&make_png(64, 64, 3, |x, _| {
        if x < 32 {
            [255; 4]
        } else {
            [0, 0, 0, 255]
        }
    }));
    let request = |extra: Value| {
        let mut r = json!({"init_images": [init], "mask": mask, "prompt": "a red fox",
                           "steps": 4, "seed": 3, "denoising_strength": 1.0,
                           "width": 64, "height": 64, "mask_blur": 0});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        r
    };
    let response = post(&url, request(json!({"inpainting_fill": 2}))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let (w, h, inpainted, _) = a1111_image(&body);
    assert_eq!((w, h), (64, 64));
    assert_ne!(inpainted, img2img);
    // Outside the mask the picture is pasted back unchanged (ordinary-model inpainting).
    let (_, _, original, _) = decode_png(&picture(64, 64));
    for y in 0..64 {
        for x in 32..64 {
            for c in 0..3 {
                let i = (y * 64 + x) * 3 + c;
                let d = (inpainted[i] as i32 - original[i] as i32).abs();
                assert!(d <= 1, "pixel ({x}, {y}) changed by {d}");
            }
        }
    }
    // Only masked, with padding and an inverted mask; original content.
    let response = post(
        &url,
        request(
            json!({"inpaint_full_res": true, "inpaint_full_res_padding": 4,
                       "inpainting_mask_invert": 1, "inpainting_fill": 1}),
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(a1111_image(&body).0, 64);
    // Latent nothing is refused by name.
    let response = post(&url, request(json!({"inpainting_fill": 3}))).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("inpainting_fill"));

    // The native jobs API: inpaint with a mask, base64.
    let response = post(
        &server.at("/v1/jobs"),
        json!({"pipeline": "tiny-sd", "prompt": "a fox", "steps": 4, "seed": 1,
               "init_image": init, "mask": mask, "strength": 0.5, "masked_content": "fill"}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let job = wait_status(&server, &id, "completed").await;
    assert_eq!(job["parameters"]["mode"], "inpaint");
    assert_eq!(job["parameters"]["strength"], 0.5);
    let png = client()
        .get(server.at(&format!("/v1/jobs/{id}/images/0")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(decode_png(&png).0, 64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_images_and_decompression_bombs_are_4xx_and_the_server_carries_on() {
    let server = TestServer::start(config()).await;
    let url = server.at("/sdapi/v1/img2img");
    let not_image = b64(b"hello, this is not a picture");
    let response = post(
        &url,
        json!({"init_images": [not_image], "prompt": "x", "steps": 2}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("init_images[0]") && text.contains("not a readable"),
        "{text}"
    );

    // A valid PNG header declaring 100000 x 100000 pixels, a few bytes of data.
    let mut bomb = Vec::new();
    {
        let mut e = png::Encoder::new(&mut bomb, 100_000, 100_000);
        e.set_color(png::ColorType::Rgb);
        let mut w = e.write_header().unwrap();
        w.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x03, 0x00])
            .unwrap();
        drop(w);
    }
    let response = post(
        &url,
        json!({"init_images": [b64(&bomb)], "prompt": "x", "steps": 2}),
    )
    .await;
    assert_eq!(response.status(), 413);
    let text = response.text().await.unwrap();
    assert!(text.contains("100000x100000"), "{text}");

    let response = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "x", "init_image": b64(&picture(8, 8)), "mask": b64(&bomb)}),
    )
    .await;
    assert_eq!(response.status(), 413);
    let response = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "x", "init_image": "%%%not base64%%%"}),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("init_image"));
    let response = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "x", "init_image": b64(&picture(8, 8)), "strength": 1.5}),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("strength"));

    // The next request is served normally.
    let response = post(
        &url,
        json!({"init_images": [b64(&picture(64, 64))], "prompt": "x", "steps": 2, "seed": 1}),
    )
    .await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_edits_take_a_raw_multipart_image_and_transparent_mask() {
    let server = TestServer::start(config()).await;
    let image = picture(64, 64);
    // Transparent (repaint) on the left half, opaque (keep) on the right.
    let mask = make_png(64, 64, 4, |x, _| {
        if x < 32 {
            [0, 0, 0, 0]
        } else {
            [0, 0, 0, 255]
        }
    });
    let boundary = "beeswax-test-boundary";
    let mut body = Vec::new();
    let mut file = |name: &str, bytes: &[u8]| {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    file("image", &image);
    file("mask", &mask);
    for (name, value) in [
        ("prompt", "a red fox"),
        ("n", "1"),
        ("size", "64x64"),
        ("response_format", "b64_json"),
        ("model", "tiny-sd"),
        ("steps", "3"),
        ("seed", "5"),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let response = client()
        .post(server.at("/v1/images/edits"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(answer["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    let (w, h, edited, _) = decode_png(&png);
    assert_eq!((w, h), (64, 64));
    let (_, _, original, _) = decode_png(&image);
    let changed = |xs: std::ops::Range<usize>| {
        (0..64usize)
            .flat_map(|y| xs.clone().map(move |x| (y * 64 + x) * 3))
            .filter(|&i| (0..3).any(|c| (edited[i + c] as i32 - original[i + c] as i32).abs() > 1))
            .count()
    };
    assert_eq!(changed(32..64), 0, "opaque mask pixels are kept");
    assert!(changed(0..32) > 0, "transparent mask pixels are repainted");

    // A non-image part is a 400 naming the field.
    let bad = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\nnot a picture\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    let response = client()
        .post(server.at("/v1/images/edits"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("image"));
    server.stop().await;
}
