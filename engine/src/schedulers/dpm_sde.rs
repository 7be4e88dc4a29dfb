//! DPM++ SDE (k-diffusion's `sample_dpmpp_sde`), following diffusers' `DPMSolverSDEScheduler`.

use candle_core::Tensor;

use super::heun::{two_stage_calls, Stage};
use super::math;
use super::schedules::{self, euler_init_noise_sigma, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, k_denoised, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "dpmpp_sde";

/// The stochastic second-order DPM-Solver++ of k-diffusion, following diffusers'
/// `DPMSolverSDEScheduler`: `2·steps - 1` model calls, the second of each pair at the
/// log-sigma midpoint ([`Scheduler::order`] is 2).
///
/// Noise: diffusers samples a Brownian tree (torchsde) over sigma and asks it for the
/// normalized increments `W(σ→σ_mid)` and then `W(σ→σ_next)`, which overlap. beeswax draws
/// standard normals from the [`NoiseSource`] and builds the same joint distribution: the first
/// stage uses a draw `n₁`; the second uses `√(a/(a+b))·n₁ + √(b/(a+b))·n₂` with a fresh `n₂`,
/// `a = σ - σ_mid`, `b = σ_mid - σ_next` (a Brownian path's increments are independent). The
/// images are therefore as random as diffusers', not the same pixels for a seed.
///
/// Reads the beta fields, `prediction_type`, `timestep_spacing` (default `linspace`),
/// `steps_offset`, `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`,
/// `sigma_min` and `sigma_max`, and takes every [`super::Schedule`].
#[derive(Debug, Clone)]
pub struct DpmSde {
    timesteps: Vec<f64>,
    calls: Vec<Stage>,
    sigmas: Vec<f64>,
    /// `mid[k] = √(σ_k·σ_{k+1})`.
    mid: Vec<f64>,
    init_noise_sigma: f64,
    prediction_type: PredictionType,
    s_noise: f64,
    /// The first stage's sample and noise draw.
    pending: Option<(usize, Tensor, Tensor)>,
}

impl DpmSde {
    /// A DPM++ SDE schedule of `steps` steps (`2·steps - 1` model calls) for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        let ac = sigma_alphas_cumprod(NAME, config)?;
        let plan = schedules::plan(NAME, config, steps, &ac, Flavor::euler(config, false))?;
        let log_sigmas: Vec<f64> = plan.train_sigmas.iter().map(|s| s.ln()).collect();
        let mut sigmas = plan.sigmas;
        sigmas.push(0.0);
        // t = -ln σ; the midpoint t + (t_next - t)/2.
        let mid: Vec<f64> = (0..steps)
            .map(|k| {
                let (t, tn) = (-sigmas[k].ln(), -sigmas[k + 1].ln());
                (-(t + (tn - t) * 0.5)).exp()
            })
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
            s_noise: 1.0,
            pending: None,
        })
    }
}

impl Scheduler for DpmSde {
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
        let (stage, k) = match self.calls[index] {
            Stage::First(k) => (1, k),
            Stage::Second(k) => (2, k),
        };
        let (sigma, next, mid) = (self.sigmas[k], self.sigmas[k + 1], self.mid[k]);
        let sigma_in = if stage == 1 { sigma } else { mid };
        let x0 = k_denoised(self.prediction_type, &out, &x, sigma_in)?;
        let prev = if next == 0.0 {
            // Last step: Euler to the clean sample.
            let r = (next - sigma) / sigma;
            lincomb(&[(1.0 + r, &x), (-r, &x0)])?
        } else {
            let (start, to, z) = if stage == 1 {
                let z = noise.randn_like(&out)?.to_dtype(out.dtype())?;
                self.pending = Some((k, x.clone(), z.clone()));
                (x, mid, z)
            } else {
                let Some((_, start, z1)) = self.pending.take().filter(|p| p.0 == k) else {
                    candle_core::bail!(
                        "{NAME}: call {index} is the second stage of step {k}; run its first \
                         stage before it"
                    );
                };
                let z2 = noise.randn_like(&out)?.to_dtype(out.dtype())?;
                let (a, b) = (sigma - mid, mid - next);
                let z = lincomb(&[((a / (a + b)).sqrt(), &z1), ((b / (a + b)).sqrt(), &z2)])?;
                (start, next, z)
            };
            let up = to.min((to * to * (sigma * sigma - to * to) / (sigma * sigma)).sqrt());
            let down = (to * to - up * up).sqrt();
            // σ_down/σ · x - expm1(t - t_down) · x0, with t = -ln σ.
            let e = (down.ln() - sigma.ln()).exp_m1();
            lincomb(&[(down / sigma, &start), (-e, &x0), (self.s_noise * up, &z)])?
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
