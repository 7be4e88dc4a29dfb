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
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use beeswax::noise::NoiseSource;
use beeswax::schedulers::{Churn, Ddim, Euler, Scheduler, SchedulerConfig};
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

fn load_samplers() -> Result<(Vec<SamplerCase>, HashMap<String, Tensor>)> {
    let dir = fixtures();
    let text = std::fs::read_to_string(dir.join("samplers.json"))?;
    let reference: SamplerReference = serde_json::from_str(&text)?;
    let tensors = candle_core::safetensors::load(dir.join("samplers.safetensors"), &Device::Cpu)?;
    Ok((reference.cases, tensors))
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
    let get = |k: &str| {
        tensors
            .get(k)
            .ok_or_else(|| anyhow!("fixture tensor {k} missing"))
    };
    let samples = get(&format!("{}/samples", case.name))?;
    // Absent when diffusers' model input is the sample itself.
    let scaled = tensors.get(&format!("{}/scaled", case.name));
    let mut sample = (get("start")? * sigma)?.to_dtype(dtype)?;
    let mut noise = DetNoise { draws: 0 };
    let mut worst = 0.0f64;
    for (i, &t) in ts.iter().enumerate() {
        let x_in = sched.scale_model_input(&sample, i)?;
        match scaled {
            Some(scaled) => worst = worst.max(relative_error(&x_in, &scaled.get(i)?)?),
            None => anyhow::ensure!(
                relative_error(&x_in, &sample)? == 0.0,
                "{} step {i}: the model input should be the sample",
                case.name
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

#[test]
fn every_builtin_sampler_matches_its_diffusers_class() {
    let (cases, tensors) = load_samplers().unwrap();
    let mut covered: HashMap<&str, (bool, bool, Vec<usize>)> = HashMap::new();
    let mut report = Vec::new();
    for case in &cases {
        let err = replay_sampler(case, &tensors, DType::F64)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        report.push((err, case.name.as_str(), &case.class));
        let entry = covered.entry(case.scheduler.as_str()).or_default();
        let prediction = case.config["prediction_type"].as_str().unwrap_or_default();
        entry.0 |= prediction == "epsilon";
        entry.1 |= prediction == "v_prediction";
        entry.2.push(case.steps);
    }
    report.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("worst f64 relative errors: {:?}", &report[..3]);
    let failed: Vec<_> = report
        .iter()
        .filter(|(e, _, _)| e.is_nan() || *e > TOLERANCE)
        .collect();
    assert!(failed.is_empty(), "beyond {TOLERANCE}: {failed:?}");
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
    let (cases, tensors) = load_samplers().unwrap();
    let mut report = Vec::new();
    for case in &cases {
        let err = replay_sampler(case, &tensors, DType::F32)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        report.push((err, case.name.as_str()));
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

/// One end-to-end reference run (`make_scheduler_pipeline_fixtures.py`).
#[derive(Deserialize)]
struct PipelineCase {
    file: String,
    scheduler: String,
    guidance: f64,
    width: usize,
    height: usize,
    steps: usize,
    prompt: String,
    negative_prompt: String,
}

/// Whole text-to-image runs on the miniature models with DPM++ 2M Karras, UniPC, Heun, LMS,
/// PLMS and DEIS match diffusers' pipeline: final latents within 1e-3 x std, images within
/// 2/255 (the engine core's thresholds).
#[test]
fn text_to_image_matches_diffusers_with_each_sampler() {
    use beeswax::manifest::PackDefaults;
    use beeswax::pipeline::{resolve, InputRequest, JobRequest};

    let mut checked = Vec::new();
    for model_name in common::MODELS {
        let model = common::model(model_name);
        let dir = format!("reference/{model_name}/schedulers");
        let cases: Vec<PipelineCase> = serde_json::from_str(
            &std::fs::read_to_string(common::fixture(&format!("{dir}/cases.json"))).unwrap(),
        )
        .unwrap();
        for case in cases {
            let r = common::load(&format!("{dir}/{}", case.file));
            let request = JobRequest {
                prompt: case.prompt.clone(),
                negative_prompt: Some(case.negative_prompt.clone()),
                steps: Some(case.steps),
                guidance: Some(case.guidance),
                width: Some(case.width),
                height: Some(case.height),
                sampler: Some(case.scheduler.clone()),
                seed: Some(0),
                batch: Some(1),
                input: InputRequest::Latents(r["init_latents"].clone()),
                ..Default::default()
            };
            let job = resolve(
                &model,
                &PackDefaults::default(),
                &common::registry(),
                request,
            )
            .unwrap();
            let out = common::run(&model, &job);
            let what = format!("{model_name} {} ({})", case.file, case.scheduler);
            common::assert_close_rel_std(
                &format!("{what} latents"),
                &out.latents,
                &r["latents"],
                1e-3,
            );
            let want = (&r["image"] * 255.0).unwrap();
            let (_, h, w, _) = want.dims4().unwrap();
            let got = Tensor::from_vec(
                out.images[0]
                    .data
                    .iter()
                    .map(|&b| b as f32)
                    .collect::<Vec<_>>(),
                (h, w, 3),
                &Device::Cpu,
            )
            .unwrap();
            let diff = (got - want.get(0).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff <= 2.0,
                "{what}: max image difference {diff}/255 exceeds 2/255"
            );
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
