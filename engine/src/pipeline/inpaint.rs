//! Inpainting, as diffusers' `StableDiffusionInpaintPipeline.__call__`, with AUTOMATIC1111's
//! options around it: encode the prompt, cut out and fit the picture and mask, encode, denoise
//! (an inpainting model sees the mask and the masked picture; an ordinary one gets the known
//! region blended back after every step), decode, and paste the result back over the original
//! outside the mask.
//!
//! The latent-space mask is diffusers': the (blurred) mask binarised at 0.5, then
//! nearest-downsampled. The paste-back uses the blurred mask, doubled in "whole picture" mode
//! as AUTOMATIC1111 does, so pixels outside the unblurred mask keep their original values.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use super::denoise::{Guidance, Hooks};
use super::inpaint_region::{matched_mask, region, Region};
use super::refiner::{denoise_and_refine, handoff, BaseRun, Refine};
use super::stages::{
    decode_all, encode_prompts, image_tensor, noise_or, start_index, Generated, StageTimes,
    StepProgress,
};
use super::{ImageInput, MaskInput, MaskedContent, Settings};
use crate::family::Model;
use crate::image_in::{composite, fill_masked, resize_image, ResizeMode, RgbImage};
use crate::noise::{BatchNoise, NoiseSource};
use crate::prompt::EmbeddingCatalog;
use crate::schedulers::Scheduler;
use crate::Result;

/// The latents an inpainting job starts from and keeps.
struct Prepared {
    /// Where the picture and the results go.
    region: Region,
    /// The binarised mask at latent size, `[batch, 1, h, w]` (1 = repaint).
    latent_mask: Tensor,
    /// The picture's latents, when an ordinary model blends them back (or strength < 1).
    known: Option<Tensor>,
    /// The noise added to them.
    noise: Tensor,
    /// An inpainting model's extra channels: mask and masked-picture latents.
    extra: Option<Tensor>,
}

/// Runs an inpainting job with `scheduler` and a second copy of it, `noiser`, that noises the
/// known region while the first steps. With `refine`, its refiner continues from the switch
/// point with the known region blended back after each of its steps (as AUTOMATIC1111 swaps
/// the model mid-sampling; the refiner's denoiser takes the latents alone). `on_step` is
/// called after every step; `Break` cancels.
pub fn inpaint(
    model: &Model,
    settings: &Settings,
    embeddings: &EmbeddingCatalog,
    (image, mask): (&ImageInput, &MaskInput),
    (mut scheduler, noiser): (Box<dyn Scheduler>, Box<dyn Scheduler>),
    refine: Option<Refine>,
    on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
) -> Result<Generated> {
    let start = start_index(
        scheduler.as_ref(),
        model.family.scheduler_kind,
        settings.steps,
        image.strength,
    )?;
    let inpaint_model = model.is_inpainting()?;
    let train = model.scheduler_config.num_train_timesteps;
    let refine_from = refine
        .as_ref()
        .map(|r| handoff(scheduler.as_ref(), train, start, r.refiner.switch_at).refiner_start);
    let mut warnings = Vec::new();
    let mut times = StageTimes::default();

    // 1. Encode the prompt.
    let clock = Instant::now();
    let text = encode_prompts(model, settings, embeddings, &mut warnings)?;
    times.text_encoding = clock.elapsed();

    // 2. Cut out, fit, encode and noise the picture; one generator per image draws, in
    //    diffusers' order, the picture's posterior sample, the noise, the masked picture's.
    let clock = Instant::now();
    let mut rng = BatchNoise::new(settings.seed, settings.batch);
    let refining = refine_from.is_some();
    let p = prepare(
        model,
        settings,
        (image, mask),
        refining,
        &mut rng,
        &mut warnings,
    )?;
    let latents = match &p.known {
        Some(known) if image.strength < 1.0 => scheduler.add_noise(known, &p.noise, start)?,
        _ => (&p.noise * scheduler.init_noise_sigma())?,
    };
    times.decoding = clock.elapsed();

    // 3. Denoise; an ordinary model (and a refiner) gets the known region, noised to the next
    //    step's level (clean after the last step), blended back after every step.
    let clock = Instant::now();
    let last = scheduler.timesteps().len() - 1;
    let keep_mask = p.latent_mask.affine(-1.0, 1.0)?;
    let mut blend = |i: usize, latents: Tensor| -> Result<Tensor> {
        let blends = !inpaint_model || refine_from.is_some_and(|from| i >= from);
        let Some(known) = p.known.as_ref().filter(|_| blends) else {
            return Ok(latents);
        };
        let known = if i < last {
            noiser.add_noise(known, &p.noise, i + 1)?
        } else {
            known.clone()
        };
        Ok((known.broadcast_mul(&keep_mask)? + latents.broadcast_mul(&p.latent_mask)?)?)
    };
    let guidance = Guidance {
        text: &text,
        scale: settings.guidance,
        extra_channels: p.extra.as_ref(),
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
        after_step: &mut blend,
        on_step,
    };
    let (latents, decoder) = denoise_and_refine(model, refine, run, latents, hooks, &mut warnings)?;
    times.denoising = clock.elapsed();

    // 4. Decode each image (with the refiner's VAE after a hand-off) and paste it back over
    //    the original outside the mask.
    let clock = Instant::now();
    let images = paste_back(&p.region, decode_all(decoder, &latents)?);
    times.decoding += clock.elapsed();
    Ok(Generated {
        latents,
        images,
        warnings,
        embeddings: text.embeddings(),
        times,
    })
}

/// The decoded images fitted to where they go and pasted over the canvas with the mask.
fn paste_back(region: &Region, decoded: Vec<RgbImage>) -> Vec<RgbImage> {
    let (x, y, pw, ph) = region.paste;
    decoded
        .into_iter()
        .map(|generated| {
            let generated = resize_image(&generated, pw, ph, ResizeMode::Crop);
            composite(&region.canvas, &generated, &region.overlay, (x, y))
        })
        .collect()
}

/// Fits the picture and mask, fills the masked region if asked, and encodes and noises; the
/// picture's latents are kept for an inpainting model too when a refiner blends them back.
fn prepare(
    model: &Model,
    settings: &Settings,
    (image, mask): (&ImageInput, &MaskInput),
    refining: bool,
    rng: &mut BatchNoise,
    warnings: &mut Vec<String>,
) -> Result<Prepared> {
    let (batch, device) = (settings.batch, &model.device);
    let inpaint_model = model.is_inpainting()?;
    let matched = matched_mask(&mask.mask, &image.picture, warnings)?;
    let region = region(image, mask, &matched, settings.width, settings.height)?;
    let start_picture = match mask.content {
        MaskedContent::Fill => fill_masked(&region.picture, &region.mask),
        _ => region.picture.clone(),
    };
    let binary = region.mask.binarized();
    let shape = model.latent_shape(batch, settings.width, settings.height);
    let (h, w) = (shape[2], shape[3]);
    let latent_mask = Tensor::from_vec(binary.nearest(w, h).data, (1, 1, h, w), device)?
        .repeat((batch, 1, 1, 1))?;

    let pixels = image_tensor(&start_picture, device)?;
    let known = if !inpaint_model || image.strength < 1.0 {
        Some(
            model
                .vae
                .encode(&pixels, batch, image.sample_posterior, rng)?,
        )
    } else {
        None
    };
    let noise = noise_or(
        image.init_noise.as_ref(),
        "init noise shape",
        &shape,
        device,
        rng,
    )?;
    let extra = if inpaint_model {
        let keep = Tensor::from_vec(
            binary.data.iter().map(|&m| 1.0 - m).collect::<Vec<f32>>(),
            (1, 1, settings.height, settings.width),
            device,
        )?;
        let masked = model.vae.encode(
            &pixels.broadcast_mul(&keep)?,
            batch,
            image.sample_posterior,
            rng,
        )?;
        Some(Tensor::cat(&[&latent_mask, &masked], 1)?)
    } else {
        None
    };
    let known = match known {
        // The posterior mean draws no noise: the job's generators are left as they were.
        None if refining => {
            let mut none = BatchNoise::new(0, batch);
            Some(model.vae.encode(&pixels, batch, false, &mut none)?)
        }
        known => known,
    };
    let known = match (known, mask.content) {
        (Some(latents), MaskedContent::LatentNoise) => {
            let fresh = rng.randn_like(&latents)?;
            let keep = latent_mask.affine(-1.0, 1.0)?;
            Some((latents.broadcast_mul(&keep)? + fresh.broadcast_mul(&latent_mask)?)?)
        }
        (latents, _) => latents,
    };
    Ok(Prepared {
        region,
        latent_mask,
        known,
        noise,
        extra,
    })
}
