//! Image-to-image, as diffusers' `StableDiffusionImg2ImgPipeline.__call__`: encode the prompt,
//! fit and encode the picture, noise it to the step where `strength` says denoising starts,
//! denoise the remaining steps, decode.
//!
//! The picture is encoded to the mean of the VAE's latent distribution by default (so the same
//! picture always gives the same latents); `sample_posterior` draws from it instead, with the
//! job's seeded generators, as diffusers does with `generator=`.

use std::ops::ControlFlow;
use std::time::Instant;

use super::denoise::{Guidance, Hooks};
use super::refiner::{denoise_and_refine, BaseRun, Refine};
use super::stages::{
    decode_all, encode_prompts, image_tensor, noise_or, repaint_everything, start_index, Generated,
    StageTimes, StepProgress,
};
use super::{ImageInput, Settings};
use crate::family::Model;
use crate::image_in::resize_image;
use crate::noise::BatchNoise;
use crate::prompt::EmbeddingCatalog;
use crate::schedulers::Scheduler;
use crate::Result;

/// Runs an image-to-image job with `scheduler` (built for its steps), handing off to
/// `refine`'s refiner when given (strength first, then the switch). `on_step` is called after
/// every step; `Break` cancels.
pub fn image_to_image(
    model: &Model,
    settings: &Settings,
    embeddings: &EmbeddingCatalog,
    image: &ImageInput,
    mut scheduler: Box<dyn Scheduler>,
    refine: Option<Refine>,
    on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
) -> Result<Generated> {
    let start = start_index(
        scheduler.as_ref(),
        model.family.scheduler_kind,
        settings.steps,
        image.strength,
    )?;
    let mut warnings = Vec::new();
    let mut times = StageTimes::default();

    // 1. Encode the prompt.
    let clock = Instant::now();
    let text = encode_prompts(model, settings, embeddings, &mut warnings)?;
    times.text_encoding = clock.elapsed();

    // 2. Fit and encode the picture (VAE time counts as decoding time), then noise it to the
    //    level where step `start` begins. The seeded generators draw, per image, the posterior
    //    sample (if asked) and then the noise, as diffusers' generators do.
    let clock = Instant::now();
    let picture = resize_image(
        &image.picture,
        settings.width,
        settings.height,
        image.resize,
    );
    let pixels = image_tensor(&picture, &model.device)?;
    let mut rng = BatchNoise::new(settings.seed, settings.batch);
    let latents = model
        .vae
        .encode(&pixels, settings.batch, image.sample_posterior, &mut rng)?;
    let noise = noise_or(
        image.init_noise.as_ref(),
        "init noise shape",
        latents.dims(),
        &model.device,
        &mut rng,
    )?;
    let latents = scheduler.add_noise(&latents, &noise, start)?;
    let extra = if model.is_inpainting()? {
        Some(repaint_everything(model, settings)?)
    } else {
        None
    };
    times.decoding = clock.elapsed();

    // 3. Denoise from step `start`.
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
        start,
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
    times.decoding += clock.elapsed();
    Ok(Generated {
        latents,
        images,
        warnings,
        embeddings: text.embeddings(),
        times,
    })
}
