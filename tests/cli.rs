//! End-to-end tests of the `beeswax` binary: generation from packs, folders and the hub cache,
//! reproducibility, and every user error naming what was wrong.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::command::{copy_dir, Dir, TestCommand};
use common::images::Png;
use common::{model_dir, root};

/// `beeswax --manifests <the committed manifests> generate --pack tiny-sd --quiet`, in `dir`.
fn tiny_sd(dir: &Dir) -> TestCommand {
    let mut cmd = dir.command();
    cmd.arg("--manifests")
        .arg(root().join("manifests"))
        .args(["generate", "--pack", "tiny-sd", "--quiet"]);
    cmd
}

/// `beeswax generate --prompt "a red fox" --steps 3 --quiet`, in `dir`.
fn generate(dir: &Dir) -> TestCommand {
    let mut cmd = dir.command();
    cmd.args([
        "generate",
        "--prompt",
        "a red fox",
        "--steps",
        "3",
        "--quiet",
    ]);
    cmd
}

#[test]
fn same_seed_gives_byte_identical_png_with_parameters() {
    let dir = Dir::new("same-seed");
    for name in ["a.png", "b.png"] {
        tiny_sd(&dir)
            .args(["--prompt", "a red fox", "--seed", "1", "--output", name])
            .run();
    }
    let a = dir.read("a.png");
    assert_eq!(a, dir.read("b.png"));
    let parameters = Png::decode(&a).parameters;
    assert!(
        parameters.contains(
            "Steps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 64x64, Model: tiny-sd"
        ),
        "{parameters}"
    );
}

#[test]
fn batch_writes_numbered_files_and_latents_round_trip() {
    let dir = Dir::new("batch");
    let model = model_dir("tiny-sd2");
    let size = ["--width", "48", "--height", "32"];
    generate(&dir)
        .arg("--model")
        .arg(&model)
        .args(["--batch", "2", "--seed", "5", "--scheduler", "DDIM"])
        .args(size)
        .args(["--output", "pic.png", "--output-latents", "lat.safetensors"])
        .run();
    for f in ["pic-1.png", "pic-2.png"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let lat =
        candle_core::safetensors::load(dir.join("lat.safetensors"), &candle_core::Device::Cpu)
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
    let noise_file = dir.join("noise.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("latents".to_string(), noise)]),
        &noise_file,
    )
    .unwrap();
    generate(&dir)
        .arg("--model")
        .arg(&model)
        .args(["--seed", "99", "--scheduler", "ddim"])
        .args(size)
        .arg("--init-latents")
        .arg(&noise_file)
        .args(["--output", "again.png"])
        .run();
    let pixels = |f: &str| Png::read(&dir.join(f)).image;
    let (first, again) = (pixels("pic-1.png"), pixels("again.png"));
    // Equal up to float rounding: a batch of two may sum in another order than a batch of one.
    let differ = common::images::changed_pixels(&first, &again, 1, |_, _| true);
    assert_eq!(
        differ, 0,
        "image 1 of the batch and its rerun differ by more than 1/255"
    );
}

#[test]
fn hub_pack_resolves_from_a_hugging_face_cache() {
    let dir = Dir::new("hub");
    let cache = dir.join("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    dir.create("hub/models--beeswax--tiny-sd/refs/main", commit);
    let snapshot = cache
        .join("models--beeswax--tiny-sd/snapshots")
        .join(commit);
    copy_dir(&model_dir("tiny-sd"), &snapshot);
    let manifests = dir.manifests(
        "manifests",
        &[(
            "hubby.toml",
            "[pack]\nname = \"hubby\"\nfamily = \"sd1\"\nrepo = \"beeswax/tiny-sd\"\nrevision = \"main\"\n",
        )],
    );
    generate(&dir)
        .arg("--manifests")
        .arg(&manifests)
        .args(["--pack", "hubby", "--seed", "1", "--output", "hub.png"])
        .env("HF_HUB_CACHE", &cache)
        .run();
    assert!(dir.join("hub.png").exists());

    // A repo that is not in the cache: offline by default, and the message says how to fix it.
    dir.create(
        "manifests/absent.toml",
        "[pack]\nname = \"absent\"\nfamily = \"sd1\"\nrepo = \"nobody/absent\"\n",
    );
    generate(&dir)
        .arg("--manifests")
        .arg(&manifests)
        .args(["--pack", "absent"])
        .env("HF_HUB_CACHE", &cache)
        .assert_fails_with(&["nobody/absent", "--allow-download"]);
}

#[test]
fn unknown_pack_lists_the_available_ones() {
    let dir = Dir::new("unknown-pack");
    generate(&dir)
        .arg("--manifests")
        .arg(root().join("manifests"))
        .args(["--pack", "nope"])
        .assert_fails_with(&["nope", "tiny-sd"]);
}

#[test]
fn manifest_errors_name_file_line_and_field() {
    let dir = Dir::new("manifest-errors");
    let manifests = dir.manifests(
        "manifests",
        &[(
            "broken.toml",
            "[pack]\nname = \"broken\"\nfamily = \"sd1\"\npath = \"x\"\n\n[pack.defaults]\nsteps = \"many\"\n",
        )],
    );
    generate(&dir)
        .arg("--manifests")
        .arg(&manifests)
        .args(["--pack", "broken"])
        .assert_fails_with(&["broken.toml:7", "steps", "whole number"]);
}

#[test]
fn missing_model_file_is_named_with_its_path() {
    let dir = Dir::new("missing-file");
    let model = dir.copy_model("tiny-sd", "tiny-sd");
    let weights = model.join("unet/diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    generate(&dir)
        .arg("--model")
        .arg(&model)
        .assert_fails_with(&[weights.to_str().unwrap()]);
}

#[test]
fn fp16_variant_loads_and_pickles_are_refused() {
    let dir = Dir::new("fp16");
    let model = dir.copy_model("tiny-sd", "tiny-sd");
    let unet = model.join("unet");
    let fp16 = unet.join("diffusion_pytorch_model.fp16.safetensors");
    std::fs::rename(unet.join("diffusion_pytorch_model.safetensors"), &fp16).unwrap();
    generate(&dir)
        .arg("--model")
        .arg(&model)
        .args(["--output", "v.png"])
        .run();

    std::fs::rename(&fp16, unet.join("diffusion_pytorch_model.bin")).unwrap();
    generate(&dir)
        .arg("--model")
        .arg(&model)
        .assert_fails_with(&["diffusion_pytorch_model.bin", "safetensors"]);
}

#[test]
fn weight_of_wrong_shape_names_tensor_and_both_shapes() {
    let dir = Dir::new("wrong-shape");
    let model = dir.copy_model("tiny-sd", "tiny-sd");
    // Claim a wider model than the weights hold.
    let config = model.join("unet/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "\"block_out_channels\": [\n    32,",
        "\"block_out_channels\": [\n    40,",
        1,
    );
    std::fs::write(&config, text).unwrap();
    generate(&dir)
        .arg("--model")
        .arg(&model)
        .assert_fails_with(&[
            "unet/diffusion_pytorch_model.safetensors",
            "down_blocks.0.resnets.0.time_emb_proj.weight",
            "[40, 160]",
            "[32, 128]",
        ]);
}

#[test]
fn out_of_range_values_state_the_allowed_range() {
    let dir = Dir::new("out-of-range");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--steps", "0"], &["--steps", "between 1 and 1000"]),
        (&["--guidance", "250"], &["--guidance", "between 0 and 100"]),
        (&["--width", "60"], &["width", "60", "multiple of 8"]),
        (&["--batch", "0"], &["--batch", "between 1 and 64"]),
        (&["--clip-skip", "9"], &["clip skip", "between 1 and 3"]),
        (&["--scheduler", "eulr"], &["eulr", "euler"]),
        (&["--device", "tpu"], &["--device", "tpu"]),
        (&["--dtype", "f64"], &["--dtype", "f32, f16, bf16"]),
        (
            &["--weights-dtype", "f8"],
            &["--weights-dtype", "f8", "f32, f16 or bf16"],
        ),
    ];
    for (flags, needles) in cases {
        tiny_sd(&dir)
            .args(["--prompt", "x"])
            .args(*flags)
            .assert_fails_with(needles);
    }
}

/// `plain` cuts a long prompt with a warning naming the dropped words; the default syntax
/// (a1111) encodes it in chunks, without a warning, and says so in no PNG parameter (it is
/// the default), while `plain` is recorded.
#[test]
fn long_prompts_warn_with_the_dropped_words() {
    let dir = Dir::new("long-prompt");
    let prompt = format!("{} zebra crossing", "red ".repeat(80));
    let plain = dir.path().join("plain.png");
    let err = tiny_sd(&dir)
        .args([
            "--steps",
            "2",
            "--prompt",
            &prompt,
            "--prompt-syntax",
            "plain",
        ])
        .args(["--output", plain.to_str().unwrap()])
        .stderr();
    assert!(
        err.contains("warning") && err.contains("zebra crossing"),
        "{err}"
    );
    let text = common::images::Png::read(&plain).parameters;
    assert!(text.contains("Prompt syntax: plain"), "{text}");
    let chunked = dir.path().join("a1111.png");
    let err = tiny_sd(&dir)
        .args(["--steps", "2", "--prompt", &prompt, "--pad-prompts"])
        .args(["--output", chunked.to_str().unwrap()])
        .stderr();
    assert!(!err.contains("zebra crossing"), "{err}");
    let text = common::images::Png::read(&chunked).parameters;
    assert!(
        text.starts_with(&prompt) && !text.contains("Prompt syntax"),
        "{text}"
    );
    tiny_sd(&dir)
        .args(["--prompt", "x", "--prompt-syntax", "nope"])
        .assert_fails_with(&["nope", "a1111, comfy or plain"]);
}

/// `beeswax prompt` prints the schedule of edits, the chunks with their weights and the
/// embeddings a prompt uses, and warns (on stderr) about a prompt that does not parse; an
/// embedding folder is read with `--embeddings`.
#[test]
fn prompt_command_prints_the_parse_and_warns() {
    let dir = Dir::new("prompt-command");
    let run = |args: &[&str]| {
        let mut cmd = dir.command();
        cmd.arg("--manifests")
            .arg(root().join("manifests"))
            .args(["prompt", "--pack", "tiny-sd"])
            .args(args);
        cmd.run()
    };
    let embeddings = common::fixture("prompt/embeddings");
    let out = run(&[
        "a [dog:cat:0.5] (fox:1.5) owlstyle [unclosed",
        "--steps",
        "8",
        "--embeddings",
        embeddings.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(stdout.contains("syntax: a1111"), "{stdout}");
    assert!(stdout.contains("steps 0..=4: text 1"), "{stdout}");
    assert!(stdout.contains("steps 5..=7: text 2"), "{stdout}");
    assert!(stdout.contains("fox_*1.5000"), "{stdout}");
    assert!(stdout.contains("<owlstyle:1v>") && stdout.contains("embedding owlstyle: 1 vector"));
    assert!(stderr.contains("warning"), "{stderr}");
    let out = run(&["a (fox:1.5)", "--prompt-syntax", "plain"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("syntax: plain") && !stdout.contains("*1.5"),
        "{stdout}"
    );
}
