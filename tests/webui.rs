//! The web UI served by `beeswax serve` (engine/web/, engine/src/server/webui.rs) and the API
//! routes it reads (`/v1/gallery`, `/v1/samplers`, `/v1/loras`, each pipeline's `form`).
//!
//! Two kinds of test, each against the real binary with the `tiny-sd` pack on a loopback port:
//! - HTTP tests (always run): the page and assets with caching headers and gzip, `--no-ui`,
//!   the page public behind `--api-key` while the API is not, gallery paging and parameters
//!   that give the same image again, the samplers and LoRAs lists.
//! - Browser tests (ignored: they need `chromium` and `chromium-driver`, which scripts/test
//!   installs; run with `cargo test --release -p beeswax --test webui -- --ignored`): headless
//!   Chromium over WebDriver drives the page: generate with progress and previews, cancel, a
//!   queue of three, an inpainting mask, reuse from the gallery, the API key prompt, a dropped
//!   event stream, the phone layout. Every browser test fails on a console error, and the
//!   screenshots land in `target/webui-screenshots/`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use browser::Browser;
use common::{fixture, root};
use serde_json::{json, Value};

/// A `beeswax serve` process with the tiny-sd pack and one LoRA.
struct Server {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |p: PathBuf| p.display().to_string().replace('\\', "/");
        let manifest = format!(
            r#"[pack]
name = "tiny-sd"
family = "sd1"
path = "{}"

[pack.defaults]
steps = 20
scheduler = "euler"
negative_prompt = "blurry"

[[lora]]
name = "fox-style"
path = "{}"
weight = 0.8
triggers = ["foxstyle"]
"#,
            path(fixture("models/tiny-sd")),
            path(fixture("lora/tiny-sd/kohya.safetensors")),
        );
        std::fs::write(dir.path().join("tiny.toml"), manifest).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_beeswax"))
            .args(["serve", "--port", "0", "--max-steps", "2000", "--manifests"])
            .arg(dir.path())
            .args(flags)
            .env_remove("BEESWAX_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("beeswax listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Self {
            url,
            child,
            _dir: dir,
        }
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post_job(server: &Server, body: Value) -> String {
    let r = client()
        .post(server.at("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

async fn wait_done(server: &Server, id: &str) -> Value {
    for _ in 0..1200 {
        let v = get_json(&server.at(&format!("/v1/jobs/{id}"))).await;
        if matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish");
}

// ---- HTTP tests ---------------------------------------------------------------------------

/// The asset URLs the page names (`/ui/VERSION/FILE`).
fn asset_urls(page: &str) -> Vec<String> {
    let mut urls: Vec<String> = page
        .split('"')
        .filter(|s| s.starts_with("/ui/"))
        .map(str::to_string)
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

#[tokio::test]
async fn page_and_assets_are_cached_compressed_and_small() {
    let server = Server::start(&[]);
    let r = client().get(server.at("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("connect-src 'self'"));
    assert!(h.get("content-encoding").is_none(), "no gzip unless asked");
    let etag = h["etag"].to_str().unwrap().to_string();
    let page = r.text().await.unwrap();
    assert!(page.contains("<title>beeswax</title>"));

    let r = client()
        .get(server.at("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert!(r.bytes().await.unwrap().is_empty());

    let r = client()
        .get(server.at("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    let gz = r.bytes().await.unwrap();
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, page);

    // Every asset the page and its modules name: immutable, gzipped, under 300 KB in all.
    let mut urls = asset_urls(&page);
    let version = urls[0].split('/').nth(2).unwrap().to_string();
    for module in ["api.js", "form.js", "picture.js", "jobs.js", "gallery.js"] {
        urls.push(format!("/ui/{version}/{module}"));
    }
    let (mut raw, mut zipped) = (page.len(), gz.len());
    for url in &urls {
        let r = client().get(server.at(url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{url}"
        );
        raw += r.bytes().await.unwrap().len();
        let r = client()
            .get(server.at(url))
            .header("accept-encoding", "gzip, br")
            .send()
            .await
            .unwrap();
        zipped += r.bytes().await.unwrap().len();
    }
    println!(
        "web UI: {} files, {raw} bytes, {zipped} gzipped",
        urls.len() + 1
    );
    assert!(raw < 300 * 1024, "the web UI is {raw} bytes");
    assert!(zipped < raw / 2, "gzip: {zipped} of {raw} bytes");

    // Every module a script imports is served.
    for url in urls.iter().filter(|u| u.ends_with(".js")) {
        let text = client()
            .get(server.at(url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for import in text.lines().filter_map(|l| l.split("from './").nth(1)) {
            let name = import.split('\'').next().unwrap();
            assert!(
                urls.iter().any(|u| u.ends_with(&format!("/{name}"))),
                "{url} imports {name}"
            );
        }
    }

    // Another build's version: served, but revalidated; an unknown file: a JSON 404.
    let r = client()
        .get(server.at("/ui/0000/main.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let r = client()
        .get(server.at(&format!("/ui/{version}/nope.js")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unknown_asset");
}

#[tokio::test]
async fn no_ui_leaves_only_the_apis() {
    let server = Server::start(&["--no-ui"]);
    for path in ["/", "/ui/x/main.js"] {
        let r = client().get(server.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = client()
        .get(server.at("/v1/pipelines"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn with_a_key_the_page_is_public_and_the_api_is_not() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let page = client()
        .get(server.at("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for url in asset_urls(&page) {
        let r = client().get(server.at(&url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
    }
    for path in ["/v1/gallery", "/v1/samplers", "/v1/loras", "/v1/pipelines"] {
        let r = client().get(server.at(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = client()
            .get(server.at(path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn samplers_loras_and_pipeline_forms_come_from_the_server() {
    let server = Server::start(&[]);
    let s = get_json(&server.at("/v1/samplers")).await;
    let euler = s["samplers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "euler_a")
        .unwrap();
    assert_eq!(euler["label"], "Euler a");
    assert!(s["samplers"].as_array().unwrap().len() >= 18);
    assert!(s["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "karras" && x["label"] == "Karras"));

    let l = get_json(&server.at("/v1/loras")).await;
    assert_eq!(
        l["loras"],
        json!([{"name": "fox-style", "kind": "lora", "weight": 0.8,
                "triggers": ["foxstyle"], "description": null}])
    );
    assert_eq!(l["weight_range"], json!({"min": -5.0, "max": 5.0}));
    assert!(!l.to_string().contains("safetensors"), "no server paths");

    let p = get_json(&server.at("/v1/pipelines")).await;
    let form = &p["pipelines"][0]["form"];
    // tiny-sd: UNet sample_size 8 × VAE factor 8; steps and sampler from the pack.
    assert_eq!(form["native_width"], 64);
    assert_eq!(form["width"], 64);
    assert_eq!(form["size_multiple"], 8);
    assert_eq!(form["steps"], 20);
    assert_eq!(form["scheduler"], "euler");
    assert_eq!(form["schedule"], "default");
    assert_eq!(form["guidance"], 7.5);
    assert_eq!(form["negative_prompt"], "blurry");
    assert!(form["max_clip_skip"].as_u64().unwrap() >= 1);

    let api = get_json(&server.at("/openapi.json")).await;
    for path in ["/v1/gallery", "/v1/samplers", "/v1/loras", "/"] {
        assert!(api["paths"][path].is_object(), "{path} in /openapi.json");
    }
}

/// The `parameters` text chunk of a PNG.
fn png_text(png: &[u8]) -> String {
    let reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .map(|t| t.get_text().unwrap())
        })
        .unwrap()
}

#[tokio::test]
async fn gallery_pages_newest_first_and_its_parameters_give_the_image_again() {
    let server = Server::start(&[]);
    let mut ids = Vec::new();
    for (prompt, batch) in [("one", 1), ("two", 2), ("three", 1)] {
        let body = json!({"prompt": prompt, "steps": 3, "batch": batch, "seed": 40,
            "scheduler": "dpmpp_2m", "schedule": "karras",
            "loras": [{"name": "fox-style", "weight": 0.5}]});
        let id = post_job(&server, body).await;
        assert_eq!(wait_done(&server, &id).await["status"], "completed");
        ids.push(id);
    }
    // Pages of 2, followed by cursor: every image once, newest job first, batch in order.
    let mut seen = Vec::new();
    let mut url = server.at("/v1/gallery?limit=2");
    loop {
        let page = get_json(&url).await;
        assert_eq!(page["total"], 4);
        let images = page["images"].as_array().unwrap();
        assert!(images.len() <= 2);
        seen.extend(images.iter().cloned());
        match page["next"].as_str() {
            Some(next) => url = server.at(&format!("/v1/gallery?limit=2&before={next}")),
            None => break,
        }
    }
    let order: Vec<(String, u64)> = seen
        .iter()
        .map(|i| {
            (
                i["job"].as_str().unwrap().to_string(),
                i["index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            (ids[2].clone(), 0),
            (ids[1].clone(), 0),
            (ids[1].clone(), 1),
            (ids[0].clone(), 0)
        ]
    );
    let second = &seen[2];
    assert_eq!(second["parameters"]["seed"], 41, "its own seed");
    assert_eq!(second["parameters"]["scheduler"], "dpmpp_2m");
    assert_eq!(second["parameters"]["schedule"], "karras");
    assert_eq!(
        (second["width"].clone(), second["height"].clone()),
        (json!(64), json!(64))
    );

    // The infotext is the PNG's chunk; the parameters, posted again, give the same PNG.
    let png = client()
        .get(server.at(second["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(second["infotext"].as_str().unwrap(), png_text(&png));
    let p = &second["parameters"];
    let mut body = json!({"batch": 1});
    for k in [
        "pipeline",
        "prompt",
        "negative_prompt",
        "steps",
        "guidance",
        "width",
        "height",
        "seed",
        "scheduler",
        "schedule",
        "clip_skip",
        "loras",
    ] {
        body[k] = p[k].clone();
    }
    let again = post_job(&server, body).await;
    wait_done(&server, &again).await;
    let png2 = client()
        .get(server.at(&format!("/v1/jobs/{again}/images/0")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(png, png2, "reusing the parameters gives the same image");

    for bad in ["limit=0", "limit=x", "before=nonsense"] {
        let r = client()
            .get(server.at(&format!("/v1/gallery?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["param"], bad.split('=').next().unwrap());
    }
}

// ---- browser tests ------------------------------------------------------------------------

/// One browser test at a time: each runs a server, chromedriver and Chromium on 2 cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LONG: Duration = Duration::from_secs(120);

fn screenshot(name: &str) -> PathBuf {
    root().join("target/webui-screenshots").join(name)
}

/// Saves a screenshot of the top of the page as `name`.
async fn shoot(browser: &Browser, name: &str) {
    browser.eval("window.scrollTo(0, 0)", json!([])).await;
    browser.screenshot(&screenshot(name)).await;
}

/// Opens the page and waits until it has loaded its choices from the API.
async fn open(browser: &Browser, server: &Server) {
    browser.goto(&server.at("/")).await;
    browser
        .wait_for(
            "the page to load",
            "return document.body.dataset.ready === 'true' && document.querySelectorAll('#pipeline option').length > 0",
            LONG,
        )
        .await;
}

/// Records, for every job card, each status and stats text and preview the page shows, and
/// the order in which cards complete (a MutationObserver: no polling gaps).
const RECORDER: &str = r#"
window.__log = {cards: {}, completed: []};
const note = (card) => {
  const id = card.dataset.jobId; if (!id) return;
  const c = window.__log.cards[id] ||= {title: card.querySelector('.job-title').textContent,
    statuses: [], stats: [], previews: 0, runningPreviews: 0};
  const status = card.querySelector('.job-status').textContent;
  if (c.statuses[c.statuses.length - 1] !== status) c.statuses.push(status);
  const stats = card.querySelector('.job-stats').textContent;
  if (stats && c.stats[c.stats.length - 1] !== stats) c.stats.push(stats);
  const img = card.querySelector('.job-preview');
  if (img.src.startsWith('data:image/png') && img.src !== c.lastPreview) {
    c.lastPreview = img.src; c.previews++;
    if (card.dataset.status === 'running') c.runningPreviews++;
  }
  if (card.dataset.status === 'completed' && !window.__log.completed.includes(c.title)) {
    window.__log.completed.push(c.title);
  }
};
new MutationObserver((records) => {
  for (const r of records) {
    const card = (r.target.nodeType === 1 ? r.target : r.target.parentElement).closest('.job');
    if (card) note(card);
  }
}).observe(document.getElementById('jobs'), {subtree: true, childList: true, attributes: true, characterData: true});
"#;

async fn set_prompt(browser: &Browser, prompt: &str, steps: u32) {
    browser.fill("#prompt", prompt).await;
    browser.fill("#steps", &steps.to_string()).await;
}

/// The id of the newest job card once it exists.
async fn newest_job(browser: &Browser, count: usize) -> String {
    browser
        .wait_for(
            "the job card",
            &format!(
                "const c = document.querySelectorAll('#jobs .job'); return c.length >= {count} && c[0].dataset.jobId"
            ),
            LONG,
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_card(browser: &Browser, id: &str, status: &str) {
    browser
        .wait_for(
            &format!("job {id} to be {status}"),
            &format!("const c = document.querySelector('.job[data-job-id=\"{id}\"]'); return c && c.dataset.status === '{status}'"),
            LONG,
        )
        .await;
}

#[tokio::test]
#[ignore] // needs: chromium + chromedriver
async fn generate_shows_progress_and_previews_then_the_image_in_the_gallery() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(1920, 1080).await;
    open(&browser, &server).await;
    browser.eval(RECORDER, json!([])).await;
    set_prompt(&browser, "a red fox in the snow", 240).await;
    browser.click("#advanced > summary").await;
    browser.fill("#preview_every", "4").await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    browser
        .wait_for(
            "a preview while running",
            &format!("const c = window.__log.cards['{id}']; return c && c.runningPreviews > 0 && c.stats.length > 1"),
            LONG,
        )
        .await;
    shoot(&browser, "desktop-running.png").await;
    wait_card(&browser, &id, "completed").await;
    let log = browser.eval("return window.__log.cards", json!([])).await;
    let card = &log[&id];
    let stats: Vec<&str> = card["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        stats
            .iter()
            .any(|s| s.starts_with("step ") && !s.starts_with("step 240/")),
        "a progress update before the end: {stats:?}"
    );
    assert!(
        stats
            .iter()
            .any(|s| s.contains("steps/s") && s.contains("ETA")),
        "speed and ETA: {stats:?}"
    );
    assert!(card["runningPreviews"].as_u64().unwrap() >= 1);
    // The image shows in the gallery, loaded.
    browser
        .wait_for(
            "the image in the gallery",
            &format!("const i = document.querySelector('#gallery li[data-key=\"{id}/0\"] img'); return i && i.complete && i.naturalWidth === 64"),
            LONG,
        )
        .await;
    shoot(&browser, "desktop-finished.png").await;
    browser.assert_clean_console(&[]).await;
}

#[tokio::test]
#[ignore] // needs: chromium + chromedriver
async fn cancel_stops_a_running_job() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(1280, 900).await;
    open(&browser, &server).await;
    set_prompt(&browser, "a very long job", 1000).await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    browser
        .wait_for(
            "progress",
            &format!("const c = document.querySelector('.job[data-job-id=\"{id}\"]'); return c.dataset.status === 'running' && c.querySelector('.job-progress').value > 0"),
            LONG,
        )
        .await;
    browser
        .click(&format!(".job[data-job-id=\"{id}\"] .job-cancel"))
        .await;
    wait_card(&browser, &id, "cancelled").await;
    let job = get_json(&server.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["status"], "cancelled");
    assert!(job["progress"]["step"].as_u64().unwrap() < 1000);
    let text = browser
        .eval(
            &format!("return document.querySelector('.job[data-job-id=\"{id}\"] .job-status').textContent"),
            json!([]),
        )
        .await;
    assert_eq!(text, "Cancelled");
    browser.assert_clean_console(&[]).await;
}

#[tokio::test]
#[ignore] // needs: chromium + chromedriver
async fn three_queued_jobs_complete_in_order() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(1280, 900).await;
    open(&browser, &server).await;
    // An API error shows next to the field it names.
    set_prompt(&browser, "a bad size", 80).await;
    browser.fill("#width", "65").await;
    browser.click("#generate").await;
    let error = browser
        .wait_for(
            "the width error",
            "const e = document.getElementById('err-width'); return !e.hidden && document.getElementById('width').getAttribute('aria-invalid') === 'true' && e.textContent",
            LONG,
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("not a multiple of 8"),
        "{error}"
    );
    browser.fill("#width", "64").await;
    browser.eval(RECORDER, json!([])).await;
    for (n, name) in ["first", "second", "third"].iter().enumerate() {
        set_prompt(&browser, name, 80).await;
        // Ctrl+Enter in the prompt generates, like the button.
        browser.click("#prompt").await;
        browser.press_ctrl("\u{E007}").await;
        newest_job(&browser, n + 1).await;
    }
    browser
        .wait_for(
            "three completed jobs",
            "return window.__log.completed.length === 3",
            LONG,
        )
        .await;
    let log = browser.eval("return window.__log", json!([])).await;
    assert_eq!(log["completed"], json!(["first", "second", "third"]));
    let third = log["cards"]
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["title"] == "third")
        .unwrap();
    let statuses: Vec<&str> = third["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        statuses.iter().any(|s| s.starts_with("Queued: #")),
        "the third job showed its place in the queue: {statuses:?}"
    );
    let error_shown = browser
        .eval(
            "return document.getElementById('err-width').hidden",
            json!([]),
        )
        .await;
    assert_eq!(error_shown, true, "the error went with the next submit");
    // Chromium logs the refused request (400) itself; nothing else may appear.
    browser
        .assert_clean_console(&[
            "/v1/jobs - Failed to load resource: the server responded with a status of 400",
        ])
        .await;
}

/// A `width`×`height` RGB PNG: a horizontal gradient.
fn gradient_png(width: u32, height: u32) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..height {
        for x in 0..width {
            data.extend([(x * 255 / width) as u8, 90, 200]);
        }
    }
    let mut out = Vec::new();
    let mut e = png::Encoder::new(&mut out, width, height);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    e.write_header().unwrap().write_image_data(&data).unwrap();
    out
}

/// Captures the bodies the page posts to /v1/jobs.
const CAPTURE_POSTS: &str = r#"
window.__posts = [];
const real = window.fetch;
window.fetch = (url, init) => {
  if (String(url).endsWith('/v1/jobs') && init && init.method === 'POST') window.__posts.push(JSON.parse(init.body));
  return real(url, init);
};
"#;

/// The gray level of mask pixel (x, y) of the last posted job (async script).
const MASK_PIXELS: &str = r#"
const [points, done] = [arguments[0], arguments[arguments.length - 1]];
const img = new Image();
img.onload = () => {
  const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, img.width, img.height).data;
  done({size: [img.width, img.height], values: points.map(([x, y]) => data[(y * img.width + x) * 4])});
};
img.src = window.__posts[window.__posts.length - 1].mask;
"#;

#[tokio::test]
#[ignore] // needs: chromium + chromedriver
async fn a_painted_mask_is_sent_with_the_inpainting_job() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(1280, 1000).await;
    open(&browser, &server).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("start.png");
    std::fs::write(&file, gradient_png(96, 64)).unwrap();
    browser.click("#picture-section > summary").await;
    browser
        .type_into("#init-file", file.to_str().unwrap())
        .await;
    browser
        .wait_for(
            "the picture",
            "return !document.getElementById('picture-tools').hidden && document.getElementById('width').value === '96'",
            LONG,
        )
        .await;
    browser
        .click("input[name=\"picture-mode\"][value=\"inpaint\"]")
        .await;
    browser.fill("#mask_blur", "0").await;
    // A horizontal stroke across the left half of the picture, in its middle row.
    let css_width = browser
        .eval(
            "return document.getElementById('mask-canvas').getBoundingClientRect().width",
            json!([]),
        )
        .await
        .as_f64()
        .unwrap();
    let (from, to) = (-(css_width * 0.4) as i64, -(css_width * 0.1) as i64);
    browser
        .drag("#mask-canvas", &[(from, 0), ((from + to) / 2, 0), (to, 0)])
        .await;
    browser.eval(CAPTURE_POSTS, json!([])).await;
    set_prompt(&browser, "a fox in the hole", 6).await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    let posted = browser.eval("return window.__posts[0]", json!([])).await;
    assert!(posted["init_image"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    assert_eq!(posted["mask_blur"], 0);
    assert_eq!(
        (posted["width"].clone(), posted["height"].clone()),
        (json!(96), json!(64))
    );
    // In picture pixels: the stroke runs from x ≈ 10 to 38 on row 32.
    let mask = browser
        .cmd(
            "POST",
            "/execute/async",
            json!({"script": MASK_PIXELS, "args": [[[20, 32], [30, 32], [80, 32], [20, 2], [90, 60]]]}),
        )
        .await;
    assert_eq!(mask["size"], json!([96, 64]));
    assert_eq!(
        mask["values"],
        json!([255, 255, 0, 0, 0]),
        "white under the stroke only"
    );
    wait_card(&browser, &id, "completed").await;
    let job = get_json(&server.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["parameters"]["mode"], "inpaint");

    // Outpainting: 32 px more on the right, the new border painted into the mask.
    browser.fill("#out-right", "32").await;
    browser.click("#outpaint-apply").await;
    browser
        .wait_for(
            "the wider canvas",
            "return document.getElementById('width').value === '128'",
            LONG,
        )
        .await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 2).await;
    let mask = browser
        .cmd(
            "POST",
            "/execute/async",
            json!({"script": MASK_PIXELS, "args": [[[120, 10], [100, 60], [20, 32], [60, 5]]]}),
        )
        .await;
    assert_eq!(mask["size"], json!([128, 64]));
    assert_eq!(mask["values"], json!([255, 255, 255, 0]));
    let posted = browser.eval("return window.__posts[1]", json!([])).await;
    assert_eq!(posted["masked_content"], "fill");
    wait_card(&browser, &id, "completed").await;
    let job = get_json(&server.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["parameters"]["width"], 128);
    browser.assert_clean_console(&[]).await;
}

#[tokio::test]
#[ignore] // needs: chromium + chromedriver
async fn gallery_images_open_large_and_their_parameters_fill_the_form() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(1600, 1000).await;
    open(&browser, &server).await;
    set_prompt(&browser, "reuse me", 7).await;
    browser.fill("#guidance", "5").await;
    browser.fill("#seed", "1234").await;
    browser.fill("#batch", "2").await;
    browser
        .eval(
            "document.getElementById('scheduler').value = 'dpmpp_2m'; document.getElementById('schedule').value = 'karras';",
            json!([]),
        )
        .await;
    browser.click("#lora-add").await;
    browser.fill(".lora-weight", "0.5").await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    wait_card(&browser, &id, "completed").await;
    browser
        .wait_for(
            "two gallery images",
            "return document.querySelectorAll('#gallery li').length === 2",
            LONG,
        )
        .await;
    // Change everything, then take it back from the first image.
    set_prompt(&browser, "something else", 20).await;
    browser.fill("#seed", "-1").await;
    browser.fill("#guidance", "9").await;
    browser.click(".lora-row button").await;
    browser
        .click(&format!("#gallery li[data-key=\"{id}/0\"] button"))
        .await;
    browser
        .wait_for(
            "the lightbox",
            "return document.getElementById('lightbox').open && document.getElementById('lb-img').naturalWidth > 0",
            LONG,
        )
        .await;
    let info = browser
        .eval(
            "return document.getElementById('lb-info').textContent",
            json!([]),
        )
        .await;
    let info = info.as_str().unwrap();
    assert!(info.starts_with("reuse me <lora:fox-style:0.5>"), "{info}");
    assert!(
        info.contains("Seed: 1234") && info.contains("Steps: 7"),
        "{info}"
    );
    // Arrow keys move between images.
    browser.press("\u{E014}").await;
    browser
        .wait_for(
            "the second image",
            "return document.getElementById('lb-info').textContent.includes('Seed: 1235')",
            LONG,
        )
        .await;
    browser.press("\u{E012}").await;
    browser
        .wait_for(
            "the first image again",
            "return document.getElementById('lb-info').textContent.includes('Seed: 1234')",
            LONG,
        )
        .await;
    browser.click("#lb-copy-params").await;
    browser
        .wait_for(
            "a copy note",
            "return document.getElementById('lb-note').textContent.includes('op')",
            LONG,
        )
        .await;
    browser.click("#lb-reuse").await;
    let form = browser
        .eval(
            "const v = (id) => document.getElementById(id).value; return {prompt: v('prompt'), seed: v('seed'), steps: v('steps'), guidance: v('guidance'), scheduler: v('scheduler'), schedule: v('schedule'), width: v('width'), loras: [...document.querySelectorAll('.lora-row')].map(r => [r.querySelector('select').value, r.querySelector('input').value]), open: document.getElementById('lightbox').open}",
            json!([]),
        )
        .await;
    assert_eq!(
        form,
        json!({"prompt": "reuse me", "seed": "1234", "steps": "7", "guidance": "5",
               "scheduler": "dpmpp_2m", "schedule": "karras", "width": "64",
               "loras": [["fox-style", "0.5"]], "open": false})
    );
    // "Send to inpaint" loads the image as the starting picture.
    browser
        .click(&format!("#gallery li[data-key=\"{id}/1\"] button"))
        .await;
    browser.click("#lb-inpaint").await;
    browser
        .wait_for(
            "the picture from the gallery",
            "return !document.getElementById('picture-tools').hidden && document.getElementById('mode-badge').textContent === 'inpaint' && document.getElementById('picture-canvas').width === 64",
            LONG,
        )
        .await;
    browser.assert_clean_console(&[]).await;
}

#[tokio::test]
#[ignore] // needs: chromium + chromedriver
async fn the_page_asks_for_the_api_key_once_and_keeps_it_for_the_tab() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&["--api-key", "s3cret"]);
    let browser = Browser::start(1280, 900).await;
    browser.goto(&server.at("/")).await;
    browser
        .wait_for(
            "the key dialog",
            "return document.getElementById('key-dialog').open",
            LONG,
        )
        .await;
    browser.fill("#key-input", "wrong").await;
    browser.click("#key-form button[type=submit]").await;
    browser
        .wait_for(
            "the refusal",
            "const e = document.getElementById('key-error'); return document.getElementById('key-dialog').open && !e.hidden && e.textContent.includes('not valid')",
            LONG,
        )
        .await;
    browser.fill("#key-input", "s3cret").await;
    browser.click("#key-form button[type=submit]").await;
    browser
        .wait_for(
            "the page with the key",
            "return !document.getElementById('key-dialog').open && document.body.dataset.ready === 'true' && document.querySelectorAll('#pipeline option').length === 1",
            LONG,
        )
        .await;
    set_prompt(&browser, "behind a key", 4).await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    wait_card(&browser, &id, "completed").await;
    browser
        .wait_for(
            "the image, fetched with the key",
            &format!("const i = document.querySelector('#gallery li[data-key=\"{id}/0\"] img'); return i && i.complete && i.naturalWidth === 64"),
            LONG,
        )
        .await;
    // A reload in the same tab: no dialog, the job is still listed.
    browser.goto(&server.at("/")).await;
    open(&browser, &server).await;
    let state = browser
        .eval(
            &format!("return [document.getElementById('key-dialog').open, !!document.querySelector('.job[data-job-id=\"{id}\"]')]"),
            json!([]),
        )
        .await;
    assert_eq!(state, json!([false, true]));
    // The two refused requests are logged by Chromium as failed loads; nothing else.
    browser
        .assert_clean_console(&["status of 401 (Unauthorized)"])
        .await;
}

/// A TCP proxy to `upstream` on a loopback port that can cut every open connection, as a
/// network drop does (new connections still go through). Plain threads and blocking sockets.
struct Proxy {
    url: String,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sockets = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut s = sockets.lock().unwrap();
                    s.push(client.try_clone().unwrap());
                    s.push(server.try_clone().unwrap());
                }
                let pump = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Self { url, open }
    }

    /// Closes every connection open now.
    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore] // needs: chromium + chromedriver
async fn a_dropped_event_stream_reconnects_and_resumes() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let proxy = Proxy::start(&server.url);
    let browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{}/", proxy.url)).await;
    browser
        .wait_for(
            "the page to load",
            "return document.body.dataset.ready === 'true'",
            LONG,
        )
        .await;
    browser.eval(RECORDER, json!([])).await;
    set_prompt(&browser, "through a bad network", 600).await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    browser
        .wait_for(
            "progress",
            &format!("const c = window.__log.cards['{id}']; return c && c.stats.length > 3"),
            LONG,
        )
        .await;
    proxy.cut();
    browser
        .wait_for(
            "the lost connection",
            &format!("return window.__log.cards['{id}'].statuses.some(s => s.startsWith('Connection lost'))"),
            LONG,
        )
        .await;
    wait_card(&browser, &id, "completed").await;
    let log = browser
        .eval(&format!("return window.__log.cards['{id}']"), json!([]))
        .await;
    // Progress went on after the reconnection, and never back: events resume after the last
    // one seen (Last-Event-ID), not from the start.
    let steps: Vec<u64> = log["stats"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            s.as_str()?
                .strip_prefix("step ")?
                .split('/')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let lost = log["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s.as_str().unwrap().starts_with("Connection lost"))
        .unwrap();
    assert!(
        log["statuses"].as_array().unwrap()[lost..]
            .iter()
            .any(|s| s == "Running"),
        "running again after the drop: {log}"
    );
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "steps never go back: {steps:?}"
    );
    assert!(steps.last().unwrap() > &500, "{steps:?}");
    // Chromium logs the cut stream itself as a failed load; nothing else may appear.
    browser
        .assert_clean_console(&[
            "/events - Failed to load resource: net::ERR_INCOMPLETE_CHUNKED_ENCODING",
        ])
        .await;
}

#[tokio::test]
#[ignore] // needs: chromium + chromedriver
async fn phone_width_fits_without_horizontal_scrolling_and_every_input_has_a_label() {
    let _one = ONE_BROWSER.lock().await;
    let server = Server::start(&[]);
    let browser = Browser::start(800, 900).await;
    // Headless windows are at least 500 px wide: emulate the phone's viewport instead.
    browser
        .cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
        )
        .await;
    open(&browser, &server).await;
    let width = browser.eval("return window.innerWidth", json!([])).await;
    assert_eq!(width, 390, "the viewport is a phone's");
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth && document.body.scrollWidth <= window.innerWidth";
    assert_eq!(browser.eval(fits, json!([])).await, true);
    // Everything unfolded: LoRA row, picture tools with the mask, advanced fields.
    browser.click("#lora-add").await;
    browser.click("#picture-section > summary").await;
    browser.click("#advanced > summary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wide.png");
    std::fs::write(&file, gradient_png(256, 96)).unwrap();
    browser
        .type_into("#init-file", file.to_str().unwrap())
        .await;
    browser
        .click("input[name=\"picture-mode\"][value=\"inpaint\"]")
        .await;
    assert_eq!(browser.eval(fits, json!([])).await, true, "unfolded form");
    let unlabelled = browser
        .eval(
            "return [...document.querySelectorAll('input, select, textarea')].filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')).map(e => e.id || e.outerHTML)",
            json!([]),
        )
        .await;
    assert_eq!(unlabelled, json!([]), "inputs without a label");
    browser.click("#picture-remove").await;
    // The picture set the size to its own; back to the pack's.
    browser.fill("#width", "64").await;
    browser.fill("#height", "64").await;
    browser.eval(RECORDER, json!([])).await;
    set_prompt(&browser, "a fox on a phone", 240).await;
    browser.fill("#preview_every", "4").await;
    browser.click("#generate").await;
    let id = newest_job(&browser, 1).await;
    browser
        .wait_for(
            "a preview",
            &format!("const c = window.__log.cards['{id}']; return c && c.runningPreviews > 0"),
            LONG,
        )
        .await;
    browser
        .eval(
            &format!("document.querySelector('.job[data-job-id=\"{id}\"]').scrollIntoView()"),
            json!([]),
        )
        .await;
    browser.screenshot(&screenshot("phone-running.png")).await;
    wait_card(&browser, &id, "completed").await;
    // Thumbnails load as they scroll into view; on a phone the gallery is below the queue.
    browser
        .eval(
            "document.getElementById('gallery-panel').scrollIntoView()",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the gallery image",
            &format!("const i = document.querySelector('#gallery li[data-key=\"{id}/0\"] img'); return i && i.complete && i.naturalWidth === 64"),
            LONG,
        )
        .await;
    browser
        .eval(
            "document.getElementById('jobs-panel').scrollIntoView()",
            json!([]),
        )
        .await;
    browser.screenshot(&screenshot("phone-finished.png")).await;
    assert_eq!(browser.eval(fits, json!([])).await, true, "with jobs");
    browser
        .click(&format!("#gallery li[data-key=\"{id}/0\"] button"))
        .await;
    browser
        .wait_for(
            "the lightbox",
            "return document.getElementById('lb-img').naturalWidth > 0",
            LONG,
        )
        .await;
    assert_eq!(browser.eval(fits, json!([])).await, true, "lightbox");
    browser.screenshot(&screenshot("phone-lightbox.png")).await;
    browser.assert_clean_console(&[]).await;
}
