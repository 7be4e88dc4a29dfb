//! Heun's method (Karras et al. 2022, algorithm 1), following diffusers' `HeunDiscreteScheduler`.

use candle_core::Tensor;

use super::math;
use super::schedules::{self, euler_init_noise_sigma, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, k_denoised, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "heun";

/// One model call of a two-stage sampler: the first stage of step `k` (from sigma `k`), or the
/// second (the correction at sigma `k + 1`, or at the midpoint for DPM2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// First stage of step `k`.
    First(usize),
    /// Second stage of step `k`.
    Second(usize),
}

/// diffusers' call order for `steps` steps of a two-stage sampler: `First(0)`, then
/// `Second(k - 1), First(k)` for each later step; `2·steps - 1` calls (the last step, to sigma
/// 0, has no second stage).
pub(crate) fn two_stage_calls(steps: usize) -> Vec<Stage> {
    let mut calls = vec![Stage::First(0)];
    for k in 1..steps {
        calls.push(Stage::Second(k - 1));
        calls.push(Stage::First(k));
    }
    calls
}

/// What the first stage left for the second.
#[derive(Debug, Clone)]
struct Pending {
    step: usize,
    sample: Tensor,
    derivative: Tensor,
}

/// Heun's second-order method over the noise levels, following diffusers'
/// `HeunDiscreteScheduler`: `steps` steps make `2·steps - 1` model calls, with timesteps
/// `t0, t1, t1, t2, t2, ...` as in diffusers ([`Scheduler::order`] is 2).
///
/// Reads the beta fields, `prediction_type`, `timestep_spacing` (default `linspace`),
/// `steps_offset`, `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`,
/// `sigma_min`, `sigma_max`, `clip_sample` (default `false`) and `clip_sample_range`, and takes
/// every [`super::Schedule`].
#[derive(Debug, Clone)]
pub struct Heun {
    timesteps: Vec<f64>,
    calls: Vec<Stage>,
    /// One sigma per step plus the final 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
    clip: Option<f64>,
    pending: Option<Pending>,
}

impl Heun {
    /// A Heun schedule of `steps` steps (`2·steps - 1` model calls) for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        let ac = sigma_alphas_cumprod(NAME, config)?;
        let plan = schedules::plan(NAME, config, steps, &ac, Flavor::euler(config, false))?;
        let mut sigmas = plan.sigmas;
        sigmas.push(0.0);
        let calls = two_stage_calls(steps);
        let timesteps = calls
            .iter()
            .map(|c| match *c {
                Stage::First(k) => plan.timesteps[k],
                Stage::Second(k) => plan.timesteps[k + 1],
            })
            .collect();
        Ok(Self {
            timesteps,
            calls,
            init_noise_sigma: euler_init_noise_sigma(&sigmas, plan.spacing),
            sigmas,
            prediction_type: config.prediction_type,
            clip: config
                .clip_sample
                .unwrap_or(false)
                .then_some(config.clip_sample_range),
            pending: None,
        })
    }

    /// The sigma the model sees at call `index`.
    fn call_sigma(&self, index: usize) -> f64 {
        match self.calls[index] {
            Stage::First(k) => self.sigmas[k],
            Stage::Second(k) => self.sigmas[k + 1],
        }
    }
}

impl Scheduler for Heun {
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
        let sigma = self.call_sigma(index);
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
        let sigma_in = self.call_sigma(index);
        let x0 = k_denoised(self.prediction_type, &out, &x, sigma_in)?;
        let x0 = match self.clip {
            Some(r) => x0.clamp(-r, r)?,
            None => x0,
        };
        let derivative = lincomb(&[(1.0 / sigma_in, &x), (-1.0 / sigma_in, &x0)])?;
        let prev = match self.calls[index] {
            Stage::First(k) => {
                let dt = self.sigmas[k + 1] - self.sigmas[k];
                let prev = lincomb(&[(1.0, &x), (dt, &derivative)])?;
                self.pending = Some(Pending {
                    step: k,
                    sample: x,
                    derivative,
                });
                prev
            }
            Stage::Second(k) => {
                let Some(p) = self.pending.take().filter(|p| p.step == k) else {
                    candle_core::bail!(
                        "{NAME}: call {index} is the second stage of step {k}; run its first \
                         stage (call {}) before it",
                        index - 1
                    );
                };
                let dt = self.sigmas[k + 1] - self.sigmas[k];
                lincomb(&[
                    (1.0, &p.sample),
                    (dt / 2.0, &p.derivative),
                    (dt / 2.0, &derivative),
                ])?
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
        original + (noise * self.call_sigma(index))?
    }
}
