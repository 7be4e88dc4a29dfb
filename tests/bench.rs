//! `beeswax bench` on the miniature models: the cold pipeline measurement reports every stage
//! and component and writes its PNG, UNet forwards (plain and as a guidance pair) and TAESD
//! decodes are timed, and the timing JSON that scripts/bench-table reads keeps its fields.
//! (Times are never compared with a bound.)

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::command::Dir;
use common::images::Png;
use common::model_dir;
use serde_json::Value;

/// The JSON line a bench command printed.
fn json(stdout: &str) -> serde_json::Map<String, Value> {
    let line = stdout.lines().last().unwrap();
    match serde_json::from_str(line).unwrap() {
        Value::Object(map) => map,
        other => panic!("not a JSON object: {other}"),
    }
}

fn seconds(map: &serde_json::Map<String, Value>, key: &str) -> f64 {
    let s = map
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no `{key}` in {map:?}"));
    assert!(s >= 0.0, "{key} = {s}");
    s
}

#[test]
fn cold_pipeline_reports_each_stage_and_component_and_writes_the_png() {
    let dir = Dir::new("bench-cold");
    let png = dir.join("cold.png");
    let out = dir
        .command()
        .arg("--vae")
        .arg(model_dir("taesd-mini"))
        .args(["bench", "pipeline", "--model"])
        .arg(model_dir("tiny-sd"))
        .args(["--steps", "2", "--guidance", "0", "--scheduler", "euler_a"])
        .args([
            "--width", "64", "--height", "64", "--cold", "--json", "--output",
        ])
        .arg(&png)
        .stdout();
    let m = json(&out);
    for component in ["tokenizer", "text_encoder", "unet", "vae", "tiny_vae"] {
        seconds(&m, &format!("load_{component}_s"));
    }
    let (startup, load, total) = (
        seconds(&m, "startup_s"),
        seconds(&m, "load_s"),
        seconds(&m, "total_s"),
    );
    let job = ["encode_s", "steps_s", "decode_s", "other_s", "save_s"]
        .iter()
        .map(|k| seconds(&m, k))
        .sum::<f64>();
    // Process start to PNG covers the startup, the load and the job (rounding: 4 decimals).
    assert!(total + 1e-3 >= startup + load + job, "{m:?}");
    assert!(m.get("peak_rss_mb").and_then(Value::as_f64).unwrap() > 0.0);
    let image = Png::read(&png);
    assert_eq!(image.size(), (64, 64));
    assert!(
        image.parameters.contains("Steps: 2"),
        "{}",
        image.parameters
    );
}

#[test]
fn warm_pipeline_reports_the_job_without_load_times() {
    let dir = Dir::new("bench-warm");
    let out = dir
        .command()
        .args(["bench", "pipeline", "--model"])
        .arg(model_dir("tiny-sd"))
        .args(["--steps", "1", "--width", "64", "--height", "64"])
        .args(["--repeat", "2", "--json", "--output"])
        .arg(dir.join("warm.png"))
        .stdout();
    let m = json(&out);
    assert!(
        !m.contains_key("load_s") && !m.contains_key("startup_s"),
        "{m:?}"
    );
    let job = ["encode_s", "steps_s", "decode_s", "other_s"]
        .iter()
        .map(|k| seconds(&m, k))
        .sum::<f64>();
    assert!((seconds(&m, "total_s") - job).abs() < 2e-3, "{m:?}");
    dir.command()
        .args(["bench", "pipeline", "--model"])
        .arg(model_dir("tiny-sd"))
        .args(["--cold", "--repeat", "2"])
        .assert_fails_with(&["--repeat", "--cold"]);
}

#[test]
fn tiny_autoencoder_decode_is_timed() {
    let out = Dir::new("bench-tiny")
        .command()
        .args(["bench", "vae", "--tiny"])
        .arg(model_dir("taesd-mini"))
        .args(["--width", "64", "--height", "48", "--json"])
        .stdout();
    let m = json(&out);
    seconds(&m, "min_s");
    seconds(&m, "median_s");
}

#[test]
fn unet_forward_is_timed_plain_and_as_a_guidance_pair() {
    let config = model_dir("tiny-sd").join("unet/config.json");
    let dir = Dir::new("bench-unet");
    for pair in [false, true] {
        let mut cmd = dir.command();
        cmd.args(["bench", "unet", "--config"])
            .arg(&config)
            .args(["--width", "64", "--height", "48", "--iters", "1", "--json"]);
        if pair {
            cmd.arg("--guidance-pair");
        }
        let m = json(&cmd.stdout());
        seconds(&m, "min_s");
        seconds(&m, "median_s");
    }
}
