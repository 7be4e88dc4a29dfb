//! DPM2 ancestral ("DPM2 a", k-diffusion's `sample_dpm_2_ancestral`), following diffusers'
//! `KDPM2AncestralDiscreteScheduler`.

use candle_core::Tensor;

use super::heun::{two_stage_calls, Stage};
use super::math::{self, invalid};
use super::schedules::{self, euler_init_noise_sigma, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, k_denoised, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "dpm2_a";

/// DPM2 steps that go below the next noise level (`σ_down`) and add fresh noise (`σ_up`) back,
/// following diffusers' `KDPM2AncestralDiscreteScheduler`: `2·steps - 1` model calls, one noise
/// draw from the [`NoiseSource`] per completed two-stage step ([`Scheduler::order`] is 2).
///
/// Reads the same fields as [`super::Dpm2`].
#[derive(Debug, Clone)]
pub struct Dpm2Ancestral {
    timesteps: Vec<f64>,
    calls: Vec<Stage>,
    sigmas: Vec<f64>,
    up: Vec<f64>,
    down: Vec<f64>,
    /// `mid[k] = √(σ_k·σ_down,k)`, 0 for the last step.
    mid: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
    pending: Option<(usize, Tensor)>,
}

impl Dpm2Ancestral {
    /// A DPM2 ancestral schedule of `steps` steps (`2·steps - 1` model calls) for `config`.
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
        let (mut up, mut down, mut mid) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..steps {
            let (s, next) = (sigmas[k], sigmas[k + 1]);
            let u = (next * next * (s * s - next * next) / (s * s)).sqrt();
            let d = (next * next - u * u).sqrt();
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
            timesteps,
            calls,
            init_noise_sigma: euler_init_noise_sigma(&sigmas, plan.spacing),
            sigmas,
            up,
            down,
            mid,
            prediction_type: config.prediction_type,
            pending: None,
        })
    }
}

impl Scheduler for Dpm2Ancestral {
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
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let (out, x) = to_work(model_output, sample)?;
        let prev = match self.calls[index] {
            Stage::First(k) => {
                let sigma = self.sigmas[k];
                let x0 = k_denoised(self.prediction_type, &out, &x, sigma)?;
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
                let dt = self.down[k] - self.sigmas[k];
                let z = noise.randn_like(&out)?.to_dtype(out.dtype())?;
                lincomb(&[
                    (1.0, &x_start),
                    (dt / mid, &x),
                    (-dt / mid, &x0),
                    (self.up[k], &z),
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
        let sigma = match self.calls[index] {
            Stage::First(k) => self.sigmas[k],
            Stage::Second(k) => self.sigmas[k + 1],
        };
        original + (noise * sigma)?
    }
}
