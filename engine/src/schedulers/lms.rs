//! Linear multistep (k-diffusion's `sample_lms`), following diffusers' `LMSDiscreteScheduler`.

use candle_core::Tensor;

use super::math;
use super::schedules::{self, euler_init_noise_sigma, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, k_denoised, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "lms";

/// Highest order of the multistep formula (diffusers' default `order = 4`).
const ORDER: usize = 4;

/// Linear multistep over the noise levels, following diffusers' `LMSDiscreteScheduler` (order
/// 4). The coefficients are integrals of Lagrange polynomials in sigma, computed here exactly by
/// Gauss-Legendre quadrature where diffusers calls `scipy.integrate.quad`.
///
/// Reads the beta fields, `prediction_type`, `timestep_spacing` (default `linspace`),
/// `steps_offset`, `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`, `sigma_min`
/// and `sigma_max`, and takes every [`super::Schedule`]. Started at a later index (image to
/// image), the order grows from 1 with the derivatives seen, where diffusers would use the order
/// of the index.
#[derive(Debug, Clone)]
pub struct Lms {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
    derivatives: Vec<Tensor>,
}

impl Lms {
    /// An LMS schedule of `steps` steps for `config`.
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
            derivatives: Vec::new(),
        })
    }

    /// diffusers' `get_lms_coefficient(order, t, current_order)`.
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = &self.sigmas;
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s[t - k]) / (s[t - current] - s[t - k]))
                .product::<f64>()
        };
        math::integrate_polynomial(basis, s[t], s[t + 1])
    }
}

impl Scheduler for Lms {
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
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let (out, x) = to_work(model_output, sample)?;
        let sigma = self.sigmas[index];
        let x0 = k_denoised(self.prediction_type, &out, &x, sigma)?;
        let derivative = lincomb(&[(1.0 / sigma, &x), (-1.0 / sigma, &x0)])?;
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (index + 1).min(ORDER).min(self.derivatives.len());
        let coeffs: Vec<f64> = (0..order)
            .map(|c| self.coefficient(order, index, c))
            .collect();
        let mut terms = vec![(1.0, &x)];
        terms.extend(
            coeffs
                .iter()
                .zip(self.derivatives.iter().rev())
                .map(|(&c, d)| (c, d)),
        );
        lincomb(&terms)?.to_dtype(sample.dtype())
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
