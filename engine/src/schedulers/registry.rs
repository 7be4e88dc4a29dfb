//! The scheduler registry: names to constructors.
//!
//! Built-in schedulers are rows of [`BUILTINS`]; adding a sampler means adding a row. Plugins
//! add entries at run time with [`register`]. Names are looked up case-insensitively among each
//! entry's canonical snake-case name and its aliases (AUTOMATIC1111's display names).

use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use super::math::{check_steps, invalid};
use super::schedules::{did_you_mean, normalize, Schedule, SCHEDULES};
use super::{
    Ddim, Ddpm, Deis, Dpm2, Dpm2Ancestral, DpmMultistep, DpmSde, DpmSinglestep, DpmVariant, Euler,
    EulerAncestral, Heun, Lcm, Lms, Pndm, Scheduler, SchedulerConfig, SchedulerError, Tcd, UniPc,
};

/// Builds a scheduler for a config and a step count (already checked to be within
/// `1..=num_train_timesteps` when called through a [`Registry`]).
pub type BuildFn =
    dyn Fn(&SchedulerConfig, usize) -> Result<Box<dyn Scheduler>, SchedulerError> + Send + Sync;

/// One named scheduler.
///
/// Names are `&'static str` so that listing them is cheap; a plugin host that learns names at
/// run time leaks them once when the plugin loads (`Box::leak`).
#[derive(Clone)]
pub struct SchedulerEntry {
    /// Canonical name: lowercase snake case (`ddim`, `dpmpp_2m`).
    pub name: &'static str,
    /// Other accepted names, typically AUTOMATIC1111's (`"DPM++ 2M"`).
    pub aliases: &'static [&'static str],
    /// One line for listings: what the scheduler is and which diffusers class it follows.
    pub summary: &'static str,
    /// The constructor.
    pub build: Arc<BuildFn>,
}

impl SchedulerEntry {
    /// An entry from its names, summary and constructor.
    pub fn new(
        name: &'static str,
        aliases: &'static [&'static str],
        summary: &'static str,
        build: impl Fn(&SchedulerConfig, usize) -> Result<Box<dyn Scheduler>, SchedulerError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self {
            name,
            aliases,
            summary,
            build: Arc::new(build),
        }
    }

    /// Whether `name` is this entry's name or one of its aliases, in any case and with `_`,
    /// `-` and spaces alike (`euler_a`, `Euler a` and `euler-A` are one name).
    pub fn answers_to(&self, name: &str) -> bool {
        let name = normalize(name);
        std::iter::once(&self.name)
            .chain(self.aliases)
            .any(|n| normalize(n) == name)
    }
}

impl std::fmt::Debug for SchedulerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerEntry")
            .field("name", &self.name)
            .field("aliases", &self.aliases)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// A built-in scheduler's constructor.
type BuiltinFn = fn(&SchedulerConfig, usize) -> Result<Box<dyn Scheduler>, SchedulerError>;

/// A built-in row: names, summary, constructor.
struct Builtin {
    name: &'static str,
    aliases: &'static [&'static str],
    summary: &'static str,
    build: BuiltinFn,
}

/// The built-in schedulers, in listing order. Aliases: AUTOMATIC1111's display name first (it
/// goes into PNG parameters), then ComfyUI's sampler name where it differs from the canonical.
const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "ddim",
        aliases: &["DDIM"],
        summary: "DDIM, deterministic (diffusers DDIMScheduler)",
        build: |config, steps| Ok(Box::new(Ddim::new(config, steps)?)),
    },
    Builtin {
        name: "ddpm",
        aliases: &["DDPM"],
        summary: "DDPM, ancestral (diffusers DDPMScheduler)",
        build: |config, steps| Ok(Box::new(Ddpm::new(config, steps)?)),
    },
    Builtin {
        name: "pndm",
        aliases: &["PLMS", "PNDM"],
        summary: "PLMS: PNDM without the Runge-Kutta warm-up, steps + 1 calls (diffusers PNDMScheduler, skip_prk_steps)",
        build: |config, steps| Ok(Box::new(Pndm::new(config, steps)?)),
    },
    Builtin {
        name: "lms",
        aliases: &["LMS"],
        summary: "linear multistep, order 4 (diffusers LMSDiscreteScheduler)",
        build: |config, steps| Ok(Box::new(Lms::new(config, steps)?)),
    },
    Builtin {
        name: "euler",
        aliases: &["Euler"],
        summary: "Euler (diffusers EulerDiscreteScheduler)",
        build: |config, steps| Ok(Box::new(Euler::new(config, steps)?)),
    },
    Builtin {
        name: "euler_a",
        aliases: &["Euler a", "euler_ancestral"],
        summary: "Euler ancestral (diffusers EulerAncestralDiscreteScheduler)",
        build: |config, steps| Ok(Box::new(EulerAncestral::new(config, steps)?)),
    },
    Builtin {
        name: "heun",
        aliases: &["Heun"],
        summary: "Heun, 2·steps - 1 calls (diffusers HeunDiscreteScheduler)",
        build: |config, steps| Ok(Box::new(Heun::new(config, steps)?)),
    },
    Builtin {
        name: "dpm2",
        aliases: &["DPM2", "dpm_2"],
        summary: "DPM2, 2·steps - 1 calls (diffusers KDPM2DiscreteScheduler)",
        build: |config, steps| Ok(Box::new(Dpm2::new(config, steps)?)),
    },
    Builtin {
        name: "dpm2_a",
        aliases: &["DPM2 a", "dpm_2_ancestral"],
        summary: "DPM2 ancestral, 2·steps - 1 calls (diffusers KDPM2AncestralDiscreteScheduler)",
        build: |config, steps| Ok(Box::new(Dpm2Ancestral::new(config, steps)?)),
    },
    Builtin {
        name: "dpmpp_2m",
        aliases: &["DPM++ 2M"],
        summary: "DPM-Solver++ 2M (diffusers DPMSolverMultistepScheduler, dpmsolver++, order 2)",
        build: |config, steps| Ok(Box::new(DpmMultistep::new(config, steps, DpmVariant::TwoM)?)),
    },
    Builtin {
        name: "dpmpp_2m_sde",
        aliases: &["DPM++ 2M SDE"],
        summary: "DPM-Solver++ 2M SDE (diffusers DPMSolverMultistepScheduler, sde-dpmsolver++, order 2)",
        build: |config, steps| Ok(Box::new(DpmMultistep::new(config, steps, DpmVariant::TwoMSde)?)),
    },
    Builtin {
        name: "dpmpp_sde",
        aliases: &["DPM++ SDE"],
        summary: "DPM-Solver++ SDE, 2·steps - 1 calls (diffusers DPMSolverSDEScheduler)",
        build: |config, steps| Ok(Box::new(DpmSde::new(config, steps)?)),
    },
    Builtin {
        name: "dpmpp_2s_a",
        aliases: &["DPM++ 2S a", "dpmpp_2s_ancestral"],
        summary: "DPM-Solver++ 2S with noise (diffusers DPMSolverSinglestepScheduler, sde-dpmsolver++, order 2)",
        build: |config, steps| Ok(Box::new(DpmSinglestep::new(config, steps)?)),
    },
    Builtin {
        name: "dpmpp_3m_sde",
        aliases: &["DPM++ 3M SDE"],
        summary: "DPM-Solver++ 3M SDE (diffusers DPMSolverMultistepScheduler, sde-dpmsolver++, order 3)",
        build: |config, steps| Ok(Box::new(DpmMultistep::new(config, steps, DpmVariant::ThreeMSde)?)),
    },
    Builtin {
        name: "unipc",
        aliases: &["UniPC", "uni_pc"],
        summary: "UniPC predictor-corrector (diffusers UniPCMultistepScheduler)",
        build: |config, steps| Ok(Box::new(UniPc::new(config, steps)?)),
    },
    Builtin {
        name: "deis",
        aliases: &["DEIS"],
        summary: "DEIS log-rho multistep (diffusers DEISMultistepScheduler)",
        build: |config, steps| Ok(Box::new(Deis::new(config, steps)?)),
    },
    Builtin {
        name: "lcm",
        aliases: &["LCM"],
        summary: "latent consistency, for LCM models (diffusers LCMScheduler)",
        build: |config, steps| Ok(Box::new(Lcm::new(config, steps)?)),
    },
    Builtin {
        name: "tcd",
        aliases: &["TCD"],
        summary: "trajectory consistency, gamma 0.3, for TCD models (diffusers TCDScheduler)",
        build: |config, steps| Ok(Box::new(Tcd::new(config, steps)?)),
    },
];

/// A set of named schedulers. The process-wide one behind [`build`], [`names`] and
/// [`register`] starts with the built-ins.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<SchedulerEntry>,
}

impl Registry {
    /// A registry with no schedulers.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry with the built-in schedulers.
    pub fn with_builtins() -> Self {
        Self {
            entries: BUILTINS
                .iter()
                .map(|b| SchedulerEntry::new(b.name, b.aliases, b.summary, b.build))
                .collect(),
        }
    }

    /// Adds an entry. Its name must be lowercase snake case, and neither it nor an alias may
    /// already answer to an entry of the registry.
    pub fn register(&mut self, entry: SchedulerEntry) -> Result<(), SchedulerError> {
        let snake = !entry.name.is_empty()
            && entry
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !snake {
            return Err(invalid(
                entry.name,
                format!(
                    "name {:?} is not lowercase snake case (a-z, 0-9, _)",
                    entry.name
                ),
            ));
        }
        for name in std::iter::once(&entry.name).chain(entry.aliases) {
            if let Some(taken) = self.find(name) {
                return Err(invalid(
                    entry.name,
                    format!("name {name:?} is already taken by scheduler {}", taken.name),
                ));
            }
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The entry answering to `name` (any case), if any.
    pub fn find(&self, name: &str) -> Option<&SchedulerEntry> {
        self.entries.iter().find(|e| e.answers_to(name))
    }

    /// Builds scheduler `name` (any case, or an alias, optionally followed by a schedule as in
    /// `"DPM++ 2M Karras"`) for `steps` steps of `config`.
    pub fn build(
        &self,
        name: &str,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        self.build_with(name, None, config, steps)
    }

    /// Builds scheduler `name` with noise schedule `schedule` (`--schedule`; `None` keeps the
    /// one the name implies, else the default). A name that implies another schedule than
    /// `schedule` is an error.
    pub fn build_with(
        &self,
        name: &str,
        schedule: Option<&str>,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        let (entry, implied) = self.resolve(name)?;
        let chosen = schedule.map(Schedule::parse).transpose()?;
        let schedule = match (implied, chosen) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    entry.name,
                    format!(
                        "{name:?} already implies schedule {} but schedule {} was asked for; \
                         give one of them",
                        a.name(),
                        b.name()
                    ),
                ))
            }
            (a, b) => a.or(b),
        };
        let config = match schedule {
            Some(s) => s.apply(config),
            None => config.clone(),
        };
        check_steps(entry.name, &config, steps)?;
        (entry.build)(&config, steps)
    }

    /// The entry `name` stands for and the schedule it implies: a scheduler name or alias,
    /// optionally followed by a schedule name (`"DPM++ 2M Karras"` is `dpmpp_2m` with
    /// `karras`). Unknown names list the valid ones and suggest the nearest.
    pub fn resolve(
        &self,
        name: &str,
    ) -> Result<(&SchedulerEntry, Option<Schedule>), SchedulerError> {
        if let Some(entry) = self.find(name) {
            return Ok((entry, None));
        }
        let key = normalize(name);
        for info in SCHEDULES {
            for schedule_name in std::iter::once(&info.name).chain(info.aliases) {
                let Some(prefix) = key.strip_suffix(&format!(" {}", normalize(schedule_name)))
                else {
                    continue;
                };
                match self.resolve(prefix) {
                    Ok((entry, None)) => return Ok((entry, Some(info.schedule))),
                    Ok((entry, Some(other))) if other == info.schedule => {
                        return Ok((entry, Some(other)))
                    }
                    Ok((entry, Some(other))) => {
                        return Err(invalid(
                            entry.name,
                            format!(
                                "{name:?} names two schedules, {} and {}; give one",
                                other.name(),
                                info.name
                            ),
                        ))
                    }
                    Err(_) => {}
                }
            }
        }
        let candidates: Vec<&str> = self
            .entries
            .iter()
            .flat_map(|e| std::iter::once(e.name).chain(e.aliases.iter().copied()))
            .collect();
        Err(SchedulerError::Unknown {
            name: name.to_string(),
            hint: did_you_mean(name, &candidates),
            valid: self.valid_names(),
        })
    }

    /// Every entry's canonical name and aliases, in registration order.
    pub fn names(&self) -> Vec<(&'static str, &'static [&'static str])> {
        self.entries.iter().map(|e| (e.name, e.aliases)).collect()
    }

    /// The entries, in registration order.
    pub fn entries(&self) -> &[SchedulerEntry] {
        &self.entries
    }

    /// "ddim (DDIM), euler (Euler), ...": what an unknown-name error lists.
    fn valid_names(&self) -> String {
        self.entries
            .iter()
            .map(|e| {
                if e.aliases.is_empty() {
                    e.name.to_string()
                } else {
                    format!("{} ({})", e.name, e.aliases.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

static GLOBAL: LazyLock<RwLock<Registry>> =
    LazyLock::new(|| RwLock::new(Registry::with_builtins()));

/// Builds scheduler `name` for `steps` steps of `config` from the process-wide registry.
///
/// `name` is a canonical name (`ddim`, `euler`) or an alias (`DDIM`, `Euler`), in any case.
/// Unknown names give [`SchedulerError::Unknown`] listing the valid ones; a step count outside
/// `1..=num_train_timesteps` gives [`SchedulerError::Invalid`].
pub fn build(
    name: &str,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .build(name, config, steps)
}

/// Like [`build`] with a noise schedule (`--schedule`); see [`Registry::build_with`].
pub fn build_with(
    name: &str,
    schedule: Option<&str>,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .build_with(name, schedule, config, steps)
}

/// The canonical scheduler name `name` stands for and the schedule it implies (see
/// [`Registry::resolve`]).
pub fn resolve(name: &str) -> Result<(&'static str, Option<Schedule>), SchedulerError> {
    let registry = GLOBAL.read().unwrap_or_else(PoisonError::into_inner);
    registry.resolve(name).map(|(e, s)| (e.name, s))
}

/// The process-wide registry's entries, in registration order.
pub fn entries() -> Vec<SchedulerEntry> {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .entries()
        .to_vec()
}

/// The process-wide registry's schedulers: (canonical name, aliases), in registration order.
pub fn names() -> Vec<(&'static str, &'static [&'static str])> {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .names()
}

/// Adds a scheduler to the process-wide registry (plugins); see [`Registry::register`].
pub fn register(entry: SchedulerEntry) -> Result<(), SchedulerError> {
    GLOBAL
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .register(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_any_case() {
        let registry = Registry::with_builtins();
        for name in ["ddim", "DDIM", "Ddim", " euler ", "EULER"] {
            assert!(registry.find(name).is_some(), "{name}");
        }
        assert!(registry.find("euler_b").is_none());
        let (entry, schedule) = registry.resolve("DPM++ 2M Karras").unwrap();
        assert_eq!((entry.name, schedule), ("dpmpp_2m", Some(Schedule::Karras)));
        let (entry, schedule) = registry.resolve("euler_ancestral sgm_uniform").unwrap();
        assert_eq!(
            (entry.name, schedule),
            ("euler_a", Some(Schedule::SgmUniform))
        );
        let err = registry
            .resolve("DPM++ 2M Karras exponential")
            .unwrap_err()
            .to_string();
        assert!(err.contains("two schedules"), "{err}");
        let err = registry.resolve("dpmpp_2n").unwrap_err().to_string();
        assert!(err.contains("did you mean \"dpmpp_2m\""), "{err}");
    }

    #[test]
    fn register_refuses_clashes_and_bad_names() {
        let mut registry = Registry::with_builtins();
        let build = |c: &SchedulerConfig, s| -> Result<Box<dyn Scheduler>, SchedulerError> {
            Ok(Box::new(Euler::new(c, s)?))
        };
        let err = registry
            .register(SchedulerEntry::new("my_euler", &["euler"], "", build))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already taken"), "{err}");
        let err = registry
            .register(SchedulerEntry::new("My Euler", &[], "", build))
            .unwrap_err()
            .to_string();
        assert!(err.contains("snake case"), "{err}");
        registry
            .register(SchedulerEntry::new("my_euler", &["Mine"], "", build))
            .unwrap();
        assert_eq!(registry.names().last().unwrap().0, "my_euler");
        let built = registry
            .build("MINE", &SchedulerConfig::default(), 5)
            .unwrap();
        assert_eq!(built.timesteps().len(), 5);
    }
}
