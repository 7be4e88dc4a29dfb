//! `[[pipeline]]`: a named, operator-configured way to run a pack (`beeswax serve` offers each
//! under its name).
//!
//! ```toml
//! [[pipeline]]
//! name = "tiny-fast"
//! pack = "tiny-sd"
//! mode = "txt2img"              # the only mode for now
//! description = "Few steps, Karras sigmas"
//! scheduler = "euler"           # a scheduler name or alias (built-in or plugin)
//! schedule = "karras"           # a noise schedule of crate::schedulers::SCHEDULES
//! pre_processors = []           # plugin pre-processors run on each input picture, in order
//! post_processors = []          # post-processors run on each image, in order
//! lora_set = "winter-fox"       # a [[lora_set]] (or [[lora]]) applied to every job
//! refiner = "sdxl-refiner"      # a pack whose model finishes every job (SDXL's refiner)
//! refiner_switch_at = 0.8       # share of the schedule before the refiner, in (0, 1)
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
//! [`pipelines`] checks types, names, the pack, the schedule, defaults and limits (ranges from
//! [`crate::limits`]). Scheduler, processor and LoRA names depend on what the running process
//! has (built-ins, plugins, the LoRA catalog), so they are checked in separate steps that take
//! those names as parameters: [`PipelineConfig::check_names`] and
//! [`PipelineConfig::check_lora_set`]. Every error names the file, line and field.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::folder::ManifestFolder;
use super::located::{Located, UniqueNames};
use super::pack::{checked_defaults, RawDefaults};
use super::{list_or_none, ManifestError, PackDefaults, PackManifest};
use crate::limits;
use crate::schedulers::Schedule;

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
    /// Largest width ([`limits::SIZE`]).
    pub max_width: Option<usize>,
    /// Largest height ([`limits::SIZE`]).
    pub max_height: Option<usize>,
    /// Most steps ([`limits::STEPS`]).
    pub max_steps: Option<usize>,
    /// Most images per request ([`limits::IMAGES`]).
    pub max_images: Option<usize>,
}

/// A validated `[[pipeline]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Unique name (not a pack name either).
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
    /// Pre-processor names, in order (checked by [`Self::check_names`]).
    pub pre_processors: Vec<String>,
    /// Post-processor names, in order (checked by [`Self::check_names`]).
    pub post_processors: Vec<String>,
    /// A LoRA set (or LoRA) applied to every job first (checked by [`Self::check_lora_set`]).
    pub lora_set: Option<String>,
    /// A pack whose model finishes every job from the switch point (a known pack).
    pub refiner: Option<String>,
    /// The default switch point of the refiner, in (0, 1).
    pub refiner_switch_at: Option<f64>,
    /// The manifest it came from.
    pub manifest_path: PathBuf,
    /// Where the names checked later were written.
    lines: NameLines,
}

/// The lines of the names a [`PipelineConfig`] checks after it is read.
#[derive(Debug, Clone, Default, PartialEq)]
struct NameLines {
    scheduler: Option<usize>,
    pre_processors: Vec<usize>,
    post_processors: Vec<usize>,
    lora_set: Option<usize>,
}

/// `[[pipeline]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    pack: Spanned<String>,
    mode: Option<Spanned<String>>,
    description: Option<String>,
    scheduler: Option<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    #[serde(default)]
    defaults: RawPipelineDefaults,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    pre_processors: Vec<Spanned<String>>,
    #[serde(default)]
    post_processors: Vec<Spanned<String>>,
    lora_set: Option<Spanned<String>>,
    refiner: Option<Spanned<String>>,
    refiner_switch_at: Option<Spanned<f64>>,
}

/// `[pipeline.defaults]` as written: `[pack.defaults]` without the scheduler and schedule,
/// which a pipeline sets in its own table.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPipelineDefaults {
    steps: Option<Spanned<i64>>,
    guidance: Option<Spanned<f64>>,
    width: Option<Spanned<i64>>,
    height: Option<Spanned<i64>>,
    negative_prompt: Option<String>,
    clip_skip: Option<Spanned<i64>>,
    prompt_syntax: Option<Spanned<String>>,
    pad_prompts: Option<bool>,
}

impl From<RawPipelineDefaults> for RawDefaults {
    fn from(d: RawPipelineDefaults) -> Self {
        RawDefaults {
            steps: d.steps,
            guidance: d.guidance,
            scheduler: None,
            schedule: None,
            width: d.width,
            height: d.height,
            negative_prompt: d.negative_prompt,
            clip_skip: d.clip_skip,
            prompt_syntax: d.prompt_syntax,
            pad_prompts: d.pad_prompts,
        }
    }
}

/// `[pipeline.limits]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_width: Option<Spanned<i64>>,
    max_height: Option<Spanned<i64>>,
    max_steps: Option<Spanned<i64>>,
    max_images: Option<Spanned<i64>>,
}

/// Every `[[pipeline]]` of the folder (files in name order), validated against `packs` (from
/// [`super::packs`]); names must be unique across files. The first problem is an error.
pub fn pipelines(
    folder: &ManifestFolder<'_>,
    packs: &[PackManifest],
) -> Result<Vec<PipelineConfig>, ManifestError> {
    let mut out = Vec::new();
    let mut names = UniqueNames::new("pipeline.name", "pipelines");
    for document in folder.documents() {
        let located = document.located();
        for raw in document.entries::<RawPipeline>("pipeline") {
            let raw = raw?;
            let line = located.line_of(&raw.name);
            let config = validate(&located, raw, packs)?;
            names.insert(&config.name, document.path(), line)?;
            out.push(config);
        }
    }
    Ok(out)
}

impl PipelineConfig {
    /// Checks the names that depend on what this process runs: the pipeline's own scheduler
    /// (`schedulers` resolves a name or alias, built-in or plugin, and says what is wrong),
    /// and its pre- and post-processors against the names available.
    pub fn check_names(
        &self,
        schedulers: &dyn Fn(&str) -> Result<(), String>,
        post_processors: &[String],
        pre_processors: &[String],
    ) -> Result<(), ManifestError> {
        if let (Some(line), Some(name)) = (self.lines.scheduler, &self.defaults.scheduler) {
            schedulers(name)
                .map_err(|message| self.invalid(line, "pipeline.scheduler", message))?;
        }
        let pre = (&self.pre_processors, &self.lines.pre_processors);
        self.check_processors("pre_processors", "pre-processor", pre, pre_processors)?;
        let post = (&self.post_processors, &self.lines.post_processors);
        self.check_processors("post_processors", "post-processor", post, post_processors)
    }

    /// Checks `lora_set` names one of `known` (the `[[lora_set]]` and `[[lora]]` names of the
    /// LoRA catalog).
    pub fn check_lora_set(&self, known: &[String]) -> Result<(), ManifestError> {
        let (Some(set), Some(line)) = (&self.lora_set, self.lines.lora_set) else {
            return Ok(());
        };
        if known.contains(set) {
            return Ok(());
        }
        let message = format!(
            "of [[pipeline]] `{}` names `{set}`, which is no [[lora_set]] or [[lora]] of the \
             manifests (known: {}): fix the name or declare the set",
            self.name,
            list_or_none(known)
        );
        Err(self.invalid(line, "pipeline.lora_set", message))
    }

    fn check_processors(
        &self,
        key: &str,
        what: &str,
        (names, lines): (&Vec<String>, &Vec<usize>),
        known: &[String],
    ) -> Result<(), ManifestError> {
        let Some((name, line)) = names.iter().zip(lines).find(|(n, _)| !known.contains(n)) else {
            return Ok(());
        };
        let registered = if known.is_empty() {
            "none is registered (plugins provide them: see `beeswax plugins`)".to_string()
        } else {
            format!("registered: {}", known.join(", "))
        };
        let message = format!("names no registered {what} `{name}`: {registered}");
        Err(self.invalid(*line, &format!("pipeline.{key}"), message))
    }

    fn invalid(&self, line: usize, field: &str, message: String) -> ManifestError {
        ManifestError::invalid(&self.manifest_path, line, field, message)
    }
}

fn validate(
    located: &Located<'_>,
    raw: RawPipeline,
    packs: &[PackManifest],
) -> Result<PipelineConfig, ManifestError> {
    let name = checked_name(located, &raw.name, packs)?;
    let pack = pack_of(located, &raw.pack, &name, packs)?;
    let mode = mode(located, raw.mode.as_ref())?;
    let (refiner, refiner_switch_at) = refiner(located, &raw, &name, packs)?;
    if let Some(s) = &raw.schedule {
        Schedule::parse(s.get_ref())
            .map_err(|err| located.at(s, "pipeline.schedule", err.to_string()))?;
    }
    let own = PackDefaults {
        scheduler: raw.scheduler.as_ref().map(|s| s.get_ref().clone()),
        schedule: raw.schedule.as_ref().map(|s| s.get_ref().clone()),
        ..checked_defaults(located, "pipeline.defaults", &raw.defaults.into())?
    };
    let lines_of = |names: &[Spanned<String>]| names.iter().map(|n| located.line_of(n)).collect();
    let lines = NameLines {
        scheduler: raw.scheduler.as_ref().map(|s| located.line_of(s)),
        pre_processors: lines_of(&raw.pre_processors),
        post_processors: lines_of(&raw.post_processors),
        lora_set: raw.lora_set.as_ref().map(|s| located.line_of(s)),
    };
    let names = |list: Vec<Spanned<String>>| list.into_iter().map(Spanned::into_inner).collect();
    Ok(PipelineConfig {
        name,
        pack: pack.name.clone(),
        mode,
        description: raw.description,
        defaults: own.over(&pack.defaults),
        limits: checked_limits(located, &raw.limits)?,
        pre_processors: names(raw.pre_processors),
        post_processors: names(raw.post_processors),
        lora_set: raw.lora_set.map(Spanned::into_inner),
        refiner,
        refiner_switch_at,
        manifest_path: located.file().to_path_buf(),
        lines,
    })
}

/// The pipeline's name: letters, digits, `-`, `_` and `.`, and not a pack's name.
fn checked_name(
    located: &Located<'_>,
    raw: &Spanned<String>,
    packs: &[PackManifest],
) -> Result<String, ManifestError> {
    let name = raw.get_ref().trim().to_string();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        let message =
            format!("must be a non-empty name of letters, digits, `-`, `_` and `.` (got `{name}`)");
        return Err(located.at(raw, "pipeline.name", message));
    }
    if packs.iter().any(|p| p.name == name) {
        let message = format!(
            "`{name}` is already a pack name (packs are served under their own names): choose \
             another pipeline name"
        );
        return Err(located.at(raw, "pipeline.name", message));
    }
    Ok(name)
}

/// The pack the pipeline `name` runs.
fn pack_of<'p>(
    located: &Located<'_>,
    raw: &Spanned<String>,
    name: &str,
    packs: &'p [PackManifest],
) -> Result<&'p PackManifest, ManifestError> {
    packs
        .iter()
        .find(|p| &p.name == raw.get_ref())
        .ok_or_else(|| {
            let names: Vec<&str> = packs.iter().map(|p| p.name.as_str()).collect();
            let message = format!(
                "names no known pack `{}` (pipeline `{name}`): available packs: {}",
                raw.get_ref(),
                list_or_none(&names)
            );
            located.at(raw, "pipeline.pack", message)
        })
}

/// The pipeline's refiner (a known pack) and switch point (in (0, 1); only with a refiner).
fn refiner(
    located: &Located<'_>,
    raw: &RawPipeline,
    name: &str,
    packs: &[PackManifest],
) -> Result<(Option<String>, Option<f64>), ManifestError> {
    if let Some(at) = &raw.refiner_switch_at {
        let v = *at.get_ref();
        if raw.refiner.is_none() {
            let message = "needs a `refiner` (the pack that takes over at this point)".to_string();
            return Err(located.at(at, "pipeline.refiner_switch_at", message));
        }
        if !limits::switch_at_ok(v) {
            let message = format!(
                "must be above 0 and below 1 (the share of the schedule the base runs before \
                 the refiner; got {v})"
            );
            return Err(located.at(at, "pipeline.refiner_switch_at", message));
        }
    }
    let Some(refiner) = &raw.refiner else {
        return Ok((None, None));
    };
    if !packs.iter().any(|p| &p.name == refiner.get_ref()) {
        let names: Vec<&str> = packs.iter().map(|p| p.name.as_str()).collect();
        let message = format!(
            "names no known pack `{}` (pipeline `{name}`): available packs: {}",
            refiner.get_ref(),
            list_or_none(&names)
        );
        return Err(located.at(refiner, "pipeline.refiner", message));
    }
    let at = raw.refiner_switch_at.as_ref().map(|a| *a.get_ref());
    Ok((Some(refiner.get_ref().clone()), at))
}

fn mode(located: &Located<'_>, raw: Option<&Spanned<String>>) -> Result<Mode, ManifestError> {
    match raw {
        None => Ok(Mode::TextToImage),
        Some(m) if m.get_ref() == Mode::TextToImage.as_str() => Ok(Mode::TextToImage),
        Some(m) => {
            let message = format!(
                "must be `txt2img` (got `{}`); image-to-image modes are not available yet",
                m.get_ref()
            );
            Err(located.at(m, "pipeline.mode", message))
        }
    }
}

/// `[pipeline.limits]`, each within the range of the value it limits.
fn checked_limits(located: &Located<'_>, raw: &RawLimits) -> Result<LimitOverrides, ManifestError> {
    let field = |key: &str| format!("pipeline.limits.{key}");
    Ok(LimitOverrides {
        max_width: located.size(&raw.max_width, &field("max_width"))?,
        max_height: located.size(&raw.max_height, &field("max_height"))?,
        max_steps: located.whole(&raw.max_steps, &field("max_steps"), &limits::STEPS, None)?,
        max_images: located.whole(&raw.max_images, &field("max_images"), &limits::IMAGES, None)?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest::{packs, Document};

    const PACK: &str = "[pack]\nname = \"tiny\"\nfamily = \"sd1\"\npath = \"m\"\n\
                        [pack.defaults]\nsteps = 20\nwidth = 64\n\n";

    fn read(text: &str) -> Result<Vec<PipelineConfig>, ManifestError> {
        let dir = Path::new("/m");
        let path = dir.join("p.toml");
        let document = Document::parse(&path, text)?;
        let folder = ManifestFolder::from_documents(dir, vec![document]);
        pipelines(&folder, &packs(&folder)?)
    }

    #[test]
    fn defaults_come_over_the_packs() {
        let text = format!(
            "{PACK}[[pipeline]]\nname = \"fast\"\npack = \"tiny\"\nscheduler = \"ddim\"\n\
             pre_processors = [\"grow\"]\n[pipeline.defaults]\nsteps = 4\n"
        );
        let p = &read(&text).unwrap()[0];
        assert_eq!(p.defaults.steps, Some(4));
        assert_eq!(p.defaults.width, Some(64));
        assert_eq!(p.defaults.scheduler.as_deref(), Some("ddim"));
        assert_eq!(p.pre_processors, ["grow"]);
    }

    #[test]
    fn names_are_checked_against_what_the_caller_has() {
        let text = format!(
            "{PACK}[[pipeline]]\nname = \"fast\"\npack = \"tiny\"\nscheduler = \"warp\"\n\
             post_processors = [\"sharpen\"]\npre_processors = [\"grow\"]\nlora_set = \"fox\"\n"
        );
        let p = &read(&text).unwrap()[0];
        let builtin = |name: &str| match name {
            "euler" | "ddim" => Ok(()),
            other => Err(format!("unknown scheduler `{other}`")),
        };
        let sharpen = ["sharpen".to_string()];
        let grow = ["grow".to_string()];
        let err = p
            .check_names(&builtin, &sharpen, &grow)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/m/p.toml:12: `pipeline.scheduler` unknown scheduler `warp`"),
            "{err}"
        );
        let all = |_: &str| Ok(());
        let err = p.check_names(&all, &[], &grow).unwrap_err().to_string();
        assert!(
            err.contains(
                ":13: `pipeline.post_processors` names no registered post-processor `sharpen`"
            ),
            "{err}"
        );
        let err = p
            .check_names(&all, &sharpen, &sharpen)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":14: `pipeline.pre_processors`") && err.contains("registered: sharpen"),
            "{err}"
        );
        assert!(p.check_names(&all, &sharpen, &grow).is_ok());
        let err = p.check_lora_set(&["snow".into()]).unwrap_err().to_string();
        assert!(
            err.contains(":15: `pipeline.lora_set`") && err.contains("known: snow"),
            "{err}"
        );
        assert!(p.check_lora_set(&["fox".into()]).is_ok());
    }

    #[test]
    fn a_refiner_is_a_known_pack_with_a_switch_in_range() {
        let text = format!(
            "{PACK}[[pipeline]]\nname = \"fine\"\npack = \"tiny\"\nrefiner = \"tiny\"\n\
             refiner_switch_at = 0.7\n"
        );
        let p = &read(&text).unwrap()[0];
        assert_eq!(p.refiner.as_deref(), Some("tiny"));
        assert_eq!(p.refiner_switch_at, Some(0.7));
        let err = read(&text.replace("refiner = \"tiny\"", "refiner = \"nope\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/m/p.toml:12: `pipeline.refiner` names no known pack `nope`")
                && err.contains("available packs: tiny"),
            "{err}"
        );
        let err = read(&text.replace("0.7", "1.0")).unwrap_err().to_string();
        assert!(
            err.contains(":13: `pipeline.refiner_switch_at` must be above 0 and below 1"),
            "{err}"
        );
        let err = read(&text.replace("refiner = \"tiny\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":12: `pipeline.refiner_switch_at` needs a `refiner`"),
            "{err}"
        );
    }

    #[test]
    fn limits_use_the_engine_ranges() {
        let text = format!(
            "{PACK}[[pipeline]]\nname = \"big\"\npack = \"tiny\"\n[pipeline.limits]\n\
             max_images = 65\n"
        );
        let err = read(&text).unwrap_err().to_string();
        assert!(
            err.contains(":13: `pipeline.limits.max_images` must be between 1 and 64"),
            "{err}"
        );
        let largest = *limits::SIZE.end();
        let text = text.replace("max_images = 65", &format!("max_width = {largest}"));
        assert_eq!(read(&text).unwrap()[0].limits.max_width, Some(largest));
    }
}
