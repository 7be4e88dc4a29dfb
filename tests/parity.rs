//! Parity with diffusers, the reference: each network on its own (CLIP hidden states, one UNet
//! call, VAE decode and encode) and whole text-to-image runs from the same starting latents.
//! The references come from `tests/fixtures/make_fixtures.py`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;

use beeswax::models::clip::{ClipTextConfig, ClipTextModel};
use beeswax::models::config_file::read_json;
use beeswax::models::unet::{UNet2DConditionModel, UNetConfig};
use beeswax::models::vae::{Decoder, Encoder, VaeConfig};
use beeswax::noise::TorchGenerator;
use beeswax::weights::WeightSource;
use candle_core::{DType, Device, Tensor};
use common::compare::max_abs_diff;
use common::conformance::Run;
use common::images::assert_run_matches;
use common::jobs::generate;
use common::reference::cases;
use common::{assert_close_rel_std, fixture, load, MODELS};

/// Tolerance for single network calls, relative to the reference's std.
const COMPONENT_TOL: f32 = 1e-4;

fn model_file(model: &str, rel: &str) -> std::path::PathBuf {
    fixture(&format!("models/{model}/{rel}"))
}

fn weights(path: &Path) -> candle_nn::VarBuilder<'static> {
    WeightSource::open(path)
        .unwrap()
        .var_builder(DType::F32, &Device::Cpu)
}

#[test]
fn clip_hidden_states_match_transformers() {
    for model in MODELS {
        let config: ClipTextConfig =
            read_json(&model_file(model, "text_encoder/config.json")).unwrap();
        let clip = ClipTextModel::new(
            weights(&model_file(model, "text_encoder/model.safetensors")),
            &config,
        )
        .unwrap();
        let r = load(&format!("reference/{model}/clip.safetensors"));
        let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
        let last = clip.forward(&ids, clip.num_layers()).unwrap();
        assert_close_rel_std(
            &format!("{model} clip last"),
            &last,
            &r["last_hidden_state"],
            COMPONENT_TOL,
        );
        let skip = clip.forward(&ids, clip.num_layers() - 1).unwrap();
        assert_close_rel_std(
            &format!("{model} clip skip"),
            &skip,
            &r["penultimate_normed"],
            COMPONENT_TOL,
        );
    }
}

/// The miniature model's UNet and its config.
fn unet(model: &str) -> (UNetConfig, UNet2DConditionModel) {
    let config: UNetConfig = read_json(&model_file(model, "unet/config.json")).unwrap();
    let unet = UNet2DConditionModel::new(
        weights(&model_file(
            model,
            "unet/diffusion_pytorch_model.safetensors",
        )),
        &config,
    )
    .unwrap();
    (config, unet)
}

#[test]
fn one_unet_call_matches_diffusers() {
    for model in MODELS {
        let (_, unet) = unet(model);
        let r = load(&format!("reference/{model}/unet.safetensors"));
        for case in ["t1", "t2"] {
            let t = r[&format!("{case}_timestep")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0] as f64;
            let out = unet
                .forward(&r["sample"], t, &r["encoder_hidden_states"], None)
                .unwrap();
            assert_close_rel_std(
                &format!("{model} unet t={t}"),
                &out,
                &r[&format!("{case}_out")],
                COMPONENT_TOL,
            );
        }
    }
}

/// A deterministic `shape` tensor of values in [-1, 1] (`seed` varies it).
fn waves(shape: &[usize], seed: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7314 + seed).sin()).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A guidance pair (`[x; x]` against two texts) runs the UNet's prefix before the first
/// cross-attention once; each half of the output must still be bit for bit the UNet's output
/// for that text alone, for one image and for two images per text.
#[test]
fn guidance_pairs_equal_each_text_alone() {
    for model in [MODELS.as_slice(), &["tiny-sd-inpaint"]].concat() {
        let (config, unet) = unet(model);
        let dim = config
            .cross_attention_dim
            .expand(1, "cross_attention_dim")
            .unwrap()[0];
        for images in [1, 2] {
            let x = waves(&[images, config.in_channels, 16, 24], 0.3);
            let uncond = waves(&[images, 7, dim], 1.1);
            let cond = waves(&[images, 7, dim], 2.9);
            let pair = unet
                .forward(
                    &Tensor::cat(&[&x, &x], 0).unwrap(),
                    411.0,
                    &Tensor::cat(&[&uncond, &cond], 0).unwrap(),
                    None,
                )
                .unwrap();
            for (half, text) in [&uncond, &cond].into_iter().enumerate() {
                let alone = unet.forward(&x, 411.0, text, None).unwrap();
                let got = pair.narrow(0, half * images, images).unwrap();
                let diff = max_abs_diff(&got, &alone);
                assert_eq!(diff, 0.0, "{model}, {images} image(s), half {half}");
            }
        }
    }
}

#[test]
fn vae_decode_and_encode_match_diffusers() {
    for model in MODELS {
        let config: VaeConfig = read_json(&model_file(model, "vae/config.json")).unwrap();
        let vb = weights(&model_file(
            model,
            "vae/diffusion_pytorch_model.safetensors",
        ));
        let r = load(&format!("reference/{model}/vae.safetensors"));
        let decoder = Decoder::new(vb.clone(), &config).unwrap();
        let z = (&r["latents"] / config.scaling_factor).unwrap();
        let image = decoder.forward(&z).unwrap();
        assert_close_rel_std(
            &format!("{model} vae decode"),
            &image,
            &r["image"],
            COMPONENT_TOL,
        );
        let encoder = Encoder::new(vb, &config).unwrap();
        let (mean, _) = encoder.forward(&r["encode_input"]).unwrap();
        assert_close_rel_std(
            &format!("{model} vae encode"),
            &mean,
            &r["encode_mean"],
            COMPONENT_TOL,
        );
    }
}

#[test]
fn seeded_noise_matches_torch_cpu_generator() {
    let r = load("reference/torch_randn.safetensors");
    assert!(r.len() >= 4, "expected several torch.randn references");
    for (name, want) in &r {
        // Names look like `seed42_1x4x8x12`.
        let (seed, shape) = name.trim_start_matches("seed").split_once('_').unwrap();
        let seed: u64 = seed.parse().unwrap();
        let n: usize = shape
            .split('x')
            .map(|d| d.parse::<usize>().unwrap())
            .product();
        let got = Tensor::from_vec(
            TorchGenerator::new(seed).randn(n),
            want.dims(),
            &Device::Cpu,
        )
        .unwrap();
        let diff = common::compare::max_abs_diff(&got, want);
        assert!(diff < 1e-5, "{name}: max |diff| {diff}");
    }
}

#[test]
fn text_to_image_matches_diffusers_pipeline() {
    let mut checked = 0;
    for model_name in MODELS {
        let model = common::model(model_name);
        for case in cases(&format!("reference/{model_name}")) {
            let r = case.tensors();
            let out = generate(&model, &case.text_job(Some(&r["init_latents"])));
            let run = Run::of_case(&case, &model.family.name);
            assert_run_matches(&run, &out.latents, &out.images, &r, "image");
            checked += 1;
        }
    }
    assert!(
        checked >= 18,
        "expected every reference case, checked {checked}"
    );
}
