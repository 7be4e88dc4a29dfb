//! GGUF UNets for SD 1.x/2.x and SDXL families: files written by `beeswax quantize` (from a
//! diffusers folder, in the original LDM names ComfyUI-GGUF and stable-diffusion.cpp use, or
//! from the UNet file, in diffusers names) load as the denoiser beside the model's folder, their
//! linear layers multiply quantized, and the images stay within a stated tolerance of the f32
//! run; LoRAs apply to the quantized layers; a GGUF of another architecture is an error.
//!
//! SDXL uses a miniature UNet made here (random, deterministic) 32 to 96 channels wide, with the
//! text encoders, VAE and scheduler of `tiny-sdxl`: the fixture UNet's 8 to 20 channels are too
//! narrow for any block of 32 (every layer would stay dense).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use beeswax::family::{self, Model};
use beeswax::lora::apply;
use beeswax::models::unet::{UNet2DConditionModel, UNetConfig};
use beeswax::pipeline::Generated;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::command::{Dir, TestCommand};
use common::images::max_pixel_diff;
use common::jobs::generate;
use common::lora::weighted;
use common::reference::{self, Case};
use common::{max_diff_and_std, model_dir};

/// `beeswax quantize IN OUT --type TYPE`.
fn quantize(input: &Path, out: &Path, ty: &str) {
    TestCommand::in_repo()
        .arg("quantize")
        .arg(input)
        .arg(out)
        .args(["--type", ty])
        .run();
}

/// The folder `dir` loaded in f32, its UNet from `gguf` when given.
fn load(dir: &Path, gguf: Option<&Path>) -> Model {
    let mut options = common::cpu_f32();
    options.denoiser = gguf.map(Path::to_path_buf);
    family::load(dir, None, &options).unwrap()
}

/// How many of the UNet's weights multiply quantized.
fn quantized_layers(model: &Model) -> usize {
    let unet = model.weights.get("unet").unwrap();
    unet.quantized.as_ref().map_or(0, |q| q.names.len())
}

fn image_tensor(image: &beeswax::image_out::RgbImage) -> Tensor {
    Tensor::from_vec(
        image.data.clone(),
        (image.height, image.width, 3),
        &Device::Cpu,
    )
    .unwrap()
}

/// Latents' max difference relative to their std, and the image's max difference in 1/255.
fn difference(what: &str, got: &Generated, want: &Generated) -> (f32, f32) {
    let (diff, std) = max_diff_and_std(&got.latents, &want.latents);
    let pixels = max_pixel_diff(&got.images[0], &image_tensor(&want.images[0]));
    eprintln!(
        "{what}: latents max diff {diff} ({:.4} of their std), image max {pixels}/255",
        diff / std
    );
    (diff / std, pixels)
}

/// The first tiny-sd LoRA case (kohya at 0.8, Euler, 6 steps, 64x64) and its job.
fn sd_case() -> Case {
    reference::cases("lora/tiny-sd").remove(0)
}

/// tiny-sd's UNet as Q8_0 (from the folder: LDM names) and as Q4_K (from the UNet file:
/// diffusers names; most rows fall back to Q5_0, 256-wide ones are Q4_K): both load quantized
/// and stay close to the f32 run, with and without a kohya LoRA on the quantized layers.
#[test]
fn sd_gguf_unets_are_close_to_f32_and_take_loras() {
    let dir = Dir::new("gguf-sd");
    let folder = model_dir("tiny-sd");
    let q8 = dir.join("tiny-sd-q8_0.gguf");
    quantize(&folder, &q8, "q8_0");
    let names = beeswax::gguf::GgufFile::open(&q8).unwrap();
    assert!(
        names.tensor("input_blocks.1.1.proj_in.weight").is_some(),
        "a folder is written in LDM names"
    );
    let q4 = dir.join("tiny-sd-q4_k.gguf");
    quantize(
        &folder.join("unet/diffusion_pytorch_model.safetensors"),
        &q4,
        "q4_k",
    );

    let case = sd_case();
    let job = case.text_job(Some(&case.tensors()["init_latents"]));
    let lora = weighted("tiny-sd", &case.loras[0].0, case.loras[0].1);
    let dense = load(&folder, None);
    assert_eq!(quantized_layers(&dense), 0);
    let want = generate(&dense, &job);
    let want_lora = generate(
        &apply(&dense, std::slice::from_ref(&lora)).unwrap().model,
        &job,
    );

    // Measured: Q8_0 0.014 of the latents' std and 2/255 (with the LoRA 0.003, 1/255); Q4_K
    // (mostly Q5_0) 0.020 and 1/255 (with the LoRA 0.021, 2/255).
    for (gguf, latents, pixels) in [(&q8, 0.03, 4.0), (&q4, 0.05, 6.0)] {
        let model = load(&folder, Some(gguf));
        assert_eq!(model.family.name, "sd1");
        let n = quantized_layers(&model);
        assert!(n >= 20, "{}: {n} quantized layers", gguf.display());
        let got = generate(&model, &job);
        let (l, p) = difference(&format!("{} vs f32", gguf.display()), &got, &want);
        assert!(l <= latents && p <= pixels, "{}", gguf.display());

        let applied = apply(&model, std::slice::from_ref(&lora)).unwrap();
        let report = &applied.reports[0];
        assert!(report.unet_layers >= 10, "{report:?}");
        assert!(report.unmatched.is_empty(), "{report:?}");
        let got = generate(&applied.model, &job);
        let what = format!("{} + LoRA vs f32 + LoRA", gguf.display());
        let (l, p) = difference(&what, &got, &want_lora);
        assert!(l <= latents && p <= pixels, "{what}");
        // The LoRA changed the quantized run as it changed the f32 one.
        let (moved, _) = difference("LoRA effect", &got, &want);
        assert!(
            moved > 2.0 * l,
            "the LoRA changed the quantized run by {moved} only"
        );
    }
}

/// Deterministic values of unit variance (a fixed LCG, uniform in ±√3).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * 3f32.sqrt()
        })
        .collect()
}

/// The weights of a UNet of `config`, random but deterministic: norm scales 1 + 0.2·r, biases
/// 0.1·r, weights r/√fan_in.
fn random_unet(config: &UNetConfig) -> HashMap<String, Tensor> {
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    UNet2DConditionModel::new(vb, config).unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let t = data[name].as_tensor();
            let dims = t.dims().to_vec();
            let r = values(t.elem_count(), i as u64 + 1);
            let v: Vec<f32> = if dims.len() == 1 && name.ends_with(".weight") {
                r.iter().map(|x| 1.0 + 0.2 * x).collect()
            } else if dims.len() == 1 {
                r.iter().map(|x| 0.1 * x).collect()
            } else {
                let fan_in: usize = dims[1..].iter().product();
                r.iter().map(|x| x / (fan_in as f32).sqrt()).collect()
            };
            (
                name.clone(),
                Tensor::from_vec(v, dims, &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

/// A copy of tiny-sdxl (other components linked) whose UNet is 32, 64 and 96 channels wide
/// (2, 4 and 3 heads), random.
fn wide_sdxl(dir: &Dir) -> PathBuf {
    let src = model_dir("tiny-sdxl");
    let out = dir.join("wide-sdxl");
    std::fs::create_dir_all(out.join("unet")).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "unet" {
            std::os::unix::fs::symlink(entry.path(), out.join(entry.file_name())).unwrap();
        }
    }
    let text = std::fs::read_to_string(src.join("unet/config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["block_out_channels"] = serde_json::json!([32, 64, 96]);
    config["attention_head_dim"] = serde_json::json!([2, 4, 3]);
    let text = serde_json::to_string_pretty(&config).unwrap();
    std::fs::write(out.join("unet/config.json"), &text).unwrap();
    let config: UNetConfig = serde_json::from_str(&text).unwrap();
    let weights = random_unet(&config);
    candle_core::safetensors::save(
        &weights,
        out.join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    out
}

/// An SDXL UNet as Q8_0 (LDM names, from the folder) is close to its f32 run; an SD GGUF on
/// the SDXL folder and the SDXL GGUF on an SD folder are errors naming both architectures.
#[test]
fn sdxl_gguf_unet_is_close_to_f32_and_architectures_are_checked() {
    let dir = Dir::new("gguf-sdxl");
    let folder = wide_sdxl(&dir);
    let q8 = dir.join("wide-sdxl-q8_0.gguf");
    quantize(&folder, &q8, "q8_0");
    let file = beeswax::gguf::GgufFile::open(&q8).unwrap();
    assert!(file.tensor("label_emb.0.0.weight").is_some());
    // Every tensor through the LDM names, without quantization: an F16 file.
    let f16 = dir.join("wide-sdxl-f16.gguf");
    quantize(&folder, &f16, "f16");

    let mut case = sd_case();
    case.guidance = 5.0;
    let job = case.text_job(None);
    let dense = load(&folder, None);
    let want = generate(&dense, &job);
    let exact = generate(&load(&folder, Some(&f16)), &job);
    // Measured: 0.0026 of the std, 1/255 (f16 rounding of the weights; a wrong name map would
    // be far off).
    let (l, p) = difference("SDXL F16 GGUF vs f32", &exact, &want);
    assert!(l <= 0.01 && p <= 2.0, "{l} of the std, {p}/255");
    let model = load(&folder, Some(&q8));
    assert_eq!(model.family.name, "sdxl");
    let n = quantized_layers(&model);
    assert!(n >= 20, "{n} quantized layers");
    let got = generate(&model, &job);
    // Measured: 0.069 of the latents' std, 6/255 (a random UNet amplifies the 8-bit
    // activations of candle's quantized matmul more than a trained one would).
    let (l, p) = difference("SDXL Q8_0 vs f32", &got, &want);
    assert!(l <= 0.1 && p <= 8.0, "{l} of the std, {p}/255");

    let mut options = common::cpu_f32();
    options.denoiser = Some(q8.clone());
    let err = family::load(&model_dir("tiny-sd"), None, &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sdxl") && err.contains("sd1"), "{err}");
    let sd = dir.join("sd.gguf");
    quantize(&model_dir("tiny-sd"), &sd, "q8_0");
    options.denoiser = Some(sd);
    let err = family::load(&folder, None, &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sdxl") && err.contains("sd1"), "{err}");
}

/// The CLI: `--model FILE.gguf --model-config DIR` generates with an SD family; without
/// `--model-config` the error says what the file holds; `beeswax inspect` reports it.
#[test]
fn the_cli_generates_with_an_sd_gguf_unet() {
    let dir = Dir::new("gguf-sd-cli");
    let q8 = dir.join("unet-q8_0.gguf");
    quantize(&model_dir("tiny-sd"), &q8, "q8_0");
    let out = dir.join("out.png");
    TestCommand::in_repo()
        .arg("generate")
        .arg("--model")
        .arg(&q8)
        .arg("--model-config")
        .arg(model_dir("tiny-sd"))
        .args([
            "--prompt",
            "a red fox",
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
        ])
        .arg("--output")
        .arg(&out)
        .run();
    assert!(out.is_file());
    // Without the folder: an error naming the flag and what the file holds.
    let err = TestCommand::in_repo()
        .args(["generate", "--prompt", "x", "--model"])
        .arg(&q8)
        .assert_err();
    assert!(
        err.contains("--model-config") && err.contains("`sd1`"),
        "{err}"
    );
    let report = TestCommand::in_repo().arg("inspect").arg(&q8).run();
    let report = String::from_utf8_lossy(&report.stdout).into_owned();
    for want in [
        "architecture: sd1 (general.architecture)",
        "Q8_0 ×",
        "denoiser prefix: none",
    ] {
        assert!(report.contains(want), "{want:?} not in {report}");
    }
}

/// A whole single-file checkpoint written as GGUF (stable-diffusion.cpp's layout: the UNet
/// under `model.diffusion_model.`, the VAE and text encoders beside it, all kept as stored
/// here since the miniature UNet's rows are too short for blocks) serves as the denoiser of
/// the folder, its other components ignored, and gives the checkpoint's run.
#[test]
fn a_whole_checkpoint_gguf_gives_the_checkpoints_run() {
    use beeswax::checkpoint::{self, CheckpointOptions};
    let dir = Dir::new("gguf-checkpoint");
    let file = common::fixture("single/tiny-sdxl.f16.safetensors");
    let gguf = dir.join("tiny-sdxl.gguf");
    quantize(&file, &gguf, "q8_0");
    let names = beeswax::gguf::GgufFile::open(&gguf).unwrap();
    assert!(names
        .tensor("model.diffusion_model.input_blocks.0.0.weight")
        .is_some());
    assert!(names
        .tensors()
        .iter()
        .any(|t| t.name.starts_with("first_stage_model.")));
    let folder = model_dir("tiny-sdxl");
    let single = CheckpointOptions {
        config_dir: Some(folder.clone()),
        ..Default::default()
    };
    let families = family::Families::builtin();
    let options = common::cpu_f32();
    let from_file = checkpoint::load::load(&file, &families, &single, &options).unwrap();
    let mut case = sd_case();
    case.guidance = 5.0;
    let job = case.text_job(None);
    let want = generate(&from_file, &job);
    // The folder's text encoders and VAE are the checkpoint's in f32 (the file holds them
    // rounded to f16): the runs differ by that rounding only.
    let model = load(&folder, Some(&gguf));
    assert_eq!(
        quantized_layers(&model),
        0,
        "the miniature rows are too short for blocks"
    );
    let got = generate(&model, &job);
    // Measured: 0.0003 of the std, 1/255.
    let (l, p) = difference("checkpoint GGUF vs checkpoint", &got, &want);
    assert!(l <= 2e-3 && p <= 1.0, "{l} of the std, {p}/255");
}
