//! Scheduler parity with diffusers, plus the registry's error messages.
//!
//! `fixtures/schedulers/` holds whole denoising trajectories recorded from diffusers'
//! `DDIMScheduler` and `EulerDiscreteScheduler` by `make_references.py` (see its docstring for
//! the synthetic model and how the float64 reference is obtained). Each case is replayed here
//! through the registry and the [`Scheduler`] trait, in f64 and in f32 tensors.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use beeswax::noise::NoiseSource;
use beeswax::schedulers::{self, Churn, Ddim, Euler, Scheduler, SchedulerConfig, SchedulerError};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

/// Allowed difference, relative to the reference tensor's largest absolute value.
const TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/schedulers")
}

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

fn load() -> Result<Fixtures> {
    let dir = fixtures();
    let text = std::fs::read_to_string(dir.join("cases.json"))?;
    let reference: Reference = serde_json::from_str(&text)?;
    let tensors =
        candle_core::safetensors::load(dir.join("trajectories.safetensors"), &Device::Cpu)?;
    Ok(Fixtures { reference, tensors })
}

impl Fixtures {
    fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| anyhow!("fixture tensor {name} missing"))
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
        (name, _, _) => schedulers::build(name, &config, case.steps)?,
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
    let mut sched = scheduler(case)?;
    let start = fx.tensor("start")?;
    let samples = fx.tensor(&format!("{}/samples", case.name))?;
    let scaled = fx.tensors.get(&format!("{}/scaled", case.name));
    let mut noise = DetNoise { draws: 0 };

    let mut sample = (start * sched.init_noise_sigma())?.to_dtype(dtype)?;
    let mut worst = 0.0f64;
    for i in 0..sched.timesteps().len() {
        let t = sched.timesteps()[i];
        let x_in = sched.scale_model_input(&sample, i)?;
        match scaled {
            Some(scaled) => worst = worst.max(relative_error(&x_in, &scaled.get(i)?)?),
            // DDIM's model input is the sample itself.
            None => anyhow::ensure!(relative_error(&x_in, &sample)? == 0.0, "step {i}: scaled"),
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
    let fx = load().unwrap();
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
    let fx = load().unwrap();
    let mut report = Vec::new();
    for case in &fx.reference.cases {
        let err = replay(&fx, case, DType::F64).unwrap();
        report.push((err, case.name.as_str()));
    }
    report.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("worst f64 relative errors: {:?}", &report[..3]);
    let failed: Vec<_> = report
        .iter()
        .filter(|(e, _)| e.is_nan() || *e > TOLERANCE)
        .collect();
    assert!(failed.is_empty(), "beyond {TOLERANCE}: {failed:?}");
}

#[test]
fn trajectories_match_diffusers_in_f32() {
    let fx = load().unwrap();
    let mut report = Vec::new();
    for case in &fx.reference.cases {
        report.push((replay(&fx, case, DType::F32).unwrap(), case.name.as_str()));
    }
    report.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("worst f32 relative errors: {:?}", &report[..3]);
    let failed: Vec<_> = report
        .iter()
        .filter(|(e, _)| e.is_nan() || *e > 1e-4)
        .collect();
    assert!(failed.is_empty(), "beyond 1e-4: {failed:?}");
}

#[test]
fn add_noise_matches_diffusers() {
    let fx = load().unwrap();
    let original = fx.tensor("add_noise/original").unwrap();
    let noise = fx.tensor("add_noise/noise").unwrap();
    assert_eq!(fx.reference.add_noise.len(), 2);
    for case in &fx.reference.add_noise {
        let sched =
            schedulers::build(&case.scheduler, &config(&case.config).unwrap(), case.steps).unwrap();
        assert!((sched.timesteps()[case.index] - case.timestep).abs() < 1e-9);
        let noisy = sched.add_noise(original, noise, case.index).unwrap();
        let expected = fx.tensor(&case.name).unwrap();
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

#[test]
fn unknown_name_lists_the_valid_ones() {
    let err = schedulers::build("eulr", &SchedulerConfig::default(), 20)
        .err()
        .unwrap();
    assert!(matches!(err, SchedulerError::Unknown { .. }), "{err:?}");
    let message = err.to_string();
    for word in ["eulr", "ddim", "euler", "DDIM", "Euler"] {
        assert!(message.contains(word), "{message:?} lacks {word}");
    }
}

#[test]
fn step_counts_outside_the_training_range_are_refused() {
    let config = SchedulerConfig::default();
    for name in ["ddim", "euler"] {
        for steps in [0, 1001] {
            let err = schedulers::build(name, &config, steps).err().unwrap();
            assert!(matches!(err, SchedulerError::Invalid { .. }), "{err:?}");
            let message = err.to_string();
            assert!(
                message.contains(name) && message.contains("between 1 and 1000"),
                "{message}"
            );
        }
        assert_eq!(
            schedulers::build(name, &config, 1000)
                .unwrap()
                .timesteps()
                .len(),
            1000
        );
    }
}

#[test]
fn names_and_aliases_resolve_in_any_case() {
    let names = schedulers::names();
    assert!(names.contains(&("ddim", &["DDIM"][..])));
    assert!(names.contains(&("euler", &["Euler"][..])));
    let config = SchedulerConfig::default();
    for name in ["ddim", "DDIM", "ddIM", "euler", "Euler", "EULER"] {
        assert_eq!(
            schedulers::build(name, &config, 4)
                .unwrap()
                .timesteps()
                .len(),
            4
        );
    }
    // Same config, different default spacing: DDIM leading, Euler linspace (as in diffusers).
    let ddim = schedulers::build("DDIM", &config, 4).unwrap();
    let euler = schedulers::build("Euler", &config, 4).unwrap();
    assert_eq!(ddim.timesteps(), &[750.0, 500.0, 250.0, 0.0]);
    assert_eq!(euler.timesteps(), &[999.0, 666.0, 333.0, 0.0]);
}

#[test]
fn step_index_out_of_range_is_an_error_not_a_panic() {
    let config = SchedulerConfig::default();
    let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    for name in ["ddim", "euler"] {
        let mut sched = schedulers::build(name, &config, 3).unwrap();
        let err = sched
            .step(&x, 3, &x, &mut DetNoise { draws: 0 })
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains("index 3"), "{err}");
        assert!(sched.add_noise(&x, &x, 7).is_err());
    }
}
