//! The denoising loop shared by every pipeline: classifier-free guidance around the UNet,
//! one scheduler step per timestep, progress and cancellation after each step.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Tensor};

use super::{StableDiffusion, StepProgress};
use crate::noise::NoiseSource;
use crate::schedulers::Scheduler;
use crate::{Error, Result};

/// What conditions the denoising.
pub struct Conditioning<'a> {
    /// Text states: [batch, S, D], or [uncond; cond] = [2·batch, S, D] when guided.
    pub context: &'a Tensor,
    /// Guidance scale; guided (two UNet halves) when above 1.
    pub guidance: f64,
    /// Extra channels concatenated to the scaled latents before the UNet (9-channel inpaint
    /// models: mask and masked-image latents), [batch, C', h, w].
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

/// Runs `scheduler` from step `start` to the end on `latents` [batch, C, h, w] (f32).
pub fn denoise(
    model: &StableDiffusion,
    scheduler: &mut dyn Scheduler,
    mut latents: Tensor,
    cond: &Conditioning,
    start: usize,
    hooks: Hooks,
) -> Result<Tensor> {
    let guided = cond.guidance > 1.0;
    let batch = latents.dim(0)?;
    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len() - start.min(timesteps.len());
    let clock = Instant::now();
    for (i, &t) in timesteps.iter().enumerate().skip(start) {
        let mut input = scheduler.scale_model_input(&latents, i)?;
        if let Some(extra) = cond.extra_channels {
            input = Tensor::cat(&[&input, extra], 1)?;
        }
        if guided {
            input = Tensor::cat(&[&input, &input], 0)?;
        }
        let out = model
            .unet
            .forward(&input.to_dtype(model.dtype)?, t, cond.context, None)?
            .to_dtype(DType::F32)?;
        let out = if guided {
            let uncond = out.narrow(0, 0, batch)?;
            let text = out.narrow(0, batch, batch)?;
            (&uncond + ((text - &uncond)? * cond.guidance)?)?
        } else {
            out
        };
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
