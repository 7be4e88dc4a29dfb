//! The known families: the shipped manifests (embedded in the binary, so they work whatever
//! `--manifests` points at) plus the operator's (`[family]` tables in the manifest folder or in
//! its `families/` subfolder; one with a shipped family's name replaces it). Detection tries
//! them by priority, highest first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    flux, manifest, sd, sdxl, Architecture, ConfigRule, Family, LoadOptions, Model, ModelSource,
};
use crate::manifest::{Document, ManifestError, ManifestFiles, ManifestFolder, UniqueNames};
use crate::{model_files, Error, Result};

/// The shipped family manifests, by file name.
const SHIPPED: &[(&str, &str)] = &[
    (
        "sd1.toml",
        include_str!("../../../manifests/families/sd1.toml"),
    ),
    (
        "sd1-inpaint.toml",
        include_str!("../../../manifests/families/sd1-inpaint.toml"),
    ),
    (
        "sd2.toml",
        include_str!("../../../manifests/families/sd2.toml"),
    ),
    (
        "sd2-v.toml",
        include_str!("../../../manifests/families/sd2-v.toml"),
    ),
    (
        "sd2-inpaint.toml",
        include_str!("../../../manifests/families/sd2-inpaint.toml"),
    ),
    (
        "sdxl.toml",
        include_str!("../../../manifests/families/sdxl.toml"),
    ),
    (
        "sdxl-refiner.toml",
        include_str!("../../../manifests/families/sdxl-refiner.toml"),
    ),
    (
        "sdxl-inpaint.toml",
        include_str!("../../../manifests/families/sdxl-inpaint.toml"),
    ),
    (
        "flux-dev.toml",
        include_str!("../../../manifests/families/flux-dev.toml"),
    ),
    (
        "flux-schnell.toml",
        include_str!("../../../manifests/families/flux-schnell.toml"),
    ),
];

/// Where the shipped manifests live in the source tree (for messages and relative paths).
const SHIPPED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/families");

/// The subfolder of the manifest folder holding family manifests.
pub const FAMILIES_DIR: &str = "families";

/// A set of families in detection order.
#[derive(Debug, Clone)]
pub struct Families {
    list: Vec<Arc<Family>>,
}

impl Families {
    /// The shipped families.
    pub fn builtin() -> Self {
        let list = SHIPPED
            .iter()
            .map(|(file, text)| {
                let path = Path::new(SHIPPED_DIR).join(file);
                let parsed = manifest::parse(&path, text);
                // The shipped manifests are part of the source and parsed by a unit test.
                match parsed {
                    Ok(Some(family)) => family,
                    Ok(None) => unreachable!("shipped manifest {file} has no [family]"),
                    Err(e) => unreachable!("shipped manifest {file} is invalid: {e}"),
                }
            })
            .map(|mut f| {
                f.manifest = None;
                // Their config folders are embedded (`bundled`), not read from the source tree.
                f.config_dir = None;
                Arc::new(f)
            })
            .collect();
        Self::ordered(list)
    }

    /// The shipped families plus those of the manifest folder; the first problem is an error.
    pub fn from_manifests(folder: &ManifestFolder<'_>) -> std::result::Result<Self, ManifestError> {
        let (families, problems) = Self::from_manifests_and_problems(folder);
        match problems.into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(families),
        }
    }

    /// Like [`Families::from_manifests`], keeping the valid families and every problem
    /// (for `beeswax check`).
    pub fn from_manifests_and_problems(folder: &ManifestFolder<'_>) -> (Self, Vec<ManifestError>) {
        let mut problems = Vec::new();
        let mut found = Vec::new();
        let mut read = |document: &Document<'_>, problems: &mut Vec<ManifestError>| {
            // A copy of a shipped manifest (the repository's own `manifests/` folder) is the
            // shipped family, with its embedded configs.
            if is_shipped_copy(document) {
                return;
            }
            match manifest::read(document) {
                Ok(Some(family)) => found.push(family),
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
        };
        for document in folder.documents() {
            read(document, &mut problems);
        }
        let sub = folder.dir().join(FAMILIES_DIR);
        if sub.is_dir() {
            match ManifestFiles::read(&sub) {
                Ok(files) => {
                    let (parsed, more) = files.parse_all();
                    problems.extend(more);
                    for document in parsed.documents() {
                        read(document, &mut problems);
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        let mut names = UniqueNames::new("family.name", "family");
        let mut list: Vec<Arc<Family>> = Self::builtin().list;
        for family in found {
            let file = family.manifest.clone().unwrap_or_default();
            let line = line_of_name(&file);
            if let Err(e) = names.insert(&family.name, &file, line) {
                problems.push(e);
                continue;
            }
            list.retain(|f| f.name != family.name);
            list.push(Arc::new(family));
        }
        (Self::ordered(list), problems)
    }

    fn ordered(mut list: Vec<Arc<Family>>) -> Self {
        list.sort_by_key(|f| std::cmp::Reverse(f.priority));
        Self { list }
    }

    /// The families, in detection order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Family>> {
        self.list.iter()
    }

    /// The family called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Family>> {
        self.list.iter().find(|f| f.name == name).cloned()
    }

    /// The family called `name`, or an error listing the known ones.
    pub fn named(&self, name: &str) -> Result<Arc<Family>> {
        self.get(name).ok_or_else(|| {
            Error::invalid(
                "family",
                name,
                format!(
                    "not a known family ({}); add manifests/families/{name}.toml to declare it",
                    self.names()
                ),
            )
        })
    }

    /// The names, in listing order (sorted), joined with `, `.
    pub fn names(&self) -> String {
        let mut names: Vec<&str> = self.list.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        names.join(", ")
    }

    /// The family of the diffusers folder `dir`: `declared` when given (files that disagree
    /// with it are an error naming both), else the first family whose folder rules hold.
    pub fn for_folder(&self, dir: &Path, declared: Option<&str>) -> Result<Arc<Family>> {
        let matching = || self.list.iter().find(|f| check_folder(f, dir).is_ok());
        if let Some(name) = declared {
            let family = self.named(name)?;
            if let Err(why) = check_folder(&family, dir) {
                return Err(Error::Config {
                    path: dir.to_path_buf(),
                    message: format!(
                        "declared family `{name}` does not match the files: {why}{}",
                        matching().map_or(String::new(), |o| format!(
                            "; the files look like family `{}`",
                            o.name
                        ))
                    ),
                });
            }
            return Ok(family);
        }
        matching().cloned().ok_or_else(|| Error::Config {
            path: dir.to_path_buf(),
            message: format!(
                "the folder matches no known family ({}): {}",
                self.names(),
                self.list
                    .iter()
                    .filter_map(|f| check_folder(f, dir).err())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        })
    }

    /// Loads the diffusers folder `dir` as a model of family `declared` when given, else of
    /// the family its configs match.
    pub fn load(&self, dir: &Path, declared: Option<&str>, options: &LoadOptions) -> Result<Model> {
        model_files::model_index(dir)?;
        let family = self.for_folder(dir, declared)?;
        load_source(family, &ModelSource::folder(dir), options)
    }
}

/// Builds a model of `family` from `source` with the family's architecture.
pub fn load_source(
    family: Arc<Family>,
    source: &ModelSource,
    options: &LoadOptions,
) -> Result<Model> {
    match family.architecture {
        Architecture::Sd => sd::load(family, source, options),
        Architecture::Sdxl => sdxl::load(family, source, options),
        Architecture::Flux => load_flux(family, source, options),
    }
}

/// FLUX from a diffusers folder, or from a single file holding the transformer (BFL/ComfyUI
/// layout) with the rest from the config folder (`--model-config DIR`, a FLUX folder).
fn load_flux(family: Arc<Family>, source: &ModelSource, options: &LoadOptions) -> Result<Model> {
    if source.vae.is_some() || source.prediction.is_some() {
        return Err(Error::invalid(
            "model",
            source.origin.display().to_string(),
            format!(
                "family `{}` takes neither --vae nor --prediction; drop them",
                family.name
            ),
        ));
    }
    match &source.components {
        None => flux::load(family, source, options),
        Some(_) => {
            let mut options = options.clone();
            if options.denoiser.is_none() {
                options.denoiser = Some(source.origin.clone());
            }
            flux::load(family, source, &options)
        }
    }
}

/// Whether the diffusers folder `dir` holds a model of `family`; `Err` with the rule that
/// failed.
fn check_folder(family: &Family, dir: &Path) -> std::result::Result<(), String> {
    for rule in &family.folder_rules {
        let found = config_value(dir, rule);
        if found != rule.equals {
            let want = match &rule.equals {
                serde_json::Value::Null => "none".to_string(),
                v => v.to_string(),
            };
            return Err(format!(
                "{} has `{}` = {found}, a {} model has {want}",
                rule.file, rule.field, family.name
            ));
        }
    }
    Ok(())
}

/// The rule's field in the folder's config (its default when absent).
fn config_value(dir: &Path, rule: &ConfigRule) -> serde_json::Value {
    let path: PathBuf = dir.join(&rule.file);
    crate::fs_limits::read_regular_string(&path, crate::fs_limits::TEXT_BYTES)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get(&rule.field).cloned())
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| rule.default.clone())
}

/// Whether `document` is, byte for byte, the shipped manifest of its file name.
fn is_shipped_copy(document: &Document<'_>) -> bool {
    let name = document.path().file_name().and_then(|n| n.to_str());
    SHIPPED
        .iter()
        .any(|(file, text)| Some(*file) == name && *text == document.text())
}

/// The line of `name =` in a family manifest, for duplicate-name errors.
fn line_of_name(file: &Path) -> usize {
    crate::fs_limits::read_regular_string(file, crate::fs_limits::TEXT_BYTES)
        .ok()
        .and_then(|t| t.lines().position(|l| l.trim_start().starts_with("name")))
        .map_or(1, |i| i + 1)
}
