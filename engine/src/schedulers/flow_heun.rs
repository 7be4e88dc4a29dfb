//! Flow-matching Heun, following diffusers' `FlowMatchHeunDiscreteScheduler`.

use candle_core::Tensor;

use super::flow::{self, FlowPlan};
use super::heun::{two_stage_calls, Stage};
use super::{check_index, lincomb, to_work, Scheduler, SchedulerConfig, SchedulerError};
use crate::noise::NoiseSource;

const NAME: &str = "flow_heun";

/// What the first stage left for the second.
#[derive(Debug, Clone)]
struct Pending {
    step: usize,
    sample: Tensor,
    velocity: Tensor,
}

/// Heun's second-order method over a flow-matching schedule: each step takes an Euler step
/// with the velocity at `σ`, evaluates the model again at `σ_next` and redoes the step with
/// the mean of both velocities; the last step (to σ = 0) is Euler alone. `steps` steps make
/// `2·steps - 1` model calls, with timesteps `t0, t1, t1, t2, t2, ...` as in diffusers
/// ([`Scheduler::order`] is 2).
///
/// diffusers' class cannot take FLUX's schedule (its `set_timesteps` has neither `sigmas` nor
/// `mu`, so FluxPipeline refuses it); here it steps over the same schedule as
/// [`super::FlowEuler`], with the same config fields, so that Heun on FLUX shifts by the image
/// size like every flow sampler. The step itself is diffusers' (without churn).
#[derive(Debug, Clone)]
pub struct FlowHeun {
    timesteps: Vec<f64>,
    calls: Vec<Stage>,
    /// One sigma per step plus the final one.
    sigmas: Vec<f64>,
    pending: Option<Pending>,
}

impl FlowHeun {
    /// A flow Heun schedule of `steps` steps for `config`; `mu` as for
    /// [`super::FlowEuler::new`].
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        mu: Option<f64>,
    ) -> Result<Self, SchedulerError> {
        let FlowPlan { sigmas, timesteps } = flow::plan(NAME, config, steps, mu)?;
        let calls = two_stage_calls(steps);
        let timesteps = calls
            .iter()
            .map(|call| match *call {
                Stage::First(k) => timesteps[k],
                Stage::Second(k) => timesteps[k + 1],
            })
            .collect();
        Ok(Self {
            timesteps,
            calls,
            sigmas,
            pending: None,
        })
    }

    /// The noise level of each step, plus the final one (`steps + 1` values).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl Scheduler for FlowHeun {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn order(&self) -> usize {
        2
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
        let (v, x) = to_work(model_output, sample)?;
        let prev = match self.calls[index] {
            Stage::First(k) => {
                let dt = self.sigmas[k + 1] - self.sigmas[k];
                let prev = lincomb(&[(1.0, &x), (dt, &v)])?;
                self.pending = Some(Pending {
                    step: k,
                    sample: x,
                    velocity: v,
                });
                prev
            }
            Stage::Second(k) => {
                let Some(p) = self.pending.take().filter(|p| p.step == k) else {
                    candle_core::bail!(
                        "{NAME}: call {index} corrects step {k}, whose first stage did not run \
                         just before"
                    )
                };
                let dt = self.sigmas[k + 1] - self.sigmas[k];
                let mean = lincomb(&[(0.5, &p.velocity), (0.5, &v)])?;
                lincomb(&[(1.0, &p.sample), (dt, &mean)])?
            }
        };
        prev.to_dtype(sample.dtype())
    }

    /// `σ·noise + (1 − σ)·x0` at the sigma call `index` starts from (diffusers' `scale_noise`
    /// at `begin_index = index`).
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
        lincomb(&[(1.0 - sigma, original), (sigma, noise)])
    }
}
