//! `beeswax check` refuses what `beeswax serve` refuses (issue 20, finding 6): for each way a
//! manifest folder can be wrong, `check` fails naming the file and field, and `serve`, on the
//! same folder, refuses to start with the same message. A valid folder passes both.

use crate::common::command::{pack_toml, toml_path, Dir};
use crate::common::fixture;
use crate::common::server::{serve_refuses, tiny_manifests, ServeProcess};

/// The tiny-sd pack, named `tiny`.
fn tiny() -> String {
    pack_toml("tiny", "tiny-sd", "")
}

/// A LoRA file of the fixtures, as a TOML string.
fn lora_file() -> String {
    toml_path(&fixture("lora/tiny-sd/kohya.safetensors"))
}

/// Writes `files` as manifests of a new folder; `check` must fail and `serve` refuse, both
/// with every one of `needles` in their messages. Returns `check`'s stderr.
fn both_refuse(name: &str, files: &[(&str, &str)], needles: &[&str]) -> String {
    let dir = Dir::new(name);
    let manifests = dir.manifests("manifests", files);
    both_refuse_in(&dir, &manifests, needles)
}

fn both_refuse_in(dir: &Dir, manifests: &std::path::Path, needles: &[&str]) -> String {
    let check = (dir.command().manifests(manifests).arg("check")).assert_fails_with(needles);
    let serve = serve_refuses(manifests);
    for needle in needles {
        assert!(
            serve.contains(needle),
            "`check` found {needle:?} but `serve` said:\n{serve}\n(check said:\n{check})"
        );
    }
    check
}

#[test]
fn a_valid_folder_passes_check_and_serves() {
    let dir = Dir::new("check-valid");
    let manifests = tiny_manifests(&dir.create_dir("manifests"));
    let out = dir.command().manifests(&manifests).arg("check").stdout();
    assert!(out.starts_with("ok: 1 manifest file(s)"), "{out}");
    drop(ServeProcess::start(&[]));
}

#[test]
fn duplicate_lora_names() {
    let lora = format!("[[lora]]\nname = \"x\"\npath = {}\n", lora_file());
    let text = format!("{}\n{lora}\n{lora}", tiny());
    both_refuse(
        "check-dup-lora",
        &[("a.toml", &text)],
        &["a.toml:", "`lora.name` `x` is defined twice"],
    );
}

#[test]
fn duplicate_pipeline_names() {
    let p = "[[pipeline]]\nname = \"p\"\npack = \"tiny\"\n";
    let text = format!("{}\n{p}\n{p}", tiny());
    both_refuse(
        "check-dup-pipeline",
        &[("a.toml", &tiny()), ("b.toml", &text.replace(&tiny(), ""))],
        &["b.toml:", "`pipeline.name` `p` is defined twice"],
    );
}

#[test]
fn a_pipeline_named_like_a_pack() {
    let text = format!(
        "{}\n[[pipeline]]\nname = \"tiny\"\npack = \"tiny\"\n",
        tiny()
    );
    both_refuse(
        "check-pipeline-pack",
        &[("a.toml", &text)],
        &["a.toml:", "`pipeline.name` `tiny` is already a pack name"],
    );
}

#[test]
fn an_unknown_pack() {
    let text = format!("{}\n[[pipeline]]\nname = \"p\"\npack = \"nope\"\n", tiny());
    both_refuse(
        "check-unknown-pack",
        &[("a.toml", &text)],
        &["a.toml:", "`pipeline.pack`", "`nope`"],
    );
}

#[test]
fn an_unknown_post_processor() {
    let text = format!(
        "{}\n[[pipeline]]\nname = \"p\"\npack = \"tiny\"\npost_processors = [\"sharpen\"]\n",
        tiny()
    );
    both_refuse(
        "check-unknown-post",
        &[("a.toml", &text)],
        &["a.toml:", "`pipeline.post_processors`", "`sharpen`"],
    );
}

#[test]
fn bad_limits() {
    let text = format!(
        "{}\n[[pipeline]]\nname = \"p\"\npack = \"tiny\"\n\n[pipeline.limits]\nmax_steps = 0\n",
        tiny()
    );
    both_refuse(
        "check-bad-limits",
        &[("a.toml", &text)],
        &["a.toml:", "`pipeline.limits.max_steps`", "(got 0)"],
    );
}

#[test]
fn a_lora_that_is_not_safetensors() {
    let path = toml_path(&fixture("models/tiny-sd/unet/config.json"));
    let text = format!("{}\n[[lora]]\nname = \"x\"\npath = {path}\n", tiny());
    both_refuse(
        "check-lora-json",
        &[("a.toml", &text)],
        &["a.toml:", "`lora.path`", "is not a .safetensors file"],
    );
}

#[test]
fn a_malformed_sha256() {
    let text = format!(
        "{}\n[[lora]]\nname = \"x\"\npath = {}\nsha256 = \"xyz\"\n",
        tiny(),
        lora_file()
    );
    both_refuse(
        "check-sha-malformed",
        &[("a.toml", &text)],
        &["a.toml:", "`lora.sha256`", "64 hexadecimal digits"],
    );
}

#[test]
fn a_wrong_sha256() {
    let text = format!(
        "{}\n[[lora]]\nname = \"x\"\npath = {}\nsha256 = \"{}\"\n",
        tiny(),
        lora_file(),
        "ab".repeat(32)
    );
    both_refuse(
        "check-sha-wrong",
        &[("a.toml", &text)],
        &["a.toml", "`lora.sha256` of [[lora]] `x`", "SHA-256 is "],
    );
}

#[test]
fn a_missing_lora_file() {
    let dir = Dir::new("check-lora-missing");
    let text = format!(
        "{}\n[[lora]]\nname = \"x\"\npath = \"loras/gone.safetensors\"\n",
        tiny()
    );
    let manifests = dir.manifests("manifests", &[("a.toml", &text)]);
    both_refuse_in(
        &dir,
        &manifests,
        &["a.toml", "`lora.path` of [[lora]] `x`", "gone.safetensors"],
    );
}

#[test]
fn unet_weights_that_are_not_safetensors() {
    let dir = Dir::new("check-unet-bin");
    let model = dir.copy_model("tiny-sd", "model");
    let unet = model.join("unet");
    std::fs::rename(
        unet.join("diffusion_pytorch_model.safetensors"),
        unet.join("diffusion_pytorch_model.bin"),
    )
    .unwrap();
    let text = format!(
        "[pack]\nname = \"tiny\"\nfamily = \"sd1\"\npath = {}\n\n[[pipeline]]\nname = \"p\"\n\
         pack = \"tiny\"\n",
        toml_path(&model)
    );
    let manifests = dir.manifests("manifests", &[("a.toml", &text)]);
    both_refuse_in(
        &dir,
        &manifests,
        &["diffusion_pytorch_model.bin", "is a pickle file"],
    );
    // `check` says which manifest and field lead to the file.
    (dir.command().manifests(&manifests).arg("check"))
        .assert_fails_with(&["a.toml", "`pack.path` of pack tiny"]);
}

#[test]
fn a_hub_revision_outside_the_cache() {
    let pack =
        "[pack]\nname = \"hub\"\nfamily = \"sd1\"\nrepo = \"org/name\"\nrevision = \"../..\"\n";
    both_refuse(
        "check-pack-revision",
        &[("a.toml", &tiny()), ("hub.toml", pack)],
        &["hub.toml:5", "`pack.revision` `../..` is not a revision"],
    );
    let lora = "[[lora]]\nname = \"x\"\nrepo = \"org/name\"\nfile = \"x.safetensors\"\n\
                revision = \"a/../../b\"\n";
    both_refuse(
        "check-lora-revision",
        &[("a.toml", &tiny()), ("l.toml", lora)],
        &["l.toml:5", "`lora.revision` `a/../../b` is not a revision"],
    );
}

#[test]
fn a_toml_syntax_error_is_reported_once_and_not_as_a_plugin_problem() {
    let text = format!("{}\n[[pipeline]\nname = \"p\"\n", tiny());
    let check = both_refuse(
        "check-syntax",
        &[("a.toml", &text)],
        &["a.toml:6: invalid TOML"],
    );
    assert_eq!(check.matches("invalid TOML").count(), 1, "{check}");
    assert!(!check.to_lowercase().contains("plugin"), "{check}");
}
