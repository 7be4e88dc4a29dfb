//! Native jobs over HTTP: events and previews, pipeline defaults, cancellation, the full
//! queue, graceful shutdown, and the real binary stopping on SIGTERM.

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

    let events = read_events(
        client()
            .get(server.at(&format!("/v1/jobs/{id}/events")))
            .send()
            .await
            .unwrap(),
        |_, _| {},
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{names:?}");
    assert_eq!(events[0].1["position"], 1);
    assert!(names.contains(&"started"), "{names:?}");
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    let progress: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "progress")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(progress.len(), 6);
    for (i, p) in progress.iter().enumerate() {
        assert_eq!(p["step"], i + 1);
        assert_eq!(p["total"], 6);
        // Previews every 2 steps: after steps 2, 4 and 6.
        let preview = p["preview"].as_str();
        assert_eq!(preview.is_some(), (i + 1) % 2 == 0, "step {}", i + 1);
        if let Some(url) = preview {
            let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let (w, h, _, _) = decode_png(&bytes);
            assert_eq!((w, h), (8, 8), "latent-sized preview");
        }
    }
    let completed = &events.last().unwrap().1;
    assert_eq!(completed["parameters"]["seed"], 1);
    assert_eq!(completed["parameters"]["steps"], 6);
    let image_url = completed["images"][0].as_str().unwrap();

    let response = client().get(server.at(image_url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let png = response.bytes().await.unwrap();
    let (w, h, pixels, params) = decode_png(&png);
    assert_eq!((w, h), (64, 64));
    assert!(
        params.starts_with("a red fox\nSteps: 6, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: tiny-sd"),
        "{params}"
    );

    // The service's run makes exactly the image `text_to_image` (the CLI's path) makes.
    let model = common::model("tiny-sd");
    let pack = server.service.catalog.get("tiny-sd").unwrap();
    let job = resolve(
        &model,
        &pack.defaults,
        &common::registry(),
        JobRequest {
            prompt: "a red fox".into(),
            steps: Some(6),
            seed: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = common::run(&model, &job);
    assert_eq!(
        pixels, reference.images[0].data,
        "same pixels as text_to_image"
    );

    let status = wait_status(&server, &id, "completed").await;
    assert_eq!(status["images"][0], image_url);
    assert_eq!(status["progress"]["step"], 6);
    // Replaying after the end, from Last-Event-ID, gives only the later events.
    let replay = read_events(
        client()
            .get(server.at(&format!("/v1/jobs/{id}/events")))
            .header("last-event-id", (events.len() - 2).to_string())
            .send()
            .await
            .unwrap(),
        |_, _| {},
    )
    .await;
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].0, "completed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_apply_their_defaults_and_list_themselves() {
    let server = TestServer::start(config()).await;
    let list: Value = client()
        .get(server.at("/v1/pipelines"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

    let job: Value = post(
        &server.at("/v1/jobs"),
        json!({"pipeline": "tiny-fast", "prompt": "x", "seed": 3}),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = job["id"].as_str().unwrap();
    let done = wait_status(&server, id, "completed").await;
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
    let a: Value = post(&server.at("/v1/jobs"), long.clone())
        .await
        .json()
        .await
        .unwrap();
    let b: Value = post(&server.at("/v1/jobs"), long)
        .await
        .json()
        .await
        .unwrap();
    let (a, b) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );

    // B waits behind A: cancelling it is immediate.
    let response = client()
        .delete(server.at(&format!("/v1/jobs/{b}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");

    // A runs: cancel after its first progress event; it stops at its next step.
    let stream = client()
        .get(server.at(&format!("/v1/jobs/{a}/events")))
        .send()
        .await
        .unwrap();
    let url = server.at(&format!("/v1/jobs/{a}"));
    let mut sent = false;
    let mut cancel = None;
    let events = read_events(stream, |name, _| {
        if name == "progress" && !sent {
            sent = true;
            let url = url.clone();
            cancel = Some(tokio::spawn(async move {
                client().delete(url).send().await.unwrap().status()
            }));
        }
    })
    .await;
    assert_eq!(cancel.unwrap().await.unwrap(), 202);
    assert_eq!(events.last().unwrap().0, "cancelled");
    let steps = events.iter().filter(|(n, _)| n == "progress").count();
    assert!(steps < 150, "stopped early, after {steps} steps");
    let status = wait_status(&server, &a, "cancelled").await;
    assert!(status["images"].as_array().unwrap().is_empty());
    // Cancelling again: already finished.
    let again = client()
        .delete(server.at(&format!("/v1/jobs/{a}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    // Images of a cancelled job: 409 naming its status.
    let image = client()
        .get(server.at(&format!("/v1/jobs/{a}/images/0")))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 409);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = TestServer::start(ServerConfig {
        queue_size: 2,
        ..config()
    })
    .await;
    let long = json!({"prompt": "busy", "pipeline": "tiny-sd", "steps": 150});
    let first: Value = post(&server.at("/v1/jobs"), long.clone())
        .await
        .json()
        .await
        .unwrap();
    let first = first["id"].as_str().unwrap().to_string();
    wait_status(&server, &first, "running").await;
    let mut ids = vec![first];
    for position in 1..=2 {
        let r = post(&server.at("/v1/jobs"), long.clone()).await;
        assert_eq!(r.status(), 202);
        let job: Value = r.json().await.unwrap();
        assert_eq!(job["position"], position);
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for (url, body) in [
        ("/v1/jobs", json!({"prompt": "one too many"})),
        (
            "/v1/images/generations",
            json!({"prompt": "one too many", "model": "tiny-sd"}),
        ),
        ("/sdapi/v1/txt2img", json!({"prompt": "one too many"})),
    ] {
        let r = post(&server.at(url), body).await;
        assert_eq!(r.status(), 429, "{url}");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        let body: Value = r.json().await.unwrap();
        let text = body.to_string();
        assert!(text.contains("queue is full"), "{text}");
    }
    for id in &ids {
        client()
            .delete(server.at(&format!("/v1/jobs/{id}")))
            .send()
            .await
            .unwrap();
    }
    wait_status(&server, &ids[0], "cancelled").await;
    // The next request is served normally.
    let r = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "after", "steps": 2}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let metrics = client()
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("beeswax_jobs_total{outcome=\"rejected\"} 3"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_running_job_and_cancels_the_queue() {
    let server = TestServer::start(config()).await;
    let running: Value = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "finish me", "steps": 40}),
    )
    .await
    .json()
    .await
    .unwrap();
    let running = running["id"].as_str().unwrap().to_string();
    let queued: Value = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "never", "steps": 40}),
    )
    .await
    .json()
    .await
    .unwrap();
    let queued = queued["id"].as_str().unwrap().to_string();
    wait_status(&server, &running, "running").await;
    let events = client()
        .get(server.at(&format!("/v1/jobs/{running}/events")))
        .send()
        .await
        .unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let m = manifests(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_beeswax"))
        .args(["serve", "--port", "0", "--manifests"])
        .arg(&m)
        .env_remove("BEESWAX_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("beeswax listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "loopback by default: {url}"
    );
    let health: Value = client()
        .get(format!("{url}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let r = post(
        &format!("{url}/v1/jobs"),
        json!({"prompt": "x", "steps": 2}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("shutdown requested") && stderr.contains("request{id="),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
