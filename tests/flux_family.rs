//! FLUX.1 as a family, through the engine's real pipeline (`pipeline::run` on a model from
//! `family::load`): the diffusers FluxPipeline / FluxImg2ImgPipeline references of
//! `make_flux_fixtures.py` (square and 2:1, flow Euler and flow DPM++ 2M, image to image, a
//! kohya and a PEFT LoRA), GGUF transformers (Q8_0 made by `beeswax quantize`), and bad input.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use beeswax::family::{self, Model};
use beeswax::lora::{self, LoraFile, WeightedLora};
use beeswax::pipeline::{Input, Job};
use common::command::{Dir, TestCommand};
use common::flux_files::{bfl_file, comfy_components, config_only};
use common::images::max_pixel_diff;
use common::jobs::{generate, try_generate};
use common::{assert_close_rel_std, fixture, flux_cases, max_diff_and_std, model_dir, FluxCase};

/// The miniature FLUX model `name` with `max_sequence_length` T5 tokens, its family detected.
fn flux_model(name: &str, max_sequence_length: usize) -> Model {
    let mut options = common::cpu_f32();
    options.max_sequence_length = Some(max_sequence_length);
    family::load(&model_dir(name), None, &options).unwrap()
}

/// The model of `case`, with the case's LoRA merged in.
fn case_model(case: &FluxCase) -> Model {
    let model = flux_model(&case.model_name(), case.max_sequence_length);
    let want = format!("flux-{}", case.model);
    assert_eq!(model.family.name, want, "detected family");
    match &case.lora {
        None => model,
        Some(file) => {
            let lora = WeightedLora {
                name: file.clone(),
                file: Arc::new(LoraFile::read(&fixture(file)).unwrap()),
                weight: case.lora_scale.unwrap_or(1.0),
            };
            let applied = lora::apply(&model, &[lora]).unwrap();
            let report = &applied.reports[0];
            assert!(report.unet_layers >= 6, "{}: {report:?}", case.name);
            assert!(report.unmatched.is_empty(), "{}: {report:?}", case.name);
            applied.model
        }
    }
}

#[test]
fn flux_jobs_match_diffusers_pipelines() {
    let cases = flux_cases();
    assert_eq!(cases.len(), 7);
    for case in &cases {
        let model = case_model(case);
        let r = case.tensors();
        let out = generate(&model, &case.job(&r));
        assert_close_rel_std(
            &format!("{} final latents", case.name),
            &out.latents,
            &r["latents"],
            2e-3,
        );
        let worst = max_pixel_diff(&out.images[0], &r["image"]);
        assert!(worst <= 2.0, "{}: image differs by {worst}/255", case.name);
        eprintln!("{}: image within {worst}/255", case.name);
        // Schnell's 16-token limit cuts the prompt, with a warning.
        let truncated = out.warnings.iter().any(|w| w.contains("T5 tokens"));
        assert_eq!(truncated, case.model == "schnell", "{:?}", out.warnings);
    }
}

fn euler_case() -> (FluxCase, HashMap<String, candle_core::Tensor>) {
    let case = flux_cases()
        .into_iter()
        .find(|c| c.name == "dev_euler_64x64")
        .unwrap();
    let r = case.tensors();
    (case, r)
}

#[test]
fn flow_heun_runs_and_diffusion_samplers_are_refused() {
    let (case, r) = euler_case();
    let model = case_model(&case);
    let mut job = case.job(&r);
    job.sampler = common::registry().sampler("Heun", None).unwrap();
    let heun = generate(&model, &job);
    let euler = generate(&model, &case.job(&r));
    let (diff, std) = max_diff_and_std(&heun.latents, &euler.latents);
    assert!(
        diff.is_finite() && diff < 2.0 * std,
        "heun {diff} vs std {std}"
    );

    job.sampler = common::registry().sampler("DDIM", None).unwrap();
    let err = try_generate(&model, &job).unwrap_err().to_string();
    for needle in ["ddim", "flow models", "euler (Euler)", "dpmpp_2m"] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

#[test]
fn negative_prompt_on_dev_warns_unless_true_cfg() {
    let (case, r) = euler_case();
    let model = case_model(&case);
    let mut job = case.job(&r);
    job.settings.negative_prompt = "blurry".into();
    let plain = generate(&model, &job);
    assert!(
        plain
            .warnings
            .iter()
            .any(|w| w.contains("negative prompt is ignored") && w.contains("--true-cfg")),
        "{:?}",
        plain.warnings
    );
    assert_close_rel_std("negative ignored", &plain.latents, &r["latents"], 2e-3);

    job.settings.true_cfg = Some(2.0);
    let cfg = generate(&model, &job);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let (diff, std) = max_diff_and_std(&cfg.latents, &plain.latents);
    assert!(diff > 1e-3 * std, "true CFG changed nothing ({diff})");
}

#[test]
fn sizes_must_be_multiples_of_16() {
    let (case, r) = euler_case();
    let model = case_model(&case);
    let mut job: Job = case.job(&r);
    job.settings.width = 72;
    job.input = Input::Text { init_latents: None };
    let err = try_generate(&model, &job).unwrap_err().to_string();
    assert!(
        err.contains("width") && err.contains("multiple of 16"),
        "{err}"
    );
    // Starting noise must be the unpacked latents.
    job.settings.width = 64;
    job.input = Input::Text {
        init_latents: Some(r["init_latents"].reshape((1, 64, 4, 4)).unwrap()),
    };
    let err = try_generate(&model, &job).unwrap_err().to_string();
    assert!(err.contains("[1, 16, 8, 8]"), "{err}");
}

#[test]
fn a_flux_folder_without_t5_is_an_error() {
    let dir = Dir::new("flux-no-t5");
    let copy = dir.copy_model("tiny-flux-dev", "model");
    std::fs::remove_dir_all(copy.join("text_encoder_2")).unwrap();
    let err = family::load(&copy, None, &common::cpu_f32())
        .unwrap_err()
        .to_string();
    assert!(err.contains("text_encoder_2"), "{err}");
}

/// `beeswax quantize IN OUT --type TYPE` (and `--arch`).
fn quantize(input: &std::path::Path, out: &std::path::Path, ty: &str, arch: Option<&str>) {
    let mut cmd = TestCommand::in_repo();
    cmd.arg("quantize").arg(input).arg(out).args(["--type", ty]);
    if let Some(arch) = arch {
        cmd.args(["--arch", arch]);
    }
    cmd.run();
}

/// A Q8_0 transformer (quantized from the BFL single file by `beeswax quantize`) gives nearly
/// the images of the same single file in f32. Measured on the 64x64 dev run: see the
/// assertion's bounds and the printed values.
#[test]
fn q8_0_gguf_transformer_is_close_to_f32() {
    let dir = Dir::new("flux-q8");
    let bfl = fixture("models/tiny-flux-dev-bfl.safetensors");
    let gguf = dir.join("tiny-flux-dev-q8_0.gguf");
    quantize(&bfl, &gguf, "q8_0", None);
    let (case, r) = euler_case();
    let job = case.job(&r);
    let run = |denoiser: &std::path::Path| {
        let mut options = common::cpu_f32();
        options.max_sequence_length = Some(case.max_sequence_length);
        options.denoiser = Some(denoiser.to_path_buf());
        let model = family::load(&model_dir("tiny-flux-dev"), None, &options).unwrap();
        // Quantized linear weights are multiplied as blocks, never kept dense.
        let dense = &model.weights.get("transformer").unwrap().tensors;
        let quantized = !dense.contains_key("transformer_blocks.0.attn.to_q.weight");
        assert_eq!(
            quantized,
            denoiser == gguf.as_path(),
            "{}",
            denoiser.display()
        );
        generate(&model, &job)
    };
    let dense = run(&bfl);
    let quantized = run(&gguf);
    let (diff, std) = max_diff_and_std(&quantized.latents, &dense.latents);
    let pixels = max_pixel_diff(&quantized.images[0], &image_tensor(&dense.images[0]));
    eprintln!(
        "Q8_0 vs f32: latents max diff {diff} ({:.4} of their std), image max {pixels}/255",
        diff / std
    );
    assert!(diff <= 0.02 * std, "latents differ by {diff} (std {std})");
    assert!(pixels <= 4.0, "image differs by {pixels}/255");
}

fn image_tensor(image: &beeswax::image_out::RgbImage) -> candle_core::Tensor {
    candle_core::Tensor::from_vec(
        image.data.clone(),
        (image.height, image.width, 3),
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

#[test]
fn a_gguf_of_another_architecture_is_an_error() {
    let dir = Dir::new("flux-wrong-gguf");
    let unet = model_dir("tiny-sd").join("unet/diffusion_pytorch_model.safetensors");
    let gguf = dir.join("sd-unet.gguf");
    quantize(&unet, &gguf, "q8_0", Some("sd1"));
    let mut options = common::cpu_f32();
    options.denoiser = Some(gguf);
    let err = family::load(&model_dir("tiny-flux-dev"), None, &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sd1") && err.contains("flux"), "{err}");
}

/// The three HTTP APIs on a FLUX-dev pack (with the miniature model's 32-token T5 limit left
/// at the family's 512: longer sequences work, they cost time only).
#[tokio::test(flavor = "multi_thread")]
async fn the_http_apis_serve_flux() {
    use common::images::Png;
    use common::server::{expect_json, get, post, submit, unb64, wait_status, TestServer};
    use serde_json::json;

    let pack = format!(
        "[pack]\nname = \"tiny-flux\"\nfamily = \"flux-dev\"\npath = {}\n\n\
         [pack.defaults]\nsteps = 2\nwidth = 64\nheight = 32\n",
        common::command::toml_path(&model_dir("tiny-flux-dev"))
    );
    let server = TestServer::start_with(Default::default(), &[("flux.toml", &pack)]).await;

    let id = submit(
        &server.url,
        json!({"pipeline": "tiny-flux", "prompt": "a fox", "seed": 1, "guidance": 3.5,
               "negative_prompt": "blurry", "true_cfg": 2.0, "preview_every": 1}),
    )
    .await;
    let job = wait_status(&server.url, &id, "completed").await;
    assert_eq!(job["parameters"]["steps"], 2, "{job}");
    let png = get(&server.at(&format!("/v1/jobs/{id}/images/0"))).await;
    assert_eq!(Png::decode(&png.bytes().await.unwrap()).size(), (64, 32));

    let body = json!({"model": "tiny-flux", "prompt": "a fox", "size": "64x64",
                      "response_format": "b64_json"});
    let body = expect_json(post(&server.at("/v1/images/generations"), body).await, 200).await;
    let png = unb64(body["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!(Png::decode(&png).size(), (64, 64));

    let body = json!({"prompt": "a fox", "steps": 2, "width": 32, "height": 48,
                      "sampler_name": "DPM++ 2M",
                      "override_settings": {"sd_model_checkpoint": "tiny-flux"}});
    let body = expect_json(post(&server.at("/sdapi/v1/txt2img"), body).await, 200).await;
    let png = unb64(body["images"][0].as_str().unwrap());
    assert_eq!(Png::decode(&png).size(), (32, 48));

    // A size FLUX cannot pack is refused by name.
    let body = json!({"prompt": "a fox", "steps": 2, "width": 40, "height": 48,
                      "override_settings": {"sd_model_checkpoint": "tiny-flux"}});
    let response = post(&server.at("/sdapi/v1/txt2img"), body).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("multiple of 16"), "{text}");
    server.stop().await;
}

/// `beeswax generate` on a FLUX folder, and on a GGUF transformer with `--model-config`.
#[test]
fn the_cli_generates_with_flux_folders_and_gguf_files() {
    let dir = Dir::new("flux-cli");
    let out = dir.join("fox.png");
    let stderr = dir
        .command()
        .args([
            "--max-sequence-length",
            "32",
            "--low-memory",
            "generate",
            "--model",
        ])
        .arg(model_dir("tiny-flux-dev"))
        .args(["--prompt", "a red fox", "--negative-prompt", "blurry"])
        .args([
            "--steps", "2", "--width", "64", "--height", "32", "--seed", "3",
        ])
        .arg("--output")
        .arg(&out)
        .stderr();
    assert!(stderr.contains("negative prompt is ignored"), "{stderr}");
    assert_eq!(common::images::Png::read(&out).size(), (64, 32));

    let gguf = dir.join("transformer-q8_0.gguf");
    quantize(
        &fixture("models/tiny-flux-dev-bfl.safetensors"),
        &gguf,
        "q8_0",
        None,
    );
    dir.command()
        .args(["generate", "--model"])
        .arg(&gguf)
        .arg("--model-config")
        .arg(model_dir("tiny-flux-dev"))
        .args(["--prompt", "a red fox", "--steps", "2", "--width", "32"])
        .args(["--height", "32", "--scheduler", "dpmpp_2m", "--output"])
        .arg(dir.join("q8.png"))
        .run();
    let err = dir
        .command()
        .args(["generate", "--model"])
        .arg(&gguf)
        .args(["--prompt", "x", "--output"])
        .arg(dir.join("no.png"))
        .assert_err();
    assert!(err.contains("--model-config"), "{err}");
}

/// `low_memory` (CLIP and T5 read for each encoding, the VAE for each decoding) gives the
/// same run, bit for bit, as the model kept in memory.
#[test]
fn low_memory_gives_the_same_images() {
    let (case, r) = euler_case();
    let mut options = common::cpu_f32();
    options.max_sequence_length = Some(case.max_sequence_length);
    options.low_memory = true;
    let model = family::load(&model_dir("tiny-flux-dev"), None, &options).unwrap();
    assert!(model.vae.is_on_demand());
    assert!(model.weights.get("text_encoder").is_none());
    let out = generate(&model, &case.job(&r));
    assert_close_rel_std("low memory latents", &out.latents, &r["latents"], 2e-3);
    let kept = generate(
        &flux_model("tiny-flux-dev", case.max_sequence_length),
        &case.job(&r),
    );
    assert_eq!(
        common::compare::max_abs_diff(&out.latents, &kept.latents),
        0.0
    );
    assert_eq!(out.images[0].data, kept.images[0].data);
    // A GGUF transformer is built after the encoding (deferred): the same run again.
    let dir = Dir::new("flux-low-memory");
    let gguf = dir.join("q8_0.gguf");
    quantize(
        &fixture("models/tiny-flux-dev-bfl.safetensors"),
        &gguf,
        "q8_0",
        None,
    );
    let runs: Vec<_> = [false, true]
        .into_iter()
        .map(|low_memory| {
            options.low_memory = low_memory;
            options.denoiser = Some(gguf.clone());
            let model = family::load(&model_dir("tiny-flux-dev"), None, &options).unwrap();
            generate(&model, &case.job(&r))
        })
        .collect();
    let diff = common::compare::max_abs_diff(&runs[0].latents, &runs[1].latents);
    assert_eq!(diff, 0.0);
}

/// The kohya (dev) and PEFT (schnell) LoRA fixtures applied to Q8_0 transformers (quantized
/// from BFL single files by `beeswax quantize`): the LoRAs change the quantized layers (merged
/// into dequantized copies) and the images stay within the Q8_0 tolerance of the f32 + LoRA
/// runs.
#[test]
fn loras_apply_to_q8_0_transformers() {
    let dir = Dir::new("flux-q8-lora");
    for case in flux_cases().iter().filter(|c| c.lora.is_some()) {
        let name = case.model_name();
        let bfl = dir.join(format!("{name}-bfl.safetensors"));
        bfl_file(&name, "", HashMap::new(), &bfl);
        let gguf = dir.join(format!("{name}-q8_0.gguf"));
        quantize(&bfl, &gguf, "q8_0", None);
        let r = case.tensors();
        let want = generate(&case_model(case), &case.job(&r));
        let mut options = common::cpu_f32();
        options.max_sequence_length = Some(case.max_sequence_length);
        options.denoiser = Some(gguf.clone());
        let model = family::load(&model_dir(&name), None, &options).unwrap();
        let lora = WeightedLora {
            name: "lora".into(),
            file: Arc::new(LoraFile::read(&fixture(case.lora.as_ref().unwrap())).unwrap()),
            weight: case.lora_scale.unwrap_or(1.0),
        };
        let applied = lora::apply(&model, &[lora]).unwrap();
        let report = &applied.reports[0];
        assert!(report.unet_layers >= 6, "{}: {report:?}", case.name);
        assert!(report.unmatched.is_empty(), "{}: {report:?}", case.name);
        let got = generate(&applied.model, &case.job(&r));
        let (diff, std) = max_diff_and_std(&got.latents, &want.latents);
        let pixels = max_pixel_diff(&got.images[0], &image_tensor(&want.images[0]));
        eprintln!(
            "{}: Q8_0 + LoRA vs f32 + LoRA: latents {:.4} of their std, image {pixels}/255",
            case.name,
            diff / std
        );
        assert!(
            diff <= 0.02 * std,
            "{}: latents differ by {diff}",
            case.name
        );
        assert!(
            pixels <= 4.0,
            "{}: image differs by {pixels}/255",
            case.name
        );
        // Without the LoRA the run is far from the f32 + LoRA one: the LoRA took effect.
        let base = generate(&model, &case.job(&r));
        let (moved, _) = max_diff_and_std(&base.latents, &want.latents);
        assert!(
            moved > 10.0 * diff,
            "{}: the LoRA moved latents by {moved}",
            case.name
        );
    }
}

/// BFL transformers under ComfyUI's `model.diffusion_model.` prefix, alone (the rest from the
/// `--model-config` folder) or in an all-in-one checkpoint (everything from the file: the
/// config folder holds no weights), are detected as flux-dev or flux-schnell and give the
/// folder's images.
#[test]
fn comfy_flux_single_files_are_detected() {
    use beeswax::checkpoint::{self, CheckpointOptions};
    let dir = Dir::new("flux-comfy");
    for (name, family) in [
        ("tiny-flux-dev", "flux-dev"),
        ("tiny-flux-schnell", "flux-schnell"),
    ] {
        let alone = dir.join(format!("{name}-comfy.safetensors"));
        bfl_file(name, "model.diffusion_model.", HashMap::new(), &alone);
        let all = dir.join(format!("{name}-all-in-one.safetensors"));
        bfl_file(name, "model.diffusion_model.", comfy_components(name), &all);
        let case = flux_cases()
            .into_iter()
            .find(|c| c.model_name() == name && c.lora.is_none())
            .unwrap();
        let mut options = common::cpu_f32();
        options.max_sequence_length = Some(case.max_sequence_length);
        let r = case.tensors();
        let job = case.job(&r);
        let want = generate(&flux_model(name, case.max_sequence_length), &job);
        let families = family::Families::builtin();
        for (file, configs) in [(&alone, model_dir(name)), (&all, config_only(name, &dir))] {
            let single = CheckpointOptions {
                config_dir: Some(configs),
                ..Default::default()
            };
            let model = checkpoint::load::load(file, &families, &single, &options).unwrap();
            assert_eq!(model.family.name, family, "{}", file.display());
            let got = generate(&model, &job);
            let (diff, _) = max_diff_and_std(&got.latents, &want.latents);
            assert!(diff <= 1e-5, "{}: latents differ by {diff}", file.display());
            let pixels = max_pixel_diff(&got.images[0], &image_tensor(&want.images[0]));
            assert!(
                pixels <= 1.0,
                "{}: image differs by {pixels}/255",
                file.display()
            );
        }
    }
}
