//! A job's sampler: which scheduler, and which noise schedule, as two typed fields (the
//! AUTOMATIC1111 combined names such as `"DPM++ 2M Karras"` are resolved into them once, by
//! [`super::Registry::sampler`]).

use super::Schedule;

/// A sampler choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampler {
    /// The scheduler's canonical name in the registry (`dpmpp_2m`).
    pub name: String,
    /// The noise schedule; `None` keeps the sampler's own.
    pub schedule: Option<Schedule>,
}

impl Sampler {
    /// The schedule's canonical name, `automatic` when the sampler keeps its own (as
    /// AUTOMATIC1111's `scheduler` field says).
    pub fn schedule_name(&self) -> &'static str {
        match self.schedule {
            Some(s) if s != Schedule::Default => s.name(),
            _ => "automatic",
        }
    }
}

impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.schedule {
            Some(s) if s != Schedule::Default => write!(f, "{} {}", self.name, s.name()),
            _ => f.write_str(&self.name),
        }
    }
}

/// The kind of model a sampler drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// Diffusion models (noise, v or sample prediction over a beta schedule).
    Diffusion,
    /// Flow-matching models (velocity over sigmas from 1 to 0).
    Flow,
}

impl SchedulerKind {
    /// The name used in listings and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::Diffusion => "diffusion",
            SchedulerKind::Flow => "flow",
        }
    }
}
