//! DDPM (Ho et al. 2020), following diffusers' `DDPMScheduler`.

use candle_core::Tensor;

use super::math::{self, invalid};
use super::schedules::require_timestep_schedule;
use super::{
    check_index, lincomb, refuse_thresholding, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError, TimestepSpacing, VarianceType,
};
use crate::noise::NoiseSource;

const NAME: &str = "ddpm";

/// Denoising diffusion probabilistic models, following diffusers' `DDPMScheduler`: ancestral
/// sampling that adds fresh noise (from the [`NoiseSource`]) at every step but the last.
///
/// Reads the beta fields, `rescale_betas_zero_snr`, `prediction_type`, `timestep_spacing`
/// (default `leading`), `steps_offset`, `clip_sample` (default `true`), `clip_sample_range` and
/// `variance_type` (`fixed_small`, default, `fixed_small_log` or `fixed_large`; the learned
/// variances need a model with extra output channels and `fixed_large_log` gives NaN in
/// diffusers, so those are refused, as is `thresholding`).
#[derive(Debug, Clone)]
pub struct Ddpm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    prediction_type: PredictionType,
    clip: Option<f64>,
    variance_type: VarianceType,
}

impl Ddpm {
    /// A DDPM schedule of `steps` steps for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        require_timestep_schedule(NAME, config)?;
        refuse_thresholding(NAME, config)?;
        let variance_type = config.variance_type.unwrap_or(VarianceType::FixedSmall);
        if !matches!(
            variance_type,
            VarianceType::FixedSmall | VarianceType::FixedSmallLog | VarianceType::FixedLarge
        ) {
            return Err(invalid(
                NAME,
                format!(
                    "variance_type {variance_type:?} is not supported; use fixed_small, \
                     fixed_small_log or fixed_large"
                ),
            ));
        }
        let alphas_cumprod = math::alphas_cumprod(NAME, config)?;
        let train = config.num_train_timesteps;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        let timesteps: Vec<f64> =
            math::spaced_timesteps(spacing, train, steps, config.steps_offset)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
        for &t in &timesteps {
            if !(0.0..train as f64).contains(&t) {
                return Err(invalid(
                    NAME,
                    format!(
                        "timestep {t} (from {steps} {spacing:?} steps with steps_offset {}) is \
                         outside the {train} training steps",
                        config.steps_offset
                    ),
                ));
            }
            if alphas_cumprod[t as usize] == 0.0
                && config.prediction_type == PredictionType::Epsilon
            {
                return Err(invalid(
                    NAME,
                    format!(
                        "alphas_cumprod is 0 at timestep {t} (rescale_betas_zero_snr), where \
                         epsilon prediction divides by zero; use prediction_type v_prediction"
                    ),
                ));
            }
        }
        Ok(Self {
            timesteps,
            alphas_cumprod,
            prediction_type: config.prediction_type,
            clip: config
                .clip_sample
                .unwrap_or(true)
                .then_some(config.clip_sample_range),
            variance_type,
        })
    }

    /// `(ᾱ_t, ᾱ_prev)` of step `index` (the previous one is the next step's, else 1).
    fn alphas(&self, index: usize) -> (f64, f64) {
        let t = self.timesteps[index] as usize;
        let prev = self
            .timesteps
            .get(index + 1)
            .map_or(1.0, |&p| self.alphas_cumprod[p as usize]);
        (self.alphas_cumprod[t], prev)
    }
}

impl Scheduler for Ddpm {
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
        let (a_t, a_prev) = self.alphas(index);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let current_alpha = a_t / a_prev;
        let current_beta = 1.0 - current_alpha;
        let x0 = match self.prediction_type {
            PredictionType::Epsilon => {
                lincomb(&[(1.0 / a_t.sqrt(), &x), (-b_t.sqrt() / a_t.sqrt(), &out)])?
            }
            PredictionType::Sample => out.clone(),
            PredictionType::VPrediction => lincomb(&[(a_t.sqrt(), &x), (-b_t.sqrt(), &out)])?,
        };
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        let mut prev = lincomb(&[
            (a_prev.sqrt() * current_beta / b_t, &x0),
            (current_alpha.sqrt() * b_prev / b_t, &x),
        ])?;
        if self.timesteps[index] > 0.0 {
            let variance = (b_prev / b_t * current_beta).max(1e-20);
            let std = match self.variance_type {
                VarianceType::FixedLarge => current_beta.sqrt(),
                _ => variance.sqrt(),
            };
            let z = noise.randn_like(&out)?.to_dtype(out.dtype())?;
            prev = (prev + (z * std)?)?;
        }
        prev.to_dtype(sample.dtype())
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let (a, _) = self.alphas(index);
        lincomb(&[(a.sqrt(), original), ((1.0 - a).sqrt(), noise)])
    }
}
