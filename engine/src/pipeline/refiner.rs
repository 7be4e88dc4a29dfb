//! The refiner hand-off, as diffusers' `StableDiffusionXLPipeline(denoising_end=f)` followed by
//! `StableDiffusionXLImg2ImgPipeline(denoising_start=f)`: one schedule over the job's steps;
//! the base model runs the timesteps at or above the switch point
//! (`round(T - f · T)` for `T` training timesteps), the refiner continues from the base's
//! latents without re-noising, with its own conditioning (its text encoders, its aesthetic
//! score time ids) and its own scheduler instance built like the base's, and its VAE decodes.
//! Progress counts over both parts.

use candle_core::Tensor;

use super::denoise::{denoise_span, Guidance, Hooks, Span};
use super::stages::encode_prompts;
use super::Settings;
use crate::family::Model;
use crate::prompt::EmbeddingCatalog;
use crate::schedulers::Scheduler;
use crate::{limits, Error, Result};

/// A model that finishes a job's denoising from the point `switch_at` of the schedule.
#[derive(Debug, Clone)]
pub struct Refiner {
    /// Its name in image parameters (the pack's, or the folder's or file's).
    pub name: String,
    /// The refiner (e.g. of the `sdxl-refiner` family), or any model of the base's latent
    /// space.
    pub model: Model,
    /// The share of the schedule the base runs, in (0, 1) (diffusers' `denoising_end` and
    /// `denoising_start`, AUTOMATIC1111's `refiner_switch_at`).
    pub switch_at: f64,
}

impl Refiner {
    /// [`Self::check_models`] and `settings.clip_skip` within the refiner's text encoders.
    pub fn check(&self, base: &Model, settings: &Settings) -> Result<()> {
        self.check_models(base)?;
        let layers = self.model.networks.text_layers();
        if settings.clip_skip > layers {
            return Err(Error::invalid(
                "clip skip",
                settings.clip_skip,
                format!("must be at most {layers} (the refiner's text encoder layer count)"),
            ));
        }
        Ok(())
    }

    /// Checks the switch point and that the refiner can continue `base`'s latents: same kind
    /// of schedule, same latent channels, VAE scale factor and latent scaling, and a denoiser
    /// taking the latents alone.
    pub fn check_models(&self, base: &Model) -> Result<()> {
        if !limits::switch_at_ok(self.switch_at) {
            return Err(Error::invalid(
                "refiner switch",
                self.switch_at,
                "must be above 0 and below 1 (the share of the schedule the base model runs \
                 before the refiner takes over, e.g. 0.8)",
            ));
        }
        let (r, b) = (&self.model, base);
        let mismatch = |what: &str, theirs: String, ours: String| Error::Config {
            path: r.source.clone(),
            message: format!(
                "cannot refine a {} model ({}): this {} model has {what} {theirs} where the \
                 base has {ours}; a refiner must share the base's latent space (e.g. an \
                 sdxl-refiner model for an sdxl base)",
                b.family.name,
                b.source.display(),
                r.family.name,
            ),
        };
        if r.family.scheduler_kind != b.family.scheduler_kind {
            return Err(mismatch(
                "a schedule of kind",
                format!("{:?}", r.family.scheduler_kind),
                format!("{:?}", b.family.scheduler_kind),
            ));
        }
        let pairs = [
            (
                "latent channels",
                r.vae.latent_channels(),
                b.vae.latent_channels(),
            ),
            (
                "VAE scale factor",
                r.vae_scale_factor(),
                b.vae_scale_factor(),
            ),
        ];
        for (what, theirs, ours) in pairs {
            if theirs != ours {
                return Err(mismatch(what, theirs.to_string(), ours.to_string()));
            }
        }
        // Two AutoencoderKLs must scale latents alike (a tiny autoencoder works in the
        // denoiser's latent space whatever it was trained for, so it is not compared).
        if let (Some(rv), Some(bv)) = (r.vae.kl_config(), b.vae.kl_config()) {
            if rv.scaling_factor != bv.scaling_factor || rv.shift_factor != bv.shift_factor {
                return Err(mismatch(
                    "the latent scaling (VAE scaling_factor, shift_factor)",
                    format!("{}, {:?}", rv.scaling_factor, rv.shift_factor),
                    format!("{}, {:?}", bv.scaling_factor, bv.shift_factor),
                ));
            }
        }
        if r.is_inpainting()? {
            return Err(Error::Config {
                path: r.source.clone(),
                message: format!(
                    "{} is an inpainting model (its denoiser takes {} input channels): a \
                     refiner's denoiser takes the latents alone ({} channels)",
                    r.family.name,
                    r.networks.in_channels(),
                    r.vae.latent_channels()
                ),
            });
        }
        Ok(())
    }
}

/// Where the base stops and the refiner starts, as indices into the scheduler's timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// The base runs the steps from the job's start up to this index (excluded).
    pub base_end: usize,
    /// The refiner runs the steps from this index to the end.
    pub refiner_start: usize,
}

/// The hand-off of `scheduler`'s schedule (of `train_timesteps` training timesteps) at
/// `switch_at`, for a job starting at step `start`: diffusers' `denoising_end` (the base keeps
/// the timesteps at or above `round(T - switch_at · T)`) and `denoising_start` (the refiner
/// takes those below, one more on a second-order scheduler when their count is even). The
/// refiner never starts before the job does.
pub fn handoff(
    scheduler: &dyn Scheduler,
    train_timesteps: usize,
    start: usize,
    switch_at: f64,
) -> Handoff {
    let t = train_timesteps as f64;
    let cutoff = (t - switch_at * t).round();
    let timesteps = scheduler.timesteps();
    let len = timesteps.len();
    let start = start.min(len);
    let base_end = start + timesteps[start..].iter().filter(|&&x| x >= cutoff).count();
    let mut below = timesteps.iter().filter(|&&x| x < cutoff).count();
    if scheduler.order() == 2 && below % 2 == 0 && below < len {
        below += 1;
    }
    Handoff {
        base_end,
        refiner_start: (len - below).max(start),
    }
}

/// The refiner of a job and its scheduler (built like the base's, for the same steps).
pub struct Refine<'a> {
    /// The refiner.
    pub refiner: &'a Refiner,
    /// Its own scheduler instance.
    pub scheduler: Box<dyn Scheduler>,
}

/// What the base's denoising needs besides the models.
pub struct BaseRun<'a> {
    /// The job's settings.
    pub settings: &'a Settings,
    /// The textual-inversion embeddings prompts may name (the refiner encodes them too).
    pub embeddings: &'a EmbeddingCatalog,
    /// The base's scheduler.
    pub scheduler: &'a mut dyn Scheduler,
    /// The base's conditioning.
    pub guidance: &'a Guidance<'a>,
    /// The first step the job runs.
    pub start: usize,
}

/// Denoises `latents` from `run.start` with `base`, and with `refine`'s refiner from the
/// hand-off on. Returns the final latents and the model whose VAE decodes them; the
/// refiner's warnings (other than the base's) go to `warnings`.
pub fn denoise_and_refine<'m>(
    base: &'m Model,
    refine: Option<Refine<'m>>,
    run: BaseRun,
    latents: Tensor,
    hooks: Hooks,
    warnings: &mut Vec<String>,
) -> Result<(Tensor, &'m Model)> {
    let len = run.scheduler.timesteps().len();
    let Some(mut refine) = refine else {
        let span = Span::whole(run.start, len);
        let latents = denoise_span(base, run.scheduler, latents, run.guidance, span, hooks)?;
        return Ok((latents, base));
    };
    let refiner = &refine.refiner.model;
    let train = base.scheduler_config.num_train_timesteps;
    let at = handoff(&*run.scheduler, train, run.start, refine.refiner.switch_at);
    let total = (at.base_end - run.start) + (len - at.refiner_start);
    let Hooks {
        noise,
        after_step,
        on_step,
    } = hooks;
    let span = Span {
        end: at.base_end,
        total,
        ..Span::whole(run.start, len)
    };
    let latents = denoise_span(
        base,
        run.scheduler,
        latents,
        run.guidance,
        span,
        Hooks {
            noise: &mut *noise,
            after_step: &mut *after_step,
            on_step: &mut *on_step,
        },
    )?;
    let mut own = Vec::new();
    let text = encode_prompts(refiner, run.settings, run.embeddings, &mut own)?;
    for w in own {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    if at.refiner_start >= len {
        warnings.push(format!(
            "the refiner ran no step: with {} steps nothing of the schedule is left after the \
             switch at {}; lower the switch or raise the steps",
            run.settings.steps, refine.refiner.switch_at
        ));
    }
    let guidance = Guidance {
        text: &text,
        scale: run.guidance.scale,
        extra_channels: None,
    };
    let span = Span {
        start: at.refiner_start,
        end: len,
        done_before: at.base_end - run.start,
        ..span
    };
    let latents = denoise_span(
        refiner,
        refine.scheduler.as_mut(),
        latents,
        &guidance,
        span,
        Hooks {
            noise,
            after_step,
            on_step,
        },
    )?;
    Ok((latents, refiner))
}
