//! Plugins: schedulers and image pre/post-processors added without forking beeswax.
//!
//! Operators enable plugins with `[[plugin]]` entries in the manifest folder ([`manifest`]);
//! `generate`, `serve` and `check` load them at startup ([`Plugins::load`]). Both kinds speak
//! the ABI of `beeswax-plugin-sdk` ([`call`], [`abi`]):
//!
//! * **WASM** ([`wasm`]): wasmtime without WASI or host functions other than logging, a
//!   memory cap, a deadline per call, pointers checked; a trap fails only that call's job.
//! * **Native** ([`native`]): shared libraries, **trusted code** in the beeswax process;
//!   the manifest must pin their SHA-256, and the ABI version is checked before any other call.
//!
//! A plugin scheduler is registered under its name in the scheduler registry and is then used
//! like a built-in (`beeswax generate --scheduler euler-wasm`).

use std::path::PathBuf;

pub mod abi;
pub mod call;
mod host;
pub mod log;
pub mod manifest;
pub mod native;
mod scheduler;
pub mod wasm;

pub use host::{capability_names, sha256_hex, LoadedPlugin, Plugins};
pub use manifest::{Capability, Limits, PluginEntry, PluginKind};
pub use scheduler::PluginScheduler;

use crate::manifest::ManifestError;

/// Errors loading or calling plugins. Each names the plugin and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// A `[[plugin]]` entry is invalid.
    #[error(transparent)]
    Manifest(#[from] Box<ManifestError>),
    /// The plugin file cannot be read.
    #[error(
        "{location}: `plugin.path` of plugin {plugin}: cannot read {}: {source}; build the \
         plugin or fix the path (relative to the manifest)",
        path.display()
    )]
    Io {
        /// Plugin name.
        plugin: String,
        /// Manifest file and line of `path` (`FILE:LINE`).
        location: String,
        /// The plugin file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file's SHA-256 differs from the manifest's.
    #[error(
        "{location}: `plugin.sha256` of plugin {plugin} does not match {}: the manifest says \
         {expected}, the file hashes to {actual}; refusing to load it (rebuild the plugin from \
         trusted sources, or update `sha256` if the new file is the one you meant)",
        path.display()
    )]
    HashMismatch {
        /// Plugin name.
        plugin: String,
        /// Manifest file and line of `sha256` (`FILE:LINE`).
        location: String,
        /// The plugin file.
        path: PathBuf,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the file.
        actual: String,
    },
    /// The plugin was built for another ABI version.
    #[error(
        "plugin {plugin}: ABI version {found} is not supported: this beeswax speaks plugin ABI \
         {host} (same major, minor up to the host's); rebuild the plugin against \
         beeswax-plugin-sdk {host}"
    )]
    AbiMismatch {
        /// Plugin name.
        plugin: String,
        /// The plugin's version (major.minor).
        found: String,
        /// The host's version.
        host: String,
    },
    /// The plugin cannot be compiled, linked or lacks an export.
    #[error("plugin {plugin}: {message}")]
    Load {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// The manifest declares capabilities the plugin does not report.
    #[error(
        "{location}: `plugin.provides` of plugin {plugin} lists {missing}, but the plugin \
         reports only [{reported}]: fix `provides` or the plugin"
    )]
    Capabilities {
        /// Plugin name.
        plugin: String,
        /// Manifest file and line of the entry (`FILE:LINE`).
        location: String,
        /// Declared but missing.
        missing: String,
        /// What the plugin reports.
        reported: String,
    },
    /// A call returned an error status.
    #[error("plugin {plugin}: {export} failed ({kind}, status {code}): {message}")]
    Status {
        /// Plugin name.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// Status code.
        code: i32,
        /// The status in words.
        kind: &'static str,
        /// The plugin's message.
        message: String,
    },
    /// A WASM call trapped.
    #[error("plugin {plugin}: {export} trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// The trap.
        message: String,
    },
    /// A WASM call ran past its deadline and was stopped.
    #[error(
        "plugin {plugin}: {export} ran past its deadline of {timeout_ms} ms and was stopped \
         (raise `timeout_ms` in [plugin.limits] if the plugin is just slow)"
    )]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// The deadline.
        timeout_ms: u64,
    },
    /// A WASM call tried to grow memory past the cap.
    #[error(
        "plugin {plugin}: {export} was stopped at its memory cap of {cap_mib} MiB (raise \
         `memory_mib` in [plugin.limits] if the plugin needs more)"
    )]
    MemoryLimit {
        /// Plugin name.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// The cap.
        cap_mib: u64,
    },
    /// A WASM plugin returned a pointer or length outside its memory.
    #[error("plugin {plugin}: {export} returned a bad buffer, refused: {what}")]
    OutOfBounds {
        /// Plugin name.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// Which buffer and where.
        what: String,
    },
    /// A plugin's output is malformed.
    #[error("plugin {plugin}: malformed data: {message}")]
    Malformed {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// An instance is not used again after a trap, timeout or bad buffer.
    #[error("plugin {plugin}: this job's instance stopped after an earlier failure ({reason})")]
    Poisoned {
        /// Plugin name.
        plugin: String,
        /// The earlier failure.
        reason: String,
    },
    /// No loaded plugin has this name and capability.
    #[error("no {capability} plugin named `{name}` is loaded (loaded: {available}); check the name and the [[plugin]] entries of the manifests")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The capability wanted.
        capability: &'static str,
        /// Loaded plugins with that capability.
        available: String,
    },
    /// Plugins failed to load at startup.
    #[error(
        "{} plugin problem(s) in {}:\n  - {}\nfix them (`beeswax check` lists every problem) or \
         set `enabled = false` on the plugin",
        problems.len(), dir.display(), problems.join("\n  - ")
    )]
    Startup {
        /// The manifest folder.
        dir: PathBuf,
        /// Each problem, as a message.
        problems: Vec<String>,
    },
}
