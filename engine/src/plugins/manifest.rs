//! `[[plugin]]` manifest entries: which plugin files to load and what they may do.
//!
//! ```toml
//! [[plugin]]
//! name = "euler-wasm"                        # unique; a-z, 0-9, '-', '_'
//! kind = "wasm"                              # wasm | native
//! path = "../plugins/euler-wasm/euler-wasm.wasm"   # relative to this file's folder
//! sha256 = "…64 hex digits…"                 # checked before loading; required for native
//! provides = ["scheduler"]                   # scheduler | postprocessor | preprocessor
//! description = "Euler in C, sandboxed"      # optional
//! enabled = true                             # optional; false: validated, not loaded
//! changes_size = false                       # optional; true: its post-processor may
//!                                            # return another size (within the limits)
//!
//! [plugin.limits]                            # wasm only
//! memory_mib = 64                            # memory cap (default 256 MiB)
//! timeout_ms = 1000                          # deadline of every call (default 10000 ms)
//!
//! [plugin.params]                            # given to the plugin: numbers, booleans, strings
//! amount = 0.6
//! ```
//!
//! Errors are [`ManifestError::Invalid`]: file, 1-based line, field and how to fix it. Limits
//! default to [`crate::defaults`] and must lie in the ranges of [`crate::limits`].

use std::path::{Path, PathBuf};

use beeswax_plugin_sdk::{ParamValue, Params};
use serde::Deserialize;
use toml::Spanned;

use crate::manifest::{Document, Located, ManifestError, ManifestFolder, UniqueNames};
use crate::{defaults, limits};

/// How a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// A wasm32 module run by wasmtime: sandboxed, memory-capped, with a deadline per call.
    Wasm,
    /// A native shared library (`.so`, `.dylib`, `.dll`): trusted code, run in-process.
    Native,
}

impl PluginKind {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Wasm => "wasm",
            PluginKind::Native => "native",
        }
    }
}

/// An extension point a plugin provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// A scheduler, registered under the plugin's name.
    Scheduler,
    /// An image post-processor.
    PostProcessor,
    /// An image pre-processor (image + mask).
    PreProcessor,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 3] = [
        Capability::Scheduler,
        Capability::PostProcessor,
        Capability::PreProcessor,
    ];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Scheduler => "scheduler",
            Capability::PostProcessor => "postprocessor",
            Capability::PreProcessor => "preprocessor",
        }
    }

    /// The ABI capability bit.
    pub fn bit(self) -> u32 {
        use beeswax_plugin_sdk::abi;
        match self {
            Capability::Scheduler => abi::CAP_SCHEDULER,
            Capability::PostProcessor => abi::CAP_POSTPROCESSOR,
            Capability::PreProcessor => abi::CAP_PREPROCESSOR,
        }
    }
}

/// Resource limits of a WASM plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap in MiB.
    pub memory_mib: u64,
    /// Deadline of each call in milliseconds.
    pub timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: defaults::PLUGIN_MEMORY_MIB,
            timeout_ms: defaults::PLUGIN_TIMEOUT_MS,
        }
    }
}

/// A validated `[[plugin]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEntry {
    /// Unique name; schedulers are registered under it.
    pub name: String,
    /// WASM or native.
    pub kind: PluginKind,
    /// The plugin file, joined to the manifest's folder.
    pub path: PathBuf,
    /// Expected SHA-256 of the file, lowercase hex.
    pub sha256: Option<String>,
    /// Declared capabilities (non-empty, no duplicates).
    pub provides: Vec<Capability>,
    /// Human description.
    pub description: Option<String>,
    /// Whether to load it (disabled entries are only validated).
    pub enabled: bool,
    /// WASM limits (defaults for native, where they do not apply).
    pub limits: Limits,
    /// Parameters handed to the plugin.
    pub params: Params,
    /// Whether its post-processor may return a picture of another size (`changes_size =
    /// true`, e.g. an upscaler); without it a size change fails the job.
    pub changes_size: bool,
    /// The manifest file.
    pub manifest_path: PathBuf,
    /// Line of `name`, for messages.
    pub line: usize,
    /// Line of `path`.
    pub path_line: usize,
    /// Line of `sha256` (or of `name` when absent).
    pub sha256_line: usize,
}

/// A `[[plugin]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Spanned<String>,
    kind: Spanned<String>,
    path: Spanned<String>,
    sha256: Option<Spanned<String>>,
    provides: Spanned<Vec<Spanned<String>>>,
    description: Option<String>,
    enabled: Option<bool>,
    limits: Option<Spanned<RawLimits>>,
    params: Option<Spanned<toml::Table>>,
    changes_size: Option<bool>,
}

/// `[plugin.limits]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
}

/// The `[[plugin]]` entries of the parsed manifest folder (files in name order).
///
/// Returns the valid entries and every problem found (all of them, not just the first), so
/// that `beeswax check` can list them; names must be unique across files.
pub fn entries(folder: &ManifestFolder<'_>) -> (Vec<PluginEntry>, Vec<ManifestError>) {
    let mut entries: Vec<PluginEntry> = Vec::new();
    let mut problems = Vec::new();
    let mut names = UniqueNames::new("plugin.name", "plugins");
    for document in folder.documents() {
        let (found, errors) = read(document);
        problems.extend(errors);
        for entry in found {
            match names.insert(&entry.name, &entry.manifest_path, entry.line) {
                Ok(()) => entries.push(entry),
                Err(problem) => problems.push(problem),
            }
        }
    }
    (entries, problems)
}

/// Parses the `[[plugin]]` entries of one manifest's text; relative paths are joined to
/// `file`'s folder. Returns the valid entries and the problems.
pub fn parse(file: &Path, text: &str) -> (Vec<PluginEntry>, Vec<ManifestError>) {
    match Document::parse(file, text) {
        Ok(document) => read(&document),
        Err(problem) => (Vec::new(), vec![problem]),
    }
}

/// The valid `[[plugin]]` entries of one document, and the problems of the others.
fn read(document: &Document<'_>) -> (Vec<PluginEntry>, Vec<ManifestError>) {
    let located = document.located();
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for raw in document.entries::<RawPlugin>("plugin") {
        match raw.and_then(|raw| entry(&located, raw)) {
            Ok(entry) => entries.push(entry),
            Err(e) => problems.push(e),
        }
    }
    (entries, problems)
}

fn entry(located: &Located<'_>, raw: RawPlugin) -> Result<PluginEntry, ManifestError> {
    let name = checked_name(located, &raw.name)?;
    let kind = match raw.kind.get_ref().as_str() {
        "wasm" => PluginKind::Wasm,
        "native" => PluginKind::Native,
        other => {
            let message = format!("must be `wasm` or `native` (got `{other}`): fix the value");
            return Err(located.at(&raw.kind, "plugin.kind", message));
        }
    };
    let how = "set it to the plugin file, relative to this manifest";
    located.non_empty(&raw.path, "plugin.path", how)?;
    let sha256 = match &raw.sha256 {
        Some(hash) => Some(located.sha256(hash, "plugin.sha256", raw.path.get_ref())?),
        None if kind == PluginKind::Native => {
            let message = format!(
                "is required for native plugins (they run as trusted code in the beeswax \
                 process): add `sha256 = \"...\"` with the output of `sha256sum {}`",
                raw.path.get_ref()
            );
            return Err(located.at(&raw.name, "plugin.sha256", message));
        }
        None => None,
    };
    let name_line = located.line_of(&raw.name);
    Ok(PluginEntry {
        name,
        kind,
        path: located.relative_path(raw.path.get_ref()),
        sha256_line: raw
            .sha256
            .as_ref()
            .map_or(name_line, |h| located.line_of(h)),
        sha256,
        provides: provides(located, &raw.provides)?,
        description: raw.description,
        enabled: raw.enabled.unwrap_or(true),
        limits: plugin_limits(located, kind, raw.limits)?,
        params: params(located, raw.params)?,
        changes_size: raw.changes_size.unwrap_or(false),
        manifest_path: located.file().to_path_buf(),
        line: name_line,
        path_line: located.line_of(&raw.path),
    })
}

/// A plugin name: starts with a lowercase letter, then a-z, 0-9, `-` and `_`.
fn checked_name(located: &Located<'_>, raw: &Spanned<String>) -> Result<String, ManifestError> {
    let name = raw.get_ref().trim().to_string();
    let good = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if good {
        return Ok(name);
    }
    let message = format!(
        "must start with a lowercase letter and use only a-z, 0-9, '-' and '_' (got `{name}`): \
         rename the plugin, e.g. `name = \"euler-wasm\"`"
    );
    Err(located.at(raw, "plugin.name", message))
}

/// The declared capabilities: known, not repeated, at least one.
fn provides(
    located: &Located<'_>,
    raw: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<Capability>, ManifestError> {
    let mut provides = Vec::new();
    for item in raw.get_ref() {
        let Some(cap) = Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == item.get_ref())
        else {
            let message = format!(
                "has unknown capability `{}`: use scheduler, postprocessor or preprocessor",
                item.get_ref()
            );
            return Err(located.at(item, "plugin.provides", message));
        };
        if provides.contains(&cap) {
            let message = format!("lists `{}` twice: remove one", cap.as_str());
            return Err(located.at(item, "plugin.provides", message));
        }
        provides.push(cap);
    }
    if provides.is_empty() {
        let message = "must not be empty: say what the plugin provides, e.g. \
                       `provides = [\"scheduler\"]`";
        return Err(located.at(raw, "plugin.provides", message));
    }
    Ok(provides)
}

/// `[plugin.limits]`: WASM only, within [`crate::limits`], defaults from [`crate::defaults`].
fn plugin_limits(
    located: &Located<'_>,
    kind: PluginKind,
    raw: Option<Spanned<RawLimits>>,
) -> Result<Limits, ManifestError> {
    let Some(raw) = raw else {
        return Ok(Limits::default());
    };
    if kind == PluginKind::Native {
        let message = "only apply to wasm plugins (native plugins are trusted code and run \
                       unrestricted): remove the [plugin.limits] table";
        return Err(located.at(&raw, "plugin.limits", message));
    }
    let raw = raw.into_inner();
    let memory = "plugin.limits.memory_mib";
    let timeout = "plugin.limits.timeout_ms";
    Ok(Limits {
        memory_mib: located
            .whole(&raw.memory_mib, memory, &limits::PLUGIN_MEMORY_MIB, None)?
            .unwrap_or(defaults::PLUGIN_MEMORY_MIB),
        timeout_ms: located
            .whole(&raw.timeout_ms, timeout, &limits::PLUGIN_TIMEOUT_MS, None)?
            .unwrap_or(defaults::PLUGIN_TIMEOUT_MS),
    })
}

/// `[plugin.params]`: numbers, booleans (as 0 or 1) and strings.
fn params(
    located: &Located<'_>,
    raw: Option<Spanned<toml::Table>>,
) -> Result<Params, ManifestError> {
    let Some(raw) = raw else {
        return Ok(Params::default());
    };
    let span = raw.span();
    let mut entries = Vec::new();
    for (key, value) in raw.into_inner() {
        let value = match value {
            toml::Value::Integer(i) => ParamValue::Number(i as f64),
            toml::Value::Float(f) => ParamValue::Number(f),
            toml::Value::Boolean(b) => ParamValue::Number(if b { 1.0 } else { 0.0 }),
            toml::Value::String(s) => ParamValue::String(s),
            other => {
                let message = format!(
                    "is a {}: parameters must be numbers, booleans or strings",
                    other.type_str()
                );
                let field = format!("plugin.params.{key}");
                return Err(located.invalid(span.clone(), &field, message));
            }
        };
        entries.push((key, value));
    }
    Ok(Params { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(Path::new("/m/p.toml"), text)
            .1
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_full_entry_parses() {
        let text = "[[plugin]]\nname = \"sharp\"\nkind = \"wasm\"\npath = \"s.wasm\"\n\
                    provides = [\"postprocessor\"]\n[plugin.limits]\nmemory_mib = 16\n\
                    [plugin.params]\namount = 1\nlabel = \"x\"\n";
        let (entries, problems) = parse(Path::new("/m/p.toml"), text);
        assert!(problems.is_empty(), "{problems:?}");
        let e = &entries[0];
        assert_eq!(e.path, PathBuf::from("/m/s.wasm"));
        assert_eq!(e.limits.memory_mib, 16);
        assert_eq!(e.limits.timeout_ms, defaults::PLUGIN_TIMEOUT_MS);
        assert_eq!(e.params.number("amount"), Some(1.0));
        assert_eq!(e.params.string("label"), Some("x"));
        assert!(e.enabled);
    }

    #[test]
    fn problems_name_line_and_field() {
        let base = "[[plugin]]\nname = \"n\"\nkind = \"native\"\npath = \"x.so\"\nprovides = [\"scheduler\"]\n";
        let p = problems(base);
        assert!(
            p[0].contains("p.toml:2: `plugin.sha256` is required"),
            "{p:?}"
        );
        let p = problems(&base.replace("native", "elf"));
        assert!(p[0].contains(":3: `plugin.kind`"), "{p:?}");
        let p = problems(&format!("{base}sha256 = \"abc\"\n"));
        assert!(p[0].contains(":6: `plugin.sha256` must be 64"), "{p:?}");
        let p = problems(
            &base
                .replace("native", "wasm")
                .replace("scheduler\"]", "sampler\"]"),
        );
        assert!(p[0].contains(":5: `plugin.provides`"), "{p:?}");
        let p = problems(&base.replace("kind", "knd"));
        assert!(p[0].contains("plugin"), "{p:?}");
    }
}
