//! Euler (Karras et al. 2022, algorithm 2), following diffusers' `EulerDiscreteScheduler`.

use candle_core::Tensor;

use super::math::{self, invalid};
use super::schedules::{self, euler_init_noise_sigma, sigma_alphas_cumprod, Flavor, SigmaPlan};
use super::{
    check_index, work_dtype, FinalSigmasType, InterpolationType, PredictionType, Scheduler,
    SchedulerConfig, SchedulerError, TimestepType,
};
use crate::noise::NoiseSource;

const NAME: &str = "euler";

/// "Churn" options of the Euler step (diffusers' `step` arguments `s_churn`, `s_tmin`, `s_tmax`,
/// `s_noise`): at noise levels within `[s_tmin, s_tmax]` each step first raises the noise level
/// by a factor `1 + min(s_churn / steps, √2 - 1)` with fresh noise scaled by `s_noise`.
///
/// The default (`s_churn = 0`) adds no noise, as in diffusers and AUTOMATIC1111's "Euler".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// Amount of noise added per step (0 = none).
    pub s_churn: f64,
    /// Smallest sigma at which noise is added.
    pub s_tmin: f64,
    /// Largest sigma at which noise is added.
    pub s_tmax: f64,
    /// Scale of the added noise.
    pub s_noise: f64,
}

impl Default for Churn {
    /// diffusers' defaults: no churn.
    fn default() -> Self {
        Self {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

/// The Euler sampler, following diffusers' `EulerDiscreteScheduler`.
///
/// Reads `num_train_timesteps`, the beta fields, `rescale_betas_zero_snr`, `prediction_type`
/// (`epsilon`, `v_prediction`, `sample`), `timestep_spacing` (default `linspace`, whose
/// timesteps are fractional), `steps_offset`, `interpolation_type` (`linear` only),
/// `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`, `sigma_min`, `sigma_max`,
/// `final_sigmas_type` and `timestep_type`, and takes every [`super::Schedule`].
/// Churn (default none) is set with [`Euler::with_churn`]; its noise comes from the
/// [`NoiseSource`] given to `step`.
#[derive(Debug, Clone)]
pub struct Euler {
    timesteps: Vec<f64>,
    /// One sigma per step plus the final one.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
    churn: Churn,
}

impl Euler {
    /// An Euler schedule of `steps` steps for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        if config.interpolation_type == InterpolationType::LogLinear {
            return Err(invalid(
                NAME,
                "interpolation_type log_linear is not supported yet; use linear",
            ));
        }
        let alphas_cumprod = sigma_alphas_cumprod(NAME, config)?;
        let SigmaPlan {
            mut timesteps,
            mut sigmas,
            train_sigmas,
            spacing,
        } = schedules::plan(
            NAME,
            config,
            steps,
            &alphas_cumprod,
            Flavor::euler(config, false),
        )?;

        sigmas.push(match config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => train_sigmas[0],
        });

        if config.timestep_type == TimestepType::Continuous
            && config.prediction_type == PredictionType::VPrediction
        {
            timesteps = sigmas[..steps].iter().map(|s| 0.25 * s.ln()).collect();
        }

        let init_noise_sigma = euler_init_noise_sigma(&sigmas, spacing);
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction_type: config.prediction_type,
            churn: Churn::default(),
        })
    }

    /// Sets the churn options; all must be numbers, `s_churn` and `s_noise` non-negative.
    pub fn with_churn(mut self, churn: Churn) -> Result<Self, SchedulerError> {
        let Churn {
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
        } = churn;
        if !(s_churn.is_finite() && s_churn >= 0.0) {
            return Err(invalid(
                NAME,
                format!("s_churn {s_churn} must be a non-negative number"),
            ));
        }
        if !(s_noise.is_finite() && s_noise >= 0.0) {
            return Err(invalid(
                NAME,
                format!("s_noise {s_noise} must be a non-negative number"),
            ));
        }
        if s_tmin.is_nan() || s_tmax.is_nan() {
            return Err(invalid(
                NAME,
                format!("s_tmin {s_tmin} and s_tmax {s_tmax} must be numbers"),
            ));
        }
        self.churn = churn;
        Ok(self)
    }

    /// The noise level of each step, plus the final one (`steps + 1` values).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let sigma = self.sigmas[index];
        sample / (sigma * sigma + 1.0).sqrt()
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
        let mut sample = sample.to_dtype(dtype)?;

        let sigma = self.sigmas[index];
        let Churn {
            s_churn,
            s_tmin,
            s_tmax,
            s_noise,
        } = self.churn;
        let gamma = if s_tmin <= sigma && sigma <= s_tmax {
            (s_churn / (self.sigmas.len() - 1) as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        };
        let sigma_hat = sigma * (gamma + 1.0);
        if gamma > 0.0 {
            let eps = (noise.randn_like(&model_output)?.to_dtype(dtype)? * s_noise)?;
            sample = (&sample + (eps * (sigma_hat * sigma_hat - sigma * sigma).sqrt())?)?;
        }

        let pred_original = match self.prediction_type {
            PredictionType::Sample => model_output,
            PredictionType::Epsilon => (&sample - (&model_output * sigma_hat)?)?,
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                ((&model_output * c_out)? + (&sample / (sigma * sigma + 1.0))?)?
            }
        };
        let derivative = ((&sample - pred_original)? / sigma_hat)?;
        let dt = self.sigmas[index + 1] - sigma_hat;
        let prev = (&sample + (derivative * dt)?)?;
        prev.to_dtype(out_dtype)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        original + (noise * self.sigmas[index])?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unsupported_options() {
        for (config, word) in [
            (
                SchedulerConfig {
                    interpolation_type: InterpolationType::LogLinear,
                    ..Default::default()
                },
                "log_linear",
            ),
            (
                SchedulerConfig {
                    use_karras_sigmas: true,
                    use_exponential_sigmas: true,
                    ..Default::default()
                },
                "only one",
            ),
        ] {
            let err = Euler::new(&config, 10).unwrap_err().to_string();
            assert!(err.contains(word), "{err}");
        }
    }

    #[test]
    fn zero_sigma_steps_are_refused() {
        let config = SchedulerConfig {
            beta_start: 0.0,
            ..Default::default()
        };
        let err = Euler::new(&config, 10).unwrap_err().to_string();
        assert!(err.contains("sigma 0 at step 9"), "{err}");
    }

    #[test]
    fn sigmas_end_at_zero_and_start_at_the_top() {
        let euler = Euler::new(&SchedulerConfig::default(), 10).unwrap();
        assert_eq!(euler.sigmas().len(), 11);
        assert_eq!(euler.sigmas()[10], 0.0);
        assert_eq!(euler.init_noise_sigma(), euler.sigmas()[0]);
        assert_eq!(euler.timesteps()[0], 999.0);
    }

    #[test]
    fn index_out_of_range_is_an_error() {
        let euler = Euler::new(&SchedulerConfig::default(), 3).unwrap();
        let x = Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let err = euler.scale_model_input(&x, 3).unwrap_err().to_string();
        assert!(err.contains("index 3"), "{err}");
    }
}
