//! Scheduler (sampler) and noise-schedule names, always from the scheduler registry
//! ([`crate::schedulers`]) so samplers added there (or by plugins) are served at once.

use crate::schedulers::{self, Schedule, SchedulerConfig};

/// Checks that scheduler `name` (which may carry a schedule, `"euler karras"`) builds for
/// `steps` steps of `config` (unknown names, clashing schedules, step counts the config cannot
/// take), by building it once: cheap, and exactly the build the worker will do.
pub fn check(name: &str, config: &SchedulerConfig, steps: usize) -> Result<(), String> {
    schedulers::build(name, config, steps)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The AUTOMATIC1111 display name of a scheduler (its first alias, else its name), with the
/// label of the schedule its name carries appended (`dpmpp_2m karras` → `DPM++ 2M Karras`).
pub fn display_name(name: &str) -> String {
    match schedulers::resolve(name) {
        Ok((canonical, implied)) => {
            let entry = schedulers::names()
                .into_iter()
                .find(|(n, _)| *n == canonical)
                .map(|(n, aliases)| aliases.first().copied().unwrap_or(n).to_string())
                .unwrap_or_else(|| canonical.to_string());
            match implied {
                Some(s) if s != Schedule::Default => format!("{entry} {}", label(s)),
                _ => entry,
            }
        }
        Err(_) => name.to_string(),
    }
}

/// The schedule a scheduler name carries (`"euler karras"` → `karras`), else `automatic`.
pub fn schedule_name(name: &str) -> &'static str {
    match schedulers::resolve(name) {
        Ok((_, Some(s))) if s != Schedule::Default => s.name(),
        _ => "automatic",
    }
}

/// A schedule's display label: its first alias, else its name.
pub fn label(schedule: Schedule) -> &'static str {
    let info = schedule.info();
    info.aliases.first().copied().unwrap_or(info.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_come_from_the_registry() {
        assert_eq!(display_name("euler"), "Euler");
        assert_eq!(display_name("euler karras"), "Euler Karras");
        assert_eq!(schedule_name("euler karras"), "karras");
        assert!(check("no_such_sampler", &SchedulerConfig::default(), 5).is_err());
        assert!(check("ddim", &SchedulerConfig::default(), 5).is_ok());
    }
}
