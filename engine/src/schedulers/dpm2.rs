//! DPM2 (k-diffusion's `sample_dpm_2`), following diffusers' `KDPM2DiscreteScheduler`.

use candle_core::Tensor;

use super::heun::{two_stage_calls, Stage};
use super::math::{self, invalid};
use super::schedules::{self, euler_init_noise_sigma, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, k_denoised, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "dpm2";

/// The second-order DPM-Solver step of k-diffusion (a midpoint method in log sigma), following
/// diffusers' `KDPM2DiscreteScheduler`: `steps` steps make `2·steps - 1` model calls, the
/// second of each pair at the geometric mean of two sigmas ([`Scheduler::order`] is 2).
///
/// Reads the beta fields, `prediction_type` (`epsilon`, `v_prediction`), `timestep_spacing`
/// (default `linspace`), `steps_offset`, `use_karras_sigmas` (whole timesteps, as diffusers),
/// `use_exponential_sigmas`, `use_beta_sigmas`, `sigma_min` and `sigma_max`, and takes every
/// [`super::Schedule`].
#[derive(Debug, Clone)]
pub struct Dpm2 {
    timesteps: Vec<f64>,
    calls: Vec<Stage>,
    /// One sigma per step plus the final 0.
    sigmas: Vec<f64>,
    /// `mid[k]`: the midpoint of step `k`, `√(σ_k·σ_{k+1})` (0 for the last step).
    mid: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
    pending: Option<(usize, Tensor)>,
}

impl Dpm2 {
    /// A DPM2 schedule of `steps` steps (`2·steps - 1` model calls) for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        if config.prediction_type == PredictionType::Sample {
            return Err(invalid(
                NAME,
                "prediction_type sample is not supported (diffusers neither); use epsilon or \
                 v_prediction",
            ));
        }
        let ac = sigma_alphas_cumprod(NAME, config)?;
        let plan = schedules::plan(NAME, config, steps, &ac, Flavor::euler(config, true))?;
        let log_sigmas: Vec<f64> = plan.train_sigmas.iter().map(|s| s.ln()).collect();
        let mut sigmas = plan.sigmas;
        sigmas.push(0.0);
        let mid: Vec<f64> = (0..steps)
            .map(|k| (0.5 * (sigmas[k].ln() + sigmas[k + 1].ln())).exp())
            .collect();
        let calls = two_stage_calls(steps);
        let timesteps = calls
            .iter()
            .map(|c| match *c {
                Stage::First(k) => plan.timesteps[k],
                Stage::Second(k) => math::sigma_to_t(mid[k], &log_sigmas),
            })
            .collect();
        Ok(Self {
            timesteps,
            calls,
            init_noise_sigma: euler_init_noise_sigma(&sigmas, plan.spacing),
            sigmas,
            mid,
            prediction_type: config.prediction_type,
            pending: None,
        })
    }
}

impl Scheduler for Dpm2 {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn order(&self) -> usize {
        2
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let sigma = match self.calls[index] {
            Stage::First(k) => self.sigmas[k],
            Stage::Second(k) => self.mid[k],
        };
        sample / (sigma * sigma + 1.0).sqrt()
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let (out, x) = to_work(model_output, sample)?;
        let prev = match self.calls[index] {
            Stage::First(k) => {
                let sigma = self.sigmas[k];
                let x0 = k_denoised(self.prediction_type, &out, &x, sigma)?;
                // x + (x - x0)/σ · (mid - σ)
                let r = (self.mid[k] - sigma) / sigma;
                let prev = lincomb(&[(1.0 + r, &x), (-r, &x0)])?;
                self.pending = Some((k, x));
                prev
            }
            Stage::Second(k) => {
                let Some((_, x_start)) = self.pending.take().filter(|(s, _)| *s == k) else {
                    candle_core::bail!(
                        "{NAME}: call {index} is the second stage of step {k}; run its first \
                         stage before it"
                    );
                };
                let mid = self.mid[k];
                let x0 = k_denoised(self.prediction_type, &out, &x, mid)?;
                let dt = self.sigmas[k + 1] - self.sigmas[k];
                lincomb(&[(1.0, &x_start), (dt / mid, &x), (-dt / mid, &x0)])?
            }
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
        let sigma = match self.calls[index] {
            Stage::First(k) => self.sigmas[k],
            Stage::Second(k) => self.sigmas[k + 1],
        };
        original + (noise * sigma)?
    }
}
