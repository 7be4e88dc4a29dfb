//! Euler ancestral ("Euler a"), following diffusers' `EulerAncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::math;
use super::schedules::{self, euler_init_noise_sigma, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, k_denoised, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "euler_a";

/// Euler steps that go below the next noise level and add fresh noise back up to it
/// (k-diffusion's `sample_euler_ancestral`, eta 1), following diffusers'
/// `EulerAncestralDiscreteScheduler`. The noise comes from the [`NoiseSource`], one draw per step.
///
/// Reads the beta fields, `rescale_betas_zero_snr`, `prediction_type` (`epsilon`,
/// `v_prediction`; `sample` too, which diffusers lacks), `timestep_spacing` (default
/// `linspace`) and `steps_offset`. Every [`super::Schedule`] applies (diffusers' class has no
/// Karras option; beeswax lays the sigmas out as its Euler does).
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
}

impl EulerAncestral {
    /// An Euler ancestral schedule of `steps` steps for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        let ac = sigma_alphas_cumprod(NAME, config)?;
        let plan = schedules::plan(NAME, config, steps, &ac, Flavor::euler(config, false))?;
        let mut sigmas = plan.sigmas;
        sigmas.push(0.0);
        Ok(Self {
            timesteps: plan.timesteps,
            init_noise_sigma: euler_init_noise_sigma(&sigmas, plan.spacing),
            sigmas,
            prediction_type: config.prediction_type,
        })
    }
}

impl Scheduler for EulerAncestral {
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
        let (out, x) = to_work(model_output, sample)?;
        let (sigma, next) = (self.sigmas[index], self.sigmas[index + 1]);
        let x0 = k_denoised(self.prediction_type, &out, &x, sigma)?;
        let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
        let down = (next * next - up * up).sqrt();
        // x + (x - x0)/σ · (down - σ)
        let ratio = (down - sigma) / sigma;
        let prev = lincomb(&[(1.0 + ratio, &x), (-ratio, &x0)])?;
        let z = noise.randn_like(&out)?.to_dtype(out.dtype())?;
        lincomb(&[(1.0, &prev), (up, &z)])?.to_dtype(sample.dtype())
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
