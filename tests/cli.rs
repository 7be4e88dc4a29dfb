//! End-to-end tests of the `beeswax` binary: generation from packs, folders and the hub cache,
//! reproducibility, and every user error naming what was wrong.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture, root};

/// Runs the real binary in `dir` with `args` and the extra environment `env`.
fn beeswax_in(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_beeswax"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("BEESWAX_MANIFESTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the beeswax binary runs")
}

fn manifests() -> String {
    root().join("manifests").display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the command failed cleanly (non-zero, no panic) with all of `needles` in stderr.
fn assert_fails_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert!(!out.status.success(), "expected failure, stderr:\n{err}");
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

fn generate_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "generate",
        "--prompt",
        "a red fox",
        "--steps",
        "3",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    args
}

/// A copy of a fixture model in a temp folder, to break in a test.
fn model_copy(tmp: &Path, model: &str) -> PathBuf {
    let dest = tmp.join(model);
    copy_dir(&fixture(&format!("models/{model}")), &dest);
    dest
}

fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dest.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn same_seed_gives_byte_identical_png_with_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifests();
    for name in ["a.png", "b.png"] {
        let out = beeswax_in(
            tmp.path(),
            &[
                "--manifests",
                &m,
                "generate",
                "--pack",
                "tiny-sd",
                "--prompt",
                "a red fox",
                "--seed",
                "1",
                "--output",
                name,
            ],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let a = std::fs::read(tmp.path().join("a.png")).unwrap();
    assert_eq!(a, std::fs::read(tmp.path().join("b.png")).unwrap());
    let text = String::from_utf8_lossy(&a);
    assert!(text.contains("parameters"), "no parameters chunk");
    assert!(text.contains(
        "Steps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: tiny-sd"
    ));
}

#[test]
fn batch_writes_numbered_files_and_latents_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-sd2");
    let model = model.to_str().unwrap();
    let args = generate_args(&[
        "--model",
        model,
        "--batch",
        "2",
        "--seed",
        "5",
        "--scheduler",
        "DDIM",
        "--width",
        "48",
        "--height",
        "32",
        "--output",
        "pic.png",
        "--output-latents",
        "lat.safetensors",
    ]);
    let out = beeswax_in(tmp.path(), &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    for f in ["pic-1.png", "pic-2.png"] {
        assert!(tmp.path().join(f).exists(), "{f} missing");
    }
    let lat = candle_core::safetensors::load(
        tmp.path().join("lat.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    // tiny-sd2's VAE has 3 levels: a scale factor of 4.
    assert_eq!(lat["latents"].dims(), &[2, 4, 8, 12]);

    // Seeded noise written out and fed back through --init-latents gives the same image.
    let noise = beeswax::noise::seeded_noise(
        5,
        &[1, 4, 8, 12],
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let noise_file = tmp.path().join("noise.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents".to_string(), noise)]),
        &noise_file,
    )
    .unwrap();
    let args = generate_args(&[
        "--model",
        model,
        "--seed",
        "99",
        "--scheduler",
        "ddim",
        "--width",
        "48",
        "--height",
        "32",
        "--init-latents",
        noise_file.to_str().unwrap(),
        "--output",
        "again.png",
    ]);
    let out = beeswax_in(tmp.path(), &args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pixels = |f: &str| common::png_pixels(&tmp.path().join(f));
    // Equal up to float rounding: a batch of two may sum in another order than a batch of one.
    let max_diff = pixels("pic-1.png")
        .iter()
        .zip(pixels("again.png"))
        .map(|(a, b)| a.abs_diff(b))
        .max()
        .unwrap();
    assert!(
        max_diff <= 1,
        "image 1 of the batch and its rerun differ by {max_diff}/255"
    );
}

#[test]
fn hub_pack_resolves_from_a_hugging_face_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join("models--beeswax--tiny-sd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    copy_dir(
        &fixture("models/tiny-sd"),
        &repo.join("snapshots").join(commit),
    );
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("hubby.toml"),
        "[pack]\nname = \"hubby\"\nfamily = \"sd1\"\nrepo = \"beeswax/tiny-sd\"\nrevision = \"main\"\n",
    )
    .unwrap();
    let m = manifests.display().to_string();
    let out = beeswax_in(
        tmp.path(),
        &generate_args(&[
            "--manifests",
            &m,
            "--pack",
            "hubby",
            "--seed",
            "1",
            "--output",
            "hub.png",
        ]),
        &[("HF_HUB_CACHE", &cache)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp.path().join("hub.png").exists());

    // A repo that is not in the cache: offline by default, and the message says how to fix it.
    std::fs::write(
        manifests.join("absent.toml"),
        "[pack]\nname = \"absent\"\nfamily = \"sd1\"\nrepo = \"nobody/absent\"\n",
    )
    .unwrap();
    let out = beeswax_in(
        tmp.path(),
        &generate_args(&["--manifests", &m, "--pack", "absent"]),
        &[("HF_HUB_CACHE", &cache)],
    );
    assert_fails_with(&out, &["nobody/absent", "--allow-download"]);
}

#[test]
fn unknown_pack_lists_the_available_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifests();
    let out = beeswax_in(
        tmp.path(),
        &generate_args(&["--manifests", &m, "--pack", "nope"]),
        &[],
    );
    assert_fails_with(&out, &["nope", "tiny-sd"]);
}

#[test]
fn manifest_errors_name_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("broken.toml"),
        "[pack]\nname = \"broken\"\nfamily = \"sd1\"\npath = \"x\"\n\n[pack.defaults]\nsteps = \"many\"\n",
    )
    .unwrap();
    let m = dir.display().to_string();
    let out = beeswax_in(
        tmp.path(),
        &generate_args(&["--manifests", &m, "--pack", "broken"]),
        &[],
    );
    assert_fails_with(&out, &["broken.toml:7", "steps", "whole number"]);
}

#[test]
fn missing_model_file_is_named_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path(), "tiny-sd");
    let weights = model.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let out = beeswax_in(
        tmp.path(),
        &generate_args(&["--model", model.to_str().unwrap()]),
        &[],
    );
    assert_fails_with(&out, &[weights.to_str().unwrap()]);
}

#[test]
fn fp16_variant_loads_and_pickles_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path(), "tiny-sd");
    let unet = model.join("unet");
    std::fs::rename(
        unet.join("diffusion_pytorch_model.safetensors"),
        unet.join("diffusion_pytorch_model.fp16.safetensors"),
    )
    .unwrap();
    let m = model.to_str().unwrap();
    let out = beeswax_in(
        tmp.path(),
        &generate_args(&["--model", m, "--output", "v.png"]),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    std::fs::rename(
        unet.join("diffusion_pytorch_model.fp16.safetensors"),
        unet.join("diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let out = beeswax_in(tmp.path(), &generate_args(&["--model", m]), &[]);
    assert_fails_with(&out, &["diffusion_pytorch_model.bin", "safetensors"]);
}

#[test]
fn weight_of_wrong_shape_names_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path(), "tiny-sd");
    // Claim a wider model than the weights hold.
    let config = model.join("unet/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "\"block_out_channels\": [\n    32,",
        "\"block_out_channels\": [\n    40,",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let out = beeswax_in(
        tmp.path(),
        &generate_args(&["--model", model.to_str().unwrap()]),
        &[],
    );
    assert_fails_with(
        &out,
        &[
            "unet/diffusion_pytorch_model.safetensors",
            "down_blocks.0.resnets.0.time_emb_proj.weight",
            "[40, 160]",
            "[32, 128]",
        ],
    );
}

#[test]
fn out_of_range_values_state_the_allowed_range() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifests();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--steps", "0"], &["--steps", "between 1 and 1000"]),
        (&["--guidance", "250"], &["--guidance", "between 0 and 100"]),
        (&["--width", "60"], &["width", "60", "multiple of 8"]),
        (&["--batch", "0"], &["--batch", "between 1 and 64"]),
        (&["--clip-skip", "9"], &["clip skip", "between 1 and 3"]),
        (&["--scheduler", "eulr"], &["eulr", "euler"]),
        (&["--device", "tpu"], &["--device", "tpu"]),
        (&["--dtype", "f64"], &["--dtype", "f32, f16, bf16"]),
    ];
    for (flags, needles) in cases {
        let mut args = vec![
            "--manifests",
            &m,
            "generate",
            "--pack",
            "tiny-sd",
            "--prompt",
            "x",
            "--quiet",
        ];
        args.extend_from_slice(flags);
        let out = beeswax_in(tmp.path(), &args, &[]);
        assert_fails_with(&out, needles);
    }
}

#[test]
fn long_prompts_warn_with_the_dropped_words() {
    let tmp = tempfile::tempdir().unwrap();
    let m = manifests();
    let prompt = format!("{} zebra crossing", "red ".repeat(80));
    let out = beeswax_in(
        tmp.path(),
        &[
            "--manifests",
            &m,
            "generate",
            "--pack",
            "tiny-sd",
            "--steps",
            "2",
            "--quiet",
            "--prompt",
            &prompt,
            "--output",
            "long.png",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning") && err.contains("zebra crossing"),
        "{err}"
    );
}
