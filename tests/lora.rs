//! LoRAs: parity with diffusers' `load_lora_weights` + `fuse_lora` for kohya and PEFT files,
//! LyCORIS LoCon/LoHa/LoKr merged weights per tensor, switching LoRAs on one loaded model,
//! and every bad file (manifests and the CLI are in `lora_manifests.rs`). The fixtures come from
//! `tests/fixtures/make_lora_fixtures.py`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use beeswax::family::{ComponentWeights, LoraNames, Model, Role, Weights};
use beeswax::lora::{apply, merged_weights, LoraError, LoraFile, ShapeMismatch, WeightedLora};
use beeswax::pipeline::{Generated, Input, Job, Settings};
use beeswax::Error;
use candle_core::{DType, Device, Tensor};
use common::lora::{lora_path, weighted};
use common::{assert_close_rel_std, fixture, load, max_diff_and_std, model, root, MODELS};

/// One diffusers reference run (see `cases.json`).
#[derive(serde::Deserialize)]
struct Case {
    file: String,
    loras: Vec<(String, f64)>,
    scheduler: String,
    guidance: f64,
    width: usize,
    height: usize,
    steps: usize,
    prompt: String,
    negative_prompt: String,
}

fn cases(model: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixture(&format!("lora/{model}/cases.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn job(case: &Case, init_latents: &Tensor) -> Job {
    let settings = Settings {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative_prompt.clone(),
        steps: case.steps,
        guidance: case.guidance,
        width: case.width,
        height: case.height,
        seed: 0,
        batch: 1,
        clip_skip: 1,
    };
    let input = Input::Text {
        init_latents: Some(init_latents.clone()),
    };
    common::job(settings, &case.scheduler, input)
}

fn run(model: &Model, job: &Job) -> Generated {
    common::run(model, job)
}

fn run_with(model: &Model, loras: &[WeightedLora], job: &Job) -> Generated {
    run(&apply(model, loras).unwrap().model, job)
}

fn assert_image_close(what: &str, image: &[u8], want: &Tensor) {
    let want = (want.get(0).unwrap() * 255.0).unwrap();
    let got = Tensor::from_vec(
        image.iter().map(|&b| b as f32).collect::<Vec<_>>(),
        want.dims(),
        &Device::Cpu,
    )
    .unwrap();
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff <= 2.0, "{what}: image differs by {diff}/255 (> 2/255)");
}

fn assert_identical(what: &str, a: &Generated, b: &Generated) {
    let diff = (&a.latents - &b.latents)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0, "{what}: latents differ by {diff}");
    assert_eq!(a.images[0].data, b.images[0].data, "{what}: images differ");
}

#[test]
fn kohya_and_peft_match_diffusers_fuse_lora() {
    let mut checked = 0;
    for name in MODELS {
        let sd = model(name);
        for case in cases(name) {
            let r = load(&format!("lora/{name}/{}", case.file));
            let loras: Vec<WeightedLora> = case
                .loras
                .iter()
                .map(|(file, w)| weighted(name, file, *w))
                .collect();
            let applied = apply(&sd, &loras).unwrap();
            for report in &applied.reports {
                assert!(report.unmatched.is_empty(), "{report:?}");
                assert!(
                    report.unet_layers > 0 && report.text_encoder_layers > 0,
                    "{report:?}"
                );
            }
            let out = run(&applied.model, &job(&case, &r["init_latents"]));
            let what = format!("{name} {}", case.file);
            assert_close_rel_std(
                &format!("{what} latents"),
                &out.latents,
                &r["latents"],
                1e-3,
            );
            assert_image_close(&what, &out.images[0].data, &r["image"]);
            // The LoRA must matter: the same run without it is far from the reference.
            let base = run(&sd, &job(&case, &r["init_latents"]));
            let (diff, std) = max_diff_and_std(&base.latents, &r["latents"]);
            assert!(diff > 0.05 * std, "{what}: the LoRA changes almost nothing");
            checked += 1;
        }
    }
    assert!(
        checked >= 7,
        "expected every reference case, checked {checked}"
    );
}

#[test]
fn weight_zero_gives_the_base_image_exactly() {
    for name in MODELS {
        let sd = model(name);
        let case = &cases(name)[0];
        let init = load(&format!("lora/{name}/{}", case.file))["init_latents"].clone();
        let base = run(&sd, &job(case, &init));
        let zero = [
            weighted(name, "kohya.safetensors", 0.0),
            weighted(name, "peft.safetensors", 0.0),
        ];
        let applied = apply(&sd, &zero).unwrap();
        assert!(applied.reports.iter().all(|r| r.unet_layers > 0));
        assert_identical(name, &base, &run(&applied.model, &job(case, &init)));
    }
}

#[test]
fn switching_loras_on_one_model_equals_fresh_runs() {
    let name = "tiny-sd";
    let case = &cases(name)[0];
    let init = load(&format!("lora/{name}/{}", case.file))["init_latents"].clone();
    let job = job(case, &init);
    let a = [weighted(name, "kohya.safetensors", 0.8)];
    let b = [weighted(name, "peft.safetensors", -0.6)];
    let sets: [&[WeightedLora]; 3] = [&a, &[], &b];

    let shared = model(name);
    let switched: Vec<Generated> = sets.iter().map(|s| run_with(&shared, s, &job)).collect();
    for (i, set) in sets.iter().enumerate() {
        let fresh = run_with(&model(name), set, &job);
        assert_identical(&format!("job {}", i + 1), &switched[i], &fresh);
    }
    // And the base model is untouched after all that.
    assert_identical(
        "base after switching",
        &run(&shared, &job),
        &run(&model(name), &job),
    );
}

#[test]
fn lycoris_files_change_weights_as_the_formulas_say() {
    let name = "tiny-sd";
    let sd = model(name);
    let expected = load(&format!("lora/{name}/lycoris_expected.safetensors"));
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("lora/{name}/lycoris.json"))).unwrap(),
    )
    .unwrap();
    let multiplier = meta["multiplier"].as_f64().unwrap();
    let mut checked = 0;
    for algo in ["locon", "loha", "lokr"] {
        let lora = weighted(name, &format!("{algo}.safetensors"), multiplier);
        let (patches, reports) = merged_weights(&sd.weights, &[lora]).unwrap();
        assert!(reports[0].unmatched.is_empty(), "{:?}", reports[0]);
        let mut want: HashMap<String, &Tensor> = HashMap::new();
        for (key, t) in &expected {
            if let Some(rest) = key.strip_prefix(&format!("{algo}/")) {
                want.insert(rest.to_string(), t);
            }
        }
        let mut got: HashMap<String, &Tensor> = HashMap::new();
        for (component, tensors) in &patches {
            for (k, t) in tensors {
                got.insert(format!("{component}/{k}"), t);
            }
        }
        let mut got_keys: Vec<_> = got.keys().cloned().collect();
        let mut want_keys: Vec<_> = want.keys().cloned().collect();
        got_keys.sort();
        want_keys.sort();
        assert_eq!(got_keys, want_keys, "{algo}: patched tensors");
        for (key, w) in want {
            let (component, k) = key.split_once('/').unwrap();
            let base = &sd.weights.get(component).unwrap().tensors[k];
            // The change must be real, and match the formula to float precision.
            let (moved, _) = max_diff_and_std(base, w);
            assert!(
                moved > 1e-3,
                "{algo} {key}: the LoRA does not change the weight"
            );
            let (diff, std) = max_diff_and_std(got[&key], w);
            assert!(
                diff <= 1e-5 * std.max(1e-3),
                "{algo} {key}: off by {diff:e} (std {std:e})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "checked {checked} tensors");
}

#[test]
fn unmatched_keys_are_reported_with_count_and_examples() {
    let name = "tiny-sd";
    let sd = model(name);
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors =
        candle_core::safetensors::load(lora_path(name, "kohya.safetensors"), &Device::Cpu).unwrap();
    let down = Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap();
    tensors.insert(
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight".into(),
        down,
    );
    tensors.insert(
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".into(),
        Tensor::zeros((32, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "lora_unet_mid_block_attentions_0_proj_in.diff_b".into(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
    );
    let path = tmp.path().join("extra.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let lora = WeightedLora {
        name: "extra".into(),
        file: Arc::new(LoraFile::read(&path).unwrap()),
        weight: 1.0,
    };
    let applied = apply(&sd, &[lora]).unwrap();
    let report = &applied.reports[0];
    assert_eq!(report.unmatched.len(), 3, "{report:?}");
    let warning = applied.warnings().join("\n");
    assert!(warning.contains("3 keys match no layer"), "{warning}");
    assert!(
        warning.contains("lora_unet_input_blocks_1_1_proj_in"),
        "{warning}"
    );
}

#[test]
fn bad_files_are_clear_errors() {
    let sd = model("tiny-sd");
    let tmp = tempfile::tempdir().unwrap();

    // Corrupted: truncated in the middle of the tensor data; and not safetensors at all.
    let bytes = std::fs::read(lora_path("tiny-sd", "kohya.safetensors")).unwrap();
    let truncated = tmp.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"PK\x03\x04 this is a zip file, not safetensors").unwrap();
    for path in [&truncated, &garbage] {
        let err = LoraFile::read(path).unwrap_err();
        assert!(matches!(err, LoraError::Unreadable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("corrupted"),
            "{text}"
        );
    }
    let missing = LoraFile::read(&tmp.path().join("missing.safetensors")).unwrap_err();
    assert!(
        missing.to_string().contains("missing.safetensors"),
        "{missing}"
    );

    // Another model family: tiny-sd2's LoRA (width 24) on tiny-sd (width 32).
    let err = apply(&sd, &[weighted("tiny-sd2", "kohya.safetensors", 1.0)]).unwrap_err();
    let text = err.to_string();
    let Error::Lora(boxed) = err else {
        panic!("expected a LoRA error, got {err:?}")
    };
    let LoraError::ShapeMismatch(m) = *boxed else {
        panic!("expected a shape mismatch, got {boxed:?}")
    };
    let ShapeMismatch {
        tensor,
        lora_shape,
        delta_shape,
        target,
        target_shape,
        ..
    } = *m;
    assert_ne!(delta_shape, target_shape);
    for needle in [
        tensor,
        target,
        format!("{lora_shape:?}"),
        format!("{target_shape:?}"),
        "another model family".to_string(),
    ] {
        assert!(text.contains(&needle), "{text} lacks {needle}");
    }

    // A file that matches nothing.
    let other = HashMap::from([(
        "model.layers.0.q_proj.lora_A.weight".to_string(),
        Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap(),
    )]);
    let nothing = tmp.path().join("llm.safetensors");
    candle_core::safetensors::save(&other, &nothing).unwrap();
    let lora = WeightedLora {
        name: "llm".into(),
        file: Arc::new(LoraFile::read(&nothing).unwrap()),
        weight: 1.0,
    };
    let err = apply(&sd, &[lora]).unwrap_err().to_string();
    assert!(
        err.contains("none of its 1 keys") && err.contains("model.layers.0.q_proj"),
        "{err}"
    );

    // An incomplete module (up without down) is named.
    let half = HashMap::from([(
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight".to_string(),
        Tensor::zeros((32, 4, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    )]);
    let half_path = tmp.path().join("half.safetensors");
    candle_core::safetensors::save(&half, &half_path).unwrap();
    let lora = WeightedLora {
        name: "half".into(),
        file: Arc::new(LoraFile::read(&half_path).unwrap()),
        weight: 1.0,
    };
    let err = apply(&sd, &[lora]).unwrap_err().to_string();
    assert!(
        err.contains("lora_unet_down_blocks_0_attentions_0_proj_in") && err.contains("lora_down"),
        "{err}"
    );
}

/// The cost of switching LoRA sets (merge + rebuild), on tiny-sd and on the SD 1.5 UNet config
/// with random weights. Prints timings; run with
/// `cargo test --release -p beeswax --test lora -- --ignored --nocapture switching_cost`.
#[test]
#[ignore = "a measurement, not a check: run explicitly"]
fn switching_cost() {
    use beeswax::models::config_file::read_json;
    use beeswax::models::unet::{UNet2DConditionModel, UNetConfig};
    use candle_nn::VarBuilder;

    fn time<T>(what: &str, iters: usize, mut f: impl FnMut() -> T) {
        let mut times = Vec::new();
        for _ in 0..iters {
            let start = Instant::now();
            std::hint::black_box(f());
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{what}: median {:.2} ms, min {:.2} ms",
            times[iters / 2],
            times[0]
        );
    }

    let sd = model("tiny-sd");
    let a = [weighted("tiny-sd", "kohya.safetensors", 0.8)];
    let b = [weighted("tiny-sd", "peft.safetensors", 1.3)];
    time(
        "tiny-sd: switch to kohya (merge + rebuild UNet and CLIP)",
        20,
        || apply(&sd, &a).unwrap(),
    );
    time("tiny-sd: switch to peft", 20, || apply(&sd, &b).unwrap());
    time("tiny-sd: switch to none", 20, || apply(&sd, &[]).unwrap());

    // SD 1.5 UNet with random weights, and a rank-16 kohya LoRA on every attention, proj and
    // feed-forward linear (the common `network_dim=16` LoRA, 192 layers).
    let config_path = root().join("../shared/perf/sd15-unet/config.json");
    let config_path = if config_path.exists() {
        config_path
    } else {
        PathBuf::from("/work/shared/perf/sd15-unet/config.json")
    };
    let config: UNetConfig = read_json(&config_path).unwrap();
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    UNet2DConditionModel::new(vb, &config).unwrap();
    let unet_map: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let params: usize = unet_map.values().map(Tensor::elem_count).sum();
    let mut lora = HashMap::new();
    for (key, w) in &unet_map {
        let targets = [
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "proj_in",
            "proj_out",
            "ff.net.0.proj",
            "ff.net.2",
        ];
        let Some(module) = key.strip_suffix(".weight") else {
            continue;
        };
        if !targets.iter().any(|t| module.ends_with(t)) || !module.contains("attentions") {
            continue;
        }
        let (out_dim, in_dim) = (w.dim(0).unwrap(), w.dim(1).unwrap());
        let name = format!("lora_unet_{}", module.replace('.', "_"));
        let down = Tensor::randn(0f32, 0.01, (16, in_dim), &Device::Cpu).unwrap();
        let down = if w.rank() == 4 {
            down.reshape((16, in_dim, 1, 1)).unwrap()
        } else {
            down
        };
        let up = Tensor::randn(0f32, 0.01, (out_dim, 16), &Device::Cpu).unwrap();
        let up = if w.rank() == 4 {
            up.reshape((out_dim, 16, 1, 1)).unwrap()
        } else {
            up
        };
        lora.insert(format!("{name}.lora_down.weight"), down);
        lora.insert(format!("{name}.lora_up.weight"), up);
        lora.insert(
            format!("{name}.alpha"),
            Tensor::new(8f32, &Device::Cpu).unwrap(),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sd15-r16.safetensors");
    candle_core::safetensors::save(&lora, &path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let start = Instant::now();
    let file = Arc::new(LoraFile::read(&path).unwrap());
    eprintln!(
        "SD 1.5 UNet: {:.0} M parameters; LoRA rank 16, {} modules, {:.1} MB, read in {:.0} ms",
        params as f64 / 1e6,
        file.modules.len(),
        size as f64 / 1e6,
        start.elapsed().as_secs_f64() * 1e3
    );
    let base = Weights {
        components: vec![ComponentWeights {
            name: "unet".into(),
            role: Role::Denoiser,
            file: path.clone(),
            tensors: unet_map.clone(),
            lora: LoraNames {
                kohya: "lora_unet".into(),
                peft: "unet".into(),
                bare: true,
            },
        }],
    };
    let loras = [WeightedLora {
        name: "r16".into(),
        file,
        weight: 0.8,
    }];
    time("SD 1.5 UNet: merge rank-16 LoRA (192 layers)", 5, || {
        merged_weights(&base, &loras).unwrap()
    });
    let (patches, _) = merged_weights(&base, &loras).unwrap();
    time(
        "SD 1.5 UNet: rebuild UNet around merged + shared weights",
        5,
        || {
            let mut map = unet_map.clone();
            map.extend(patches["unet"].iter().map(|(k, v)| (k.clone(), v.clone())));
            UNet2DConditionModel::new(
                VarBuilder::from_tensors(map, DType::F32, &Device::Cpu),
                &config,
            )
            .unwrap()
        },
    );
    let patched_mb: usize = patches["unet"].values().map(|t| t.elem_count() * 4).sum();
    eprintln!(
        "SD 1.5 UNet: the job's patched layers hold {:.0} MB (shared: the other {:.0} MB)",
        patched_mb as f64 / 1e6,
        (params * 4 - patched_mb) as f64 / 1e6
    );
}
