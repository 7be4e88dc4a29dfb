//! Trajectory consistency distillation (Zheng et al. 2024), following diffusers'
//! `TCDScheduler`.

use candle_core::Tensor;

use super::lcm::{consistency_setup, x0_and_eps};
use super::math::invalid;
use super::{
    check_index, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig, SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "tcd";

/// The strategic stochastic sampler of TCD, following diffusers' `TCDScheduler`: each step
/// predicts the sample at an intermediate timestep `s = ⌊(1 - gamma)·t_prev⌋` and, with
/// `gamma > 0` and except at the last step, re-noises it to `t_prev` with fresh noise from the
/// [`NoiseSource`]. `gamma` (diffusers' `eta`, default 0.3) is set with [`Tcd::with_gamma`].
///
/// Reads the same fields as [`super::Lcm`] (timesteps from `original_inference_steps`).
#[derive(Debug, Clone)]
pub struct Tcd {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    prediction_type: PredictionType,
    gamma: f64,
}

impl Tcd {
    /// A TCD schedule of `steps` steps for `config`, gamma 0.3.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let (timesteps, alphas_cumprod) = consistency_setup(NAME, config, steps)?;
        Ok(Self {
            timesteps,
            alphas_cumprod,
            prediction_type: config.prediction_type,
            gamma: 0.3,
        })
    }

    /// Sets gamma (diffusers' `eta`), the stochasticity, in `0..=1`.
    pub fn with_gamma(mut self, gamma: f64) -> Result<Self, SchedulerError> {
        if !(0.0..=1.0).contains(&gamma) {
            return Err(invalid(
                NAME,
                format!("gamma {gamma} must be between 0 and 1"),
            ));
        }
        self.gamma = gamma;
        Ok(self)
    }
}

impl Scheduler for Tcd {
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
        let prev_t = self.timesteps.get(index + 1).copied().unwrap_or(0.0);
        let s = ((1.0 - self.gamma) * prev_t).floor();
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = self.alphas_cumprod[prev_t as usize];
        let a_s = self.alphas_cumprod[s as usize];
        let (x0, eps) = x0_and_eps(self.prediction_type, &out, &x, a_t)?;
        let noised = lincomb(&[(a_s.sqrt(), &x0), ((1.0 - a_s).sqrt(), &eps)])?;
        let prev = if self.gamma > 0.0 && index + 1 != self.timesteps.len() {
            let z = noise.randn_like(&out)?.to_dtype(out.dtype())?;
            lincomb(&[
                ((a_prev / a_s).sqrt(), &noised),
                ((1.0 - a_prev / a_s).sqrt(), &z),
            ])?
        } else {
            noised
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
