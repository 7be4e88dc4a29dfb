//! Durable jobs (`--data-dir`): the real binary killed with SIGKILL while jobs are queued and
//! running, restarted on the same data directory: every job that got a 202 completes (in its
//! original order, with its seed) or fails with a reason, images finished before the kill
//! are still served, `--output-dir` has every PNG, and a damaged file is reported and
//! skipped. Finished jobs past `--keep-finished` (counted from their first finish) are gone.

use std::path::Path;
use std::time::Duration;

use super::*;
use common::command::Dir;

/// Starts the binary with `args` off the async runtime.
async fn start(args: Vec<String>) -> ServeProcess {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ServeProcess::start(&args)
    })
    .await
    .unwrap()
}

fn dir_args(data: &Path, output: &Path) -> Vec<String> {
    vec![
        "--data-dir".into(),
        data.display().to_string(),
        "--output-dir".into(),
        output.display().to_string(),
    ]
}

async fn image_bytes(base: &str, id: &str, n: usize) -> Vec<u8> {
    let r = get(&format!("{base}/v1/jobs/{id}/images/{n}")).await;
    assert_eq!(r.status(), 200, "image {n} of {id}");
    r.bytes().await.unwrap().to_vec()
}

async fn seeds(base: &str, id: &str) -> Value {
    get_json(&format!("{base}/v1/jobs/{id}")).await["parameters"]["seeds"].clone()
}

/// The output folder's file names, sorted.
fn outputs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_jobs_survive_sigkill_and_run_again_in_order() {
    let (data, out) = (Dir::new("data"), Dir::new("out"));
    let args = dir_args(data.path(), out.path());
    let a = start(args.clone()).await;

    // Finished before the kill.
    let before = submit(&a.url, json!({"prompt": "before", "steps": 2, "seed": 11})).await;
    wait_status(&a.url, &before, "completed").await;
    let before_png = image_bytes(&a.url, &before, 0).await;

    // Running at the kill, then queued behind it: text, a batch, two image jobs, a random
    // seed.
    let long = json!({"prompt": "long", "pipeline": "tiny-sd", "steps": 150, "seed": 100, "width": 256, "height": 256});
    let running = submit(&a.url, long).await;
    wait_status(&a.url, &running, "running").await;
    let init = b64(&picture(48, 40));
    let bodies = [
        json!({"prompt": "batch", "steps": 2, "seed": 200, "batch": 2}),
        json!({"prompt": "img", "steps": 4, "seed": 300, "init_image": init, "strength": 0.5}),
        json!({"prompt": "damaged", "steps": 2, "seed": 400, "init_image": init}),
        json!({"prompt": "random seed", "steps": 2}),
    ];
    let mut queued = Vec::new();
    for body in bodies {
        queued.push(submit(&a.url, body).await);
    }
    let random_seed = seeds(&a.url, &queued[3]).await;
    let exit = tokio::task::spawn_blocking(|| a.kill()).await.unwrap();
    assert!(!exit.status.success(), "killed: {:?}", exit.status);

    // While it is down: the damaged job's picture is garbage, and a record is cut short.
    let jobs = data.path().join("jobs");
    std::fs::write(jobs.join(format!("{}.init.png", queued[2])), "not a png").unwrap();
    std::fs::write(
        jobs.join("cut-short.job.json"),
        "{\"version\": 1, \"id\": \"cu",
    )
    .unwrap();

    let b = start(args.clone()).await;
    // Served after the restart, byte for byte.
    let job = get_json(&b.at(&format!("/v1/jobs/{before}"))).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(image_bytes(&b.url, &before, 0).await, before_png);
    // Every accepted job completes, or fails with the reason.
    for id in [&running, &queued[0], &queued[1], &queued[3]] {
        wait_status(&b.url, id, "completed").await;
    }
    let failed = wait_status(&b.url, &queued[2], "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("accepted before the server restarted") && error.contains("init.png"),
        "{error}"
    );
    assert_eq!(seeds(&b.url, &queued[3]).await, random_seed);
    let img = Png::decode(&image_bytes(&b.url, &queued[1], 0).await);
    assert!(img.parameters.contains("Seed: 300"), "{}", img.parameters);
    assert!(
        img.parameters.contains("Denoising strength: 0.5"),
        "{}",
        img.parameters
    );

    // The output folder: every image, numbered in the order the jobs ran (their acceptance
    // order), named by seed.
    let want_seeds = [
        "11".to_string(),
        "100".into(),
        "200".into(),
        "201".into(),
        "300".into(),
        random_seed[0].to_string(),
    ];
    let want: Vec<String> = (want_seeds.iter().enumerate())
        .map(|(n, seed)| format!("{n:05}-{seed}.png"))
        .collect();
    assert_eq!(outputs(out.path()), want);
    let first = std::fs::read(out.path().join(&want[0])).unwrap();
    assert_eq!(first, before_png, "the output file is the served PNG");
    let batch = Png::read(&out.path().join(&want[3]));
    assert!(
        batch.parameters.contains("Seed: 201"),
        "{}",
        batch.parameters
    );

    // The cut-short record was reported, set aside, and did not stop the start.
    let exit = tokio::task::spawn_blocking(|| b.terminate()).await.unwrap();
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("cut-short.job.json") && exit.stderr.contains("damaged"),
        "{}",
        exit.stderr
    );
    assert!(jobs.join("cut-short.job.json.damaged").exists());
    // Inputs go once a job has run.
    let left: Vec<String> = outputs(&jobs)
        .into_iter()
        .filter(|n| n.ends_with(".init.png") || n.ends_with(".mask.png"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_keeps_waiting_jobs_for_the_next_start() {
    let data = Dir::new("data");
    let args = vec![
        "--data-dir".to_string(),
        data.path().display().to_string(),
        "--shutdown-timeout".into(),
        "0".into(),
    ];
    let a = start(args.clone()).await;
    let long = json!({"prompt": "long", "pipeline": "tiny-sd", "steps": 150, "seed": 1, "width": 256, "height": 256});
    let running = submit(&a.url, long).await;
    wait_status(&a.url, &running, "running").await;
    let waiting = submit(&a.url, json!({"prompt": "next", "steps": 2, "seed": 2})).await;
    let exit = tokio::task::spawn_blocking(|| a.terminate()).await.unwrap();
    assert!(exit.status.success(), "{}", exit.stderr);

    let b = start(args).await;
    for id in [&running, &waiting] {
        wait_status(&b.url, id, "completed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_expire_from_their_first_finish_across_a_restart() {
    let data = Dir::new("data");
    let args = vec![
        "--data-dir".to_string(),
        data.path().display().to_string(),
        "--keep-finished".into(),
        "1".into(),
    ];
    let a = start(args.clone()).await;
    let id = submit(&a.url, json!({"prompt": "short-lived", "steps": 2})).await;
    wait_status(&a.url, &id, "completed").await;
    drop(tokio::task::spawn_blocking(|| a.kill()).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let b = start(args).await;
    let r = get(&b.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.status(), 404);
    let left = outputs(&data.path().join("jobs"));
    assert!(left.iter().all(|n| !n.starts_with(&id)), "{left:?}");
}
