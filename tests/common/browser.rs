//! A small W3C WebDriver client for the browser tests: starts `chromedriver` on a free
//! loopback port with a headless Chromium and a fresh profile, and drives it over HTTP+JSON
//! (navigate, find, click, type, run scripts, pointer actions, window size, screenshots,
//! console logs). Needs Debian's `chromium` and `chromium-driver` packages.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The W3C key under which an element reference travels.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The Chromium binary and its driver, as Debian installs them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// See [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium session.
pub struct Browser {
    http: reqwest::Client,
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a browser whose window is `width`×`height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Self {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "the browser tests need {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
        );
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        // chromedriver prints "... started successfully on port N." once it listens.
        let mut out = BufReader::new(driver.stdout.take().unwrap());
        let mut line = String::new();
        while out.read_line(&mut line).unwrap() > 0 && !line.contains("successfully") {
            line.clear();
        }
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        let browser = Self {
            http,
            driver,
            port,
            session,
            _profile: profile,
        };
        browser
            .cmd(
                "POST",
                "/timeouts",
                json!({"script": 120_000, "pageLoad": 60_000}),
            )
            .await;
        browser
    }

    /// Sends a WebDriver command on the session; returns its `value`, panics on an error.
    pub async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.port, self.session
        );
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = r["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path}: {err}: {}",
                r["value"]["message"]
            );
        }
        r["value"].clone()
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({"url": url})).await;
    }

    /// The first element matching `css`.
    pub async fn find(&self, css: &str) -> Value {
        let e = self
            .cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let mut reference = serde_json::Map::new();
        reference.insert(ELEMENT.to_string(), e[ELEMENT].clone());
        Value::Object(reference)
    }

    fn id(element: &Value) -> String {
        element[ELEMENT].as_str().unwrap().to_string()
    }

    /// Clicks the element matching `css` (scrolled into view first).
    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            "POST",
            &format!("/element/{}/click", Self::id(&e)),
            json!({}),
        )
        .await;
    }

    /// Types `text` into the element matching `css` (file inputs take a path).
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            "POST",
            &format!("/element/{}/value", Self::id(&e)),
            json!({ "text": text }),
        )
        .await;
    }

    /// Clears the element matching `css`, then types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.cmd(
            "POST",
            &format!("/element/{}/clear", Self::id(&e)),
            json!({}),
        )
        .await;
        self.type_into(css, text).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its result.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Runs `script` until it returns something truthy (checked every 50 ms), for at most
    /// `timeout`; returns that value, panics naming `what` on timeout.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(script, json!([])).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if start.elapsed() > timeout {
                let state = self
                    .eval(
                        "return document.querySelector('main') && document.querySelector('main').innerText",
                        json!([]),
                    )
                    .await;
                panic!("timed out after {timeout:?} waiting for {what}; the page shows:\n{state}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Performs W3C input `actions` (e.g. a pointer drag), then releases every input.
    pub async fn actions(&self, actions: Value) {
        self.cmd("POST", "/actions", json!({ "actions": actions }))
            .await;
        self.cmd("DELETE", "/actions", json!({})).await;
    }

    /// A mouse drag over the element matching `css`, through `points` (offsets from its
    /// centre in CSS pixels).
    pub async fn drag(&self, css: &str, points: &[(i64, i64)]) {
        let e = self.find(css).await;
        self.eval(
            "arguments[0].scrollIntoView({block: 'center'})",
            json!([e.clone()]),
        )
        .await;
        let mut steps = Vec::new();
        for (i, (x, y)) in points.iter().enumerate() {
            steps.push(json!({"type": "pointerMove", "origin": e, "x": x, "y": y, "duration": 50}));
            if i == 0 {
                steps.push(json!({"type": "pointerDown", "button": 0}));
            }
        }
        steps.push(json!({"type": "pointerUp", "button": 0}));
        self.actions(json!([{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": steps,
        }]))
        .await;
    }

    /// Presses and releases `key` (a WebDriver key code such as "\u{E014}" for →).
    pub async fn press(&self, key: &str) {
        self.actions(json!([{
            "type": "key", "id": "keyboard",
            "actions": [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}],
        }]))
        .await;
    }

    /// Presses `key` with Control held.
    pub async fn press_ctrl(&self, key: &str) {
        let ctrl = "\u{E009}";
        self.actions(json!([{
            "type": "key", "id": "keyboard",
            "actions": [
                {"type": "keyDown", "value": ctrl}, {"type": "keyDown", "value": key},
                {"type": "keyUp", "value": key}, {"type": "keyUp", "value": ctrl},
            ],
        }]))
        .await;
    }

    /// Runs a Chrome DevTools Protocol command through chromedriver.
    pub async fn cdp(&self, command: &str, params: Value) -> Value {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": command, "params": params}),
        )
        .await
    }

    /// Saves a screenshot of the viewport as PNG at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", json!({})).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// The browser's console entries since the last call (`level`, `message`, `source`).
    pub async fn console(&self) -> Vec<Value> {
        let v = self
            .cmd("POST", "/se/log", json!({"type": "browser"}))
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Panics if the console holds an error or warning other than those whose message
    /// contains one of `allowed`.
    pub async fn assert_clean_console(&self, allowed: &[&str]) {
        let bad: Vec<Value> = self
            .console()
            .await
            .into_iter()
            .filter(|e| matches!(e["level"].as_str(), Some("SEVERE" | "WARNING")))
            .filter(|e| {
                let m = e["message"].as_str().unwrap_or_default();
                !allowed.iter().any(|a| m.contains(a))
            })
            .collect();
        assert!(bad.is_empty(), "console errors: {bad:#?}");
    }

    /// Ends the session (closing the browser) and stops chromedriver.
    pub fn quit(&mut self) {
        // A plain blocking request, so that Drop can use it too.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.quit();
    }
}
