//! Prompt syntax against the Python references of `tests/fixtures/make_prompt_fixtures.py`:
//! A1111's schedules per step, chunk token ids and weights, the weighted conditioning of A1111
//! and ComfyUI on the miniature models, and textual inversion against diffusers'
//! `load_textual_inversion`; and the image and latent references of the same cases through the
//! real pipeline (`pipeline::run`), as the CLI and the server run jobs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::OnceLock;

use beeswax::family::Model;
use beeswax::models::clip::{ClipTextConfig, ClipTextModel};
use beeswax::models::config_file::read_json;
use beeswax::prompt::encode::clip_chunk;
use beeswax::prompt::schedule::{entry_at_step, schedules};
use beeswax::prompt::{
    EmbeddingCatalog, EncodedPrompt, EncoderSlot, PlanOptions, PromptPlan, PromptSyntax,
};
use beeswax::tokenizer::ClipTokenizer;
use beeswax::weights;
use candle_core::Tensor;
use candle_core::{DType, Device};
use common::images::assert_images_close;
use common::jobs::{generate, try_generate, try_generate_with, with_embeddings};
use common::reference::Case;
use common::{assert_close_rel_std, fixture, load};
use serde_json::Value;

/// Conditioning tolerance, relative to the reference's std (one CLIP pass, f32).
const COND_TOL: f32 = 1e-4;

fn cases() -> &'static Vec<Value> {
    static CASES: OnceLock<Vec<Value>> = OnceLock::new();
    CASES.get_or_init(|| {
        let text = std::fs::read_to_string(fixture("prompt/cases.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn case(name: &str) -> &'static Value {
    cases().iter().find(|c| c["name"] == name).unwrap()
}

/// The text parts of a miniature SD model, loaded from its diffusers folder: the conditioning
/// checks run the prompt library on the tokenizer and text encoder directly (the image checks
/// run whole jobs).
struct Parts {
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    device: Device,
}

impl Parts {
    fn load(name: &str) -> Self {
        let dir = common::model_dir(name);
        let device = Device::Cpu;
        let vb = |rel: &str| weights::var_builder(&dir.join(rel), DType::F32, &device).unwrap();
        let text_config: ClipTextConfig = read_json(&dir.join("text_encoder/config.json")).unwrap();
        Self {
            tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer")).unwrap(),
            text_encoder: ClipTextModel::new(vb("text_encoder/model.safetensors"), &text_config)
                .unwrap(),
            device,
        }
    }
}

fn models() -> &'static [(String, Parts)] {
    static MODELS: OnceLock<Vec<(String, Parts)>> = OnceLock::new();
    MODELS.get_or_init(|| {
        ["tiny-sd", "tiny-sd2"]
            .iter()
            .map(|m| (m.to_string(), Parts::load(m)))
            .collect()
    })
}

fn model(name: &str) -> &'static Parts {
    &models().iter().find(|(n, _)| n == name).unwrap().1
}

fn syntax(case: &Value) -> PromptSyntax {
    case["syntax"].as_str().unwrap().parse().unwrap()
}

fn plan(
    model: &Parts,
    text: &str,
    syntax: PromptSyntax,
    steps: usize,
    negative: bool,
    catalog: Option<&EmbeddingCatalog>,
) -> PromptPlan {
    let options = PlanOptions {
        negative,
        ..PlanOptions::new(syntax, steps)
    };
    PromptPlan::new(text, &options, &model.tokenizer, catalog).unwrap()
}

fn encode(model: &Parts, plan: &PromptPlan, slot: EncoderSlot) -> EncodedPrompt {
    let layers = model.text_encoder.num_layers();
    plan.encode(|chunk| clip_chunk(&model.text_encoder, chunk, slot, layers, &model.device))
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn per_step_texts_equal_a1111_for_several_step_counts() {
    let text = std::fs::read_to_string(fixture("prompt/schedules.json")).unwrap();
    let table: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(table.len() >= 30);
    for row in &table {
        let (prompt, steps) = (
            row["prompt"].as_str().unwrap(),
            row["steps"].as_u64().unwrap() as usize,
        );
        let schedule = schedules(prompt, steps);
        let want: Vec<(usize, String)> = row["schedule"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e[0].as_u64().unwrap() as usize,
                    e[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(schedule, want, "{prompt:?} over {steps} steps");
        let texts: Vec<&str> = (0..steps)
            .map(|i| schedule[entry_at_step(&schedule, i)].1.as_str())
            .collect();
        let want: Vec<&str> = row["step_texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(texts, want, "{prompt:?} over {steps} steps");
    }
}

/// One side (prompt or negative) of a reference case: chunk ids and weights of every distinct
/// text, the text used at each step, and the conditioning tensors.
fn check_side(case: &Value, side: &str, negative: bool) {
    let name = case["name"].as_str().unwrap();
    let model = model(case["model"].as_str().unwrap());
    let steps = case["steps"].as_u64().unwrap() as usize;
    let text = case[if negative { "negative" } else { "prompt" }]
        .as_str()
        .unwrap();
    let reference = &case[side];
    let plan = plan(model, text, syntax(case), steps, negative, None);
    assert_eq!(plan.parts.len(), 1, "{name}");
    let part = &plan.parts[0];
    let want_texts: Vec<&str> = reference["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(part.texts, want_texts, "{name} {side}: distinct texts");
    let step_text: Vec<usize> = (0..steps).map(|i| part.text_at_step(i)).collect();
    let want: Vec<usize> = reference["step_text"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(step_text, want, "{name} {side}: text per step");
    for (t, want_chunks) in reference["chunks"].as_array().unwrap().iter().enumerate() {
        let got = &part.chunks[t].chunks;
        let want_chunks = want_chunks.as_array().unwrap();
        for (c, want) in want_chunks.iter().enumerate() {
            assert_eq!(
                got[c].ids,
                ids(&want["ids"]),
                "{name} {side} text {t} chunk {c}"
            );
            assert_eq!(
                got[c].weights,
                floats(&want["weights"]),
                "{name} {side} text {t} chunk {c} weights"
            );
        }
        for extra in &got[want_chunks.len()..] {
            assert_eq!(extra.ids, plan.empty.ids, "{name}: variant padding");
        }
    }
    let encoded = encode(model, &plan, EncoderSlot::Only);
    let tensors = load(&format!("prompt/{}", case["file"].as_str().unwrap()));
    for (k, cond) in encoded.parts[0].conds.iter().enumerate() {
        let want = &tensors[&format!("{side}_{k}")];
        assert_close_rel_std(&format!("{name} {side}_{k}"), cond, want, COND_TOL);
    }
}

#[test]
fn a1111_and_comfy_conditioning_equal_the_references() {
    let mut checked = 0;
    for case in cases() {
        if case["syntax"] == "plain" || case.get("cond").is_none() {
            continue;
        }
        check_side(case, "cond", false);
        check_side(case, "uncond", true);
        checked += 1;
    }
    assert!(checked >= 11, "only {checked} cases");
}

#[test]
fn pad_prompts_pads_the_negative_with_empty_chunks() {
    let case = case("long_commas_padded");
    let model = model("tiny-sd");
    let cond = plan(
        model,
        case["prompt"].as_str().unwrap(),
        PromptSyntax::A1111,
        8,
        false,
        None,
    );
    let uncond = plan(
        model,
        case["negative"].as_str().unwrap(),
        PromptSyntax::A1111,
        8,
        true,
        None,
    );
    let (c, u) = (
        encode(model, &cond, EncoderSlot::Only),
        encode(model, &uncond, EncoderSlot::Only),
    );
    let layers = model.text_encoder.num_layers();
    let empty = cond
        .encode_empty(|chunk| {
            clip_chunk(
                &model.text_encoder,
                chunk,
                EncoderSlot::Only,
                layers,
                &model.device,
            )
        })
        .unwrap();
    let (c, u) =
        beeswax::prompt::weighting::pad_prompts(c.at_step(0)[0].0, u.at_step(0)[0].0, &empty)
            .unwrap();
    assert_eq!(c.dims(), u.dims());
    assert_eq!(u.dim(1).unwrap(), 77 * 2);
    let tail = u.narrow(1, 77, 77).unwrap();
    let (diff, _) = common::max_diff_and_std(&tail, &empty);
    assert_eq!(diff, 0.0);
}

fn catalog() -> EmbeddingCatalog {
    EmbeddingCatalog::from_dir(&fixture("prompt/embeddings")).unwrap()
}

/// Every layout, one and several vectors: the same conditioning as diffusers'
/// `load_textual_inversion`, in the A1111 and plain syntaxes (no weights: A1111's mean
/// restoration is then the identity).
#[test]
fn textual_inversion_equals_diffusers() {
    let catalog = catalog();
    let model = model("tiny-sd");
    let mut layouts = std::collections::BTreeSet::new();
    for case in cases().iter().filter(|c| c.get("layout").is_some()) {
        let name = case["name"].as_str().unwrap();
        let layout = case["layout"].as_str().unwrap();
        let slot = if layout == "sdxl" {
            EncoderSlot::ClipL
        } else {
            EncoderSlot::Only
        };
        let tensors = load(&format!("prompt/{}", case["file"].as_str().unwrap()));
        for syntax in [PromptSyntax::A1111, PromptSyntax::Plain] {
            for (side, key, negative) in [
                ("prompt", "prompt_embeds", false),
                ("negative", "negative_prompt_embeds", true),
            ] {
                let text = case[side].as_str().unwrap();
                let p = plan(model, text, syntax, 8, negative, Some(&catalog));
                let encoded = encode(model, &p, slot);
                let (cond, _) = encoded.at_step(0)[0];
                assert_close_rel_std(
                    &format!("{name} {syntax} {side}"),
                    cond,
                    &tensors[key],
                    COND_TOL,
                );
            }
        }
        let p = plan(
            model,
            case["prompt"].as_str().unwrap(),
            PromptSyntax::A1111,
            8,
            false,
            Some(&catalog),
        );
        let used = p.embeddings();
        assert_eq!(used.len(), 1, "{name}");
        assert_eq!(
            used[0].vector_count(),
            case["vectors"].as_u64().unwrap() as usize
        );
        layouts.insert(layout.to_string());
    }
    assert_eq!(layouts.len(), 4, "{layouts:?}");
}

#[test]
fn weighted_embeddings_follow_a1111() {
    let case = case("ti_a1111_weighted");
    let catalog = catalog();
    let model = model("tiny-sd");
    let p = plan(
        model,
        case["prompt"].as_str().unwrap(),
        PromptSyntax::A1111,
        8,
        false,
        Some(&catalog),
    );
    let chunk = &p.parts[0].chunks[0].chunks[0];
    let want = &case["chunks"][0];
    assert_eq!(chunk.ids, ids(&want["ids"]));
    assert_eq!(chunk.weights, floats(&want["weights"]));
    let encoded = encode(model, &p, EncoderSlot::Only);
    let tensors = load("prompt/ti_a1111_weighted.safetensors");
    assert_close_rel_std(
        "ti_a1111_weighted",
        encoded.at_step(0)[0].0,
        &tensors["cond_0"],
        COND_TOL,
    );
}

#[test]
fn embeddings_of_another_width_are_refused() {
    let catalog = catalog();
    // tiny-sd2's text encoder is 48 wide; the embeddings were made for tiny-sd (32).
    let model = model("tiny-sd2");
    let p = plan(
        model,
        "a owlstyle fox",
        PromptSyntax::A1111,
        8,
        false,
        Some(&catalog),
    );
    let layers = model.text_encoder.num_layers();
    let err = p
        .encode(|chunk| {
            clip_chunk(
                &model.text_encoder,
                chunk,
                EncoderSlot::Only,
                layers,
                &model.device,
            )
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("32 wide") && err.contains("48 wide") && err.contains("owlstyle"),
        "{err}"
    );
    // An SDXL pair on a single-encoder model names both of its widths.
    let model = model_sd1();
    let p = plan(
        model,
        "xlpair",
        PromptSyntax::A1111,
        8,
        false,
        Some(&catalog),
    );
    let err = p
        .encode(|chunk| {
            clip_chunk(
                &model.text_encoder,
                chunk,
                EncoderSlot::Only,
                3,
                &model.device,
            )
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("clip_l 32 + clip_g 48") && err.contains("32 wide"),
        "{err}"
    );
}

fn model_sd1() -> &'static Parts {
    model("tiny-sd")
}

/// The conditioning changes at the steps the reference says (editing and alternation).
#[test]
fn conditioning_switches_at_the_reference_steps() {
    for name in ["editing", "alternation"] {
        let case = case(name);
        let model = model("tiny-sd");
        let p = plan(
            model,
            case["prompt"].as_str().unwrap(),
            PromptSyntax::A1111,
            8,
            false,
            None,
        );
        let encoded = encode(model, &p, EncoderSlot::Only);
        let tensors = load(&format!("prompt/{name}.safetensors"));
        for (step, text) in case["cond"]["step_text"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let want: &Tensor = &tensors[&format!("cond_{}", text.as_u64().unwrap())];
            let (got, weight) = encoded.at_step(step)[0];
            assert_eq!(weight, 1.0);
            assert_close_rel_std(&format!("{name} step {step}"), got, want, COND_TOL);
        }
        assert!(!encoded.is_static());
    }
}

fn pipeline_model(name: &str) -> &'static Model {
    static MODELS: OnceLock<Vec<(String, Model)>> = OnceLock::new();
    let models = MODELS.get_or_init(|| {
        ["tiny-sd", "tiny-sd2"]
            .iter()
            .map(|m| (m.to_string(), common::model(m)))
            .collect()
    });
    &models.iter().find(|(n, _)| n == name).unwrap().1
}

/// The job of a reference case: its prompts in its syntax (TI cases: a1111), its sampler,
/// size, guidance and `pad_prompts`.
fn job_case(case: &Value, syntax: PromptSyntax) -> Case {
    let mut job = Case::new(
        case["prompt"].as_str().unwrap(),
        case["scheduler"].as_str().unwrap(),
        case["steps"].as_u64().unwrap() as usize,
        case["width"].as_u64().unwrap() as usize,
        case["height"].as_u64().unwrap() as usize,
    )
    .with_syntax(syntax, case["pad_prompts"].as_bool().unwrap_or(false));
    job.negative_prompt = case["negative"].as_str().unwrap().to_string();
    job.guidance = case["guidance"].as_f64().unwrap();
    job
}

/// Every reference run through the real pipeline (`pipeline::run`, as the CLI and the server
/// run jobs) from the reference's starting noise: weighted prompts, long prompts with and
/// without `pad_prompts`, a long negative prompt (two denoiser calls per step), `BREAK`,
/// editing, alternation, a weight of 0, ComfyUI's weighting on SD 1 and SD 2, the same prompts
/// with `plain` against diffusers' literal pipeline, and textual inversion. Images within
/// 2/255 and latents within 2e-3 of their std.
#[test]
fn pipeline_images_and_latents_equal_the_references() {
    let extensions = with_embeddings(catalog());
    let mut runs = 0;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let Some(file) = case["file"].as_str() else {
            continue;
        };
        let r = load(&format!("prompt/{file}"));
        if !r.contains_key("init_latents") {
            continue;
        }
        let syntax = match case.get("layout").and_then(Value::as_str) {
            // SD's one encoder takes no SDXL pair (see embeddings_of_another_width_are_refused):
            // the pair's conditioning is checked above, with the clip_l slot.
            Some("sdxl") => continue,
            Some(_) => PromptSyntax::A1111,
            None => syntax(case),
        };
        let model = pipeline_model(
            case.get("model")
                .and_then(Value::as_str)
                .unwrap_or("tiny-sd"),
        );
        let job = job_case(case, syntax).text_job(Some(&r["init_latents"]));
        let out = try_generate_with(model, &job, &extensions).unwrap();
        assert_close_rel_std(
            &format!("{name} latents"),
            &out.latents,
            &r["latents"],
            2e-3,
        );
        let image = &r["image"];
        let image = if image.rank() == 3 {
            image.unsqueeze(0).unwrap()
        } else {
            image.clone()
        };
        assert_images_close(name, &out.images, &image);
        if case.get("layout").is_some() {
            assert_eq!(out.embeddings.len(), 1, "{name}: embeddings used");
        }
        runs += 1;
    }
    assert!(runs >= 16, "only {runs} runs");
}

/// Composable diffusion through the pipeline: `X AND X` with weights 0.5 each is `X` (the
/// sub-prompts combine as `uncond + Σ wᵢ·scale·(condᵢ − uncond)`), a sub-prompt weight of 1 is
/// no weight, and sub-prompts of different lengths (one over 75 tokens) stack and run.
#[test]
fn and_combines_sub_prompts_as_a1111() {
    let model = pipeline_model("tiny-sd");
    let run = |prompt: &str| {
        let job = Case::new(prompt, "euler", 3, 64, 64).with_syntax(PromptSyntax::A1111, false);
        generate(model, &job.text_job(None))
    };
    let single = run("a red fox in the snow");
    for same in [
        "a red fox in the snow :0.5 AND a red fox in the snow :0.5",
        "a red fox in the snow :1",
    ] {
        let out = run(same);
        assert_close_rel_std(same, &out.latents, &single.latents, 1e-4);
    }
    let half = run("a red fox in the snow :0.5");
    let (diff, _) = common::max_diff_and_std(&half.latents, &single.latents);
    assert!(diff > 1e-3, "a weight of 0.5 changed nothing");
    let long = vec!["fox"; 90].join(" ");
    let out = run(&format!("a red fox AND {long} :0.7"));
    assert_eq!(out.latents.dims(), single.latents.dims());
    // Without guidance there is no negative pass to combine sub-prompts against.
    let mut job =
        Case::new("a fox AND snow", "euler", 2, 64, 64).with_syntax(PromptSyntax::A1111, false);
    job.guidance = 1.0;
    let err = try_generate(model, &job.text_job(None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("AND") && err.contains("guidance"), "{err}");
}
