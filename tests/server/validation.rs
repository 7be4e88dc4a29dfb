//! Bad input and guarded routes: the 4xx table, the API key, operations routes, pipeline
//! manifest errors, and pictures that are not images or are decompression bombs.

use beeswax::extensions::Extensions;
use beeswax::server::Limits;
use common::server::tiny_manifests;

use super::*;

/// The bad-input table: (what, route, JSON body, status, what the message must contain).
#[rustfmt::skip]
const BAD_INPUT: &[(&str, &str, &str, u16, &str)] = &[
    ("malformed JSON", "/v1/jobs", r#"{"prompt": "#, 400, "not valid JSON"),
    ("wrong type (steps)", "/v1/jobs", r#"{"prompt": "x", "steps": "many"}"#, 400,
     "field `steps`: invalid type: string \"many\", expected a whole number"),
    ("wrong type (prompt)", "/v1/jobs", r#"{"prompt": 5}"#, 400, "field `prompt`"),
    ("missing prompt", "/v1/jobs", r#"{"steps": 5}"#, 400, "missing field `prompt`"),
    ("unknown field", "/v1/jobs", r#"{"prompt": "x", "stepz": 5}"#, 400, "unknown field `stepz`"),
    ("unknown pipeline", "/v1/jobs", r#"{"prompt": "x", "pipeline": "nope"}"#, 400,
     "unknown pipeline `nope`: available: tiny-fast, tiny-sd"),
    ("unknown sampler", "/v1/jobs", r#"{"prompt": "x", "scheduler": "warp_drive"}"#, 400,
     "warp_drive"),
    ("unknown schedule", "/v1/jobs", r#"{"prompt": "x", "schedule": "wobbly"}"#, 400, "wobbly"),
    ("width not a multiple of 8", "/v1/jobs", r#"{"prompt": "x", "width": 65}"#, 400,
     "width 65 is not a multiple of 8"),
    ("width over the limit", "/v1/jobs", r#"{"prompt": "x", "pipeline": "tiny-sd", "width": 4096}"#,
     400, "width 4096 is over this server's limit of 2048"),
    ("height over the pipeline's limit", "/v1/jobs",
     r#"{"prompt": "x", "pipeline": "tiny-fast", "height": 256}"#, 400,
     "height 256 is over this server's limit of 128"),
    ("steps over the limit", "/v1/jobs", r#"{"prompt": "x", "pipeline": "tiny-sd", "steps": 151}"#,
     400, "steps 151 is over this server's limit of 150"),
    ("zero steps", "/v1/jobs", r#"{"prompt": "x", "steps": 0}"#, 400,
     "steps must be at least 1 (got 0)"),
    ("batch over the limit", "/v1/jobs", r#"{"prompt": "x", "pipeline": "tiny-sd", "batch": 9}"#,
     400, "batch 9 is over this server's limit of 8"),
    ("guidance out of range", "/v1/jobs", r#"{"prompt": "x", "guidance": 1000.0}"#, 400,
     "guidance must be between 0 and 100"),
    ("negative n", "/v1/images/generations", r#"{"prompt": "x", "n": -1}"#, 400,
     "n must be at least 1 (got -1)"),
    ("n over the limit", "/v1/images/generations", r#"{"prompt": "x", "model": "tiny-sd", "n": 100}"#,
     400, "n 100 is over this server's limit of 8"),
    ("bad size", "/v1/images/generations", r#"{"prompt": "x", "size": "huge"}"#, 400,
     "size `huge` is not WIDTHxHEIGHT"),
    ("size over the limit", "/v1/images/generations",
     r#"{"prompt": "x", "model": "tiny-sd", "size": "4096x64"}"#, 400,
     "size 4096 is over this server's limit of 2048"),
    ("unknown model", "/v1/images/generations", r#"{"prompt": "x", "model": "dall-e-9"}"#, 404,
     "unknown model `dall-e-9`"),
    ("bad response_format", "/v1/images/generations",
     r#"{"prompt": "x", "response_format": "gif"}"#, 400, "response_format `gif`"),
    ("A1111 wrong type", "/sdapi/v1/txt2img", r#"{"prompt": "x", "cfg_scale": "high"}"#, 400,
     "field `cfg_scale`"),
    ("A1111 unknown sampler", "/sdapi/v1/txt2img", r#"{"prompt": "x", "sampler_name": "Warp Drive"}"#,
     400, "Warp Drive"),
    ("A1111 unknown checkpoint", "/sdapi/v1/txt2img",
     r#"{"prompt": "x", "override_settings": {"sd_model_checkpoint": "sd-99"}}"#, 400,
     "unknown override_settings.sd_model_checkpoint `sd-99`"),
    ("A1111 batch × n_iter that would wrap", "/sdapi/v1/txt2img",
     r#"{"prompt": "x", "batch_size": 3, "n_iter": 6148914691236517206}"#, 400,
     "batch_size 3 × 6148914691236517206 iterations is over this server's limit of 4 images"),
    ("A1111 batch × n_iter over the limit", "/sdapi/v1/txt2img",
     r#"{"prompt": "x", "batch_size": 3, "n_iter": 3}"#, 400,
     "batch_size 3 × 3 iterations is over this server's limit of 4 images"),
    ("A1111 width not a multiple of 8", "/sdapi/v1/txt2img", r#"{"prompt": "x", "width": 100}"#,
     400, "width 100 is not a multiple of 8"),
];

/// POSTs `body` as JSON to `path`; asserts the answer's status and that its message (A1111's
/// `detail`, else `error.message`) contains `needle`; then that the server still serves.
async fn refuses(
    server: &TestServer,
    what: &str,
    path: &str,
    body: String,
    status: u16,
    needle: &str,
) {
    let c = client();
    let response = c
        .post(server.at(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let got = response.status().as_u16();
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    let message = if path.starts_with("/sdapi") {
        body["detail"].as_str()
    } else {
        body["error"]["message"].as_str()
    };
    let message = message.unwrap_or_default();
    assert_eq!(got, status, "{what}: {body}");
    assert!(
        message.contains(needle),
        "{what}: {message:?} lacks {needle:?}"
    );
    eprintln!("{what:<36} {status} {message}");
    // ...and the server serves the next request normally.
    let next = c.get(server.at("/v1/pipelines")).send().await.unwrap();
    assert_eq!(next.status(), 200, "after {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table_each_gets_a_4xx_naming_the_problem() {
    let server = TestServer::start(ServerConfig {
        max_body_bytes: 64 * 1024,
        ..config()
    })
    .await;
    for &(what, path, body, status, needle) in BAD_INPUT {
        refuses(&server, what, path, body.to_string(), status, needle).await;
    }
    let huge = format!("{{\"prompt\": \"{}\"}}", "x".repeat(1 << 20));
    let needle = "larger than the limit of 65536 bytes";
    refuses(&server, "huge body", "/v1/jobs", huge, 413, needle).await;
    for (what, method, path, status) in [
        ("unknown route", "GET", "/v1/nothing", 404),
        ("unknown job", "GET", "/v1/jobs/not-a-job", 404),
        ("wrong method", "PUT", "/v1/jobs", 405),
    ] {
        let response = client()
            .request(method.parse().unwrap(), server.at(path))
            .send()
            .await
            .unwrap();
        let body = expect_json(response, status).await;
        let message = body["error"]["message"].as_str().unwrap();
        let name = path.rsplit('/').next().unwrap();
        assert!(message.contains(name), "{what}: {body}");
    }
    // After all that, a generation still works.
    let r = post(
        &server.at("/v1/images/generations"),
        json!({"prompt": "fine", "size": "64x64", "response_format": "b64_json", "steps": 2}),
    )
    .await;
    let r = expect_json(r, 200).await;
    assert!(
        r["data"][0]["b64_json"].as_str().unwrap().len() > 100,
        "{r}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_everything_but_health() {
    let server = TestServer::start(ServerConfig {
        api_key: Some("s3cret".into()),
        ..config()
    })
    .await;
    let c = client();
    let health = c.get(server.at("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    for (what, auth, status, needle) in [
        ("missing key", None, 401, "needs an API key"),
        ("wrong key", Some("Bearer nope"), 401, "not valid"),
        ("not bearer", Some("Token s3cret"), 401, "Bearer"),
        ("right key", Some("Bearer s3cret"), 200, ""),
    ] {
        for path in ["/v1/pipelines", "/metrics", "/sdapi/v1/sd-models"] {
            let mut request = c.get(server.at(path));
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), status, "{what} {path}");
            if status == 401 {
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
                let body: Value = response.json().await.unwrap();
                let message = body["error"]["message"]
                    .as_str()
                    .or(body["detail"].as_str())
                    .unwrap();
                assert!(message.contains(needle), "{what} {path}: {body}");
            }
        }
    }
    let r = c
        .post(server.at("/v1/jobs"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "jobs need the key too");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_routes_health_metrics_openapi_and_request_ids() {
    let server = TestServer::start(config()).await;
    let c = client();
    let health = get_json(&server.at("/health")).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["models_loaded"], 1);

    let r = post(
        &server.at("/v1/images/generations"),
        json!({"prompt": "m", "steps": 3}),
    )
    .await;
    let r = expect_json(r, 200).await;
    assert!(
        r["data"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with(&server.url),
        "{r}"
    );

    let response = c.get(server.at("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = response.text().await.unwrap();
    for needle in [
        "beeswax_queue_depth 0",
        "beeswax_models_loaded 1",
        "beeswax_jobs_total{outcome=\"completed\"} 1",
        "beeswax_step_seconds_count 3",
        "# TYPE beeswax_step_seconds histogram",
        "beeswax_http_responses_total{code=\"200\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }

    let api = get_json(&server.at("/openapi.json")).await;
    assert_eq!(api["openapi"], "3.1.0");
    for path in [
        "/v1/pipelines",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/events",
        "/v1/jobs/{id}/images/{n}",
    ] {
        assert!(api["paths"][path].is_object(), "{path}");
    }

    let generated = c.get(server.at("/health")).send().await.unwrap();
    assert!(!generated.headers()["x-request-id"].is_empty());
    let kept = c
        .get(server.at("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123");
    server.stop().await;
}

#[test]
fn pipeline_manifest_errors_name_file_line_and_field() {
    let dir = common::command::Dir::new("pipeline-errors");
    let m = tiny_manifests(dir.path());
    let original = std::fs::read_to_string(m.join("tiny.toml")).unwrap();
    for (from, to, needles) in [
        (
            "pack = \"tiny-sd\"\ndescription",
            "pack = \"tiny-xl\"\ndescription",
            vec![
                "tiny.toml:15",
                "`pipeline.pack`",
                "tiny-xl",
                "available packs: tiny-sd",
            ],
        ),
        (
            "scheduler = \"ddim\"",
            "scheduler = \"warp\"",
            vec!["tiny.toml:17", "`pipeline.scheduler`", "warp"],
        ),
        (
            "steps = 4",
            "steps = \"four\"",
            vec!["tiny.toml:20", "pipeline.defaults.steps", "wrong type"],
        ),
        (
            "max_width = 128",
            "max_width = 100",
            vec![
                "tiny.toml:23",
                "`pipeline.limits.max_width`",
                "multiple of 8",
            ],
        ),
        (
            "name = \"tiny-fast\"",
            "name = \"tiny-sd\"",
            vec!["tiny.toml:14", "`pipeline.name`", "already a pack name"],
        ),
        (
            "description = \"few DDIM steps\"",
            "colour = \"blue\"",
            vec!["tiny.toml:16", "colour"],
        ),
    ] {
        assert!(original.contains(from), "{from}");
        std::fs::write(m.join("tiny.toml"), original.replace(from, to)).unwrap();
        let err = common::manifests::catalog(&m, Limits::default(), &Extensions::builtin())
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(err.contains(n), "{to}: {err:?} lacks {n:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_images_and_decompression_bombs_are_4xx_and_the_server_carries_on() {
    let server = TestServer::start(config()).await;
    let url = server.at("/sdapi/v1/img2img");
    let not_image = b64(b"hello, this is not a picture");
    let response = post(
        &url,
        json!({"init_images": [not_image], "prompt": "x", "steps": 2}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("init_images[0]") && text.contains("not a readable"),
        "{text}"
    );

    // A valid PNG header declaring 100000 x 100000 pixels, a few bytes of data.
    let mut bomb = Vec::new();
    {
        let mut e = png::Encoder::new(&mut bomb, 100_000, 100_000);
        e.set_color(png::ColorType::Rgb);
        let mut w = e.write_header().unwrap();
        w.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x03, 0x00])
            .unwrap();
        drop(w);
    }
    let response = post(
        &url,
        json!({"init_images": [b64(&bomb)], "prompt": "x", "steps": 2}),
    )
    .await;
    assert_eq!(response.status(), 413);
    let text = response.text().await.unwrap();
    assert!(text.contains("100000x100000"), "{text}");

    let response = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "x", "init_image": b64(&picture(8, 8)), "mask": b64(&bomb)}),
    )
    .await;
    assert_eq!(response.status(), 413);
    let response = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "x", "init_image": "%%%not base64%%%"}),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("init_image"));
    let response = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "x", "init_image": b64(&picture(8, 8)), "strength": 1.5}),
    )
    .await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("strength"));

    // The next request is served normally.
    let response = post(
        &url,
        json!({"init_images": [b64(&picture(64, 64))], "prompt": "x", "steps": 2, "seed": 1}),
    )
    .await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}
