//! LoRAs declared in manifests (`[[lora]]`, sets, hashes) and their errors, and the CLI's LoRA
//! flags and prompt tags recorded in the PNG. Parity of the merged weights is in `lora.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use beeswax::lora::catalog::{self, LoraSource};
use beeswax::lora::{LoraCatalog, LoraRequest, WeightRange};
use beeswax::manifest::{self, ManifestFiles};
use common::lora::lora_path;
use common::{fixture, root};

/// A manifest folder with two LoRAs and a set, plus the tiny-sd pack.
fn manifest_dir(tmp: &Path, sha_of_kohya: &str) -> PathBuf {
    let dir = tmp.join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let pack = std::fs::read_to_string(root().join("manifests/tiny-sd.toml")).unwrap();
    let models = fixture("models").display().to_string();
    std::fs::write(
        dir.join("tiny-sd.toml"),
        pack.replace("../tests/fixtures/models", &models),
    )
    .unwrap();
    let lora = fixture("lora/tiny-sd").display().to_string();
    std::fs::write(
        dir.join("loras.toml"),
        format!(
            r#"
[[lora]]
name = "fox-style"
path = "{lora}/kohya.safetensors"
sha256 = "{sha_of_kohya}"
weight = 0.8
triggers = ["foxstyle"]

[[lora]]
name = "snow"
path = "{lora}/peft.safetensors"

[[lora_set]]
name = "winter-fox"
loras = [{{ name = "fox-style", weight = 0.5 }}, {{ name = "snow" }}]
"#
        ),
    )
    .unwrap();
    dir
}

/// The LoRA catalog of manifest folder `dir`, read and parsed once.
fn load_catalog(dir: &Path) -> beeswax::Result<LoraCatalog> {
    let files = ManifestFiles::read(dir)?;
    Ok(LoraCatalog::from_manifests(&files.parse()?)?)
}

#[test]
fn manifests_declare_loras_and_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let kohya = lora_path("tiny-sd", "kohya.safetensors");
    let sha = catalog::sha256_hex(&std::fs::read(&kohya).unwrap());
    let dir = manifest_dir(tmp.path(), &sha);
    // The pack manifests still load with [[lora]] tables beside them.
    let files = ManifestFiles::read(&dir).unwrap();
    let folder = files.parse().unwrap();
    assert_eq!(
        manifest::find_pack(&folder, "tiny-sd").unwrap().name,
        "tiny-sd"
    );
    let mut cat = LoraCatalog::from_manifests(&folder).unwrap();
    assert_eq!(cat.entries.len(), 2);
    assert_eq!(
        cat.entry("fox-style").unwrap().source,
        LoraSource::Path(kohya.clone())
    );
    let req = |name: &str, weight: Option<f64>| LoraRequest {
        name: name.into(),
        weight,
    };

    // Defaults, explicit weights, and sets (weights multiplied).
    let r = cat.resolve(&[req("fox-style", None)], false).unwrap();
    assert_eq!(
        (r[0].weight, r[0].triggers.clone()),
        (0.8, vec!["foxstyle".to_string()])
    );
    let r = cat
        .resolve(&[req("winter-fox", Some(-2.0))], false)
        .unwrap();
    let got: Vec<(String, f64)> = r.into_iter().map(|r| (r.name, r.weight)).collect();
    assert_eq!(got, vec![("fox-style".into(), -1.0), ("snow".into(), -2.0)]);
    let loaded = cat.prepare(&[req("winter-fox", None)], false).unwrap();
    assert_eq!(loaded.len(), 2);

    // Unknown names list the known ones; files are refused unless allowed.
    let path = kohya.display().to_string();
    for name in ["nope", path.as_str()] {
        let err = cat
            .resolve(&[req(name, None)], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("unknown LoRA `{name}`")), "{err}");
        assert!(
            err.contains("fox-style, snow") && err.contains("winter-fox"),
            "{err}"
        );
    }
    assert_eq!(
        cat.resolve(&[req(&path, Some(0.3))], true).unwrap()[0].name,
        "kohya"
    );

    // Weights out of the (configurable) range.
    let err = cat
        .resolve(&[req("snow", Some(7.0))], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weight 7 is outside the allowed range -5 to 5"),
        "{err}"
    );
    cat.range = WeightRange {
        min: -1.0,
        max: 1.0,
    };
    let err = cat
        .resolve(&[req("winter-fox", Some(-3.0))], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`fox-style`: weight -1.5 is outside the allowed range -1 to 1"),
        "{err}"
    );
    assert!(cat.resolve(&[req("snow", Some(-1.0))], false).is_ok());

    // A wrong hash.
    let bad = manifest_dir(&tmp.path().join("bad"), &"0".repeat(64));
    let cat = load_catalog(&bad).unwrap();
    let err = cat
        .prepare(&[req("fox-style", None)], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256 is") && err.contains(&sha), "{err}");
}

#[test]
fn manifest_errors_name_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("[[lora]]\nname = \"x\"\n", "lora.path", "is missing"),
        (
            "[[lora]]\nname = \"x\"\npath = \"x.ckpt\"\n",
            "lora.path",
            "not a .safetensors file",
        ),
        (
            "[[lora]]\nname = \"x y\"\npath = \"x.safetensors\"\n",
            "lora.name",
            "not a usable name",
        ),
        (
            "[[lora]]\nname = \"x\"\npath = \"x.safetensors\"\nweight = 9.0\n",
            "lora.weight",
            "between -5 and 5",
        ),
        (
            "[[lora]]\nname = \"x\"\nrepo = \"org/x\"\n",
            "lora.file",
            "is required with `repo`",
        ),
        (
            "[[lora]]\nname = \"x\"\npath = \"x.safetensors\"\nsha256 = \"abc\"\n",
            "lora.sha256",
            "64 hexadecimal",
        ),
        (
            "[[lora_set]]\nname = \"s\"\nloras = [{ name = \"ghost\" }]\n",
            "lora_set.loras.name",
            "`ghost` is not a [[lora]]",
        ),
    ];
    for (i, (text, field, message)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("m{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bad.toml"), text).unwrap();
        let err = load_catalog(&dir).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml:") && err.contains(field) && err.contains(message),
            "{err}"
        );
    }
    // Types are checked by the catalog, which reads its own tables, naming the field.
    let dir = tmp.path().join("types");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.toml"), "[[lora]]\nname = \"x\"\npath = 3\n").unwrap();
    let err = load_catalog(&dir).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml:3: `lora.path` has the wrong type"),
        "{err}"
    );
    // A misspelt table is refused with every table a manifest may hold.
    std::fs::write(dir.join("bad.toml"), "[[loras]]\nname = \"x\"\n").unwrap();
    let err = load_catalog(&dir).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml:1: `loras`") && err.contains("[[lora]], [[lora_set]]"),
        "{err}"
    );
}

fn png_parameters(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let start = text.find("parameters").unwrap();
    text[start..].to_string()
}

#[test]
fn cli_takes_lora_flags_and_prompt_tags_and_records_them() {
    let tmp = tempfile::tempdir().unwrap();
    let kohya = lora_path("tiny-sd", "kohya.safetensors");
    let sha = catalog::sha256_hex(&std::fs::read(&kohya).unwrap());
    let dir = manifest_dir(tmp.path(), &sha);
    let peft = lora_path("tiny-sd", "peft.safetensors")
        .display()
        .to_string();
    let m = dir.display().to_string();
    let beeswax = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_beeswax"))
            .current_dir(tmp.path())
            .env_remove("BEESWAX_MANIFESTS")
            .args([
                "--manifests",
                &m,
                "generate",
                "--pack",
                "tiny-sd",
                "--steps",
                "3",
                "--seed",
                "5",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let prompt = "a red fox <lora:fox-style:0.6>, snow";
    let peft_flag = format!("{peft}:-0.5");
    let out = beeswax(&[
        "--prompt", prompt, "--lora", &peft_flag, "--output", "a.png",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("LoRA fox-style at 0.6") && err.contains("LoRA peft at -0.5"),
        "{err}"
    );
    assert!(err.contains("trigger words foxstyle"), "{err}");
    let params = png_parameters(&tmp.path().join("a.png"));
    assert!(
        params.contains("a red fox <lora:fox-style:0.6>, snow <lora:peft:-0.5>"),
        "{params}"
    );

    // The same LoRAs by flags only give the same pixels (the tag text is not encoded).
    let out = beeswax(&[
        "--prompt",
        "a red fox , snow",
        "--lora",
        "fox-style:0.6",
        "--lora",
        &peft_flag,
        "--output",
        "b.png",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pixels = |name: &str| common::png_pixels(&tmp.path().join(name));
    assert_eq!(pixels("a.png"), pixels("b.png"));
    let out = beeswax(&["--prompt", "a red fox", "--output", "c.png"]);
    assert!(out.status.success());
    assert_ne!(pixels("a.png"), pixels("c.png"), "the LoRAs change nothing");

    // Errors: unknown name (lists the known ones), weight out of the configured range, bad tag.
    for (args, needle) in [
        (
            vec!["--prompt", "x", "--lora", "ghost"],
            "unknown LoRA `ghost`: known LoRAs: fox-style, snow",
        ),
        (
            vec![
                "--prompt",
                "x",
                "--lora",
                "snow:3",
                "--lora-weight-range",
                "-2:2",
            ],
            "weight 3 is outside the allowed range -2 to 2",
        ),
        (
            vec!["--prompt", "x <lora:snow:lots>"],
            "invalid LoRA spec `<lora:snow:lots>`",
        ),
        (
            vec!["--prompt", "x", "--lora", "snow:lots"],
            "the weight `lots` is not a number",
        ),
    ] {
        let out = beeswax(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle) && !err.contains("panicked"),
            "{err}"
        );
    }
}
