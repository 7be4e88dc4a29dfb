//! Cross-site use (issue 20, finding 3): bodies that are not declared JSON get 415, pages of
//! other sites get 403 (unless `--cors-origin` allows them, with CORS headers), a loopback
//! server refuses DNS-rebound `Host` names, and OpenAI image URLs come from the configuration,
//! never from the request's `Host`.

use super::*;

/// POSTs `body` to `path` with the given extra headers.
async fn send(
    server: &TestServer,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = client().post(server.at(path)).body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

/// The message of an error answer in either shape (A1111's `detail`, else OpenAI's).
async fn message(response: reqwest::Response, status: u16, what: &str) -> String {
    assert_eq!(response.status().as_u16(), status, "{what}");
    let body: Value = response.json().await.unwrap();
    body["detail"]
        .as_str()
        .or(body["error"]["message"].as_str())
        .unwrap_or_else(|| panic!("{what}: no message in {body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_not_declared_json_are_refused_with_415() {
    let server = TestServer::start(config()).await;
    let job = r#"{"prompt": "m", "steps": 2}"#;
    for (path, content_type) in [
        ("/v1/jobs", None),
        ("/v1/jobs", Some("text/plain")),
        (
            "/v1/images/generations",
            Some("application/x-www-form-urlencoded"),
        ),
        ("/sdapi/v1/txt2img", Some("text/plain;charset=UTF-8")),
        ("/sdapi/v1/options", Some("multipart/form-data; boundary=x")),
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        let what = format!("{path} with {content_type:?}");
        let m = message(send(&server, path, job, &headers).await, 415, &what).await;
        assert!(m.contains("Content-Type: application/json"), "{what}: {m}");
    }
    // The edits route takes multipart only.
    let m = message(
        send(
            &server,
            "/v1/images/edits",
            job,
            &[("content-type", "application/json")],
        )
        .await,
        415,
        "edits with JSON",
    )
    .await;
    assert!(m.contains("multipart/form-data"), "{m}");
    // JSON with a charset parameter is JSON; nothing was queued by the refused requests.
    let r = send(
        &server,
        "/v1/jobs",
        job,
        &[("content-type", "application/json; charset=utf-8")],
    )
    .await;
    expect_json(r, 202).await;
    assert_eq!(server.service.jobs.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_sites_are_refused_unless_allowed() {
    let allowed = "https://studio.example";
    let server = TestServer::start(ServerConfig {
        cors_origins: vec![allowed.to_string()],
        ..config()
    })
    .await;
    let json = ("content-type", "application/json");
    // A page elsewhere cannot interrupt, queue or switch checkpoints.
    for (path, body) in [
        ("/sdapi/v1/interrupt", ""),
        ("/sdapi/v1/options", r#"{"sd_model_checkpoint": "tiny-sd"}"#),
        ("/v1/jobs", r#"{"prompt": "m", "steps": 2}"#),
    ] {
        let r = send(
            &server,
            path,
            body,
            &[json, ("origin", "https://evil.example")],
        )
        .await;
        let m = message(r, 403, path).await;
        assert!(
            m.contains("--cors-origin https://evil.example"),
            "{path}: {m}"
        );
    }
    let r = client()
        .delete(server.at("/v1/jobs/whatever"))
        .header("origin", "null")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a sandboxed page (Origin: null)");
    assert_eq!(server.service.jobs.len(), 0, "nothing was queued");

    // The server's own page (same origin) and the allowed site pass; the latter gets CORS.
    let own = server.url.clone();
    let r = send(
        &server,
        "/v1/jobs",
        r#"{"prompt": "m", "steps": 2}"#,
        &[json, ("origin", &own)],
    )
    .await;
    assert!(r.headers().get("access-control-allow-origin").is_none());
    expect_json(r, 202).await;
    let r = send(
        &server,
        "/v1/jobs",
        r#"{"prompt": "m", "steps": 2}"#,
        &[json, ("origin", allowed)],
    )
    .await;
    assert_eq!(r.headers()["access-control-allow-origin"], allowed);
    expect_json(r, 202).await;
    let preflight = client()
        .request(reqwest::Method::OPTIONS, server.at("/v1/jobs"))
        .header("origin", allowed)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], allowed);
    let methods = preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("POST"), "{methods}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_server_answers_only_to_its_own_names() {
    let server = TestServer::start(ServerConfig {
        public_url: Some("https://sd.example.com/base".to_string()),
        ..config()
    })
    .await;
    // DNS rebinding: a page at rebind.example whose name now points at 127.0.0.1. Its
    // requests carry its own Host and Origin, so the origin looks "same-site".
    let rebound = [
        ("host", "rebind.example:7860"),
        ("origin", "http://rebind.example:7860"),
        ("content-type", "application/json"),
    ];
    let r = send(
        &server,
        "/v1/jobs",
        r#"{"prompt": "m", "steps": 2}"#,
        &rebound,
    )
    .await;
    let m = message(r, 403, "rebound host").await;
    assert!(m.contains("rebind.example"), "{m}");
    let r = client()
        .get(server.at("/sdapi/v1/sd-models"))
        .header("host", "rebind.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "reads too");
    assert_eq!(server.service.jobs.len(), 0);

    // The public URL's host is the server's own name; image links start with the public URL
    // whatever Host the request carried.
    let r = send(
        &server,
        "/v1/images/generations",
        r#"{"prompt": "m", "steps": 2}"#,
        &[
            ("host", "sd.example.com"),
            ("content-type", "application/json"),
        ],
    )
    .await;
    let body = expect_json(r, 200).await;
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://sd.example.com/base/v1/jobs/"),
        "{url}"
    );
    server.stop().await;
}
