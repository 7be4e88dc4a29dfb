//! Prompt syntax on the families beyond SD 1.x/2.x against the Python references of
//! `tests/fixtures/make_prompt_fixtures.py sdxl|flux`.
//!
//! SDXL's two text encoders (and the refiner's one), tests/fixtures/prompt_sdxl/:
//! A1111's conditioning (weights with mean restoration per encoder, a prompt over 75 tokens
//! with commas, `BREAK`, prompt editing and alternation, an empty negative prompt zeroed, a
//! `clip_l` + `clip_g` embedding) and ComfyUI's, each encoder's contexts and the pooled
//! embedding of every distinct text at every step; then the same cases through the real
//! pipeline (`pipeline::run`) from the references' starting noise: images within 2/255,
//! latents within 2e-3 of their std.
//!
//! FLUX (tests/fixtures/prompt_flux/): CLIP-L's pooled output from each distinct text's first
//! A1111 chunk and T5 on the text without markup, per step (editing, alternation), and one
//! static case through the pipeline.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use beeswax::family::{self, EncodeOptions, Model};
use beeswax::prompt::{EmbeddingCatalog, PromptSyntax};
use candle_core::Tensor;
use common::images::assert_images_close;
use common::jobs::{try_generate_with, with_embeddings};
use common::reference::Case;
use common::{assert_close_rel_std, fixture, load, model_dir, FluxCase};
use serde_json::Value;

/// Conditioning tolerance, relative to the reference's std (two CLIP passes, f32).
const COND_TOL: f32 = 1e-4;

fn cases() -> &'static Vec<Value> {
    static CASES: OnceLock<Vec<Value>> = OnceLock::new();
    CASES.get_or_init(|| {
        let text = std::fs::read_to_string(fixture("prompt_sdxl/cases.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn models() -> &'static HashMap<String, Model> {
    static MODELS: OnceLock<HashMap<String, Model>> = OnceLock::new();
    MODELS.get_or_init(|| {
        ["tiny-sdxl", "tiny-sdxl-refiner"]
            .iter()
            .map(|m| (m.to_string(), common::model(m)))
            .collect()
    })
}

fn catalog() -> EmbeddingCatalog {
    EmbeddingCatalog::from_dir(&fixture("prompt_sdxl/embeddings")).unwrap()
}

fn text(case: &Value, key: &str) -> String {
    case[key].as_str().unwrap().to_string()
}

fn number(case: &Value, key: &str) -> usize {
    case[key].as_u64().unwrap() as usize
}

fn syntax(case: &Value) -> PromptSyntax {
    text(case, "syntax").parse().unwrap()
}

/// `got` equals `want`; an all-zero reference (an empty negative prompt zeroed by
/// `force_zeros_for_empty_prompt`) must be matched exactly.
fn assert_matches(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let max = |t: &Tensor| -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    if max(want) == 0.0 {
        assert_eq!(max(got), 0.0, "{what}: should be all zeros");
    } else {
        assert_close_rel_std(what, got, want, COND_TOL);
    }
}

/// Every case's prompt and negative prompt encoded by the family (`Networks::encode`, as the
/// pipeline calls it): at every step, the context and pooled embedding of the distinct text
/// the reference uses at that step; no warning (the markup is read, not removed).
#[test]
fn sdxl_conditioning_equals_the_references() {
    let catalog = catalog();
    let mut checked = 0;
    for case in cases() {
        let name = text(case, "name");
        let model = &models()[&text(case, "model")];
        let tensors = load(&format!("prompt_sdxl/{}", text(case, "file")));
        let steps = number(case, "steps");
        for (side, key, negative) in [("cond", "prompt", false), ("uncond", "negative", true)] {
            let options = EncodeOptions {
                clip_skip: 1,
                size: (number(case, "width"), number(case, "height")),
                negative,
                syntax: syntax(case),
                steps,
                pad_prompts: false,
                embeddings: Some(&catalog),
                size_conditioning: Default::default(),
            };
            let mut warnings = Vec::new();
            let scheduled = model
                .networks
                .encode(&text(case, key), &options, &mut warnings)
                .unwrap();
            assert!(warnings.is_empty(), "{name} {side}: {warnings:?}");
            let texts = case[side]["texts"].as_array().unwrap().len();
            assert_eq!(scheduled.parts[0].conds.len(), texts, "{name} {side}");
            for (step, index) in case[side]["step_text"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                let index = index.as_u64().unwrap();
                let (cond, weight) = scheduled.at_step(step)[0];
                assert_eq!(weight, 1.0);
                let what = format!("{name} {side} step {step}");
                assert_matches(
                    &format!("{what} context"),
                    &cond.context,
                    &tensors[&format!("{side}_{index}")],
                );
                assert_matches(
                    &format!("{what} pooled"),
                    cond.pooled.as_ref().unwrap(),
                    &tensors[&format!("{side}_pooled_{index}")],
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} prompts checked");
}

/// `pad_prompts` on SDXL: the empty prompt's conditioning (both encoders, each with its own
/// padding; pooled and time ids) is what a positive empty prompt encodes to, one chunk long,
/// and an over-75-token prompt keeps its own chunk count.
#[test]
fn sdxl_pad_prompts_carries_the_empty_prompts_conditioning() {
    let model = &models()["tiny-sdxl"];
    let options = |negative: bool| EncodeOptions {
        clip_skip: 1,
        size: (64, 64),
        negative,
        syntax: PromptSyntax::A1111,
        steps: 4,
        pad_prompts: true,
        embeddings: None,
        size_conditioning: Default::default(),
    };
    let long = vec!["fox"; 80].join(" ");
    let encode = |prompt: &str, negative: bool| {
        model
            .networks
            .encode(prompt, &options(negative), &mut Vec::new())
            .unwrap()
    };
    let scheduled = encode(&long, false);
    let tokens = scheduled.at_step(0)[0].0.context.dim(1).unwrap();
    assert!(tokens > 77 && tokens % 77 == 0, "{tokens} tokens");
    let empty = scheduled.empty.as_ref().unwrap();
    assert_eq!(empty.context.dims(), [1, 77, 72]);
    let positive_empty = encode("", false);
    let want = positive_empty.at_step(0)[0].0;
    assert_matches("empty context", &empty.context, &want.context);
    assert_matches(
        "empty pooled",
        empty.pooled.as_ref().unwrap(),
        want.pooled.as_ref().unwrap(),
    );
    assert_eq!(
        empty.added.as_ref().unwrap().to_vec2::<f32>().unwrap(),
        want.added.as_ref().unwrap().to_vec2::<f32>().unwrap()
    );
    // The negative empty prompt is zeroed (force_zeros_for_empty_prompt), its padding is not.
    let negative = encode("", true);
    let zeros = negative.at_step(0)[0]
        .0
        .context
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(zeros.to_scalar::<f32>().unwrap(), 0.0);
}

/// The cases with an image reference through the real pipeline from their starting noise.
#[test]
fn sdxl_pipeline_images_and_latents_equal_the_references() {
    let extensions = with_embeddings(catalog());
    let mut runs = 0;
    for case in cases() {
        let name = text(case, "name");
        let r = load(&format!("prompt_sdxl/{}", text(case, "file")));
        let Some(init) = r.get("init_latents") else {
            continue;
        };
        let model = &models()[&text(case, "model")];
        let mut job = Case::new(
            &text(case, "prompt"),
            &text(case, "scheduler"),
            number(case, "steps"),
            number(case, "width"),
            number(case, "height"),
        )
        .with_syntax(syntax(case), false);
        job.negative_prompt = text(case, "negative");
        job.guidance = case["guidance"].as_f64().unwrap();
        let out = try_generate_with(model, &job.text_job(Some(init)), &extensions).unwrap();
        assert_close_rel_std(
            &format!("{name} latents"),
            &out.latents,
            &r["latents"],
            2e-3,
        );
        assert_images_close(&name, &out.images, &r["image"]);
        if name == "xl_ti" {
            assert_eq!(out.embeddings.len(), 1, "{name}: embeddings used");
        }
        runs += 1;
    }
    assert!(runs >= 6, "only {runs} runs");
}

fn flux_cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("prompt_flux/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// tiny-flux-dev with the references' T5 length.
fn flux_model(max_sequence_length: usize) -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut options = common::cpu_f32();
        options.max_sequence_length = Some(max_sequence_length);
        family::load(&model_dir("tiny-flux-dev"), None, &options).unwrap()
    })
}

/// A1111 prompts on FLUX: at every step, T5's context of the text without markup and CLIP's
/// pooled output of the first chunk; dropped weights are reported in one warning.
#[test]
fn flux_conditioning_equals_the_references() {
    let cases = flux_cases();
    assert!(cases.len() >= 2);
    for case in &cases {
        let name = text(case, "name");
        let model = flux_model(number(case, "max_sequence_length"));
        let tensors = load(&format!("prompt_flux/{}", text(case, "file")));
        let options = EncodeOptions {
            clip_skip: 1,
            size: (number(case, "width"), number(case, "height")),
            negative: false,
            syntax: syntax(case),
            steps: number(case, "steps"),
            pad_prompts: false,
            embeddings: None,
            size_conditioning: Default::default(),
        };
        let mut warnings = Vec::new();
        let scheduled = model
            .networks
            .encode(&text(case, "prompt"), &options, &mut warnings)
            .unwrap();
        let weighted: Vec<_> = warnings
            .iter()
            .filter(|w| w.contains("does not weight"))
            .collect();
        assert_eq!(weighted.len(), 1, "{name}: {warnings:?}");
        assert_eq!(
            scheduled.parts[0].conds.len(),
            case["texts"].as_array().unwrap().len(),
            "{name}"
        );
        for (step, index) in case["step_text"].as_array().unwrap().iter().enumerate() {
            let index = index.as_u64().unwrap();
            let (cond, _) = scheduled.at_step(step)[0];
            let what = format!("{name} step {step}");
            assert_close_rel_std(
                &format!("{what} T5 context"),
                &cond.context,
                &tensors[&format!("cond_{index}")],
                COND_TOL,
            );
            assert_close_rel_std(
                &format!("{what} pooled"),
                cond.pooled.as_ref().unwrap(),
                &tensors[&format!("cond_pooled_{index}")],
                COND_TOL,
            );
        }
    }
}

/// The static FLUX case through the pipeline from the reference's starting noise.
#[test]
fn flux_pipeline_image_and_latents_equal_the_reference() {
    let mut runs = 0;
    for case in flux_cases() {
        let r = load(&format!("prompt_flux/{}", text(&case, "file")));
        if !r.contains_key("init_latents") {
            continue;
        }
        let flux: FluxCase = serde_json::from_value(case.clone()).unwrap();
        let model = flux_model(flux.max_sequence_length);
        let mut job = flux.job(&r);
        job.settings.prompt_syntax = syntax(&case);
        let out =
            try_generate_with(model, &job, &beeswax::extensions::Extensions::builtin()).unwrap();
        assert_close_rel_std(
            &format!("{} latents", flux.name),
            &out.latents,
            &r["latents"],
            2e-3,
        );
        assert_images_close(&flux.name, &out.images, &r["image"]);
        runs += 1;
    }
    assert_eq!(runs, 1);
}
