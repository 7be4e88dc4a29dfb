//! Model pack manifests: one TOML file per pack in a manifest directory.
//!
//! A manifest names a model, says which family it belongs to, where its diffusers folder lives
//! (a local `path`, or a Hugging Face `repo`) and optional generation defaults:
//!
//! ```toml
//! [pack]
//! name = "tiny-sd"
//! family = "sd1"
//! description = "A tiny test model"
//! path = "../tests/fixtures/models/tiny-sd"   # relative to this file's folder; or:
//! # repo = "org/name"
//! # revision = "main"
//!
//! [pack.defaults]
//! steps = 20
//! guidance = 7.5
//! scheduler = "euler"
//! width = 64
//! height = 64
//! ```
//!
//! Every error names the file, the 1-based line and the field at fault, and says how to fix it.

use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The manifest directory used when neither `--manifests` nor [`ENV_VAR`] is given.
pub const DEFAULT_DIR: &str = "manifests";

/// The environment variable naming the manifest directory.
pub const ENV_VAR: &str = "BEESWAX_MANIFESTS";

/// Allowed `steps` defaults.
const STEPS: RangeInclusive<i64> = 1..=1000;
/// Allowed `guidance` defaults.
const GUIDANCE: RangeInclusive<f64> = 0.0..=100.0;
/// Allowed `width` and `height` defaults (also multiples of 8).
const SIZE: RangeInclusive<i64> = 8..=4096;
/// Allowed `clip_skip` defaults (1 means the last CLIP layer, as in most UIs).
const CLIP_SKIP: RangeInclusive<i64> = 1..=12;

/// Errors reading or validating manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest directory does not exist or is not a directory.
    #[error(
        "manifest directory {} does not exist or is not a directory: create it, or pass \
         `--manifests DIR` (or set {ENV_VAR}) to the folder holding the pack *.toml files",
        dir.display()
    )]
    DirMissing {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A manifest file or directory could not be read.
    #[error("could not read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}: invalid TOML: {message}; fix the syntax on that line", file.display())]
    Syntax {
        /// The manifest file.
        file: PathBuf,
        /// The 1-based line of the error.
        line: usize,
        /// The parser's description.
        message: String,
    },
    /// A field is unknown, missing, of the wrong type or out of range.
    #[error("{}:{line}: `{field}` {message}", file.display())]
    Invalid {
        /// The manifest file.
        file: PathBuf,
        /// The 1-based line of the field.
        line: usize,
        /// The dotted field name, e.g. `pack.defaults.steps`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Two manifests define packs with the same name.
    #[error(
        "pack name `{name}` is defined twice, in {}:{first_line} and {}:{second_line}: \
         rename one of the packs or delete one of the files",
        first.display(),
        second.display()
    )]
    DuplicateName {
        /// The pack name.
        name: String,
        /// The first file defining it.
        first: PathBuf,
        /// The line of `name` in the first file.
        first_line: usize,
        /// The second file defining it.
        second: PathBuf,
        /// The line of `name` in the second file.
        second_line: usize,
    },
    /// No manifest defines the requested pack.
    #[error(
        "no model pack named `{name}` in {}: available packs: {}; check the name, or add a \
         {name}.toml manifest with a [pack] table there",
        dir.display(),
        list_or_none(available)
    )]
    UnknownPack {
        /// The requested name.
        name: String,
        /// The directory searched.
        dir: PathBuf,
        /// The pack names that do exist.
        available: Vec<String>,
    },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

/// The model family a pack belongs to, which selects the network architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Stable Diffusion 1.x (CLIP ViT-L/14 text encoder).
    Sd1,
    /// Stable Diffusion 2.x (OpenCLIP ViT-H/14 text encoder).
    Sd2,
}

impl Family {
    /// Every supported family.
    pub const ALL: [Family; 2] = [Family::Sd1, Family::Sd2];

    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
        }
    }

    fn names() -> String {
        Self::ALL.map(Family::as_str).join(", ")
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|family| family.as_str() == s)
            .ok_or_else(|| format!("unknown model family `{s}`: use one of {}", Self::names()))
    }
}

/// Where a pack's diffusers model folder comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackSource {
    /// A local folder, already joined to the manifest file's folder.
    Path(PathBuf),
    /// A Hugging Face hub repository, resolved through the local cache (see [`crate::hub`]).
    Hub {
        /// The repo id, e.g. `org/name`.
        repo: String,
        /// A branch, tag or commit hash (default `main`).
        revision: String,
    },
}

/// Generation defaults a pack suggests; each overrides the engine's own default when set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PackDefaults {
    /// Denoising steps, 1..=1000.
    pub steps: Option<usize>,
    /// Classifier-free guidance scale, 0..=100.
    pub guidance: Option<f64>,
    /// Scheduler name, e.g. `euler`.
    pub scheduler: Option<String>,
    /// Noise schedule name, e.g. `karras`.
    pub schedule: Option<String>,
    /// Image width in pixels, a multiple of 8 in 8..=4096.
    pub width: Option<usize>,
    /// Image height in pixels, a multiple of 8 in 8..=4096.
    pub height: Option<usize>,
    /// Negative prompt.
    pub negative_prompt: Option<String>,
    /// CLIP layers to skip, 1..=12 (1 uses the last layer).
    pub clip_skip: Option<usize>,
}

/// A validated `[pack]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PackManifest {
    /// The pack's unique name.
    pub name: String,
    /// The model family.
    pub family: Family,
    /// A human description.
    pub description: Option<String>,
    /// Where the model folder comes from.
    pub source: PackSource,
    /// Generation defaults.
    pub defaults: PackDefaults,
    /// The manifest file this pack was read from.
    pub manifest_path: PathBuf,
}

/// A manifest file as written. Later tables (`[[plugin]]`, ...) are added here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    pack: Option<Spanned<RawPack>>,
    /// `[[pipeline]]` tables: types are checked here, the rest by `crate::server`.
    #[serde(default)]
    #[allow(dead_code)]
    pipeline: Vec<crate::server::PipelineEntry>,
    /// `[[lora]]` tables: types are checked here, the rest by `crate::lora::catalog`.
    #[serde(default)]
    #[allow(dead_code)]
    lora: Vec<crate::lora::catalog::LoraEntryRaw>,
    /// `[[lora_set]]` tables (named lists of LoRAs with weights), checked likewise.
    #[serde(default)]
    #[allow(dead_code)]
    lora_set: Vec<crate::lora::catalog::LoraSetRaw>,
    /// `[[plugin]]` tables: types are checked here, the rest by `crate::plugins`.
    #[serde(default)]
    #[allow(dead_code)]
    plugin: Vec<crate::plugins::RawPluginEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    name: Spanned<String>,
    family: Spanned<String>,
    description: Option<String>,
    path: Option<Spanned<String>>,
    repo: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    #[serde(default)]
    defaults: RawDefaults,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    steps: Option<Spanned<i64>>,
    guidance: Option<Spanned<f64>>,
    scheduler: Option<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    width: Option<Spanned<i64>>,
    height: Option<Spanned<i64>>,
    negative_prompt: Option<String>,
    clip_skip: Option<Spanned<i64>>,
}

/// Reads every `*.toml` file in `dir` (sorted by file name) and returns the packs they define.
///
/// Files without a `[pack]` table are skipped; pack names must be unique across files.
pub fn load_dir(dir: &Path) -> Result<Vec<PackManifest>, ManifestError> {
    let mut packs: Vec<(PackManifest, usize)> = Vec::new();
    for file in toml_files(dir)? {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        let Some((pack, line)) = parse_with_line(&file, &text)? else {
            continue;
        };
        if let Some((first, first_line)) = packs.iter().find(|(p, _)| p.name == pack.name) {
            return Err(ManifestError::DuplicateName {
                name: pack.name,
                first: first.manifest_path.clone(),
                first_line: *first_line,
                second: file,
                second_line: line,
            });
        }
        packs.push((pack, line));
    }
    Ok(packs.into_iter().map(|(pack, _)| pack).collect())
}

/// Loads `dir` (see [`load_dir`]) and returns the pack called `name`.
pub fn find_pack(dir: &Path, name: &str) -> Result<PackManifest, ManifestError> {
    let packs = load_dir(dir)?;
    let available = packs.iter().map(|p| p.name.clone()).collect();
    packs
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ManifestError::UnknownPack {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            available,
        })
}

/// Parses and validates the manifest text read from `path`; `Ok(None)` if it has no `[pack]`.
///
/// A relative `path` source is joined to `path`'s folder.
pub fn parse(path: &Path, text: &str) -> Result<Option<PackManifest>, ManifestError> {
    Ok(parse_with_line(path, text)?.map(|(pack, _)| pack))
}

/// The `*.toml` files directly inside `dir`, sorted.
pub(crate) fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    if !dir.is_dir() {
        return Err(ManifestError::DirMissing {
            dir: dir.to_path_buf(),
        });
    }
    let io_error = |source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Like [`parse`], also returning the line of the pack's `name`.
fn parse_with_line(
    file: &Path,
    text: &str,
) -> Result<Option<(PackManifest, usize)>, ManifestError> {
    let ctx = Ctx { file, text };
    let table = DeTable::parse(text).map_err(|err| ManifestError::Syntax {
        file: file.to_path_buf(),
        line: ctx.line(err.span().map_or(0, |span| span.start)),
        message: err.message().trim().to_string(),
    })?;
    let raw: RawFile =
        toml::from_str(text).map_err(|err| ctx.serde_error(table.get_ref(), &err))?;
    let Some(raw) = raw.pack else {
        return Ok(None);
    };
    let header = raw.span();
    let name_line = ctx.line(raw.get_ref().name.span().start);
    let pack = ctx.build(raw.into_inner(), header)?;
    Ok(Some((pack, name_line)))
}

/// The file being parsed, for error messages.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, span: Range<usize>, field: &str, message: String) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(span.start),
            field: field.to_string(),
            message,
        }
    }

    /// Turns a serde error into [`ManifestError::Invalid`], naming the field at its span.
    fn serde_error(&self, table: &DeTable<'_>, err: &toml::de::Error) -> ManifestError {
        let span = err.span().unwrap_or(0..0);
        let field = field_at(table, span.start).unwrap_or_default();
        let message = err.message().trim();
        let (field, message) = if let Some(missing) = backticked(message, "missing field `") {
            let table = if field.is_empty() {
                "top level"
            } else {
                &field
            };
            let message = format!("is required: add `{missing} = ...` to the [{table}] table");
            (join_key(&field, missing), message)
        } else if backticked(message, "unknown field `").is_some() && !field.contains('.') {
            let message = "is not allowed at the top level: manifests hold [pack], [[pipeline]], \
                           [[plugin]] and [[lora]] tables; remove it or fix its spelling"
                .to_string();
            (field, message)
        } else if let Some(unknown) = backticked(message, "unknown field `") {
            let expected = message
                .split_once(", expected ")
                .map_or(String::new(), |(_, list)| format!(" (allowed: {list})"));
            let message =
                format!("is not a known field{expected}: remove `{unknown}` or fix its spelling");
            (field, message)
        } else {
            let message = message
                .replace("expected i64", "expected a whole number")
                .replace("expected f64", "expected a number")
                .replace("expected struct RawPack", "expected a [pack] table")
                .replace(
                    "expected struct RawDefaults",
                    "expected a [pack.defaults] table",
                );
            (
                field,
                format!("has the wrong type: {message}; fix the value"),
            )
        };
        self.invalid(span, &field, message)
    }

    /// Validates a deserialized `[pack]` table whose header is at `header`.
    fn build(&self, raw: RawPack, header: Range<usize>) -> Result<PackManifest, ManifestError> {
        let name = raw.name.get_ref().trim().to_string();
        if name.is_empty() {
            let message = "must not be empty: give the pack a name, e.g. `name = \"tiny-sd\"`";
            return Err(self.invalid(raw.name.span(), "pack.name", message.to_string()));
        }
        let family = raw.family.get_ref().parse().map_err(|_| {
            let message = format!(
                "must be one of {} (got `{}`): fix the family name",
                Family::names(),
                raw.family.get_ref()
            );
            self.invalid(raw.family.span(), "pack.family", message)
        })?;
        let source = self.source(raw.path, raw.repo, raw.revision, header)?;
        Ok(PackManifest {
            name,
            family,
            description: raw.description,
            source,
            defaults: self.defaults(raw.defaults)?,
            manifest_path: self.file.to_path_buf(),
        })
    }

    fn source(
        &self,
        path: Option<Spanned<String>>,
        repo: Option<Spanned<String>>,
        revision: Option<Spanned<String>>,
        header: Range<usize>,
    ) -> Result<PackSource, ManifestError> {
        match (path, repo) {
            (Some(path), Some(repo)) => {
                let message = format!(
                    "conflicts with `pack.path` on line {}: set either `path` (a local diffusers \
                     folder) or `repo` (a Hugging Face repo id), not both",
                    self.line(path.span().start)
                );
                Err(self.invalid(repo.span(), "pack.repo", message))
            }
            (None, None) => {
                let message = "is missing: set `path = \"...\"` to a diffusers model folder \
                               (relative to this file) or `repo = \"org/name\"` for a Hugging \
                               Face repo";
                Err(self.invalid(header, "pack.path", message.to_string()))
            }
            (Some(path), None) => {
                if let Some(revision) = revision {
                    let message = "only applies to `repo` packs: remove it, or replace `path` \
                                   with `repo`";
                    return Err(self.invalid(revision.span(), "pack.revision", message.into()));
                }
                if path.get_ref().trim().is_empty() {
                    let message = "must not be empty: set it to a diffusers model folder";
                    return Err(self.invalid(path.span(), "pack.path", message.to_string()));
                }
                let folder = self.file.parent().unwrap_or(Path::new(""));
                let joined = folder.join(path.get_ref());
                Ok(PackSource::Path(
                    std::path::absolute(&joined).unwrap_or(joined),
                ))
            }
            (None, Some(repo)) => {
                if !crate::hub::is_repo_id(repo.get_ref()) {
                    let message = format!(
                        "must be a Hugging Face repo id like `org/name` (got `{}`)",
                        repo.get_ref()
                    );
                    return Err(self.invalid(repo.span(), "pack.repo", message));
                }
                let revision = match revision {
                    None => "main".to_string(),
                    Some(rev) if rev.get_ref().trim().is_empty() => {
                        let message = "must not be empty: use a branch, tag or commit hash, or \
                                       remove it to use `main`";
                        return Err(self.invalid(rev.span(), "pack.revision", message.into()));
                    }
                    Some(rev) => rev.into_inner(),
                };
                Ok(PackSource::Hub {
                    repo: repo.into_inner(),
                    revision,
                })
            }
        }
    }

    fn defaults(&self, raw: RawDefaults) -> Result<PackDefaults, ManifestError> {
        if let Some(scheduler) = &raw.scheduler {
            if scheduler.get_ref().trim().is_empty() {
                let message = "must not be empty: name a scheduler, e.g. `scheduler = \"euler\"`, \
                               or remove the line";
                let field = "pack.defaults.scheduler";
                return Err(self.invalid(scheduler.span(), field, message.to_string()));
            }
        }
        if let Some(schedule) = &raw.schedule {
            if let Err(e) = crate::schedulers::Schedule::parse(schedule.get_ref()) {
                let field = "pack.defaults.schedule";
                return Err(self.invalid(schedule.span(), field, e.to_string()));
            }
        }
        Ok(PackDefaults {
            steps: self.whole(raw.steps, "steps", STEPS, 1)?,
            guidance: self.guidance(raw.guidance)?,
            scheduler: raw.scheduler.map(Spanned::into_inner),
            schedule: raw.schedule.map(Spanned::into_inner),
            width: self.whole(raw.width, "width", SIZE, 8)?,
            height: self.whole(raw.height, "height", SIZE, 8)?,
            negative_prompt: raw.negative_prompt,
            clip_skip: self.whole(raw.clip_skip, "clip_skip", CLIP_SKIP, 1)?,
        })
    }

    /// Checks an integer default is in `range` and a multiple of `step`.
    fn whole(
        &self,
        value: Option<Spanned<i64>>,
        key: &str,
        range: RangeInclusive<i64>,
        step: i64,
    ) -> Result<Option<usize>, ManifestError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let n = *value.get_ref();
        match usize::try_from(n) {
            Ok(ok) if range.contains(&n) && n % step == 0 => Ok(Some(ok)),
            _ => {
                let multiple = if step > 1 {
                    format!(" and a multiple of {step}")
                } else {
                    String::new()
                };
                let message = format!(
                    "must be between {} and {}{multiple} (got {n}): change the value",
                    range.start(),
                    range.end()
                );
                let field = format!("pack.defaults.{key}");
                Err(self.invalid(value.span(), &field, message))
            }
        }
    }

    fn guidance(&self, value: Option<Spanned<f64>>) -> Result<Option<f64>, ManifestError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let g = *value.get_ref();
        if GUIDANCE.contains(&g) {
            return Ok(Some(g));
        }
        let message = format!(
            "must be between {} and {} (got {g}): change the value, e.g. `guidance = 7.5`",
            GUIDANCE.start(),
            GUIDANCE.end()
        );
        Err(self.invalid(value.span(), "pack.defaults.guidance", message))
    }
}

/// The text between `prefix` and the next backtick, if `message` starts with `prefix`.
fn backticked<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

fn join_key(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// The dotted path of the deepest key whose name or value covers byte `offset`.
pub(crate) fn field_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    for (key, value) in table {
        let name = key.get_ref();
        if key.span().contains(&offset) {
            return Some(name.to_string());
        }
        let inner = match value.get_ref() {
            DeValue::Table(inner) => field_at(inner, offset),
            DeValue::Array(items) => items.iter().find_map(|item| match item.get_ref() {
                DeValue::Table(inner) => field_at(inner, offset),
                _ => None,
            }),
            _ => None,
        };
        if let Some(inner) = inner {
            return Some(join_key(name, &inner));
        }
        if value.span().contains(&offset) {
            return Some(name.to_string());
        }
    }
    None
}
