//! Memory: finished jobs keep neither their input pictures nor more than
//! `--max-finished-bytes` of images. Twenty image-to-image jobs, each sent a 7000x7000
//! (49-megapixel, 147 MB decoded) picture, through the real binary: its resident memory
//! stays bounded instead of growing by the decoded picture of every job kept (ignored by
//! default: about a minute). In the default suite: a job's input is gone once it has run, and
//! the finished jobs beyond the byte bound are dropped, oldest first.

use super::*;

/// A 7000x7000 picture that compresses well (the request stays small), as PNG.
fn big_picture() -> Vec<u8> {
    make_png(7000, 7000, 3, |x, y| {
        [
            (x / 64) as u8,
            (y / 64) as u8,
            ((x / 64 + y / 64) % 7 * 30) as u8,
            255,
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: twenty 49-megapixel decodes take about a minute; scripts/test runs it"]
async fn twenty_jobs_with_49_megapixel_inputs_keep_memory_bounded() {
    const JOBS: usize = 20;
    let init = b64(&big_picture());
    let server = tokio::task::spawn_blocking(|| {
        ServeProcess::start(&[
            "--max-width",
            "7000",
            "--max-height",
            "7000",
            "--max-body-bytes",
            "268435456",
        ])
    })
    .await
    .unwrap();
    let idle = server.rss_mib();
    let mut after_first = 0.0;
    for n in 0..JOBS {
        let body = json!({
            "prompt": format!("big {n}"), "steps": 2, "seed": n, "width": 64, "height": 64,
            "init_image": init, "strength": 0.5,
        });
        let id = submit(&server.url, body).await;
        wait_status(&server.url, &id, "completed").await;
        if n == 0 {
            after_first = server.rss_mib();
        }
    }
    let (rss, peak) = (server.rss_mib(), server.peak_rss_mib());
    let jobs = get_json(&server.at("/v1/gallery?limit=100")).await;
    assert_eq!(
        jobs["images"].as_array().unwrap().len(),
        JOBS,
        "all jobs kept"
    );
    println!(
        "memory over {JOBS} jobs with 7000x7000 inputs: idle {idle:.0} MiB, after the first \
         job {after_first:.0} MiB, after all {rss:.0} MiB, peak (VmHWM) {peak:.0} MiB"
    );
    // A decoded input is 140 MiB: kept by every finished job, 20 jobs would hold 2.8 GiB.
    assert!(
        rss < after_first + 280.0,
        "resident memory grew from {after_first:.0} MiB after one job to {rss:.0} MiB after \
         {JOBS}: finished jobs keep their inputs"
    );
    assert!(peak < 1500.0, "peak {peak:.0} MiB");
}

fn body_again(init: &str) -> Value {
    json!({"prompt": "again", "steps": 2, "width": 64, "height": 64, "init_image": init})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_holds_its_input_until_it_has_run() {
    let server = TestServer::start(config()).await;
    server.service.pause_workers();
    let init = b64(&picture(300, 200));
    let body = json!({"prompt": "in", "steps": 2, "width": 64, "height": 64, "init_image": init, "strength": 0.5});
    let id = submit(&server.url, body).await;
    let job = server.service.jobs.get(&id).unwrap();
    assert_eq!(
        job.input_bytes(),
        300 * 200 * 3,
        "waiting, it holds its picture"
    );
    let cancelled = submit(&server.url, body_again(&init)).await;
    let r = delete(&server.at(&format!("/v1/jobs/{cancelled}"))).await;
    assert_eq!(r.status(), 200);
    let cancelled = server.service.jobs.get(&cancelled).unwrap();
    assert_eq!(
        cancelled.input_bytes(),
        0,
        "cancelled while waiting, it no longer does"
    );
    server.service.resume_workers();
    wait_status(&server.url, &id, "completed").await;
    assert_eq!(job.input_bytes(), 0, "finished, it no longer does");
    // What the routes show of it does not need the picture.
    let shown = get_json(&server.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(shown["parameters"]["mode"], "img2img");
    assert_eq!(shown["parameters"]["strength"], 0.5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_beyond_the_byte_bound_go_oldest_first() {
    // A bound smaller than one image: only the newest finished job stays.
    let server = TestServer::start(ServerConfig {
        max_finished_bytes: 1,
        ..config()
    })
    .await;
    let first = submit(&server.url, json!({"prompt": "one", "steps": 2})).await;
    wait_status(&server.url, &first, "completed").await;
    let r = get(&server.at(&format!("/v1/jobs/{first}/images/0"))).await;
    assert_eq!(r.status(), 200, "the newest finished job stays");
    let second = submit(&server.url, json!({"prompt": "two", "steps": 2})).await;
    wait_status(&server.url, &second, "completed").await;
    let r = get(&server.at(&format!("/v1/jobs/{first}"))).await;
    assert_eq!(r.status(), 404, "the older one went");
    assert!(server.service.jobs.finished_bytes() > 1);
    assert_eq!(server.service.jobs.len(), 1);
    server.stop().await;
}
