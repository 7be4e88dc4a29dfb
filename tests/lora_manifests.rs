//! LoRAs declared in manifests (`[[lora]]`, sets, hashes) and their errors, and the CLI's LoRA
//! flags and prompt tags recorded in the PNG. Parity of the merged weights is in `lora.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;

use beeswax::lora::catalog::{self, LoraSource};
use beeswax::lora::{LoraRequest, WeightRange};
use common::command::{pack_toml, toml_path, Dir, TINY_SD_DEFAULTS};
use common::images::Png;
use common::lora::lora_path;

/// A manifest folder `rel` with two LoRAs and a set, plus the tiny-sd pack.
fn manifest_dir(dir: &Dir, rel: &str, sha_of_kohya: &str) -> PathBuf {
    let kohya = toml_path(&lora_path("tiny-sd", "kohya.safetensors"));
    let peft = toml_path(&lora_path("tiny-sd", "peft.safetensors"));
    let loras = format!(
        r#"
[[lora]]
name = "fox-style"
path = {kohya}
sha256 = "{sha_of_kohya}"
weight = 0.8
triggers = ["foxstyle"]

[[lora]]
name = "snow"
path = {peft}

[[lora_set]]
name = "winter-fox"
loras = [{{ name = "fox-style", weight = 0.5 }}, {{ name = "snow" }}]
"#
    );
    let pack = pack_toml("tiny-sd", "tiny-sd", TINY_SD_DEFAULTS);
    dir.manifests(rel, &[("tiny-sd.toml", &pack), ("loras.toml", &loras)])
}

/// A request for the LoRA (or set) `name` at `weight` (its default when `None`).
fn req(name: &str, weight: Option<f64>) -> LoraRequest {
    LoraRequest {
        name: name.into(),
        weight,
    }
}

/// The SHA-256 of the kohya LoRA fixture.
fn kohya_sha() -> String {
    catalog::sha256_hex(&std::fs::read(lora_path("tiny-sd", "kohya.safetensors")).unwrap())
}

#[test]
fn manifests_declare_loras_and_sets() {
    let tmp = Dir::new("lora-manifests");
    let kohya = lora_path("tiny-sd", "kohya.safetensors");
    let sha = kohya_sha();
    let dir = manifest_dir(&tmp, "manifests", &sha);
    // The pack manifests still load with [[lora]] tables beside them.
    assert_eq!(
        common::manifests::find_pack(&dir, "tiny-sd").unwrap().name,
        "tiny-sd"
    );
    let cat = common::manifests::lora_catalog(&dir).unwrap();
    assert_eq!(cat.entries.len(), 2);
    assert_eq!(
        cat.entry("fox-style").unwrap().source,
        LoraSource::Path(kohya.clone())
    );

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
}

#[test]
fn weights_out_of_range_and_wrong_hashes_are_refused() {
    let tmp = Dir::new("lora-refusals");
    let sha = kohya_sha();
    let mut cat = common::manifests::lora_catalog(&manifest_dir(&tmp, "manifests", &sha)).unwrap();
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
    let bad = manifest_dir(&tmp, "bad", &"0".repeat(64));
    let cat = common::manifests::lora_catalog(&bad).unwrap();
    let err = cat
        .prepare(&[req("fox-style", None)], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256 is") && err.contains(&sha), "{err}");
}

#[test]
fn manifest_errors_name_file_line_and_field() {
    let tmp = Dir::new("lora-manifest-errors");
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
        // Only the characters the message promises (letters, digits, `-`, `_`, `.`).
        (
            "[[lora]]\nname = \"../x\"\npath = \"x.safetensors\"\n",
            "lora.name",
            "not a usable name",
        ),
        (
            "[[lora]]\nname = \"x\\\"y\"\npath = \"x.safetensors\"\n",
            "lora.name",
            "not a usable name",
        ),
        (
            "[[lora]]\nname = \"x\\u001b[2Jy\"\npath = \"x.safetensors\"\n",
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
        let dir = tmp.manifests(format!("m{i}"), &[("bad.toml", text)]);
        let err = common::manifests::lora_catalog(&dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.toml:") && err.contains(field) && err.contains(message),
            "{err}"
        );
    }
    // Types are checked by the catalog, which reads its own tables, naming the field.
    let dir = tmp.manifests(
        "types",
        &[("bad.toml", "[[lora]]\nname = \"x\"\npath = 3\n")],
    );
    let err = common::manifests::lora_catalog(&dir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.toml:3: `lora.path` has the wrong type"),
        "{err}"
    );
    // A misspelt table is refused with every table a manifest may hold.
    let dir = tmp.manifests("typo", &[("bad.toml", "[[loras]]\nname = \"x\"\n")]);
    let err = common::manifests::lora_catalog(&dir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.toml:1: `loras`") && err.contains("[[lora]], [[lora_set]]"),
        "{err}"
    );
}

#[test]
fn cli_takes_lora_flags_and_prompt_tags_and_records_them() {
    let tmp = Dir::new("lora-cli");
    let dir = manifest_dir(&tmp, "manifests", &kohya_sha());
    let peft = lora_path("tiny-sd", "peft.safetensors");
    let peft_flag = format!("{}:-0.5", peft.display());
    let prompt = "a red fox <lora:fox-style:0.6>, snow";
    let run = |args: &[&str]| {
        let mut cmd = tmp.command();
        cmd.arg("--manifests")
            .arg(&dir)
            .args([
                "generate", "--pack", "tiny-sd", "--steps", "3", "--seed", "5",
            ])
            .args(args);
        cmd
    };
    let err = run(&[
        "--prompt", prompt, "--lora", &peft_flag, "--output", "a.png",
    ])
    .stderr();
    assert!(
        err.contains("LoRA fox-style at 0.6") && err.contains("LoRA peft at -0.5"),
        "{err}"
    );
    assert!(err.contains("trigger words foxstyle"), "{err}");
    let params = Png::read(&tmp.join("a.png")).parameters;
    assert!(
        params.contains("a red fox <lora:fox-style:0.6>, snow <lora:peft:-0.5>"),
        "{params}"
    );

    // The same LoRAs by flags only give the same pixels (the tag text is not encoded).
    let flags = ["--lora", "fox-style:0.6", "--lora", &peft_flag];
    run(&["--prompt", "a red fox , snow", "--output", "b.png"])
        .args(flags)
        .run();
    let pixels = |name: &str| Png::read(&tmp.join(name)).image;
    assert_eq!(pixels("a.png"), pixels("b.png"));
    run(&["--prompt", "a red fox", "--output", "c.png"]).run();
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
        run(&args).assert_fails_with(&[needle]);
    }
}
