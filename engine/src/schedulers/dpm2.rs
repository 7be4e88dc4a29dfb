//! DPM2 and DPM2 ancestral (k-diffusion's `sample_dpm_2` and `sample_dpm_2_ancestral`),
//! following diffusers' `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::heun::{two_stage_calls, Stage};
use super::math::{self, invalid};
use super::schedules::{self, euler_init_noise_sigma, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, k_denoised, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError,
};
use crate::noise::NoiseSource;

/// The second-order DPM-Solver step of k-diffusion (a midpoint method in log sigma): `steps`
/// steps make `2·steps - 1` model calls, the second of each pair at the geometric mean of the
/// step's sigma and its target ([`Scheduler::order`] is 2).
///
/// The plain form ([`Dpm2::new`], diffusers' `KDPM2DiscreteScheduler`) steps to the next
/// sigma. The ancestral form ([`Dpm2::ancestral`], "DPM2 a", diffusers'
/// `KDPM2AncestralDiscreteScheduler`) steps below it (`σ_down`) and adds fresh noise (`σ_up`)
/// back: one noise draw from the [`NoiseSource`] per completed two-stage step.
///
/// Reads the beta fields, `prediction_type` (`epsilon`, `v_prediction`), `timestep_spacing`
/// (default `linspace`), `steps_offset`, `use_karras_sigmas` (whole timesteps, as diffusers),
/// `use_exponential_sigmas`, `use_beta_sigmas`, `sigma_min` and `sigma_max`, and takes every
/// [`super::Schedule`].
#[derive(Debug, Clone)]
pub struct Dpm2 {
    name: &'static str,
    timesteps: Vec<f64>,
    calls: Vec<Stage>,
    /// One sigma per step plus the final 0.
    sigmas: Vec<f64>,
    /// The noise added back after step `k` (all 0 in the plain form).
    up: Vec<f64>,
    /// The sigma step `k` goes to before the noise is added back (`σ_{k+1}` in the plain form).
    down: Vec<f64>,
    /// `mid[k] = √(σ_k·σ_down,k)`, the second stage's sigma (0 for the last step).
    mid: Vec<f64>,
    ancestral: bool,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
    pending: Option<(usize, Tensor)>,
}

impl Dpm2 {
    /// A DPM2 schedule of `steps` steps (`2·steps - 1` model calls) for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        Self::build("dpm2", false, config, steps)
    }

    /// A DPM2 ancestral schedule of `steps` steps (`2·steps - 1` model calls) for `config`.
    pub fn ancestral(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        Self::build("dpm2_a", true, config, steps)
    }

    fn build(
        name: &'static str,
        ancestral: bool,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Self, SchedulerError> {
        math::check_steps(name, config, steps)?;
        if config.prediction_type == PredictionType::Sample {
            return Err(invalid(
                name,
                "prediction_type sample is not supported (diffusers neither); use epsilon or \
                 v_prediction",
            ));
        }
        let ac = sigma_alphas_cumprod(name, config)?;
        let plan = schedules::plan(name, config, steps, &ac, Flavor::euler(config, true))?;
        let log_sigmas: Vec<f64> = plan.train_sigmas.iter().map(|s| s.ln()).collect();
        let mut sigmas = plan.sigmas;
        sigmas.push(0.0);
        let (mut up, mut down, mut mid) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..steps {
            let (s, next) = (sigmas[k], sigmas[k + 1]);
            let (u, d) = if ancestral {
                let u = (next * next * (s * s - next * next) / (s * s)).sqrt();
                (u, (next * next - u * u).sqrt())
            } else {
                (0.0, next)
            };
            up.push(u);
            down.push(d);
            mid.push(if k + 1 == steps {
                0.0
            } else {
                (0.5 * (s.ln() + d.ln())).exp()
            });
        }
        let calls = two_stage_calls(steps);
        let timesteps = calls
            .iter()
            .map(|c| match *c {
                Stage::First(k) => plan.timesteps[k],
                Stage::Second(k) => math::sigma_to_t(mid[k], &log_sigmas),
            })
            .collect();
        Ok(Self {
            name,
            timesteps,
            calls,
            init_noise_sigma: euler_init_noise_sigma(&sigmas, plan.spacing),
            sigmas,
            up,
            down,
            mid,
            ancestral,
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
        check_index(self.name, index, self.timesteps.len())?;
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
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        check_index(self.name, index, self.timesteps.len())?;
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
                        "{}: call {index} is the second stage of step {k}; run its first \
                         stage before it",
                        self.name
                    );
                };
                let mid = self.mid[k];
                let x0 = k_denoised(self.prediction_type, &out, &x, mid)?;
                let dt = self.down[k] - self.sigmas[k];
                let mut terms = vec![(1.0, &x_start), (dt / mid, &x), (-dt / mid, &x0)];
                let z;
                if self.ancestral {
                    z = noise.randn_like(&out)?.to_dtype(out.dtype())?;
                    terms.push((self.up[k], &z));
                }
                lincomb(&terms)?
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
        check_index(self.name, index, self.timesteps.len())?;
        let sigma = match self.calls[index] {
            Stage::First(k) => self.sigmas[k],
            Stage::Second(k) => self.sigmas[k + 1],
        };
        original + (noise * sigma)?
    }
}
