//! FLUX.1 components against diffusers and transformers: the transformer in the diffusers and
//! the original (Black Forest Labs) layouts, the T5 encoder and its tokenizer from both file
//! kinds, the 16-channel VAE with its shift, and the flow-matching schedulers' trajectories.
//!
//! References come from `tests/fixtures/make_flux_fixtures.py` (see tests/fixtures/README.md,
//! section "FLUX"): miniature FLUX.1-dev and -schnell models in `fixtures/models/tiny-flux-*`,
//! reference tensors in `fixtures/reference/flux/`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use beeswax::models::config_file::read_json;
use beeswax::models::flux::{self, bfl, FluxConfig, FluxTransformer2DModel};
use beeswax::models::t5::{relative_position_bucket, T5Config, T5EncoderModel};
use beeswax::models::vae::{Decoder, Encoder, VaeConfig};
use beeswax::weights;
use candle_core::{DType, Device, Tensor};
use common::{assert_close_rel_std, fixture, load};

/// Component outputs must agree with the reference within this fraction of its std (the
/// arithmetic is the same f32 math in a different order).
const TOLERANCE: f32 = 1e-4;

fn model_dir(name: &str) -> std::path::PathBuf {
    fixture(&format!("models/tiny-flux-{name}"))
}

fn transformer(name: &str) -> FluxTransformer2DModel {
    let dir = model_dir(name).join("transformer");
    let config = FluxConfig::from_file(&dir.join("config.json")).unwrap();
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let vb = weights::var_builder(&path, DType::F32, &Device::Cpu).unwrap();
    FluxTransformer2DModel::new(vb, &config).unwrap()
}

fn run_transformer(model: &FluxTransformer2DModel, name: &str) -> Tensor {
    let r = load(&format!("reference/flux/transformer_{name}.safetensors"));
    model
        .forward(
            &r["img"],
            &r["img_ids"],
            &r["txt"],
            &r["txt_ids"],
            &r["timestep"],
            r.get("guidance"),
            &r["pooled"],
        )
        .unwrap()
}

#[test]
fn transformer_matches_diffusers() {
    for name in ["dev", "schnell"] {
        let model = transformer(name);
        let r = load(&format!("reference/flux/transformer_{name}.safetensors"));
        let out = run_transformer(&model, name);
        assert_close_rel_std(&format!("{name} transformer"), &out, &r["out"], TOLERANCE);
    }
}

#[test]
fn transformer_inputs_follow_the_pipeline_helpers() {
    let r = load("reference/flux/transformer_dev.safetensors");
    let packed = flux::pack_latents(&r["latents"]).unwrap();
    assert_close_rel_std("pack_latents", &packed, &r["img"], 0.0);
    let unpacked = flux::unpack_latents(&packed, 8, 12).unwrap();
    assert_close_rel_std("unpack_latents", &unpacked, &r["latents"], 0.0);
    let ids = flux::image_ids(4, 6, &Device::Cpu).unwrap();
    assert_close_rel_std("image_ids", &ids, &r["img_ids"], 0.0);
    let txt = flux::text_ids(7, &Device::Cpu).unwrap();
    assert_eq!(txt.dims(), r["txt_ids"].dims());
}

#[test]
fn guidance_is_required_by_dev_and_refused_by_schnell() {
    let r = load("reference/flux/transformer_dev.safetensors");
    let dev = transformer("dev");
    let err = dev
        .forward(
            &r["img"],
            &r["img_ids"],
            &r["txt"],
            &r["txt_ids"],
            &r["timestep"],
            None,
            &r["pooled"],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("guidance"), "{err}");
    let s = load("reference/flux/transformer_schnell.safetensors");
    let schnell = transformer("schnell");
    let g = Tensor::new(&[3.5f32, 3.5], &Device::Cpu).unwrap();
    let err = schnell
        .forward(
            &s["img"],
            &s["img_ids"],
            &s["txt"],
            &s["txt_ids"],
            &s["timestep"],
            Some(&g),
            &s["pooled"],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no guidance"), "{err}");
}

/// The dev transformer saved in the Black Forest Labs layout in bfloat16, as single files
/// are; the reference is diffusers' own converter's model of that file, run in f32.
#[test]
fn bfl_single_file_matches_diffusers_conversion() {
    let path = fixture("models/tiny-flux-dev-bfl.safetensors");
    let diffusers_config =
        FluxConfig::from_file(&model_dir("dev").join("transformer/config.json")).unwrap();
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(tensors.values().all(|t| t.dtype() == DType::BF16));
    let config = FluxConfig::from_bfl_shapes(
        |name| tensors.get(name).map(|t| t.dims().to_vec()),
        Some(&diffusers_config.axes_dims_rope),
    )
    .unwrap();
    assert_eq!(
        FluxConfig {
            out_channels: None,
            ..config.clone()
        },
        diffusers_config
    );
    assert_eq!(config.out_dim(), diffusers_config.out_dim());

    let file = weights::var_builder(&path, DType::F32, &Device::Cpu).unwrap();
    let model = FluxTransformer2DModel::new(bfl::var_builder(file, &config), &config).unwrap();
    let out = run_transformer(&model, "dev");
    let r = load("reference/flux/transformer_dev_bfl.safetensors");
    assert_close_rel_std("BFL-layout dev transformer", &out, &r["out"], TOLERANCE);
    // Every tensor of the file is used exactly by the map.
    let mapped: std::collections::HashSet<String> = bfl::tensor_map(&config)
        .into_iter()
        .map(|(_, b)| b.name)
        .collect();
    let stored: std::collections::HashSet<String> = tensors.keys().cloned().collect();
    assert_eq!(mapped, stored);
}

#[test]
fn t5_encoder_matches_transformers() {
    for name in ["dev", "schnell"] {
        let dir = model_dir(name).join("text_encoder_2");
        let config = T5Config::from_file(&dir.join("config.json")).unwrap();
        let vb =
            weights::var_builder(&dir.join("model.safetensors"), DType::F32, &Device::Cpu).unwrap();
        let model = T5EncoderModel::new(vb, &config).unwrap();
        let r = load(&format!("reference/flux/t5_{name}.safetensors"));
        let out = model.forward(&r["input_ids"]).unwrap();
        assert_close_rel_std(
            &format!("{name} T5 ({:?})", r["input_ids"].dims()),
            &out,
            &r["last_hidden_state"],
            TOLERANCE,
        );
    }
}

#[test]
fn t5_position_buckets_match_transformers() {
    #[derive(serde::Deserialize)]
    struct Table {
        num_buckets: usize,
        max_distance: usize,
        buckets: Vec<usize>,
    }
    #[derive(serde::Deserialize)]
    struct Buckets {
        relative: [i64; 2],
        tables: Vec<Table>,
    }
    let text = std::fs::read_to_string(fixture("reference/flux/t5_buckets.json")).unwrap();
    let reference: Buckets = serde_json::from_str(&text).unwrap();
    for table in &reference.tables {
        for (rel, &want) in (reference.relative[0]..=reference.relative[1]).zip(&table.buckets) {
            let got = relative_position_bucket(rel, table.num_buckets, table.max_distance);
            assert_eq!(
                got, want,
                "relative position {rel}, {} buckets, max distance {}",
                table.num_buckets, table.max_distance
            );
        }
    }
}

/// The 16-channel VAE needs nothing new: `latent_channels`, no (post-)quant convs and the
/// shift come from its config; the pipeline unscales `latents / scaling_factor + shift_factor`.
#[test]
fn vae_decodes_and_encodes_16_channel_latents() {
    for name in ["dev", "schnell"] {
        let dir = model_dir(name).join("vae");
        let config: VaeConfig = read_json(&dir.join("config.json")).unwrap();
        assert_eq!(config.latent_channels, 16);
        assert!(!config.use_post_quant_conv && !config.use_quant_conv);
        let shift = config.shift_factor.unwrap();
        assert_eq!((config.scaling_factor, shift), (0.3611, 0.1159));
        let path = dir.join("diffusion_pytorch_model.safetensors");
        let vb = weights::var_builder(&path, DType::F32, &Device::Cpu).unwrap();
        let decoder = Decoder::new(vb.clone(), &config).unwrap();
        let encoder = Encoder::new(vb, &config).unwrap();
        let r = load(&format!("reference/flux/vae_{name}.safetensors"));
        let z = r["latents"]
            .affine(1.0 / config.scaling_factor, shift)
            .unwrap();
        let image = decoder.forward(&z).unwrap();
        assert_close_rel_std(
            &format!("{name} VAE decode"),
            &image,
            &r["image"],
            TOLERANCE,
        );
        let (mean, _) = encoder.forward(&r["encode_input"]).unwrap();
        assert_close_rel_std(
            &format!("{name} VAE encode"),
            &mean,
            &r["encode_mean"],
            TOLERANCE,
        );
    }
}

#[derive(serde::Deserialize)]
struct TokenizerCase {
    tokenizer: String,
    prompt: String,
    json_ids: Vec<u32>,
    json_untruncated: Vec<u32>,
    json_dropped: Option<String>,
    spiece_ids: Vec<u32>,
    spiece_untruncated: Vec<u32>,
    spiece_dropped: Option<String>,
}

#[derive(serde::Deserialize)]
struct TokenizerReference {
    max_length: usize,
    cases: Vec<TokenizerCase>,
}

/// transformers' T5TokenizerFast ids for hard prompts, from `tokenizer.json` and from a folder
/// holding only `spiece.model` (dev's SentencePiece model has a normalization table, schnell's
/// has none).
#[test]
fn t5_tokenizer_matches_transformers_from_both_files() {
    use beeswax::tokenizer::t5::T5Tokenizer;
    let text = std::fs::read_to_string(fixture("reference/flux/t5_tokenizer_ids.json")).unwrap();
    let reference: TokenizerReference = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for name in ["dev", "schnell"] {
        let dir = model_dir(name).join("tokenizer_2");
        let from_json = T5Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
        let from_spiece = T5Tokenizer::from_spiece(&dir.join("spiece.model")).unwrap();
        let from_dir = T5Tokenizer::from_dir(&dir).unwrap();
        assert_eq!(from_json.vocab_size(), from_spiece.vocab_size());
        assert_eq!((from_json.pad_id(), from_json.eos_id()), (0, 1));
        for case in reference.cases.iter().filter(|c| c.tokenizer == name) {
            let kinds = [
                (
                    "tokenizer.json",
                    &from_json,
                    &case.json_ids,
                    &case.json_untruncated,
                    &case.json_dropped,
                ),
                (
                    "spiece.model",
                    &from_spiece,
                    &case.spiece_ids,
                    &case.spiece_untruncated,
                    &case.spiece_dropped,
                ),
            ];
            for (kind, tok, ids, untruncated, dropped) in kinds {
                let what = format!("{name} {kind} {:?}", case.prompt);
                let got = tok.encode(&case.prompt, reference.max_length).unwrap();
                assert_eq!(&got.ids, ids, "{what}");
                let mut all = tok.tokens(&case.prompt).unwrap();
                all.push(tok.eos_id());
                assert_eq!(&all, untruncated, "{what}: untruncated");
                assert_eq!(&got.truncated, dropped, "{what}: dropped text");
                checked += 1;
            }
            let got = from_dir.encode(&case.prompt, reference.max_length).unwrap();
            assert_eq!(got.ids, case.json_ids);
        }
    }
    assert!(checked >= 4 * 10, "only {checked} tokenizer cases");
}

#[derive(serde::Deserialize)]
struct Img2Img {
    strength: f64,
    begin_index: usize,
}

#[derive(serde::Deserialize)]
struct SchedulerCase {
    name: String,
    scheduler: String,
    config: serde_json::Value,
    steps: usize,
    image_seq_len: Option<usize>,
    mu: Option<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    noise_draws: usize,
    img2img: Option<Img2Img>,
}

#[derive(serde::Deserialize)]
struct SchedulerReference {
    cases: Vec<SchedulerCase>,
}

/// Hands out the noise the reference recorded, in order.
struct Recorded {
    draws: Vec<Tensor>,
    next: usize,
}

impl beeswax::noise::NoiseSource for Recorded {
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
        let draw = self.draws.get(self.next).cloned();
        self.next += 1;
        match draw {
            Some(t) => t.to_dtype(like.dtype()),
            None => candle_core::bail!("the reference drew only {} noises", self.draws.len()),
        }
    }
}

/// The case's scheduler and its sigmas (one per step plus the final one).
fn flow_scheduler(
    case: &SchedulerCase,
    mu: Option<f64>,
) -> (Box<dyn beeswax::schedulers::Scheduler>, Vec<f64>) {
    use beeswax::schedulers::{DpmMultistep, DpmVariant, FlowEuler, FlowHeun, SchedulerConfig};
    let config: SchedulerConfig = serde_json::from_value(case.config.clone()).unwrap();
    let dpm = |variant| DpmMultistep::flow(&config, case.steps, variant, mu).unwrap();
    match case.scheduler.as_str() {
        "flow_euler" => {
            let s = FlowEuler::new(&config, case.steps, mu).unwrap();
            (
                s.sigmas().to_vec(),
                Box::new(s) as Box<dyn beeswax::schedulers::Scheduler>,
            )
        }
        "flow_heun" => {
            let s = FlowHeun::new(&config, case.steps, mu).unwrap();
            (s.sigmas().to_vec(), Box::new(s) as _)
        }
        "flow_dpmpp_2m" => {
            let s = dpm(DpmVariant::TwoM);
            (s.sigmas().to_vec(), Box::new(s) as _)
        }
        "flow_dpmpp_2m_sde" => {
            let s = dpm(DpmVariant::TwoMSde);
            (s.sigmas().to_vec(), Box::new(s) as _)
        }
        other => panic!("unknown scheduler {other}"),
    }
    .swap()
}

trait Swap<A, B> {
    fn swap(self) -> (B, A);
}

impl<A, B> Swap<A, B> for (A, B) {
    fn swap(self) -> (B, A) {
        (self.1, self.0)
    }
}

/// Whole trajectories of diffusers' flow schedulers for given model outputs (FlowMatchEuler as
/// FluxPipeline sets it, in several configurations; FlowMatchHeun's step on that schedule;
/// DPM-Solver++ 2M and 2M SDE with flow sigmas), replayed in f32 and f64: the mu, timesteps,
/// sigmas, every step's sample and the image-to-image starting point.
#[test]
fn flow_schedulers_replay_diffusers_trajectories() {
    use beeswax::schedulers::{calculate_shift, SchedulerConfig};
    let text = std::fs::read_to_string(fixture("reference/flux/schedulers.json")).unwrap();
    let reference: SchedulerReference = serde_json::from_str(&text).unwrap();
    let t = load("reference/flux/schedulers.safetensors");
    assert!(reference.cases.len() >= 12);
    for case in &reference.cases {
        let config: SchedulerConfig = serde_json::from_value(case.config.clone()).unwrap();
        let mu = case.image_seq_len.map(|n| calculate_shift(n, &config));
        if let (Some(got), Some(want)) = (mu, case.mu) {
            assert!(
                (got - want).abs() < 1e-12,
                "{}: mu {got} vs {want}",
                case.name
            );
        }
        let (sched, sigmas) = flow_scheduler(case, mu);
        // Bit-equal values (f32 computed as diffusers does); JSON parsing may move the last bit.
        let same = |a: &[f64], b: &[f64]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs().max(1.0))
        };
        assert!(
            same(sched.timesteps(), &case.timesteps),
            "{}: timesteps {:?} vs {:?}",
            case.name,
            sched.timesteps(),
            case.timesteps
        );
        // diffusers' Heun keeps its sigmas interleaved like its timesteps: s0, s1, s1, s2, ...
        let want_sigmas: Vec<f64> = if case.scheduler == "flow_heun" {
            (0..=case.steps)
                .map(|k| case.sigmas[(2 * k).max(1) - 1])
                .collect()
        } else {
            case.sigmas.clone()
        };
        assert!(
            same(&sigmas, &want_sigmas),
            "{}: sigmas {sigmas:?} vs {want_sigmas:?}",
            case.name
        );
        for dtype in [DType::F32, DType::F64] {
            let (mut sched, _) = flow_scheduler(case, mu);
            let draws = (0..case.noise_draws)
                .map(|i| t[&format!("{}/noise_{i}", case.name)].clone())
                .collect();
            let mut noise = Recorded { draws, next: 0 };
            let mut sample = t[&format!("{}/start", case.name)].to_dtype(dtype).unwrap();
            for i in 0..case.timesteps.len() {
                let out = t[&format!("{}/output_{i}", case.name)]
                    .to_dtype(dtype)
                    .unwrap();
                sample = sched.step(&out, i, &sample, &mut noise).unwrap();
                let want = &t[&format!("{}/sample_{i}", case.name)];
                let (diff, _) = common::max_diff_and_std(&sample, want);
                let scale = want
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    diff <= 2e-5 * scale.max(1.0),
                    "{} {dtype:?} step {i}: |diff| {diff} (max |x| {scale})",
                    case.name
                );
            }
            assert_eq!(noise.next, case.noise_draws, "{}: noise draws", case.name);
        }
        if let Some(i2i) = &case.img2img {
            let init = (case.steps as f64 * i2i.strength).min(case.steps as f64);
            let t_start = (case.steps as f64 - init).max(0.0) as usize;
            assert_eq!(t_start * sched.order(), i2i.begin_index, "{}", case.name);
            let got = sched
                .add_noise(
                    &t[&format!("{}/img2img_original", case.name)],
                    &t[&format!("{}/img2img_noise", case.name)],
                    i2i.begin_index,
                )
                .unwrap();
            assert_close_rel_std(
                &format!("{} img2img start", case.name),
                &got,
                &t[&format!("{}/img2img_noised", case.name)],
                1e-5,
            );
        }
    }
}
