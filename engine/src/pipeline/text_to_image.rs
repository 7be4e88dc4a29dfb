//! Text-to-image, as diffusers' `StableDiffusionPipeline.__call__`: encode the prompt, prepare
//! latents, denoise with classifier-free guidance (the base, then a refiner from the switch
//! point when the job has one), decode.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use super::denoise::{Guidance, Hooks};
use super::refiner::{denoise_and_refine, BaseRun, Refine};
use super::stages::{
    decode_all, encode_prompts, noise_or, repaint_everything, Generated, StageTimes, StepProgress,
};
use super::Settings;
use crate::family::Model;
use crate::noise::BatchNoise;
use crate::prompt::EmbeddingCatalog;
use crate::schedulers::Scheduler;
use crate::Result;

/// Runs a text-to-image job with `scheduler` (built for its steps) from `init_latents` (unit
/// noise `[batch, C, h, w]`, scaled by the scheduler's initial sigma as diffusers'
/// `latents=`) or seeded noise, handing off to `refine`'s refiner when given. `on_step` is
/// called after every step; `Break` cancels.
pub fn text_to_image(
    model: &Model,
    settings: &Settings,
    embeddings: &EmbeddingCatalog,
    mut scheduler: Box<dyn Scheduler>,
    refine: Option<Refine>,
    init_latents: Option<&Tensor>,
    on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
) -> Result<Generated> {
    let mut warnings = Vec::new();
    let mut times = StageTimes::default();

    // 1. Encode the prompt (and the negative prompt when guiding).
    let clock = Instant::now();
    let text = encode_prompts(model, settings, embeddings, &mut warnings)?;
    times.text_encoding = clock.elapsed();

    // 2. Starting latents: unit noise scaled by the scheduler's initial sigma. One generator
    //    per image draws the starting noise, then any noise the scheduler needs. An
    //    inpainting model draws from scratch with an all-repaint mask.
    let shape = model.latent_shape(settings.batch, settings.width, settings.height);
    let extra = if model.is_inpainting()? {
        Some(repaint_everything(model, settings)?)
    } else {
        None
    };
    let mut rng = BatchNoise::new(settings.seed, settings.batch);
    let noise = noise_or(
        init_latents,
        "init latents shape",
        &shape,
        &model.device,
        &mut rng,
    )?;
    let latents = (noise * scheduler.init_noise_sigma())?;

    // 3. Denoise.
    let clock = Instant::now();
    let guidance = Guidance {
        text: &text,
        scale: settings.guidance,
        extra_channels: extra.as_ref(),
    };
    let run = BaseRun {
        settings,
        embeddings,
        scheduler: scheduler.as_mut(),
        guidance: &guidance,
        start: 0,
    };
    let hooks = Hooks {
        noise: &mut rng,
        after_step: &mut |_, latents| Ok(latents),
        on_step,
    };
    let (latents, decoder) = denoise_and_refine(model, refine, run, latents, hooks, &mut warnings)?;
    times.denoising = clock.elapsed();

    // 4. Decode (with the refiner's VAE after a hand-off).
    let clock = Instant::now();
    let images = decode_all(decoder, &latents)?;
    times.decoding = clock.elapsed();
    Ok(Generated {
        latents,
        images,
        warnings,
        embeddings: text.embeddings(),
        times,
    })
}
