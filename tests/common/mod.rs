//! Shared helpers for the integration tests: fixture paths and tensor comparisons.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use beeswax::family::{self, LoadOptions, Model};
use beeswax::schedulers::Registry;
use candle_core::{DType, Device, Tensor};

pub mod lora;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A path under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// The miniature models the fixture script made.
pub const MODELS: [&str; 2] = ["tiny-sd", "tiny-sd2"];

/// The decoded pixels of the PNG at `path`.
pub fn png_pixels(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    buf
}

/// The miniature model `name` (under `tests/fixtures/models/`), in f32 on the CPU, its
/// family detected from its files.
pub fn model(name: &str) -> Model {
    family::load(
        &fixture(&format!("models/{name}")),
        None,
        &LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
        },
    )
    .unwrap()
}

/// The built-in samplers.
pub fn registry() -> Registry {
    Registry::with_builtins()
}

/// Loads every tensor of a reference safetensors file (as f32 unless integer).
pub fn load(rel: &str) -> HashMap<String, Tensor> {
    let path = fixture(rel);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest absolute difference and the reference's standard deviation.
pub fn max_diff_and_std(got: &Tensor, want: &Tensor) -> (f32, f32) {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let got = got.to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    let diff = (&got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let mean = want.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let var = want
        .affine(1.0, -(mean as f64))
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (diff, var.sqrt())
}

/// Asserts `got` is within `tol` x std(want) of `want` everywhere.
pub fn assert_close_rel_std(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let (diff, std) = max_diff_and_std(got, want);
    assert!(std > 0.0, "{what}: reference is constant");
    assert!(
        diff <= tol * std,
        "{what}: max |diff| {diff:.3e} exceeds {tol} x std {std:.3e}"
    );
    eprintln!("{what}: max |diff| {diff:.3e} ({:.2e} x std)", diff / std);
}

/// A job of `settings` with sampler `sampler` (any name or alias, optionally with a schedule
/// appended: `"DPM++ 2M Karras"`) from `input`, with no processors.
pub fn job(
    settings: beeswax::pipeline::Settings,
    sampler: &str,
    input: beeswax::pipeline::Input,
) -> beeswax::pipeline::Job {
    beeswax::pipeline::Job {
        settings,
        sampler: registry().sampler(sampler, None).unwrap(),
        input,
        pre_processors: Vec::new(),
        post_processors: Vec::new(),
    }
}

/// Runs `job` on `model` with the built-in extensions.
pub fn try_run(
    model: &Model,
    job: &beeswax::pipeline::Job,
) -> beeswax::Result<beeswax::pipeline::Generated> {
    beeswax::pipeline::run(
        model,
        job,
        &beeswax::extensions::Extensions::builtin(),
        &mut |_| std::ops::ControlFlow::Continue(()),
    )
}

/// Runs `job` on `model` with the built-in extensions; it must succeed.
pub fn run(model: &Model, job: &beeswax::pipeline::Job) -> beeswax::pipeline::Generated {
    try_run(model, job).unwrap()
}
