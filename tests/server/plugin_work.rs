//! Plugin code never runs on the async runtime (issue 20, finding 4): validating a request
//! that names a plugin's sampler does not call the plugin, so a plugin that loops cannot stall
//! the handlers and its deadline is not reported as an unknown sampler; the job fails on its
//! worker with a message naming the plugin, and the blocking A1111 route answers 5xx.

use common::command::Dir;
use common::plugins::{hostile_wat, scheduler_entry};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_plugin_sampler_fails_its_job_not_the_request() {
    let dir = Dir::new("looping-plugin");
    let wasm = hostile_wat(0x10000, "(loop $l (br $l)) (i32.const 0)");
    let path = dir.create("looping.wasm", &wasm);
    let manifest = scheduler_entry("looping", &path, "timeout_ms = 500");
    let server = TestServer::start_with(config(), &[("looping.toml", &manifest)]).await;

    // Accepted: the name is known and validation does not run the plugin.
    let id = submit(
        &server.url,
        json!({"prompt": "m", "steps": 2, "scheduler": "looping"}),
    )
    .await;
    let job = wait_status(&server.url, &id, "failed").await;
    let error = job["error"].to_string();
    assert!(
        error.contains("plugin looping") && error.contains("deadline of 500 ms"),
        "{error}"
    );
    // The blocking A1111 route: a server error naming the plugin, not a 400.
    let r = post(
        &server.at("/sdapi/v1/txt2img"),
        json!({"prompt": "m", "steps": 2, "sampler_name": "looping"}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 500);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["detail"].to_string().contains("plugin looping"),
        "{body}"
    );
    // An unknown sampler is still refused at validation, and the server is healthy.
    let r = post(
        &server.at("/v1/jobs"),
        json!({"prompt": "m", "scheduler": "loopin"}),
    )
    .await;
    expect_json(r, 400).await;
    assert_eq!(get_json(&server.at("/health")).await["status"], "ok");
    server.stop().await;
}
