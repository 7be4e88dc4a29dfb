//! Where LoRAs come from: `[[lora]]` and `[[lora_set]]` manifest entries, or file paths.
//!
//! ```toml
//! [[lora]]
//! name = "fox-style"
//! path = "loras/fox-style.safetensors"    # relative to this file; or:
//! # repo = "org/name"                     # a Hugging Face repo, with
//! # file = "fox-style.safetensors"        # the file in it, and
//! # revision = "main"                     # optionally a branch, tag or commit
//! sha256 = "9f2c..."                      # optional: checked when the file is first read
//! weight = 0.8                            # default weight (1 if unset)
//! triggers = ["foxstyle"]                 # words the LoRA was trained on
//! description = "Painterly foxes"
//!
//! [[lora_set]]                            # a named list of LoRAs with weights
//! name = "winter-fox"
//! loras = [{ name = "fox-style", weight = 0.7 }, { name = "snow" }]   # weight: the LoRA's default
//! ```
//!
//! A job names LoRAs (`--lora NAME[:WEIGHT]`, `<lora:NAME:WEIGHT>`, HTTP `loras`); a name is
//! a `[[lora]]`, a `[[lora_set]]` (its members, each weight multiplied by the one given), or,
//! where the caller allows it (the CLI, not the HTTP service), the path of a file. Every
//! final weight must lie in the catalog's [`WeightRange`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;
use toml::Spanned;

use super::file::LoraFile;
use super::merge::WeightedLora;
use super::LoraError;
use crate::hub::{self, HubError};
use crate::manifest::ManifestError;
use crate::Result;

/// One `[[lora]]` table as written (types are checked by [`crate::manifest`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraEntryRaw {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    repo: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    weight: Option<Spanned<f64>>,
    #[serde(default)]
    triggers: Vec<String>,
    description: Option<String>,
}

/// One `[[lora_set]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSetRaw {
    name: Spanned<String>,
    loras: Spanned<Vec<LoraSetMemberRaw>>,
    description: Option<String>,
}

/// A member of a `[[lora_set]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSetMemberRaw {
    name: Spanned<String>,
    weight: Option<Spanned<f64>>,
}

/// Where a LoRA file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoraSource {
    /// A local file (relative manifest paths already joined to the manifest's folder).
    Path(PathBuf),
    /// A file in a Hugging Face repo, read through the local cache.
    Hub {
        /// Repo id.
        repo: String,
        /// File within the repo.
        file: String,
        /// Branch, tag or commit.
        revision: String,
    },
}

/// A validated `[[lora]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraEntry {
    /// Unique name.
    pub name: String,
    /// The file.
    pub source: LoraSource,
    /// Expected SHA-256 of the file (lowercase hex).
    pub sha256: Option<String>,
    /// Default weight.
    pub weight: f64,
    /// Trigger words.
    pub triggers: Vec<String>,
    /// A human description.
    pub description: Option<String>,
    /// The manifest it came from.
    pub manifest_path: PathBuf,
}

/// A validated `[[lora_set]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSet {
    /// Unique name.
    pub name: String,
    /// Member LoRA names with their weights (`None`: the LoRA's default).
    pub loras: Vec<(String, Option<f64>)>,
    /// A human description.
    pub description: Option<String>,
    /// The manifest it came from.
    pub manifest_path: PathBuf,
}

/// The weights jobs may use (inclusive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightRange {
    /// Smallest allowed weight.
    pub min: f64,
    /// Largest allowed weight.
    pub max: f64,
}

impl Default for WeightRange {
    /// -5 to 5: beyond that, LoRAs produce noise.
    fn default() -> Self {
        Self {
            min: -5.0,
            max: 5.0,
        }
    }
}

impl std::str::FromStr for WeightRange {
    type Err = String;

    /// `MIN:MAX`, e.g. `-2:2`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parse = |v: &str| v.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        match s.split_once(':').map(|(a, b)| (parse(a), parse(b))) {
            Some((Some(min), Some(max))) if min <= max => Ok(Self { min, max }),
            _ => Err(format!(
                "`{s}` is not a weight range: write MIN:MAX with MIN <= MAX, e.g. -2:2"
            )),
        }
    }
}

/// A LoRA a job asks for: a name (or file path) and an optional weight.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct LoraRequest {
    /// Catalog name, set name, or (where allowed) file path.
    pub name: String,
    /// Weight; `None` uses the LoRA's default.
    #[serde(default)]
    pub weight: Option<f64>,
}

impl LoraRequest {
    /// Parses `NAME_OR_FILE[:WEIGHT]` (the `--lora` flag).
    pub fn parse(spec: &str) -> std::result::Result<Self, LoraError> {
        let spec = spec.trim();
        let (name, weight) = match spec.rsplit_once(':') {
            Some((name, w)) => match w.trim().parse::<f64>() {
                Ok(w) if w.is_finite() => (name, Some(w)),
                _ if w.contains(['/', '\\', '.']) => (spec, None),
                _ => {
                    return Err(LoraError::BadSpec {
                        spec: spec.to_string(),
                        message: format!(
                            "the weight `{w}` is not a number: write NAME_OR_FILE[:WEIGHT], e.g. fox:0.8"
                        ),
                    })
                }
            },
            None => (spec, None),
        };
        if name.trim().is_empty() {
            return Err(LoraError::BadSpec {
                spec: spec.to_string(),
                message: "the name is empty: write NAME_OR_FILE[:WEIGHT]".into(),
            });
        }
        Ok(Self {
            name: name.trim().to_string(),
            weight,
        })
    }
}

/// A LoRA resolved to its file and final weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLora {
    /// The catalog name, or the file stem for a path.
    pub name: String,
    /// The file.
    pub source: LoraSource,
    /// Final weight.
    pub weight: f64,
    /// Expected SHA-256, if declared.
    pub sha256: Option<String>,
    /// Trigger words, if declared.
    pub triggers: Vec<String>,
}

#[derive(Debug)]
struct Cached {
    modified: Option<SystemTime>,
    len: u64,
    file: Arc<LoraFile>,
}

/// The LoRAs and LoRA sets the manifests declare, the allowed weights, and a cache of the
/// files read so far (re-read when they change on disk).
#[derive(Debug, Default)]
pub struct LoraCatalog {
    /// `[[lora]]` entries.
    pub entries: Vec<LoraEntry>,
    /// `[[lora_set]]` entries.
    pub sets: Vec<LoraSet>,
    /// Allowed weights.
    pub range: WeightRange,
    /// Fetch hub files missing from the cache.
    pub allow_download: bool,
    cache: Mutex<HashMap<PathBuf, Cached>>,
}

impl LoraCatalog {
    /// A catalog of `entries` and `sets` with the default weight range.
    pub fn new(entries: Vec<LoraEntry>, sets: Vec<LoraSet>) -> Self {
        Self {
            entries,
            sets,
            ..Self::default()
        }
    }

    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Option<&LoraEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// The set called `name`.
    pub fn set(&self, name: &str) -> Option<&LoraSet> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// Resolves requests to files and final weights. A name that is neither an entry nor a set
    /// is taken as a file path only if `allow_files` (never for network clients).
    pub fn resolve(
        &self,
        requests: &[LoraRequest],
        allow_files: bool,
    ) -> std::result::Result<Vec<ResolvedLora>, LoraError> {
        let mut out = Vec::new();
        for request in requests {
            if let Some(entry) = self.entry(&request.name) {
                out.push(self.checked(entry, request.weight.unwrap_or(entry.weight))?);
            } else if let Some(set) = self.set(&request.name) {
                let factor = request.weight.unwrap_or(1.0);
                for (member, weight) in &set.loras {
                    let entry = self.entry(member).ok_or_else(|| self.unknown(member))?;
                    out.push(self.checked(entry, weight.unwrap_or(entry.weight) * factor)?);
                }
            } else if allow_files && Path::new(&request.name).is_file() {
                let path = PathBuf::from(&request.name);
                let name = path.file_stem().map_or_else(
                    || request.name.clone(),
                    |s| s.to_string_lossy().into_owned(),
                );
                let weight = request.weight.unwrap_or(1.0);
                self.check_weight(&name, weight)?;
                out.push(ResolvedLora {
                    name,
                    source: LoraSource::Path(path),
                    weight,
                    sha256: None,
                    triggers: Vec::new(),
                });
            } else {
                return Err(self.unknown(&request.name));
            }
        }
        Ok(out)
    }

    fn checked(
        &self,
        entry: &LoraEntry,
        weight: f64,
    ) -> std::result::Result<ResolvedLora, LoraError> {
        self.check_weight(&entry.name, weight)?;
        Ok(ResolvedLora {
            name: entry.name.clone(),
            source: entry.source.clone(),
            weight,
            sha256: entry.sha256.clone(),
            triggers: entry.triggers.clone(),
        })
    }

    fn check_weight(&self, name: &str, weight: f64) -> std::result::Result<(), LoraError> {
        let WeightRange { min, max } = self.range;
        if weight.is_finite() && (min..=max).contains(&weight) {
            Ok(())
        } else {
            Err(LoraError::WeightOutOfRange {
                name: name.to_string(),
                weight,
                min,
                max,
            })
        }
    }

    fn unknown(&self, name: &str) -> LoraError {
        LoraError::UnknownName {
            name: name.to_string(),
            known: self.entries.iter().map(|e| e.name.clone()).collect(),
            sets: self.sets.iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// Reads (or takes from the cache) the files of `resolved`, checking declared hashes.
    pub fn load(&self, resolved: &[ResolvedLora]) -> Result<Vec<WeightedLora>> {
        resolved
            .iter()
            .map(|r| {
                let path = match &r.source {
                    LoraSource::Path(p) => p.clone(),
                    LoraSource::Hub {
                        repo,
                        file,
                        revision,
                    } => hub_file(repo, file, revision, self.allow_download)?,
                };
                Ok(WeightedLora {
                    name: r.name.clone(),
                    file: self.read(&r.name, &path, r.sha256.as_deref())?,
                    weight: r.weight,
                })
            })
            .collect()
    }

    /// [`Self::resolve`] then [`Self::load`].
    pub fn prepare(
        &self,
        requests: &[LoraRequest],
        allow_files: bool,
    ) -> Result<Vec<WeightedLora>> {
        let resolved = self.resolve(requests, allow_files)?;
        self.load(&resolved)
    }

    fn read(&self, name: &str, path: &Path, sha256: Option<&str>) -> Result<Arc<LoraFile>> {
        let meta = std::fs::metadata(path).map_err(|e| LoraError::Unreadable {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let (modified, len) = (meta.modified().ok(), meta.len());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(path) {
            if c.modified == modified && c.len == len {
                return Ok(c.file.clone());
            }
        }
        let bytes = std::fs::read(path).map_err(|e| LoraError::Unreadable {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(expected) = sha256 {
            let actual = sha256_hex(&bytes);
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(LoraError::HashMismatch {
                    name: name.to_string(),
                    path: path.to_path_buf(),
                    expected: expected.to_string(),
                    actual,
                }
                .into());
            }
        }
        let file = Arc::new(LoraFile::from_bytes(path, &bytes)?);
        cache.insert(
            path.to_path_buf(),
            Cached {
                modified,
                len,
                file: file.clone(),
            },
        );
        Ok(file)
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A file of a hub repo from the local cache, downloaded if allowed.
fn hub_file(
    repo: &str,
    file: &str,
    revision: &str,
    allow_download: bool,
) -> std::result::Result<PathBuf, HubError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let cache = Cache::new(hub::cache_dir());
    let r = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    if let Some(path) = cache.repo(r.clone()).get(file) {
        return Ok(path);
    }
    if !allow_download {
        return Err(HubError::NotCached {
            repo: repo.to_string(),
            revision: revision.to_string(),
            cache: cache.path().clone(),
        });
    }
    let mut builder = ApiBuilder::from_cache(cache);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let download = |source| HubError::Download {
        repo: repo.to_string(),
        file: file.to_string(),
        source: Box::new(source),
    };
    builder
        .build()
        .map_err(download)?
        .repo(r)
        .get(file)
        .map_err(download)
}

/// The `[[lora]]` and `[[lora_set]]` tables of a manifest file; the rest is read elsewhere.
#[derive(Deserialize)]
struct LoraTables {
    #[serde(default)]
    lora: Vec<LoraEntryRaw>,
    #[serde(default)]
    lora_set: Vec<LoraSetRaw>,
}

/// A set with the line of its name and the names and lines of its members.
type SetAt = (LoraSet, usize, Vec<(String, usize)>);

/// Reads every `[[lora]]` and `[[lora_set]]` in the `*.toml` files of `dir` (sorted by name;
/// types were checked by [`crate::manifest::load_dir`]) and validates names, sources, weights
/// and set members, naming the file, line and field at fault.
pub fn load_dir(dir: &Path) -> std::result::Result<LoraCatalog, ManifestError> {
    let mut entries: Vec<(LoraEntry, usize)> = Vec::new();
    let mut sets: Vec<SetAt> = Vec::new();
    let range = WeightRange::default();
    for file in crate::manifest::toml_files(dir)? {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        let ctx = Ctx {
            file: &file,
            text: &text,
        };
        let tables: LoraTables = toml::from_str(&text).map_err(|e| ManifestError::Syntax {
            file: file.clone(),
            line: ctx.line(e.span().map_or(0, |s| s.start)),
            message: e.message().trim().to_string(),
        })?;
        for raw in tables.lora {
            let line = ctx.line(raw.name.span().start);
            let entry = ctx.entry(raw, range)?;
            if let Some((first, first_line)) = entries.iter().find(|(e, _)| e.name == entry.name) {
                let message = format!(
                    "`{}` is defined twice, also in {}:{first_line}: rename one of the LoRAs",
                    entry.name,
                    first.manifest_path.display()
                );
                return Err(ctx.invalid(line, "lora.name", message));
            }
            entries.push((entry, line));
        }
        for raw in tables.lora_set {
            let line = ctx.line(raw.name.span().start);
            let (set, member_lines) = ctx.set(raw, range)?;
            if let Some((first, first_line, _)) = sets.iter().find(|(s, ..)| s.name == set.name) {
                let message = format!(
                    "`{}` is defined twice, also in {}:{first_line}: rename one of the sets",
                    set.name,
                    first.manifest_path.display()
                );
                return Err(ctx.invalid(line, "lora_set.name", message));
            }
            sets.push((set, line, member_lines));
        }
    }
    let names: Vec<String> = entries.iter().map(|(e, _)| e.name.clone()).collect();
    for (set, _, member_lines) in &sets {
        if let Some(e) = entries.iter().find(|(e, _)| e.name == set.name) {
            return Err(ManifestError::Invalid {
                file: set.manifest_path.clone(),
                line: member_lines.first().map_or(1, |(_, l)| *l),
                field: "lora_set.name".into(),
                message: format!(
                    "`{}` is also a [[lora]] in {}: give the set another name",
                    set.name,
                    e.0.manifest_path.display()
                ),
            });
        }
        for (member, line) in member_lines {
            if !names.contains(member) {
                return Err(ManifestError::Invalid {
                    file: set.manifest_path.clone(),
                    line: *line,
                    field: "lora_set.loras.name".into(),
                    message: format!(
                        "`{member}` is not a [[lora]] in any manifest (known: {}): fix the name \
                         or add the LoRA",
                        if names.is_empty() {
                            "(none)".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                });
            }
        }
    }
    Ok(LoraCatalog {
        entries: entries.into_iter().map(|(e, _)| e).collect(),
        sets: sets.into_iter().map(|(s, ..)| s).collect(),
        ..LoraCatalog::default()
    })
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, line: usize, field: &str, message: String) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line,
            field: field.to_string(),
            message,
        }
    }

    fn at<T>(&self, v: &Spanned<T>, field: &str, message: String) -> ManifestError {
        self.invalid(self.line(v.span().start), field, message)
    }

    fn name(&self, v: &Spanned<String>, field: &str) -> std::result::Result<String, ManifestError> {
        let name = v.get_ref().trim();
        let ok = !name.is_empty()
            && !name.contains([':', '<', '>', ','])
            && !name.chars().any(char::is_whitespace);
        if ok {
            Ok(name.to_string())
        } else {
            let message = format!(
                "`{}` is not a usable name: use letters, digits, `-`, `_` or `.`, without spaces, \
                 `:`, `<`, `>` or `,` (it is written in prompts as <lora:NAME:WEIGHT>)",
                v.get_ref()
            );
            Err(self.at(v, field, message))
        }
    }

    fn weight(
        &self,
        v: &Option<Spanned<f64>>,
        field: &str,
        range: WeightRange,
    ) -> std::result::Result<Option<f64>, ManifestError> {
        let Some(v) = v else { return Ok(None) };
        let w = *v.get_ref();
        if w.is_finite() && (range.min..=range.max).contains(&w) {
            Ok(Some(w))
        } else {
            let message = format!(
                "must be between {} and {} (got {w}): change the value",
                range.min, range.max
            );
            Err(self.at(v, field, message))
        }
    }

    fn entry(
        &self,
        raw: LoraEntryRaw,
        range: WeightRange,
    ) -> std::result::Result<LoraEntry, ManifestError> {
        let name = self.name(&raw.name, "lora.name")?;
        let source = match (&raw.path, &raw.repo) {
            (Some(path), None) => {
                for (other, field) in [(&raw.file, "lora.file"), (&raw.revision, "lora.revision")] {
                    if let Some(o) = other {
                        let message =
                            "only applies to `repo` LoRAs: remove it, or use `repo` instead of `path`";
                        return Err(self.at(o, field, message.into()));
                    }
                }
                if path.get_ref().trim().is_empty() {
                    let message = "must not be empty: set it to a .safetensors file".to_string();
                    return Err(self.at(path, "lora.path", message));
                }
                let joined = self
                    .file
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(path.get_ref());
                LoraSource::Path(std::path::absolute(&joined).unwrap_or(joined))
            }
            (None, Some(repo)) => {
                if !hub::is_repo_id(repo.get_ref()) {
                    let message = format!(
                        "must be a Hugging Face repo id like `org/name` (got `{}`)",
                        repo.get_ref()
                    );
                    return Err(self.at(repo, "lora.repo", message));
                }
                let Some(file) = raw.file.as_ref().filter(|f| !f.get_ref().trim().is_empty())
                else {
                    let message = "is required with `repo`: name the .safetensors file in the \
                                   repo, e.g. `file = \"lora.safetensors\"`";
                    return Err(self.at(repo, "lora.file", message.into()));
                };
                LoraSource::Hub {
                    repo: repo.get_ref().clone(),
                    file: file.get_ref().clone(),
                    revision: raw
                        .revision
                        .as_ref()
                        .map_or_else(|| "main".to_string(), |r| r.get_ref().clone()),
                }
            }
            (Some(_), Some(repo)) => {
                let message =
                    "conflicts with `path`: set either `path` (a local file) or `repo` + `file`";
                return Err(self.at(repo, "lora.repo", message.into()));
            }
            (None, None) => {
                let message = "is missing: set `path = \"...\"` to a .safetensors file (relative \
                               to this manifest) or `repo = \"org/name\"` and `file = \"...\"`";
                return Err(self.at(&raw.name, "lora.path", message.into()));
            }
        };
        if let LoraSource::Path(p) = &source {
            let ext_ok = p.extension().is_some_and(|e| e == "safetensors");
            if !ext_ok {
                let message = format!(
                    "`{}` is not a .safetensors file: beeswax reads LoRAs only as safetensors \
                     (pickle files can run code); convert it first",
                    p.display()
                );
                return Err(self.at(raw.path.as_ref().unwrap_or(&raw.name), "lora.path", message));
            }
        }
        let sha256 = match &raw.sha256 {
            Some(h) => {
                let hex = h.get_ref().trim().to_ascii_lowercase();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    let message = "must be 64 hexadecimal digits (the file's SHA-256, as \
                                   `sha256sum` prints it)";
                    return Err(self.at(h, "lora.sha256", message.into()));
                }
                Some(hex)
            }
            None => None,
        };
        Ok(LoraEntry {
            name,
            source,
            sha256,
            weight: self
                .weight(&raw.weight, "lora.weight", range)?
                .unwrap_or(1.0),
            triggers: raw.triggers,
            description: raw.description,
            manifest_path: self.file.to_path_buf(),
        })
    }

    fn set(
        &self,
        raw: LoraSetRaw,
        range: WeightRange,
    ) -> std::result::Result<(LoraSet, Vec<(String, usize)>), ManifestError> {
        let name = self.name(&raw.name, "lora_set.name")?;
        if raw.loras.get_ref().is_empty() {
            let message =
                "must list at least one LoRA, e.g. `loras = [{ name = \"x\", weight = 0.8 }]`";
            return Err(self.at(&raw.loras, "lora_set.loras", message.into()));
        }
        let mut loras = Vec::new();
        let mut lines = Vec::new();
        for member in raw.loras.into_inner() {
            let member_name = self.name(&member.name, "lora_set.loras.name")?;
            let weight = self.weight(&member.weight, "lora_set.loras.weight", range)?;
            lines.push((member_name.clone(), self.line(member.name.span().start)));
            loras.push((member_name, weight));
        }
        Ok((
            LoraSet {
                name,
                loras,
                description: raw.description,
                manifest_path: self.file.to_path_buf(),
            },
            lines,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lora_flags() {
        let p = |s: &str| LoraRequest::parse(s).unwrap();
        assert_eq!(
            p("fox"),
            LoraRequest {
                name: "fox".into(),
                weight: None
            }
        );
        assert_eq!(
            p("fox:0.8"),
            LoraRequest {
                name: "fox".into(),
                weight: Some(0.8)
            }
        );
        assert_eq!(
            p("fox:-1"),
            LoraRequest {
                name: "fox".into(),
                weight: Some(-1.0)
            }
        );
        assert_eq!(p("a/b.safetensors:1.5").name, "a/b.safetensors");
        assert_eq!(
            p("C:\\loras\\x.safetensors").name,
            "C:\\loras\\x.safetensors"
        );
        assert!(LoraRequest::parse("fox:lots").is_err());
        assert!(LoraRequest::parse(":1").is_err());
        assert_eq!(
            "-2:2".parse::<WeightRange>(),
            Ok(WeightRange {
                min: -2.0,
                max: 2.0
            })
        );
        assert!("2:-2".parse::<WeightRange>().is_err());
    }
}
