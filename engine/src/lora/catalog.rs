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

use super::file::LoraFile;
use super::merge::WeightedLora;
use super::LoraError;
pub use crate::digest::sha256_hex;
use crate::hub;
use crate::manifest::{ManifestError, ManifestFolder};
use crate::Result;

/// Where a LoRA file lives.
pub type LoraSource = crate::manifest::FileSource;

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

    /// The `[[lora]]` and `[[lora_set]]` entries of the parsed manifest folder (see
    /// [`super::manifest`]), with the default weight range.
    pub fn from_manifests(folder: &ManifestFolder<'_>) -> std::result::Result<Self, ManifestError> {
        super::manifest::catalog(folder)
    }

    /// Every name a job may give: the `[[lora_set]]` names, then the `[[lora]]` names.
    pub fn names(&self) -> Vec<String> {
        (self.sets.iter().map(|s| s.name.clone()))
            .chain(self.entries.iter().map(|e| e.name.clone()))
            .collect()
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
                    } => hub::repo_file(repo, file, revision, self.allow_download)?,
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
        let bytes = crate::fs_limits::read_regular(path, crate::fs_limits::LORA_BYTES)
            .map_err(crate::fs_limits::ReadError::into_io)
            .map_err(|e| LoraError::Unreadable {
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
        let file = Arc::new(LoraFile::read(path)?);
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
