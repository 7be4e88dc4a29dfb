//! The official `openai` and `webuiapi` Python clients, unchanged, and the load test (50
//! clients against a queue of 8).

use super::*;

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
    // The server (and with it this test's shared turn) first, so that the pip install of a
    // first run never overlaps the load test, whose queue-overflow check depends on timing.
    let server = TestServer::start(config()).await;
    let python = tokio::task::spawn_blocking(client_venv).await.unwrap();
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
    // Alone: its RSS figures are the whole process's, other tests' models included.
    let server = TestServer::start_alone(ServerConfig {
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
                    let body = json!({"prompt": format!("client {i}"), "steps": 20, "size": "64x64", "response_format": "b64_json", "seed": i});
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
