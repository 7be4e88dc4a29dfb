//! DDIM (Song et al. 2020), following diffusers' `DDIMScheduler`.

use candle_core::Tensor;

use super::math::{self, invalid};
use super::{
    check_index, work_dtype, PredictionType, Scheduler, SchedulerConfig, SchedulerError,
    TimestepSpacing,
};
use crate::noise::NoiseSource;

const NAME: &str = "ddim";

/// Denoising diffusion implicit models, following diffusers' `DDIMScheduler`.
///
/// Reads `num_train_timesteps`, the beta fields, `rescale_betas_zero_snr`, `prediction_type`,
/// `timestep_spacing` (default `leading`), `steps_offset`, `set_alpha_to_one` (default `true`),
/// `clip_sample` (default `true`) and `clip_sample_range`. `eta` (default 0, deterministic) is
/// set with [`Ddim::with_eta`]; its noise comes from the [`NoiseSource`] given to `step`.
/// Dynamic thresholding is not supported and is refused, as are the sigma schedules (Karras,
/// ...): DDIM takes the timestep spacings only.
///
/// As in diffusers, each step goes to timestep `t - num_train_timesteps / steps` (floored), also
/// for `trailing` and `linspace` spacing where that is not the next timestep of the schedule.
#[derive(Debug, Clone)]
pub struct Ddim {
    timesteps: Vec<f64>,
    /// `alphas_cumprod` at each step's timestep and at the timestep it steps to.
    alphas: Vec<(f64, f64)>,
    alphas_cumprod: Vec<f64>,
    prediction_type: PredictionType,
    clip: Option<f64>,
    eta: f64,
}

impl Ddim {
    /// A DDIM schedule of `steps` steps for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        super::schedules::require_timestep_schedule(NAME, config)?;
        if config.thresholding {
            return Err(invalid(
                NAME,
                "thresholding true is not supported (dynamic thresholding is for pixel-space \
                 models, not latent diffusion); set it to false",
            ));
        }
        let alphas_cumprod = math::alphas_cumprod(NAME, config)?;
        let train = config.num_train_timesteps;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        let timesteps: Vec<f64> =
            math::spaced_timesteps(spacing, train, steps, config.steps_offset)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
        let ratio = (train / steps) as f64;
        let mut alphas = Vec::with_capacity(steps);
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
            let prev = t - ratio;
            let alpha_prev = if prev >= 0.0 {
                alphas_cumprod[prev as usize]
            } else {
                final_alpha_cumprod
            };
            let alpha = alphas_cumprod[t as usize];
            if alpha == 0.0 && config.prediction_type == PredictionType::Epsilon {
                return Err(invalid(
                    NAME,
                    format!(
                        "alphas_cumprod is 0 at timestep {t} (rescale_betas_zero_snr), where \
                         epsilon prediction divides by zero; use prediction_type v_prediction"
                    ),
                ));
            }
            alphas.push((alpha, alpha_prev));
        }
        Ok(Self {
            timesteps,
            alphas,
            alphas_cumprod,
            prediction_type: config.prediction_type,
            clip: config
                .clip_sample
                .unwrap_or(true)
                .then_some(config.clip_sample_range),
            eta: 0.0,
        })
    }

    /// Sets `eta`, the weight of the noise each step adds back: 0 (the default) is
    /// deterministic DDIM, 1 is DDPM-like. It must be finite and non-negative.
    pub fn with_eta(mut self, eta: f64) -> Result<Self, SchedulerError> {
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(invalid(
                NAME,
                format!("eta {eta} must be a non-negative number"),
            ));
        }
        self.eta = eta;
        Ok(self)
    }

    /// `eta`, the weight of the noise each step adds back.
    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// The training `alphas_cumprod` the schedule samples from.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }
}

impl Scheduler for Ddim {
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
        let out_dtype = sample.dtype();
        let dtype = work_dtype(model_output, sample);
        let model_output = model_output.to_dtype(dtype)?;
        let sample = sample.to_dtype(dtype)?;

        let (alpha_t, alpha_prev) = self.alphas[index];
        let beta_t = 1.0 - alpha_t;
        let (sqrt_alpha, sqrt_beta) = (alpha_t.sqrt(), beta_t.sqrt());
        let (pred_original, pred_epsilon) = match self.prediction_type {
            PredictionType::Epsilon => (
                ((&sample - (&model_output * sqrt_beta)?)? / sqrt_alpha)?,
                model_output.clone(),
            ),
            PredictionType::Sample => (
                model_output.clone(),
                ((&sample - (&model_output * sqrt_alpha)?)? / sqrt_beta)?,
            ),
            PredictionType::VPrediction => (
                ((&sample * sqrt_alpha)? - (&model_output * sqrt_beta)?)?,
                ((&model_output * sqrt_alpha)? + (&sample * sqrt_beta)?)?,
            ),
        };
        let pred_original = match self.clip {
            Some(range) => pred_original.clamp(-range, range)?,
            None => pred_original,
        };

        let variance = ((1.0 - alpha_prev) / beta_t) * (1.0 - alpha_t / alpha_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = (&pred_epsilon * (1.0 - alpha_prev - std_dev * std_dev).sqrt())?;
        let mut prev = ((&pred_original * alpha_prev.sqrt())? + direction)?;
        if self.eta > 0.0 {
            let variance_noise = noise.randn_like(&model_output)?.to_dtype(dtype)?;
            prev = (prev + (variance_noise * std_dev)?)?;
        }
        prev.to_dtype(out_dtype)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let (alpha, _) = self.alphas[index];
        (original * alpha.sqrt())? + (noise * (1.0 - alpha).sqrt())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_ddim_defaults() {
        let ddim = Ddim::new(&SchedulerConfig::default(), 10).unwrap();
        assert_eq!(ddim.timesteps()[0], 900.0);
        assert_eq!(ddim.clip, Some(1.0));
        assert_eq!(ddim.alphas[9].1, 1.0);
    }

    #[test]
    fn refuses_what_cannot_work() {
        let config = SchedulerConfig {
            thresholding: true,
            ..Default::default()
        };
        let err = Ddim::new(&config, 10).unwrap_err().to_string();
        assert!(err.contains("thresholding"), "{err}");

        let config = SchedulerConfig {
            steps_offset: 1,
            ..Default::default()
        };
        let err = Ddim::new(&config, 1000).unwrap_err().to_string();
        assert!(err.contains("timestep 1000"), "{err}");

        let config = SchedulerConfig {
            rescale_betas_zero_snr: true,
            timestep_spacing: Some(TimestepSpacing::Trailing),
            ..Default::default()
        };
        let err = Ddim::new(&config, 10).unwrap_err().to_string();
        assert!(err.contains("v_prediction"), "{err}");

        let err = Ddim::new(&SchedulerConfig::default(), 10)
            .unwrap()
            .with_eta(-1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("eta -1"), "{err}");
    }
}
