//! DPM++ 2S ancestral, following diffusers' `DPMSolverSinglestepScheduler` with
//! `solver_order = 2` and `algorithm_type = "sde-dpmsolver++"`.

use candle_core::Tensor;

use super::math::{self, alpha_sigma, invalid, lambda};
use super::schedules::{self, refuse_spacing, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, lincomb, refuse_thresholding, to_work, vp_x0, FinalSigmasType, PredictionType,
    Scheduler, SchedulerConfig, SchedulerError, SolverType, TimestepSpacing,
};
use crate::noise::NoiseSource;

const NAME: &str = "dpmpp_2s_a";

/// "DPM++ 2S a": second-order singlestep DPM-Solver++ with fresh noise at every step, following
/// diffusers' `DPMSolverSinglestepScheduler(solver_order=2, algorithm_type="sde-dpmsolver++")`
/// (AUTOMATIC1111's `sample_dpmpp_2s_ancestral` evaluates the model at log-sigma midpoints
/// instead; beeswax follows diffusers so its steps can be checked against it). Steps alternate
/// first order (which restarts from the current sample) and second order (from the same start,
/// using both model outputs); every step draws one noise from the [`NoiseSource`].
///
/// Reads the beta fields, `rescale_betas_zero_snr`, `prediction_type`, `solver_type`
/// (`midpoint`, default, or `heun`), `lower_order_final` (forced on with a zero final sigma, as
/// diffusers does), `final_sigmas_type`, `lambda_min_clipped`, `use_karras_sigmas`,
/// `use_exponential_sigmas`, `use_beta_sigmas`, `sigma_min` and `sigma_max`. The timesteps are
/// always `linspace` (the class has no `timestep_spacing`), so spacing schedules are refused.
#[derive(Debug, Clone)]
pub struct DpmSinglestep {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    orders: Vec<usize>,
    prediction_type: PredictionType,
    heun: bool,
    /// The last data predictions with their step indices (at most 2).
    outputs: Vec<(usize, Tensor)>,
    /// The sample the current singlestep update started from.
    start: Option<Tensor>,
}

/// diffusers' `get_order_list` for order 2.
fn order_list(steps: usize, lower_order_final: bool, final_zero: bool) -> Vec<usize> {
    let mut orders: Vec<usize> = if lower_order_final {
        let mut o: Vec<usize> = (0..steps / 2 * 2).map(|i| 1 + i % 2).collect();
        if steps % 2 == 0 {
            o.truncate(steps - 2);
            o.extend([1, 1]);
        } else {
            o.push(1);
        }
        o
    } else {
        (0..steps / 2 * 2).map(|i| 1 + i % 2).collect()
    };
    if final_zero {
        if let Some(last) = orders.last_mut() {
            *last = 1;
        }
    }
    orders
}

impl DpmSinglestep {
    /// A DPM++ 2S a schedule of `steps` steps for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        refuse_thresholding(NAME, config)?;
        refuse_spacing(
            NAME,
            config,
            "DPMSolverSinglestepScheduler always spaces its timesteps linearly",
        )?;
        let ac = sigma_alphas_cumprod(NAME, config)?;
        let clipped =
            config.num_train_timesteps - math::clipped_steps(&ac, config.lambda_min_clipped);
        if clipped < steps {
            return Err(invalid(
                NAME,
                format!(
                    "lambda_min_clipped leaves {clipped} training steps, fewer than the {steps} \
                     steps asked for"
                ),
            ));
        }
        let mut linspace = config.clone();
        linspace.timestep_spacing = Some(TimestepSpacing::Linspace);
        linspace.steps_offset = 0;
        let plan = schedules::plan(NAME, &linspace, steps, &ac, Flavor::solver(clipped))?;
        let final_zero = config.final_sigmas_type == FinalSigmasType::Zero;
        let mut sigmas = plan.sigmas;
        sigmas.push(if final_zero {
            0.0
        } else {
            plan.train_sigmas[0]
        });
        let lower_order_final =
            config.lower_order_final.unwrap_or(false) || steps % 2 != 0 || final_zero;
        Ok(Self {
            timesteps: plan.timesteps,
            sigmas,
            orders: order_list(steps, lower_order_final, final_zero),
            prediction_type: config.prediction_type,
            heun: config.solver_type == Some(SolverType::Heun),
            outputs: Vec::new(),
            start: None,
        })
    }
}

impl Scheduler for DpmSinglestep {
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
        if self.outputs.last().is_some_and(|(i, _)| *i + 1 != index) {
            self.outputs.clear();
            self.start = None;
        }
        let s0 = self.sigmas[index];
        let (a_s0, sg_s0) = alpha_sigma(s0);
        let x0 = vp_x0(self.prediction_type, &out, &x, a_s0, sg_s0)?;
        self.outputs.push((index, x0));
        if self.outputs.len() > 2 {
            self.outputs.remove(0);
        }
        let z = noise.randn_like(&out)?.to_dtype(out.dtype())?;
        let mut order = self.orders.get(index).copied().unwrap_or(1);
        if order == 2 && (self.outputs.len() < 2 || self.start.is_none()) {
            order = 1;
        }
        if order == 1 {
            self.start = Some(x.clone());
        }
        let Some(start) = self.start.clone() else {
            candle_core::bail!("{NAME}: step {index} has no starting sample");
        };
        let st = self.sigmas[index + 1];
        let (a_t, sg_t) = alpha_sigma(st);
        let m0 = &self.outputs[self.outputs.len() - 1].1;
        let prev = if order == 1 {
            let h = lambda(st) - lambda(s0);
            let (e_h, e_2h) = ((-h).exp(), (-2.0 * h).exp());
            lincomb(&[
                (sg_t / sg_s0 * e_h, &start),
                (a_t * (1.0 - e_2h), m0),
                (sg_t * (1.0 - e_2h).max(0.0).sqrt(), &z),
            ])?
        } else {
            let s1 = self.sigmas[index - 1];
            let sg_s1 = alpha_sigma(s1).1;
            let m1 = &self.outputs[0].1;
            let h = lambda(st) - lambda(s1);
            let h0 = lambda(s0) - lambda(s1);
            let r0 = h0 / h;
            let (e_h, e_2h) = ((-h).exp(), (-2.0 * h).exp());
            let c1 = if self.heun {
                a_t * ((1.0 - e_2h) / (-2.0 * h) + 1.0)
            } else {
                0.5 * a_t * (1.0 - e_2h)
            };
            // D0 = m1, D1 = (m0 - m1)/r0.
            lincomb(&[
                (sg_t / sg_s1 * e_h, &start),
                (a_t * (1.0 - e_2h) - c1 / r0, m1),
                (c1 / r0, m0),
                (sg_t * (1.0 - e_2h).max(0.0).sqrt(), &z),
            ])?
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
        let (a, s) = alpha_sigma(self.sigmas[index]);
        lincomb(&[(a, original), (s, noise)])
    }
}

#[cfg(test)]
mod tests {
    use super::order_list;

    #[test]
    fn order_lists_match_diffusers() {
        assert_eq!(order_list(7, true, true), [1, 2, 1, 2, 1, 2, 1]);
        assert_eq!(order_list(6, true, true), [1, 2, 1, 2, 1, 1]);
        assert_eq!(order_list(6, false, false), [1, 2, 1, 2, 1, 2]);
    }
}
