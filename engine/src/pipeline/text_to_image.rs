//! Text-to-image, as diffusers' `StableDiffusionPipeline.__call__`: check inputs, encode the
//! prompt, prepare latents, denoise with classifier-free guidance, decode.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::denoise::{denoise, Conditioning, Hooks};
use super::image_to_image::{repaint_everything, unet_kind};
use super::{encode_prompt, StableDiffusion};
use crate::image_out::{to_rgb8, RgbImage};
use crate::noise::BatchNoise;
use crate::{schedulers, Error, Result};

/// One text-to-image job.
#[derive(Debug, Clone)]
pub struct TextToImage {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from (used only when guidance > 1).
    pub negative_prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; at or below 1 the unconditional pass is skipped.
    pub guidance: f64,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Seed of the first image; image `i` of the batch uses `seed + i`.
    pub seed: u64,
    /// Images to make.
    pub batch: usize,
    /// CLIP skip, AUTOMATIC1111 semantics (1 = last layer).
    pub clip_skip: usize,
    /// Scheduler name (canonical or alias).
    pub scheduler: String,
    /// Standard-normal starting noise [batch, C, H/f, W/f] to use instead of seeded noise;
    /// scaled by the scheduler's initial sigma like diffusers' `latents=` argument.
    pub init_latents: Option<Tensor>,
}

/// Where a running job is.
#[derive(Debug, Clone)]
pub struct StepProgress {
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
    /// Time since denoising started.
    pub elapsed: Duration,
    /// The latents after this step (a cheap handle, not a copy), for previews.
    pub latents: Tensor,
}

/// Wall-clock time per stage of a job.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    /// Tokenizing and running the text encoder.
    pub text_encoding: Duration,
    /// The denoising loop.
    pub denoising: Duration,
    /// VAE decoding and conversion to 8-bit.
    pub decoding: Duration,
}

/// What a job produced.
#[derive(Debug)]
pub struct Generated {
    /// Final denoised latents [batch, C, h, w], before VAE scaling and decoding (f32).
    pub latents: Tensor,
    /// The decoded images.
    pub images: Vec<RgbImage>,
    /// Things the user should know (e.g. a truncated prompt).
    pub warnings: Vec<String>,
    /// Time per stage.
    pub times: StageTimes,
}

/// Validates the job against the model before any tensor work, naming the value at fault.
pub(super) fn check_inputs(model: &StableDiffusion, job: &TextToImage) -> Result<()> {
    let f = model.vae_scale_factor();
    for (name, v) in [("width", job.width), ("height", job.height)] {
        if v == 0 || v % f != 0 || v > 8192 {
            return Err(Error::invalid(
                name,
                v,
                format!("must be a positive multiple of {f} (the VAE scale factor), at most 8192"),
            ));
        }
    }
    if !(1..=1000).contains(&job.steps) {
        return Err(Error::invalid(
            "steps",
            job.steps,
            "must be between 1 and 1000",
        ));
    }
    if !(0.0..=100.0).contains(&job.guidance) {
        return Err(Error::invalid(
            "guidance",
            job.guidance,
            "must be between 0 and 100",
        ));
    }
    if !(1..=64).contains(&job.batch) {
        return Err(Error::invalid(
            "batch",
            job.batch,
            "must be between 1 and 64",
        ));
    }
    Ok(())
}

/// Runs a text-to-image job. `on_step` is called after every step; returning
/// `ControlFlow::Break` cancels the job ([`Error::Cancelled`]).
pub fn text_to_image(
    model: &StableDiffusion,
    job: &TextToImage,
    on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
) -> Result<Generated> {
    check_inputs(model, job)?;
    let mut scheduler = schedulers::build(&job.scheduler, &model.scheduler_config, job.steps)?;
    let mut warnings = Vec::new();
    let mut times = StageTimes::default();
    let guided = job.guidance > 1.0;

    // 1. Encode the prompt (and the negative prompt when guiding): [uncond; cond] per image.
    let start = Instant::now();
    let cond = encode_prompt(model, &job.prompt, job.clip_skip, &mut warnings)?;
    let cond = cond.repeat((job.batch, 1, 1))?;
    let context = if guided {
        let uncond = encode_prompt(model, &job.negative_prompt, job.clip_skip, &mut warnings)?;
        Tensor::cat(&[&uncond.repeat((job.batch, 1, 1))?, &cond], 0)?
    } else {
        cond
    };
    times.text_encoding = start.elapsed();

    // 2. Prepare the starting latents: unit noise scaled by the scheduler's initial sigma.
    let f = model.vae_scale_factor();
    let shape = [
        job.batch,
        model.vae_config.latent_channels,
        job.height / f,
        job.width / f,
    ];
    // An inpainting UNet (9 input channels) draws from scratch with an all-repaint mask.
    let extra = if unet_kind(model)? == shape[1] {
        None
    } else {
        Some(repaint_everything(model, job.batch, job.width, job.height)?)
    };
    // One generator per image: it draws the starting noise, then any noise the scheduler needs.
    let mut rng = BatchNoise::new(job.seed, job.batch);
    let noise = match &job.init_latents {
        Some(t) if t.dims() != shape => {
            return Err(Error::invalid(
                "init latents shape",
                format!("{:?}", t.dims()),
                format!("expected {shape:?} (batch, latent channels, height/{f}, width/{f})"),
            ))
        }
        Some(t) => t.to_dtype(DType::F32)?.to_device(&model.device)?,
        None => rng.randn(&shape, &model.device)?,
    };
    let latents = (noise * scheduler.init_noise_sigma())?;

    // 3. Denoise.
    let start = Instant::now();
    let conditioning = Conditioning {
        context: &context,
        guidance: job.guidance,
        extra_channels: extra.as_ref(),
    };
    let latents = denoise(
        model,
        scheduler.as_mut(),
        latents,
        &conditioning,
        0,
        Hooks {
            noise: &mut rng,
            after_step: &mut |_, latents| Ok(latents),
            on_step,
        },
    )?;
    times.denoising = start.elapsed();

    // 4. Decode, one image at a time to bound memory.
    let start = Instant::now();
    let images = (0..job.batch)
        .map(|i| decode(model, &latents.narrow(0, i, 1)?))
        .collect::<Result<Vec<_>>>()?;
    times.decoding = start.elapsed();
    Ok(Generated {
        latents,
        images,
        warnings,
        times,
    })
}

/// Decodes latents [1, C, h, w] (UNet space) to an 8-bit image.
pub fn decode(model: &StableDiffusion, latents: &Tensor) -> Result<RgbImage> {
    let c = &model.vae_config;
    let mut z = (latents / c.scaling_factor)?;
    if let Some(shift) = c.shift_factor {
        z = (z + shift)?;
    }
    let image = model.vae_decoder.forward(&z.to_dtype(model.vae_dtype)?)?;
    to_rgb8(&image.squeeze(0)?)
}
