//! Scheduler parity with diffusers (names, errors and the CLI are in `scheduler_names.rs`).
//!
//! `fixtures/schedulers/` holds whole denoising trajectories recorded from diffusers:
//! `DDIMScheduler` and `EulerDiscreteScheduler` by `make_references.py` (see its docstring for
//! the synthetic model and how the float64 reference is obtained), and every other built-in's
//! class by `make_sampler_references.py` (`samplers.json`). Each case is replayed here through
//! the registry and the [`Scheduler`] trait, in f64 and in f32 tensors. Whole text-to-image runs
//! with several samplers are compared with `fixtures/reference/<model>/schedulers/`, made by
//! `fixtures/make_scheduler_pipeline_fixtures.py`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use beeswax::noise::NoiseSource;
use beeswax::schedulers::{Churn, Ddim, Euler, Scheduler, SchedulerConfig};
use candle_core::{DType, Device, Tensor};
use common::conformance::Run;
use common::images::assert_run_matches;
use common::jobs::generate;
use common::reference::cases;
use serde::Deserialize;

/// Allowed difference, relative to the reference tensor's largest absolute value.
const TOLERANCE: f64 = 1e-5;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
    add_noise: Vec<AddNoiseCase>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    scheduler: String,
    steps: usize,
    config: serde_json::Value,
    options: Options,
    timesteps: Vec<f64>,
    diffusers_timesteps: Vec<f64>,
    init_noise_sigma: f64,
}

#[derive(Deserialize, Default)]
struct Options {
    eta: Option<f64>,
    s_churn: Option<f64>,
    s_tmin: Option<f64>,
    s_tmax: Option<f64>,
    s_noise: Option<f64>,
}

#[derive(Deserialize)]
struct AddNoiseCase {
    name: String,
    scheduler: String,
    config: serde_json::Value,
    steps: usize,
    index: usize,
    timestep: f64,
}

struct Fixtures {
    reference: Reference,
    tensors: HashMap<String, Tensor>,
}

/// `fixtures/schedulers/cases.json` and its trajectories.
fn load() -> Fixtures {
    Fixtures {
        reference: common::json("schedulers/cases.json"),
        tensors: common::load("schedulers/trajectories.safetensors"),
    }
}

/// The reference's stand-in for randn: draw `k` is `sin(i * 0.7 + 1.3 k)`, i = 0..64.
struct DetNoise {
    draws: usize,
}

impl NoiseSource for DetNoise {
    fn randn_like(&mut self, like: &Tensor) -> candle_core::Result<Tensor> {
        let k = self.draws as f64;
        self.draws += 1;
        let values: Vec<f64> = (0..like.elem_count())
            .map(|i| (i as f64 * 0.7 + 1.3 * k).sin())
            .collect();
        Tensor::from_vec(values, like.dims(), like.device())?.to_dtype(like.dtype())
    }
}

fn config(value: &serde_json::Value) -> Result<SchedulerConfig> {
    Ok(serde_json::from_value(value.clone())?)
}

fn scheduler(case: &Case) -> Result<Box<dyn Scheduler>> {
    let config = config(&case.config)?;
    let o = &case.options;
    Ok(match (case.scheduler.as_str(), o.eta, o.s_churn) {
        ("ddim", Some(eta), _) => Box::new(Ddim::new(&config, case.steps)?.with_eta(eta)?),
        ("euler", _, Some(s_churn)) => {
            let default = Churn::default();
            let churn = Churn {
                s_churn,
                s_tmin: o.s_tmin.unwrap_or(default.s_tmin),
                s_tmax: o.s_tmax.unwrap_or(default.s_tmax),
                s_noise: o.s_noise.unwrap_or(default.s_noise),
            };
            Box::new(Euler::new(&config, case.steps)?.with_churn(churn)?)
        }
        (name, _, _) => common::registry().build_named(name, None, &config, case.steps)?,
    })
}

/// max |actual - expected| / max |expected|.
fn relative_error(actual: &Tensor, expected: &Tensor) -> Result<f64> {
    let a: Vec<f64> = actual.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let e: Vec<f64> = expected.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    anyhow::ensure!(a.len() == e.len(), "{} values vs {}", a.len(), e.len());
    let scale = e.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&e)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    if a.iter().any(|v| !v.is_finite()) {
        return Ok(f64::INFINITY);
    }
    Ok(diff / scale.max(f64::MIN_POSITIVE))
}

/// Replays a case's trajectory in `dtype`; returns the worst relative error over the steps.
fn replay(fx: &Fixtures, case: &Case, dtype: DType) -> Result<f64> {
    replay_trajectory(&mut *scheduler(case)?, &case.name, &fx.tensors, dtype)
}

/// Replays the recorded trajectory `name` with `sched` in `dtype`: from the fixtures' `start`
/// times the initial sigma, the synthetic model output of each step; returns the worst
/// relative error of the scaled model inputs and the samples over the steps.
fn replay_trajectory(
    sched: &mut dyn Scheduler,
    name: &str,
    tensors: &HashMap<String, Tensor>,
    dtype: DType,
) -> Result<f64> {
    let get = |k: &str| {
        tensors
            .get(k)
            .ok_or_else(|| anyhow!("fixture tensor {k} missing"))
    };
    let samples = get(&format!("{name}/samples"))?;
    // Absent when diffusers' model input is the sample itself (DDIM's is).
    let scaled = tensors.get(&format!("{name}/scaled"));
    let mut sample = (get("start")? * sched.init_noise_sigma())?.to_dtype(dtype)?;
    let mut noise = DetNoise { draws: 0 };
    let mut worst = 0.0f64;
    let timesteps = sched.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let x_in = sched.scale_model_input(&sample, i)?;
        match scaled {
            Some(scaled) => worst = worst.max(relative_error(&x_in, &scaled.get(i)?)?),
            None => anyhow::ensure!(
                relative_error(&x_in, &sample)? == 0.0,
                "{name} step {i}: the model input should be the sample"
            ),
        }
        let model_output = x_in.affine(0.3 * (t / 300.0).cos(), 0.1 * (t / 100.0).sin())?;
        sample = sched.step(&model_output, i, &sample, &mut noise)?;
        anyhow::ensure!(
            sample.dtype() == dtype,
            "step {i} returned {:?}",
            sample.dtype()
        );
        worst = worst.max(relative_error(&sample, &samples.get(i)?)?);
    }
    Ok(worst)
}

/// Prints the three worst relative errors of a `dtype` replay and asserts that none is NaN or
/// beyond `tolerance`.
fn assert_worst_within(dtype: &str, mut report: Vec<(f64, String)>, tolerance: f64) {
    report.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("worst {dtype} relative errors: {:?}", &report[..3]);
    let failed: Vec<_> = report
        .iter()
        .filter(|(e, _)| e.is_nan() || *e > tolerance)
        .collect();
    assert!(failed.is_empty(), "beyond {tolerance}: {failed:?}");
}

/// Cases whose timesteps come from sigmas (Karras, exponential, continuous): diffusers' own
/// float32 sigmas move those timesteps slightly, so they match the float64 run exactly only.
fn sigma_derived(case: &Case) -> bool {
    let c = &case.config;
    let flag = |k: &str| c.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    flag("use_karras_sigmas")
        || flag("use_exponential_sigmas")
        || c.get("timestep_type").and_then(|v| v.as_str()) == Some("continuous")
}

#[test]
fn timesteps_and_init_noise_sigma_match_diffusers() {
    let fx = load();
    assert!(fx.reference.cases.len() > 70);
    for case in &fx.reference.cases {
        let sched = scheduler(case).unwrap();
        let ts = sched.timesteps();
        assert_eq!(ts.len(), case.steps, "{}", case.name);
        for (i, (&ours, &theirs)) in ts.iter().zip(&case.timesteps).enumerate() {
            assert!(
                (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0),
                "{} step {i}: timestep {ours} vs diffusers (float64) {theirs}",
                case.name
            );
        }
        for (i, (&ours, &stock)) in ts.iter().zip(&case.diffusers_timesteps).enumerate() {
            if sigma_derived(case) {
                assert!(
                    (ours - stock).abs() <= 1e-3 * stock.abs().max(1.0),
                    "{} step {i}: timestep {ours} vs diffusers {stock}",
                    case.name
                );
            } else {
                // diffusers holds Euler's timesteps as float32; DDIM's are integers.
                assert_eq!(
                    ours as f32, stock as f32,
                    "{} step {i}: timestep vs diffusers",
                    case.name
                );
            }
        }
        let sigma = sched.init_noise_sigma();
        assert!(
            (sigma - case.init_noise_sigma).abs() <= 1e-9 * case.init_noise_sigma,
            "{}: init_noise_sigma {sigma} vs {}",
            case.name,
            case.init_noise_sigma
        );
    }
}

#[test]
fn trajectories_match_diffusers_in_f64() {
    let fx = load();
    let mut report = Vec::new();
    for case in &fx.reference.cases {
        let err = replay(&fx, case, DType::F64).unwrap();
        report.push((err, case.name.clone()));
    }
    assert_worst_within("f64", report, TOLERANCE);
}

#[test]
fn trajectories_match_diffusers_in_f32() {
    let fx = load();
    let mut report = Vec::new();
    for case in &fx.reference.cases {
        report.push((replay(&fx, case, DType::F32).unwrap(), case.name.clone()));
    }
    assert_worst_within("f32", report, 1e-4);
}

#[test]
fn add_noise_matches_diffusers() {
    let fx = load();
    let original = &fx.tensors["add_noise/original"];
    let noise = &fx.tensors["add_noise/noise"];
    assert_eq!(fx.reference.add_noise.len(), 2);
    for case in &fx.reference.add_noise {
        let sched = common::registry()
            .build_named(
                &case.scheduler,
                None,
                &config(&case.config).unwrap(),
                case.steps,
            )
            .unwrap();
        assert!((sched.timesteps()[case.index] - case.timestep).abs() < 1e-9);
        let noisy = sched.add_noise(original, noise, case.index).unwrap();
        let expected = &fx.tensors[&case.name];
        let err = relative_error(&noisy, expected).unwrap();
        assert!(err <= TOLERANCE, "{}: relative error {err}", case.name);
        let noisy32 = sched
            .add_noise(
                &original.to_dtype(DType::F32).unwrap(),
                &noise.to_dtype(DType::F32).unwrap(),
                case.index,
            )
            .unwrap();
        assert_eq!(noisy32.dtype(), DType::F32);
        assert!(relative_error(&noisy32, expected).unwrap() <= 1e-6);
    }
}

/// One case of `samplers.json` (from `make_sampler_references.py`).
#[derive(Deserialize)]
struct SamplerCase {
    name: String,
    scheduler: String,
    class: String,
    schedule: Option<String>,
    steps: usize,
    config: serde_json::Value,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
}

#[derive(Deserialize)]
struct SamplerReference {
    cases: Vec<SamplerCase>,
}

/// `fixtures/schedulers/samplers.json` and its trajectories.
fn load_samplers() -> (Vec<SamplerCase>, HashMap<String, Tensor>) {
    let reference: SamplerReference = common::json("schedulers/samplers.json");
    let tensors = common::load("schedulers/samplers.safetensors");
    (reference.cases, tensors)
}

/// Replays one sampler case in `dtype`: checks the timesteps and `init_noise_sigma` against
/// diffusers (float64 run), then returns the worst relative error of the scaled model inputs
/// and samples over the trajectory.
fn replay_sampler(
    case: &SamplerCase,
    tensors: &HashMap<String, Tensor>,
    dtype: DType,
) -> Result<f64> {
    let config = config(&case.config)?;
    let mut sched = common::registry().build_named(
        &case.scheduler,
        case.schedule.as_deref(),
        &config,
        case.steps,
    )?;
    let ts = sched.timesteps().to_vec();
    anyhow::ensure!(
        ts.len() == case.timesteps.len(),
        "{}: {} timesteps vs diffusers' {}",
        case.name,
        ts.len(),
        case.timesteps.len()
    );
    for (i, (&ours, &theirs)) in ts.iter().zip(&case.timesteps).enumerate() {
        anyhow::ensure!(
            (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0),
            "{} step {i}: timestep {ours} vs diffusers {theirs}",
            case.name
        );
    }
    let sigma = sched.init_noise_sigma();
    anyhow::ensure!(
        (sigma - case.init_noise_sigma).abs() <= 1e-9 * case.init_noise_sigma,
        "{}: init_noise_sigma {sigma} vs {}",
        case.name,
        case.init_noise_sigma
    );
    replay_trajectory(&mut *sched, &case.name, tensors, dtype)
}

#[test]
fn every_builtin_sampler_matches_its_diffusers_class() {
    let (cases, tensors) = load_samplers();
    let mut covered: HashMap<&str, (bool, bool, Vec<usize>)> = HashMap::new();
    let mut report = Vec::new();
    for case in &cases {
        let err = replay_sampler(case, &tensors, DType::F64)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        report.push((err, format!("{} ({})", case.name, case.class)));
        let entry = covered.entry(case.scheduler.as_str()).or_default();
        let prediction = case.config["prediction_type"].as_str().unwrap_or_default();
        entry.0 |= prediction == "epsilon";
        entry.1 |= prediction == "v_prediction";
        entry.2.push(case.steps);
    }
    assert_worst_within("f64", report, TOLERANCE);
    // Every built-in but DDIM and Euler (covered by `cases.json`) has references for both
    // prediction types and an odd and an even step count.
    for entry in common::registry().entries() {
        let name = entry.name.as_str();
        if matches!(name, "ddim" | "euler") {
            continue;
        }
        let Some((eps, v, steps)) = covered.get(name) else {
            panic!("no reference trajectory for built-in {name}");
        };
        assert!(*eps && *v, "{name}: epsilon and v_prediction both needed");
        assert!(
            steps.iter().any(|s| s % 2 == 1) && steps.iter().any(|s| s % 2 == 0),
            "{name}"
        );
    }
}

#[test]
fn every_builtin_sampler_matches_in_f32_too() {
    let (cases, tensors) = load_samplers();
    let mut report = Vec::new();
    for case in &cases {
        let err = replay_sampler(case, &tensors, DType::F32)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        report.push((err, case.name.clone()));
    }
    assert_worst_within("f32", report, 1e-4);
}

#[test]
fn step_index_out_of_range_is_an_error_not_a_panic() {
    let config = SchedulerConfig::default();
    let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    for name in ["ddim", "euler"] {
        let mut sched = common::registry()
            .build_named(name, None, &config, 3)
            .unwrap();
        let err = sched
            .step(&x, 3, &x, &mut DetNoise { draws: 0 })
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains("index 3"), "{err}");
        assert!(sched.add_noise(&x, &x, 7).is_err());
    }
}

/// Whole text-to-image runs on the miniature models with DPM++ 2M Karras, UniPC, Heun, LMS,
/// PLMS and DEIS match diffusers' pipeline: final latents within 1e-3 x std, images within
/// 2/255 (the engine core's thresholds).
#[test]
fn text_to_image_matches_diffusers_with_each_sampler() {
    let mut checked = Vec::new();
    for model_name in common::MODELS {
        let model = common::model(model_name);
        for case in cases(&format!("reference/{model_name}/schedulers")) {
            let r = case.tensors();
            let out = generate(&model, &case.text_job(Some(&r["init_latents"])));
            let run = Run::of_case(&case, &model.family.name);
            assert_run_matches(&run, &out.latents, &out.images, &r, "image");
            checked.push(case.scheduler);
        }
    }
    for name in ["DPM++ 2M Karras", "UniPC", "Heun", "LMS", "PLMS"] {
        assert!(
            checked.iter().filter(|c| *c == name).count() >= 2,
            "{name}: expected references on both models"
        );
    }
}
