//! The queue: a full queue refuses exactly the requests beyond its capacity (the workers are
//! held, so nothing runs meanwhile), and fifty clients against a queue of eight.

use super::*;

/// A server whose workers are held: nothing starts until `service.resume_workers()`.
async fn paused_server(queue_size: usize) -> TestServer {
    let server = TestServer::start(ServerConfig {
        queue_size,
        ..config()
    })
    .await;
    server.service.pause_workers();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let server = paused_server(2).await;
    let long = json!({"prompt": "busy", "pipeline": "tiny-sd", "steps": 150});
    let mut ids = Vec::new();
    for position in 1..=2 {
        let job = expect_json(post(&server.at("/v1/jobs"), long.clone()).await, 202).await;
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
        // No job has finished yet: a mean job time of 1 s, times 2 jobs ahead, over 1 worker.
        assert_eq!(r.headers()["retry-after"], "2", "{url}");
        let text = r.text().await.unwrap();
        assert!(text.contains("queue is full"), "{text}");
    }
    for id in &ids {
        let r = delete(&server.at(&format!("/v1/jobs/{id}"))).await;
        assert_eq!(r.status(), 200, "a waiting job is cancelled at once");
    }
    server.service.resume_workers();
    // The next request is served normally.
    let id = submit(&server.url, json!({"prompt": "after", "steps": 2})).await;
    wait_status(&server.url, &id, "completed").await;
    let text = metrics(&server.url).await;
    for (line, value) in [
        ("beeswax_jobs_total{outcome=\"rejected\"}", 3.0),
        ("beeswax_jobs_total{outcome=\"cancelled\"}", 2.0),
        ("beeswax_jobs_total{outcome=\"completed\"}", 1.0),
    ] {
        assert_eq!(metric(&text, line), Some(value), "{line}:\n{text}");
    }
    server.stop().await;
}

/// One OpenAI generation request: (status, Retry-After, body).
pub(crate) async fn generation(url: String, i: usize) -> (u16, Option<String>, Value) {
    let body = json!({"prompt": format!("client {i}"), "steps": 20, "size": "64x64",
                      "response_format": "b64_json", "seed": i});
    let r = client().post(&url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_against_a_queue_of_eight_get_eight_images_and_42_refusals() {
    let server = paused_server(8).await;
    let url = server.at("/v1/images/generations");
    let rounds = 2;
    for round in 1..=rounds {
        let tasks: Vec<_> = (0..50)
            .map(|i| tokio::spawn(generation(url.clone(), i)))
            .collect();
        // Held workers: eight requests wait in the queue, the other 42 are refused.
        wait_until("8 requests queued and 42 refused", || async {
            let text = metrics(&server.url).await;
            let queued = metric(&text, "beeswax_queue_depth") == Some(8.0);
            let refused = metric(&text, "beeswax_jobs_total{outcome=\"rejected\"}");
            (queued && refused == Some(42.0 * round as f64)).then_some(())
        })
        .await;
        server.service.resume_workers();
        let (mut ok, mut busy) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                (200, _, body) => {
                    let png = Png::decode(&unb64(body["data"][0]["b64_json"].as_str().unwrap()));
                    assert_eq!(png.size(), (64, 64));
                    ok += 1;
                }
                (429, retry, body) => {
                    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
                    assert_eq!(body["error"]["code"], "queue_full");
                    busy += 1;
                }
                (other, _, body) => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!((ok, busy), (8, 42), "round {round}");
        server.service.pause_workers();
    }
    let text = metrics(&server.url).await;
    for (line, value) in [
        ("beeswax_jobs_total{outcome=\"completed\"}", 8 * rounds),
        ("beeswax_jobs_total{outcome=\"rejected\"}", 42 * rounds),
        ("beeswax_queue_depth", 0),
        ("beeswax_jobs_running", 0),
    ] {
        assert_eq!(metric(&text, line), Some(value as f64), "{line}:\n{text}");
    }
    server.stop().await;
}
