//! Fleet mode end to end (issue 21): a real `nats-server -js` (Debian's package; see
//! `common/nats.rs`), API nodes (`beeswax serve --nats`) and workers (`beeswax worker
//! --nats`) as separate processes on the tiny-sd pack, driven over HTTP and, where a test
//! needs to look inside the stream, over NATS directly. Image jobs are in `fleet/images.rs`,
//! an API node without models in `fleet/model_less.rs`,
//! cancelling, the 429 limit, hand-back on drain and counters in `fleet/operations.rs`, TLS and
//! credentials in `fleet/security.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::command::TestCommand;
use common::images::Png;
use common::nats::{api_node, renamed_pack, worker, worker_with, NatsServer};
use common::server::{expect_json, get, get_json, post, read_events, submit, unb64, wait_status};
use serde_json::{json, Value};

#[path = "fleet/images.rs"]
mod images;
#[path = "fleet/model_less.rs"]
mod model_less;
#[path = "fleet/operations.rs"]
mod operations;
#[path = "fleet/security.rs"]
mod security;

/// A long native job (1000 steps), to be caught running.
fn long_job(prompt: &str) -> Value {
    json!({"pipeline": "tiny-sd", "prompt": prompt, "steps": 1000, "seed": 7,
           "width": 64, "height": 64})
}

/// A small native job.
fn job(prompt: &str, steps: u32) -> Value {
    json!({"pipeline": "tiny-sd", "prompt": prompt, "steps": steps, "seed": 7,
           "width": 64, "height": 64})
}

/// JetStream on `nats` from the test.
async fn jetstream(nats: &NatsServer) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await.unwrap())
}

/// The messages in the dead-letter stream: (subject, reason header, payload).
async fn dead_letters(nats: &NatsServer) -> Vec<(String, String, Vec<u8>)> {
    let js = jetstream(nats).await;
    let stream = js.get_stream("BEESWAX_DEAD").await.unwrap();
    let mut out = Vec::new();
    let last = stream.cached_info().state.last_sequence;
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let reason = m
                .headers
                .get("Beeswax-Reason")
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push((m.subject.to_string(), reason, m.payload.to_vec()));
        }
    }
    out
}

/// Waits until job `id`'s state record (the `BEESWAX_JOB_STATE` bucket) satisfies `check`.
async fn wait_record(nats: &NatsServer, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let js = jetstream(nats).await;
    let kv = js.get_key_value("BEESWAX_JOB_STATE").await.unwrap();
    common::server::wait_until(&format!("the record of job {id}"), || async {
        let bytes = kv.get(id).await.ok().flatten()?;
        let record: Value = serde_json::from_slice(&bytes).ok()?;
        check(&record).then_some(record)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_through_all_three_apis_complete_on_a_worker() {
    let nats = NatsServer::start();
    let api = api_node(&nats, &[]);
    let _worker = worker(&nats, &[]);
    // Native: 202, then the job completes with its PNG served by the API node.
    let id = submit(&api.url, job("a bee", 3)).await;
    let done = wait_status(&api.url, &id, "completed").await;
    assert_eq!(done["images"].as_array().unwrap().len(), 1, "{done}");
    let png = get(&api.at(&format!("/v1/jobs/{id}/images/0"))).await;
    assert_eq!(png.status(), 200);
    let png = Png::decode(&png.bytes().await.unwrap());
    assert_eq!((png.image.width, png.image.height), (64, 64));
    let text = png.parameters;
    assert!(
        text.contains("Seed: 7") && text.contains("Steps: 3"),
        "{text}"
    );
    // Its events replay the run: started, a progress event per step, completed.
    let events = read_events(
        get(&api.at(&format!("/v1/jobs/{id}/events"))).await,
        |_, _| {},
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"started"), "{names:?}");
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "progress").count(),
        3,
        "{names:?}"
    );
    // OpenAI, blocking.
    let r = post(
        &api.at("/v1/images/generations"),
        json!({"model": "tiny-sd", "prompt": "a bee", "steps": 2, "size": "64x64",
               "response_format": "b64_json"}),
    )
    .await;
    let body = expect_json(r, 200).await;
    let png = Png::decode(&unb64(body["data"][0]["b64_json"].as_str().unwrap()));
    assert_eq!(png.image.width, 64);
    // AUTOMATIC1111, blocking; the same seed and settings as the native job give its image.
    let r = post(
        &api.at("/sdapi/v1/txt2img"),
        json!({"prompt": "a bee", "steps": 3, "seed": 7, "width": 64, "height": 64,
               "override_settings": {"sd_model_checkpoint": "tiny-sd"}}),
    )
    .await;
    let body = expect_json(r, 200).await;
    assert_eq!(body["images"].as_array().unwrap().len(), 1, "{body}");
    let health = get_json(&api.at("/health")).await;
    assert_eq!(health["nats"]["connected"], true, "{health}");
    let metrics = common::server::metrics(&api.url).await;
    for line in [
        "beeswax_fleet_jobs_waiting{pipeline=\"tiny-sd\"} 0",
        "beeswax_fleet_jobs_held{pipeline=\"tiny-fast\"} 0",
        "beeswax_fleet_dead_letters 0",
        "beeswax_fleet_dead_letters_total 0",
        "beeswax_fleet_redeliveries_total 0",
        "beeswax_fleet_workers 1",
        "beeswax_fleet_nats_connected 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_pipeline_never_takes_its_jobs() {
    let nats = NatsServer::start();
    let api = api_node(&nats, &[]);
    let other = worker_with(&nats, renamed_pack("other-sd"), &[]);
    let id = submit(&api.url, job("a wasp", 2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = get_json(&api.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(status["status"], "queued", "{status}");
    // A worker that serves it takes it.
    let _tiny = worker(&nats, &[]);
    wait_status(&api.url, &id, "completed").await;
    let log = other.stderr_text();
    assert!(
        !log.contains(&id),
        "the other worker touched the job:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_completes_on_another_and_a_job_that_always_kills_them_fails() {
    let nats = NatsServer::start();
    let api = api_node(&nats, &["--max-steps", "1000"]);
    let fast = ["--nats-ack-wait", "2", "--nats-max-deliver", "2"];
    // Killed once mid-job: a second worker finishes it.
    let first = worker(&nats, &fast);
    let id = submit(&api.url, long_job("a hornet")).await;
    wait_status(&api.url, &id, "running").await;
    first.kill();
    let second = worker(&nats, &fast);
    let done = wait_status(&api.url, &id, "completed").await;
    assert_eq!(done["images"].as_array().unwrap().len(), 1, "{done}");
    // Killed on every delivery: after the last one it is dead-lettered and failed.
    let id = submit(&api.url, long_job("a crash")).await;
    let mut current = second;
    for delivery in 1..=2 {
        // Killed as soon as this delivery has started it.
        wait_record(&nats, &id, |r| {
            r["deliveries"] == delivery && r["status"] != "queued"
        })
        .await;
        current.kill();
        current = worker(&nats, &fast);
    }
    let failed = wait_status(&api.url, &id, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("delivered 2 times"), "{error}");
    let dead = dead_letters(&nats).await;
    assert!(
        dead.iter()
            .any(|(subject, reason, _)| subject == "beeswax.dead.tiny-sd"
                && reason.contains("delivered 2 times")),
        "{dead:?}"
    );
    drop(current);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_does_not_parse_is_dead_lettered_at_once() {
    let nats = NatsServer::start();
    let _worker = worker(&nats, &[]);
    let js = jetstream(&nats).await;
    js.publish("beeswax.jobs.tiny-sd", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let dead = loop {
        let dead = dead_letters(&nats).await;
        if !dead.is_empty() || start.elapsed() > Duration::from_secs(60) {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, "beeswax.dead.tiny-sd");
    assert!(
        dead[0].1.contains("not a JSON job message"),
        "{:?}",
        dead[0].1
    );
    assert_eq!(dead[0].2, b"{not json");
    // Gone from the work queue (acknowledged, not retried).
    let mut jobs = js.get_stream("BEESWAX_JOBS").await.unwrap();
    let start = std::time::Instant::now();
    while jobs.info().await.unwrap().state.messages != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still in the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_setups_are_refused_with_what_to_fix() {
    // An unreachable server: retried with backoff, then a clear error.
    let dir = common::command::Dir::new("fleet-bad");
    let manifests = common::server::tiny_manifests(dir.path());
    TestCommand::new(dir.path())
        .manifests(&manifests)
        .args([
            "worker",
            "--nats",
            "nats://127.0.0.1:9",
            "--nats-connect-timeout",
            "2",
        ])
        .assert_fails_with(&[
            "cannot reach NATS yet",
            "retry_in",
            "cannot connect to NATS at nats://127.0.0.1:9",
        ]);
    // Jobs live in JetStream: a data directory for them is refused, not silently unused.
    let data = dir.join("data");
    TestCommand::new(dir.path())
        .manifests(&manifests)
        .arg("serve")
        .args(["--nats", "nats://127.0.0.1:9", "--data-dir"])
        .arg(&data)
        .assert_fails_with(&["--data-dir", "cannot be used with --nats"]);
    // A stream of that name with another retention.
    let nats = NatsServer::start();
    let js = jetstream(&nats).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BEESWAX_JOBS".to_string(),
        subjects: vec!["beeswax.jobs.>".to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    let url = nats.url.clone();
    TestCommand::new(dir.path())
        .manifests(&manifests)
        .args(["worker", "--nats", url.as_str()])
        .assert_fails_with(&["BEESWAX_JOBS", "retention", "--nats-stream"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_and_queued_jobs_survive_a_nats_restart() {
    let mut nats = NatsServer::start();
    let api = api_node(&nats, &[]);
    let first = worker(&nats, &[]);
    // Both were connected when NATS went away: they reconnect and carry on.
    nats.restart();
    let id = submit(&api.url, job("after", 2)).await;
    wait_status(&api.url, &id, "completed").await;
    // Jobs accepted while no worker runs are kept through a restart.
    first.kill();
    let ids = [
        submit(&api.url, job("one", 2)).await,
        submit(&api.url, job("two", 2)).await,
    ];
    nats.restart();
    let _second = worker(&nats, &[]);
    for id in &ids {
        wait_status(&api.url, id, "completed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_asked_for_as_nats_restarts_comes_once_it_is_back() {
    // A worker asks for its consumers once connected: a restart just then lost the request,
    // and the worker waited for its answer for ever (or exited), its jobs left waiting.
    let mut nats = NatsServer::start();
    let fleet = beeswax::fleet::Fleet::connect(beeswax::fleet::FleetConfig::new(&nats.url))
        .await
        .unwrap();
    nats.pause();
    let asking = tokio::spawn(async move { fleet.lasting_consumer("tiny-sd").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart();
    let consumer = tokio::time::timeout(Duration::from_secs(60), asking)
        .await
        .expect("no consumer a minute after NATS came back")
        .unwrap()
        .unwrap();
    assert_eq!(
        consumer.cached_info().config.durable_name.as_deref(),
        Some("beeswax-tiny-sd")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_can_be_api_node_and_worker_and_a_worker_drains_on_sigterm() {
    let nats = NatsServer::start();
    let both = api_node(&nats, &["--worker", "--max-steps", "1000"]);
    let id = submit(&both.url, job("both", 2)).await;
    wait_status(&both.url, &id, "completed").await;
    // SIGTERM to a worker mid-job: it takes no new job and finishes the one it runs.
    let alone = worker(&nats, &["--shutdown-timeout", "280"]);
    let both_out = both.terminate();
    assert!(both_out.status.success(), "{}", both_out.stderr);
    let api = api_node(&nats, &["--max-steps", "1000"]);
    let id = submit(&api.url, long_job("drained")).await;
    wait_status(&api.url, &id, "running").await;
    let next = submit(&api.url, job("next", 2)).await;
    let exit = alone.terminate();
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(exit.stderr.contains("draining"), "{}", exit.stderr);
    let done = get_json(&api.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(done["status"], "completed", "{done}");
    let waiting = get_json(&api.at(&format!("/v1/jobs/{next}"))).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jobs_complete_exactly_once_though_a_worker_is_killed() {
    let nats = NatsServer::start();
    let api = api_node(&nats, &["--queue-size", "64"]);
    let fast = ["--nats-ack-wait", "2"];
    let doomed = worker(&nats, &fast);
    let b = worker(&nats, &fast);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(submit(&api.url, job(&format!("bee {i}"), 4)).await);
    }
    // A worker dies mid-run; a fresh one joins.
    wait_status(&api.url, &ids[5], "completed").await;
    doomed.kill();
    let c = worker(&nats, &fast);
    for id in &ids {
        let done = wait_status(&api.url, id, "completed").await;
        assert_eq!(done["images"].as_array().unwrap().len(), 1, "{done}");
    }
    // No job finished twice on the surviving workers, and nothing is left or dead.
    let logs = format!("{}{}", b.stderr_text(), c.stderr_text());
    for id in &ids {
        let runs = logs
            .lines()
            .filter(|l| l.contains("fleet job finished") && l.contains(id.as_str()))
            .count();
        assert!(runs <= 1, "job {id} finished {runs} times");
    }
    let js = jetstream(&nats).await;
    let mut jobs = js.get_stream("BEESWAX_JOBS").await.unwrap();
    assert_eq!(jobs.info().await.unwrap().state.messages, 0);
    assert!(dead_letters(&nats).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_api_node_answers_for_a_job_and_a_restarted_one_still_serves_it() {
    let nats = NatsServer::start();
    let first = api_node(&nats, &[]);
    let second = api_node(&nats, &[]);
    // Accepted by the first node (no worker yet), followed through the second.
    let id = submit(&first.url, job("a moth", 6)).await;
    let other = submit(&first.url, job("a beetle", 2)).await;
    let queued = get_json(&second.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let events_url = second.at(&format!("/v1/jobs/{id}/events"));
    let reading = tokio::spawn(async move { read_events(get(&events_url).await, |_, _| {}).await });
    // The accepting node goes away before either job has run; a worker runs them, and the
    // second node streams the events live.
    first.kill();
    let _worker = worker(&nats, &[]);
    let events = reading.await.unwrap();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    assert!(names.contains(&"progress"), "{names:?}");
    // A new API node serves both jobs and their images.
    let third = api_node(&nats, &[]);
    for (id, steps) in [(&id, 6), (&other, 2)] {
        let done = wait_status(&third.url, id, "completed").await;
        assert_eq!(done["images"].as_array().unwrap().len(), 1, "{done}");
        let png = get(&third.at(&format!("/v1/jobs/{id}/images/0"))).await;
        assert_eq!(png.status(), 200);
        let png = Png::decode(&png.bytes().await.unwrap());
        let want = format!("Steps: {steps}");
        assert!(png.parameters.contains(&want), "{}", png.parameters);
    }
}
