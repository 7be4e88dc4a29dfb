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
            .args([
                "serve",
                "--port",
                "0",
                "--max-steps",
                "2000",
                "--data-dir",
                "none",
            ])
            .arg("--manifests")
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

// ---- browser test helpers ----------------------------------------------------------------

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

#[path = "webui/http.rs"]
mod http;
#[path = "webui/images.rs"]
mod images;
#[path = "webui/jobs.rs"]
mod jobs;
#[path = "webui/page.rs"]
mod page;
