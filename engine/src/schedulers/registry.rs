//! The scheduler registry: names to constructors.
//!
//! Built-in schedulers are rows of [`BUILTINS`]; adding a sampler means adding a row. Plugins
//! add entries at run time with [`register`]. Names are looked up case-insensitively among each
//! entry's canonical snake-case name and its aliases (AUTOMATIC1111's display names).

use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use super::math::{check_steps, invalid};
use super::{Ddim, Euler, Scheduler, SchedulerConfig, SchedulerError};

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

    /// Whether `name` (trimmed, any case) is this entry's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        let name = name.trim();
        std::iter::once(&self.name)
            .chain(self.aliases)
            .any(|n| n.eq_ignore_ascii_case(name))
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

/// The built-in schedulers, in listing order.
const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "ddim",
        aliases: &["DDIM"],
        summary: "DDIM, deterministic (diffusers DDIMScheduler)",
        build: |config, steps| Ok(Box::new(Ddim::new(config, steps)?)),
    },
    Builtin {
        name: "euler",
        aliases: &["Euler"],
        summary: "Euler (diffusers EulerDiscreteScheduler)",
        build: |config, steps| Ok(Box::new(Euler::new(config, steps)?)),
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

    /// Builds scheduler `name` (any case, or an alias) for `steps` steps of `config`.
    pub fn build(
        &self,
        name: &str,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        let entry = self.find(name).ok_or_else(|| SchedulerError::Unknown {
            name: name.to_string(),
            valid: self.valid_names(),
        })?;
        check_steps(entry.name, config, steps)?;
        (entry.build)(config, steps)
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
        assert!(registry.find("euler_a").is_none());
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
