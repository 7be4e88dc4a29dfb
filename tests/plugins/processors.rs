//! The example post- and pre-processors, `beeswax check`, and the per-step overhead benchmark.

use std::time::{Duration, Instant};

use beeswax::image_out::RgbImage;
use beeswax::noise::BatchNoise;
use beeswax::schedulers::Scheduler;
use common::images::{changed_pixels, Png};

use super::*;

#[test]
fn sharpen_postprocessor_sharpens_and_keeps_flat_images() {
    let plugin = committed("sharpen-wasm");
    let (w, h) = (16, 12);
    let edge = RgbImage {
        width: w,
        height: h,
        data: (0..w * h * 3)
            .map(|i| if (i / 3) % w < w / 2 { 60 } else { 180 })
            .collect(),
    };
    let out = plugin.postprocess(&edge).unwrap();
    assert_eq!((out.width, out.height, out.data.len()), (w, h, w * h * 3));
    // the edge gets steeper: darker on the dark side, brighter on the bright side
    let at = |img: &RgbImage, x: usize| img.data[(5 * w + x) * 3] as i32;
    assert!(
        at(&out, w / 2 - 1) < 60 && at(&out, w / 2) > 180,
        "{:?}",
        &out.data[..48]
    );
    let flat = RgbImage {
        width: w,
        height: h,
        data: vec![90; w * h * 3],
    };
    assert_eq!(plugin.postprocess(&flat).unwrap(), flat);

    let dir = Dir::new("sharpen");
    let generate = |out: &str| {
        let mut cmd = TestCommand::in_repo();
        cmd.args([
            "generate", "--pack", "tiny-sd", "--prompt", "a cat", "--steps", "2",
        ])
        .args(["--seed", "5", "--quiet", "--output"])
        .arg(dir.join(out));
        cmd
    };
    generate("a.png").run();
    generate("b.png").args(["--post", "sharpen-wasm"]).run();
    assert_ne!(dir.read("a.png"), dir.read("b.png"));
    TestCommand::in_repo()
        .args([
            "generate", "--pack", "tiny-sd", "--prompt", "x", "--post", "nope",
        ])
        .assert_fails_with(&[
            "post-processor nope: is not registered",
            "registered: sharpen-wasm",
        ]);
}

#[test]
fn the_mask_grow_preprocessor_widens_what_inpainting_repaints() {
    let dir = Dir::new("mask-grow");
    let fixtures = root().join("tests/fixtures/reference/img2img");
    let (init, mask) = (fixtures.join("init.png"), fixtures.join("mask.png"));
    let run = |name: &str, pre: &[&str]| {
        TestCommand::in_repo()
            .args([
                "generate", "--pack", "tiny-sd", "--prompt", "a fox", "--steps", "3",
            ])
            .args([
                "--strength",
                "1.0",
                "--mask-blur",
                "0",
                "--seed",
                "3",
                "--quiet",
            ])
            .arg("--init-image")
            .arg(&init)
            .arg("--mask")
            .arg(&mask)
            .arg("--output")
            .arg(dir.join(name))
            .args(pre)
            .run();
        Png::read(&dir.join(name)).image
    };
    let plain = run("plain.png", &[]);
    let grown = run("grown.png", &["--pre", "mask-grow-wasm"]);
    let picture = Png::read(&init).image;
    let mask = Png::read(&mask).image;
    let (w, h) = (picture.width, picture.height);
    let masked = |x: usize, y: usize| mask.data[(y * w + x) * 3] > 127;
    // The manifest grows the mask by 8 pixels: a square dilation.
    let near = |x: usize, y: usize| {
        (y.saturating_sub(8)..(y + 9).min(h))
            .any(|yy| (x.saturating_sub(8)..(x + 9).min(w)).any(|xx| masked(xx, yy)))
    };
    let outside = changed_pixels(&plain, &picture, 1, |x, y| !masked(x, y));
    assert_eq!(outside, 0, "without --pre, pixels outside the mask changed");
    let beyond = changed_pixels(&grown, &picture, 1, |x, y| !near(x, y));
    assert_eq!(beyond, 0, "pixels beyond the grown mask changed");
    let margin = |x, y| near(x, y) && !masked(x, y);
    let repainted_margin = changed_pixels(&grown, &picture, 8, margin);
    assert!(
        repainted_margin > 20,
        "the grown margin was not repainted ({repainted_margin} pixels)"
    );
}

// ---- beeswax check --------------------------------------------------------------------------

#[test]
fn check_passes_on_the_committed_manifests() {
    let out = TestCommand::in_repo()
        .args(["--manifests", "manifests", "check"])
        .stdout();
    assert!(out.starts_with("ok:"), "{out}");
}

#[test]
fn check_lists_wrong_hashes_and_missing_files() {
    let dir = Dir::new("check");
    let wasm = root().join("plugins/euler-wasm/euler-wasm.wasm");
    let zeros = "0".repeat(64);
    let missing = dir.join("missing.wasm");
    let text = entry("bad-hash", "wasm", &wasm, Some(&zeros), "scheduler", "")
        + &entry("gone", "wasm", &missing, None, "postprocessor", "");
    let manifest = dir.create("broken.toml", text);
    let mut check = TestCommand::in_repo();
    check.arg("--manifests").arg(dir.path()).arg("check");
    let out = check.output();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = manifest.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:5: `plugin.sha256` of plugin bad-hash does not match"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:11: `plugin.path` of plugin gone"))
            && err.contains("missing.wasm"),
        "{err}"
    );
    assert!(err.contains("2 problem(s) found"), "{err}");
}

// ---- benchmark --------------------------------------------------------------------------------

/// Deterministic stand-ins for a sample and a model output, [2, 4, 64, 64].
fn bench_inputs() -> (Tensor, Tensor) {
    let n = 2 * 4 * 64 * 64;
    let wave = |f: fn(f32) -> f32| {
        let values: Vec<f32> = (0..n).map(|i| f(i as f32)).collect();
        Tensor::from_vec(values, (2, 4, 64, 64), &Device::Cpu).unwrap()
    };
    (
        wave(|i| (i * 0.37).sin() * 10.0),
        wave(|i| (i * 0.11).cos()),
    )
}

/// Best of 5 runs of `steps` scale + step calls of the schedulers `make` builds: the time per
/// step and the final sample.
fn time_steps(make: &dyn Fn() -> Box<dyn Scheduler>, steps: usize) -> (Duration, Tensor) {
    let (sample0, eps) = bench_inputs();
    let mut best = Duration::MAX;
    let mut last = sample0.clone();
    for _ in 0..5 {
        let mut s = make();
        let mut noise = BatchNoise::new(0, 2);
        let mut x = sample0.clone();
        let start = Instant::now();
        for i in 0..steps {
            let scaled = s.scale_model_input(&x, i).unwrap();
            let out = ((&eps * 0.9).unwrap() + (&scaled * 0.01).unwrap()).unwrap();
            x = s.step(&out, i, &x, &mut noise).unwrap();
        }
        best = best.min(start.elapsed());
        last = x;
    }
    (best / steps as u32, last)
}

/// Per-step overhead of the plugin Eulers over the built-in on 64x64 latents, batch 2
/// (scale_model_input + step per step; the UNet is not run). Prints a table; results must also
/// equal the built-in's. Run: `cargo test --release -p beeswax --test plugins bench --
/// --ignored --nocapture`.
#[test]
#[ignore = "benchmark: per-step plugin overhead; needs: toolchain (cargo builds euler-native)"]
fn bench_per_step_overhead() {
    let config = tiny_config();
    let steps = 20;
    let wasm = Arc::new(committed("euler-wasm"));
    let dir = Dir::new("bench");
    let lib = build_euler_native();
    let native = Arc::new(
        load_one(
            dir.path(),
            &pinned_scheduler("euler-native", "native", &lib),
        )
        .unwrap(),
    );
    let (builtin, want) = time_steps(
        &|| {
            common::registry()
                .build_named("euler", None, &config, steps)
                .unwrap()
        },
        steps,
    );
    eprintln!(
        "per-step time, 64x64 latents, batch 2 ([2, 4, 64, 64] f32), best of 5 x {steps} steps:"
    );
    eprintln!(
        "  euler (built-in): {:>8.1} us",
        builtin.as_secs_f64() * 1e6
    );
    for (name, plugin) in [("euler-wasm", &wasm), ("euler-native", &native)] {
        let (t, got) = time_steps(&|| plugin.build_scheduler(&config, steps).unwrap(), steps);
        eprintln!(
            "  {name:<16}: {:>8.1} us  (overhead {:+.1} us/step)",
            t.as_secs_f64() * 1e6,
            (t.as_secs_f64() - builtin.as_secs_f64()) * 1e6
        );
        let diff = common::compare::max_abs_diff(&got, &want);
        assert_eq!(diff, 0.0, "{name} differs from the built-in");
    }
}
