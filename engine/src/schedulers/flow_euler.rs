//! Flow-matching Euler, following diffusers' `FlowMatchEulerDiscreteScheduler` as FLUX's
//! pipelines drive it.

use candle_core::Tensor;

use super::flow::{self, FlowPlan};
use super::{check_index, lincomb, to_work, Scheduler, SchedulerConfig, SchedulerError};
use crate::noise::NoiseSource;

const NAME: &str = "flow_euler";

/// Euler over a flow-matching schedule: the model predicts the velocity `v = noise − x0`, and
/// each step moves `x` by `(σ_next − σ)·v`. With `stochastic_sampling`, each step instead
/// predicts `x0 = x − σ·v` and re-noises it to `σ_next` with fresh noise from the
/// [`NoiseSource`].
///
/// Reads `num_train_timesteps`, `shift`, `use_dynamic_shifting` (then `mu` is required),
/// `time_shift_type`, `shift_terminal`, `use_karras_sigmas`, `use_exponential_sigmas`,
/// `use_beta_sigmas`, `sigma_min`, `sigma_max`, `invert_sigmas` and `stochastic_sampling`, and
/// takes the default, karras, exponential and beta schedules. The schedule is the one FLUX's
/// pipelines set (see [`super::flow`]).
#[derive(Debug, Clone)]
pub struct FlowEuler {
    timesteps: Vec<f64>,
    /// One sigma per step plus the final one.
    sigmas: Vec<f64>,
    stochastic: bool,
}

impl FlowEuler {
    /// A flow Euler schedule of `steps` steps for `config`; `mu` is the image's shift
    /// ([`super::calculate_shift`]), needed when the config uses dynamic shifting.
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        mu: Option<f64>,
    ) -> Result<Self, SchedulerError> {
        let FlowPlan { sigmas, timesteps } = flow::plan(NAME, config, steps, mu)?;
        Ok(Self {
            timesteps,
            sigmas,
            stochastic: config.stochastic_sampling,
        })
    }

    /// The noise level of each step, plus the final one (`steps + 1` values).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl Scheduler for FlowEuler {
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
        let (v, x) = to_work(model_output, sample)?;
        let (sigma, next) = (self.sigmas[index], self.sigmas[index + 1]);
        let prev = if self.stochastic {
            let x0 = lincomb(&[(1.0, &x), (-sigma, &v)])?;
            let z = noise.randn_like(&x)?.to_dtype(x.dtype())?;
            lincomb(&[(1.0 - next, &x0), (next, &z)])?
        } else {
            lincomb(&[(1.0, &x), (next - sigma, &v)])?
        };
        prev.to_dtype(sample.dtype())
    }

    /// diffusers' `scale_noise`: `σ·noise + (1 − σ)·x0` at the sigma step `index` starts from.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        check_index(NAME, index, self.timesteps.len())?;
        let sigma = self.sigmas[index];
        lincomb(&[(1.0 - sigma, original), (sigma, noise)])
    }
}
