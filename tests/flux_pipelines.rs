//! Whole FLUX.1 runs assembled from beeswax's components, against diffusers' FluxPipeline and
//! FluxImg2ImgPipeline from the same starting noise (`reference/flux/pipe_*.safetensors`, made
//! by `tests/fixtures/make_flux_fixtures.py`): text encoding (CLIP pooled output + T5), the
//! denoising loop with flow Euler or flow DPM++ 2M, image-to-image, a kohya and a PEFT LoRA
//! merged into the weights, unpacking and the VAE decode with its shift.
//!
//! This is the loop the FLUX pipeline runs, written out in the test; the engine's pipeline
//! wiring is checked against the same references by its own tests.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;

use beeswax::models::clip::{ClipTextConfig, ClipTextModel};
use beeswax::models::config_file::read_json;
use beeswax::models::flux::{self, bfl, FluxConfig, FluxTransformer2DModel};
use beeswax::models::t5::{T5Config, T5EncoderModel};
use beeswax::models::vae::{Decoder, Encoder, VaeConfig};
use beeswax::noise::BatchNoise;
use beeswax::schedulers::{
    calculate_shift, DpmMultistep, DpmVariant, FlowEuler, Scheduler, SchedulerConfig,
};
use beeswax::tokenizer::{t5::T5Tokenizer, ClipTokenizer};
use beeswax::weights;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::conformance::Run;
use common::images::assert_conforms;
use common::{assert_close_rel_std, fixture, load};

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    model: String,
    mode: String,
    sampler: String,
    width: usize,
    height: usize,
    steps: usize,
    guidance: f64,
    seed: u64,
    prompt: String,
    max_sequence_length: usize,
    strength: Option<f64>,
    lora: Option<String>,
}

/// The components of one miniature FLUX model.
struct Flux {
    clip_tokenizer: ClipTokenizer,
    clip: ClipTextModel,
    t5_tokenizer: T5Tokenizer,
    t5: T5EncoderModel,
    transformer: FluxTransformer2DModel,
    decoder: Decoder,
    encoder: Encoder,
    vae: VaeConfig,
    scheduler: SchedulerConfig,
}

fn weights_of(dir: &std::path::Path, file: &str) -> VarBuilder<'static> {
    weights::var_builder(&dir.join(file), DType::F32, &Device::Cpu).unwrap()
}

impl Flux {
    fn load(model: &str, lora: Option<&str>) -> Self {
        let dir = fixture(&format!("models/tiny-flux-{model}"));
        let clip_config: ClipTextConfig = read_json(&dir.join("text_encoder/config.json")).unwrap();
        let t5_config = T5Config::from_file(&dir.join("text_encoder_2/config.json")).unwrap();
        let config = FluxConfig::from_file(&dir.join("transformer/config.json")).unwrap();
        let vae: VaeConfig = read_json(&dir.join("vae/config.json")).unwrap();
        let vae_vb = weights_of(&dir.join("vae"), "diffusion_pytorch_model.safetensors");
        let transformer_file = dir.join("transformer/diffusion_pytorch_model.safetensors");
        let transformer_vb = match lora {
            None => weights::var_builder(&transformer_file, DType::F32, &Device::Cpu).unwrap(),
            Some(lora) => merged(&transformer_file, &fixture(lora), &config),
        };
        Self {
            clip_tokenizer: ClipTokenizer::from_dir(&dir.join("tokenizer")).unwrap(),
            clip: ClipTextModel::new(
                weights_of(&dir.join("text_encoder"), "model.safetensors"),
                &clip_config,
            )
            .unwrap(),
            t5_tokenizer: T5Tokenizer::from_dir(&dir.join("tokenizer_2")).unwrap(),
            t5: T5EncoderModel::new(
                weights_of(&dir.join("text_encoder_2"), "model.safetensors"),
                &t5_config,
            )
            .unwrap(),
            transformer: FluxTransformer2DModel::new(transformer_vb, &config).unwrap(),
            decoder: Decoder::new(vae_vb.clone(), &vae).unwrap(),
            encoder: Encoder::new(vae_vb, &vae).unwrap(),
            vae,
            scheduler: SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))
                .unwrap(),
        }
    }

    /// FluxPipeline.encode_prompt: T5 states `[1, L, D]` and CLIP's pooled output `[1, P]`.
    fn encode(&self, prompt: &str, max_sequence_length: usize) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let ids = self
            .t5_tokenizer
            .encode(prompt, max_sequence_length)
            .unwrap()
            .ids;
        let ids = Tensor::new(ids.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let t5 = self.t5.forward(&ids).unwrap();
        let clip_ids = self.clip_tokenizer.encode(prompt).unwrap().ids;
        // The pooled output is the final-normed state at the first end-of-text token.
        let eos = *clip_ids.iter().max().unwrap();
        let at = clip_ids.iter().position(|&id| id == eos).unwrap();
        let clip_ids = Tensor::new(clip_ids.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = self
            .clip
            .forward(&clip_ids, self.clip.num_layers())
            .unwrap();
        (t5, hidden.narrow(1, at, 1).unwrap().squeeze(1).unwrap())
    }

    fn vae_scale_factor(&self) -> usize {
        self.vae.scale_factor()
    }
}

/// The transformer's weights with a LoRA merged in (`W += scale · up · down`): PEFT files name
/// diffusers modules, kohya files name the original (BFL) modules, mapped with
/// [`bfl::tensor_map`] (rows of fused matrices, the final layer's swapped halves).
fn merged(
    file: &std::path::Path,
    lora: &std::path::Path,
    config: &FluxConfig,
) -> VarBuilder<'static> {
    let mut w = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    let l = candle_core::safetensors::load(lora, &Device::Cpu).unwrap();
    let mut applied = 0;
    for (key, down) in l.iter().filter(|(k, _)| k.ends_with(".lora_A.weight")) {
        let module = key
            .strip_prefix("transformer.")
            .unwrap()
            .strip_suffix(".lora_A.weight")
            .unwrap();
        let up = &l[&key.replace("lora_A", "lora_B")];
        let target = w.get_mut(&format!("{module}.weight")).unwrap();
        *target = (&*target + up.matmul(down).unwrap()).unwrap();
        applied += 1;
    }
    let map = bfl::tensor_map(config);
    for (key, down) in l.iter().filter(|(k, _)| k.ends_with(".lora_down.weight")) {
        let kohya = key.strip_suffix(".lora_down.weight").unwrap();
        let up = &l[&format!("{kohya}.lora_up.weight")];
        let alpha = l[&format!("{kohya}.alpha")].to_scalar::<f32>().unwrap() as f64;
        let delta = (up.matmul(down).unwrap() * (alpha / down.dim(0).unwrap() as f64)).unwrap();
        let targets: Vec<_> = map
            .iter()
            .filter(|(_, b)| b.name.ends_with(".weight"))
            .filter(|(_, b)| {
                format!(
                    "lora_unet_{}",
                    b.name.trim_end_matches(".weight").replace('.', "_")
                ) == kohya
            })
            .collect();
        assert!(!targets.is_empty(), "{kohya} matches no BFL module");
        for (name, b) in targets {
            let part = match b.part {
                bfl::Part::Whole => delta.clone(),
                bfl::Part::Rows { start, len } => delta.narrow(0, start, len).unwrap(),
                bfl::Part::SwappedHalves => {
                    let half = delta.dim(0).unwrap() / 2;
                    Tensor::cat(
                        &[
                            delta.narrow(0, half, half).unwrap(),
                            delta.narrow(0, 0, half).unwrap(),
                        ],
                        0,
                    )
                    .unwrap()
                }
            };
            let target = w.get_mut(name).unwrap();
            *target = (&*target + part).unwrap();
        }
        applied += 1;
    }
    assert!(applied >= 6, "only {applied} LoRA modules applied");
    VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)
}

/// The denoising loop from `index` on, over packed latents.
#[allow(clippy::too_many_arguments)]
fn denoise(
    flux: &Flux,
    scheduler: &mut dyn Scheduler,
    start: usize,
    latents: Tensor,
    (lh, lw): (usize, usize),
    txt: &Tensor,
    pooled: &Tensor,
    guidance: Option<f64>,
) -> Tensor {
    let dev = Device::Cpu;
    let img_ids = flux::image_ids(lh / 2, lw / 2, &dev).unwrap();
    let txt_ids = flux::text_ids(txt.dim(1).unwrap(), &dev).unwrap();
    let guidance = guidance.map(|g| Tensor::new(&[g as f32], &dev).unwrap());
    let mut x = flux::pack_latents(&latents).unwrap();
    let mut noise = BatchNoise::new(0, 1);
    for i in start..scheduler.timesteps().len() {
        // FluxPipeline passes the f32 timestep divided by 1000 (f32).
        let t = Tensor::new(&[scheduler.timesteps()[i] as f32 / 1000.0], &dev).unwrap();
        let input = scheduler.scale_model_input(&x, i).unwrap();
        let v = flux
            .transformer
            .forward(
                &input,
                &img_ids,
                txt,
                &txt_ids,
                &t,
                guidance.as_ref(),
                pooled,
            )
            .unwrap();
        x = scheduler.step(&v, i, &x, &mut noise).unwrap();
    }
    flux::unpack_latents(&x, lh, lw).unwrap()
}

/// `vae.decode(latents / scaling + shift)`, post-processed to u8 `[H, W, 3]` as diffusers'
/// `image_processor.postprocess(output_type="np")` then `(x * 255).round()`.
fn decode(flux: &Flux, latents: &Tensor) -> Tensor {
    let z = latents
        .affine(
            1.0 / flux.vae.scaling_factor,
            flux.vae.shift_factor.unwrap(),
        )
        .unwrap();
    let image = flux.decoder.forward(&z).unwrap();
    ((image / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap()
        .affine(255.0, 0.0)
        .unwrap()
        .round()
        .unwrap()
}

/// Image-to-image's start: the posterior sample of the picture (drawn first from the seed's
/// generator), scaled and shifted, then noised with the generator's second draw to where
/// the skipped steps end.
fn img2img_start(
    flux: &Flux,
    r: &HashMap<String, Tensor>,
    seed: u64,
    lh: usize,
    lw: usize,
) -> (Tensor, Tensor) {
    let picture = r["init_image"]
        .to_dtype(DType::F32)
        .unwrap()
        .permute((2, 0, 1))
        .unwrap();
    let picture = (picture.unsqueeze(0).unwrap() / 127.5)
        .unwrap()
        .affine(1.0, -1.0)
        .unwrap();
    let (mean, logvar) = flux.encoder.forward(&picture).unwrap();
    let mut generator = BatchNoise::new(seed, 1);
    let eps = generator.randn(&[1, 16, lh, lw], &Device::Cpu).unwrap();
    let sample = (mean + (logvar * 0.5).unwrap().exp().unwrap() * eps).unwrap();
    let shift = flux.vae.shift_factor.unwrap();
    let image_latents = sample
        .affine(flux.vae.scaling_factor, -shift * flux.vae.scaling_factor)
        .unwrap();
    let noise = generator.randn(&[1, 16, lh, lw], &Device::Cpu).unwrap();
    (image_latents, noise)
}

fn run(case: &Case) {
    let flux = Flux::load(&case.model, case.lora.as_deref());
    let r = load(&format!("reference/flux/pipe_{}.safetensors", case.name));
    let (txt, pooled) = flux.encode(&case.prompt, case.max_sequence_length);
    assert_close_rel_std(
        &format!("{} T5 states", case.name),
        &txt,
        &r["prompt_embeds"],
        1e-4,
    );
    assert_close_rel_std(
        &format!("{} pooled", case.name),
        &pooled,
        &r["pooled_prompt_embeds"],
        1e-4,
    );

    let (lh, lw) = flux::latent_size(case.height, case.width, flux.vae_scale_factor());
    let mu = calculate_shift((lh / 2) * (lw / 2), &flux.scheduler);
    let mut scheduler: Box<dyn Scheduler> = match case.sampler.as_str() {
        "flow_euler" => Box::new(FlowEuler::new(&flux.scheduler, case.steps, Some(mu)).unwrap()),
        "flow_dpmpp_2m" => Box::new(
            DpmMultistep::flow(&flux.scheduler, case.steps, DpmVariant::TwoM, Some(mu)).unwrap(),
        ),
        other => panic!("unknown sampler {other}"),
    };
    let want_t: Vec<f32> = r["timesteps"].to_vec1().unwrap();
    let got_t: Vec<f32> = scheduler.timesteps().iter().map(|&t| t as f32).collect();
    assert_eq!(got_t, want_t, "{}: timesteps", case.name);

    let guidance = flux
        .transformer
        .config()
        .guidance_embeds
        .then_some(case.guidance);
    let (start, latents) = match case.mode.as_str() {
        "img2img" => {
            let (image_latents, noise) = img2img_start(&flux, &r, case.seed, lh, lw);
            assert_close_rel_std(
                &format!("{} image latents", case.name),
                &image_latents,
                &r["image_latents"],
                1e-4,
            );
            assert_close_rel_std(
                &format!("{} img2img noise", case.name),
                &noise,
                &r["noise"],
                1e-5,
            );
            let strength = case.strength.unwrap();
            let init = (case.steps as f64 * strength).min(case.steps as f64);
            let begin = (case.steps as f64 - init).max(0.0) as usize * scheduler.order();
            let noised = scheduler.add_noise(&image_latents, &noise, begin).unwrap();
            assert_close_rel_std(
                &format!("{} noised", case.name),
                &noised,
                &r["noised_latents"],
                1e-4,
            );
            (begin, noised)
        }
        _ => (0, r["init_latents"].clone()),
    };
    let latents = denoise(
        &flux,
        scheduler.as_mut(),
        start,
        latents,
        (lh, lw),
        &txt,
        &pooled,
        guidance,
    );
    let image = decode(&flux, &latents);
    let run = Run {
        pipeline: case.mode.clone(),
        // The miniature models are built from their components here, in the shape of the
        // families `flux-dev` and `flux-schnell`.
        family: format!("flux-{}", case.model),
        sampler: case.sampler.clone(),
        lora: case.lora.clone().unwrap_or_default(),
        case: format!("reference/flux/pipe_{}.safetensors", case.name),
    };
    let latents = Some((&latents, &r["latents"], 2e-3));
    assert_conforms(&run, latents, &[image], &r["image"].unsqueeze(0).unwrap());
}

#[derive(serde::Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[test]
fn flux_runs_match_diffusers_pipelines() {
    let text = std::fs::read_to_string(fixture("reference/flux/pipelines.json")).unwrap();
    let cases: Cases = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.cases.len(), 7);
    for case in &cases.cases {
        run(case);
    }
}
