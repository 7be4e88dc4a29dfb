//! Single-file checkpoints in the original (CompVis/SGM) layout, made from the miniature
//! diffusers folders by tests/fixtures/make_single_file_fixtures.py (which checks diffusers'
//! `from_single_file(config=...)` loads each back equal): detection by the family manifests'
//! rules, the key maps, 16-bit files computed in f32, parity with diffusers' `from_single_file`
//! pipeline, and the errors of bad input.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use beeswax::checkpoint::load::load;
use beeswax::checkpoint::{inspect, CheckpointOptions};
use beeswax::family::{Families, Model};
use beeswax::manifest::ManifestFiles;
use beeswax::schedulers::PredictionType;
use candle_core::{DType, Device, Tensor};
use common::command::Dir;
use common::conformance::Run;
use common::images::{assert_conforms, pixels};
use common::jobs::generate;
use common::reference::{load as load_fixture, Case};
use common::{cpu_f32, fixture, model_dir};

fn single(name: &str) -> PathBuf {
    fixture(&format!("single/{name}"))
}

fn options(config: &str) -> CheckpointOptions {
    CheckpointOptions {
        config_dir: Some(model_dir(config)),
        ..Default::default()
    }
}

fn load_file(path: &Path, config: &str) -> Model {
    load(path, &Families::builtin(), &options(config), &cpu_f32()).unwrap()
}

fn load_err(path: &Path, families: &Families, options: &CheckpointOptions) -> String {
    load(path, families, options, &cpu_f32())
        .unwrap_err()
        .to_string()
}

/// The f32 twin of a committed 16-bit file, value for value, in `dir`.
fn f32_twin(dir: &Dir, name: &str) -> PathBuf {
    let tensors = candle_core::safetensors::load(single(name), &Device::Cpu).unwrap();
    let tensors: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(DType::F32).unwrap()))
        .collect();
    let path = dir.join(name.replace(".f16.", ".f32."));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

/// The reference run: StableDiffusionXLPipeline.from_single_file(tiny-sdxl.f16), in f32,
/// Euler, 4 steps, guidance 5, 64x64.
fn check_reference(what: &str, m: &Model) {
    check_run(what, m, "single/reference.safetensors", 64, 64);
}

/// `m`'s Euler run (4 steps, guidance 5, `width` x `height`) from the saved starting noise of
/// `reference`, against its latents and image.
fn check_run(what: &str, m: &Model, reference: &str, width: usize, height: usize) {
    let r = load_fixture(reference);
    let mut case = Case::new("a red fox in the snow", "Euler", 4, width, height);
    case.negative_prompt = "blurry, low quality".into();
    case.guidance = 5.0;
    let out = generate(m, &case.text_job(Some(&r["init_latents"])));
    let run = Run {
        pipeline: "txt2img (single file)".into(),
        family: m.family.name.clone(),
        sampler: case.scheduler.clone(),
        lora: String::new(),
        case: format!("{reference} ({what})"),
    };
    let images: Vec<Tensor> = out.images.iter().map(pixels).collect();
    let latents = Some((&out.latents, &r["latents"], 2e-3));
    assert_conforms(&run, latents, &images, &r["image"]);
}

#[test]
fn sdxl_single_files_match_diffusers_from_single_file() {
    let m = load_file(&single("tiny-sdxl.f16.safetensors"), "tiny-sdxl");
    assert_eq!(m.family.name, "sdxl");
    assert_eq!(m.dtype, DType::F32);
    check_reference("sdxl f16 file", &m);
    let dir = Dir::new("single-f32");
    let m = load_file(&f32_twin(&dir, "tiny-sdxl.f16.safetensors"), "tiny-sdxl");
    check_reference("sdxl f32 file", &m);
}

/// Asserts that every component of `folder` is in `file` with as many tensors, each equal to
/// the folder's (rounded to f16 first when `f16` says so); a CLIP key may carry the
/// transformers-4 `text_model.` prefix in the file.
fn assert_holds_weights(file: &Model, folder: &Model, f16: bool) {
    for component in &folder.weights.components {
        let got = file.weights.get(&component.name).unwrap();
        assert_eq!(
            got.tensors.len(),
            component.tensors.len(),
            "{}",
            component.name
        );
        for (key, want) in &component.tensors {
            let want = if f16 {
                want.to_dtype(DType::F16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
            } else {
                want.clone()
            };
            let got = got
                .tensors
                .get(key)
                .or_else(|| got.tensors.get(&format!("text_model.{key}")))
                .unwrap_or_else(|| panic!("{}: no {key}", component.name));
            let diff = common::compare::max_abs_diff(got, &want);
            assert_eq!(diff, 0.0, "{} {key}", component.name);
        }
    }
}

/// Every weight the refiner's networks read from its single file is the folder's, as rounded
/// to f16 (OpenCLIP's fused q/k/v split by rows, its projection transposed, the UNet renamed).
#[test]
fn refiner_single_file_holds_the_folder_weights() {
    let file = load_file(
        &single("tiny-sdxl-refiner.f16.safetensors"),
        "tiny-sdxl-refiner",
    );
    assert_eq!(file.family.name, "sdxl-refiner");
    let folder = common::model("tiny-sdxl-refiner");
    assert_holds_weights(&file, &folder, true);
    let report = inspect(
        &single("tiny-sdxl-refiner.f16.safetensors"),
        &Families::builtin(),
        &options("tiny-sdxl-refiner"),
    )
    .unwrap();
    assert_eq!(report.detection.family.name, "sdxl-refiner");
    assert!(report
        .detection
        .rule
        .contains("conditioner.embedders.0.model"));
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    assert_eq!(report.dtypes.keys().collect::<Vec<_>>(), ["F16"]);
    assert_eq!(report.components.len(), 3);
}

/// SDXL with fewer transformer blocks (no third block at the lowest level, which SDXL base
/// has) is a family manifest alone: its detection rules claim the file before `sdxl`'s.
#[test]
fn a_variant_manifest_claims_a_single_file_by_its_rules() {
    let shipped =
        std::fs::read_to_string(common::root().join("manifests/families/sdxl.toml")).unwrap();
    let variant = shipped
        .replace("name = \"sdxl\"", "name = \"sdxl-lite\"")
        .replace("priority = 0", "priority = 5")
        + "\n[[family.detect]]\nkey = \"model.diffusion_model.input_blocks.7.1.transformer_blocks.2.attn1.to_q.weight\"\npresent = false\n";
    let dir = Dir::new("single-variant");
    dir.create("families/sdxl-lite.toml", &variant);
    let files = ManifestFiles::read(dir.path()).unwrap();
    let families = Families::from_manifests(&files.parse().unwrap()).unwrap();
    let path = single("tiny-sdxl.f16.safetensors");
    let m = load(&path, &families, &options("tiny-sdxl"), &cpu_f32()).unwrap();
    assert_eq!(m.family.name, "sdxl-lite");
    check_reference("variant", &m);
}

#[test]
fn bad_single_files_are_named_with_what_was_expected() {
    let dir = Dir::new("single-bad");
    let families = Families::builtin();
    // A file of no known family: the rules tried and the closest family.
    let mut other = std::collections::HashMap::new();
    other.insert(
        "model.diffusion_model.input_blocks.0.0.weight".to_string(),
        Tensor::zeros((8, 5, 3, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    let unknown = dir.join("unknown.safetensors");
    candle_core::safetensors::save(&other, &unknown).unwrap();
    let err = load_err(&unknown, &families, &options("tiny-sdxl"));
    for needle in [
        "unknown.safetensors",
        "rules tried",
        "sdxl:",
        "closest",
        "[8, 5, 3, 3]",
    ] {
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
    // A truncated file.
    let bytes = std::fs::read(single("tiny-sdxl.f16.safetensors")).unwrap();
    let truncated = dir.create("truncated.safetensors", &bytes[..bytes.len() / 2]);
    let err = load_err(&truncated, &families, &options("tiny-sdxl"));
    assert!(err.contains("truncated.safetensors"), "{err}");
    // A pickle: refused with the conversion command.
    let pickle = dir.create("model.ckpt", b"not read");
    let err = load_err(&pickle, &families, &options("tiny-sdxl"));
    assert!(
        err.contains("model.ckpt") && err.contains("save_file"),
        "{err}"
    );
    // A wrong --prediction.
    let path = single("tiny-sdxl.f16.safetensors");
    let wrong = CheckpointOptions {
        prediction: Some(PredictionType::VPrediction),
        ..options("tiny-sdxl")
    };
    let err = load_err(&path, &families, &wrong);
    assert!(
        err.contains("--prediction v") && err.contains("epsilon"),
        "{err}"
    );
    // A declared family the file does not match (a refiner that is not a refiner).
    let declared = CheckpointOptions {
        family: Some("sdxl-refiner".into()),
        ..options("tiny-sdxl-refiner")
    };
    let err = load_err(&path, &families, &declared);
    assert!(
        err.contains("declared family `sdxl-refiner`")
            && err.contains("has no tensor `conditioner.embedders.0.model."),
        "{err}"
    );
    // Configs that do not fit the file.
    let err = load_err(&path, &families, &options("tiny-sd"));
    assert!(
        err.contains("tiny-sdxl.f16.safetensors") || err.contains("tiny-sd"),
        "{err}"
    );
}

/// The CLI: `--model FILE --model-config DIR` generates, `beeswax inspect` describes.
#[test]
fn cli_loads_and_inspects_single_files() {
    let dir = Dir::new("single-cli");
    let file = single("tiny-sdxl.f16.safetensors");
    let out = dir
        .command()
        .arg("inspect")
        .arg(&file)
        .arg("--model-config")
        .arg(model_dir("tiny-sdxl"))
        .stdout();
    for needle in [
        "family: sdxl",
        "rule:",
        "F16",
        "component unet",
        "unused keys: 0",
    ] {
        assert!(out.contains(needle), "{out}");
    }
    dir.command()
        .args([
            "generate", "--prompt", "a fox", "--steps", "2", "--width", "64", "--height", "64",
        ])
        .arg("--model")
        .arg(&file)
        .arg("--model-config")
        .arg(model_dir("tiny-sdxl"))
        .args(["--output", "fox.png", "--seed", "5"])
        .run();
    assert!(dir.join("fox.png").is_file());
    // SDXL size conditioning from the command line changes the image; a malformed size is
    // refused with the form it takes.
    dir.command()
        .args([
            "generate", "--prompt", "a fox", "--steps", "2", "--width", "64", "--height", "64",
        ])
        .arg("--model")
        .arg(&file)
        .arg("--model-config")
        .arg(model_dir("tiny-sdxl"))
        .args(["--original-size", "256x192", "--crop-top-left", "16,8"])
        .args([
            "--target-size",
            "64x64",
            "--output",
            "sized.png",
            "--seed",
            "5",
        ])
        .run();
    let plain = common::images::Png::read(&dir.join("fox.png"));
    let sized = common::images::Png::read(&dir.join("sized.png"));
    assert_ne!(plain.image.data, sized.image.data);
    dir.command()
        .args(["generate", "--prompt", "a fox", "--original-size", "256"])
        .arg("--model")
        .arg(&file)
        .assert_fails_with(&["--original-size", "WIDTHxHEIGHT"]);
}

/// The miniature SD folders (configs and tokenizers) beside their single files.
fn mini_options(name: &str) -> CheckpointOptions {
    CheckpointOptions {
        config_dir: Some(single(&format!("models/{name}"))),
        ..Default::default()
    }
}

/// The reference run of `name`: StableDiffusionPipeline.from_single_file(<name>.f16,
/// config=single/models/<name>) in f32, Euler, 4 steps, guidance 5, 48x32.
fn check_mini_reference(what: &str, name: &str, m: &Model) {
    check_run(
        what,
        m,
        &format!("single/{name}.reference.safetensors"),
        48,
        32,
    );
}

/// SD 1.x and SD 2.x 768-v (an OpenCLIP text tower carrying one block more than it uses, as
/// real SD 2 files do) single files, f16 as committed and their f32 twins: detected by their
/// keys, computed in f32, equal to diffusers' `from_single_file(config=...)` pipeline.
#[test]
fn sd_single_files_match_diffusers_from_single_file() {
    let dir = Dir::new("single-sd");
    for (name, family) in [("mini-sd1", "sd1"), ("mini-sd2-v", "sd2-v")] {
        let file = format!("{name}.f16.safetensors");
        for path in [single(&file), f32_twin(&dir, &file)] {
            let mut opts = mini_options(name);
            if family == "sd2-v" {
                // The miniature has no `output_blocks.11` for the heuristic to read, so it
                // guesses epsilon (`sd2`); `--prediction v` makes it `sd2-v`.
                let guessed = load(&path, &Families::builtin(), &opts, &cpu_f32()).unwrap();
                assert_eq!(guessed.family.name, "sd2");
                opts.prediction = Some(PredictionType::VPrediction);
            }
            let m = load(&path, &Families::builtin(), &opts, &cpu_f32()).unwrap();
            assert_eq!(m.family.name, family, "{}", path.display());
            assert_eq!(m.dtype, DType::F32);
            check_mini_reference(&path.display().to_string(), name, &m);
        }
    }
}

/// A 9-channel SD 1.x inpainting file is detected as `sd1-inpaint` and holds its folder's
/// weights (diffusers' `from_single_file` was checked equal to them when the file was made).
#[test]
fn inpainting_single_file_holds_the_folder_weights() {
    let path = single("mini-sd1-inpaint.f16.safetensors");
    let m = load(
        &path,
        &Families::builtin(),
        &mini_options("mini-sd1-inpaint"),
        &cpu_f32(),
    )
    .unwrap();
    assert_eq!(m.family.name, "sd1-inpaint");
    assert_eq!(m.networks.in_channels(), 9);
    let folder = beeswax::family::load(
        &single("models/mini-sd1-inpaint"),
        Some("sd1-inpaint"),
        &cpu_f32(),
    )
    .unwrap();
    assert!(folder.weights.get("unet").is_some());
    assert_holds_weights(&m, &folder, false);
}

/// A family manifest whose `config` folder (beside it, here a fixture) holds the configs lets
/// `--model FILE` run with no `--model-config`, for every SD/SDXL family; the shipped families
/// use the bundled full-size configs, which the miniatures do not fit (a clear error naming the
/// tensor), and a FLUX file without `--model-config` names the T5 tokenizer it lacks.
#[test]
fn cli_loads_single_files_without_model_config() {
    let dir = Dir::new("single-configs");
    let cases = [
        ("sd1", "mini-sd1", single("models/mini-sd1"), true),
        ("sd2-v", "mini-sd2-v", single("models/mini-sd2-v"), true),
        (
            "sd1-inpaint",
            "mini-sd1-inpaint",
            single("models/mini-sd1-inpaint"),
            false,
        ),
        ("sdxl", "tiny-sdxl", model_dir("tiny-sdxl"), true),
        (
            "sdxl-refiner",
            "tiny-sdxl-refiner",
            model_dir("tiny-sdxl-refiner"),
            false,
        ),
    ];
    for (family, _, config, _) in &cases {
        let shipped = std::fs::read_to_string(
            common::root().join(format!("manifests/families/{family}.toml")),
        )
        .unwrap();
        let own = shipped.replace(
            &format!("config = \"{family}\""),
            &format!("config = {:?}", config.display().to_string()),
        );
        assert_ne!(own, shipped, "{family}.toml has no config line");
        dir.create(format!("own/families/{family}.toml"), own);
    }
    for (family, name, config, generates) in &cases {
        let file = single(&format!("{name}.f16.safetensors"));
        let mut prediction = Vec::new();
        if *family == "sd2-v" {
            prediction = vec!["--prediction", "v"];
        }
        let out = dir
            .command()
            .manifests(&dir.join("own"))
            .arg("inspect")
            .arg(&file)
            .args(&prediction)
            .stdout();
        assert!(out.contains(&format!("family: {family}\n")), "{out}");
        assert!(
            out.contains(&format!("configs: {}", config.display())),
            "{out}"
        );
        // SD 2 files carry one OpenCLIP block more than the text encoder uses.
        let unused = if *family == "sd2-v" {
            "unused keys: 12"
        } else {
            "unused keys: 0"
        };
        assert!(out.contains(unused), "{out}");
        if *generates {
            let png = format!("{name}.png");
            dir.command()
                .manifests(&dir.join("own"))
                .args(["generate", "--prompt", "a fox", "--steps", "2"])
                .args(["--width", "64", "--height", "64", "--model"])
                .arg(&file)
                .args(&prediction)
                .args(["--output", &png])
                .run();
            assert!(dir.join(&png).is_file(), "{family}");
        }
    }
    // The shipped sd1 family: the bundled configs are found (expanded into BEESWAX_CACHE) and
    // describe SD 1.5, which the miniature does not fit.
    let cache = dir.join("cache");
    let file = single("mini-sd1.f16.safetensors");
    let out = dir
        .command()
        .env("BEESWAX_CACHE", &cache)
        .arg("inspect")
        .arg(&file)
        .stdout();
    assert!(out.contains("family: sd1\n"), "{out}");
    assert!(
        out.contains(&format!(
            "configs: {}",
            cache.join("bundled-configs").display()
        )),
        "{out}"
    );
    dir.command()
        .env("BEESWAX_CACHE", &cache)
        .args(["generate", "--prompt", "a fox", "--steps", "1", "--model"])
        .arg(&file)
        .assert_fails_with(&[
            "mini-sd1.f16.safetensors",
            "shape mismatch",
            "expected: [768]",
        ]);
    // FLUX: the T5 tokenizer cannot be bundled.
    let flux = model_dir("tiny-flux-dev-bfl.safetensors");
    dir.command()
        .env("BEESWAX_CACHE", &cache)
        .args(["generate", "--prompt", "a fox", "--steps", "1", "--model"])
        .arg(&flux)
        .assert_fails_with(&["flux-dev", "tokenizer_2/", "--model-config DIR"]);
    // A wrong --prediction value is refused with the values it takes.
    dir.command()
        .args(["inspect", "--prediction", "x"])
        .arg(&file)
        .assert_fails_with(&["--prediction", "epsilon", "v"]);
}

/// A single-file pack (`checkpoint = "path"` with `model_config`, `prediction`): validated by
/// `beeswax check`, run by `generate --pack`, served by `beeswax serve`; its mistakes are named
/// by file, line and field.
#[tokio::test(flavor = "multi_thread")]
async fn single_file_packs_are_checked_generated_and_served() {
    use common::command::toml_path;
    use common::server::{get, submit, wait_status, TestServer};
    let pack = |name: &str, family: &str, file: &str, config: &str, extra: &str| {
        format!(
            "[pack]\nname = \"{name}\"\nfamily = \"{family}\"\ncheckpoint = {}\n\
             model_config = {}\n{extra}\n[pack.defaults]\nsteps = 2\nwidth = 48\nheight = 32\n",
            toml_path(&single(file)),
            toml_path(&single(&format!("models/{config}")))
        )
    };
    let sd1 = pack("mini", "sd1", "mini-sd1.f16.safetensors", "mini-sd1", "");
    let sd2 = pack(
        "mini-v",
        "sd2-v",
        "mini-sd2-v.f16.safetensors",
        "mini-sd2-v",
        "prediction = \"v\"\n",
    );
    // The family may be left to detection.
    let auto = pack("auto", "sd1", "mini-sd1.f16.safetensors", "mini-sd1", "")
        .replace("family = \"sd1\"\n", "");
    let dir = Dir::new("single-packs");
    let manifests = dir.manifests(
        "manifests",
        &[
            ("mini.toml", &sd1),
            ("mini-v.toml", &sd2),
            ("auto.toml", &auto),
        ],
    );
    let out = dir.command().manifests(&manifests).arg("check").stdout();
    assert!(out.contains("3 pack(s)"), "{out}");
    for name in ["mini", "mini-v", "auto"] {
        dir.command()
            .manifests(&manifests)
            .args(["generate", "--pack", name, "--prompt", "a fox", "--output"])
            .arg(dir.join(format!("{name}.png")))
            .run();
        let png = common::images::Png::read(&dir.join(format!("{name}.png")));
        assert_eq!(png.size(), (48, 32));
    }
    // A pack of the wrong family, and a bad prediction value.
    let wrong = pack("wrong", "sdxl", "mini-sd1.f16.safetensors", "mini-sd1", "");
    let bad = dir.manifests("bad", &[("wrong.toml", &wrong)]);
    dir.command()
        .manifests(&bad)
        .arg("check")
        .assert_fails_with(&["wrong.toml", "pack.checkpoint", "declared family `sdxl`"]);
    let odd = pack(
        "odd",
        "sd1",
        "mini-sd1.f16.safetensors",
        "mini-sd1",
        "prediction = \"x\"\n",
    );
    let bad = dir.manifests("odd", &[("odd.toml", &odd)]);
    dir.command()
        .manifests(&bad)
        .arg("check")
        .assert_fails_with(&["odd.toml:", "pack.prediction", "epsilon"]);

    let server = TestServer::start_with(Default::default(), &[("mini.toml", &sd1)]).await;
    let id = submit(
        &server.url,
        serde_json::json!({"pipeline": "mini", "prompt": "a fox", "seed": 2}),
    )
    .await;
    wait_status(&server.url, &id, "completed").await;
    let png = get(&server.at(&format!("/v1/jobs/{id}/images/0"))).await;
    let png = common::images::Png::decode(&png.bytes().await.unwrap());
    assert_eq!(png.size(), (48, 32));
    server.stop().await;
}
