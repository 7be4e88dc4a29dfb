//! Schedulers (samplers): independent of the models, as in diffusers.
//!
//! A pipeline asks a scheduler for its timesteps, scales the model input, calls the model and
//! hands the output to [`Scheduler::step`]. Configs are data: [`SchedulerConfig`] mirrors
//! diffusers' `scheduler/scheduler_config.json`, and each scheduler reads the fields it uses.
//!
//! Schedulers are built by name through a [`Registry`] value (the built-ins plus any plugin's;
//! see [`crate::extensions`]) from a [`Sampler`] (scheduler name and noise schedule); each
//! follows one diffusers class ([`Ddim`]: `DDIMScheduler`, [`Euler`]:
//! `EulerDiscreteScheduler`), and the schedule math they share lives in [`math`].
//!
//! Flow-matching models (FLUX) have their own forms, built with the image's `mu`
//! ([`calculate_shift`]): [`FlowEuler`] (`FlowMatchEulerDiscreteScheduler`), [`FlowHeun`]
//! (`FlowMatchHeunDiscreteScheduler`) and [`DpmMultistep::flow`] (`DPMSolverMultistepScheduler`
//! with `use_flow_sigmas`); their schedule is in [`flow`].

use candle_core::Tensor;

use crate::noise::NoiseSource;

mod builtins;
mod config;
mod ddim;
mod ddpm;
mod deis;
mod dpm2;
mod dpm_multistep;
mod dpm_sde;
mod dpm_singlestep;
mod euler;
mod euler_ancestral;
pub mod flow;
mod flow_euler;
mod flow_heun;
mod heun;
mod lcm;
mod lms;
pub mod math;
mod pndm;
mod registry;
mod sampler;
pub mod schedules;
pub mod special;
mod tcd;
mod unipc;
pub use config::{
    BetaSchedule, FinalSigmasType, InterpolationType, PredictionType, SchedulerConfig, SolverType,
    TimeShiftType, TimestepSpacing, TimestepType, VarianceType,
};
pub use ddim::Ddim;
pub use ddpm::Ddpm;
pub use deis::Deis;
pub use dpm2::Dpm2;
pub use dpm_multistep::{DpmMultistep, DpmVariant};
pub use dpm_sde::DpmSde;
pub use dpm_singlestep::DpmSinglestep;
pub use euler::{Churn, Euler};
pub use euler_ancestral::EulerAncestral;
pub use flow::calculate_shift;
pub use flow_euler::FlowEuler;
pub use flow_heun::FlowHeun;
pub use heun::Heun;
pub use lcm::Lcm;
pub use lms::Lms;
pub use pndm::Pndm;
pub use registry::{BuildContext, BuildFn, Registry, SchedulerEntry};
pub use sampler::{Sampler, SchedulerKind};
pub use schedules::{Schedule, ScheduleInfo, SCHEDULES};
pub use tcd::Tcd;
pub use unipc::UniPc;

/// Errors building or running a scheduler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// No scheduler has this name.
    #[error("unknown scheduler {name:?}{hint}; valid names: {valid}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// `; did you mean "..."?` for the nearest name, or empty.
        hint: String,
        /// The valid names, comma separated.
        valid: String,
    },
    /// No noise schedule has this name.
    #[error("unknown schedule {name:?}{hint}; valid schedules: {valid}")]
    UnknownSchedule {
        /// The name asked for.
        name: String,
        /// `; did you mean "..."?` for the nearest name, or empty.
        hint: String,
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

    /// Model calls per step in diffusers' timestep lists: 2 for Heun, DPM2, DPM2 a and DPM++
    /// SDE (whose `timesteps()` hold `2·steps - 1` entries), else 1. Image-to-image starts at
    /// index `order · skipped_steps`, as diffusers does.
    fn order(&self) -> usize {
        1
    }

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

/// `Σ cᵢ·tᵢ` for scalar coefficients; zero-coefficient terms are skipped (so a `0 · ∞` never
/// turns into NaN). All tensors must share shape and dtype.
pub(crate) fn lincomb(terms: &[(f64, &Tensor)]) -> candle_core::Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for &(c, t) in terms {
        if c == 0.0 {
            continue;
        }
        let term = if c == 1.0 {
            t.clone()
        } else {
            t.affine(c, 0.0)?
        };
        acc = Some(match acc {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    match (acc, terms.first()) {
        (Some(a), _) => Ok(a),
        (None, Some((_, t))) => t.zeros_like(),
        (None, None) => candle_core::bail!("lincomb of no terms"),
    }
}

/// The model output and sample in the dtype a step computes in ([`work_dtype`]).
pub(crate) fn to_work(
    model_output: &Tensor,
    sample: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let dtype = work_dtype(model_output, sample);
    Ok((model_output.to_dtype(dtype)?, sample.to_dtype(dtype)?))
}

/// k-diffusion's denoised sample at noise level `sigma` (the Euler-style classes'
/// `pred_original_sample`), for sample `x = x0 + σ·ε`.
pub(crate) fn k_denoised(
    prediction: PredictionType,
    output: &Tensor,
    x: &Tensor,
    sigma: f64,
) -> candle_core::Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => lincomb(&[(1.0, x), (-sigma, output)]),
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            lincomb(&[(-sigma / s2.sqrt(), output), (1.0 / s2, x)])
        }
        PredictionType::Sample => Ok(output.clone()),
    }
}

/// The clean sample predicted in the variance-preserving space `x = α·x0 + σ·ε` (DPM-Solver,
/// UniPC, DEIS: `convert_model_output` with a data prediction).
pub(crate) fn vp_x0(
    prediction: PredictionType,
    output: &Tensor,
    x: &Tensor,
    alpha: f64,
    sigma: f64,
) -> candle_core::Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => lincomb(&[(1.0 / alpha, x), (-sigma / alpha, output)]),
        PredictionType::VPrediction => lincomb(&[(alpha, x), (-sigma, output)]),
        PredictionType::Sample => Ok(output.clone()),
    }
}

/// Refuses dynamic thresholding, which only pixel-space models use.
pub(crate) fn refuse_thresholding(
    scheduler: &str,
    config: &SchedulerConfig,
) -> Result<(), SchedulerError> {
    if config.thresholding {
        return Err(math::invalid(
            scheduler,
            "thresholding true is not supported (dynamic thresholding is for pixel-space \
             models, not latent diffusion); set it to false",
        ));
    }
    Ok(())
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
