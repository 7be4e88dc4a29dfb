//! One job type for every mode: what to generate ([`Settings`]), with which sampler, from which
//! input (text, a picture, a picture and a mask), and which processors run around it. The CLI
//! and the HTTP service both build jobs through [`super::resolve`] and run them through
//! [`super::run`]; [`Job::check`] is the one validation against the model and the limits.

use candle_core::Tensor;

use super::refiner::Refiner;
use crate::family::{Model, SizeConditioning};
use crate::image_in::{Mask, ResizeMode, RgbImage};
use crate::prompt::PromptSyntax;
use crate::schedulers::Sampler;
use crate::{limits, Error, Result};

/// What every job has.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// What to draw.
    pub prompt: String,
    /// What to steer away from (used only with classifier-free guidance above 1).
    pub negative_prompt: String,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale; at or below 1 the negative pass is skipped.
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
    /// How the prompts are read (weights, long prompts, editing, embeddings).
    pub prompt_syntax: PromptSyntax,
    /// Pad the prompt and the negative prompt with empty chunks to the same length (A1111's
    /// "pad prompt/negative prompt" option, ComfyUI's behaviour) so that both batch in one
    /// denoiser call; else prompts of different lengths run as two calls (A1111's default).
    pub pad_prompts: bool,
    /// True classifier-free guidance on families whose guidance is distilled (FLUX): with a
    /// negative prompt and a scale above 1, a negative pass runs and the two are combined at
    /// this scale (diffusers' `true_cfg_scale`). Ignored by classifier-free families.
    pub true_cfg: Option<f64>,
    /// SDXL's size conditioning (original size, crop, target size) beyond the image size.
    pub size_conditioning: SizeConditioning,
}

/// The picture an image-to-image or inpainting job starts from.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// The picture, any size: it is fitted to the job's width and height.
    pub picture: RgbImage,
    /// How much to repaint, in (0, 1]: the first `1 - strength` of the steps are skipped.
    pub strength: f64,
    /// How the picture is fitted when its size differs from the job's.
    pub resize: ResizeMode,
    /// Sample the VAE's latent distribution instead of taking its mean.
    pub sample_posterior: bool,
    /// Standard-normal noise `[batch, C, h, w]` added to the picture's latents instead of
    /// seeded noise (to compare with diffusers given the same noise).
    pub init_noise: Option<Tensor>,
}

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
    /// Colours blurred in from around the mask.
    Fill,
    /// Standard-normal noise in latent space, drawn from the job's seed.
    LatentNoise,
}

impl std::str::FromStr for MaskedContent {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
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

/// The mask of an inpainting job.
#[derive(Debug, Clone)]
pub struct MaskInput {
    /// What to repaint (1 = repaint); resized to the picture's size, with a warning, when it
    /// has the same aspect ratio but another size.
    pub mask: Mask,
    /// Gaussian blur of the mask (its standard deviation in the picture's pixels).
    pub blur: f32,
    /// The whole picture or only the masked region.
    pub area: InpaintArea,
    /// What the masked region starts from.
    pub content: MaskedContent,
}

/// Where a job starts from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Noise: text to image. `init_latents` are standard-normal starting latents
    /// `[batch, C, h, w]` used instead of seeded noise (diffusers' `latents=`).
    Text {
        /// Starting noise instead of the seed.
        init_latents: Option<Tensor>,
    },
    /// A picture: image to image.
    Image(ImageInput),
    /// A picture and a mask: inpainting (and outpainting, whose canvas and mask are made
    /// before the job).
    Inpaint {
        /// The picture.
        image: ImageInput,
        /// The mask.
        mask: MaskInput,
    },
}

impl Input {
    /// `txt2img`, `img2img` or `inpaint`.
    pub fn mode(&self) -> &'static str {
        match self {
            Input::Text { .. } => "txt2img",
            Input::Image(_) => "img2img",
            Input::Inpaint { .. } => "inpaint",
        }
    }

    /// The picture, for image jobs.
    pub fn image(&self) -> Option<&ImageInput> {
        match self {
            Input::Text { .. } => None,
            Input::Image(image) | Input::Inpaint { image, .. } => Some(image),
        }
    }
}

/// A job.
#[derive(Debug, Clone)]
pub struct Job {
    /// What to make.
    pub settings: Settings,
    /// With which sampler.
    pub sampler: Sampler,
    /// From what.
    pub input: Input,
    /// Pre-processors run on an image job's picture and mask, in order.
    pub pre_processors: Vec<String>,
    /// Post-processors run on every image, in order.
    pub post_processors: Vec<String>,
    /// A model that finishes the denoising from a switch point (SDXL's refiner).
    pub refiner: Option<Refiner>,
}

impl Job {
    /// Checks the job against the allowed ranges ([`crate::limits`]) and the model, naming the
    /// value at fault; called by [`super::run`] before any tensor work and by the service when
    /// a request arrives.
    pub fn check(&self, model: &Model) -> Result<()> {
        let s = &self.settings;
        let (f, why) = match model.family.size_multiple {
            Some(m) => (m, format!("{} packs 2x2 latent patches", model.family.name)),
            None => (
                model.vae_scale_factor(),
                "the model's VAE scale factor".into(),
            ),
        };
        let f = f.max(limits::SIZE_MULTIPLE);
        for (name, v) in [("width", s.width), ("height", s.height)] {
            if !limits::SIZE.contains(&v) || v % f != 0 {
                return Err(Error::invalid(
                    name,
                    v,
                    format!(
                        "must be a multiple of {f} ({why}), {}",
                        limits::describe(&limits::SIZE)
                    ),
                ));
            }
        }
        if let Some(scale) = s.true_cfg {
            if !limits::GUIDANCE.contains(&scale) {
                return Err(Error::invalid(
                    "true CFG scale",
                    scale,
                    format!("must be {}", limits::describe(&limits::GUIDANCE)),
                ));
            }
        }
        in_range("steps", s.steps, &limits::STEPS)?;
        in_range("batch", s.batch, &limits::BATCH)?;
        if !limits::GUIDANCE.contains(&s.guidance) {
            return Err(Error::invalid(
                "guidance",
                s.guidance,
                format!("must be {}", limits::describe(&limits::GUIDANCE)),
            ));
        }
        let layers = model.networks.text_layers();
        if s.clip_skip == 0 || s.clip_skip > layers {
            return Err(Error::invalid(
                "clip skip",
                s.clip_skip,
                format!("must be between 1 and {layers} (the text encoder's layer count)"),
            ));
        }
        if s.prompt.chars().count() > limits::PROMPT_CHARS {
            return Err(Error::invalid(
                "prompt",
                format!("of {} characters", s.prompt.chars().count()),
                format!("must be at most {} characters", limits::PROMPT_CHARS),
            ));
        }
        if let Some(refiner) = &self.refiner {
            refiner.check(model, s)?;
        }
        self.check_input()
    }

    fn check_input(&self) -> Result<()> {
        if let Some(image) = self.input.image() {
            if !limits::strength_ok(image.strength) {
                return Err(Error::invalid(
                    "strength",
                    image.strength,
                    "must be above 0 and at most 1 (the share of the steps that repaint the picture)",
                ));
            }
            if (self.settings.steps as f64 * image.strength) < 1.0 {
                return Err(Error::invalid(
                    "strength",
                    image.strength,
                    format!(
                        "with {} steps leaves no step to run (steps × strength < 1); raise the \
                         strength or the steps",
                        self.settings.steps
                    ),
                ));
            }
        }
        if let Input::Inpaint { mask, .. } = &self.input {
            if !limits::MASK_BLUR.contains(&(mask.blur as f64)) {
                return Err(Error::invalid(
                    "mask blur",
                    mask.blur,
                    format!("must be {} pixels", limits::describe(&limits::MASK_BLUR)),
                ));
            }
            if let InpaintArea::Masked { padding } = mask.area {
                in_range("inpaint padding", padding, &limits::INPAINT_PADDING)?;
                if mask.mask.data.iter().all(|&v| v <= 0.0) {
                    return Err(Error::invalid(
                        "mask",
                        "all black",
                        "leaves nothing to repaint with only the masked area (inpaint_area \
                         masked): paint what to repaint white, or invert the mask",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn in_range(name: &str, v: usize, range: &std::ops::RangeInclusive<usize>) -> Result<()> {
    if range.contains(&v) {
        Ok(())
    } else {
        Err(Error::invalid(
            name,
            v,
            format!("must be {}", limits::describe(range)),
        ))
    }
}
