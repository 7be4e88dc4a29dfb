//! Whole SDXL runs through the engine's pipelines (family detection, `family::sdxl`, the
//! shared text-to-image, image-to-image and inpainting pipelines) against diffusers'
//! StableDiffusionXL{,Img2Img,Inpaint}Pipeline from the same starting noise
//! (`reference/sdxl/pipelines`, made by `tests/fixtures/make_sdxl_fixtures.py`): final latents
//! within 2e-3 of their std, images within 2/255.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use beeswax::family::{Model, SizeConditioning};
use beeswax::image_in::{mask_from_picture, read_image, AlphaMask, Limits, RgbImage};
use beeswax::lora::merge::apply;
use beeswax::pipeline::Generated;
use candle_core::{DType, Tensor};
use common::compare::assert_close_rel_std;
use common::conformance::Run;
use common::images::{assert_conforms, pixels};
use common::jobs::{generate, try_generate};
use common::reference::{load, Case};
use common::{fixture, model};

/// Latents tolerance, relative to the reference's std.
const LATENTS_TOL: f32 = 2e-3;

/// A `reference/sdxl/pipelines/cases.json` entry (the fields these tests use).
#[derive(Debug, serde::Deserialize)]
struct SdxlCase {
    kind: String,
    model: String,
    name: String,
    file: String,
    prompt: String,
    negative_prompt: Option<String>,
    width: usize,
    height: usize,
    steps: usize,
    guidance: f64,
    scheduler: String,
    strength: Option<f64>,
    seed: Option<u64>,
    size_conditioning: Option<serde_json::Value>,
    lora: Option<String>,
    lora_scale: Option<f64>,
}

impl SdxlCase {
    /// The engine's settings for this case: a missing negative prompt (diffusers' `None`,
    /// zeroed by `force_zeros_for_empty_prompt`) is the empty one.
    fn case(&self) -> Case {
        let mut c = Case::new(
            &self.prompt,
            &self.scheduler,
            self.steps,
            self.width,
            self.height,
        );
        c.guidance = self.guidance;
        c.negative_prompt = self.negative_prompt.clone().unwrap_or_default();
        c.strength = self.strength;
        c.seed = self.seed.unwrap_or(0);
        c.dir = "reference/sdxl/pipelines".into();
        c.file = self.file.clone();
        c
    }

    fn tensors(&self) -> HashMap<String, Tensor> {
        load(&format!("reference/sdxl/pipelines/{}", self.file))
    }
}

fn cases() -> Vec<SdxlCase> {
    let text = std::fs::read_to_string(fixture("reference/sdxl/pipelines/cases.json")).unwrap();
    // Python's json writes DPM++'s `lambda_min_clipped` as -Infinity, which JSON has not;
    // these tests do not read the scheduler configs.
    serde_json::from_str(&text.replace("-Infinity", "null")).unwrap()
}

/// The conformance row of case `c` run on a model of `family`.
fn conformance_run(c: &SdxlCase, family: &str) -> Run {
    let lora = (c.lora.as_ref()).map(|l| format!("{l}@{}", c.lora_scale.unwrap_or(1.0)));
    Run {
        pipeline: c.kind.clone(),
        family: family.to_string(),
        sampler: c.scheduler.clone(),
        lora: lora.unwrap_or_default(),
        case: format!("reference/sdxl/pipelines/{}", c.file),
    }
}

fn check(run: &Run, out: &Generated, r: &HashMap<String, Tensor>) {
    let latents = Some((&out.latents, &r["latents"], LATENTS_TOL));
    let images: Vec<Tensor> = out.images.iter().map(pixels).collect();
    assert_conforms(run, latents, &images, &r["image"]);
}

fn picture(name: &str) -> RgbImage {
    let path = fixture(&format!("reference/sdxl/pipelines/{name}"));
    read_image(&path, name, &Limits::default()).unwrap().rgb
}

/// The reference picture [1, H, W, 3] (8-bit, or floats in [0, 1]) as an 8-bit image.
fn to_image(t: &Tensor) -> RgbImage {
    let (_, h, w, _) = t.dims4().unwrap();
    let t = t.to_dtype(DType::F32).unwrap();
    let t = if t.max_all().unwrap().to_scalar::<f32>().unwrap() > 1.0 {
        t
    } else {
        (t * 255.0).unwrap().round().unwrap()
    };
    let data = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    RgbImage {
        width: w,
        height: h,
        data: data
            .into_iter()
            .map(|v| v.clamp(0.0, 255.0) as u8)
            .collect(),
    }
}

/// A case's `size_conditioning` (diffusers' keyword arguments: sizes as (height, width), the
/// crop as (top, left)) as the engine's setting (sizes as (width, height)).
fn size_conditioning(value: Option<&serde_json::Value>) -> SizeConditioning {
    let pair = |key: &str| -> Option<(usize, usize)> {
        let v: Vec<usize> = serde_json::from_value(value?.get(key)?.clone()).unwrap();
        Some((v[0], v[1]))
    };
    let flip = |p: Option<(usize, usize)>| p.map(|(h, w)| (w, h));
    SizeConditioning {
        original_size: flip(pair("original_size")),
        crop_top_left: pair("crops_coords_top_left").unwrap_or_default(),
        target_size: flip(pair("target_size")),
    }
}

fn run(models: &mut HashMap<String, Model>, c: &SdxlCase) -> Option<Generated> {
    let m = models
        .entry(c.model.clone())
        .or_insert_with(|| model(&c.model))
        .clone();
    let r = c.tensors();
    let case = c.case();
    let out = match c.kind.as_str() {
        "txt2img" | "turbo" => {
            // Turbo cases are seeded: the job's generator draws the start noise itself.
            let init = (c.kind == "txt2img").then(|| &r["init_latents"]);
            let m = match (&c.lora, c.lora_scale) {
                (Some(file), Some(scale)) => {
                    let lora = common::lora::weighted(
                        "tiny-sdxl",
                        file.trim_start_matches("lora/tiny-sdxl/"),
                        scale,
                    );
                    apply(&m, &[lora]).unwrap().model
                }
                _ => m,
            };
            let mut job = case.text_job(init);
            job.settings.size_conditioning = size_conditioning(c.size_conditioning.as_ref());
            generate(&m, &job)
        }
        "img2img" => {
            try_generate(&m, &case.image_job(&picture("init.png"), Some(&r["noise"]))).unwrap()
        }
        "inpaint" => {
            let mask = read_image(
                &fixture("reference/sdxl/pipelines/mask.png"),
                "mask",
                &Limits::default(),
            )
            .unwrap();
            let mask = mask_from_picture(&mask, AlphaMask::OpaqueRepaints);
            let init = picture("init.png");
            let out = try_generate(&m, &case.inpaint_job(&init, &mask, Some(&r["noise"]))).unwrap();
            // The engine pastes the result over the picture outside the (dilated) mask, as
            // AUTOMATIC1111 does, and diffusers does not: the latents are compared whole, the
            // image well inside the mask.
            assert_close_rel_std(&c.name, &out.latents, &r["latents"], LATENTS_TOL);
            let want = to_image(&r["image"]);
            let got = &out.images[0];
            let (w, h) = (want.width, want.height);
            let inside = |x: usize, y: usize| {
                (y.saturating_sub(4)..(y + 5).min(h)).all(|yy| {
                    (x.saturating_sub(4)..(x + 5).min(w)).all(|xx| mask.data[yy * w + xx] >= 1.0)
                })
            };
            let mut compared = 0;
            for y in 0..h {
                for x in 0..w {
                    if !inside(x, y) {
                        continue;
                    }
                    compared += 1;
                    for ch in 0..3 {
                        let i = (y * w + x) * 3 + ch;
                        let d = (got.data[i] as i32 - want.data[i] as i32).abs();
                        assert!(d <= 2, "{}: pixel ({x}, {y}) differs by {d}/255", c.name);
                    }
                }
            }
            assert!(
                compared > 100,
                "{}: only {compared} pixels inside the mask",
                c.name
            );
            return None;
        }
        _ => return None,
    };
    Some(out)
}

/// Text to image (with a negative prompt, with the zeroed empty one, non-square, Euler and
/// DPM++ 2M Karras, custom size conditioning), image to image, 9-channel and blended inpainting, a kohya LoRA, and
/// SDXL-Turbo in 1 and 4 steps without guidance.
#[test]
fn sdxl_pipelines_match_diffusers() {
    let mut models = HashMap::new();
    let mut ran = Vec::new();
    for c in cases() {
        // The refiner hand-off has its own test.
        if c.kind == "refiner" {
            continue;
        }
        if let Some(out) = run(&mut models, &c) {
            let family = models[&c.model].family.name.clone();
            check(&conformance_run(&c, &family), &out, &c.tensors());
        }
        ran.push(c.name);
    }
    assert!(ran.len() >= 10, "ran only {ran:?}");
}

/// The family manifests pick the right family for each miniature folder, and the Turbo
/// model's pack defaults (no guidance) run one denoiser pass per step.
#[test]
fn sdxl_models_load_as_their_families() {
    for (name, family, channels) in [
        ("tiny-sdxl", "sdxl", 4),
        ("tiny-sdxl-refiner", "sdxl-refiner", 4),
        ("tiny-sdxl-inpaint", "sdxl-inpaint", 9),
    ] {
        let m = model(name);
        assert_eq!(m.family.name, family);
        assert_eq!(m.networks.in_channels(), channels);
    }
}

/// A variant of a known architecture is a manifest alone: a temp manifest folder's
/// `families/sdxl-small.toml` (SDXL with [1, 1, 2] transformer blocks per level, tried before
/// the shipped families) claims the miniature SDXL folder, is listed by `beeswax families`,
/// and runs it as the shipped `sdxl` does.
#[test]
fn a_family_manifest_alone_adds_a_variant() {
    use beeswax::family::Families;
    use beeswax::manifest::ManifestFiles;
    let shipped =
        std::fs::read_to_string(common::root().join("manifests/families/sdxl.toml")).unwrap();
    let variant = shipped
        .replace("name = \"sdxl\"", "name = \"sdxl-small\"")
        .replace("priority = 0", "priority = 5")
        .replace("config = \"sdxl\"\n", "")
        + "\n[[family.folder]]\nfile = \"unet/config.json\"\nfield = \"transformer_layers_per_block\"\nequals = [1, 1, 2]\n";
    let dir = common::command::Dir::new("family-variant");
    dir.create("families/sdxl-small.toml", &variant);
    let files = ManifestFiles::read(dir.path()).unwrap();
    let families = Families::from_manifests(&files.parse().unwrap()).unwrap();
    let small = families.get("sdxl-small").unwrap();
    assert_eq!(small.priority, 5);
    let m = families
        .load(&common::model_dir("tiny-sdxl"), None, &common::cpu_f32())
        .unwrap();
    assert_eq!(m.family.name, "sdxl-small");
    // Other SDXL folders (other block depths) are still the shipped families'.
    let m2 = families
        .load(
            &common::model_dir("tiny-sdxl-inpaint"),
            None,
            &common::cpu_f32(),
        )
        .unwrap();
    assert_eq!(m2.family.name, "sdxl-inpaint");
    let c = cases()
        .into_iter()
        .find(|c| c.name == "txt2img_euler_neg_64x64")
        .unwrap();
    let r = c.tensors();
    let out = generate(&m, &c.case().text_job(Some(&r["init_latents"])));
    let mut row = conformance_run(&c, &m.family.name);
    row.case.push_str(" (family from a manifest)");
    check(&row, &out, &r);

    let listed = common::command::TestCommand::new(dir.path())
        .manifests(dir.path())
        .arg("families")
        .stdout();
    assert!(listed.contains("sdxl-small\tsdxl\t"), "{listed}");
    assert!(listed.contains("sdxl-refiner\tsdxl\t"), "{listed}");
    assert!(listed.contains("sd1\tsd\t"), "{listed}");

    // A broken family manifest is named by file, line and field.
    dir.create(
        "families/broken.toml",
        variant
            .replace("sdxl-small", "broken")
            .replace("kind = \"clip\"", "kind = \"t9\""),
    );
    let files = ManifestFiles::read(dir.path()).unwrap();
    let err = Families::from_manifests(&files.parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.toml:") && err.contains("family.text_encoder.kind"),
        "{err}"
    );
}

/// `tensors` saved as `name.safetensors` in `dir`, read as a LoRA at weight 1.
fn saved_lora(
    dir: &common::command::Dir,
    name: &str,
    tensors: &HashMap<String, Tensor>,
) -> beeswax::lora::WeightedLora {
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(tensors, &path).unwrap();
    beeswax::lora::WeightedLora {
        name: name.into(),
        file: std::sync::Arc::new(beeswax::lora::LoraFile::read(&path).unwrap()),
        weight: 1.0,
    }
}

/// The kohya SDXL LoRA's text-encoder modules (`lora_te1_`, `lora_te2_`) rewritten as a
/// diffusers/PEFT file (`text_encoder.` / `text_encoder_2.` + transformers' module path,
/// `lora_A` / `lora_B` with kohya's alpha / rank folded into `lora_B`): the engine reads both
/// the same, so the runs are equal, and they differ from the base model's.
#[test]
fn a_peft_sdxl_lora_with_text_encoder_2_keys_equals_the_kohya_one() {
    let kohya = candle_core::safetensors::load(
        fixture("lora/tiny-sdxl/kohya.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut te_only = HashMap::new();
    let mut peft = HashMap::new();
    let mut te2_modules = 0;
    for (key, down) in &kohya {
        let Some(module) = key.strip_suffix(".lora_down.weight") else {
            continue;
        };
        let (component, rest) = match module.split_once('_').map(|(_, r)| r) {
            Some(r) if r.starts_with("te1_") => ("text_encoder", &r[4..]),
            Some(r) if r.starts_with("te2_") => ("text_encoder_2", &r[4..]),
            _ => continue,
        };
        te2_modules += usize::from(component == "text_encoder_2");
        let up = &kohya[&format!("{module}.lora_up.weight")];
        let alpha = &kohya[&format!("{module}.alpha")];
        for (k, t) in [
            ("lora_down.weight", down),
            ("lora_up.weight", up),
            ("alpha", alpha),
        ] {
            te_only.insert(format!("{module}.{k}"), t.clone());
        }
        let tail = rest.strip_prefix("text_model_encoder_layers_").unwrap();
        let (layer, name) = tail.split_once('_').unwrap();
        let name = name
            .replacen("self_attn_", "self_attn.", 1)
            .replacen("mlp_", "mlp.", 1);
        let path = format!("{component}.text_model.encoder.layers.{layer}.{name}");
        let rank = down.dim(0).unwrap() as f64;
        let alpha = alpha
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .get(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        peft.insert(format!("{path}.lora_A.weight"), down.clone());
        peft.insert(
            format!("{path}.lora_B.weight"),
            (up.to_dtype(DType::F32).unwrap() * (alpha / rank)).unwrap(),
        );
    }
    assert!(
        te2_modules >= 6,
        "only {te2_modules} text_encoder_2 modules"
    );
    let dir = common::command::Dir::new("sdxl-peft");
    let base = model("tiny-sdxl");
    let kohya_run = apply(&base, &[saved_lora(&dir, "kohya-te", &te_only)]).unwrap();
    let peft_run = apply(&base, &[saved_lora(&dir, "peft-te", &peft)]).unwrap();
    for applied in [&kohya_run, &peft_run] {
        assert!(
            applied.reports[0].unmatched.is_empty(),
            "{:?}",
            applied.reports[0]
        );
    }
    let mut case = Case::new("a red fox in the snow", "Euler", 2, 64, 64);
    case.guidance = 5.0;
    let a = generate(&kohya_run.model, &case.text_job(None));
    let b = generate(&peft_run.model, &case.text_job(None));
    let plain = generate(&base, &case.text_job(None));
    // Equal up to where the scale is applied (f32 rounding).
    assert_close_rel_std("peft vs kohya", &b.latents, &a.latents, 1e-4);
    let moved = common::compare::max_abs_diff(&plain.latents, &a.latents);
    assert!(
        moved > 1e-3,
        "the text-encoder LoRA changed nothing ({moved})"
    );
}

/// A LoRA made for SD 1.x on an SDXL model: a clear error naming the file and the family the
/// model expects.
#[test]
fn an_sd1_lora_on_sdxl_is_refused_by_name() {
    let err = apply(
        &model("tiny-sdxl"),
        &[common::lora::weighted("tiny-sd", "kohya.safetensors", 1.0)],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    for needle in [
        "lora/tiny-sd/kohya.safetensors",
        "another model family",
        "family `sdxl`",
    ] {
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}

/// Outpainting on SDXL (a wider canvas, its new border repainted) with the 9-channel
/// inpainting model and by blending on the base: the picture is kept where the mask is 0, the
/// border no longer holds the fill.
#[test]
fn sdxl_outpaints_with_both_inpainting_kinds() {
    use beeswax::image_in::{outpaint, Outpaint};
    use beeswax::pipeline::MaskedContent;
    use common::jobs::ImageOptions;
    let init = picture("init.png");
    let pad = Outpaint {
        left: 0,
        right: 32,
        top: 16,
        bottom: 0,
    };
    let (canvas, mask) = outpaint(&init, pad, 4);
    assert_eq!(
        (canvas.width, canvas.height),
        (init.width + 32, init.height + 16)
    );
    let options = ImageOptions {
        masked_content: MaskedContent::Fill,
        ..Default::default()
    };
    for name in ["tiny-sdxl-inpaint", "tiny-sdxl"] {
        let m = model(name);
        let mut case = Case::new(
            "a red fox in the snow",
            "Euler",
            3,
            canvas.width,
            canvas.height,
        );
        case.guidance = 5.0;
        case.strength = Some(1.0);
        let out = try_generate(&m, &case.inpaint_job_with(&canvas, &mask, None, &options)).unwrap();
        let got = &out.images[0];
        assert_eq!(
            (got.width, got.height),
            (canvas.width, canvas.height),
            "{name}"
        );
        let (mut kept, mut repainted) = (0usize, 0.0f64);
        for y in 0..got.height {
            for x in 0..got.width {
                let i = (y * got.width + x) * 3;
                if mask.data[y * got.width + x] == 0.0 && x + 12 < init.width && y >= 16 + 12 {
                    assert_eq!(
                        got.data[i..i + 3],
                        canvas.data[i..i + 3],
                        "{name} ({x}, {y})"
                    );
                    kept += 1;
                }
                if x >= init.width + 8 {
                    repainted += (0..3)
                        .map(|c| (got.data[i + c] as f64 - canvas.data[i + c] as f64).abs())
                        .sum::<f64>();
                }
            }
        }
        assert!(kept > 500, "{name}: only {kept} kept pixels");
        assert!(repainted > 1000.0, "{name}: the border kept its fill");
    }
}

/// SDXL through the three HTTP APIs: the native jobs API (with a negative prompt), OpenAI's
/// images API and AUTOMATIC1111's txt2img and img2img.
#[tokio::test(flavor = "multi_thread")]
async fn the_http_apis_serve_sdxl() {
    use common::images::Png;
    use common::server::{b64, expect_json, get, post, submit, unb64, wait_status, TestServer};
    use serde_json::json;

    let pack = format!(
        "[pack]\nname = \"tiny-xl\"\nfamily = \"sdxl\"\npath = {}\n\n\
         [pack.defaults]\nsteps = 2\nwidth = 64\nheight = 48\n",
        common::command::toml_path(&common::model_dir("tiny-sdxl"))
    );
    let server = TestServer::start_with(Default::default(), &[("xl.toml", &pack)]).await;
    let id = submit(
        &server.url,
        json!({"pipeline": "tiny-xl", "prompt": "a fox", "seed": 1, "guidance": 5.0,
               "negative_prompt": "blurry", "preview_every": 1}),
    )
    .await;
    let job = wait_status(&server.url, &id, "completed").await;
    assert_eq!(job["parameters"]["steps"], 2, "{job}");
    let png = get(&server.at(&format!("/v1/jobs/{id}/images/0"))).await;
    assert_eq!(Png::decode(&png.bytes().await.unwrap()).size(), (64, 48));

    let body = json!({"model": "tiny-xl", "prompt": "a fox", "size": "64x64",
                      "response_format": "b64_json"});
    let body = expect_json(post(&server.at("/v1/images/generations"), body).await, 200).await;
    let png = unb64(body["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!(Png::decode(&png).size(), (64, 64));

    let body = json!({"prompt": "a fox", "negative_prompt": "", "steps": 2, "width": 32,
                      "height": 48, "sampler_name": "DPM++ 2M Karras",
                      "override_settings": {"sd_model_checkpoint": "tiny-xl"}});
    let body = expect_json(post(&server.at("/sdapi/v1/txt2img"), body).await, 200).await;
    let png = unb64(body["images"][0].as_str().unwrap());
    assert_eq!(Png::decode(&png).size(), (32, 48));

    let init = std::fs::read(fixture("reference/sdxl/pipelines/init.png")).unwrap();
    let body = json!({"prompt": "a fox", "steps": 2, "denoising_strength": 0.6,
                      "init_images": [b64(&init)], "width": 64, "height": 64,
                      "override_settings": {"sd_model_checkpoint": "tiny-xl"}});
    let body = expect_json(post(&server.at("/sdapi/v1/img2img"), body).await, 200).await;
    let png = unb64(body["images"][0].as_str().unwrap());
    assert_eq!(Png::decode(&png).size(), (64, 64));
    server.stop().await;
}
