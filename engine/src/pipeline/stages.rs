//! The steps every pipeline shares: encoding the prompts, turning a picture into a tensor and
//! latents, where image-to-image starts, the starting noise, and decoding. Each pipeline
//! ([`super::text_to_image`], [`super::image_to_image`], [`super::inpaint`]) reads top to
//! bottom as calls to these.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};

use super::job::Settings;
use crate::family::{EncodeOptions, GuidanceMode, Model, ScheduledConditioning};
use crate::image_out::{to_rgb8, RgbImage};
use crate::noise::BatchNoise;
use crate::prompt::{Embedding, EmbeddingCatalog};
use crate::schedulers::{Scheduler, SchedulerKind};
use crate::{Error, Result};

/// A job's encoded prompts over the steps, one row per image: the prompt's, and the negative
/// prompt's when classifier-free guidance runs.
#[derive(Debug, Clone)]
pub struct TextConditioning {
    /// The prompt (its `empty` is set when the job pads prompts).
    pub cond: ScheduledConditioning,
    /// The negative prompt, when guiding.
    pub uncond: Option<ScheduledConditioning>,
    /// The classifier-free guidance scale combining the two: the guidance scale, or true CFG's
    /// scale on a family with distilled guidance.
    pub cfg_scale: f64,
}

impl TextConditioning {
    /// The textual-inversion embeddings either prompt uses, each once.
    pub fn embeddings(&self) -> Vec<Arc<Embedding>> {
        let mut out: Vec<Arc<Embedding>> = Vec::new();
        let all = self.cond.embeddings.iter();
        for e in all.chain(self.uncond.iter().flat_map(|u| &u.embeddings)) {
            if !out.iter().any(|o| o.name == e.name) {
                out.push(e.clone());
            }
        }
        out
    }
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
    /// Tokenizing and running the text encoders.
    pub text_encoding: Duration,
    /// The denoising loop.
    pub denoising: Duration,
    /// VAE encoding and decoding, and conversion to 8-bit.
    pub decoding: Duration,
}

/// What a job produced.
#[derive(Debug)]
pub struct Generated {
    /// Final denoised latents `[batch, C, h, w]`, before VAE scaling and decoding (f32).
    pub latents: Tensor,
    /// The images, post-processed.
    pub images: Vec<RgbImage>,
    /// Things the user should know (e.g. a truncated prompt).
    pub warnings: Vec<String>,
    /// The textual-inversion embeddings the prompts used (the PNG's `TI hashes`).
    pub embeddings: Vec<Arc<Embedding>>,
    /// Time per stage.
    pub times: StageTimes,
}

/// Whether the job runs classifier-free guidance: above guidance 1 on a family that uses it,
/// else true CFG (above 1, with a negative prompt) on one whose guidance is distilled or absent.
pub fn guided(model: &Model, settings: &Settings) -> bool {
    cfg_scale(model, settings).is_some()
}

/// The scale combining the negative and positive passes, when the job runs both.
fn cfg_scale(model: &Model, settings: &Settings) -> Option<f64> {
    match model.family.guidance {
        GuidanceMode::ClassifierFree => (settings.guidance > 1.0).then_some(settings.guidance),
        GuidanceMode::Distilled | GuidanceMode::None => settings
            .true_cfg
            .filter(|&s| s > 1.0 && !settings.negative_prompt.trim().is_empty()),
    }
}

/// Warns that a negative prompt is ignored by a family without classifier-free guidance.
fn warn_unused_negative(model: &Model, settings: &Settings, warnings: &mut Vec<String>) {
    let family = &model.family;
    if family.guidance == GuidanceMode::ClassifierFree || settings.negative_prompt.trim().is_empty()
    {
        return;
    }
    warnings.push(format!(
        "the negative prompt is ignored: {} runs no negative pass (its guidance is {}); \
         give a true CFG scale above 1 (--true-cfg, diffusers' true_cfg_scale) to use it",
        family.name,
        if family.guidance == GuidanceMode::Distilled {
            "distilled into an embedding"
        } else {
            "distilled away"
        }
    ));
}

/// Encodes the prompt (and the negative prompt when guiding) for `settings.batch` images in
/// the job's prompt syntax; `embeddings` are the textual-inversion embeddings prompts may name.
/// A prompt whose guidance combines sub-prompts (`AND`, `:weight`) needs the negative pass: it
/// is an error without classifier-free guidance.
pub fn encode_prompts(
    model: &Model,
    settings: &Settings,
    embeddings: &EmbeddingCatalog,
    warnings: &mut Vec<String>,
) -> Result<TextConditioning> {
    let options = |negative| EncodeOptions {
        clip_skip: settings.clip_skip,
        size: (settings.width, settings.height),
        size_conditioning: settings.size_conditioning,
        negative,
        syntax: settings.prompt_syntax,
        steps: settings.steps,
        pad_prompts: settings.pad_prompts && !negative,
        embeddings: Some(embeddings),
    };
    let cond = model
        .networks
        .encode(&settings.prompt, &options(false), warnings)?
        .repeat(settings.batch)?;
    let cfg_scale = cfg_scale(model, settings);
    if cfg_scale.is_none() {
        warn_unused_negative(model, settings, warnings);
    }
    let uncond = if cfg_scale.is_some() {
        let negative = &settings.negative_prompt;
        Some(
            model
                .networks
                .encode(negative, &options(true), warnings)?
                .repeat(settings.batch)?,
        )
    } else {
        if cond.is_composite() {
            return Err(Error::invalid(
                "prompt",
                &settings.prompt,
                "combines sub-prompts with AND or weights them with a trailing `:weight`, which \
                 needs classifier-free guidance: raise the guidance above 1 (on a model that \
                 uses it), or remove the AND and the trailing weight",
            ));
        }
        None
    };
    Ok(TextConditioning {
        cond,
        uncond,
        cfg_scale: cfg_scale.unwrap_or(1.0),
    })
}

/// An 8-bit picture as a `[1, 3, H, W]` f32 tensor in [-1, 1], as diffusers' image processor.
pub fn image_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = image.data.iter().map(|&v| v as f32 / 255.0).collect();
    let t = Tensor::from_vec(data, (image.height, image.width, 3), &Device::Cpu)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?;
    Ok(((t * 2.0)? - 1.0)?.contiguous()?.to_device(device)?)
}

/// The index of the first step to run for `strength`, as diffusers' `get_timesteps`:
/// `order · (steps - min(floor(steps · strength), steps))`; for flow models as FLUX's
/// pipelines, `order · floor(steps - steps · strength)` (the share of steps rounded up).
pub fn start_index(
    scheduler: &dyn Scheduler,
    kind: SchedulerKind,
    steps: usize,
    strength: f64,
) -> Result<usize> {
    let share = steps as f64 * strength;
    let run = match kind {
        SchedulerKind::Diffusion => share as usize,
        SchedulerKind::Flow => steps - (steps as f64 - share).max(0.0) as usize,
    }
    .min(steps);
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

/// Noise of `shape`: the caller's (checked against the shape; `what` names it in errors),
/// else drawn from `rng`.
pub fn noise_or(
    given: Option<&Tensor>,
    what: &str,
    shape: &[usize],
    device: &Device,
    rng: &mut BatchNoise,
) -> Result<Tensor> {
    match given {
        Some(t) if t.dims() != shape => Err(Error::invalid(
            what,
            format!("{:?}", t.dims()),
            format!("expected {shape:?} (batch, latent channels, height/f, width/f)"),
        )),
        Some(t) => Ok(t.to_dtype(DType::F32)?.to_device(device)?),
        None => Ok(rng.randn(shape, device)?),
    }
}

/// The extra denoiser channels that let an inpainting model repaint everything: mask all ones
/// and the latents of an all-grey picture (zeros in [-1, 1]), as AUTOMATIC1111 conditions such
/// models for text-to-image and image-to-image. `[batch, 1 + C, h, w]`.
pub fn repaint_everything(model: &Model, settings: &Settings) -> Result<Tensor> {
    let grey = Tensor::zeros(
        (1, 3, settings.height, settings.width),
        DType::F32,
        &model.device,
    )?;
    // The posterior mean draws no noise.
    let masked = model.vae.encode(
        &grey,
        settings.batch,
        false,
        &mut BatchNoise::new(0, settings.batch),
    )?;
    let (b, _, h, w) = masked.dims4()?;
    let ones = Tensor::ones((b, 1, h, w), DType::F32, &model.device)?;
    Ok(Tensor::cat(&[&ones, &masked], 1)?)
}

/// Decodes each image of `latents` `[batch, C, h, w]`, one at a time to bound memory (before
/// the full VAE, after giving the allocator's free memory back, see
/// [`crate::kernels::malloc::release_free`]); NaN or infinite latents or pixels fail with
/// [`Error::NonFinite`] naming the stage, instead of a black picture.
pub fn decode_all(model: &Model, latents: &Tensor) -> Result<Vec<RgbImage>> {
    check_finite(latents, "latents", "denoising")?;
    // The full VAE's decode is a job's memory peak: what the allocator kept free from the
    // denoising loop goes back to the OS first, so that it is not counted on top (about 60 MB
    // less peak RSS for SD 1.5 at 512x512, at no measurable cost in time). A tiny VAE needs
    // less than the denoiser did, so there it would only cost page faults (0.06-0.11 s of a
    // 0.34 s TAESD decode at 512x512).
    if !model.vae.is_tiny() {
        crate::kernels::malloc::release_free();
    }
    (0..latents.dim(0)?)
        .map(|i| {
            let image = model.vae.decode(&latents.narrow(0, i, 1)?)?;
            check_finite(&image, "pixels", "decoding")?;
            to_rgb8(&image.squeeze(0)?)
        })
        .collect()
}

/// Fails with [`Error::NonFinite`] when `values` hold NaN or infinities.
pub fn check_finite(values: &Tensor, what: &'static str, stage: &'static str) -> Result<()> {
    let values = values
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(Error::NonFinite { what, stage, count });
    }
    Ok(())
}
