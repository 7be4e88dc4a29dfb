//! PNDM's PLMS stepping (Liu et al. 2022), following diffusers' `PNDMScheduler` with
//! `skip_prk_steps = true` (AUTOMATIC1111's "PLMS").

use candle_core::Tensor;

use super::math::{self, invalid};
use super::schedules::require_timestep_schedule;
use super::{
    check_index, lincomb, to_work, PredictionType, Scheduler, SchedulerConfig, SchedulerError,
    TimestepSpacing,
};
use crate::noise::NoiseSource;

const NAME: &str = "pndm";

/// Pseudo numerical methods (linear multistep), following diffusers' `PNDMScheduler` with
/// `skip_prk_steps = true`, the setting of every Stable Diffusion config.
///
/// Reads the beta fields, `prediction_type` (`epsilon` or `v_prediction`), `timestep_spacing`
/// (default `leading`), `steps_offset` and `set_alpha_to_one` (default `false`). `steps` steps
/// make `steps + 1` model calls: the second repeats the first timestep (diffusers' warm-up).
/// `skip_prk_steps = false` (the Runge-Kutta warm-up meant for pixel-space DDPM models) is
/// refused; when the field is missing beeswax runs PLMS, where diffusers would default to the
/// Runge-Kutta warm-up.
#[derive(Debug, Clone)]
pub struct Pndm {
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    prediction_type: PredictionType,
    /// `num_train_timesteps / steps`, floored.
    ratio: f64,
    counter: usize,
    ets: Vec<Tensor>,
    cur_sample: Option<Tensor>,
}

impl Pndm {
    /// A PLMS schedule of `steps` steps (`steps + 1` model calls) for `config`.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        math::check_steps(NAME, config, steps)?;
        require_timestep_schedule(NAME, config)?;
        if config.skip_prk_steps == Some(false) {
            return Err(invalid(
                NAME,
                "skip_prk_steps false (the Runge-Kutta warm-up) is not supported; set it to true",
            ));
        }
        if config.prediction_type == PredictionType::Sample {
            return Err(invalid(
                NAME,
                "prediction_type sample is not supported by PNDM (diffusers neither); use \
                 epsilon or v_prediction",
            ));
        }
        let alphas_cumprod = math::alphas_cumprod(NAME, config)?;
        let train = config.num_train_timesteps;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        // diffusers' `_timesteps`, ascending.
        let mut asc: Vec<f64> = math::spaced_timesteps(spacing, train, steps, config.steps_offset)
            .into_iter()
            .map(f64::round_ties_even)
            .collect();
        asc.reverse();
        let n = asc.len();
        let mut plms: Vec<f64> = asc[..n - 1].to_vec();
        if n >= 2 {
            plms.push(asc[n - 2]);
        }
        plms.push(asc[n - 1]);
        plms.reverse();
        let ratio = (train / steps) as f64;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        for (i, &t) in plms.iter().enumerate() {
            let reach = if i == 1 { t + ratio } else { t };
            if !(0.0..train as f64).contains(&reach) {
                return Err(invalid(
                    NAME,
                    format!(
                        "timestep {reach} (from {steps} {spacing:?} steps with steps_offset {}) \
                         is outside the {train} training steps",
                        config.steps_offset
                    ),
                ));
            }
        }
        Ok(Self {
            timesteps: plms,
            alphas_cumprod,
            final_alpha_cumprod,
            prediction_type: config.prediction_type,
            ratio,
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
        })
    }

    /// diffusers' `_get_prev_sample`: from `timestep` to `prev` with noise estimate `eps`.
    fn prev_sample(
        &self,
        x: &Tensor,
        timestep: f64,
        prev: f64,
        eps: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let a_t = self.alphas_cumprod[timestep as usize];
        let a_prev = if prev >= 0.0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let eps = match self.prediction_type {
            PredictionType::VPrediction => lincomb(&[(a_t.sqrt(), eps), (b_t.sqrt(), x)])?,
            _ => eps.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        lincomb(&[(sample_coeff, x), (-(a_prev - a_t) / denom, &eps)])
    }
}

impl Scheduler for Pndm {
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
        check_index(NAME, index, self.timesteps.len())?;
        let (out, mut x) = to_work(model_output, sample)?;
        let mut timestep = self.timesteps[index];
        let mut prev = timestep - self.ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.drain(..self.ets.len() - 3);
            }
            self.ets.push(out.clone());
        } else {
            prev = timestep;
            timestep += self.ratio;
        }
        let e = &self.ets;
        let n = e.len();
        let eps = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(x.clone());
            out
        } else if n == 1 && self.counter == 1 {
            let Some(cur) = self.cur_sample.take() else {
                candle_core::bail!("{NAME}: step {index} needs the sample of the step before");
            };
            x = cur;
            lincomb(&[(0.5, &out), (0.5, &e[0])])?
        } else if n == 2 {
            lincomb(&[(1.5, &e[1]), (-0.5, &e[0])])?
        } else if n == 3 {
            lincomb(&[
                (23.0 / 12.0, &e[2]),
                (-16.0 / 12.0, &e[1]),
                (5.0 / 12.0, &e[0]),
            ])?
        } else {
            lincomb(&[
                (55.0 / 24.0, &e[n - 1]),
                (-59.0 / 24.0, &e[n - 2]),
                (37.0 / 24.0, &e[n - 3]),
                (-9.0 / 24.0, &e[n - 4]),
            ])?
        };
        let result = self.prev_sample(&x, timestep, prev, &eps)?;
        self.counter += 1;
        result.to_dtype(sample.dtype())
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let a = self.alphas_cumprod[self.timesteps[index] as usize];
        lincomb(&[(a.sqrt(), original), ((1.0 - a).sqrt(), noise)])
    }
}
