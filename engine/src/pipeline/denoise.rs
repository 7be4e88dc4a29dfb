//! The denoising loop shared by every pipeline: classifier-free guidance around the
//! family's denoiser with each step's conditioning ([`super::guidance`]), one scheduler step
//! per timestep, progress and cancellation after each step.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use super::guidance::StepConditioning;
use super::stages::{StepProgress, TextConditioning};
use crate::family::Model;
use crate::noise::NoiseSource;
use crate::schedulers::Scheduler;
use crate::{Error, Result};

/// What conditions the denoising.
pub struct Guidance<'a> {
    /// The encoded prompts over the steps (the negative one only when guiding).
    pub text: &'a TextConditioning,
    /// Guidance scale.
    pub scale: f64,
    /// Extra channels concatenated to the scaled latents before the denoiser (inpainting
    /// models: mask and masked-image latents), `[batch, C', h, w]`.
    pub extra_channels: Option<&'a Tensor>,
}

/// Callbacks and randomness of one denoising run.
pub struct Hooks<'a> {
    /// Noise for stochastic schedulers, from the job's seed.
    pub noise: &'a mut dyn NoiseSource,
    /// May rewrite the latents after step `i` (inpainting blends the known region back in).
    pub after_step: &'a mut dyn FnMut(usize, Tensor) -> Result<Tensor>,
    /// Reports progress after each step; `Break` cancels the job.
    pub on_step: &'a mut dyn FnMut(StepProgress) -> ControlFlow<()>,
}

/// Which steps one denoising run covers, and how they count in the job's progress.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// The first step (index into the scheduler's timesteps).
    pub start: usize,
    /// The step after the last one.
    pub end: usize,
    /// Steps the job ran before this run (a refiner continues the base's count).
    pub done_before: usize,
    /// Steps of the whole job.
    pub total: usize,
    /// When the job's denoising started (progress reports the time since).
    pub started: Instant,
}

impl Span {
    /// From `start` to the end of a schedule of `len` timesteps, the whole job.
    pub fn whole(start: usize, len: usize) -> Self {
        let start = start.min(len);
        Self {
            start,
            end: len,
            done_before: 0,
            total: len - start,
            started: Instant::now(),
        }
    }
}

/// Runs `scheduler` from step `start` to the end on `latents` `[batch, C, h, w]` (f32).
pub fn denoise(
    model: &Model,
    scheduler: &mut dyn Scheduler,
    latents: Tensor,
    guidance: &Guidance,
    start: usize,
    hooks: Hooks,
) -> Result<Tensor> {
    let span = Span::whole(start, scheduler.timesteps().len());
    denoise_span(model, scheduler, latents, guidance, span, hooks)
}

/// Runs `scheduler` over the steps of `span` on `latents` `[batch, C, h, w]` (f32).
pub fn denoise_span(
    model: &Model,
    scheduler: &mut dyn Scheduler,
    mut latents: Tensor,
    guidance: &Guidance,
    span: Span,
    hooks: Hooks,
) -> Result<Tensor> {
    let timesteps = scheduler.timesteps().to_vec();
    let (start, end) = (span.start, span.end.min(timesteps.len()));
    let mut step_cond: Option<StepConditioning> = None;
    for (i, &t) in timesteps.iter().enumerate().take(end).skip(start) {
        // A1111 counts prompt-editing steps from the first step it runs.
        let step = span.done_before + i - start;
        let cond = StepConditioning::at_step(guidance.text, step, step_cond.take())?;
        let mut input = scheduler.scale_model_input(&latents, i)?;
        if let Some(extra) = guidance.extra_channels {
            input = Tensor::cat(&[&input, extra], 1)?;
        }
        let out = cond.predict(model, &input, t, guidance.scale, guidance.text.cfg_scale)?;
        step_cond = Some(cond);
        latents = scheduler.step(&out, i, &latents, hooks.noise)?;
        latents = (hooks.after_step)(i, latents)?;
        let progress = StepProgress {
            step: step + 1,
            total: span.total,
            elapsed: span.started.elapsed(),
            latents: latents.clone(),
        };
        if (hooks.on_step)(progress).is_break() {
            return Err(Error::Cancelled);
        }
    }
    Ok(latents)
}
