//! Non-finite values fail the job with a message naming the stage (issue 20, finding 7):
//! tiny-sd copies whose UNet or VAE decoder holds one NaN tensor, written at test time, make
//! NaN latents or NaN pixels; the job must fail, not write a black picture.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::path::Path;

use beeswax::family;
use beeswax::manifest::PackDefaults;
use beeswax::pipeline::{resolve, JobRequest};
use candle_core::{Device, Tensor};
use common::command::Dir;
use common::jobs::try_generate;

/// Copies the folder `from` into `to`, file by file.
fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of tiny-sd in `dir` whose `component`'s tensor `name` is all NaN.
fn tiny_sd_with_nan(dir: &Dir, component: &str, name: &str) -> std::path::PathBuf {
    let model = dir.join("tiny-sd-nan");
    copy_folder(&common::model_dir("tiny-sd"), &model);
    let file = model
        .join(component)
        .join("diffusion_pytorch_model.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let t = tensors
        .get(name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    let nan = (t.ones_like().unwrap() * f64::NAN).unwrap();
    tensors.insert(name.to_string(), nan);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    model
}

fn run_on(model_dir: &Path) -> beeswax::Error {
    let model = family::load(model_dir, None, &common::cpu_f32()).unwrap();
    let request = JobRequest {
        prompt: "a red fox".into(),
        steps: Some(2),
        seed: Some(7),
        width: Some(64),
        height: Some(64),
        ..Default::default()
    };
    let job = resolve(
        &model,
        &PackDefaults::default(),
        &common::registry(),
        request,
    )
    .unwrap();
    match try_generate(&model, &job) {
        Ok(_) => panic!("a model with NaN weights made a picture"),
        Err(e) => e,
    }
}

#[test]
fn nan_unet_weights_fail_after_denoising() {
    let dir = Dir::new("nan-unet");
    let model = tiny_sd_with_nan(&dir, "unet", "conv_out.weight");
    let e = run_on(&model);
    let message = e.to_string();
    assert!(
        matches!(
            e,
            beeswax::Error::NonFinite {
                stage: "denoising",
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains("after denoising"), "{message}");
}

#[test]
fn nan_vae_weights_fail_after_decoding() {
    let dir = Dir::new("nan-vae");
    let model = tiny_sd_with_nan(&dir, "vae", "decoder.conv_out.weight");
    let e = run_on(&model);
    let message = e.to_string();
    assert!(
        matches!(
            e,
            beeswax::Error::NonFinite {
                stage: "decoding",
                ..
            }
        ),
        "{message}"
    );
}
