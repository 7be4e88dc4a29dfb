//! 16-bit weights in memory (`--weights-dtype`): a model stored in f16 keeps its weight
//! matrices and convolution filters in f16 on the CPU (widened inside the kernels, f32
//! compute), and its runs equal those of the same weights widened to f32 at load, and
//! diffusers' reference runs of the f32 model within the parity tolerances. The 16-bit
//! models are made at test time from the f32 fixtures (`common::half_copies`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;

use beeswax::family::{self, Model};
use beeswax::weights::WeightsDtype;
use candle_core::{DType, Tensor};
use common::half_copies::sixteen_bit_copy;
use common::images::{pixel_tensor_diffs, pixels};
use common::jobs::generate;
use common::reference::cases;
use common::{max_diff_and_std, model_dir, MODELS};

/// Latent tolerance (in units of their std) against runs of the f32 weights. Rounding the
/// miniatures' weights to f16 alone moves their latents by up to 3.5e-3 std (the f16
/// weights widened at load are as far): more than the parity tests' 1e-3, and not the doing of
/// the 16-bit kernels.
const ROUNDED: f32 = 5e-3;

fn load(dir: &Path, weights_dtype: WeightsDtype) -> Model {
    let mut options = common::cpu_f32();
    options.weights_dtype = weights_dtype;
    family::load(dir, None, &options).unwrap()
}

/// The dtype `model` holds tensor `key` of `component` in.
fn held(model: &Model, component: &str, key: &str) -> DType {
    let weights = model.weights.get(component).unwrap();
    // Text encoders are saved with or without transformers' `text_model.` prefix.
    let bare = key.strip_prefix("text_model.").unwrap_or(key);
    (weights
        .tensors
        .get(key)
        .or_else(|| weights.tensors.get(bare)))
    .unwrap_or_else(|| panic!("{component} has no {key}"))
    .dtype()
}

/// Asserts the held dtypes of a few kinds of tensors: the UNet's convolution filters and
/// attention projections and the text encoder's linear layers in `matrices`; biases, norms
/// and the position embedding table always f32 (the token table, gathered by row, follows the
/// matrices).
fn assert_held(model: &Model, matrices: DType) {
    for (component, key) in [
        ("unet", "conv_in.weight"),
        (
            "unet",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        ),
        ("unet", "time_embedding.linear_1.weight"),
        (
            "text_encoder",
            "text_model.encoder.layers.0.self_attn.q_proj.weight",
        ),
        ("text_encoder", "text_model.encoder.layers.0.mlp.fc1.weight"),
        // Gathered by row, widened per prompt.
        (
            "text_encoder",
            "text_model.embeddings.token_embedding.weight",
        ),
    ] {
        assert_eq!(held(model, component, key), matrices, "{component} {key}");
    }
    for (component, key) in [
        ("unet", "conv_in.bias"),
        ("unet", "down_blocks.0.attentions.0.norm.weight"),
        (
            "text_encoder",
            "text_model.embeddings.position_embedding.weight",
        ),
        ("text_encoder", "text_model.final_layer_norm.weight"),
    ] {
        assert_eq!(held(model, component, key), DType::F32, "{component} {key}");
    }
}

/// Largest latent difference in units of `want`'s std, and largest pixel difference.
fn differences(
    got: &beeswax::pipeline::Generated,
    want_latents: &Tensor,
    want: &[Tensor],
) -> (f32, f32) {
    let (diff, std) = max_diff_and_std(&got.latents, want_latents);
    let pixel = (got.images.iter().zip(want))
        .map(|(g, w)| pixel_tensor_diffs(&pixels(g), w).0)
        .fold(0f32, f32::max);
    (diff / std, pixel)
}

/// Runs every reference text-to-image case of `name` on `model` and on `widened` (the same
/// weights in f32): the runs agree within `same` (latents, in units of their std) and 1/255;
/// against diffusers' run of the f32 model, `model`'s run is within 2/255, and its latents
/// within `tolerance` and no further than `widened`'s plus `same` (what the rounding of the
/// weights to 16 bits costs, the kernels add nothing to).
fn assert_runs_match(name: &str, model: &Model, widened: &Model, same: f32, tolerance: f32) {
    let mut checked = 0;
    for case in cases(&format!("reference/{name}")) {
        let r = case.tensors();
        let job = case.text_job(Some(&r["init_latents"]));
        let got = generate(model, &job);
        let base = generate(widened, &job);
        let base_images: Vec<Tensor> = (base.images.iter())
            .map(|i| pixels(i).to_dtype(DType::U8).unwrap())
            .collect();
        let (latents, pixel) = differences(&got, &base.latents, &base_images);
        assert!(
            latents <= same && pixel <= 1.0,
            "{name} {}: 16-bit run vs widened: latents {latents:e} std, pixels {pixel}",
            case.file
        );
        let reference: Vec<Tensor> = (0..got.images.len())
            .map(|i| r["image"].get(i).unwrap())
            .collect();
        let (latents, pixel) = differences(&got, &r["latents"], &reference);
        let (rounded, _) = differences(&base, &r["latents"], &reference);
        assert!(
            latents <= tolerance && latents <= rounded + same && pixel <= 2.0,
            "{name} {}: 16-bit run vs diffusers (f32): latents {latents:e} std (widened: \
             {rounded:e}), pixels {pixel}",
            case.file
        );
        checked += 1;
    }
    assert!(checked > 0, "{name}: no reference case");
}

#[test]
fn an_f16_folder_stays_f16_and_matches_its_widened_self_and_diffusers() {
    for name in MODELS {
        let copy = sixteen_bit_copy(name, DType::F16);
        let kept = load(copy.path(), WeightsDtype::File);
        assert_held(&kept, DType::F16);
        let widened = load(copy.path(), WeightsDtype::F32);
        assert_held(&widened, DType::F32);
        assert_runs_match(name, &kept, &widened, 1e-4, ROUNDED);
    }
}

#[test]
fn an_f32_folder_is_narrowed_at_load_when_asked() {
    let name = MODELS[0];
    let dir = model_dir(name);
    let by_default = load(&dir, WeightsDtype::File);
    assert_held(&by_default, DType::F32);
    let narrowed = load(&dir, WeightsDtype::F16);
    assert_held(&narrowed, DType::F16);
    // Only the matrices and filters are rounded to 16 bits (biases and norms stay f32).
    assert_runs_match(name, &narrowed, &by_default, ROUNDED, ROUNDED);
}

#[test]
fn bf16_weights_are_widened_in_the_kernels_too() {
    let name = MODELS[0];
    let copy = sixteen_bit_copy(name, DType::BF16);
    let kept = load(copy.path(), WeightsDtype::File);
    assert_held(&kept, DType::BF16);
    let widened = load(copy.path(), WeightsDtype::F32);
    // bf16 keeps 8 bits of mantissa: its runs are further from the f32 reference.
    assert_runs_match(name, &kept, &widened, 1e-4, 0.05);
}
