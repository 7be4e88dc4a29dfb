//! Noise schedules: which noise levels (sigmas) and timesteps a sampler visits, chosen apart
//! from the sampler as in AUTOMATIC1111 ("Schedule type") and ComfyUI ("scheduler").
//!
//! A [`Schedule`] is applied to a [`SchedulerConfig`] ([`Schedule::apply`]) before the sampler
//! is built. The k-diffusion-style samplers (Euler, Heun, LMS, DPM2, the DPM++ family, UniPC,
//! DEIS) take every schedule; the timestep samplers (DDIM, DDPM, PNDM, LCM, TCD) take the
//! timestep spacings only, and say so when given another.
//!
//! Karras, exponential and beta follow diffusers' `use_karras_sigmas`, `use_exponential_sigmas`
//! and `use_beta_sigmas` exactly (per sampler class, since diffusers' classes differ in the
//! sigma range and in whether Karras timesteps are rounded). Polyexponential follows
//! k-diffusion's `get_sigmas_polyexponential` (rho 1) over the same range as Karras; SGM uniform
//! and simple follow ComfyUI's `sgm_uniform` and `simple` schedulers on the training sigmas.

use super::math::{self, invalid};
use super::{SchedulerConfig, SchedulerError, TimestepSpacing};

/// A noise schedule (`--schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// The sampler's own diffusers schedule from the model's config (including its
    /// `use_karras_sigmas`-style flags, if any).
    #[default]
    Default,
    /// Karras et al. (2022), rho 7 (diffusers `use_karras_sigmas`).
    Karras,
    /// Evenly spaced in log sigma (diffusers `use_exponential_sigmas`).
    Exponential,
    /// Beta-distribution quantiles, alpha = beta = 0.6 (diffusers `use_beta_sigmas`).
    Beta,
    /// k-diffusion's polyexponential, rho 1.
    Polyexponential,
    /// ComfyUI's `sgm_uniform`: timesteps evenly spaced, the last one dropped.
    SgmUniform,
    /// ComfyUI's `simple`: every (1000/steps)-th training sigma from the top.
    Simple,
    /// `timestep_spacing = "leading"`.
    Leading,
    /// `timestep_spacing = "trailing"`.
    Trailing,
    /// `timestep_spacing = "linspace"`.
    Linspace,
    /// `rescale_betas_zero_snr = true` with `trailing` spacing (Lin et al. 2023); for
    /// `v_prediction` models trained for it.
    ZeroSnr,
}

/// One schedule's names for listings and lookup.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleInfo {
    /// The schedule.
    pub schedule: Schedule,
    /// Canonical snake-case name.
    pub name: &'static str,
    /// AUTOMATIC1111's and ComfyUI's names.
    pub aliases: &'static [&'static str],
    /// One line for listings.
    pub summary: &'static str,
}

/// Every schedule, in listing order.
pub const SCHEDULES: &[ScheduleInfo] = &[
    ScheduleInfo {
        schedule: Schedule::Default,
        name: "default",
        aliases: &["Automatic", "normal"],
        summary: "the sampler's own schedule from the model's scheduler_config.json",
    },
    ScheduleInfo {
        schedule: Schedule::Karras,
        name: "karras",
        aliases: &["Karras"],
        summary: "Karras et al. 2022, rho 7 (diffusers use_karras_sigmas)",
    },
    ScheduleInfo {
        schedule: Schedule::Exponential,
        name: "exponential",
        aliases: &["Exponential"],
        summary: "evenly spaced in log sigma (diffusers use_exponential_sigmas)",
    },
    ScheduleInfo {
        schedule: Schedule::Beta,
        name: "beta",
        aliases: &["Beta"],
        summary: "beta-distribution quantiles, 0.6/0.6 (diffusers use_beta_sigmas)",
    },
    ScheduleInfo {
        schedule: Schedule::Polyexponential,
        name: "polyexponential",
        aliases: &["Polyexponential"],
        summary: "k-diffusion polyexponential, rho 1",
    },
    ScheduleInfo {
        schedule: Schedule::SgmUniform,
        name: "sgm_uniform",
        aliases: &["SGM Uniform"],
        summary: "ComfyUI sgm_uniform: uniform timesteps, last dropped",
    },
    ScheduleInfo {
        schedule: Schedule::Simple,
        name: "simple",
        aliases: &["Simple"],
        summary: "ComfyUI simple: every (T/steps)-th training sigma",
    },
    ScheduleInfo {
        schedule: Schedule::Leading,
        name: "leading",
        aliases: &[],
        summary: "timestep_spacing leading",
    },
    ScheduleInfo {
        schedule: Schedule::Trailing,
        name: "trailing",
        aliases: &[],
        summary: "timestep_spacing trailing",
    },
    ScheduleInfo {
        schedule: Schedule::Linspace,
        name: "linspace",
        aliases: &[],
        summary: "timestep_spacing linspace",
    },
    ScheduleInfo {
        schedule: Schedule::ZeroSnr,
        name: "zero_snr",
        aliases: &["Zero SNR"],
        summary: "rescale_betas_zero_snr with trailing spacing (v_prediction models)",
    },
];

impl Schedule {
    /// This schedule's names.
    pub fn info(self) -> &'static ScheduleInfo {
        SCHEDULES
            .iter()
            .find(|i| i.schedule == self)
            .unwrap_or(&SCHEDULES[0])
    }

    /// The canonical name (`karras`).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The display label: AUTOMATIC1111's name (the first alias), else the canonical name.
    pub fn label(self) -> &'static str {
        let info = self.info();
        info.aliases.first().copied().unwrap_or(info.name)
    }

    /// The schedule a name (canonical or alias, any case, `-`/space/`_` alike) stands for, if any.
    pub fn find(name: &str) -> Option<Self> {
        let key = normalize(name);
        SCHEDULES
            .iter()
            .find(|i| {
                std::iter::once(&i.name)
                    .chain(i.aliases)
                    .any(|n| normalize(n) == key)
            })
            .map(|i| i.schedule)
    }

    /// Like [`Schedule::find`], else an error listing the valid names and the nearest one.
    pub fn parse(name: &str) -> Result<Self, SchedulerError> {
        Self::find(name).ok_or_else(|| {
            let candidates: Vec<&str> = SCHEDULES
                .iter()
                .flat_map(|i| std::iter::once(i.name).chain(i.aliases.iter().copied()))
                .collect();
            SchedulerError::UnknownSchedule {
                name: name.to_string(),
                hint: did_you_mean(name, &candidates),
                valid: SCHEDULES
                    .iter()
                    .map(|i| i.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })
    }

    /// Whether the schedule sets the sigmas (as opposed to the timestep spacing): only the
    /// k-diffusion-style samplers take these.
    pub fn sets_sigmas(self) -> bool {
        matches!(
            self,
            Self::Karras
                | Self::Exponential
                | Self::Beta
                | Self::Polyexponential
                | Self::SgmUniform
                | Self::Simple
        )
    }

    /// Whether the schedule is a timestep spacing choice.
    pub fn sets_spacing(self) -> bool {
        matches!(
            self,
            Self::Leading | Self::Trailing | Self::Linspace | Self::ZeroSnr
        )
    }

    /// `config` with this schedule chosen: the spacing ones set `timestep_spacing` (and
    /// `zero_snr` `rescale_betas_zero_snr`); all are recorded in `config.schedule`.
    pub fn apply(self, config: &SchedulerConfig) -> SchedulerConfig {
        let mut config = config.clone();
        config.schedule = self;
        match self {
            Self::Leading => config.timestep_spacing = Some(TimestepSpacing::Leading),
            Self::Trailing => config.timestep_spacing = Some(TimestepSpacing::Trailing),
            Self::Linspace => config.timestep_spacing = Some(TimestepSpacing::Linspace),
            Self::ZeroSnr => {
                config.timestep_spacing = Some(TimestepSpacing::Trailing);
                config.rescale_betas_zero_snr = true;
            }
            _ => {}
        }
        config
    }
}

/// Lowercase with `-`, `_` and runs of spaces as one space, for name comparison.
pub(crate) fn normalize(name: &str) -> String {
    name.trim()
        .to_lowercase()
        .replace(['_', '-'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Levenshtein distance between two strings, by characters.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (up + 1).min(row[j] + 1).min(diag + usize::from(ca != cb));
            diag = up;
        }
    }
    row[b.len()]
}

/// `; did you mean "X"?` for the candidate nearest to `name` (normalized Levenshtein distance),
/// or nothing when there are no candidates.
pub fn did_you_mean(name: &str, candidates: &[&str]) -> String {
    let key = normalize(name);
    candidates
        .iter()
        .min_by_key(|c| levenshtein(&key, &normalize(c)))
        .map(|c| format!("; did you mean {c:?}?"))
        .unwrap_or_default()
}

/// Refuses a sigma schedule for a sampler that steps through training timesteps (DDIM, DDPM,
/// PNDM, LCM, TCD).
pub(crate) fn require_timestep_schedule(
    scheduler: &str,
    config: &SchedulerConfig,
) -> Result<(), SchedulerError> {
    if config.schedule.sets_sigmas() {
        return Err(invalid(
            scheduler,
            format!(
                "schedule {} is not supported: {scheduler} steps through training timesteps, \
                 not noise levels; use default, leading, trailing, linspace or zero_snr, or a \
                 k-diffusion sampler such as euler or dpmpp_2m",
                config.schedule.name()
            ),
        ));
    }
    Ok(())
}

/// Refuses the spacing schedules for samplers that choose their own timesteps.
pub(crate) fn refuse_spacing(
    scheduler: &str,
    config: &SchedulerConfig,
    why: &str,
) -> Result<(), SchedulerError> {
    if matches!(
        config.schedule,
        Schedule::Leading | Schedule::Trailing | Schedule::Linspace
    ) {
        return Err(invalid(
            scheduler,
            format!(
                "schedule {} is not supported: {why}",
                config.schedule.name()
            ),
        ));
    }
    Ok(())
}

/// How a diffusers scheduler class lays out its timesteps and sigmas.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flavor {
    /// The class's default `timestep_spacing`.
    pub default_spacing: TimestepSpacing,
    /// Multistep-solver spacing ([`math::solver_timesteps`]) rather than Euler's
    /// ([`math::spaced_timesteps`]).
    pub solver_spacing: bool,
    /// Karras/exponential/beta range from the training sigmas (solvers) rather than from the
    /// spaced sigmas (Euler-style classes).
    pub range_from_training: bool,
    /// Round Karras timesteps to whole training steps (DPM2, the solvers).
    pub round_karras: bool,
    /// Leave Karras timesteps unrounded with `squaredcos_cap_v2` betas (DPM-Solver multistep's
    /// exception).
    pub cosine_karras_unrounded: bool,
    /// Training steps left after `lambda_min_clipped` (solvers; else all).
    pub clipped: usize,
}

impl Flavor {
    /// diffusers' Euler-style classes (Euler, Euler a, LMS, Heun, DPM2, DPM++ SDE): `linspace`
    /// by default, fractional timesteps, schedule range from the spaced sigmas.
    pub fn euler(config: &SchedulerConfig, round_karras: bool) -> Self {
        Self {
            default_spacing: TimestepSpacing::Linspace,
            solver_spacing: false,
            range_from_training: false,
            round_karras,
            cosine_karras_unrounded: false,
            clipped: config.num_train_timesteps,
        }
    }

    /// diffusers' multistep solvers (DPM-Solver, UniPC, DEIS): `linspace` over `steps + 1`
    /// points by default, whole timesteps, schedule range from the training sigmas.
    pub fn solver(clipped: usize) -> Self {
        Self {
            default_spacing: TimestepSpacing::Linspace,
            solver_spacing: true,
            range_from_training: true,
            round_karras: true,
            cosine_karras_unrounded: false,
            clipped,
        }
    }
}

/// The noise levels and timesteps of one schedule, before the final sigma.
#[derive(Debug, Clone)]
pub(crate) struct SigmaPlan {
    /// One model timestep per step (fractional where diffusers' are).
    pub timesteps: Vec<f64>,
    /// One sigma per step.
    pub sigmas: Vec<f64>,
    /// The training sigmas, lowest timestep first.
    pub train_sigmas: Vec<f64>,
    /// The spacing in effect (for `init_noise_sigma`).
    pub spacing: TimestepSpacing,
}

/// `alphas_cumprod` for the sigma-based samplers: zero-SNR rescaling leaves the last value 0 and
/// sigma infinite, so it becomes 2^-24 as diffusers' Euler and DPM-Solver do.
pub(crate) fn sigma_alphas_cumprod(
    scheduler: &str,
    config: &SchedulerConfig,
) -> Result<Vec<f64>, SchedulerError> {
    let mut ac = math::alphas_cumprod(scheduler, config)?;
    if config.rescale_betas_zero_snr {
        if let Some(last) = ac.last_mut() {
            *last = 2f64.powi(-24);
        }
    }
    Ok(ac)
}

/// The schedule that sets the sigmas: the chosen one, else the config's `use_*_sigmas` flag.
fn sigma_schedule(scheduler: &str, config: &SchedulerConfig) -> Result<Schedule, SchedulerError> {
    if config.use_flow_sigmas {
        return Err(invalid(
            scheduler,
            "use_flow_sigmas true is not supported (flow-matching models); set it to false",
        ));
    }
    if config.use_lu_lambdas {
        return Err(invalid(
            scheduler,
            "use_lu_lambdas true is not supported; use the karras or exponential schedule",
        ));
    }
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
    if config.schedule.sets_sigmas() {
        return Ok(config.schedule);
    }
    Ok(flags
        .iter()
        .find(|(on, _)| *on)
        .map_or(Schedule::Default, |(_, s)| *s))
}

/// Lays out `steps` sigmas and timesteps for `config` the way `flavor`'s diffusers class does,
/// with the schedule chosen in `config`.
pub(crate) fn plan(
    scheduler: &str,
    config: &SchedulerConfig,
    steps: usize,
    alphas_cumprod: &[f64],
    flavor: Flavor,
) -> Result<SigmaPlan, SchedulerError> {
    let train = config.num_train_timesteps;
    let spacing = config.timestep_spacing.unwrap_or(flavor.default_spacing);
    let train_sigmas = math::sigmas_from_alphas_cumprod(alphas_cumprod);
    let log_sigmas: Vec<f64> = train_sigmas.iter().map(|s| s.ln()).collect();
    let mut timesteps = if flavor.solver_spacing {
        math::solver_timesteps(spacing, train, flavor.clipped, steps, config.steps_offset)
    } else {
        math::spaced_timesteps(spacing, train, steps, config.steps_offset)
    };
    if timesteps.len() != steps {
        return Err(invalid(
            scheduler,
            format!(
                "{steps} steps cannot be spaced over {} training steps",
                flavor.clipped
            ),
        ));
    }
    let mut sigmas: Vec<f64> = timesteps
        .iter()
        .map(|&t| math::interp(t, &train_sigmas))
        .collect();
    let schedule = sigma_schedule(scheduler, config)?;
    let (low, high) = if flavor.range_from_training {
        (train_sigmas[0], train_sigmas[train - 1])
    } else {
        (sigmas[steps - 1], sigmas[0])
    };
    let range = (
        config.sigma_min.unwrap_or(low),
        config.sigma_max.unwrap_or(high),
    );
    if let Some(planned) = schedule_sigmas(
        schedule,
        config,
        flavor,
        range,
        steps,
        (&train_sigmas, &log_sigmas),
    ) {
        (timesteps, sigmas) = planned;
    }
    if flavor.solver_spacing {
        // The solvers hold their timesteps as int64: fractional ones are truncated.
        timesteps.iter_mut().for_each(|t| *t = t.trunc());
    }
    if let Some((i, s)) = sigmas
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(invalid(
            scheduler,
            format!(
                "sigma {s} at step {i} is not a positive number (check beta_start, sigma_min, \
                 sigma_max and trained_betas)"
            ),
        ));
    }
    Ok(SigmaPlan {
        timesteps,
        sigmas,
        train_sigmas,
        spacing,
    })
}

/// The timesteps and sigmas a noise schedule other than the sampler's own lays out over
/// `(sigma_min, sigma_max)`, or `None` to keep the spaced training sigmas.
fn schedule_sigmas(
    schedule: Schedule,
    config: &SchedulerConfig,
    flavor: Flavor,
    (sigma_min, sigma_max): (f64, f64),
    steps: usize,
    (train_sigmas, log_sigmas): (&[f64], &[f64]),
) -> Option<(Vec<f64>, Vec<f64>)> {
    let from_sigmas = |s: Vec<f64>, round: bool| {
        let t = s
            .iter()
            .map(|&x| {
                let t = math::sigma_to_t(x, log_sigmas);
                if round {
                    t.round_ties_even()
                } else {
                    t
                }
            })
            .collect::<Vec<f64>>();
        (t, s)
    };
    Some(match schedule {
        Schedule::Karras => {
            let round = flavor.round_karras
                && !(flavor.cosine_karras_unrounded
                    && config.beta_schedule == super::BetaSchedule::SquaredcosCapV2);
            from_sigmas(math::karras_sigmas(sigma_min, sigma_max, steps), round)
        }
        Schedule::Exponential => {
            from_sigmas(math::exponential_sigmas(sigma_min, sigma_max, steps), false)
        }
        Schedule::Beta => from_sigmas(math::beta_sigmas(sigma_min, sigma_max, steps), false),
        Schedule::Polyexponential => from_sigmas(
            math::polyexponential_sigmas(sigma_min, sigma_max, steps, 1.0),
            false,
        ),
        Schedule::SgmUniform => math::sgm_uniform(train_sigmas, steps),
        Schedule::Simple => math::simple_schedule(train_sigmas, steps),
        _ => return None,
    })
}

/// diffusers' `init_noise_sigma` of the Euler-style classes: the largest sigma for `linspace`
/// and `trailing` spacing, `√(σ²+1)` of it for `leading`.
pub(crate) fn euler_init_noise_sigma(sigmas: &[f64], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_and_unknown_ones_suggest() {
        assert_eq!(Schedule::find("Karras"), Some(Schedule::Karras));
        assert_eq!(Schedule::find("sgm uniform"), Some(Schedule::SgmUniform));
        assert_eq!(Schedule::find("SGM_Uniform"), Some(Schedule::SgmUniform));
        assert_eq!(Schedule::find("Automatic"), Some(Schedule::Default));
        let err = Schedule::parse("karas").unwrap_err().to_string();
        assert!(err.contains("did you mean \"karras\""), "{err}");
        assert!(err.contains("polyexponential"), "{err}");
    }

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn comfy_simple_and_sgm_match_comfyui() {
        let ac = math::alphas_cumprod("t", &SchedulerConfig::default()).unwrap();
        let train = math::sigmas_from_alphas_cumprod(&ac);
        let (t, s) = math::simple_schedule(&train, 3);
        // int(x * 1000/3) for x = 0, 1, 2: 0, 333, 666 from the top.
        assert_eq!(t, [999.0, 666.0, 333.0]);
        assert_eq!(s[1], train[666]);
        let (t, _) = math::sgm_uniform(&train, 4);
        assert_eq!(t, [999.0, 749.25, 499.5, 249.75]);
    }

    #[test]
    fn spacing_schedules_set_the_config() {
        let c = Schedule::ZeroSnr.apply(&SchedulerConfig::default());
        assert!(c.rescale_betas_zero_snr);
        assert_eq!(c.timestep_spacing, Some(TimestepSpacing::Trailing));
        let c = Schedule::Karras.apply(&SchedulerConfig::default());
        assert_eq!(c.schedule, Schedule::Karras);
        assert!(require_timestep_schedule("ddim", &c).is_err());
    }
}
