//! The file a manifest entry names (`[[lora]]`, `[[embedding]]`): a local `path`, or `repo` +
//! `file` (+ `revision`) of a Hugging Face repo, checked once for every section that uses it.

use std::path::PathBuf;

use toml::Spanned;

use super::located::Located;
use super::ManifestError;
use crate::{defaults, hub};

/// Where a file named by a manifest entry lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A local file (relative manifest paths joined to the manifest's folder).
    Path(PathBuf),
    /// A file of a Hugging Face repo, read through the local cache.
    Hub {
        /// Repo id.
        repo: String,
        /// File within the repo.
        file: String,
        /// Branch, tag or commit.
        revision: String,
    },
}

/// An entry's raw source fields, as written.
pub struct SourceFields<'a> {
    /// The entry's `name` (where a missing source is reported).
    pub name: &'a Spanned<String>,
    /// `path`.
    pub path: &'a Option<Spanned<String>>,
    /// `repo`.
    pub repo: &'a Option<Spanned<String>>,
    /// `file`.
    pub file: &'a Option<Spanned<String>>,
    /// `revision`.
    pub revision: &'a Option<Spanned<String>>,
}

/// The source of an entry of `section` (`lora`, `embedding`; `plural` names its entries in
/// messages: `LoRAs`): exactly one of `path` and `repo` + `file`; errors name the field.
pub fn file_source(
    located: &Located<'_>,
    section: &str,
    plural: &str,
    raw: SourceFields<'_>,
) -> Result<FileSource, ManifestError> {
    let field = |name: &str| format!("{section}.{name}");
    match (raw.path, raw.repo) {
        (Some(path), None) => {
            for (other, name) in [(raw.file, "file"), (raw.revision, "revision")] {
                if let Some(o) = other {
                    let message = format!(
                        "only applies to `repo` {plural}: remove it, or use `repo` instead of \
                         `path`"
                    );
                    return Err(located.at(o, &field(name), message));
                }
            }
            located.non_empty(path, &field("path"), "set it to a .safetensors file")?;
            Ok(FileSource::Path(located.relative_path(path.get_ref())))
        }
        (None, Some(repo)) => {
            if !hub::is_repo_id(repo.get_ref()) {
                let message = format!(
                    "must be a Hugging Face repo id like `org/name` (got `{}`)",
                    repo.get_ref()
                );
                return Err(located.at(repo, &field("repo"), message));
            }
            let Some(file) = raw.file.as_ref().filter(|f| !f.get_ref().trim().is_empty()) else {
                let message = format!(
                    "is required with `repo`: name the .safetensors file in the repo, e.g. \
                     `file = \"{section}.safetensors\"`"
                );
                return Err(located.at(repo, &field("file"), message));
            };
            if let Some(r) = raw.revision {
                if !hub::is_revision(r.get_ref()) {
                    let message = format!(
                        "`{}` is not a revision: use a branch, tag or commit hash, or remove it \
                         to use `main`",
                        r.get_ref()
                    );
                    return Err(located.at(r, &field("revision"), message));
                }
            }
            Ok(FileSource::Hub {
                repo: repo.get_ref().clone(),
                file: file.get_ref().clone(),
                revision: raw.revision.as_ref().map_or_else(
                    || defaults::HUB_REVISION.to_string(),
                    |r| r.get_ref().clone(),
                ),
            })
        }
        (Some(_), Some(repo)) => {
            let message =
                "conflicts with `path`: set either `path` (a local file) or `repo` + `file`";
            Err(located.at(repo, &field("repo"), message))
        }
        (None, None) => {
            let message = "is missing: set `path = \"...\"` to a .safetensors file (relative to \
                           this manifest) or `repo = \"org/name\"` and `file = \"...\"`";
            Err(located.at(raw.name, &field("path"), message))
        }
    }
}
