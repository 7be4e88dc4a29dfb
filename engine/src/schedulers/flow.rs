//! The flow-matching schedule shared by the flow samplers: noise levels (sigmas) from 1 down to
//! 0, where a sample is `x = σ·noise + (1 − σ)·x0` and the model predicts the velocity
//! `noise − x0`; timesteps are `σ · num_train_timesteps`.
//!
//! The sigmas are the ones diffusers' FLUX pipelines give `FlowMatchEulerDiscreteScheduler`:
//! `linspace(1, 1/steps, steps)`, then shifted, either by the config's static `shift`
//! (`shift·σ / (1 + (shift − 1)·σ)`) or, with `use_dynamic_shifting`, by `mu`, which grows
//! with the image's token count ([`calculate_shift`]); then optionally stretched to end at
//! `shift_terminal`, re-spaced by the Karras/exponential/beta schedule, and inverted. diffusers
//! computes them in float32, and so does this module, step for step, so that timesteps agree
//! to the last bit.

use super::math::{self, invalid};
use super::{Schedule, SchedulerConfig, SchedulerError, TimeShiftType};

/// FluxPipeline's `calculate_shift`: `mu` for an image of `image_seq_len` packed tokens
/// (`(latent height / 2) · (latent width / 2)`), linear from `base_shift` at
/// `base_image_seq_len` to `max_shift` at `max_image_seq_len` (and beyond, extrapolated).
pub fn calculate_shift(image_seq_len: usize, config: &SchedulerConfig) -> f64 {
    let (base_len, max_len) = (
        config.base_image_seq_len as f64,
        config.max_image_seq_len as f64,
    );
    let (base, max) = (config.base_shift(), config.max_shift());
    let m = (max - base) / (max_len - base_len);
    let b = base - m * base_len;
    image_seq_len as f64 * m + b
}

/// The flow schedule of `steps` steps: `steps + 1` sigmas (the last 0, or 1 with
/// `invert_sigmas`) and `steps` timesteps, as f32 values.
#[derive(Debug, Clone)]
pub(crate) struct FlowPlan {
    pub sigmas: Vec<f64>,
    pub timesteps: Vec<f64>,
}

/// The shift applied to one sigma (in f32, as diffusers computes on float32 arrays).
#[derive(Debug, Clone, Copy)]
enum Shift {
    Static(f32),
    Exponential(f32),
    Linear(f32),
}

impl Shift {
    fn of(
        scheduler: &str,
        config: &SchedulerConfig,
        mu: Option<f64>,
    ) -> Result<Self, SchedulerError> {
        if !config.use_dynamic_shifting {
            return Ok(Shift::Static(config.shift as f32));
        }
        let mu = mu.ok_or_else(|| {
            invalid(
                scheduler,
                "use_dynamic_shifting is true, so the shift depends on the image size: pass mu \
                 (calculate_shift of the image's packed token count)",
            )
        })?;
        if !mu.is_finite() {
            return Err(invalid(scheduler, format!("mu {mu} must be a number")));
        }
        Ok(match config.time_shift_type {
            TimeShiftType::Exponential => Shift::Exponential(mu.exp() as f32),
            TimeShiftType::Linear => Shift::Linear(mu as f32),
        })
    }

    fn apply(self, t: f32) -> f32 {
        match self {
            Shift::Static(s) => s * t / (1.0 + (s - 1.0) * t),
            // diffusers' time_shift with sigma = 1: e^mu / (e^mu + (1/t - 1)) (or mu for e^mu).
            Shift::Exponential(e) | Shift::Linear(e) => e / (e + (1.0 / t - 1.0)),
        }
    }
}

/// The static shift a flow scheduler without dynamic shifting uses, or `exp(mu)` (`mu` for a
/// linear time shift) with it; DPM-Solver's flow sigmas apply it as one static shift.
pub(crate) fn shift_value(
    scheduler: &str,
    config: &SchedulerConfig,
    static_shift: f64,
    mu: Option<f64>,
) -> Result<f64, SchedulerError> {
    if !config.use_dynamic_shifting {
        return Ok(static_shift);
    }
    match Shift::of(scheduler, config, mu)? {
        Shift::Exponential(_) => Ok(mu.unwrap_or_default().exp()),
        Shift::Linear(_) | Shift::Static(_) => Ok(mu.unwrap_or_default()),
    }
}

/// FlowMatchEulerDiscreteScheduler's `set_timesteps(sigmas=linspace(1, 1/steps, steps), mu)`.
pub(crate) fn plan(
    scheduler: &str,
    config: &SchedulerConfig,
    steps: usize,
    mu: Option<f64>,
) -> Result<FlowPlan, SchedulerError> {
    math::check_steps(scheduler, config, steps)?;
    let shift = Shift::of(scheduler, config, mu)?;
    let mut sigmas: Vec<f32> = math::numpy_linspace(1.0, 1.0 / steps as f64, steps)
        .into_iter()
        .map(|t| shift.apply(t as f32))
        .collect();
    if let Some(terminal) = config.shift_terminal {
        let last = 1.0 - sigmas[steps - 1];
        let scale = last / (1.0 - terminal as f32);
        for s in &mut sigmas {
            *s = 1.0 - (1.0 - *s) / scale;
        }
    }
    let respaced = match schedule(scheduler, config)? {
        Schedule::Default => None,
        other => {
            let min = config.sigma_min.unwrap_or(sigmas[steps - 1] as f64);
            let max = config.sigma_max.unwrap_or(sigmas[0] as f64);
            Some(match other {
                Schedule::Karras => math::karras_sigmas(min, max, steps),
                Schedule::Exponential => math::exponential_sigmas(min, max, steps),
                _ => math::beta_sigmas(min, max, steps),
            })
        }
    };
    if let Some(respaced) = respaced {
        sigmas = respaced.into_iter().map(|s| s as f32).collect();
    }
    let train = config.num_train_timesteps as f32;
    let (sigmas, end) = if config.invert_sigmas {
        (sigmas.iter().map(|s| 1.0 - s).collect(), 1.0)
    } else {
        (sigmas, 0.0)
    };
    let timesteps = sigmas.iter().map(|&s| (s * train) as f64).collect();
    let mut sigmas: Vec<f64> = sigmas.into_iter().map(f64::from).collect();
    sigmas.push(end);
    Ok(FlowPlan { sigmas, timesteps })
}

/// The sigma schedule: the chosen one, else the config's `use_*_sigmas` flag. Flow schedules
/// take Karras, exponential and beta (as diffusers' flow Euler does); the others choose among
/// training timesteps, which a flow model does not have.
fn schedule(scheduler: &str, config: &SchedulerConfig) -> Result<Schedule, SchedulerError> {
    let flags = [
        (config.use_karras_sigmas, Schedule::Karras),
        (config.use_exponential_sigmas, Schedule::Exponential),
        (config.use_beta_sigmas, Schedule::Beta),
    ];
    if flags.iter().filter(|(on, _)| *on).count() > 1 {
        return Err(invalid(
            scheduler,
            "only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas may be true",
        ));
    }
    let chosen = match config.schedule {
        Schedule::Default => flags
            .iter()
            .find(|(on, _)| *on)
            .map_or(Schedule::Default, |(_, s)| *s),
        other => other,
    };
    match chosen {
        Schedule::Default | Schedule::Karras | Schedule::Exponential | Schedule::Beta => Ok(chosen),
        other => Err(invalid(
            scheduler,
            format!(
                "schedule {} is not supported on a flow-matching model; use default, karras, \
                 exponential or beta",
                other.name()
            ),
        )),
    }
}

/// Refuses every schedule but the default (for DPM-Solver's flow sigmas, which diffusers does
/// not re-space).
pub(crate) fn require_default_schedule(
    scheduler: &str,
    config: &SchedulerConfig,
) -> Result<(), SchedulerError> {
    match schedule(scheduler, config)? {
        Schedule::Default => Ok(()),
        other => Err(invalid(
            scheduler,
            format!(
                "schedule {} is not supported with flow sigmas; use default (or flow euler)",
                other.name()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> SchedulerConfig {
        SchedulerConfig {
            shift: 3.0,
            use_dynamic_shifting: true,
            ..Default::default()
        }
    }

    #[test]
    fn mu_follows_flux_pipeline() {
        let config = dev();
        assert!((calculate_shift(256, &config) - 0.5).abs() < 1e-12);
        assert!((calculate_shift(4096, &config) - 1.15).abs() < 1e-12);
    }

    #[test]
    fn schedules_start_at_one_and_end_at_zero() {
        let plan = plan("flow_euler", &dev(), 4, Some(1.15)).unwrap();
        assert_eq!(plan.sigmas.len(), 5);
        assert_eq!(plan.sigmas[0], 1.0);
        assert_eq!(plan.sigmas[4], 0.0);
        assert!(plan.sigmas.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(plan.timesteps[0], 1000.0);
        let err = super::plan("flow_euler", &dev(), 4, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mu"), "{err}");
        let unit = SchedulerConfig::default();
        let plain = super::plan("flow_euler", &unit, 4, None).unwrap();
        assert_eq!(plain.sigmas, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn timestep_schedules_are_refused() {
        let config = Schedule::SgmUniform.apply(&dev());
        let err = plan("flow_euler", &config, 4, Some(1.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sgm_uniform"), "{err}");
    }
}
