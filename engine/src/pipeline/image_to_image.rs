//! Image-to-image, as diffusers' `StableDiffusionImg2ImgPipeline.__call__`: check inputs,
//! encode the prompt, fit and encode the picture, noise it to the step where `strength` says
//! denoising starts, denoise the remaining steps, decode.
//!
//! The picture is encoded to the mean of the VAE's latent distribution by default (so the same
//! picture always gives the same latents); `sample_posterior` draws from it instead, with the
//! job's seeded generators, as diffusers does with `generator=`.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::denoise::{denoise, Conditioning, Hooks};
use super::text_to_image::decode;
use super::{encode_prompt, Generated, StableDiffusion, StageTimes, StepProgress, TextToImage};
use crate::image_in::{resize_image, ResizeMode, RgbImage};
use crate::noise::{BatchNoise, NoiseSource};
use crate::{schedulers, Error, Result};

/// One image-to-image job.
#[derive(Debug, Clone)]
pub struct ImageToImage {
    /// Prompt, steps, guidance, size, seed, batch, CLIP skip and scheduler. `init_latents`
    /// must be `None` (the starting noise of image-to-image is [`ImageToImage::init_noise`]).
    pub base: TextToImage,
    /// The picture to start from, any size: it is fitted to `base.width × base.height`.
    pub init_image: RgbImage,
    /// How much to repaint, in (0, 1]: the first `1 - strength` of the steps are skipped.
    pub strength: f64,
    /// How the picture is fitted when its size differs from the job's.
    pub resize: ResizeMode,
    /// Sample the VAE's latent distribution instead of taking its mean.
    pub sample_posterior: bool,
    /// Standard-normal noise [batch, latent channels, height/f, width/f] added to the picture's
    /// latents instead of seeded noise (to compare with diffusers given the same noise).
    pub init_noise: Option<Tensor>,
}

/// Runs an image-to-image job. `on_step` is called after every step; returning
/// `ControlFlow::Break` cancels the job ([`Error::Cancelled`]).
pub fn image_to_image(
    model: &StableDiffusion,
    job: &ImageToImage,
    on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
) -> Result<Generated> {
    let base = &job.base;
    check_inputs(model, base, job.strength)?;
    let in_channels = unet_kind(model)?;
    let mut scheduler = schedulers::build(&base.scheduler, &model.scheduler_config, base.steps)?;
    let start = start_index(scheduler.as_ref(), base.steps, job.strength)?;
    let mut warnings = Vec::new();
    let mut times = StageTimes::default();

    // 1. Encode the prompt.
    let clock = Instant::now();
    let context = prompt_context(model, base, &mut warnings)?;
    times.text_encoding = clock.elapsed();

    // 2. Fit and encode the picture (VAE time counts as decoding time), then noise it to the
    //    level where step `start` begins. The seeded generators draw, per image, the posterior
    //    sample (if asked) and then the noise, as diffusers' generators do.
    let clock = Instant::now();
    let picture = resize_image(&job.init_image, base.width, base.height, job.resize);
    let pixels = image_tensor(&picture, &model.device)?;
    let mut rng = BatchNoise::new(base.seed, base.batch);
    let image_latents = encode_image(model, &pixels, base.batch, job.sample_posterior, &mut rng)?;
    let noise = initial_noise(job.init_noise.as_ref(), &image_latents, &mut rng)?;
    let latents = scheduler.add_noise(&image_latents, &noise, start)?;
    let extra = if in_channels == 9 {
        Some(repaint_everything(
            model,
            base.batch,
            base.width,
            base.height,
        )?)
    } else {
        None
    };
    times.decoding = clock.elapsed();

    // 3. Denoise from step `start`.
    let clock = Instant::now();
    let conditioning = Conditioning {
        context: &context,
        guidance: base.guidance,
        extra_channels: extra.as_ref(),
    };
    let latents = denoise(
        model,
        scheduler.as_mut(),
        latents,
        &conditioning,
        start,
        Hooks {
            noise: &mut rng,
            after_step: &mut |_, latents| Ok(latents),
            on_step,
        },
    )?;
    times.denoising = clock.elapsed();

    // 4. Decode, one image at a time to bound memory.
    let clock = Instant::now();
    let images = (0..base.batch)
        .map(|i| decode(model, &latents.narrow(0, i, 1)?))
        .collect::<Result<Vec<_>>>()?;
    times.decoding += clock.elapsed();
    Ok(Generated {
        latents,
        images,
        warnings,
        times,
    })
}

/// Validates the settings shared by image-to-image and inpainting, naming the value at fault.
pub(super) fn check_inputs(
    model: &StableDiffusion,
    job: &TextToImage,
    strength: f64,
) -> Result<()> {
    super::text_to_image::check_inputs(model, job)?;
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::invalid(
            "strength",
            strength,
            "must be above 0 and at most 1 (the share of the steps that repaint the picture)",
        ));
    }
    if job.init_latents.is_some() {
        return Err(Error::invalid(
            "init latents",
            "given",
            "image-to-image starts from the picture: pass the noise as `init_noise` (--init-noise)",
        ));
    }
    Ok(())
}

/// The UNet's input channels: 4 (ordinary) or 9 (inpainting: latents, mask, masked picture).
pub(super) fn unet_kind(model: &StableDiffusion) -> Result<usize> {
    let latent = model.vae_config.latent_channels;
    match model.unet.config().in_channels {
        c if c == latent || c == 2 * latent + 1 => Ok(c),
        c => Err(Error::Config {
            path: model.dir.join("unet/config.json"),
            message: format!(
                "`in_channels` {c} is neither {latent} (the VAE's latent channels) nor {} \
                 (an inpainting UNet: latents, mask and masked-picture latents)",
                2 * latent + 1
            ),
        }),
    }
}

/// The index of the first step to run for `strength`, as diffusers' `get_timesteps`:
/// `order · (steps - min(floor(steps · strength), steps))`.
pub(super) fn start_index(
    scheduler: &dyn schedulers::Scheduler,
    steps: usize,
    strength: f64,
) -> Result<usize> {
    let run = ((steps as f64 * strength) as usize).min(steps);
    if run == 0 {
        return Err(Error::invalid(
            "strength",
            strength,
            format!(
                "with {steps} steps leaves no step to run (steps × strength < 1); raise the \
                 strength or the steps"
            ),
        ));
    }
    let start = (steps - run) * scheduler.order();
    if start >= scheduler.timesteps().len() {
        return Err(Error::invalid(
            "strength",
            strength,
            format!("starts past the end of the {steps}-step schedule"),
        ));
    }
    Ok(start)
}

/// The text states for the job: [cond] per image, or [uncond; cond] when guided.
pub(super) fn prompt_context(
    model: &StableDiffusion,
    job: &TextToImage,
    warnings: &mut Vec<String>,
) -> Result<Tensor> {
    let cond = encode_prompt(model, &job.prompt, job.clip_skip, warnings)?;
    let cond = cond.repeat((job.batch, 1, 1))?;
    if job.guidance > 1.0 {
        let uncond = encode_prompt(model, &job.negative_prompt, job.clip_skip, warnings)?;
        Ok(Tensor::cat(
            &[&uncond.repeat((job.batch, 1, 1))?, &cond],
            0,
        )?)
    } else {
        Ok(cond)
    }
}

/// An 8-bit picture as a [1, 3, H, W] f32 tensor in [-1, 1], as diffusers' image processor.
pub(super) fn image_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = image.data.iter().map(|&v| v as f32 / 255.0).collect();
    let t = Tensor::from_vec(data, (image.height, image.width, 3), &Device::Cpu)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?;
    Ok(((t * 2.0)? - 1.0)?.contiguous()?.to_device(device)?)
}

/// VAE-encodes pixels [1, 3, H, W] in [-1, 1] to UNet-space latents [batch, C, H/f, W/f]:
/// the distribution's mean, or with `sample` a draw `mean + std · ε` with ε from `rng`.
pub(super) fn encode_image(
    model: &StableDiffusion,
    pixels: &Tensor,
    batch: usize,
    sample: bool,
    rng: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let (mean, logvar) = model
        .vae_encoder
        .forward(&pixels.to_dtype(model.vae_dtype)?)?;
    let mean = mean.to_dtype(DType::F32)?.repeat((batch, 1, 1, 1))?;
    let z = if sample {
        let std = (logvar.to_dtype(DType::F32)? * 0.5)?
            .exp()?
            .repeat((batch, 1, 1, 1))?;
        (&mean + (std * rng.randn_like(&mean)?)?)?
    } else {
        mean
    };
    let c = &model.vae_config;
    let z = match c.shift_factor {
        Some(shift) => (z - shift)?,
        None => z,
    };
    Ok((z * c.scaling_factor)?)
}

/// The extra UNet channels that let an inpainting UNet repaint everything: mask all ones and
/// the latents of an all-grey picture (zeros in [-1, 1]), as AUTOMATIC1111 conditions such
/// models for text-to-image and image-to-image. [batch, 1 + C, H/f, W/f].
pub(super) fn repaint_everything(
    model: &StableDiffusion,
    batch: usize,
    width: usize,
    height: usize,
) -> Result<Tensor> {
    let grey = Tensor::zeros((1, 3, height, width), DType::F32, &model.device)?;
    // The posterior mean draws no noise.
    let masked = encode_image(model, &grey, batch, false, &mut BatchNoise::new(0, batch))?;
    let (b, _, h, w) = masked.dims4()?;
    let ones = Tensor::ones((b, 1, h, w), DType::F32, &model.device)?;
    Ok(Tensor::cat(&[&ones, &masked], 1)?)
}

/// The noise added to the picture's latents: the caller's (checked against `like`'s shape),
/// else drawn from `rng`.
pub(super) fn initial_noise(
    given: Option<&Tensor>,
    like: &Tensor,
    rng: &mut dyn NoiseSource,
) -> Result<Tensor> {
    match given {
        Some(t) if t.dims() != like.dims() => Err(Error::invalid(
            "init noise shape",
            format!("{:?}", t.dims()),
            format!(
                "expected {:?} (batch, latent channels, height/f, width/f)",
                like.dims()
            ),
        )),
        Some(t) => Ok(t.to_dtype(DType::F32)?.to_device(like.device())?),
        None => Ok(rng.randn_like(like)?),
    }
}
