//! The scheduler registry: names to constructors.
//!
//! Built-in schedulers are rows of `builtins::BUILTINS`; adding a sampler means adding a row. Plugins
//! add entries to a registry value with [`Registry::register`] (the service and the CLI hold
//! one in their [`crate::extensions::Extensions`]; there is no process-wide registry). Names
//! are looked up case-insensitively among each entry's canonical snake-case name and its
//! aliases (AUTOMATIC1111's display names).

use std::sync::Arc;

use super::builtins::BUILTINS;
use super::math::{check_steps, invalid};
use super::sampler::Sampler;
use super::schedules::{did_you_mean, normalize, Schedule, SCHEDULES};
use super::{calculate_shift, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

/// What a scheduler is built for: the step count, the kind of model it drives and the
/// image's size in packed latent tokens (flow models shift their schedule by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildContext {
    /// Inference steps.
    pub steps: usize,
    /// The model's kind: a flow-matching model gets the flow form of a sampler.
    pub kind: SchedulerKind,
    /// `(latent height / 2) · (latent width / 2)`, for the dynamic shift `mu` of flow
    /// schedules ([`super::calculate_shift`]); `None` when unknown.
    pub image_seq_len: Option<usize>,
}

impl BuildContext {
    /// `steps` steps of a diffusion model.
    pub fn diffusion(steps: usize) -> Self {
        Self {
            steps,
            kind: SchedulerKind::Diffusion,
            image_seq_len: None,
        }
    }

    /// `steps` steps of a model of `kind` for an image of `width × height` pixels whose
    /// latents are `vae_scale_factor` times smaller (packed 2×2 for flow models).
    pub fn for_image(
        steps: usize,
        kind: SchedulerKind,
        (width, height): (usize, usize),
        vae_scale_factor: usize,
    ) -> Self {
        let f = vae_scale_factor.max(1) * 2;
        Self {
            steps,
            kind,
            image_seq_len: Some((height / f) * (width / f)),
        }
    }

    /// The shift `mu` of a flow schedule for this image under `config`, when the image size
    /// is known.
    pub fn mu(&self, config: &SchedulerConfig) -> Option<f64> {
        self.image_seq_len.map(|n| calculate_shift(n, config))
    }
}

/// Builds a scheduler for a config and a [`BuildContext`] (steps already checked to be
/// within `1..=num_train_timesteps`, kind one the entry accepts, when called through a
/// [`Registry`]).
pub type BuildFn = dyn Fn(&SchedulerConfig, &BuildContext) -> Result<Box<dyn Scheduler>, SchedulerError>
    + Send
    + Sync;

/// One named scheduler.
#[derive(Clone)]
pub struct SchedulerEntry {
    /// Canonical name: lowercase snake case (`ddim`, `dpmpp_2m`).
    pub name: String,
    /// Other accepted names, typically AUTOMATIC1111's display name first (`"DPM++ 2M"`).
    pub aliases: Vec<String>,
    /// One line for listings: what the scheduler is and which diffusers class it follows.
    pub summary: String,
    /// The diffusers scheduler class it follows, if any: a model whose
    /// `scheduler_config.json` names this class gets this sampler by default.
    pub diffusers_class: Option<String>,
    /// The kinds of model it drives.
    pub kinds: Vec<SchedulerKind>,
    /// The constructor.
    pub build: Arc<BuildFn>,
    /// The plugin whose code the constructor runs, if any: such entries are built only on
    /// worker threads ([`Registry::check_for`] does not run them).
    pub plugin: Option<String>,
}

impl SchedulerEntry {
    /// A diffusion-only entry from its names, summary and constructor (config and steps).
    pub fn new(
        name: impl Into<String>,
        aliases: Vec<String>,
        summary: impl Into<String>,
        build: impl Fn(&SchedulerConfig, usize) -> Result<Box<dyn Scheduler>, SchedulerError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self::for_kinds(
            name,
            aliases,
            summary,
            vec![SchedulerKind::Diffusion],
            move |config, context| build(config, context.steps),
        )
    }

    /// An entry for models of `kinds`, whose constructor sees the whole [`BuildContext`].
    pub fn for_kinds(
        name: impl Into<String>,
        aliases: Vec<String>,
        summary: impl Into<String>,
        kinds: Vec<SchedulerKind>,
        build: impl Fn(&SchedulerConfig, &BuildContext) -> Result<Box<dyn Scheduler>, SchedulerError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            aliases,
            summary: summary.into(),
            diffusers_class: None,
            kinds,
            build: Arc::new(build),
            plugin: None,
        }
    }

    /// The same entry, marked as running plugin `name`'s code.
    pub fn from_plugin(mut self, name: impl Into<String>) -> Self {
        self.plugin = Some(name.into());
        self
    }

    /// Whether it drives models of `kind`.
    pub fn accepts(&self, kind: SchedulerKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// AUTOMATIC1111's display name: the first alias, else the name.
    pub fn display_name(&self) -> &str {
        self.aliases.first().unwrap_or(&self.name)
    }

    /// Whether `name` is this entry's name or one of its aliases, in any case and with `_`,
    /// `-` and spaces alike (`euler_a`, `Euler a` and `euler-A` are one name).
    pub fn answers_to(&self, name: &str) -> bool {
        let name = normalize(name);
        std::iter::once(&self.name)
            .chain(&self.aliases)
            .any(|n| normalize(n) == name)
    }
}

impl std::fmt::Debug for SchedulerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerEntry")
            .field("name", &self.name)
            .field("aliases", &self.aliases)
            .field("summary", &self.summary)
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

/// A set of named schedulers, starting with the built-ins; plugins add theirs.
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
                .map(|b| {
                    let aliases = b.aliases.iter().map(|a| a.to_string()).collect();
                    let (diffusion, flow) = (b.build, b.flow);
                    let mut kinds = vec![SchedulerKind::Diffusion];
                    kinds.extend(flow.map(|_| SchedulerKind::Flow));
                    let build = move |config: &SchedulerConfig, context: &BuildContext| match (
                        context.kind,
                        flow,
                    ) {
                        (SchedulerKind::Flow, Some(flow)) => {
                            flow(config, context.steps, context.mu(config))
                        }
                        _ => diffusion(config, context.steps),
                    };
                    let mut entry =
                        SchedulerEntry::for_kinds(b.name, aliases, b.summary, kinds, build);
                    entry.diffusers_class = b.class.map(str::to_string);
                    entry
                })
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
                &entry.name,
                format!(
                    "name {:?} is not lowercase snake case (a-z, 0-9, _)",
                    entry.name
                ),
            ));
        }
        for name in std::iter::once(&entry.name).chain(&entry.aliases) {
            if let Some(taken) = self.find(name) {
                return Err(invalid(
                    &entry.name,
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

    /// The entry following diffusers class `class_name` (a model's `scheduler_config.json`).
    pub fn for_class(&self, class_name: &str) -> Option<&SchedulerEntry> {
        self.entries
            .iter()
            .find(|e| e.diffusers_class.as_deref() == Some(class_name))
    }

    /// The sampler `name` stands for, with noise schedule `schedule` (`--schedule`; `None`
    /// keeps the one the name implies, else the sampler's own). `name` is a canonical name or
    /// an alias in any case, optionally followed by a schedule (`"DPM++ 2M Karras"`); a name
    /// that implies another schedule than `schedule` is an error. Unknown names list the valid
    /// ones and suggest the nearest.
    pub fn sampler(&self, name: &str, schedule: Option<&str>) -> Result<Sampler, SchedulerError> {
        let (entry, implied) = self.resolve(name)?;
        let chosen = schedule.map(Schedule::parse).transpose()?;
        let schedule = match (implied, chosen) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    &entry.name,
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
        Ok(Sampler {
            name: entry.name.clone(),
            schedule,
        })
    }

    /// Builds `sampler` for `steps` steps of `config` on a diffusion model: a step count
    /// outside `1..=num_train_timesteps` gives [`SchedulerError::Invalid`].
    pub fn build(
        &self,
        sampler: &Sampler,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        self.build_for(sampler, config, &BuildContext::diffusion(steps))
    }

    /// Builds `sampler` for `context` (steps, model kind, image size) from `config`: the flow
    /// form of the sampler on a flow model; a sampler without a form for the model's kind is
    /// an error naming the samplers that have one.
    pub fn build_for(
        &self,
        sampler: &Sampler,
        config: &SchedulerConfig,
        context: &BuildContext,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        let (entry, config) = self.prepare(sampler, config, context)?;
        (entry.build)(&config, context)
    }

    /// Checks that `sampler` can be built for `context` from `config` without running plugin
    /// code (request validation runs on the async runtime, where a plugin must never run):
    /// built-in samplers are built and dropped; a plugin's sampler is checked by name, kind
    /// and step count, and its own checks run when a worker builds it.
    pub fn check_for(
        &self,
        sampler: &Sampler,
        config: &SchedulerConfig,
        context: &BuildContext,
    ) -> Result<(), SchedulerError> {
        let (entry, config) = self.prepare(sampler, config, context)?;
        if entry.plugin.is_none() {
            (entry.build)(&config, context)?;
        }
        Ok(())
    }

    /// The entry of `sampler` and `config` under its schedule, checked against `context`
    /// (the model's kind, the step count): what building needs before the constructor runs.
    fn prepare(
        &self,
        sampler: &Sampler,
        config: &SchedulerConfig,
        context: &BuildContext,
    ) -> Result<(&SchedulerEntry, SchedulerConfig), SchedulerError> {
        let entry = self
            .find(&sampler.name)
            .ok_or_else(|| self.unknown(&sampler.name))?;
        if !entry.accepts(context.kind) {
            return Err(invalid(
                &entry.name,
                format!(
                    "has no form for {} models; samplers for them: {}",
                    context.kind.as_str(),
                    self.names_for(context.kind)
                ),
            ));
        }
        let config = match sampler.schedule {
            Some(s) => s.apply(config),
            None => config.clone(),
        };
        check_steps(&entry.name, &config, context.steps)?;
        Ok((entry, config))
    }

    /// "euler (Euler), heun (Heun), ...": the samplers that drive models of `kind`.
    pub fn names_for(&self, kind: SchedulerKind) -> String {
        self.entries
            .iter()
            .filter(|e| e.accepts(kind))
            .map(|e| format!("{} ({})", e.name, e.display_name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Builds sampler `name` (any name or alias, optionally with a schedule appended) with
    /// noise schedule `schedule`: [`Registry::sampler`] then [`Registry::build`].
    pub fn build_named(
        &self,
        name: &str,
        schedule: Option<&str>,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        self.build(&self.sampler(name, schedule)?, config, steps)
    }

    /// AUTOMATIC1111's display name of `sampler`: the sampler's, plus the schedule's label
    /// when one other than the default is chosen (`DPM++ 2M Karras`).
    pub fn display_name(&self, sampler: &Sampler) -> String {
        let name = self
            .find(&sampler.name)
            .map_or(sampler.name.as_str(), SchedulerEntry::display_name);
        match sampler.schedule {
            Some(s) if s != Schedule::Default => format!("{name} {}", s.label()),
            _ => name.to_string(),
        }
    }

    /// The entry `name` stands for and the schedule it implies: a scheduler name or alias,
    /// optionally followed by a schedule name (`"DPM++ 2M Karras"` is `dpmpp_2m` with
    /// `karras`).
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
                            &entry.name,
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
        Err(self.unknown(name))
    }

    fn unknown(&self, name: &str) -> SchedulerError {
        let candidates: Vec<&str> = self
            .entries
            .iter()
            .flat_map(|e| {
                std::iter::once(e.name.as_str()).chain(e.aliases.iter().map(String::as_str))
            })
            .collect();
        SchedulerError::Unknown {
            name: name.to_string(),
            hint: did_you_mean(name, &candidates),
            valid: self.valid_names(),
        }
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
                    e.name.clone()
                } else {
                    format!("{} ({})", e.name, e.aliases.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedulers::{Euler, FlowEuler};

    #[test]
    fn names_are_found_in_any_case() {
        let registry = Registry::with_builtins();
        for name in ["ddim", "DDIM", "Ddim", " euler ", "EULER"] {
            assert!(registry.find(name).is_some(), "{name}");
        }
        assert!(registry.find("euler_b").is_none());
        let (entry, schedule) = registry.resolve("DPM++ 2M Karras").unwrap();
        assert_eq!(
            (entry.name.as_str(), schedule),
            ("dpmpp_2m", Some(Schedule::Karras))
        );
        let (entry, schedule) = registry.resolve("euler_ancestral sgm_uniform").unwrap();
        assert_eq!(
            (entry.name.as_str(), schedule),
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
            .register(SchedulerEntry::new(
                "my_euler",
                vec!["euler".into()],
                "",
                build,
            ))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already taken"), "{err}");
        let err = registry
            .register(SchedulerEntry::new("My Euler", vec![], "", build))
            .unwrap_err()
            .to_string();
        assert!(err.contains("snake case"), "{err}");
        registry
            .register(SchedulerEntry::new(
                "my_euler",
                vec!["Mine".into()],
                "",
                build,
            ))
            .unwrap();
        assert_eq!(registry.entries().last().unwrap().name, "my_euler");
        let sampler = registry.sampler("MINE", None).unwrap();
        let built = registry
            .build(&sampler, &SchedulerConfig::default(), 5)
            .unwrap();
        assert_eq!(built.timesteps().len(), 5);
    }

    #[test]
    fn flow_models_get_flow_forms_or_a_clear_error() {
        let registry = Registry::with_builtins();
        let config: SchedulerConfig = serde_json::from_str(
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0,
                "use_dynamic_shifting": true, "base_shift": 0.5, "max_shift": 1.15}"#,
        )
        .unwrap();
        let context = BuildContext::for_image(4, SchedulerKind::Flow, (64, 128), 8);
        assert_eq!(context.image_seq_len, Some(4 * 8));
        let mu = context.mu(&config);
        for (name, calls) in [("Euler", 4), ("heun", 7), ("DPM++ 2M", 4)] {
            let sampler = registry.sampler(name, None).unwrap();
            let built = registry.build_for(&sampler, &config, &context).unwrap();
            assert_eq!(built.timesteps().len(), calls, "{name}");
            assert_eq!(built.init_noise_sigma(), 1.0, "{name}");
        }
        let want = FlowEuler::new(&config, 4, mu).unwrap();
        let sampler = registry.sampler("euler", None).unwrap();
        let got = registry.build_for(&sampler, &config, &context).unwrap();
        assert_eq!(got.timesteps(), want.timesteps());
        let sampler = registry.sampler("DPM++ 2M SDE", None).unwrap();
        let err = registry
            .build_for(&sampler, &config, &context)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no form for flow models"), "{err}");
        assert!(
            err.contains("euler (Euler), heun (Heun), dpmpp_2m (DPM++ 2M)"),
            "{err}"
        );
        // Diffusion entries keep building as before.
        let euler = registry.find("euler").unwrap();
        assert_eq!(euler.kinds, [SchedulerKind::Diffusion, SchedulerKind::Flow]);
        assert_eq!(
            registry.find("ddim").unwrap().kinds,
            [SchedulerKind::Diffusion]
        );
    }
}
