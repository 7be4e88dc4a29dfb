//! DPM-Solver++ multistep ("DPM++ 2M", "DPM++ 2M SDE", "DPM++ 3M SDE"), following diffusers'
//! `DPMSolverMultistepScheduler`.

use candle_core::Tensor;

use super::flow;
use super::math::{self, invalid};
use super::schedules::{self, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, lincomb, refuse_thresholding, to_work, vp_x0, FinalSigmasType, PredictionType,
    Scheduler, SchedulerConfig, SchedulerError, SolverType,
};
use crate::noise::NoiseSource;

/// Which DPM-Solver++ a [`DpmMultistep`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmVariant {
    /// "DPM++ 2M": `solver_order = 2`, `algorithm_type = "dpmsolver++"`.
    TwoM,
    /// "DPM++ 2M SDE": `solver_order = 2`, `algorithm_type = "sde-dpmsolver++"`.
    TwoMSde,
    /// "DPM++ 3M SDE": `solver_order = 3`, `algorithm_type = "sde-dpmsolver++"`.
    ThreeMSde,
}

impl DpmVariant {
    fn name(self) -> &'static str {
        match self {
            Self::TwoM => "dpmpp_2m",
            Self::TwoMSde => "dpmpp_2m_sde",
            Self::ThreeMSde => "dpmpp_3m_sde",
        }
    }

    fn order(self) -> usize {
        match self {
            Self::ThreeMSde => 3,
            _ => 2,
        }
    }

    fn sde(self) -> bool {
        self != Self::TwoM
    }
}

/// DPM-Solver++ (Lu et al. 2022) multistep in the variance-preserving space, following
/// diffusers' `DPMSolverMultistepScheduler` with the variant's `solver_order` and
/// `algorithm_type`. The SDE variants draw one noise per step from the [`NoiseSource`].
///
/// Reads the beta fields, `rescale_betas_zero_snr`, `prediction_type`, `timestep_spacing`
/// (default `linspace`), `steps_offset`, `solver_type` (`midpoint`, default, or `heun`),
/// `lower_order_final` (default `true`), `euler_at_final`, `final_sigmas_type`,
/// `lambda_min_clipped`, `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`,
/// `sigma_min` and `sigma_max`, and takes every [`super::Schedule`]. `solver_order` and
/// `algorithm_type` in the file are ignored: the name says which solver runs. `thresholding`,
/// `use_lu_lambdas` and `use_flow_sigmas` are refused; flow-matching models use
/// [`DpmMultistep::flow`].
#[derive(Debug, Clone)]
pub struct DpmMultistep {
    variant: DpmVariant,
    /// Flow-matching sigmas (`x = (1 − σ)·x0 + σ·noise`, velocity output) rather than the
    /// variance-preserving ones.
    flow: bool,
    timesteps: Vec<f64>,
    /// One sigma per step plus the final one.
    sigmas: Vec<f64>,
    prediction_type: PredictionType,
    heun: bool,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    /// Data predictions of the last steps, oldest first, with their step indices.
    outputs: Vec<(usize, Tensor)>,
    lower_order_nums: usize,
}

impl DpmMultistep {
    /// A DPM-Solver++ schedule of `steps` steps for `config`.
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        variant: DpmVariant,
    ) -> Result<Self, SchedulerError> {
        let name = variant.name();
        math::check_steps(name, config, steps)?;
        refuse_thresholding(name, config)?;
        let ac = sigma_alphas_cumprod(name, config)?;
        let clipped =
            config.num_train_timesteps - math::clipped_steps(&ac, config.lambda_min_clipped);
        if clipped < steps {
            return Err(invalid(
                name,
                format!(
                    "lambda_min_clipped leaves {clipped} training steps, fewer than the {steps} \
                     steps asked for"
                ),
            ));
        }
        let flavor = Flavor {
            cosine_karras_unrounded: true,
            ..Flavor::solver(clipped)
        };
        let plan = schedules::plan(name, config, steps, &ac, flavor)?;
        let final_zero = config.final_sigmas_type == FinalSigmasType::Zero;
        let mut sigmas = plan.sigmas;
        sigmas.push(if final_zero {
            0.0
        } else {
            plan.train_sigmas[0]
        });
        Ok(Self {
            variant,
            flow: false,
            timesteps: plan.timesteps,
            sigmas,
            prediction_type: config.prediction_type,
            heun: config.solver_type == Some(SolverType::Heun),
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final,
            final_zero,
            outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// The flow-matching form (diffusers' `DPMSolverMultistepScheduler` with
    /// `use_flow_sigmas` and `prediction_type = "flow_prediction"`), for `steps` steps: sigmas
    /// `1 − linspace(1, 1/T, steps + 1)` shifted by `flow_shift` (`shift` when unset) or, with
    /// `use_dynamic_shifting`, by `exp(mu)`, the last dropped and 0 appended; timesteps
    /// `⌊σ·T⌋`. The model output is the velocity whatever `prediction_type` says (FLUX's
    /// configs name none). Reads `num_train_timesteps`, the shift fields, `solver_type`,
    /// `lower_order_final` and `euler_at_final`; `final_sigmas_type` must be `zero` and the
    /// schedule the default.
    pub fn flow(
        config: &SchedulerConfig,
        steps: usize,
        variant: DpmVariant,
        mu: Option<f64>,
    ) -> Result<Self, SchedulerError> {
        let name = variant.name();
        math::check_steps(name, config, steps)?;
        refuse_thresholding(name, config)?;
        flow::require_default_schedule(name, config)?;
        if config.final_sigmas_type != FinalSigmasType::Zero {
            return Err(invalid(
                name,
                "final_sigmas_type sigma_min is not supported with flow sigmas; use zero",
            ));
        }
        let static_shift = config.flow_shift.unwrap_or(config.shift);
        let shift = flow::shift_value(name, config, static_shift, mu)?;
        let train = config.num_train_timesteps;
        let alphas = math::numpy_linspace(1.0, 1.0 / train as f64, steps + 1);
        let mut shifted: Vec<f64> = alphas
            .iter()
            .map(|a| {
                let s = 1.0 - a;
                shift * s / (1.0 + (shift - 1.0) * s)
            })
            .rev()
            .collect();
        shifted.pop();
        // diffusers keeps the timesteps as int64 (truncated) and the sigmas as float32.
        let timesteps = shifted.iter().map(|s| (s * train as f64).trunc()).collect();
        let mut sigmas: Vec<f64> = shifted.iter().map(|&s| s as f32 as f64).collect();
        sigmas.push(0.0);
        Ok(Self {
            variant,
            flow: true,
            timesteps,
            sigmas,
            prediction_type: config.prediction_type,
            heun: config.solver_type == Some(SolverType::Heun),
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final,
            final_zero: true,
            outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// The noise levels, one per step plus the final one.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// `(alpha_t, sigma_t)` at noise level `sigma`: variance-preserving, or flow matching's
    /// `(1 − σ, σ)`.
    fn alpha_sigma(&self, sigma: f64) -> (f64, f64) {
        if self.flow {
            (1.0 - sigma, sigma)
        } else {
            math::alpha_sigma(sigma)
        }
    }

    /// The log-SNR `ln(alpha_t) − ln(sigma_t)`.
    fn lambda(&self, sigma: f64) -> f64 {
        let (a, s) = self.alpha_sigma(sigma);
        a.ln() - s.ln()
    }

    /// The predicted clean sample.
    fn data_prediction(&self, out: &Tensor, x: &Tensor, sigma: f64) -> candle_core::Result<Tensor> {
        if self.flow {
            return lincomb(&[(1.0, x), (-sigma, out)]);
        }
        let (a, s) = self.alpha_sigma(sigma);
        vp_x0(self.prediction_type, out, x, a, s)
    }

    /// The model-output terms of the DPM-Solver(++) update of order `use_order` from step
    /// `index` (log-SNR step `h`, target α `a_t`), as (coefficient, tensor) pairs.
    fn solver_terms(
        &self,
        use_order: usize,
        index: usize,
        h: f64,
        a_t: f64,
    ) -> candle_core::Result<Vec<(f64, Tensor)>> {
        let sde = self.variant.sde();
        let (e_h, e_2h) = ((-h).exp(), (-2.0 * h).exp());
        let s0 = self.sigmas[index];
        let m = |back: usize| &self.outputs[self.outputs.len() - 1 - back].1;
        let mut terms = Vec::with_capacity(3);
        match use_order {
            1 => {
                let c = if sde {
                    a_t * (1.0 - e_2h)
                } else {
                    -a_t * (e_h - 1.0)
                };
                terms.push((c, m(0).clone()));
            }
            2 => {
                let s1 = self.sigmas[index - 1];
                let h0 = self.lambda(s0) - self.lambda(s1);
                let r0 = h0 / h;
                let d1 = lincomb(&[(1.0 / r0, m(0)), (-1.0 / r0, m(1))])?;
                let (c0, c1) = match (sde, self.heun) {
                    (false, false) => (-a_t * (e_h - 1.0), -0.5 * a_t * (e_h - 1.0)),
                    (false, true) => (-a_t * (e_h - 1.0), a_t * ((e_h - 1.0) / h + 1.0)),
                    (true, false) => (a_t * (1.0 - e_2h), 0.5 * a_t * (1.0 - e_2h)),
                    (true, true) => (a_t * (1.0 - e_2h), a_t * ((1.0 - e_2h) / (-2.0 * h) + 1.0)),
                };
                terms.push((c0, m(0).clone()));
                terms.push((c1, d1));
            }
            _ => {
                let (s1, s2) = (self.sigmas[index - 1], self.sigmas[index - 2]);
                let (h0, h1) = (
                    self.lambda(s0) - self.lambda(s1),
                    self.lambda(s1) - self.lambda(s2),
                );
                let (r0, r1) = (h0 / h, h1 / h);
                let d1_0 = lincomb(&[(1.0 / r0, m(0)), (-1.0 / r0, m(1))])?;
                let d1_1 = lincomb(&[(1.0 / r1, m(1)), (-1.0 / r1, m(2))])?;
                let w = r0 / (r0 + r1);
                let d1 = lincomb(&[(1.0 + w, &d1_0), (-w, &d1_1)])?;
                let d2 = lincomb(&[(1.0 / (r0 + r1), &d1_0), (-1.0 / (r0 + r1), &d1_1)])?;
                let (c0, c1, c2) = if sde {
                    (
                        a_t * (1.0 - e_2h),
                        a_t * ((1.0 - e_2h) / (-2.0 * h) + 1.0),
                        a_t * ((1.0 - e_2h - 2.0 * h) / (2.0 * h).powi(2) - 0.5),
                    )
                } else {
                    (
                        -a_t * (e_h - 1.0),
                        a_t * ((e_h - 1.0) / h + 1.0),
                        -a_t * ((e_h - 1.0 + h) / (h * h) - 0.5),
                    )
                };
                terms.push((c0, m(0).clone()));
                terms.push((c1, d1));
                terms.push((c2, d2));
            }
        }
        Ok(terms)
    }
}

impl Scheduler for DpmMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        check_index(self.variant.name(), index, self.timesteps.len())?;
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor> {
        let n = self.timesteps.len();
        check_index(self.variant.name(), index, n)?;
        let (out, x) = to_work(model_output, sample)?;
        let order = self.variant.order();
        // History from earlier, non-consecutive runs does not count.
        if self.outputs.last().is_some_and(|(i, _)| *i + 1 != index) {
            self.outputs.clear();
            self.lower_order_nums = 0;
        }
        let short = self.lower_order_final && n < 15;
        let lower_final = index == n - 1 && (self.euler_at_final || short || self.final_zero);
        let lower_second = index + 2 == n && short;

        let s0 = self.sigmas[index];
        let (_, sg_s0) = self.alpha_sigma(s0);
        let x0 = self.data_prediction(&out, &x, s0)?;
        self.outputs.push((index, x0));
        if self.outputs.len() > order {
            self.outputs.remove(0);
        }
        let z = if self.variant.sde() {
            Some(noise.randn_like(&out)?.to_dtype(out.dtype())?)
        } else {
            None
        };

        let st = self.sigmas[index + 1];
        let (a_t, sg_t) = self.alpha_sigma(st);
        let h = self.lambda(st) - self.lambda(s0);
        let sde = self.variant.sde();
        // The noise term of the SDE variants: σ_t·√(1 - e^{-2h})·z.
        let noise_coef = sg_t * (1.0 - (-2.0 * h).exp()).max(0.0).sqrt();
        let mut terms: Vec<(f64, Tensor)> = Vec::new();
        let use_order = if self.lower_order_nums < 1 || lower_final {
            1
        } else if order == 2 || self.lower_order_nums < 2 || lower_second {
            2
        } else {
            3
        };
        let e_h = (-h).exp();
        let x_coef = if sde {
            sg_t / sg_s0 * e_h
        } else {
            sg_t / sg_s0
        };
        terms.push((x_coef, x.clone()));
        terms.extend(self.solver_terms(use_order, index, h, a_t)?);
        if let Some(z) = &z {
            terms.push((noise_coef, z.clone()));
        }
        let refs: Vec<(f64, &Tensor)> = terms.iter().map(|(c, t)| (*c, t)).collect();
        let prev = lincomb(&refs)?;
        self.lower_order_nums = (self.lower_order_nums + 1).min(order);
        prev.to_dtype(sample.dtype())
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        check_index(self.variant.name(), index, self.timesteps.len())?;
        let (a, s) = self.alpha_sigma(self.sigmas[index]);
        lincomb(&[(a, original), (s, noise)])
    }
}
