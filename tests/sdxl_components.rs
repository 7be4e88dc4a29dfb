//! SDXL's networks against diffusers/transformers, one at a time: both text encoders (and
//! their tokenizers), diffusers' SDXL prompt embeddings built from them, the base, refiner and
//! 9-channel inpainting UNets with added conditioning, and the SDXL VAE. The references come
//! from `tests/fixtures/make_sdxl_fixtures.py` (see `tests/fixtures/reference/sdxl/README.md`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;

use beeswax::models::clip::{ClipOutput, ClipTextConfig, ClipTextModel};
use beeswax::models::config_file::read_json;
use beeswax::models::unet::{AddedCond, UNet2DConditionModel, UNetConfig};
use beeswax::models::vae::{Decoder, Encoder, VaeConfig};
use beeswax::tokenizer::ClipTokenizer;
use beeswax::weights::WeightSource;
use candle_core::{DType, Device, Tensor};
use common::{assert_close_rel_std, fixture, load};

/// Tolerance for single network calls, relative to the reference's std.
const COMPONENT_TOL: f32 = 1e-4;
const PROMPT: &str = "a red fox in the snow";
const NEGATIVE: &str = "blurry, low quality";

fn components() -> HashMap<String, Tensor> {
    load("reference/sdxl/components/text_encoders.safetensors")
}

fn text_encoder(model: &str, part: &str) -> ClipTextModel {
    let dir = fixture(&format!("models/{model}/{part}"));
    let config: ClipTextConfig = read_json(&dir.join("config.json")).unwrap();
    let vb = weights_vb(&dir.join("model.safetensors"), DType::F32, &Device::Cpu).unwrap();
    ClipTextModel::new(vb, &config).unwrap()
}

fn unet(model: &str) -> UNet2DConditionModel {
    let dir = fixture(&format!("models/{model}/unet"));
    let config: UNetConfig = read_json(&dir.join("config.json")).unwrap();
    let vb = weights_vb(
        &dir.join("diffusion_pytorch_model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    UNet2DConditionModel::new(vb, &config).unwrap()
}

fn ids(tokenizer: &ClipTokenizer, prompts: &[&str]) -> Tensor {
    let rows: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tokenizer.encode(p).unwrap().ids)
        .collect();
    Tensor::new(rows, &Device::Cpu).unwrap()
}

#[test]
fn reduced_vocabulary_tokenizers_match_transformers() {
    let r = components();
    for (part, key) in [("tokenizer", "te1"), ("tokenizer_2", "te2")] {
        let tokenizer =
            ClipTokenizer::from_dir(&fixture(&format!("models/tiny-sdxl/{part}"))).unwrap();
        let got = ids(&tokenizer, &[PROMPT, ""]);
        let want = r[&format!("{key}_input_ids")].to_dtype(DType::U32).unwrap();
        assert_eq!(
            got.to_vec2::<u32>().unwrap(),
            want.to_vec2::<u32>().unwrap(),
            "{part}"
        );
    }
}

#[test]
fn text_encoder_outputs_match_transformers() {
    let r = components();
    for (part, key) in [("text_encoder", "te1"), ("text_encoder_2", "te2")] {
        let clip = text_encoder("tiny-sdxl", part);
        let n = clip.num_layers();
        let ids = r[&format!("{key}_input_ids")].to_dtype(DType::U32).unwrap();
        let check = |what: &str, got: &Tensor| {
            let want = &r[&format!("{key}_{what}")];
            assert_close_rel_std(&format!("{part} {what}"), got, want, COMPONENT_TOL);
        };
        let penultimate = clip.encode(&ids, n - 1, false).unwrap();
        check("penultimate", &penultimate.states);
        check("pooled", &penultimate.pooled);
        check("skip1", &clip.encode(&ids, n - 2, false).unwrap().states);
        let last = clip.encode(&ids, n, true).unwrap();
        check("last_hidden_state", &last.states);
        check("last_hidden_state", &clip.forward(&ids, n).unwrap());
        check("pooled", &last.pooled);
        assert_eq!(clip.has_projection(), key == "te2", "{part}");
        match &last.text_embeds {
            Some(embeds) => check("text_embeds", embeds),
            None => assert!(!r.contains_key(&format!("{key}_text_embeds"))),
        }
    }
}

#[test]
fn clip_encode_refuses_more_layers_than_the_model_has() {
    let clip = text_encoder("tiny-sdxl", "text_encoder");
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let error = clip
        .encode(&ids, clip.num_layers() + 1, false)
        .unwrap_err()
        .to_string();
    assert!(error.contains("num_hidden_layers"), "{error}");
}

/// diffusers' `encode_prompt` for SDXL: both encoders' states after all layers but
/// `1 + clip_skip`, without the final LayerNorm, concatenated; pooled = `text_embeds` of the
/// second encoder.
fn sdxl_embeddings(prompt: &str, clip_skip: usize) -> (Tensor, Tensor) {
    let mut states = Vec::new();
    let mut pooled = None;
    for (tok, te) in [
        ("tokenizer", "text_encoder"),
        ("tokenizer_2", "text_encoder_2"),
    ] {
        let tokenizer =
            ClipTokenizer::from_dir(&fixture(&format!("models/tiny-sdxl/{tok}"))).unwrap();
        let clip = text_encoder("tiny-sdxl", te);
        let ClipOutput {
            states: s,
            text_embeds,
            ..
        } = clip
            .encode(
                &ids(&tokenizer, &[prompt]),
                clip.num_layers() - 1 - clip_skip,
                false,
            )
            .unwrap();
        states.push(s);
        pooled = text_embeds;
    }
    (Tensor::cat(&states, 2).unwrap(), pooled.unwrap())
}

#[test]
fn sdxl_prompt_embeddings_match_diffusers() {
    let r = components();
    let (embeds, pooled) = sdxl_embeddings(PROMPT, 0);
    assert_close_rel_std("prompt", &embeds, &r["sdxl_prompt_embeds"], COMPONENT_TOL);
    assert_close_rel_std(
        "pooled",
        &pooled,
        &r["sdxl_pooled_prompt_embeds"],
        COMPONENT_TOL,
    );
    let (embeds, pooled) = sdxl_embeddings(NEGATIVE, 0);
    let want = &r["sdxl_negative_prompt_embeds"];
    assert_close_rel_std("negative", &embeds, want, COMPONENT_TOL);
    let want = &r["sdxl_negative_pooled_prompt_embeds"];
    assert_close_rel_std("negative pooled", &pooled, want, COMPONENT_TOL);
    let (embeds, _) = sdxl_embeddings(PROMPT, 1);
    let want = &r["sdxl_prompt_embeds_clip_skip1"];
    assert_close_rel_std("clip skip 1", &embeds, want, COMPONENT_TOL);
}

fn added(r: &HashMap<String, Tensor>) -> AddedCond {
    AddedCond {
        text_embeds: r["text_embeds"].clone(),
        time_ids: r["time_ids"].clone(),
    }
}

#[test]
fn unets_with_added_conditioning_match_diffusers() {
    for (model, file) in [
        ("tiny-sdxl", "unet_base"),
        ("tiny-sdxl-refiner", "unet_refiner"),
        ("tiny-sdxl-inpaint", "unet_inpaint"),
    ] {
        let unet = unet(model);
        let r = load(&format!("reference/sdxl/components/{file}.safetensors"));
        for case in ["t1", "t2"] {
            let t = r[&format!("{case}_timestep")]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0] as f64;
            let out = unet
                .forward(
                    &r["sample"],
                    t,
                    &r["encoder_hidden_states"],
                    Some(&added(&r)),
                )
                .unwrap();
            let want = &r[&format!("{case}_out")];
            assert_close_rel_std(&format!("{file} t={t}"), &out, want, COMPONENT_TOL);
        }
    }
}

#[test]
fn added_conditioning_errors_name_what_is_wrong() {
    let r = load("reference/sdxl/components/unet_base.safetensors");
    let sdxl = unet("tiny-sdxl");
    let context = &r["encoder_hidden_states"];
    let error = sdxl
        .forward(&r["sample"], 500.0, context, None)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("text_time") && error.contains("text_embeds"),
        "{error}"
    );

    let five_ids = AddedCond {
        time_ids: r["time_ids"].narrow(1, 0, 5).unwrap(),
        ..added(&r)
    };
    let error = sdxl
        .forward(&r["sample"], 500.0, context, Some(&five_ids))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("projection_class_embeddings_input_dim"),
        "{error}"
    );

    let one_row = AddedCond {
        text_embeds: r["text_embeds"].narrow(0, 0, 1).unwrap(),
        ..added(&r)
    };
    let error = sdxl
        .forward(&r["sample"], 500.0, context, Some(&one_row))
        .unwrap_err()
        .to_string();
    assert!(error.contains("batch of 2"), "{error}");

    let sd1 = unet("tiny-sd");
    let sample = Tensor::zeros((1, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let context = Tensor::zeros((1, 77, 32), DType::F32, &Device::Cpu).unwrap();
    let error = sd1
        .forward(&sample, 500.0, &context, Some(&one_row))
        .unwrap_err()
        .to_string();
    assert!(error.contains("without it"), "{error}");
}

#[test]
fn sdxl_vae_decode_and_encode_match_diffusers() {
    let dir = fixture("models/tiny-sdxl/vae");
    let config: VaeConfig = read_json(&dir.join("config.json")).unwrap();
    assert_eq!(config.scaling_factor, 0.13025);
    assert!(config.force_upcast && config.shift_factor.is_none());
    assert_eq!(config.scale_factor(), 8);
    let vb = weights_vb(
        &dir.join("diffusion_pytorch_model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let r = load("reference/sdxl/components/vae.safetensors");
    let z = (&r["latents"] / config.scaling_factor).unwrap();
    let image = Decoder::new(vb.clone(), &config)
        .unwrap()
        .forward(&z)
        .unwrap();
    assert_close_rel_std("sdxl vae decode", &image, &r["image"], COMPONENT_TOL);
    let (mean, _) = Encoder::new(vb, &config)
        .unwrap()
        .forward(&r["encode_input"])
        .unwrap();
    assert_close_rel_std("sdxl vae encode", &mean, &r["encode_mean"], COMPONENT_TOL);
}

/// The safetensors file at `path` behind a VarBuilder, as the loaders read it.
fn weights_vb(
    path: &std::path::Path,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<candle_nn::VarBuilder<'static>> {
    WeightSource::open(path)
        .map(|s| s.var_builder(dtype, device))
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}
