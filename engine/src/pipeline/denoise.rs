//! The denoising loop shared by every pipeline: classifier-free guidance around the
//! family's denoiser, one scheduler step per timestep, progress and cancellation after each
//! step.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use super::stages::{StepProgress, TextConditioning};
use crate::family::{Conditioning, Model};
use crate::noise::NoiseSource;
use crate::schedulers::Scheduler;
use crate::{Error, Result};

/// What conditions the denoising.
pub struct Guidance<'a> {
    /// The encoded prompts (the negative one only when guiding).
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

/// Runs `scheduler` from step `start` to the end on `latents` `[batch, C, h, w]` (f32).
pub fn denoise(
    model: &Model,
    scheduler: &mut dyn Scheduler,
    mut latents: Tensor,
    guidance: &Guidance,
    start: usize,
    hooks: Hooks,
) -> Result<Tensor> {
    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len() - start.min(timesteps.len());
    let clock = Instant::now();
    // With prompts of the same length, one denoiser call sees both halves.
    let batched = match &guidance.text.uncond {
        Some(u) if u.tokens()? == guidance.text.cond.tokens()? => {
            Some(Conditioning::cat(&[u, &guidance.text.cond])?)
        }
        _ => None,
    };
    for (i, &t) in timesteps.iter().enumerate().skip(start) {
        let mut input = scheduler.scale_model_input(&latents, i)?;
        if let Some(extra) = guidance.extra_channels {
            input = Tensor::cat(&[&input, extra], 1)?;
        }
        let out = predict(model, &input, t, guidance, batched.as_ref())?;
        latents = scheduler.step(&out, i, &latents, hooks.noise)?;
        latents = (hooks.after_step)(i, latents)?;
        let progress = StepProgress {
            step: i + 1 - start,
            total,
            elapsed: clock.elapsed(),
            latents: latents.clone(),
        };
        if (hooks.on_step)(progress).is_break() {
            return Err(Error::Cancelled);
        }
    }
    Ok(latents)
}

/// The guided model output: `uncond + cfg_scale · (cond − uncond)`, from one call on the stacked
/// halves when they batch, else from two calls (prompts of different lengths).
fn predict(
    model: &Model,
    input: &Tensor,
    t: f64,
    guidance: &Guidance,
    batched: Option<&Conditioning>,
) -> Result<Tensor> {
    let net = &model.networks;
    let text = guidance.text;
    let Some(uncond_text) = &text.uncond else {
        return net.predict(input, t, &text.cond, guidance.scale);
    };
    let (uncond, cond) = match batched {
        Some(both) => {
            let batch = input.dim(0)?;
            let doubled = Tensor::cat(&[input, input], 0)?;
            let out = net.predict(&doubled, t, both, guidance.scale)?;
            (out.narrow(0, 0, batch)?, out.narrow(0, batch, batch)?)
        }
        None => (
            net.predict(input, t, uncond_text, guidance.scale)?,
            net.predict(input, t, &text.cond, guidance.scale)?,
        ),
    };
    Ok((&uncond + ((cond - &uncond)? * text.cfg_scale)?)?)
}
