//! `[[pipeline]]` manifest entries: a named, operator-configured way to run a pack.
//!
//! ```toml
//! [[pipeline]]
//! name = "tiny-fast"
//! pack = "tiny-sd"
//! mode = "txt2img"              # the only mode for now
//! description = "Few steps, Karras sigmas"
//! scheduler = "euler"           # any name or alias of the scheduler registry
//! schedule = "karras"           # a noise schedule of crate::schedulers::SCHEDULES
//! post_processors = []          # names of plugin post-processors
//!
//! [pipeline.defaults]           # like [pack.defaults]; unset values come from the pack
//! steps = 8
//! guidance = 5.0
//!
//! [pipeline.limits]             # unset values come from the server's flags
//! max_width = 512
//! max_height = 512
//! max_steps = 50
//! max_images = 4
//! ```
//!
//! Types are checked when the manifest file is read ([`crate::manifest`]); names, ranges and
//! references are checked here, with errors naming the file, line and field.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::extensions::Extensions;
use crate::manifest::{ManifestError, PackDefaults, PackManifest};
use crate::schedulers::Schedule;

/// One `[[pipeline]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineEntry {
    /// Unique name clients use (`pipeline`, OpenAI `model`, A1111 checkpoint).
    pub name: Spanned<String>,
    /// The pack it runs.
    pub pack: Spanned<String>,
    /// `txt2img` (default).
    pub mode: Option<Spanned<String>>,
    /// A human description.
    pub description: Option<String>,
    /// Default scheduler.
    pub scheduler: Option<Spanned<String>>,
    /// Default noise schedule.
    pub schedule: Option<Spanned<String>>,
    /// Generation defaults over the pack's.
    #[serde(default)]
    pub defaults: EntryDefaults,
    /// Request limits over the server's.
    #[serde(default)]
    pub limits: EntryLimits,
    /// Post-processors run on each image, in order.
    #[serde(default)]
    pub post_processors: Vec<Spanned<String>>,
    /// A `[[lora_set]]` (or `[[lora]]`) applied to every job, before the request's LoRAs.
    pub lora_set: Option<String>,
}

/// `[pipeline.defaults]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryDefaults {
    steps: Option<Spanned<i64>>,
    guidance: Option<Spanned<f64>>,
    width: Option<Spanned<i64>>,
    height: Option<Spanned<i64>>,
    negative_prompt: Option<String>,
    clip_skip: Option<Spanned<i64>>,
}

/// `[pipeline.limits]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryLimits {
    max_width: Option<Spanned<i64>>,
    max_height: Option<Spanned<i64>>,
    max_steps: Option<Spanned<i64>>,
    max_images: Option<Spanned<i64>>,
}

/// What a pipeline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Text to image.
    TextToImage,
}

impl Mode {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::TextToImage => "txt2img",
        }
    }
}

/// Limits a pipeline sets; `None` keeps the server's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    /// Largest width.
    pub max_width: Option<usize>,
    /// Largest height.
    pub max_height: Option<usize>,
    /// Most steps.
    pub max_steps: Option<usize>,
    /// Most images per request.
    pub max_images: Option<usize>,
}

/// A validated `[[pipeline]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Unique name.
    pub name: String,
    /// The pack it runs.
    pub pack: String,
    /// What it does.
    pub mode: Mode,
    /// A human description.
    pub description: Option<String>,
    /// Defaults: the entry's over its pack's (the entry's `scheduler` and `schedule` included).
    pub defaults: PackDefaults,
    /// Request limits.
    pub limits: LimitOverrides,
    /// Post-processor names, in order.
    pub post_processors: Vec<String>,
    /// A LoRA set (or LoRA) applied to every job first; checked when the catalog loads.
    pub lora_set: Option<String>,
    /// The manifest it came from.
    pub manifest_path: PathBuf,
}

/// The `[[pipeline]]` tables of a manifest file; everything else is ignored here.
#[derive(Deserialize)]
struct PipelineFile {
    #[serde(default)]
    pipeline: Vec<PipelineEntry>,
}

/// Reads every `[[pipeline]]` in `dir` (files sorted by name) and validates it against
/// `packs` (from [`crate::manifest::load_dir`], which has already checked the types) and the
/// samplers and post-processors of `extensions`.
pub fn load_dir(
    dir: &Path,
    packs: &[PackManifest],
    extensions: &Extensions,
) -> Result<Vec<PipelineConfig>, ManifestError> {
    let mut out: Vec<(PipelineConfig, usize)> = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ManifestError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        let parsed: PipelineFile = toml::from_str(&text).map_err(|e| ManifestError::Syntax {
            file: file.clone(),
            line: line_of(&text, e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_string(),
        })?;
        let ctx = Ctx {
            file: &file,
            text: &text,
        };
        for entry in parsed.pipeline {
            let line = line_of(&text, entry.name.span().start);
            let config = ctx.validate(entry, packs, extensions)?;
            if let Some((first, first_line)) = out.iter().find(|(p, _)| p.name == config.name) {
                let message = format!(
                    "`{}` is defined twice, also in {}:{first_line}: rename one of the pipelines",
                    config.name,
                    first.manifest_path.display()
                );
                return Err(ctx.invalid_at(line, "pipeline.name", message));
            }
            out.push((config, line));
        }
    }
    Ok(out.into_iter().map(|(p, _)| p).collect())
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn invalid_at(&self, line: usize, field: &str, message: String) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line,
            field: field.to_string(),
            message,
        }
    }

    fn invalid<T>(&self, value: &Spanned<T>, field: &str, message: String) -> ManifestError {
        self.invalid_at(line_of(self.text, value.span().start), field, message)
    }

    fn validate(
        &self,
        e: PipelineEntry,
        packs: &[PackManifest],
        extensions: &Extensions,
    ) -> Result<PipelineConfig, ManifestError> {
        let name = e.name.get_ref().trim().to_string();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            let message = format!(
                "must be a non-empty name of letters, digits, `-`, `_` and `.` (got `{name}`)"
            );
            return Err(self.invalid(&e.name, "pipeline.name", message));
        }
        if packs.iter().any(|p| p.name == name) {
            let message = format!(
                "`{name}` is already a pack name (packs are served under their own names): \
                 choose another pipeline name"
            );
            return Err(self.invalid(&e.name, "pipeline.name", message));
        }
        let Some(pack) = packs.iter().find(|p| &p.name == e.pack.get_ref()) else {
            let names: Vec<&str> = packs.iter().map(|p| p.name.as_str()).collect();
            let message = format!(
                "names no known pack `{}` (pipeline `{name}`): available packs: {}",
                e.pack.get_ref(),
                if names.is_empty() {
                    "(none)".to_string()
                } else {
                    names.join(", ")
                }
            );
            return Err(self.invalid(&e.pack, "pipeline.pack", message));
        };
        let mode = match &e.mode {
            None => Mode::TextToImage,
            Some(m) if m.get_ref() == "txt2img" => Mode::TextToImage,
            Some(m) => {
                let message = format!(
                    "must be `txt2img` (got `{}`); image-to-image modes are not available yet",
                    m.get_ref()
                );
                return Err(self.invalid(m, "pipeline.mode", message));
            }
        };
        if let Some(s) = &e.scheduler {
            if let Err(err) = extensions.schedulers.resolve(s.get_ref()) {
                return Err(self.invalid(s, "pipeline.scheduler", err.to_string()));
            }
        }
        if let Some(s) = &e.schedule {
            Schedule::parse(s.get_ref())
                .map_err(|err| self.invalid(s, "pipeline.schedule", err.to_string()))?;
        }
        let mut post_processors = Vec::new();
        for p in &e.post_processors {
            let known = extensions.post_names();
            if !known.contains(p.get_ref()) {
                let message = format!(
                    "names no registered post-processor `{}`: registered: {}",
                    p.get_ref(),
                    if known.is_empty() {
                        "(none in this build)".to_string()
                    } else {
                        known.join(", ")
                    }
                );
                return Err(self.invalid(p, "pipeline.post_processors", message));
            }
            post_processors.push(p.get_ref().clone());
        }
        let d = &e.defaults;
        let base = &pack.defaults;
        let defaults = PackDefaults {
            steps: self
                .whole(&d.steps, "defaults.steps", 1, 1000, 1)?
                .or(base.steps),
            guidance: match &d.guidance {
                Some(g) if !(0.0..=100.0).contains(g.get_ref()) => {
                    let message = format!("must be between 0 and 100 (got {})", g.get_ref());
                    return Err(self.invalid(g, "pipeline.defaults.guidance", message));
                }
                Some(g) => Some(*g.get_ref()),
                None => base.guidance,
            },
            scheduler: e
                .scheduler
                .as_ref()
                .map(|s| s.get_ref().clone())
                .or_else(|| base.scheduler.clone()),
            schedule: e
                .schedule
                .as_ref()
                .map(|s| s.get_ref().clone())
                .or_else(|| base.schedule.clone()),
            width: self
                .whole(&d.width, "defaults.width", 8, 4096, 8)?
                .or(base.width),
            height: self
                .whole(&d.height, "defaults.height", 8, 4096, 8)?
                .or(base.height),
            negative_prompt: d
                .negative_prompt
                .clone()
                .or_else(|| base.negative_prompt.clone()),
            clip_skip: self
                .whole(&d.clip_skip, "defaults.clip_skip", 1, 12, 1)?
                .or(base.clip_skip),
        };
        let l = &e.limits;
        let limits = LimitOverrides {
            max_width: self.whole(&l.max_width, "limits.max_width", 8, 16384, 8)?,
            max_height: self.whole(&l.max_height, "limits.max_height", 8, 16384, 8)?,
            max_steps: self.whole(&l.max_steps, "limits.max_steps", 1, 1000, 1)?,
            max_images: self.whole(&l.max_images, "limits.max_images", 1, 64, 1)?,
        };
        Ok(PipelineConfig {
            name,
            pack: pack.name.clone(),
            mode,
            description: e.description,
            defaults,
            limits,
            post_processors,
            lora_set: e.lora_set,
            manifest_path: self.file.to_path_buf(),
        })
    }

    /// Checks a whole number is in `min..=max` and a multiple of `step`.
    fn whole(
        &self,
        value: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        max: i64,
        step: i64,
    ) -> Result<Option<usize>, ManifestError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let n = *value.get_ref();
        match usize::try_from(n) {
            Ok(ok) if (min..=max).contains(&n) && n % step == 0 => Ok(Some(ok)),
            _ => {
                let multiple = if step > 1 {
                    format!(" and a multiple of {step}")
                } else {
                    String::new()
                };
                let message = format!(
                    "must be between {min} and {max}{multiple} (got {n}): change the value"
                );
                Err(self.invalid(value, &format!("pipeline.{key}"), message))
            }
        }
    }
}
