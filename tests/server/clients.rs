//! Ignored by default (`scripts/test` runs them): the official `openai` and `webuiapi` Python
//! clients, unchanged, against the real binary (pip installs them: the network), and a load
//! benchmark (fifty clients against a queue of eight, four rounds, with the server's memory).

use std::path::PathBuf;
use std::process::Command;

use super::*;
use common::root;

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
        ])
        .args(["openai", "webuiapi"])
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

#[test]
#[ignore = "needs: network (pip installs the openai and webuiapi clients); scripts/test runs it"]
fn official_openai_and_webuiapi_python_clients_work_unchanged() {
    let python = client_venv();
    let server = ServeProcess::start(&[]);
    for script in ["openai_client.py", "webuiapi_client.py"] {
        let out = Command::new(&python)
            .arg(root().join("tests/clients").join(script))
            .env("BEESWAX_URL", &server.url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{script}:\n{stdout}{stderr}");
        assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("ok"), "{script}: {stdout}");
    }
    let exit = server.terminate();
    assert!(exit.status.success(), "{}", exit.stderr);
}

/// Fifty clients at once against the real binary with a queue of eight, four rounds: prints the
/// time of each round and the server's resident memory (finished jobs are kept, a few KB each,
/// so it should stay about flat after the first round). Run:
/// `cargo test --release -p beeswax --test server -- --ignored --nocapture load_benchmark`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: times and memory of four rounds of fifty clients; scripts/test runs it"]
async fn load_benchmark_fifty_clients_against_a_queue_of_eight() {
    let server = tokio::task::spawn_blocking(|| ServeProcess::start(&["--queue-size", "8"]))
        .await
        .unwrap();
    let url = server.at("/v1/images/generations");
    let mut rss = Vec::new();
    let (mut total_ok, mut total_busy) = (0, 0);
    for round in 1..=4 {
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|i| tokio::spawn(queue_generation(url.clone(), i)))
            .collect();
        let (mut ok, mut busy) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                200 => ok += 1,
                429 => busy += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        // However the requests interleave, the first eight always find room in the queue.
        assert!(ok >= 8, "at least a full queue of 8 succeeds: {ok}");
        total_ok += ok;
        total_busy += busy;
        rss.push(server.rss_mib());
        eprintln!(
            "load round {round}: {ok} images, {busy} × 429, {:.1} s, server RSS {:.1} MiB",
            started.elapsed().as_secs_f64(),
            rss[round - 1]
        );
    }
    let text = metrics(&server.url).await;
    let completed = metric(&text, "beeswax_jobs_total{outcome=\"completed\"}");
    let rejected = metric(&text, "beeswax_jobs_total{outcome=\"rejected\"}");
    assert_eq!(completed, Some(total_ok as f64), "{text}");
    assert_eq!(rejected, Some(total_busy as f64), "{text}");
    eprintln!(
        "load benchmark: {total_ok} images, {total_busy} × 429; server RSS {rss:.1?} MiB, \
         growth after round 1: {:.1} MiB",
        rss[3] - rss[0]
    );
}

/// One OpenAI generation request (`queue::generation`): its status, checked.
async fn queue_generation(url: String, i: usize) -> u16 {
    let (status, retry, body) = super::queue::generation(url, i).await;
    match status {
        200 => assert!(body["data"][0]["b64_json"].is_string(), "{body}"),
        429 => {
            assert!(retry.is_some(), "429 without Retry-After");
            assert_eq!(body["error"]["code"], "queue_full");
        }
        _ => {}
    }
    status
}
