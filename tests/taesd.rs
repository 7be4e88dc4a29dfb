//! The tiny autoencoder (TAESD, diffusers' `AutoencoderTiny`) against diffusers: its decoder and
//! encoder alone, in the diffusers layout and TAESD's original one, and tiny-sd's text-to-image
//! and image-to-image pipelines with it as the VAE (references by
//! tests/fixtures/make_taesd_fixtures.py); and `--vae` replacing a model's VAE on the CLI.
#![allow(clippy::unwrap_used)]

mod common;

use beeswax::family::{find_taesd, load_pack, Families, Model, Vae};
use beeswax::image_in::{read_image, Limits};
use beeswax::manifest::{PreviewChoice, VaeChoice};
use beeswax::noise::NoiseSource;
use candle_core::{DType, Device, Tensor};
use common::command::{copy_dir, toml_path, TestCommand};
use common::compare::assert_close_rel_std;
use common::conformance::Run;
use common::images::assert_run_matches;
use common::jobs::{generate, generate_image};
use common::manifests::find_pack;
use common::reference::{cases, load};
use common::{fixture, model};

fn tiny(rel: &str) -> Vae {
    Vae::tiny(&fixture(rel), DType::F32, &Device::Cpu).unwrap()
}

/// No noise: a tiny autoencoder's encoding draws none.
struct NoNoise;

impl NoiseSource for NoNoise {
    fn randn_like(&mut self, _like: &Tensor) -> candle_core::Result<Tensor> {
        panic!("a tiny autoencoder's encoding must not draw noise")
    }
}

#[test]
fn tiny_autoencoder_matches_diffusers_in_both_layouts() {
    let r = load("reference/taesd/components.safetensors");
    for layout in [
        "models/taesd-mini",
        "models/taesd-mini-original",
        "models/taesd-mini-original/taesd_decoder.safetensors",
        "models/taesd-mini/diffusion_pytorch_model.safetensors",
    ] {
        let vae = tiny(layout);
        assert!(vae.is_tiny() && Vae::is_tiny_at(&fixture(layout)));
        assert_eq!(
            (vae.latent_channels(), vae.scale_factor()),
            (4, 8),
            "{layout}"
        );
        let decoded = vae.decode(&r["latents"]).unwrap();
        assert_close_rel_std(&format!("{layout}: decoded"), &decoded, &r["decoded"], 1e-4);
        if layout.ends_with("original") || layout.ends_with("taesd-mini") {
            let encoded = vae.encode(&r["pixels"], 1, true, &mut NoNoise).unwrap();
            assert_close_rel_std(&format!("{layout}: encoded"), &encoded, &r["encoded"], 1e-4);
        }
    }
    assert!(!Vae::is_tiny_at(&fixture("models/tiny-sd/vae")));
}

#[test]
fn a_decoder_alone_decodes_and_refuses_to_encode() {
    let r = load("reference/taesd/components.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("taesd_decoder.safetensors");
    std::fs::copy(
        fixture("models/taesd-mini-original/taesd_decoder.safetensors"),
        &lone,
    )
    .unwrap();
    let vae = Vae::tiny(&lone, DType::F32, &Device::Cpu).unwrap();
    vae.decode(&r["latents"]).unwrap();
    let err = vae
        .encode(&r["pixels"], 1, false, &mut NoNoise)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no encoder") && err.contains("_encoder.safetensors"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_no_tiny_autoencoder_is_refused_by_name() {
    let path = fixture("models/tiny-sd/vae/diffusion_pytorch_model.safetensors");
    let err = Vae::tiny(&path, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a tiny autoencoder") && err.contains("tiny-sd"),
        "{err}"
    );
    let err = Vae::tiny(&fixture("models/tiny-sd"), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("AutoencoderTiny") || err.contains("_decoder"),
        "{err}"
    );
}

fn tiny_sd() -> Model {
    model("tiny-sd")
        .with_vae(tiny("models/taesd-mini"))
        .unwrap()
}

#[test]
fn tiny_sd_with_taesd_matches_diffusers_text_to_image_and_image_to_image() {
    assert_matches_diffusers(&tiny_sd());
}

/// `m` (tiny-sd with the mini TAESD) runs the reference cases of make_taesd_fixtures.py as
/// diffusers did: text to image decoding with it, image to image encoding and decoding.
fn assert_matches_diffusers(m: &Model) {
    let limits = Limits::default();
    let init = read_image(&fixture("reference/img2img/init.png"), "init", &limits).unwrap();
    for case in cases("reference/taesd") {
        let r = case.tensors();
        let out = if case.kind.as_deref() == Some("img2img") {
            generate_image(m, &case.image_job(&init.rgb, Some(&r["noise"]))).unwrap()
        } else {
            generate(m, &case.text_job(Some(&r["init_latents"])))
        };
        let run = Run::of_case(&case, &format!("{} + taesd", m.family.name));
        assert_run_matches(&run, &out.latents, &out.images, &r, "image");
    }
}

#[test]
fn a_tiny_autoencoder_of_another_latent_space_is_refused() {
    let err = model("tiny-sd2")
        .with_vae(tiny("models/taesd-mini"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    // tiny-sd2's VAE has scale factor 4, the mini TAESD 8.
    assert!(
        err.contains("scale factor") && err.contains("taesd"),
        "{err}"
    );
}

/// `beeswax [--vae VAE] generate --model <miniature model folder>`: a 2-step 64x64 run to
/// `out`.
fn generate_with_vae(
    dir: &common::command::Dir,
    model: &str,
    vae: Option<&std::path::Path>,
    out: &str,
) -> TestCommand {
    let mut cmd = dir.command();
    if let Some(vae) = vae {
        cmd.arg("--vae").arg(vae);
    }
    cmd.args(["generate", "--model"])
        .arg(common::model_dir(model))
        .args(["--prompt", "a red fox", "--steps", "2"])
        .args(["--width", "64", "--height", "64", "--seed", "3", "--quiet"])
        .args(["--output", out]);
    cmd
}

#[test]
fn the_cli_decodes_with_a_tiny_autoencoder_given_as_vae() {
    let dir = common::command::Dir::new("taesd-cli");
    for (vae, out) in [
        ("models/taesd-mini", "diffusers.png"),
        ("models/taesd-mini-original", "original.png"),
    ] {
        generate_with_vae(&dir, "tiny-sd", Some(&fixture(vae)), out).run();
    }
    generate_with_vae(&dir, "tiny-sd", None, "own.png").run();
    let limits = Limits::default();
    let read = |name: &str| read_image(&dir.join(name), name, &limits).unwrap().rgb;
    let (a, b, own) = (read("diffusers.png"), read("original.png"), read("own.png"));
    assert_eq!(
        a.data, b.data,
        "both layouts of the same TAESD decode alike"
    );
    assert_ne!(
        a.data, own.data,
        "the tiny autoencoder decoded, not the model's VAE"
    );
    let taesd = fixture("models/taesd-mini");
    generate_with_vae(&dir, "tiny-sd2", Some(&taesd), "x.png")
        .assert_fails_with(&["scale factor", "taesd"]);
}

#[test]
fn a_vae_file_replaces_a_folder_models_vae() {
    let dir = common::command::Dir::new("vae-folder");
    let own = fixture("models/tiny-sd/vae/diffusion_pytorch_model.safetensors");
    // The same VAE with its output convolution's bias moved: another picture.
    let mut tensors = candle_core::safetensors::load(&own, &Device::Cpu).unwrap();
    let bias = tensors["decoder.conv_out.bias"].clone();
    tensors.insert("decoder.conv_out.bias".into(), (bias + 0.5).unwrap());
    let moved = dir.join("moved.safetensors");
    candle_core::safetensors::save(&tensors, &moved).unwrap();
    generate_with_vae(&dir, "tiny-sd", None, "none.png").run();
    generate_with_vae(&dir, "tiny-sd", Some(&own), "own.png").run();
    generate_with_vae(&dir, "tiny-sd", Some(&moved), "moved.png").run();
    let limits = Limits::default();
    let read = |name: &str| read_image(&dir.join(name), name, &limits).unwrap().rgb;
    assert_eq!(read("none.png").data, read("own.png").data);
    assert_ne!(
        read("none.png").data,
        read("moved.png").data,
        "--vae was ignored"
    );
}

/// A manifests folder in `dir` with one tiny-sd pack `name` whose `[pack]` table ends with
/// `extra`.
fn taesd_pack(dir: &common::command::Dir, name: &str, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "[pack]\nname = \"{name}\"\nfamily = \"sd1\"\npath = {}\n{extra}\n",
        toml_path(&common::model_dir("tiny-sd"))
    );
    dir.manifests("manifests", &[("pack.toml", &text)])
}

#[test]
fn packs_read_vae_preview_and_preview_vae() {
    let dir = common::command::Dir::new("taesd-pack-fields");
    let m = taesd_pack(&dir, "a", "vae = \"taesd\"\npreview = \"taesd\"");
    let pack = find_pack(&m, "a").unwrap();
    assert_eq!(pack.vae, Some(VaeChoice::Taesd));
    assert_eq!(pack.preview, Some(PreviewChoice::Taesd));
    // Paths are relative to the manifest, on folder packs too.
    let m = taesd_pack(&dir, "b", "vae = \"tae/mini\"\npreview_vae = \"p\"");
    let pack = find_pack(&m, "b").unwrap();
    assert_eq!(pack.vae, Some(VaeChoice::Path(m.join("tae/mini"))));
    assert_eq!(pack.preview_vae, Some(m.join("p")));
    assert_eq!(pack.preview, None);
    let m = taesd_pack(&dir, "c", "preview = \"approx\"");
    let err = find_pack(&m, "c").unwrap_err().to_string();
    assert!(
        err.contains("pack.preview") && err.contains("latent2rgb"),
        "{err}"
    );
    let m = taesd_pack(&dir, "d", "preview = \"latent2rgb\"\npreview_vae = \"p\"");
    let err = find_pack(&m, "d").unwrap_err().to_string();
    assert!(
        err.contains("pack.preview_vae") && err.contains("unused"),
        "{err}"
    );
}

fn load_taesd_pack(extra: &str) -> Model {
    let dir = common::command::Dir::new("taesd-pack");
    let m = taesd_pack(&dir, "p", extra);
    let pack = find_pack(&m, "p").unwrap();
    load_pack(&pack, &Families::builtin(), &common::cpu_f32(), false).unwrap()
}

#[test]
fn a_pack_with_a_tiny_autoencoder_decodes_encodes_and_previews_with_it() {
    let taesd = toml_path(&fixture("models/taesd-mini"));
    let latents = load("reference/taesd/components.safetensors")["latents"].clone();
    let m = load_taesd_pack(&format!("vae = {taesd}"));
    assert!(m.vae.is_tiny());
    assert_matches_diffusers(&m);
    let preview = m.preview(&latents).unwrap();
    assert_eq!(
        (preview.width, preview.height),
        (80, 48),
        "decoded, image-sized"
    );

    let m = load_taesd_pack(&format!("vae = {taesd}\npreview = \"latent2rgb\""));
    assert!(m.vae.is_tiny() && m.preview_vae.is_none());
    let preview = m.preview(&latents).unwrap();
    assert_eq!((preview.width, preview.height), (10, 6), "the latent map");

    let m = load_taesd_pack(&format!("preview_vae = {taesd}"));
    assert!(!m.vae.is_tiny() && m.preview_vae.as_ref().unwrap().is_tiny());
    let m = load_taesd_pack("");
    assert!(!m.vae.is_tiny() && m.preview_vae.is_none());
}

/// A Hugging Face cache in `dir` holding the mini TAESD as `repo`'s snapshot.
fn fake_hub_cache(dir: &common::command::Dir, repo: &str) -> std::path::PathBuf {
    let cache = dir.join("hf/hub");
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    copy_dir(
        &fixture("models/taesd-mini"),
        &repo_dir.join("snapshots").join(commit),
    );
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    cache
}

#[test]
fn the_taesd_keyword_finds_the_familys_autoencoder_beside_the_model_or_in_the_hub_cache() {
    let families = Families::builtin();
    let repo = |name: &str| families.get(name).unwrap().vae.taesd.clone().unwrap();
    assert_eq!(repo("sd1"), "madebyollin/taesd");
    assert_eq!(repo("sd2-v"), "madebyollin/taesd");
    assert_eq!(repo("sdxl"), "madebyollin/taesdxl");
    assert_eq!(repo("flux-dev"), "madebyollin/taef1");
    let sd1 = families.get("sd1").unwrap();
    let dir = common::command::Dir::new("taesd-find");
    let model = dir.create_dir("model");
    let empty = dir.create_dir("empty-cache");
    let err = find_taesd(&sd1, std::slice::from_ref(&model), &empty, false, &model)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("madebyollin/taesd")
            && err.contains("huggingface-cli download madebyollin/taesd")
            && err.contains(&model.join("taesd").display().to_string())
            && err.contains("models--madebyollin--taesd"),
        "{err}"
    );
    let cache = fake_hub_cache(&dir, "madebyollin/taesd");
    let found = find_taesd(&sd1, std::slice::from_ref(&model), &cache, false, &model).unwrap();
    assert!(found.starts_with(&cache), "{}", found.display());
    // Beside the model comes first: a folder, or the original decoder file.
    copy_dir(&fixture("models/taesd-mini"), &model.join("taesd"));
    let found = find_taesd(&sd1, std::slice::from_ref(&model), &cache, false, &model).unwrap();
    assert_eq!(found, model.join("taesd"));
    let other = dir.create_dir("other");
    std::fs::copy(
        fixture("models/taesd-mini-original/taesd_decoder.safetensors"),
        other.join("taesd_decoder.safetensors"),
    )
    .unwrap();
    let found = find_taesd(&sd1, std::slice::from_ref(&other), &empty, false, &model).unwrap();
    assert_eq!(found, other.join("taesd_decoder.safetensors"));
    // A family naming no tiny autoencoder says so.
    let mut bare = (*sd1).clone();
    bare.vae.taesd = None;
    let err = find_taesd(&bare, std::slice::from_ref(&model), &cache, false, &model)
        .unwrap_err()
        .to_string();
    assert!(err.contains("names no tiny autoencoder"), "{err}");
}

#[test]
fn the_cli_and_packs_resolve_vae_taesd() {
    let dir = common::command::Dir::new("taesd-keyword");
    let cache = fake_hub_cache(&dir, "madebyollin/taesd");
    let empty = dir.create_dir("empty/hub");
    let in_cache = |cmd: &mut TestCommand, cache: &std::path::Path| {
        cmd.env("HF_HUB_CACHE", cache)
            .env("HF_HOME", cache.parent().unwrap());
    };
    generate_with_vae(
        &dir,
        "tiny-sd",
        Some(&fixture("models/taesd-mini")),
        "path.png",
    )
    .run();
    let mut cmd = generate_with_vae(
        &dir,
        "tiny-sd",
        Some(std::path::Path::new("taesd")),
        "k.png",
    );
    in_cache(&mut cmd, &cache);
    cmd.run();
    let mut cmd = generate_with_vae(
        &dir,
        "tiny-sd",
        Some(std::path::Path::new("taesd")),
        "x.png",
    );
    in_cache(&mut cmd, &empty);
    cmd.assert_fails_with(&[
        "madebyollin/taesd",
        "huggingface-cli download madebyollin/taesd",
    ]);
    // A pack's `vae = "taesd"`: `check` finds it missing, then in the pack's folder, with an
    // empty hub cache.
    let manifests = taesd_pack(&dir, "fast", "vae = \"taesd\"");
    let mut cmd = dir.command();
    cmd.manifests(&manifests).arg("check");
    in_cache(&mut cmd, &empty);
    cmd.assert_fails_with(&["pack.toml", "pack.vae", "madebyollin/taesd"]);
    copy_dir(&fixture("models/taesd-mini"), &manifests.join("taesd"));
    let mut cmd = dir.command();
    cmd.manifests(&manifests).arg("check");
    in_cache(&mut cmd, &empty);
    cmd.run();
    let mut cmd = dir.command();
    cmd.manifests(&manifests)
        .args([
            "generate",
            "--pack",
            "fast",
            "--prompt",
            "a red fox",
            "--steps",
            "2",
        ])
        .args(["--width", "64", "--height", "64", "--seed", "3", "--quiet"])
        .args(["--output", "pack.png"]);
    in_cache(&mut cmd, &empty);
    cmd.run();
    let limits = Limits::default();
    let read = |name: &str| read_image(&dir.join(name), name, &limits).unwrap().rgb;
    assert_eq!(read("path.png").data, read("k.png").data);
    assert_eq!(read("path.png").data, read("pack.png").data);
}

#[test]
fn tiny_flux_with_a_taef1_matches_diffusers() {
    // FLUX latents reach the tiny autoencoder unpacked and in denoiser space (TAEF1's scaling
    // factor 1, shift 0), as FluxPipeline hands them to an AutoencoderTiny.
    let case = common::flux_cases()
        .into_iter()
        .find(|c| c.name == "schnell_euler_64x64")
        .unwrap();
    let mut options = common::cpu_f32();
    options.max_sequence_length = Some(case.max_sequence_length);
    let model = beeswax::family::load(&common::model_dir(&case.model_name()), None, &options)
        .unwrap()
        .with_vae(tiny("models/taef1-mini"))
        .unwrap();
    assert_eq!(model.vae.latent_channels(), 16);
    let r = case.tensors();
    let want = load("reference/taesd/flux_schnell_taef1.safetensors");
    let out = generate(&model, &case.job(&r));
    assert_close_rel_std("flux + taef1 latents", &out.latents, &want["latents"], 2e-3);
    let worst = common::images::max_pixel_diff(&out.images[0], &want["image"]);
    assert!(worst <= 2.0, "flux + taef1 image differs by {worst}/255");
    let vae = model.vae.clone();
    let preview = model
        .with_preview_vae(Some(vae))
        .unwrap()
        .preview(&out.latents)
        .unwrap();
    assert_eq!(
        preview.data, out.images[0].data,
        "a TAEF1 preview decodes alike"
    );
}
