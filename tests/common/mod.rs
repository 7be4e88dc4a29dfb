//! The shared test harness of the integration tests (each `tests/*.rs` file includes it with
//! `mod common;`):
//!
//! - [`command`]: a fresh temp folder per test ([`command::Dir`]) and [`command::TestCommand`],
//!   which runs the real `beeswax` binary and reports its output readably when it fails; helpers
//!   that write manifests for the fixture models;
//! - [`server`]: the HTTP service on a loopback port (in this process, or the real binary), HTTP
//!   helpers, waits with generous timeouts;
//! - [`reference`]: the one loader of the fixture scripts' reference cases (`cases.json` + their
//!   tensors); [`jobs`]: the one place that builds library job values (from a case) and runs them;
//! - [`compare`]: tensor comparisons (latents within a multiple of the reference's std);
//!   [`images`]: the one image comparison (2/255) and PNG helpers, and the one whole-run
//!   comparison, whose rows [`conformance`] writes as the conformance table;
//! - [`lora`]: the LoRA fixtures; [`flux_files`]: FLUX single files (BFL, ComfyUI) made from
//!   the miniature models; [`plugins`]: misbehaving WAT plugins.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::path::PathBuf;

use beeswax::family::{self, LoadOptions, Model};
use beeswax::schedulers::Registry;
use candle_core::{DType, Device};

pub mod command;
pub mod compare;
pub mod conformance;
pub mod flux_files;
pub mod half_copies;
pub mod images;
pub mod jobs;
pub mod lora;
pub mod manifests;
pub mod nats;
pub mod plugins;
pub mod reference;
pub mod server;

pub use compare::{assert_close_rel_std, max_diff_and_std};
pub use reference::{flux_cases, json, load, FluxCase};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A path under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// The folder of the miniature model `name` (under `tests/fixtures/models/`).
pub fn model_dir(name: &str) -> PathBuf {
    fixture(&format!("models/{name}"))
}

/// The miniature models the fixture script made.
pub const MODELS: [&str; 2] = ["tiny-sd", "tiny-sd2"];

/// The miniature model `name` (under `tests/fixtures/models/`), in f32 on the CPU, its family
/// detected from its files.
pub fn model(name: &str) -> Model {
    family::load(&model_dir(name), None, &cpu_f32()).unwrap()
}

/// The built-in samplers.
pub fn registry() -> Registry {
    Registry::with_builtins()
}

/// Load options for the tests: f32 on the CPU.
pub fn cpu_f32() -> LoadOptions {
    LoadOptions::new(Device::Cpu, DType::F32)
}
