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
//!
//! [plugin.limits]                            # wasm only
//! memory_mib = 64                            # memory cap (default 256)
//! timeout_ms = 1000                          # deadline of every call (default 10000)
//!
//! [plugin.params]                            # given to the plugin: numbers, booleans, strings
//! amount = 0.6
//! ```
//!
//! Errors are [`ManifestError::Invalid`]: file, 1-based line, field and how to fix it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use beeswax_plugin_sdk::{ParamValue, Params};
use serde::Deserialize;
use toml::de::DeTable;
use toml::Spanned;

use crate::manifest::ManifestError;

/// Default memory cap of a WASM plugin, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Largest memory cap a manifest may ask for, in MiB (wasm32 addresses at most 4 GiB).
pub const MAX_MEMORY_MIB: u64 = 4096;
/// Default deadline of one WASM call, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Largest deadline a manifest may ask for, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

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
            memory_mib: DEFAULT_MEMORY_MIB,
            timeout_ms: DEFAULT_TIMEOUT_MS,
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
    /// The manifest file.
    pub manifest_path: PathBuf,
    /// Line of `name`, for messages.
    pub line: usize,
    /// Line of `path`.
    pub path_line: usize,
    /// Line of `sha256` (or of `name` when absent).
    pub sha256_line: usize,
}

/// A `[[plugin]]` table as written (also type-checked by the pack loader in
/// [`crate::manifest`], which accepts `[[plugin]]` tables in any manifest file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginEntry {
    name: Spanned<String>,
    kind: Spanned<String>,
    path: Spanned<String>,
    sha256: Option<Spanned<String>>,
    provides: Spanned<Vec<Spanned<String>>>,
    description: Option<String>,
    enabled: Option<bool>,
    limits: Option<Spanned<RawLimits>>,
    params: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
}

/// A manifest file seen for its plugins only.
#[derive(Deserialize)]
struct PluginFile {
    #[serde(default)]
    plugin: Vec<Spanned<RawPluginEntry>>,
}

/// Reads the `[[plugin]]` entries of every `*.toml` file in `dir` (sorted by file name).
///
/// Returns the valid entries and every problem found (all of them, not just the first), so
/// that `beeswax check` can list them; names must be unique across files.
pub fn read_dir(dir: &Path) -> (Vec<PluginEntry>, Vec<ManifestError>) {
    let mut entries: Vec<PluginEntry> = Vec::new();
    let mut problems = Vec::new();
    let files = match crate::manifest::toml_files(dir) {
        Ok(files) => files,
        Err(e) => return (entries, vec![e]),
    };
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(source) => {
                problems.push(ManifestError::Io { path: file, source });
                continue;
            }
        };
        let (found, errors) = parse(&file, &text);
        problems.extend(errors);
        for entry in found {
            if let Some(first) = entries.iter().find(|e| e.name == entry.name) {
                let message = format!(
                    "`{}` is already the name of the plugin in {}:{}: rename one of them",
                    entry.name,
                    first.manifest_path.display(),
                    first.line
                );
                problems.push(ManifestError::Invalid {
                    file: entry.manifest_path.clone(),
                    line: entry.line,
                    field: "plugin.name".into(),
                    message,
                });
            } else {
                entries.push(entry);
            }
        }
    }
    (entries, problems)
}

/// Parses the `[[plugin]]` entries of one manifest's text; relative paths are joined to
/// `file`'s folder. Returns the valid entries and the problems.
pub fn parse(file: &Path, text: &str) -> (Vec<PluginEntry>, Vec<ManifestError>) {
    let ctx = Ctx { file, text };
    let table = match DeTable::parse(text) {
        Ok(table) => table,
        Err(err) => {
            let line = ctx.line(err.span().map_or(0, |s| s.start));
            let problem = ManifestError::Syntax {
                file: file.to_path_buf(),
                line,
                message: err.message().trim().to_string(),
            };
            return (Vec::new(), vec![problem]);
        }
    };
    let raw: PluginFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            let field = crate::manifest::field_at(table.get_ref(), span.start)
                .unwrap_or_else(|| "plugin".into());
            let message = err
                .message()
                .trim()
                .replace("expected i64", "expected a whole number")
                .replace(
                    "expected struct RawLimits",
                    "expected a [plugin.limits] table",
                );
            let problem = ctx.invalid(span, &field, format!("{message}; fix the value"));
            return (Vec::new(), vec![problem]);
        }
    };
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for raw in raw.plugin {
        match ctx.entry(raw.into_inner()) {
            Ok(entry) => entries.push(entry),
            Err(e) => problems.push(e),
        }
    }
    (entries, problems)
}

/// The file being parsed.
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

    fn invalid(&self, span: Range<usize>, field: &str, message: String) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(span.start),
            field: field.to_string(),
            message,
        }
    }

    fn entry(&self, raw: RawPluginEntry) -> Result<PluginEntry, ManifestError> {
        let name = raw.name.get_ref().trim().to_string();
        let good_name = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !good_name {
            let message = format!(
                "must start with a lowercase letter and use only a-z, 0-9, '-' and '_' (got \
                 `{name}`): rename the plugin, e.g. `name = \"euler-wasm\"`"
            );
            return Err(self.invalid(raw.name.span(), "plugin.name", message));
        }
        let kind = match raw.kind.get_ref().as_str() {
            "wasm" => PluginKind::Wasm,
            "native" => PluginKind::Native,
            other => {
                let message = format!("must be `wasm` or `native` (got `{other}`): fix the value");
                return Err(self.invalid(raw.kind.span(), "plugin.kind", message));
            }
        };
        if raw.path.get_ref().trim().is_empty() {
            let message = "must not be empty: set it to the plugin file, relative to this \
                           manifest"
                .to_string();
            return Err(self.invalid(raw.path.span(), "plugin.path", message));
        }
        let folder = self.file.parent().unwrap_or(Path::new(""));
        let joined = folder.join(raw.path.get_ref());
        let path = std::path::absolute(&joined).unwrap_or(joined);
        let sha256 = match &raw.sha256 {
            Some(hash) => {
                let h = hash.get_ref().trim().to_ascii_lowercase();
                if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    let message = format!(
                        "must be 64 hexadecimal digits (got `{}`): put the output of \
                         `sha256sum {}` here",
                        hash.get_ref(),
                        raw.path.get_ref()
                    );
                    return Err(self.invalid(hash.span(), "plugin.sha256", message));
                }
                Some(h)
            }
            None if kind == PluginKind::Native => {
                let message = format!(
                    "is required for native plugins (they run as trusted code in the beeswax \
                     process): add `sha256 = \"...\"` with the output of `sha256sum {}`",
                    raw.path.get_ref()
                );
                return Err(self.invalid(raw.name.span(), "plugin.sha256", message));
            }
            None => None,
        };
        let mut provides = Vec::new();
        for item in raw.provides.get_ref() {
            let Some(cap) = Capability::ALL
                .into_iter()
                .find(|c| c.as_str() == item.get_ref())
            else {
                let message = format!(
                    "has unknown capability `{}`: use scheduler, postprocessor or preprocessor",
                    item.get_ref()
                );
                return Err(self.invalid(item.span(), "plugin.provides", message));
            };
            if provides.contains(&cap) {
                let message = format!("lists `{}` twice: remove one", cap.as_str());
                return Err(self.invalid(item.span(), "plugin.provides", message));
            }
            provides.push(cap);
        }
        if provides.is_empty() {
            let message = "must not be empty: say what the plugin provides, e.g. \
                           `provides = [\"scheduler\"]`"
                .to_string();
            return Err(self.invalid(raw.provides.span(), "plugin.provides", message));
        }
        let limits = self.limits(kind, raw.limits)?;
        let params = self.params(raw.params)?;
        let name_line = self.line(raw.name.span().start);
        Ok(PluginEntry {
            name,
            kind,
            path,
            sha256_line: raw
                .sha256
                .as_ref()
                .map_or(name_line, |h| self.line(h.span().start)),
            sha256,
            provides,
            description: raw.description,
            enabled: raw.enabled.unwrap_or(true),
            limits,
            params,
            manifest_path: self.file.to_path_buf(),
            line: name_line,
            path_line: self.line(raw.path.span().start),
        })
    }

    fn limits(
        &self,
        kind: PluginKind,
        raw: Option<Spanned<RawLimits>>,
    ) -> Result<Limits, ManifestError> {
        let Some(raw) = raw else {
            return Ok(Limits::default());
        };
        if kind == PluginKind::Native {
            let message = "only apply to wasm plugins (native plugins are trusted code and run \
                           unrestricted): remove the [plugin.limits] table"
                .to_string();
            return Err(self.invalid(raw.span(), "plugin.limits", message));
        }
        let raw = raw.into_inner();
        let bounded = |value: Option<Spanned<i64>>, key: &str, max: u64, default: u64| {
            let Some(value) = value else {
                return Ok(default);
            };
            match u64::try_from(*value.get_ref()) {
                Ok(v) if (1..=max).contains(&v) => Ok(v),
                _ => {
                    let message = format!(
                        "must be between 1 and {max} (got {}): change the value",
                        value.get_ref()
                    );
                    Err(self.invalid(value.span(), &format!("plugin.limits.{key}"), message))
                }
            }
        };
        Ok(Limits {
            memory_mib: bounded(
                raw.memory_mib,
                "memory_mib",
                MAX_MEMORY_MIB,
                DEFAULT_MEMORY_MIB,
            )?,
            timeout_ms: bounded(
                raw.timeout_ms,
                "timeout_ms",
                MAX_TIMEOUT_MS,
                DEFAULT_TIMEOUT_MS,
            )?,
        })
    }

    fn params(&self, raw: Option<Spanned<toml::Table>>) -> Result<Params, ManifestError> {
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
                    return Err(self.invalid(span.clone(), &field, message));
                }
            };
            entries.push((key, value));
        }
        Ok(Params { entries })
    }
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
        assert_eq!(e.limits.timeout_ms, DEFAULT_TIMEOUT_MS);
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
