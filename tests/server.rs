//! End-to-end tests of the HTTP service (`beeswax serve`): the server on a loopback port with
//! the `tiny-sd` pack (in this process, or the real binary), driven over HTTP: native jobs with
//! events, cancellation, a full queue, the bad-input table, operations routes, graceful
//! shutdown, counters up to date when a blocking route answers, fifty clients against a queue
//! of eight; and, ignored by default (`scripts/test` runs them), the official `openai` and
//! `webuiapi` Python clients and a load benchmark. The harness is in `common/server.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use beeswax::server::ServerConfig;
use common::images::{make_png, picture, Png};
use common::server::{
    b64, client, delete, expect_json, get, get_json, metrics, post, read_events, submit, unb64,
    wait_status, wait_until, ServeProcess, TestServer,
};
use serde_json::{json, Value};

fn config() -> ServerConfig {
    ServerConfig::default()
}

/// The first image of an A1111 answer, decoded.
fn a1111_image(body: &Value) -> Png {
    Png::decode(&unb64(body["images"][0].as_str().unwrap()))
}

/// The value of the metric line `name` (with its labels) in a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[path = "server/check_agrees.rs"]
mod check_agrees;
#[path = "server/clients.rs"]
mod clients;
#[path = "server/cross_site.rs"]
mod cross_site;
#[path = "server/durable.rs"]
mod durable;
#[path = "server/images.rs"]
mod images;
#[path = "server/jobs.rs"]
mod jobs;
#[path = "server/loras.rs"]
mod loras;
#[path = "server/memory.rs"]
mod memory;
#[path = "server/openapi.rs"]
mod openapi;
#[path = "server/ordering.rs"]
mod ordering;
#[path = "server/pictures.rs"]
mod pictures;
#[path = "server/plugin_work.rs"]
mod plugin_work;
#[path = "server/previews.rs"]
mod previews;
#[path = "server/prompts.rs"]
mod prompts;
#[path = "server/queue.rs"]
mod queue;
#[path = "server/validation.rs"]
mod validation;
