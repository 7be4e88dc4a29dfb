//! The service's text-to-image run: the same steps as [`crate::pipeline::text_to_image`]
//! (prompt encoding, seeded noise, [`denoise`], VAE decoding) with the one addition the HTTP
//! jobs need: the latents handed to the step callback every `preview_every` steps, for
//! previews (`text_to_image`'s callback sees only the step count). `tests/server.rs` checks that
//! its images are byte-identical to `text_to_image`'s for the same settings.

use std::cell::RefCell;
use std::ops::ControlFlow;

use candle_core::{DType, Tensor};

use crate::image_out::{to_rgb8, RgbImage};
use crate::noise::{seeded_noise, BatchNoise};
use crate::pipeline::{
    denoise, encode_prompt, Conditioning, Hooks, StableDiffusion, StepProgress, TextToImage,
};
use crate::schedulers;
use crate::Result;

/// Images and warnings of one run.
#[derive(Debug)]
pub struct Output {
    /// The decoded images.
    pub images: Vec<RgbImage>,
    /// Things the user should know (e.g. a truncated prompt).
    pub warnings: Vec<String>,
}

/// Runs `job` on `model`. `on_step` gets the progress after every step and, every
/// `preview_every` steps (and at the last), the latents; `Break` cancels ([`crate::Error::Cancelled`]).
pub fn run(
    model: &StableDiffusion,
    job: &TextToImage,
    preview_every: Option<usize>,
    on_step: &mut dyn FnMut(StepProgress, Option<&Tensor>) -> ControlFlow<()>,
) -> Result<Output> {
    let mut scheduler = schedulers::build(&job.scheduler, &model.scheduler_config, job.steps)?;
    let mut warnings = Vec::new();
    let guided = job.guidance > 1.0;

    let cond = encode_prompt(model, &job.prompt, job.clip_skip, &mut warnings)?;
    let cond = cond.repeat((job.batch, 1, 1))?;
    let context = if guided {
        let uncond = encode_prompt(model, &job.negative_prompt, job.clip_skip, &mut warnings)?;
        Tensor::cat(&[&uncond.repeat((job.batch, 1, 1))?, &cond], 0)?
    } else {
        cond
    };

    let f = model.vae_scale_factor();
    let shape = [
        job.batch,
        model.unet.config().in_channels,
        job.height / f,
        job.width / f,
    ];
    let noise = seeded_noise(job.seed, &shape, DType::F32, &model.device)?;
    let latents = (noise * scheduler.init_noise_sigma())?;

    let conditioning = Conditioning {
        context: &context,
        guidance: job.guidance,
        extra_channels: None,
    };
    let steps = job.steps;
    let latest: RefCell<Option<Tensor>> = RefCell::new(None);
    let latents = denoise(
        model,
        scheduler.as_mut(),
        latents,
        &conditioning,
        0,
        Hooks {
            noise: &mut BatchNoise::new(job.seed, job.batch),
            after_step: &mut |i, latents| {
                if let Some(every) = preview_every {
                    if (i + 1) % every == 0 || i + 1 == steps {
                        *latest.borrow_mut() = Some(latents.clone());
                    }
                }
                Ok(latents)
            },
            on_step: &mut |progress| {
                let preview = latest.borrow_mut().take();
                on_step(progress, preview.as_ref())
            },
        },
    )?;

    let images = (0..job.batch)
        .map(|i| decode(model, &latents.narrow(0, i, 1)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Output { images, warnings })
}

/// Decodes latents [1, C, h, w] (UNet space) to an 8-bit image, as the pipeline does.
fn decode(model: &StableDiffusion, latents: &Tensor) -> Result<RgbImage> {
    let c = &model.vae_config;
    let mut z = (latents / c.scaling_factor)?;
    if let Some(shift) = c.shift_factor {
        z = (z + shift)?;
    }
    let image = model.vae_decoder.forward(&z.to_dtype(model.vae_dtype)?)?;
    to_rgb8(&image.squeeze(0)?)
}
