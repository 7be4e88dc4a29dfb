//! Browser tests of jobs: progress and previews, cancel, a queue of three in order, an API
//! error beside its field, a dropped event stream resumed.

use super::*;

#[tokio::test]
#[ignore = "needs: browser (chromium + chromedriver)"]
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
#[ignore = "needs: browser (chromium + chromedriver)"]
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
#[ignore = "needs: browser (chromium + chromedriver)"]
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
#[ignore = "needs: browser (chromium + chromedriver)"]
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
