//! Manifests: the operator's TOML files in one folder (`--manifests DIR`), read once per command.
//!
//! A manifest file holds any of these top-level tables, each read by the module that owns it:
//!
//! | table                      | read by                  | declares                              |
//! |----------------------------|--------------------------|---------------------------------------|
//! | `[pack]`                   | [`pack`]                 | a model, its family, source, defaults |
//! | `[[pipeline]]`             | [`pipeline`]             | a named way to run a pack (`serve`)   |
//! | `[[lora]]`, `[[lora_set]]` | `lora/manifest.rs`       | LoRAs and named lists of them         |
//! | `[[plugin]]`               | `plugins/manifest.rs`    | plugin files and what they may do     |
//! | `[[embedding]]`            | [`embedding`]            | textual-inversion embeddings          |
//! | `[family]`                 | `family/manifest.rs`     | a model family (also in `families/`)  |
//!
//! The layer is low: it imports no module that uses it (the server, LoRAs, plugins and
//! pipelines read their sections from a [`ManifestFolder`] they are given).
//!
//! * [`folder`] lists the folder's `*.toml` files once ([`ManifestFiles`]) and parses each file
//!   once into a located [`Document`] (syntax errors and unknown top-level tables are reported
//!   there, once); a [`ManifestFolder`] is the parsed folder every owner reads.
//! * [`sections`] lists the known top-level tables ([`SECTIONS`]): adding an owner is one line.
//! * [`located`] is the one error helper: the line of a span, errors naming file, line and
//!   field, serde errors turned into the field path at their span, and the checks of values
//!   that every section shares (ranges, hashes, paths relative to the manifest).
//! * Value ranges come from [`crate::limits`] and engine defaults from [`crate::defaults`].
//!
//! Every error names the file, the 1-based line and the field at fault, and says how to fix it.

pub mod embedding;
pub mod file_source;
pub mod folder;
pub mod located;
pub mod pack;
pub mod pipeline;
pub mod sections;

use std::path::{Path, PathBuf};

pub use embedding::{embeddings, EmbeddingManifest, EmbeddingSource};
pub use file_source::FileSource;
pub use folder::{Document, ManifestFiles, ManifestFolder};
pub use located::{Located, UniqueNames};
pub use pack::{
    find_pack, packs, packs_and_problems, parse, Family, PackCheckpoint, PackDefaults,
    PackManifest, PackSource, PreviewChoice, VaeChoice, TAESD,
};
pub use pipeline::{pipelines, LimitOverrides, Mode, PipelineConfig};
pub use sections::{Section, SECTIONS};

/// The manifest directory used when neither `--manifests` nor [`ENV_VAR`] is given.
pub const DEFAULT_DIR: &str = "manifests";

/// The environment variable naming the manifest directory.
pub const ENV_VAR: &str = "BEESWAX_MANIFESTS";

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

impl ManifestError {
    /// A [`ManifestError::Invalid`] at `line` of `file`, for checks that span several files
    /// (duplicate names, references between tables).
    pub fn invalid(file: &Path, line: usize, field: &str, message: impl Into<String>) -> Self {
        ManifestError::Invalid {
            file: file.to_path_buf(),
            line,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// `names` joined with `, `, or `(none)`: the known names an error lists.
pub fn list_or_none<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
