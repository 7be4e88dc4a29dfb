//! Native jobs over HTTP: events and previews, pipeline defaults, cancellation, graceful
//! shutdown, and the real binary stopping on SIGTERM.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_job_streams_events_to_completion_with_previews() {
    let server = TestServer::start(config()).await;
    let response = post(
        &server.at("/v1/jobs"),
        json!({"pipeline": "tiny-sd", "prompt": "a red fox", "steps": 6, "seed": 1, "preview_every": 2}),
    )
    .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["urls"]["events"], format!("/v1/jobs/{id}/events"));

    let events_url = server.at(&format!("/v1/jobs/{id}/events"));
    let events = read_events(get(&events_url).await, |_, _| {}).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{names:?}");
    assert_eq!(events[0].1["position"], 1);
    assert!(names.contains(&"started"), "{names:?}");
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    check_progress_events(&events, 6, 2);
    let completed = &events.last().unwrap().1;
    assert_eq!(completed["parameters"]["seed"], 1);
    assert_eq!(completed["parameters"]["steps"], 6);
    let image_url = completed["images"][0].as_str().unwrap();

    let response = get(&server.at(image_url)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let png = Png::decode(&response.bytes().await.unwrap());
    assert_eq!(png.size(), (64, 64));
    assert!(
        png.parameters.starts_with("a red fox\nSteps: 6, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: tiny-sd"),
        "{}",
        png.parameters
    );

    // The service's run makes exactly the image the library (the CLI's path) makes.
    let pack = server.service.catalog.get("tiny-sd").unwrap();
    let reference =
        common::jobs::pack_image(&common::model("tiny-sd"), &pack.defaults, "a red fox", 6, 1);
    assert_eq!(png.image.data, reference, "same pixels as text_to_image");

    let status = wait_status(&server.url, &id, "completed").await;
    assert_eq!(status["images"][0], image_url);
    assert_eq!(status["progress"]["step"], 6);
    // Replaying after the end, from Last-Event-ID, gives only the later events.
    let replay = client()
        .get(&events_url)
        .header("last-event-id", (events.len() - 2).to_string())
        .send()
        .await
        .unwrap();
    let replay = read_events(replay, |_, _| {}).await;
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].0, "completed");
    server.stop().await;
}

/// `steps` progress events, counting up, with a latent-sized preview every `every` steps.
fn check_progress_events(events: &[(String, Value)], steps: usize, every: usize) {
    let progress: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(progress.len(), steps);
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["step"], i + 1);
        assert_eq!(p["total"], steps);
        let preview = p["preview"].as_str();
        assert_eq!(preview.is_some(), (i + 1) % every == 0, "step {}", i + 1);
        if let Some(url) = preview {
            let png = Png::decode(&unb64(url.strip_prefix("data:image/png;base64,").unwrap()));
            assert_eq!(png.size(), (8, 8), "latent-sized preview");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_apply_their_defaults_and_list_themselves() {
    let server = TestServer::start(config()).await;
    let list = get_json(&server.at("/v1/pipelines")).await;
    let names: Vec<&str> = list["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny-fast", "tiny-sd"]);
    assert_eq!(list["pipelines"][0]["kind"], "pipeline");
    assert_eq!(list["pipelines"][0]["limits"]["max_width"], 128);
    assert_eq!(list["pipelines"][1]["kind"], "pack");

    let id = submit(
        &server.url,
        json!({"pipeline": "tiny-fast", "prompt": "x", "seed": 3}),
    )
    .await;
    let done = wait_status(&server.url, &id, "completed").await;
    assert_eq!(done["parameters"]["scheduler"], "ddim");
    assert_eq!(done["parameters"]["steps"], 4);
    assert_eq!(
        done["parameters"]["width"], 64,
        "size from the pack's defaults"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_running_job_at_its_next_step_and_a_queued_one_at_once() {
    let server = TestServer::start(config()).await;
    let long = json!({"pipeline": "tiny-sd", "prompt": "a long job", "steps": 150});
    let a = submit(&server.url, long.clone()).await;
    let b = submit(&server.url, long).await;

    // B waits behind A: cancelling it is immediate.
    let body = expect_json(delete(&server.at(&format!("/v1/jobs/{b}"))).await, 200).await;
    assert_eq!(body["status"], "cancelled");

    // A runs: cancel after its first progress event; it stops at its next step.
    let stream = get(&server.at(&format!("/v1/jobs/{a}/events"))).await;
    let url = server.at(&format!("/v1/jobs/{a}"));
    let mut cancel = None;
    let events = read_events(stream, |name, _| {
        if name == "progress" && cancel.is_none() {
            let url = url.clone();
            cancel = Some(tokio::spawn(async move { delete(&url).await.status() }));
        }
    })
    .await;
    assert_eq!(cancel.unwrap().await.unwrap(), 202);
    assert_eq!(events.last().unwrap().0, "cancelled");
    let steps = events.iter().filter(|(n, _)| n == "progress").count();
    assert!(steps < 150, "stopped early, after {steps} steps");
    let status = wait_status(&server.url, &a, "cancelled").await;
    assert!(status["images"].as_array().unwrap().is_empty());
    // Cancelling again: already finished.
    assert_eq!(delete(&url).await.status(), 409);
    // Images of a cancelled job: 409 naming its status.
    let image = get(&server.at(&format!("/v1/jobs/{a}/images/0"))).await;
    assert_eq!(image.status(), 409);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_running_job_and_cancels_the_queue() {
    let server = TestServer::start(config()).await;
    let running = submit(&server.url, json!({"prompt": "finish me", "steps": 40})).await;
    let queued = submit(&server.url, json!({"prompt": "never", "steps": 40})).await;
    wait_status(&server.url, &running, "running").await;
    let events = get(&server.at(&format!("/v1/jobs/{running}/events"))).await;
    let service = server.service.clone();
    let url = server.url.clone();
    server.stop().await;
    let names: Vec<String> = read_events(events, |_, _| {})
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names.last().unwrap(),
        "completed",
        "the running job finished: {names:?}"
    );
    let a = service.jobs.get(&running).unwrap();
    assert_eq!(a.state().status, beeswax::server::Status::Completed);
    assert_eq!(a.state().images.len(), 1);
    let b = service.jobs.get(&queued).unwrap();
    assert_eq!(b.state().status, beeswax::server::Status::Cancelled);
    assert!(
        client().get(format!("{url}/health")).send().await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_stops_cleanly_on_sigterm() {
    let server = tokio::task::spawn_blocking(|| ServeProcess::start(&[]))
        .await
        .unwrap();
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "loopback by default: {}",
        server.url
    );
    let health = get_json(&server.at("/health")).await;
    assert_eq!(health["status"], "ok");
    submit(&server.url, json!({"prompt": "x", "steps": 2})).await;
    let exit = tokio::task::spawn_blocking(|| server.terminate())
        .await
        .unwrap();
    let stderr = &exit.stderr;
    assert!(exit.status.success(), "exit {:?}\n{stderr}", exit.status);
    assert!(
        stderr.contains("shutdown requested") && stderr.contains("request{id="),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
