//! Latent consistency models (Luo et al. 2023), following diffusers' `LCMScheduler`.

use candle_core::Tensor;

use super::math::{self, invalid};
use super::schedules::{refuse_spacing, require_timestep_schedule};
use super::{
    check_index, lincomb, refuse_thresholding, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "lcm";

/// The consistency sampler of latent consistency models, following diffusers' `LCMScheduler`:
/// each step predicts the clean sample through the consistency boundary condition and, except
/// at the last step, re-noises it to the next timestep with fresh noise from the
/// [`NoiseSource`]. Meant for LCM-distilled models (or an LCM LoRA), in 2 to 8 steps.
///
/// Reads the beta fields, `rescale_betas_zero_snr`, `prediction_type`,
/// `original_inference_steps` (default 50; the step count may not exceed it), `set_alpha_to_one`
/// (default `true`), `clip_sample` (default `false`), `clip_sample_range` and
/// `timestep_scaling` (default 10). The timesteps are LCM's own, so spacing schedules are
/// refused; `thresholding` is refused.
#[derive(Debug, Clone)]
pub struct Lcm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    prediction_type: PredictionType,
    clip: Option<f64>,
    timestep_scaling: f64,
}

/// The step counts a consistency model allows, and its timesteps; shared with TCD.
pub(crate) fn consistency_setup(
    name: &str,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<(Vec<f64>, Vec<f64>), SchedulerError> {
    math::check_steps(name, config, steps)?;
    require_timestep_schedule(name, config)?;
    refuse_spacing(
        name,
        config,
        "consistency models use their own timesteps (original_inference_steps)",
    )?;
    refuse_thresholding(name, config)?;
    let original = config.original_inference_steps;
    let timesteps = math::consistency_timesteps(config.num_train_timesteps, original, steps)
        .ok_or_else(|| {
            invalid(
                name,
                format!(
                    "{steps} steps asked for, but at most original_inference_steps ({original}) \
                     are possible; use fewer steps (2 to 8 is typical)"
                ),
            )
        })?;
    let alphas_cumprod = math::alphas_cumprod(name, config)?;
    if config.prediction_type == PredictionType::Epsilon {
        if let Some(t) = timesteps
            .iter()
            .find(|&&t| alphas_cumprod[t as usize] == 0.0)
        {
            return Err(invalid(
                name,
                format!(
                    "alphas_cumprod is 0 at timestep {t} (rescale_betas_zero_snr), where \
                     epsilon prediction divides by zero; use prediction_type v_prediction"
                ),
            ));
        }
    }
    Ok((timesteps, alphas_cumprod))
}

/// `(x0, eps)` predicted from a model output at `ᾱ_t` (DDIM-style conversions).
pub(crate) fn x0_and_eps(
    prediction: PredictionType,
    out: &Tensor,
    x: &Tensor,
    a_t: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
    Ok(match prediction {
        PredictionType::Epsilon => (lincomb(&[(1.0 / sa, x), (-sb / sa, out)])?, out.clone()),
        PredictionType::Sample => (out.clone(), lincomb(&[(1.0 / sb, x), (-sa / sb, out)])?),
        PredictionType::VPrediction => (
            lincomb(&[(sa, x), (-sb, out)])?,
            lincomb(&[(sa, out), (sb, x)])?,
        ),
    })
}

impl Lcm {
    /// An LCM schedule of `steps` steps for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let (timesteps, alphas_cumprod) = consistency_setup(NAME, config, steps)?;
        Ok(Self {
            timesteps,
            alphas_cumprod,
            prediction_type: config.prediction_type,
            clip: config
                .clip_sample
                .unwrap_or(false)
                .then_some(config.clip_sample_range),
            timestep_scaling: config.timestep_scaling,
        })
    }
}

impl Scheduler for Lcm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let (out, x) = to_work(model_output, sample)?;
        let t = self.timesteps[index];
        let prev_t = self.timesteps.get(index + 1).copied().unwrap_or(t);
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = self.alphas_cumprod[prev_t as usize];
        let sigma_data = 0.5f64;
        let scaled = t * self.timestep_scaling;
        let c_skip = sigma_data * sigma_data / (scaled * scaled + sigma_data * sigma_data);
        let c_out = scaled / (scaled * scaled + sigma_data * sigma_data).sqrt();
        let (x0, _) = x0_and_eps(self.prediction_type, &out, &x, a_t)?;
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        let denoised = lincomb(&[(c_out, &x0), (c_skip, &x)])?;
        let prev = if index + 1 != self.timesteps.len() {
            let z = noise.randn_like(&out)?.to_dtype(out.dtype())?;
            lincomb(&[(a_prev.sqrt(), &denoised), ((1.0 - a_prev).sqrt(), &z)])?
        } else {
            denoised
        };
        prev.to_dtype(sample.dtype())
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let a = self.alphas_cumprod[self.timesteps[index] as usize];
        lincomb(&[(a.sqrt(), original), ((1.0 - a).sqrt(), noise)])
    }
}
