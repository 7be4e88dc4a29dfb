//! Filling in a job: what the user asked for, else the pack's (or pipeline's) defaults, else
//! the model's own (native size, the sampler its `scheduler_config.json` names), else the
//! engine's ([`crate::defaults`]). The CLI and the HTTP service resolve jobs the same way,
//! through [`resolve`].

use candle_core::Tensor;

use super::job::{ImageInput, InpaintArea, Input, Job, MaskInput, MaskedContent, Settings};
use super::refiner::Refiner;
use crate::family::{Model, SizeConditioning};
use crate::image_in::{Mask, ResizeMode, RgbImage};
use crate::manifest::PackDefaults;
use crate::prompt::PromptSyntax;
use crate::schedulers::{Registry, Sampler};
use crate::{defaults, Result};

/// A job as asked for: everything but the prompt may be left to defaults.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    pub negative_prompt: Option<String>,
    /// Denoising steps.
    pub steps: Option<usize>,
    /// Guidance scale.
    pub guidance: Option<f64>,
    /// True CFG scale on families with distilled guidance (FLUX; diffusers' `true_cfg_scale`).
    pub true_cfg: Option<f64>,
    /// SDXL's size conditioning (diffusers' `original_size`, `crops_coords_top_left`,
    /// `target_size`) [default: the image size, no crop].
    pub size_conditioning: SizeConditioning,
    /// Width in pixels (default: an image job's picture, else the pack's, else the model's).
    pub width: Option<usize>,
    /// Height in pixels.
    pub height: Option<usize>,
    /// Sampler name or alias; AUTOMATIC1111's combined names (`"DPM++ 2M Karras"`) carry a
    /// schedule.
    pub sampler: Option<String>,
    /// Noise schedule name, e.g. `karras`.
    pub schedule: Option<String>,
    /// Seed (default: random).
    pub seed: Option<u64>,
    /// Images (default 1).
    pub batch: Option<usize>,
    /// CLIP skip, AUTOMATIC1111 semantics.
    pub clip_skip: Option<usize>,
    /// How the prompts are read (default: the defaults', else a1111).
    pub prompt_syntax: Option<PromptSyntax>,
    /// Pad prompt and negative prompt to the same chunk count (default: the defaults', else
    /// no).
    pub pad_prompts: Option<bool>,
    /// Where the job starts from.
    pub input: InputRequest,
    /// Pre-processors, in order (after the pipeline's own).
    pub pre_processors: Vec<String>,
    /// Post-processors, in order (after the pipeline's own).
    pub post_processors: Vec<String>,
    /// A refiner that finishes the denoising (its model loaded by the caller).
    pub refiner: Option<Refiner>,
}

/// The input as asked for.
#[derive(Debug, Clone, Default)]
pub enum InputRequest {
    /// Text to image, optionally from given starting noise.
    #[default]
    Text,
    /// Text to image from given standard-normal starting latents.
    Latents(Tensor),
    /// Image to image, or inpainting with a mask.
    Image(ImageRequest),
}

/// An image job as asked for.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The picture.
    pub picture: RgbImage,
    /// Strength (default 0.75).
    pub strength: Option<f64>,
    /// Resize mode (default stretch).
    pub resize: Option<ResizeMode>,
    /// Sample the VAE posterior instead of its mean.
    pub sample_posterior: bool,
    /// The noise added to the picture's latents, instead of seeded noise.
    pub init_noise: Option<Tensor>,
    /// The mask, for inpainting.
    pub mask: Option<MaskRequest>,
}

/// An inpainting mask as asked for.
#[derive(Debug, Clone)]
pub struct MaskRequest {
    /// The mask (1 = repaint).
    pub mask: Mask,
    /// Blur in pixels (default 4).
    pub blur: Option<f32>,
    /// Repaint only the masked region (with this padding, default 32) instead of the whole
    /// picture.
    pub only_masked: Option<Option<usize>>,
    /// What the masked region starts from (default original).
    pub content: Option<MaskedContent>,
}

/// The full job for `request` on `model` with `defaults` (a pack's or pipeline's), its
/// sampler resolved in `schedulers`: unknown sampler or schedule names are errors listing the
/// valid ones.
pub fn resolve(
    model: &Model,
    defaults: &PackDefaults,
    schedulers: &Registry,
    request: JobRequest,
) -> Result<Job> {
    let d = defaults;
    let sampler = resolve_sampler(
        model,
        d,
        schedulers,
        request.sampler.as_deref(),
        request.schedule.as_deref(),
    )?;
    let (width, height) = size(model, d, &request);
    let settings = Settings {
        negative_prompt: request
            .negative_prompt
            .or_else(|| d.negative_prompt.clone())
            .unwrap_or_default(),
        steps: request
            .steps
            .or(d.steps)
            .or(model.family.default_steps)
            .unwrap_or(defaults::STEPS),
        guidance: request
            .guidance
            .or(d.guidance)
            .or(model.family.default_guidance)
            .unwrap_or(defaults::GUIDANCE),
        true_cfg: request.true_cfg,
        size_conditioning: request.size_conditioning,
        width,
        height,
        seed: request.seed.unwrap_or_else(random_seed),
        batch: request.batch.unwrap_or(defaults::BATCH),
        clip_skip: request
            .clip_skip
            .or(d.clip_skip)
            .unwrap_or(defaults::CLIP_SKIP),
        prompt_syntax: request
            .prompt_syntax
            .or(d.prompt_syntax)
            .unwrap_or_default(),
        pad_prompts: request.pad_prompts.or(d.pad_prompts).unwrap_or(false),
        prompt: request.prompt,
    };
    let input = match request.input {
        InputRequest::Text => Input::Text { init_latents: None },
        InputRequest::Latents(t) => Input::Text {
            init_latents: Some(t),
        },
        InputRequest::Image(image) => image_input(image),
    };
    Ok(Job {
        settings,
        sampler,
        input,
        pre_processors: request.pre_processors,
        post_processors: request.post_processors,
        refiner: request.refiner,
    })
}

/// The sampler: the request's, else the defaults', else the one the model's scheduler config
/// names (if built in), else [`defaults::SAMPLER`]; the schedule likewise.
pub fn resolve_sampler(
    model: &Model,
    defaults: &PackDefaults,
    schedulers: &Registry,
    sampler: Option<&str>,
    schedule: Option<&str>,
) -> Result<Sampler> {
    let name = match sampler
        .map(str::to_string)
        .or_else(|| defaults.scheduler.clone())
    {
        Some(name) => name,
        None => model
            .scheduler_config
            .class_name
            .as_deref()
            .and_then(|class| schedulers.for_class(class))
            .map_or(defaults::SAMPLER.to_string(), |e| e.name.clone()),
    };
    let schedule = schedule
        .map(str::to_string)
        .or_else(|| defaults.schedule.clone())
        .filter(|s| !s.trim().is_empty());
    Ok(schedulers.sampler(&name, schedule.as_deref())?)
}

/// Width and height: asked for, else an image job's picture size rounded down to the VAE's
/// scale factor (as diffusers does; not when only the masked region is repainted), else the
/// defaults', else the model's native size.
fn size(model: &Model, d: &PackDefaults, request: &JobRequest) -> (usize, usize) {
    let f = model.vae_scale_factor();
    let picture = match &request.input {
        InputRequest::Image(image) => {
            let masked_only = image.mask.as_ref().is_some_and(|m| m.only_masked.is_some());
            let round = |v: usize| (v / f * f).max(f);
            (!masked_only).then(|| (round(image.picture.width), round(image.picture.height)))
        }
        _ => None,
    };
    let native = model.native_size();
    let width = request
        .width
        .or(picture.map(|p| p.0))
        .or(d.width)
        .unwrap_or(native);
    let height = request
        .height
        .or(picture.map(|p| p.1))
        .or(d.height)
        .unwrap_or(native);
    (width, height)
}

fn image_input(r: ImageRequest) -> Input {
    let image = ImageInput {
        picture: r.picture,
        strength: r.strength.unwrap_or(defaults::STRENGTH),
        resize: r.resize.unwrap_or_default(),
        sample_posterior: r.sample_posterior,
        init_noise: r.init_noise,
    };
    match r.mask {
        None => Input::Image(image),
        Some(m) => Input::Inpaint {
            image,
            mask: MaskInput {
                mask: m.mask,
                blur: m.blur.unwrap_or(defaults::MASK_BLUR as f32),
                area: match m.only_masked {
                    None => InpaintArea::Whole,
                    Some(padding) => InpaintArea::Masked {
                        padding: padding.unwrap_or(defaults::INPAINT_PADDING),
                    },
                },
                content: m.content.unwrap_or_default(),
            },
        },
    }
}

/// A fresh seed below 2^32 (AUTOMATIC1111's range), from the clock and std's hasher keys.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() % (1 << 32)
}
