//! Operating a fleet: cancelling through any API node, the per-pipeline limit of waiting jobs
//! (429 with Retry-After), a worker that stops mid-job handing it back at once, and the
//! fleet's counters.

use std::time::Instant;

use common::server::{delete, metrics, wait_until};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_cancelled_through_another_api_node() {
    let nats = NatsServer::start();
    let first = api_node(&nats, &["--max-steps", "1000"]);
    let second = api_node(&nats, &["--max-steps", "1000"]);
    let _worker = worker(&nats, &[]);
    let id = submit(&first.url, long_job("cancel me")).await;
    wait_status(&first.url, &id, "running").await;
    let r = delete(&second.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    wait_status(&second.url, &id, "cancelled").await;
    wait_status(&first.url, &id, "cancelled").await;
    let record = wait_record(&nats, &id, |r| r["status"] == "cancelled").await;
    assert!(record["step"].as_u64().unwrap() < 1000, "{record}");
    // A job cancelled before any worker takes it never runs.
    drop(_worker);
    let id = submit(&first.url, job("never", 2)).await;
    let r = delete(&second.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(r.status(), 202);
    let _next = worker(&nats, &[]);
    wait_status(&first.url, &id, "cancelled").await;
    let record = wait_record(&nats, &id, |r| r["status"] == "cancelled").await;
    assert!(record["started_at"].is_null(), "it ran: {record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_at_its_most_waiting_jobs_answers_429_with_retry_after() {
    let nats = NatsServer::start();
    let api = api_node(&nats, &["--queue-size", "2"]);
    let ids = [
        submit(&api.url, job("one", 2)).await,
        submit(&api.url, job("two", 2)).await,
    ];
    let r = post(&api.at("/v1/jobs"), job("three", 2)).await;
    assert_eq!(r.status(), 429);
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        retry.is_some_and(|s| s.parse::<u64>().unwrap() >= 1),
        "no Retry-After"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("tiny-sd") && body.contains("at most 2"),
        "{body}"
    );
    // The limit is per pipeline: another one still takes jobs.
    let mut fast = job("fast", 2);
    fast["pipeline"] = "tiny-fast".into();
    submit(&api.url, fast).await;
    let rejected = metrics(&api.url).await;
    assert!(
        rejected.contains("beeswax_jobs_total{outcome=\"rejected\"} 1"),
        "{rejected}"
    );
    // Once a worker has run them, there is room again.
    let _worker = worker(&nats, &[]);
    for id in &ids {
        wait_status(&api.url, id, "completed").await;
    }
    submit(&api.url, job("four", 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_mid_job_hands_it_back_at_once_and_the_counters_say_so() {
    let nats = NatsServer::start();
    let api = api_node(&nats, &["--max-steps", "1000"]);
    // An ack wait far longer than the test: only a nak gets the job to another worker soon.
    let slow_ack = ["--nats-ack-wait", "600"];
    let mut args = slow_ack.to_vec();
    args.extend(["--shutdown-timeout", "1"]);
    let first = worker(&nats, &args);
    let id = submit(&api.url, long_job("handed back")).await;
    wait_status(&api.url, &id, "running").await;
    let stopped = Instant::now();
    let exit = first.terminate();
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(exit.stderr.contains("handed back"), "{}", exit.stderr);
    let _second = worker(&nats, &slow_ack);
    wait_record(&nats, &id, |r| {
        r["deliveries"] == 2 && r["status"] != "queued"
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(120),
        "{:?}",
        stopped.elapsed()
    );
    wait_status(&api.url, &id, "completed").await;
    // One redelivery counted; the stopped worker is forgotten, the new one counted.
    wait_until("the fleet counters", || async {
        let text = metrics(&api.url).await;
        let has = |line: &str| text.lines().any(|l| l == line);
        (has("beeswax_fleet_redeliveries_total 1") && has("beeswax_fleet_workers 1")).then_some(())
    })
    .await;
    let health = get_json(&api.at("/health")).await;
    assert_eq!(
        health["nats"]["workers"].as_array().unwrap().len(),
        1,
        "{health}"
    );
    let mut pipelines: Vec<&str> = (health["nats"]["workers"][0]["pipelines"].as_array())
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    pipelines.sort();
    assert_eq!(pipelines, ["tiny-fast", "tiny-sd"], "{health}");
}
