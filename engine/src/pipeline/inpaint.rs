//! Inpainting, as diffusers' `StableDiffusionInpaintPipeline.__call__`, with AUTOMATIC1111's
//! options around it: check inputs, encode the prompt, cut out and fit the picture and mask,
//! encode, denoise (a 9-channel inpainting UNet sees the mask and the masked picture; an
//! ordinary UNet gets the known region blended back after every step), decode, and paste the
//! result back over the original outside the mask.
//!
//! The latent-space mask is diffusers': the (blurred) mask binarised at 0.5, then
//! nearest-downsampled. The paste-back uses the blurred mask, doubled in "whole picture" mode
//! as AUTOMATIC1111 does, so pixels outside the unblurred mask keep their original values.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Tensor};

use super::denoise::{denoise, Conditioning, Hooks};
use super::image_to_image::{
    check_inputs, encode_image, image_tensor, initial_noise, prompt_context, start_index,
    unet_kind, ImageToImage,
};
use super::text_to_image::decode;
use super::{Generated, StableDiffusion, StageTimes, StepProgress};
use crate::image_in::{
    composite, crop, crop_region, expand_crop_region, fill_masked, gaussian_blur, resize_image,
    resize_mask, ImageError, Mask, ResizeMode, RgbImage,
};
use crate::noise::{BatchNoise, NoiseSource};
use crate::{schedulers, Result};

/// What is repainted: the whole picture at the job size, or only the masked region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InpaintArea {
    /// Fit the whole picture to the job size (AUTOMATIC1111's "Whole picture").
    #[default]
    Whole,
    /// Cut out the mask's bounding box grown by `padding` pixels (and to the job's aspect
    /// ratio), repaint it at the job size, and paste it back into the full-size picture
    /// ("Only masked"). The result has the original picture's size.
    Masked {
        /// Pixels of context kept around the mask.
        padding: usize,
    },
}

/// What the masked region starts from before noising (AUTOMATIC1111's "masked content").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaskedContent {
    /// The picture as it is.
    #[default]
    Original,
    /// Colours blurred in from around the mask ([`fill_masked`]).
    Fill,
    /// Standard-normal noise in latent space, drawn from the job's seed.
    LatentNoise,
}

impl std::str::FromStr for MaskedContent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s
            .trim()
            .to_ascii_lowercase()
            .replace(['_', ' '], "-")
            .as_str()
        {
            "original" | "1" => Ok(Self::Original),
            "fill" | "0" => Ok(Self::Fill),
            "latent-noise" | "2" => Ok(Self::LatentNoise),
            _ => Err(format!(
                "unknown masked content {s:?}; valid: original, fill, latent-noise"
            )),
        }
    }
}

/// One inpainting (or outpainting) job: an image-to-image job plus a mask.
#[derive(Debug, Clone)]
pub struct Inpaint {
    /// The picture, strength, resize mode, posterior choice, noise and base settings.
    pub image: ImageToImage,
    /// What to repaint (1 = repaint); resized to the picture's size, with a warning, when it
    /// has the same aspect ratio but another size.
    pub mask: Mask,
    /// Gaussian blur of the mask (its standard deviation in the picture's pixels), applied
    /// before the mask is fitted to the job size, as AUTOMATIC1111's.
    pub mask_blur: f32,
    /// The whole picture or only the masked region.
    pub area: InpaintArea,
    /// What the masked region starts from.
    pub masked_content: MaskedContent,
}

/// The picture and masks at the job size, and where the result goes.
struct Region {
    /// The picture fitted to the job size (before any fill).
    picture: RgbImage,
    /// The blurred mask at the job size.
    mask: Mask,
    /// The picture the results are pasted into.
    canvas: RgbImage,
    /// The mask they are pasted with (the canvas's size).
    overlay: Mask,
    /// Where in the canvas, and at which size, a result goes.
    paste: (usize, usize, usize, usize),
}

/// Runs an inpainting job. `on_step` is called after every step; returning
/// `ControlFlow::Break` cancels the job ([`crate::Error::Cancelled`]).
pub fn inpaint(
    model: &StableDiffusion,
    job: &Inpaint,
    on_step: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
) -> Result<Generated> {
    let (img, base) = (&job.image, &job.image.base);
    check_inputs(model, base, img.strength)?;
    if !(0.0..=256.0).contains(&job.mask_blur) {
        return Err(crate::Error::invalid(
            "mask blur",
            job.mask_blur,
            "must be between 0 and 256 pixels",
        ));
    }
    let in_channels = unet_kind(model)?;
    let inpaint_unet = in_channels != model.vae_config.latent_channels;
    let mut scheduler = schedulers::build(&base.scheduler, &model.scheduler_config, base.steps)?;
    // A second copy of the schedule noises the known region while the first one steps.
    let noiser = schedulers::build(&base.scheduler, &model.scheduler_config, base.steps)?;
    let start = start_index(scheduler.as_ref(), base.steps, img.strength)?;
    let full_strength = img.strength == 1.0;
    let mut warnings = Vec::new();
    let mut times = StageTimes::default();

    // 1. Encode the prompt.
    let clock = Instant::now();
    let context = prompt_context(model, base, &mut warnings)?;
    times.text_encoding = clock.elapsed();

    // 2. Cut out and fit the picture and the mask; fill the masked region if asked.
    let clock = Instant::now();
    let mask = matched_mask(&job.mask, &img.init_image, &mut warnings)?;
    let region = region(job, &mask, base.width, base.height)?;
    let start_picture = match job.masked_content {
        MaskedContent::Fill => fill_masked(&region.picture, &region.mask),
        _ => region.picture.clone(),
    };
    let binary = region.mask.binarized();
    let f = model.vae_scale_factor();
    let (h, w) = (base.height / f, base.width / f);
    let latent_mask = Tensor::from_vec(binary.nearest(w, h).data, (1, 1, h, w), &model.device)?
        .repeat((base.batch, 1, 1, 1))?;

    // 3. Encode and noise, drawing from each image's generator in diffusers' order: the
    //    picture's posterior sample, the noise, the masked picture's posterior sample.
    let pixels = image_tensor(&start_picture, &model.device)?;
    let mut rng = BatchNoise::new(base.seed, base.batch);
    let needs_latents = !inpaint_unet || !full_strength;
    let image_latents = if needs_latents {
        Some(encode_image(
            model,
            &pixels,
            base.batch,
            img.sample_posterior,
            &mut rng,
        )?)
    } else {
        None
    };
    let shape_like = Tensor::zeros(
        (base.batch, model.vae_config.latent_channels, h, w),
        DType::F32,
        &model.device,
    )?;
    let noise = initial_noise(img.init_noise.as_ref(), &shape_like, &mut rng)?;
    let extra = if inpaint_unet {
        let keep = Tensor::from_vec(
            binary.data.iter().map(|&m| 1.0 - m).collect::<Vec<f32>>(),
            (1, 1, base.height, base.width),
            &model.device,
        )?;
        let masked = encode_image(
            model,
            &pixels.broadcast_mul(&keep)?,
            base.batch,
            img.sample_posterior,
            &mut rng,
        )?;
        Some(Tensor::cat(&[&latent_mask, &masked], 1)?)
    } else {
        None
    };
    let image_latents = match (image_latents, job.masked_content) {
        (Some(latents), MaskedContent::LatentNoise) => {
            let fresh = rng.randn_like(&latents)?;
            let keep = latent_mask.affine(-1.0, 1.0)?;
            Some((latents.broadcast_mul(&keep)? + fresh.broadcast_mul(&latent_mask)?)?)
        }
        (latents, _) => latents,
    };
    let latents = match &image_latents {
        Some(known) if !full_strength => scheduler.add_noise(known, &noise, start)?,
        _ => (&noise * scheduler.init_noise_sigma())?,
    };
    times.decoding = clock.elapsed();

    // 4. Denoise; an ordinary UNet gets the known region, noised to the next step's level
    //    (clean after the last step), blended back after every step.
    let clock = Instant::now();
    let conditioning = Conditioning {
        context: &context,
        guidance: base.guidance,
        extra_channels: extra.as_ref(),
    };
    let last = scheduler.timesteps().len() - 1;
    let keep_mask = latent_mask.affine(-1.0, 1.0)?;
    let mut blend = |i: usize, latents: Tensor| -> Result<Tensor> {
        let Some(known) = image_latents.as_ref().filter(|_| !inpaint_unet) else {
            return Ok(latents);
        };
        let known = if i < last {
            noiser.add_noise(known, &noise, i + 1)?
        } else {
            known.clone()
        };
        Ok((known.broadcast_mul(&keep_mask)? + latents.broadcast_mul(&latent_mask)?)?)
    };
    let latents = denoise(
        model,
        scheduler.as_mut(),
        latents,
        &conditioning,
        start,
        Hooks {
            noise: &mut rng,
            after_step: &mut blend,
            on_step,
        },
    )?;
    times.denoising = clock.elapsed();

    // 5. Decode each image and paste it back over the original outside the mask.
    let clock = Instant::now();
    let (x, y, pw, ph) = region.paste;
    let images = (0..base.batch)
        .map(|i| {
            let generated = decode(model, &latents.narrow(0, i, 1)?)?;
            let generated = resize_image(&generated, pw, ph, ResizeMode::Crop);
            Ok(composite(
                &region.canvas,
                &generated,
                &region.overlay,
                (x, y),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    times.decoding += clock.elapsed();
    Ok(Generated {
        latents,
        images,
        warnings,
        times,
    })
}

/// The mask at the picture's size: as given, resized with a warning when only the size
/// differs, refused when the aspect ratio differs (or nothing is masked).
fn matched_mask(mask: &Mask, picture: &RgbImage, warnings: &mut Vec<String>) -> Result<Mask> {
    if mask.is_empty() {
        return Err(ImageError::Mismatch {
            what: "mask".into(),
            message: "the mask is all black: nothing to repaint (white marks what to repaint)"
                .into(),
        }
        .into());
    }
    if (mask.width, mask.height) == (picture.width, picture.height) {
        return Ok(mask.clone());
    }
    let ratio = |w: usize, h: usize| w as f64 / h as f64;
    let (rm, rp) = (
        ratio(mask.width, mask.height),
        ratio(picture.width, picture.height),
    );
    if (rm / rp - 1.0).abs() > 0.01 {
        return Err(ImageError::Mismatch {
            what: "mask".into(),
            message: format!(
                "the mask is {}x{} but the picture is {}x{}: the aspect ratios differ, so it \
                 cannot be resized to fit; make a mask of the picture's size",
                mask.width, mask.height, picture.width, picture.height
            ),
        }
        .into());
    }
    warnings.push(format!(
        "the mask is {}x{}, the picture {}x{}: the mask was resized to the picture's size",
        mask.width, mask.height, picture.width, picture.height
    ));
    Ok(resize_mask(
        mask,
        picture.width,
        picture.height,
        ResizeMode::Stretch,
    ))
}

/// Fits the picture and mask to `width × height` for the job's inpaint area.
fn region(job: &Inpaint, mask: &Mask, width: usize, height: usize) -> Result<Region> {
    let picture = &job.image.init_image;
    match job.area {
        InpaintArea::Whole => {
            let mode = job.image.resize;
            let fitted = resize_image(picture, width, height, mode);
            // Blurred at the picture's size, then fitted, as AUTOMATIC1111 does.
            let mask = resize_mask(&gaussian_blur(mask, job.mask_blur), width, height, mode);
            Ok(Region {
                overlay: mask.scaled(2.0),
                canvas: fitted.clone(),
                picture: fitted,
                mask,
                paste: (0, 0, width, height),
            })
        }
        InpaintArea::Masked { padding } => {
            let blurred = gaussian_blur(mask, job.mask_blur);
            let Some(r) = crop_region(&blurred, padding) else {
                return Err(ImageError::Mismatch {
                    what: "mask".into(),
                    message: "the mask is all black: nothing to repaint".into(),
                }
                .into());
            };
            let r = expand_crop_region(r, width, height, picture.width, picture.height);
            Ok(Region {
                picture: resize_image(&crop(picture, r), width, height, ResizeMode::Fill),
                mask: resize_mask(&blurred.crop(r), width, height, ResizeMode::Fill),
                canvas: picture.clone(),
                overlay: blurred,
                paste: (r.x1, r.y1, r.width(), r.height()),
            })
        }
    }
}
