//! Filling in a job: what the user asked for, else the pack's defaults, else the model's own
//! (native size, the scheduler its `scheduler_config.json` names), else diffusers' defaults.
//! The CLI and the HTTP service resolve jobs the same way through [`resolve`].

use candle_core::Tensor;

use super::{StableDiffusion, TextToImage};
use crate::manifest::PackDefaults;

/// A text-to-image job as asked for: everything but the prompt may be left to defaults.
#[derive(Debug, Clone, Default)]
pub struct JobRequest {
    /// What to draw.
    pub prompt: String,
    /// What to avoid.
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 20).
    pub steps: Option<usize>,
    /// Guidance scale (default 7.5).
    pub guidance: Option<f64>,
    /// Width in pixels (default: the model's native size).
    pub width: Option<usize>,
    /// Height in pixels (default: the model's native size).
    pub height: Option<usize>,
    /// Scheduler name (default: the model's, if built in, else Euler). AUTOMATIC1111's
    /// combined names (`"DPM++ 2M Karras"`) carry a schedule.
    pub scheduler: Option<String>,
    /// Noise schedule name, e.g. `karras` (default: the pack's, else the sampler's own).
    pub schedule: Option<String>,
    /// Seed (default: random).
    pub seed: Option<u64>,
    /// Images (default 1).
    pub batch: Option<usize>,
    /// CLIP skip, AUTOMATIC1111 semantics (default 1).
    pub clip_skip: Option<usize>,
    /// Starting noise instead of the seed.
    pub init_latents: Option<Tensor>,
}

/// The full job for `request` on `model` with a pack's `defaults`.
pub fn resolve(
    model: &StableDiffusion,
    defaults: &PackDefaults,
    request: JobRequest,
) -> TextToImage {
    let d = defaults;
    let native = model.unet.config().sample_size.unwrap_or(64) * model.vae_scale_factor();
    TextToImage {
        negative_prompt: request
            .negative_prompt
            .or_else(|| d.negative_prompt.clone())
            .unwrap_or_default(),
        steps: request.steps.or(d.steps).unwrap_or(20),
        guidance: request.guidance.or(d.guidance).unwrap_or(7.5),
        width: request.width.or(d.width).unwrap_or(native),
        height: request.height.or(d.height).unwrap_or(native),
        seed: request.seed.unwrap_or_else(random_seed),
        batch: request.batch.unwrap_or(1),
        clip_skip: request.clip_skip.or(d.clip_skip).unwrap_or(1),
        scheduler: with_schedule(
            request
                .scheduler
                .or_else(|| d.scheduler.clone())
                .unwrap_or_else(|| {
                    model_scheduler(model.scheduler_config.class_name.as_deref()).into()
                }),
            request.schedule.or_else(|| d.schedule.clone()),
        ),
        init_latents: request.init_latents,
        prompt: request.prompt,
    }
}

/// `scheduler` followed by `schedule` (`"dpmpp_2m karras"`), the combined form
/// [`crate::schedulers::build`] reads; a name that already implies another schedule is
/// refused there.
pub fn with_schedule(scheduler: String, schedule: Option<String>) -> String {
    match schedule {
        Some(s) if !s.trim().is_empty() => format!("{} {}", scheduler.trim(), s.trim()),
        _ => scheduler,
    }
}

/// The built-in scheduler a diffusers `_class_name` asks for, else Euler. `PNDMScheduler`
/// (Stable Diffusion 1.x's config) maps to Euler, beeswax's long-standing default.
fn model_scheduler(class_name: Option<&str>) -> &'static str {
    match class_name {
        Some("DDIMScheduler") => "ddim",
        Some("DDPMScheduler") => "ddpm",
        Some("LMSDiscreteScheduler") => "lms",
        Some("EulerAncestralDiscreteScheduler") => "euler_a",
        Some("HeunDiscreteScheduler") => "heun",
        Some("KDPM2DiscreteScheduler") => "dpm2",
        Some("KDPM2AncestralDiscreteScheduler") => "dpm2_a",
        Some("DPMSolverMultistepScheduler") => "dpmpp_2m",
        Some("DPMSolverSDEScheduler") => "dpmpp_sde",
        Some("UniPCMultistepScheduler") => "unipc",
        Some("DEISMultistepScheduler") => "deis",
        Some("LCMScheduler") => "lcm",
        Some("TCDScheduler") => "tcd",
        _ => "euler",
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
