//! LoRAs: parity with diffusers' `load_lora_weights` + `fuse_lora` for kohya and PEFT files,
//! LyCORIS LoCon/LoHa/LoKr merged weights per tensor, switching LoRAs on one loaded model,
//! and every bad file (manifests and the CLI are in `lora_manifests.rs`). The fixtures come from
//! `tests/fixtures/make_lora_fixtures.py`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use beeswax::family::Model;
use beeswax::family::{ComponentWeights, LoraNames, Role, Weights};
use beeswax::lora::{apply, merged_weights, LoraError, LoraFile, ShapeMismatch, WeightedLora};
use beeswax::models::config_file::read_json;
use beeswax::models::unet::{UNet2DConditionModel, UNetConfig};
use beeswax::pipeline::Generated;
use beeswax::Error;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::command::Dir;
use common::conformance::Run;
use common::images::assert_run_matches;
use common::jobs::{generate, TextJob};
use common::lora::{lora_path, weighted};
use common::reference::{self, Case};
use common::{fixture, load, max_diff_and_std, model, MODELS};

fn cases(model: &str) -> Vec<Case> {
    reference::cases(&format!("lora/{model}"))
}

/// The case's job from its recorded starting latents.
fn job(case: &Case) -> TextJob {
    case.text_job(Some(&case.tensors()["init_latents"]))
}

fn run_with(model: &Model, loras: &[WeightedLora], job: &TextJob) -> Generated {
    generate(&apply(model, loras).unwrap().model, job)
}

fn assert_identical(what: &str, a: &Generated, b: &Generated) {
    let diff = common::compare::max_abs_diff(&a.latents, &b.latents);
    assert_eq!(diff, 0.0, "{what}: latents differ by {diff}");
    assert_eq!(a.images[0].data, b.images[0].data, "{what}: images differ");
}

#[test]
fn kohya_and_peft_match_diffusers_fuse_lora() {
    let mut checked = 0;
    for name in MODELS {
        let sd = model(name);
        for case in cases(name) {
            let r = case.tensors();
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
            let job = case.text_job(Some(&r["init_latents"]));
            let out = generate(&applied.model, &job);
            let what = format!("{name} {}", case.file);
            let run = Run::of_case(&case, &sd.family.name);
            assert_run_matches(&run, &out.latents, &out.images, &r, "image");
            // The LoRA must matter: the same run without it is far from the reference.
            let base = generate(&sd, &job);
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
        let job = job(&cases(name)[0]);
        let base = generate(&sd, &job);
        let zero = [
            weighted(name, "kohya.safetensors", 0.0),
            weighted(name, "peft.safetensors", 0.0),
        ];
        let applied = apply(&sd, &zero).unwrap();
        assert!(applied.reports.iter().all(|r| r.unet_layers > 0));
        assert_identical(name, &base, &generate(&applied.model, &job));
    }
}

#[test]
fn switching_loras_on_one_model_equals_fresh_runs() {
    let name = "tiny-sd";
    let job = job(&cases(name)[0]);
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
        &generate(&shared, &job),
        &generate(&model(name), &job),
    );
}

#[test]
fn lycoris_files_change_weights_as_the_formulas_say() {
    let name = "tiny-sd";
    let sd = model(name);
    let expected = load(&format!("lora/{name}/lycoris_expected.safetensors"));
    let meta: serde_json::Value = common::json(&format!("lora/{name}/lycoris.json"));
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

/// `tensors` saved as `name.safetensors` in `dir` and read as a LoRA at weight 1.
fn saved_lora(dir: &Dir, name: &str, tensors: &HashMap<String, Tensor>) -> WeightedLora {
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(tensors, &path).unwrap();
    WeightedLora {
        name: name.into(),
        file: Arc::new(LoraFile::read(&path).unwrap()),
        weight: 1.0,
    }
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn unmatched_keys_are_reported_with_count_and_examples() {
    let name = "tiny-sd";
    let sd = model(name);
    let dir = Dir::new("unmatched");
    let mut tensors =
        candle_core::safetensors::load(lora_path(name, "kohya.safetensors"), &Device::Cpu).unwrap();
    // (Original-layout kohya names such as `lora_unet_input_blocks_1_1_proj_in` resolve since
    // SDXL support; block 99 does not exist.)
    for (key, shape) in [
        (
            "lora_unet_input_blocks_99_1_proj_in.lora_down.weight",
            &[4, 32][..],
        ),
        (
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
            &[32, 4],
        ),
        ("lora_unet_mid_block_attentions_0_proj_in.diff_b", &[32]),
    ] {
        tensors.insert(key.into(), zeros(shape));
    }
    let applied = apply(&sd, &[saved_lora(&dir, "extra", &tensors)]).unwrap();
    let report = &applied.reports[0];
    assert_eq!(report.unmatched.len(), 3, "{report:?}");
    let warning = applied.warnings().join("\n");
    assert!(warning.contains("3 keys match no layer"), "{warning}");
    assert!(
        warning.contains("lora_unet_input_blocks_99_1_proj_in"),
        "{warning}"
    );
}

#[test]
fn corrupted_and_missing_files_are_named() {
    let dir = Dir::new("corrupted");
    // Truncated in the middle of the tensor data; and not safetensors at all.
    let bytes = std::fs::read(lora_path("tiny-sd", "kohya.safetensors")).unwrap();
    let truncated = dir.create("truncated.safetensors", &bytes[..bytes.len() / 2]);
    let garbage = dir.create(
        "garbage.safetensors",
        b"PK\x03\x04 this is a zip file, not safetensors",
    );
    for path in [&truncated, &garbage] {
        let err = LoraFile::read(path).unwrap_err();
        assert!(matches!(err, LoraError::Unreadable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("corrupted"),
            "{text}"
        );
    }
    let missing = LoraFile::read(&dir.join("missing.safetensors")).unwrap_err();
    assert!(
        missing.to_string().contains("missing.safetensors"),
        "{missing}"
    );
}

#[test]
fn a_lora_of_another_model_family_is_a_shape_mismatch_naming_both_shapes() {
    // tiny-sd2's LoRA (width 24) on tiny-sd (width 32).
    let err = apply(
        &model("tiny-sd"),
        &[weighted("tiny-sd2", "kohya.safetensors", 1.0)],
    )
    .unwrap_err();
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
}

#[test]
fn files_that_match_nothing_or_half_a_module_are_refused() {
    let sd = model("tiny-sd");
    let dir = Dir::new("unusable");
    // A file that matches nothing.
    let other = HashMap::from([(
        "model.layers.0.q_proj.lora_A.weight".to_string(),
        zeros(&[4, 8]),
    )]);
    let err = apply(&sd, &[saved_lora(&dir, "llm", &other)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("none of its 1 keys") && err.contains("model.layers.0.q_proj"),
        "{err}"
    );

    // An incomplete module (up without down) is named.
    let half = HashMap::from([(
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight".to_string(),
        zeros(&[32, 4, 1, 1]),
    )]);
    let err = apply(&sd, &[saved_lora(&dir, "half", &half)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lora_unet_down_blocks_0_attentions_0_proj_in") && err.contains("lora_down"),
        "{err}"
    );
}

/// Times `iters` runs of `f`; prints the median and the fastest.
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

/// The weights of a UNet of `config` with random values.
fn random_unet(config: &UNetConfig) -> HashMap<String, Tensor> {
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    UNet2DConditionModel::new(vb, config).unwrap();
    let data = varmap.data().lock().unwrap();
    let weights = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    weights
}

/// A rank-16 kohya LoRA (alpha 8) on every attention, proj and feed-forward linear of the UNet
/// weights `unet` (the common `network_dim=16` LoRA).
fn rank16_lora(unet: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
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
    let mut lora = HashMap::new();
    for (key, w) in unet {
        let Some(module) = key.strip_suffix(".weight") else {
            continue;
        };
        if !targets.iter().any(|t| module.ends_with(t)) || !module.contains("attentions") {
            continue;
        }
        let (out_dim, in_dim) = (w.dim(0).unwrap(), w.dim(1).unwrap());
        let name = format!("lora_unet_{}", module.replace('.', "_"));
        let random = |rows: usize, cols: usize| {
            let t = Tensor::randn(0f32, 0.01, (rows, cols), &Device::Cpu).unwrap();
            if w.rank() == 4 {
                t.reshape((rows, cols, 1, 1)).unwrap()
            } else {
                t
            }
        };
        lora.insert(format!("{name}.lora_down.weight"), random(16, in_dim));
        lora.insert(format!("{name}.lora_up.weight"), random(out_dim, 16));
        lora.insert(
            format!("{name}.alpha"),
            Tensor::new(8f32, &Device::Cpu).unwrap(),
        );
    }
    lora
}

/// The cost of switching LoRA sets (merge + rebuild), on tiny-sd and on the SD 1.5 UNet config
/// (`fixtures/perf/sd15-unet/config.json`) with random weights. Prints timings; run with
/// `cargo test --release -p beeswax --test lora -- --ignored --nocapture switching_cost`.
#[test]
#[ignore = "benchmark: the cost of switching LoRA sets; scripts/test runs it"]
fn switching_cost() {
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

    let config: UNetConfig = read_json(&fixture("perf/sd15-unet/config.json")).unwrap();
    let unet_map = random_unet(&config);
    let params: usize = unet_map.values().map(Tensor::elem_count).sum();
    let dir = Dir::new("switching-cost");
    let path = dir.join("sd15-r16.safetensors");
    candle_core::safetensors::save(&rank16_lora(&unet_map), &path).unwrap();
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
            quantized: None,
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
            let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);
            UNet2DConditionModel::new(vb, &config).unwrap()
        },
    );
    let patched_mb: usize = patches["unet"].values().map(|t| t.elem_count() * 4).sum();
    eprintln!(
        "SD 1.5 UNet: the job's patched layers hold {:.0} MB (shared: the other {:.0} MB)",
        patched_mb as f64 / 1e6,
        (params * 4 - patched_mb) as f64 / 1e6
    );
}
