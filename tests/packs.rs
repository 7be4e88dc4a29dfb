//! Model packs: manifest parsing and validation, the Hugging Face cache lookup, and locating
//! files in diffusers model folders.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;

use beeswax::hub;
use beeswax::manifest::{self, PackSource};
use beeswax::model_files;
use common::command::Dir;

// ---------------------------------------------------------------- manifests

const GOOD: &str = r#"[pack]
name = "tiny"
family = "sd1"
path = "models/tiny"
"#;

/// The error message `text` produces as `packs/bad.toml`.
fn manifest_error(text: &str) -> String {
    match manifest::parse(Path::new("packs/bad.toml"), text) {
        Ok(pack) => panic!("expected an error, got {pack:?}"),
        Err(err) => err.to_string(),
    }
}

/// Asserts `message` names the file, `line` and `field`, and contains every `also`.
fn assert_names(message: &str, line: usize, field: &str, also: &[&str]) {
    let at = format!("packs/bad.toml:{line}:");
    assert!(message.contains(&at), "missing `{at}` in: {message}");
    assert!(
        message.contains(&format!("`{field}`")),
        "missing field `{field}` in: {message}"
    );
    for part in also {
        assert!(message.contains(part), "missing `{part}` in: {message}");
    }
}

#[test]
fn full_manifest_parses() {
    let text = r#"
[pack]
name = "tiny"
family = "sd2"
description = "a test pack"
path = "../models/tiny"

[pack.defaults]
steps = 20
guidance = 7
scheduler = "euler"
width = 64
height = 128
negative_prompt = "blurry"
clip_skip = 2
"#;
    let pack = manifest::parse(Path::new("packs/tiny.toml"), text)
        .unwrap()
        .unwrap();
    assert_eq!(pack.name, "tiny");
    assert_eq!(pack.family.unwrap().as_str(), "sd2");
    assert_eq!(pack.description.as_deref(), Some("a test pack"));
    assert_eq!(pack.manifest_path, Path::new("packs/tiny.toml"));
    let PackSource::Path(path) = &pack.source else {
        panic!("expected a path source, got {:?}", pack.source);
    };
    assert!(path.is_absolute(), "{path:?}");
    assert!(path.ends_with("packs/../models/tiny"), "{path:?}");
    let d = &pack.defaults;
    assert_eq!(d.steps, Some(20));
    assert_eq!(d.guidance, Some(7.0));
    assert_eq!(d.scheduler.as_deref(), Some("euler"));
    assert_eq!((d.width, d.height), (Some(64), Some(128)));
    assert_eq!(d.negative_prompt.as_deref(), Some("blurry"));
    assert_eq!(d.clip_skip, Some(2));
}

#[test]
fn repo_source_defaults_to_main() {
    let text = "[pack]\nname = \"x\"\nfamily = \"sd1\"\nrepo = \"org/model\"\n";
    let pack = manifest::parse(Path::new("x.toml"), text).unwrap().unwrap();
    let expected = PackSource::Hub {
        repo: "org/model".into(),
        revision: "main".into(),
    };
    assert_eq!(pack.source, expected);
    assert_eq!(pack.defaults, manifest::PackDefaults::default());

    let text = format!("{text}revision = \"v1.0\"\n");
    let pack = manifest::parse(Path::new("x.toml"), &text)
        .unwrap()
        .unwrap();
    assert!(matches!(pack.source, PackSource::Hub { revision, .. } if revision == "v1.0"));
}

#[test]
fn file_without_pack_is_skipped() {
    assert!(manifest::parse(Path::new("empty.toml"), "# nothing yet\n")
        .unwrap()
        .is_none());
}

#[test]
fn syntax_error_names_line() {
    let message = manifest_error("[pack]\nname = \"tiny\nfamily = \"sd1\"\n");
    assert!(message.contains("packs/bad.toml:2:"), "{message}");
    assert!(message.contains("invalid TOML"), "{message}");
}

#[test]
fn unknown_field_is_named() {
    let message = manifest_error(&format!("{GOOD}colour = \"red\"\n"));
    assert_names(&message, 5, "colour", &["not a known field", "`name`"]);
}

#[test]
fn unknown_default_is_named_with_its_table() {
    let message = manifest_error(&format!("{GOOD}[pack.defaults]\nsteps = 4\nseed = 1\n"));
    assert_names(
        &message,
        7,
        "pack.defaults.seed",
        &["not a known field", "`steps`"],
    );
}

#[test]
fn unknown_top_level_table_is_refused() {
    // `[[plugin]]` is a known table since issue 5; an unknown one is still refused.
    let message = manifest_error(&format!("{GOOD}\n[[widget]]\nname = \"x\"\n"));
    assert_names(
        &message,
        6,
        "widget",
        &["[pack], [[pipeline]], [[lora]], [[lora_set]], [[plugin]], [[embedding]] and [family]"],
    );
}

#[test]
fn wrong_type_is_named() {
    let message = manifest_error(&format!("{GOOD}[pack.defaults]\nsteps = \"20\"\n"));
    assert_names(
        &message,
        6,
        "pack.defaults.steps",
        &["wrong type", "whole number"],
    );

    let message = manifest_error("[pack]\nname = 3\nfamily = \"sd1\"\npath = \"p\"\n");
    assert_names(&message, 2, "pack.name", &["wrong type", "string"]);

    let message = manifest_error(&format!("{GOOD}[pack.defaults]\nguidance = \"high\"\n"));
    assert_names(&message, 6, "pack.defaults.guidance", &["a number"]);
}

#[test]
fn missing_field_is_named() {
    let message = manifest_error("\n[pack]\nfamily = \"sd1\"\npath = \"p\"\n");
    assert_names(&message, 2, "pack.name", &["required", "name = "]);
}

#[test]
fn misspelt_family_is_named() {
    let message = manifest_error("[pack]\nname = \"x\"\nfamily = \"SD XL\"\npath = \"p\"\n");
    assert_names(
        &message,
        3,
        "pack.family",
        &["`SD XL`", "not a family name"],
    );
}

#[test]
fn empty_name_is_refused() {
    let message = manifest_error("[pack]\nname = \"  \"\nfamily = \"sd1\"\npath = \"p\"\n");
    assert_names(&message, 2, "pack.name", &["empty"]);
}

#[test]
fn path_and_repo_are_exclusive() {
    let message = manifest_error(&format!("{GOOD}repo = \"org/name\"\n"));
    assert_names(&message, 5, "pack.repo", &["line 4", "not both"]);

    let message = manifest_error("# header\n[pack]\nname = \"x\"\nfamily = \"sd1\"\n");
    assert_names(&message, 2, "pack.path", &["repo = "]);
}

#[test]
fn repo_and_revision_are_checked() {
    let base = "[pack]\nname = \"x\"\nfamily = \"sd1\"\n";
    let message = manifest_error(&format!("{base}repo = \"not a repo\"\n"));
    assert_names(&message, 4, "pack.repo", &["org/name"]);

    let message = manifest_error(&format!("{GOOD}revision = \"main\"\n"));
    assert_names(&message, 5, "pack.revision", &["only applies to `repo`"]);

    let message = manifest_error(&format!("{base}repo = \"a/b\"\nrevision = \"\"\n"));
    assert_names(&message, 5, "pack.revision", &["empty"]);
}

#[test]
fn out_of_range_defaults_state_the_range() {
    let cases = [
        ("steps = 0", "pack.defaults.steps", "between 1 and 1000"),
        ("steps = -5", "pack.defaults.steps", "between 1 and 1000"),
        (
            "guidance = 101.0",
            "pack.defaults.guidance",
            "between 0 and 100",
        ),
        (
            "guidance = nan",
            "pack.defaults.guidance",
            "between 0 and 100",
        ),
        ("width = 100", "pack.defaults.width", "multiple of 8"),
        ("height = 0", "pack.defaults.height", "between 8 and 8192"),
        (
            "clip_skip = 0",
            "pack.defaults.clip_skip",
            "between 1 and 48",
        ),
        ("scheduler = \"\"", "pack.defaults.scheduler", "empty"),
    ];
    for (line, field, range) in cases {
        let message = manifest_error(&format!("{GOOD}\n[pack.defaults]\n{line}\n"));
        assert_names(&message, 7, field, &[range]);
    }
}

fn pack_text(name: &str) -> String {
    format!("[pack]\nname = \"{name}\"\nfamily = \"sd1\"\npath = \"models/{name}\"\n")
}

#[test]
fn load_dir_reads_sorted_toml_files() {
    let dir = Dir::new("packs");
    dir.create("b.toml", pack_text("beta"));
    dir.create("a.toml", pack_text("alpha"));
    dir.create("notes.txt", "not a manifest");
    dir.create("later.toml", "# no [pack] table\n");
    let packs = common::manifests::packs(dir.path()).unwrap();
    let names: Vec<&str> = packs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(packs[0].manifest_path, dir.path().join("a.toml"));
    assert_eq!(
        packs[0].source,
        PackSource::Path(dir.path().join("models/alpha"))
    );
}

#[test]
fn load_dir_reports_the_bad_file() {
    let dir = Dir::new("packs");
    dir.create("a.toml", pack_text("alpha"));
    let bad = dir.create("b.toml", "[pack]\nname = \"beta\"\n");
    let message = common::manifests::packs(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&format!("{}:1:", bad.display())),
        "{message}"
    );
    assert!(message.contains("`pack.family`"), "{message}");
}

#[test]
fn duplicate_names_name_both_files() {
    let dir = Dir::new("packs");
    let first = dir.create("a.toml", pack_text("same"));
    let second = dir.create("b.toml", format!("\n{}", pack_text("same")));
    let message = common::manifests::packs(dir.path())
        .unwrap_err()
        .to_string();
    assert!(message.contains("`same`"), "{message}");
    assert!(
        message.contains(&format!("{}:2", first.display())),
        "{message}"
    );
    assert!(
        message.contains(&format!("{}:3", second.display())),
        "{message}"
    );
}

#[test]
fn missing_dir_is_named() {
    let dir = Dir::new("packs");
    let missing = dir.path().join("nope");
    let message = common::manifests::packs(&missing).unwrap_err().to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("--manifests"), "{message}");
}

#[test]
fn find_pack_lists_available_packs() {
    let dir = Dir::new("packs");
    dir.create("a.toml", pack_text("alpha"));
    dir.create("b.toml", pack_text("beta"));
    assert_eq!(
        common::manifests::find_pack(dir.path(), "beta")
            .unwrap()
            .name,
        "beta"
    );
    let message = common::manifests::find_pack(dir.path(), "gamma")
        .unwrap_err()
        .to_string();
    assert!(message.contains("`gamma`"), "{message}");
    assert!(message.contains("alpha, beta"), "{message}");
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
}

#[test]
fn committed_manifests_parse() {
    let dir = common::root().join("manifests");
    let packs = common::manifests::packs(&dir).unwrap();
    let tiny = packs.iter().find(|p| p.name == "tiny-sd").unwrap();
    assert_eq!(tiny.family.as_ref().unwrap().as_str(), "sd1");
    assert_eq!(tiny.defaults.steps, Some(20));
    assert_eq!(tiny.defaults.guidance, Some(7.5));
    assert_eq!(tiny.defaults.scheduler.as_deref(), Some("euler"));
    assert_eq!(
        (tiny.defaults.width, tiny.defaults.height),
        (Some(64), Some(64))
    );
    let PackSource::Path(path) = &tiny.source else {
        panic!("tiny-sd should be a local pack");
    };
    assert!(path.ends_with("tests/fixtures/models/tiny-sd"), "{path:?}");
}

#[test]
fn tiny_sd_pack_points_at_a_diffusers_folder() {
    let dir = common::root().join("manifests");
    let pack = common::manifests::find_pack(&dir, "tiny-sd").unwrap();
    let PackSource::Path(model) = pack.source else {
        panic!("tiny-sd should be a local pack");
    };
    let index = model_files::model_index(&model).unwrap();
    assert_eq!(index.class_name, "StableDiffusionPipeline");
    for component in ["scheduler", "text_encoder", "tokenizer", "unet", "vae"] {
        assert!(index.has(component), "{component} missing from {index:?}");
    }
    model_files::weights(&model, "unet", "diffusion_pytorch_model").unwrap();
    model_files::weights(&model, "text_encoder", "model").unwrap();
    model_files::config(&model, "scheduler", "scheduler_config.json").unwrap();
}

// ---------------------------------------------------------------- hub cache

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A fake Hugging Face cache holding `org/name` at `main`.
fn fake_cache(ref_text: &str) -> Dir {
    let cache = Dir::new("hub-cache");
    cache.create("models--org--name/refs/main", ref_text);
    let snapshot = format!("models--org--name/snapshots/{COMMIT}");
    cache.create(
        format!("{snapshot}/model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline"}"#,
    );
    cache.create(format!("{snapshot}/unet/config.json"), "{}");
    cache
}

#[test]
fn hub_resolves_branch_and_commit_from_cache() {
    let cache = fake_cache(COMMIT);
    let snapshot = cache
        .path()
        .join("models--org--name/snapshots")
        .join(COMMIT);
    let by_branch = hub::resolve_in(cache.path(), "org/name", "main", false).unwrap();
    assert_eq!(by_branch, snapshot);
    assert!(by_branch.join("unet/config.json").is_file());
    let by_commit = hub::resolve_in(cache.path(), "org/name", COMMIT, false).unwrap();
    assert_eq!(by_commit, snapshot);
}

#[test]
fn hub_tolerates_trailing_newline_in_ref() {
    let cache = fake_cache(&format!("{COMMIT}\n"));
    let snapshot = hub::resolve_in(cache.path(), "org/name", "main", false).unwrap();
    assert!(snapshot.ends_with(COMMIT), "{snapshot:?}");
}

#[test]
fn hub_missing_repo_suggests_download() {
    let cache = fake_cache(COMMIT);
    for (repo, revision) in [("org/other", "main"), ("org/name", "dev")] {
        let message = hub::resolve_in(cache.path(), repo, revision, false)
            .unwrap_err()
            .to_string();
        assert!(message.contains(repo), "{message}");
        assert!(message.contains(revision), "{message}");
        assert!(message.contains("--allow-download"), "{message}");
        assert!(message.contains("huggingface-cli download"), "{message}");
        assert!(
            message.contains(&cache.path().display().to_string()),
            "{message}"
        );
    }
}

#[test]
fn hub_refuses_malformed_ids() {
    let cache = fake_cache(COMMIT);
    let err = hub::resolve_in(cache.path(), "../etc", "main", false).unwrap_err();
    assert!(err.to_string().contains("org/name"), "{err}");
    let err = hub::resolve_in(cache.path(), "org/name", "../../x", false).unwrap_err();
    assert!(err.to_string().contains("`../../x`"), "{err}");
}

// ---------------------------------------------------------------- model folders

#[test]
fn weights_prefer_full_precision_then_fp16() {
    let dir = Dir::new("packs");
    let fp16 = dir.create("unet/diffusion_pytorch_model.fp16.safetensors", "");
    let found = model_files::weights(dir.path(), "unet", "diffusion_pytorch_model").unwrap();
    assert_eq!(found, fp16);
    let full = dir.create("unet/diffusion_pytorch_model.safetensors", "");
    let found = model_files::weights(dir.path(), "unet", "diffusion_pytorch_model").unwrap();
    assert_eq!(found, full);
}

#[test]
fn pickle_weights_are_refused_with_advice() {
    let dir = Dir::new("packs");
    let pickle = dir.create("text_encoder/pytorch_model.bin", "");
    let message = model_files::weights(dir.path(), "text_encoder", "model")
        .unwrap_err()
        .to_string();
    assert!(message.contains(&pickle.display().to_string()), "{message}");
    assert!(message.contains("arbitrary code"), "{message}");
    assert!(message.contains("safetensors"), "{message}");
    assert!(message.contains("convert"), "{message}");
    let expected = dir.path().join("text_encoder/model.safetensors");
    assert!(
        message.contains(&expected.display().to_string()),
        "{message}"
    );
}

#[test]
fn missing_files_are_named() {
    let dir = Dir::new("packs");
    let message = model_files::weights(dir.path(), "vae", "diffusion_pytorch_model")
        .unwrap_err()
        .to_string();
    let expected = dir.path().join("vae/diffusion_pytorch_model.safetensors");
    assert!(
        message.contains(&expected.display().to_string()),
        "{message}"
    );

    let message = model_files::config(dir.path(), "vae", "config.json")
        .unwrap_err()
        .to_string();
    let expected = dir.path().join("vae/config.json");
    assert!(
        message.contains(&expected.display().to_string()),
        "{message}"
    );

    let message = model_files::model_index(dir.path())
        .unwrap_err()
        .to_string();
    let expected = dir.path().join("model_index.json");
    assert!(
        message.contains(&expected.display().to_string()),
        "{message}"
    );
}

#[test]
fn config_found() {
    let dir = Dir::new("packs");
    let path = dir.create("scheduler/scheduler_config.json", "{}");
    let found = model_files::config(dir.path(), "scheduler", "scheduler_config.json").unwrap();
    assert_eq!(found, path);
}

#[test]
fn model_index_lists_present_components() {
    let dir = Dir::new("packs");
    let index = r#"{
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "tokenizer": ["transformers", "CLIPTokenizer"]
    }"#;
    dir.create("model_index.json", index);
    let index = model_files::model_index(dir.path()).unwrap();
    assert_eq!(index.class_name, "StableDiffusionPipeline");
    assert_eq!(index.components, ["tokenizer", "unet", "vae"]);
    assert!(index.has("unet") && !index.has("safety_checker"));

    dir.create("model_index.json", "{\"unet\": 3}");
    let message = model_files::model_index(dir.path())
        .unwrap_err()
        .to_string();
    assert!(message.contains("_class_name"), "{message}");
}

#[test]
fn single_checkpoint_file_needs_a_folder() {
    let dir = Dir::new("packs");
    let file = dir.create("v1-5-pruned.safetensors", "");
    let message = model_files::model_index(&file).unwrap_err().to_string();
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("diffusers model folder"), "{message}");

    let missing = dir.path().join("nowhere");
    let message = model_files::model_index(&missing).unwrap_err().to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.contains("does not exist"), "{message}");
}

/// The manifest's `family` selects the code that runs a pack, so a pack whose files are of
/// another family is refused, naming both (an `sd2` pack over an SD 1.x folder used to load).
#[test]
fn a_pack_whose_files_disagree_with_its_family_is_refused() {
    use beeswax::family;
    let options = common::cpu_f32();
    let err = family::load(&common::model_dir("tiny-sd"), Some("sd2"), &options)
        .unwrap_err()
        .to_string();
    for needle in [
        "declared family `sd2`",
        "hidden_act",
        "quick_gelu",
        "family `sd1`",
    ] {
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
    let err = family::load(&common::model_dir("tiny-sd"), Some("sdx"), &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sdx") && err.contains("sd1, sd1-inpaint, sd2") && err.contains("sdxl"),
        "{err}"
    );
    // Without a declared family, the files decide (the most specific family first); a
    // declared general family still loads a specific folder.
    for (model, family) in [
        ("tiny-sd", "sd1"),
        ("tiny-sd2", "sd2-v"),
        ("tiny-sd-inpaint", "sd1-inpaint"),
        ("tiny-sdxl", "sdxl"),
        ("tiny-sdxl-refiner", "sdxl-refiner"),
        ("tiny-sdxl-inpaint", "sdxl-inpaint"),
        ("tiny-sdxl-turbo", "sdxl"),
    ] {
        let m = family::load(&common::model_dir(model), None, &options).unwrap();
        assert_eq!(m.family.name, family, "{model}");
    }
    let m = family::load(&common::model_dir("tiny-sd2"), Some("sd2"), &options).unwrap();
    assert_eq!(m.family.name, "sd2");
}
