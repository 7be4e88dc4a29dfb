//! `/openapi.json` and what the schemathesis run (scripts/fuzz-http) found: the document
//! states this server's limits and names, every operation it documents is routed, and bad
//! path or query parameters are answered in the route's JSON error shape.

use beeswax::server::Limits;

use super::*;

/// A server with small limits, as scripts/fuzz-http starts one.
fn small() -> ServerConfig {
    ServerConfig {
        limits: Limits {
            max_width: 64,
            max_height: 96,
            max_steps: 2,
            max_images: 3,
        },
        max_body_bytes: 300_000,
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_this_servers_limits_and_names() {
    let server = TestServer::start(small()).await;
    let doc = get_json(&server.at("/openapi.json")).await;
    let job = &doc["components"]["schemas"]["JobRequest"]["properties"];
    // tiny-fast's own limits (128 px, 50 steps, 4 images) are larger than the server's: the
    // document gives the largest any pipeline allows.
    assert_eq!(job["width"]["maximum"], 128);
    assert_eq!(job["height"]["maximum"], 128);
    assert_eq!(job["steps"]["maximum"], 50);
    assert_eq!(job["batch"]["maximum"], 4);
    assert_eq!(job["width"]["multipleOf"], 8);
    let pipelines: Vec<&str> = (job["pipeline"]["enum"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(pipelines, ["tiny-fast", "tiny-sd"]);
    let samplers = job["scheduler"]["enum"].as_array().unwrap();
    assert!(samplers.contains(&json!("euler")) && samplers.contains(&json!("DPM++ 2M")));
    assert!(doc["info"]["description"]
        .as_str()
        .unwrap()
        .contains("300000 bytes"));
    let edits = &doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"];
    assert!(edits.get("multipart/form-data").is_some(), "{edits}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let server = TestServer::start(config()).await;
    let doc = get_json(&server.at("/openapi.json")).await;
    let http = client();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = server.at(&path
            .replace("{id}", "no-such-job")
            .replace("{n}", "0")
            .replace("{version}", "v")
            .replace("{file}", "none.js"));
        for method in item.as_object().unwrap().keys() {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let response = http
                .request(m, &url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert!(
                status != 405 && !text.contains("unknown_route"),
                "{method} {path} is documented but not routed: {status} {text}"
            );
        }
    }
    server.stop().await;
}

/// Found by schemathesis: axum's own extractors answered a bad query string or path segment
/// with a plain-text 400, not the JSON error the document (and every client) expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_and_path_parameters_are_json_errors() {
    let server = TestServer::start(config()).await;
    let cases = [
        ("/v1/gallery?limit=null&limit=null", "invalid_query"),
        ("/v1/gallery?limit=1&before=a&before=b", "invalid_query"),
        ("/v1/jobs/%FF", "invalid_path"),
        ("/v1/jobs/%FF/events", "invalid_path"),
        ("/v1/jobs/%C0/images/0", "invalid_path"),
        ("/ui/%FF/app.js", "invalid_path"),
    ];
    for (path, code) in cases {
        let body = expect_json(get(&server.at(path)).await, 400).await;
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    // The A1111 route answers in A1111's shape.
    let body = expect_json(
        get(&server.at("/sdapi/v1/progress?skip_current_image=perhaps")).await,
        400,
    )
    .await;
    assert_eq!(body["error"], "invalid_query", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("query string"));
    server.stop().await;
}
