//! DEIS (Zhang & Chen 2022), following diffusers' `DEISMultistepScheduler`.

use candle_core::Tensor;

use super::math::{self, alpha_sigma, invalid, lambda};
use super::schedules::{self, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, lincomb, refuse_thresholding, to_work, vp_x0, PredictionType, Scheduler,
    SchedulerConfig, SchedulerError,
};
use crate::noise::NoiseSource;

const NAME: &str = "deis";

/// Diffusion exponential integrator sampling (log-rho multistep), following diffusers'
/// `DEISMultistepScheduler`. As in diffusers the last step goes to the smallest training sigma
/// (or the schedule's last sigma), not to 0.
///
/// Reads the beta fields, `rescale_betas_zero_snr`, `prediction_type`, `solver_order` (default
/// 2, at most 3), `lower_order_final` (default `true`), `timestep_spacing` (default
/// `linspace`), `steps_offset`, `use_karras_sigmas`, `use_exponential_sigmas`,
/// `use_beta_sigmas`, `sigma_min` and `sigma_max`, and takes every [`super::Schedule`].
#[derive(Debug, Clone)]
pub struct Deis {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction_type: PredictionType,
    order: usize,
    lower_order_final: bool,
    /// Noise predictions of the last steps, oldest first, with their step indices.
    outputs: Vec<(usize, Tensor)>,
    lower_order_nums: usize,
}

impl Deis {
    /// A DEIS schedule of `steps` steps for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        refuse_thresholding(NAME, config)?;
        let order = config.solver_order.unwrap_or(2);
        if !(1..=3).contains(&order) {
            return Err(invalid(
                NAME,
                format!("solver_order {order} is not supported; use 1, 2 or 3"),
            ));
        }
        let ac = sigma_alphas_cumprod(NAME, config)?;
        let plan = schedules::plan(
            NAME,
            config,
            steps,
            &ac,
            Flavor::solver(config.num_train_timesteps),
        )?;
        let from_sigmas = config.schedule.sets_sigmas()
            || config.use_karras_sigmas
            || config.use_exponential_sigmas
            || config.use_beta_sigmas;
        let last = if from_sigmas {
            plan.sigmas[steps - 1]
        } else {
            plan.train_sigmas[0]
        };
        let mut sigmas = plan.sigmas;
        sigmas.push(last);
        Ok(Self {
            timesteps: plan.timesteps,
            sigmas,
            prediction_type: config.prediction_type,
            order,
            lower_order_final: config.lower_order_final.unwrap_or(true),
            outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    fn output(&self, back: usize) -> &Tensor {
        &self.outputs[self.outputs.len() - 1 - back].1
    }
}

/// DEIS's second-order integral of the Lagrange basis in log rho.
fn ind2(t: f64, b: f64, c: f64) -> f64 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// DEIS's third-order integral of the Lagrange basis in log rho.
fn ind3(t: f64, b: f64, c: f64, d: f64) -> f64 {
    let (lt, lb, lc, ld) = (t.ln(), b.ln(), c.ln(), d.ln());
    let numerator = t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0);
    numerator / ((lb - lc) * (lb - ld))
}

impl Scheduler for Deis {
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
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let n = self.timesteps.len();
        check_index(NAME, index, n)?;
        let (out, x) = to_work(model_output, sample)?;
        if self.outputs.last().is_some_and(|(i, _)| *i + 1 != index) {
            self.outputs.clear();
            self.lower_order_nums = 0;
        }
        let short = self.lower_order_final && n < 15;
        let lower_final = index == n - 1 && short;
        let lower_second = index + 2 == n && short;
        let s0 = self.sigmas[index];
        let (a_0, sg_0) = alpha_sigma(s0);
        let x0 = vp_x0(self.prediction_type, &out, &x, a_0, sg_0)?;
        let eps = lincomb(&[(1.0 / sg_0, &x), (-a_0 / sg_0, &x0)])?;
        self.outputs.push((index, eps));
        if self.outputs.len() > self.order {
            self.outputs.remove(0);
        }
        let st = self.sigmas[index + 1];
        let (a_t, sg_t) = alpha_sigma(st);
        let use_order = if self.order == 1 || self.lower_order_nums < 1 || lower_final {
            1
        } else if self.order == 2 || self.lower_order_nums < 2 || lower_second {
            2
        } else {
            3
        };
        // rho = σ_t / α_t is the k-diffusion sigma itself.
        let (rt, r0) = (st, s0);
        let prev = match use_order {
            1 => {
                let h = lambda(st) - lambda(s0);
                lincomb(&[(a_t / a_0, &x), (-sg_t * h.exp_m1(), self.output(0))])?
            }
            2 => {
                let r1 = self.sigmas[index - 1];
                let c1 = ind2(rt, r0, r1) - ind2(r0, r0, r1);
                let c2 = ind2(rt, r1, r0) - ind2(r0, r1, r0);
                lincomb(&[
                    (a_t / a_0, &x),
                    (a_t * c1, self.output(0)),
                    (a_t * c2, self.output(1)),
                ])?
            }
            _ => {
                let (r1, r2) = (self.sigmas[index - 1], self.sigmas[index - 2]);
                let c1 = ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2);
                let c2 = ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0);
                let c3 = ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1);
                lincomb(&[
                    (a_t / a_0, &x),
                    (a_t * c1, self.output(0)),
                    (a_t * c2, self.output(1)),
                    (a_t * c3, self.output(2)),
                ])?
            }
        };
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.order);
        prev.to_dtype(sample.dtype())
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let (a, s) = alpha_sigma(self.sigmas[index]);
        lincomb(&[(a, original), (s, noise)])
    }
}
