//! UniPC (Zhao et al. 2023), following diffusers' `UniPCMultistepScheduler`.

use candle_core::Tensor;

use super::math::{self, alpha_sigma, invalid, lambda};
use super::schedules::{self, sigma_alphas_cumprod, Flavor};
use super::{
    check_index, lincomb, refuse_thresholding, to_work, vp_x0, FinalSigmasType, PredictionType,
    Scheduler, SchedulerConfig, SchedulerError, SolverType,
};
use crate::noise::NoiseSource;

const NAME: &str = "unipc";

/// The unified predictor-corrector multistep solver, following diffusers'
/// `UniPCMultistepScheduler`: each step first corrects the sample it is given with the new
/// model output (UniC), then predicts the next one (UniP).
///
/// Reads the beta fields, `rescale_betas_zero_snr`, `prediction_type`, `solver_order` (default
/// 2, at most 3), `predict_x0` (default `true`), `solver_type` (`bh1` or `bh2`, default),
/// `lower_order_final` (default `true`), `disable_corrector`, `timestep_spacing` (default
/// `linspace`), `steps_offset`, `final_sigmas_type`, `use_karras_sigmas`,
/// `use_exponential_sigmas`, `use_beta_sigmas`, `sigma_min` and `sigma_max`, and takes every
/// [`super::Schedule`]. `thresholding` and `use_flow_sigmas` are refused.
#[derive(Debug, Clone)]
pub struct UniPc {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction_type: PredictionType,
    order: usize,
    predict_x0: bool,
    bh1: bool,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    /// Converted model outputs of the last steps, oldest first, with their step indices.
    outputs: Vec<(usize, Tensor)>,
    last_sample: Option<Tensor>,
    this_order: usize,
    lower_order_nums: usize,
}

impl UniPc {
    /// A UniPC schedule of `steps` steps for `config`.
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
        let last = match config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            // diffusers: the schedule's own last sigma for Karras-style schedules, else the
            // first training sigma.
            FinalSigmasType::SigmaMin if from_sigmas => plan.sigmas[steps - 1],
            FinalSigmasType::SigmaMin => plan.train_sigmas[0],
        };
        let mut sigmas = plan.sigmas;
        sigmas.push(last);
        Ok(Self {
            timesteps: plan.timesteps,
            sigmas,
            prediction_type: config.prediction_type,
            order,
            predict_x0: config.predict_x0,
            bh1: config.solver_type == Some(SolverType::Bh1),
            lower_order_final: config.lower_order_final.unwrap_or(true),
            disable_corrector: config.disable_corrector.clone(),
            outputs: Vec::new(),
            last_sample: None,
            this_order: 1,
            lower_order_nums: 0,
        })
    }

    /// `convert_model_output`: a data prediction (`predict_x0`) or a noise prediction.
    fn convert(&self, out: &Tensor, x: &Tensor, sigma: f64) -> candle_core::Result<Tensor> {
        let (a, s) = alpha_sigma(sigma);
        if self.predict_x0 {
            return vp_x0(self.prediction_type, out, x, a, s);
        }
        match self.prediction_type {
            PredictionType::Epsilon => Ok(out.clone()),
            PredictionType::Sample => lincomb(&[(1.0 / s, x), (-a / s, out)]),
            PredictionType::VPrediction => lincomb(&[(a, out), (s, x)]),
        }
    }

    /// The `R` rows and `b` of the order conditions, plus `h_phi_1` and `B(h)`.
    fn conditions(&self, h: f64, rks: &[f64], order: usize) -> (Vec<Vec<f64>>, Vec<f64>, f64, f64) {
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        let b_h = if self.bh1 { hh } else { hh.exp_m1() };
        let (mut r, mut b) = (Vec::new(), Vec::new());
        for i in 1..=order {
            r.push(
                rks.iter()
                    .map(|rk| rk.powi(i as i32 - 1))
                    .collect::<Vec<f64>>(),
            );
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        (r, b, h_phi_1, b_h)
    }

    /// `x_t_`: the first-order part shared by predictor and corrector.
    fn base(
        &self,
        x: &Tensor,
        m0: &Tensor,
        st: f64,
        s0: f64,
        h_phi_1: f64,
    ) -> candle_core::Result<Tensor> {
        let (a_t, sg_t) = alpha_sigma(st);
        let (a_0, sg_0) = alpha_sigma(s0);
        if self.predict_x0 {
            lincomb(&[(sg_t / sg_0, x), (-a_t * h_phi_1, m0)])
        } else {
            lincomb(&[(a_t / a_0, x), (-sg_t * h_phi_1, m0)])
        }
    }

    /// The factor `α_t·B(h)` (data prediction) or `σ_t·B(h)` in front of the corrections.
    fn scale(&self, st: f64, b_h: f64) -> f64 {
        let (a_t, sg_t) = alpha_sigma(st);
        if self.predict_x0 {
            a_t * b_h
        } else {
            sg_t * b_h
        }
    }

    fn output(&self, back: usize) -> &Tensor {
        &self.outputs[self.outputs.len() - 1 - back].1
    }

    /// UniP: the prediction of the next sample from step `index` with `order`.
    fn predict(&self, x: &Tensor, index: usize, order: usize) -> candle_core::Result<Tensor> {
        let (st, s0) = (self.sigmas[index + 1], self.sigmas[index]);
        let h = lambda(st) - lambda(s0);
        let m0 = self.output(0);
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for i in 1..order {
            let rk = (lambda(self.sigmas[index - i]) - lambda(s0)) / h;
            rks.push(rk);
            d1s.push(lincomb(&[(1.0 / rk, self.output(i)), (-1.0 / rk, m0)])?);
        }
        rks.push(1.0);
        let (r, b, h_phi_1, b_h) = self.conditions(h, &rks, order);
        let base = self.base(x, m0, st, s0, h_phi_1)?;
        if d1s.is_empty() {
            return Ok(base);
        }
        let rhos = if order == 2 {
            vec![0.5]
        } else {
            let k = order - 1;
            let m: Vec<Vec<f64>> = r[..k].iter().map(|row| row[..k].to_vec()).collect();
            math::solve(m, b[..k].to_vec()).ok_or_else(|| {
                candle_core::Error::Msg(format!("{NAME}: singular predictor system"))
            })?
        };
        let scale = self.scale(st, b_h);
        let mut terms = vec![(1.0, &base)];
        terms.extend(rhos.iter().zip(&d1s).map(|(rho, d)| (-scale * rho, d)));
        lincomb(&terms)
    }

    /// UniC: the corrected sample at step `index` from the previous step's sample and order.
    fn correct(
        &self,
        this_output: &Tensor,
        last: &Tensor,
        index: usize,
        order: usize,
    ) -> candle_core::Result<Tensor> {
        let (st, s0) = (self.sigmas[index], self.sigmas[index - 1]);
        let h = lambda(st) - lambda(s0);
        let m0 = self.output(0);
        let mut rks = Vec::new();
        let mut d1s = Vec::new();
        for i in 1..order {
            let rk = (lambda(self.sigmas[index - (i + 1)]) - lambda(s0)) / h;
            rks.push(rk);
            d1s.push(lincomb(&[(1.0 / rk, self.output(i)), (-1.0 / rk, m0)])?);
        }
        rks.push(1.0);
        let (r, b, h_phi_1, b_h) = self.conditions(h, &rks, order);
        let rhos = if order == 1 {
            vec![0.5]
        } else {
            math::solve(r, b).ok_or_else(|| {
                candle_core::Error::Msg(format!("{NAME}: singular corrector system"))
            })?
        };
        let base = self.base(last, m0, st, s0, h_phi_1)?;
        let d1_t = lincomb(&[(1.0, this_output), (-1.0, m0)])?;
        let scale = self.scale(st, b_h);
        let mut terms = vec![(1.0, &base)];
        terms.extend(
            rhos[..rhos.len() - 1]
                .iter()
                .zip(&d1s)
                .map(|(rho, d)| (-scale * rho, d)),
        );
        terms.push((-scale * rhos[rhos.len() - 1], &d1_t));
        lincomb(&terms)
    }
}

impl Scheduler for UniPc {
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
        let (out, mut x) = to_work(model_output, sample)?;
        if self.outputs.last().is_some_and(|(i, _)| *i + 1 != index) {
            self.outputs.clear();
            self.last_sample = None;
            self.lower_order_nums = 0;
        }
        let converted = self.convert(&out, &x, self.sigmas[index])?;
        let use_corrector = index > 0
            && !self.disable_corrector.contains(&(index - 1))
            && self.last_sample.is_some();
        if use_corrector {
            if let Some(last) = &self.last_sample {
                x = self.correct(&converted, last, index, self.this_order)?;
            }
        }
        self.outputs.push((index, converted));
        if self.outputs.len() > self.order {
            self.outputs.remove(0);
        }
        let this_order = if self.lower_order_final {
            self.order.min(n - index)
        } else {
            self.order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);
        self.last_sample = Some(x.clone());
        let prev = self.predict(&x, index, self.this_order)?;
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
