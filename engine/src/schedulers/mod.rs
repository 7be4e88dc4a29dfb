//! Schedulers (samplers): independent of the models, as in diffusers.
//!
//! A pipeline asks a scheduler for its timesteps, scales the model input, calls the model and
//! hands the output to [`Scheduler::step`]. Configs are data: [`SchedulerConfig`] mirrors
//! diffusers' `scheduler/scheduler_config.json`, and each scheduler reads the fields it uses.
//!
//! Schedulers are built by name through the registry ([`build`], [`names`], [`register`]);
//! each follows one diffusers class ([`Ddim`]: `DDIMScheduler`, [`Euler`]:
//! `EulerDiscreteScheduler`), and the schedule math they share lives in [`math`].

use candle_core::Tensor;

use crate::noise::NoiseSource;

mod config;
mod ddim;
mod euler;
pub mod math;
mod registry;
pub use config::{
    BetaSchedule, FinalSigmasType, InterpolationType, PredictionType, SchedulerConfig,
    TimestepSpacing, TimestepType,
};
pub use ddim::Ddim;
pub use euler::{Churn, Euler};
pub use registry::{build, names, register, BuildFn, Registry, SchedulerEntry};

/// Errors building or running a scheduler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// No scheduler has this name.
    #[error("unknown scheduler {name:?}; valid names: {valid}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The valid names, comma separated.
        valid: String,
    },
    /// The configuration cannot work, for example 0 steps.
    #[error("scheduler {scheduler}: {message}")]
    Invalid {
        /// Which scheduler.
        scheduler: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor operation failed inside a step.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One denoising schedule for a fixed number of steps. Steps are addressed by their index
/// `0..timesteps().len()`; `step` must be called once per index, in order.
pub trait Scheduler: Send {
    /// The model timesteps, one per step, in the order they run (may be fractional).
    fn timesteps(&self) -> &[f64];

    /// The standard deviation to scale unit starting noise by.
    fn init_noise_sigma(&self) -> f64;

    /// Scales the model input at step `index` (identity for DDIM; 1/sqrt(sigma²+1) for Euler).
    fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor>;

    /// Computes the sample at the next noise level from the model output at step `index`.
    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<Tensor>;

    /// Noises clean latents to the noise level at which step `index` starts (image-to-image).
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor>;
}

/// The dtype a step computes in: f64 if either input is f64, else f32 (half-precision inputs
/// are upcast, as diffusers' Euler does, so rounding does not pile up over the steps).
pub(crate) fn work_dtype(a: &Tensor, b: &Tensor) -> candle_core::DType {
    use candle_core::DType;
    if a.dtype() == DType::F64 || b.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Fails with a message naming the scheduler and index when `index` is not a step.
pub(crate) fn check_index(scheduler: &str, index: usize, steps: usize) -> candle_core::Result<()> {
    if index >= steps {
        candle_core::bail!(
            "{scheduler}: step index {index} is out of range; the schedule has {steps} steps (0..{steps})"
        );
    }
    Ok(())
}
