//! Image-to-image and inpainting against diffusers' `StableDiffusionImg2ImgPipeline` and
//! `StableDiffusionInpaintPipeline` (references made by tests/fixtures/make_img2img_fixtures.py
//! with the posterior mean and injected noise), and the inpainting guarantees of our own.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use beeswax::family::Model;
use beeswax::image_in::{
    mask_from_picture, read_image, AlphaMask, Limits, Mask, ResizeMode, RgbImage,
};
use beeswax::pipeline::{ImageInput, InpaintArea, Input, Job, MaskInput, MaskedContent, Settings};
use candle_core::{DType, Device, Tensor};
use common::{assert_close_rel_std, fixture, load, model};

#[derive(serde::Deserialize)]
struct Case {
    kind: String,
    model: String,
    scheduler: String,
    strength: f64,
    batch: usize,
    file: String,
    steps: usize,
    guidance: f64,
    width: usize,
    height: usize,
    prompt: String,
    negative_prompt: String,
    unet_in_channels: usize,
}

fn inputs() -> (RgbImage, Mask) {
    let limits = Limits::default();
    let init = read_image(&fixture("reference/img2img/init.png"), "init", &limits).unwrap();
    let mask = read_image(&fixture("reference/img2img/mask.png"), "mask", &limits).unwrap();
    (
        init.rgb,
        mask_from_picture(&mask, AlphaMask::OpaqueRepaints),
    )
}

fn base(case: &Case) -> Settings {
    Settings {
        prompt: case.prompt.clone(),
        negative_prompt: case.negative_prompt.clone(),
        steps: case.steps,
        guidance: case.guidance,
        width: case.width,
        height: case.height,
        seed: 0,
        batch: case.batch,
        clip_skip: 1,
    }
}

/// Settings for the hand-made jobs of these tests.
fn settings(
    prompt: &str,
    steps: usize,
    guidance: f64,
    (width, height): (usize, usize),
    seed: u64,
) -> Settings {
    Settings {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        steps,
        guidance,
        width,
        height,
        seed,
        batch: 1,
        clip_skip: 1,
    }
}

/// A mask input with no blur, the whole picture, the original content.
fn plain_mask(mask: Mask) -> MaskInput {
    MaskInput {
        mask,
        blur: 0.0,
        area: InpaintArea::Whole,
        content: MaskedContent::Original,
    }
}

/// Largest |difference| between an 8-bit image and row `i` of a reference [B, H, W, 3] u8.
fn max_pixel_diff(image: &RgbImage, want: &Tensor, i: usize) -> f32 {
    let want = want.get(i).unwrap().to_dtype(DType::F32).unwrap();
    let (h, w, _) = want.dims3().unwrap();
    assert_eq!((image.height, image.width), (h, w));
    let got = Tensor::from_vec(
        image.data.iter().map(|&b| b as f32).collect::<Vec<_>>(),
        (h, w, 3),
        &Device::Cpu,
    )
    .unwrap();
    (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn image_to_image_and_inpainting_match_diffusers() {
    let cases: Vec<Case> = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/img2img/cases.json")).unwrap(),
    )
    .unwrap();
    let (init, mask) = inputs();
    let mut models: HashMap<String, Model> = HashMap::new();
    let mut checked = HashMap::<&str, usize>::new();
    for case in &cases {
        let m = models
            .entry(case.model.clone())
            .or_insert_with(|| model(&case.model));
        assert_eq!(m.networks.in_channels(), case.unet_in_channels);
        let r = load(&format!("reference/img2img/{}", case.file));
        let image = ImageInput {
            picture: init.clone(),
            strength: case.strength,
            resize: ResizeMode::Stretch,
            sample_posterior: false,
            init_noise: Some(r["noise"].clone()),
        };
        let (input, want_image) = if case.kind == "img2img" {
            (Input::Image(image), &r["image"])
        } else {
            let mask = plain_mask(mask.clone());
            (Input::Inpaint { image, mask }, &r["image_overlay"])
        };
        let out = common::run(m, &common::job(base(case), &case.scheduler, input));
        let what = format!("{} ({})", case.file, case.kind);
        assert_close_rel_std(
            &format!("{what} latents"),
            &out.latents,
            &r["latents"],
            1e-3,
        );
        assert_eq!(out.images.len(), case.batch);
        for (i, image) in out.images.iter().enumerate() {
            let diff = max_pixel_diff(image, want_image, i);
            assert!(
                diff <= 2.0,
                "{what} image {i}: max difference {diff}/255 exceeds 2/255"
            );
            eprintln!("{what} image {i}: max difference {diff}/255");
        }
        *checked
            .entry(if case.unet_in_channels == 9 {
                "9-channel inpaint"
            } else {
                case.kind.as_str()
            })
            .or_default() += 1;
    }
    eprintln!("checked {checked:?}");
    assert!(
        checked.get("img2img").copied().unwrap_or(0) >= 6,
        "{checked:?}"
    );
    assert!(
        checked.get("inpaint").copied().unwrap_or(0) >= 5,
        "{checked:?}"
    );
    assert!(
        checked.get("9-channel inpaint").copied().unwrap_or(0) >= 4,
        "{checked:?}"
    );
}

/// Pixels of `image` that differ from `original` by more than 1/255 where `keep` holds.
fn changed_outside(
    image: &RgbImage,
    original: &RgbImage,
    keep: impl Fn(usize, usize) -> bool,
) -> usize {
    let mut changed = 0;
    for y in 0..image.height {
        for x in 0..image.width {
            let i = (y * image.width + x) * 3;
            if keep(x, y) && (0..3).any(|c| image.data[i + c].abs_diff(original.data[i + c]) > 1) {
                changed += 1;
            }
        }
    }
    changed
}

#[test]
fn ordinary_model_inpainting_keeps_pixels_outside_the_mask() {
    let m = model("tiny-sd");
    let (init, mask) = inputs();
    let (w, h) = (init.width, init.height);
    let masked = |x: usize, y: usize| mask.data[y * w + x] > 0.0;
    for (blur, content, area) in [
        (0.0, MaskedContent::Original, InpaintArea::Whole),
        (0.0, MaskedContent::Fill, InpaintArea::Whole),
        (
            0.0,
            MaskedContent::LatentNoise,
            InpaintArea::Masked { padding: 8 },
        ),
        (2.0, MaskedContent::Original, InpaintArea::Whole),
    ] {
        let input = Input::Inpaint {
            image: ImageInput {
                picture: init.clone(),
                strength: 0.75,
                resize: ResizeMode::Stretch,
                sample_posterior: true,
                init_noise: None,
            },
            mask: MaskInput {
                mask: mask.clone(),
                blur,
                area,
                content,
            },
        };
        let job = common::job(settings("a red fox", 4, 7.5, (w, h), 7), "euler", input);
        let out = common::run(&m, &job);
        let image = &out.images[0];
        assert_eq!((image.width, image.height), (w, h));
        // The blur reaches floor(2.5 · blur + 0.5) pixels beyond the mask.
        let reach = (2.5 * blur + 0.5) as usize;
        let near_mask = |x: usize, y: usize| {
            (y.saturating_sub(reach)..(y + reach + 1).min(h)).any(|yy| {
                (x.saturating_sub(reach)..(x + reach + 1).min(w)).any(|xx| masked(xx, yy))
            })
        };
        let what = format!("blur {blur}, {content:?}, {area:?}");
        assert_eq!(
            changed_outside(image, &init, |x, y| !near_mask(x, y)),
            0,
            "{what}"
        );
        // ... and the masked region was repainted.
        let inside = changed_outside(image, &init, masked);
        let total = mask.data.iter().filter(|&&v| v > 0.0).count();
        assert!(
            inside * 2 > total,
            "{what}: only {inside} of {total} masked pixels changed"
        );
    }
}

#[test]
fn same_seed_same_picture_and_posterior_sampling_differs_from_the_mean() {
    let m = model("tiny-sd");
    let (init, _) = inputs();
    let job = |sample_posterior| -> Job {
        let input = Input::Image(ImageInput {
            picture: init.clone(),
            strength: 0.5,
            resize: ResizeMode::Crop,
            sample_posterior,
            init_noise: None,
        });
        common::job(settings("a red fox", 4, 1.0, (64, 64), 3), "ddim", input)
    };
    let a = common::run(&m, &job(false));
    let b = common::run(&m, &job(false));
    let c = common::run(&m, &job(true));
    assert_eq!(a.images[0], b.images[0]);
    // An inpainting UNet does image-to-image too (mask all ones, masked picture grey).
    let inpaint_model = model("tiny-sd-inpaint");
    let d = common::run(&inpaint_model, &job(false));
    assert_eq!((d.images[0].width, d.images[0].height), (64, 64));
    assert_ne!(d.images[0], a.images[0]);
    assert_eq!((a.images[0].width, a.images[0].height), (64, 64));
    assert_ne!(a.images[0], c.images[0]);
}

#[test]
fn bad_inputs_are_refused_with_clear_messages() {
    let m = model("tiny-sd");
    let (init, mask) = inputs();
    let image = |strength: f64| ImageInput {
        picture: init.clone(),
        strength,
        resize: ResizeMode::Stretch,
        sample_posterior: false,
        init_noise: None,
    };
    let job = |input: Input, steps: usize| {
        common::job(settings("x", steps, 1.0, (64, 64), 0), "ddim", input)
    };
    for (strength, steps, word) in [
        (0.0, 10, "above 0"),
        (1.5, 10, "at most 1"),
        (0.05, 10, "no step"),
    ] {
        let err = common::try_run(&m, &job(Input::Image(image(strength)), steps))
            .unwrap_err()
            .to_string();
        assert!(err.contains("strength") && err.contains(word), "{err}");
    }
    let mut bad_noise = image(0.5);
    bad_noise.init_noise = Some(Tensor::zeros((1, 4, 3, 3), DType::F32, &Device::Cpu).unwrap());
    let err = common::try_run(&m, &job(Input::Image(bad_noise), 4))
        .unwrap_err()
        .to_string();
    assert!(err.contains("init noise shape"), "{err}");

    // A mask of another aspect ratio is refused; one of the same ratio is resized with a warning.
    let inpaint_job = |mask: Mask| {
        let input = Input::Inpaint {
            image: image(0.5),
            mask: plain_mask(mask),
        };
        job(input, 2)
    };
    let square = Mask::filled(32, 32, 1.0);
    let err = common::try_run(&m, &inpaint_job(square))
        .unwrap_err()
        .to_string();
    assert!(err.contains("aspect ratios differ"), "{err}");
    let half = beeswax::image_in::resize_mask(&mask, 48, 32, ResizeMode::Stretch);
    let out = common::run(&m, &inpaint_job(half));
    assert!(
        out.warnings.iter().any(|w| w.contains("resized")),
        "{:?}",
        out.warnings
    );
    let err = common::try_run(&m, &inpaint_job(Mask::filled(96, 64, 0.0)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing to repaint"), "{err}");
}

/// Runs the beeswax binary in `dir`.
fn beeswax(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_beeswax"))
        .current_dir(dir)
        .args(args)
        .env_remove("BEESWAX_MANIFESTS")
        .output()
        .expect("the beeswax binary runs")
}

fn png_info(path: &std::path::Path) -> (usize, usize, String) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .map(|c| c.text.clone())
        .unwrap_or_default();
    (info.width as usize, info.height as usize, text)
}

#[test]
fn cli_image_to_image_inpainting_and_outpainting() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-sd");
    let model = model.to_str().unwrap();
    let init = fixture("reference/img2img/init.png");
    let init = init.to_str().unwrap();
    let mask = fixture("reference/img2img/mask.png");
    let mask = mask.to_str().unwrap();
    let common = [
        "generate",
        "--model",
        model,
        "--prompt",
        "a fox",
        "--steps",
        "4",
        "--seed",
        "5",
        "--quiet",
        "--init-image",
        init,
    ];
    let run = |extra: &[&str]| {
        let out = beeswax(dir.path(), &[&common[..], extra].concat());
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Image-to-image at the picture's own size (96x64), twice: the same bytes.
    run(&["--strength", "0.5", "--output", "a.png"]);
    run(&["--strength", "0.5", "--output", "b.png"]);
    let a = std::fs::read(dir.path().join("a.png")).unwrap();
    assert_eq!(a, std::fs::read(dir.path().join("b.png")).unwrap());
    let (w, h, text) = png_info(&dir.path().join("a.png"));
    assert_eq!((w, h), (96, 64));
    assert!(text.contains("Denoising strength: 0.5"), "{text}");

    // Resized to another size.
    run(&[
        "--width", "64", "--height", "64", "--resize", "crop", "--output", "c.png",
    ]);
    assert_eq!(png_info(&dir.path().join("c.png")).0, 64);

    // Inpainting, only the masked area, fill: pixels far from the mask are kept.
    run(&[
        "--mask",
        mask,
        "--mask-blur",
        "0",
        "--inpaint-area",
        "masked",
        "--inpaint-padding",
        "8",
        "--masked-content",
        "fill",
        "--width",
        "64",
        "--height",
        "64",
        "--output",
        "d.png",
    ]);
    let limits = Limits::default();
    let got = read_image(&dir.path().join("d.png"), "d", &limits)
        .unwrap()
        .rgb;
    let (init_rgb, mask_m) = inputs();
    assert_eq!((got.width, got.height), (96, 64));
    let outside = changed_outside(&got, &init_rgb, |x, y| mask_m.data[y * 96 + x] == 0.0);
    assert_eq!(outside, 0);
    assert!(changed_outside(&got, &init_rgb, |x, y| mask_m.data[y * 96 + x] > 0.0) > 0);

    // Outpainting 32 pixels to the right: a 128x64 picture whose old part is kept
    // (the mask reaches 2 x blur = 4 pixels into it).
    run(&[
        "--outpaint",
        "0,32,0,0",
        "--mask-blur",
        "2",
        "--strength",
        "1",
        "--output",
        "e.png",
    ]);
    let got = read_image(&dir.path().join("e.png"), "e", &limits)
        .unwrap()
        .rgb;
    assert_eq!((got.width, got.height), (128, 64));
    let mut kept = true;
    for y in 0..64 {
        for x in 0..96 - 4 - 5 {
            let (i, j) = ((y * 128 + x) * 3, (y * 96 + x) * 3);
            kept &= got.data[i..i + 3] == init_rgb.data[j..j + 3];
        }
    }
    assert!(
        kept,
        "outpainting changed the old picture away from the seam"
    );

    // --init-noise: the diffusers reference's noise gives the reference's image.
    let r = fixture("reference/img2img/img2img_tiny-sd_ddim_s0.3.safetensors");
    let noise = load("reference/img2img/img2img_tiny-sd_ddim_s0.3.safetensors")["noise"].clone();
    let noise_file = dir.path().join("noise.safetensors");
    candle_core::safetensors::save(&HashMap::from([("noise".to_string(), noise)]), &noise_file)
        .unwrap();
    let out = beeswax(
        dir.path(),
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "a red fox in the snow",
            "--negative-prompt",
            "blurry, low quality",
            "--steps",
            "10",
            "--guidance",
            "7.5",
            "--scheduler",
            "ddim",
            "--quiet",
            "--init-image",
            init,
            "--strength",
            "0.3",
            "--init-noise",
            noise_file.to_str().unwrap(),
            "--output",
            "f.png",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = read_image(&dir.path().join("f.png"), "f", &limits)
        .unwrap()
        .rgb;
    let want = candle_core::safetensors::load(&r, &Device::Cpu).unwrap()["image"].clone();
    assert!(max_pixel_diff(&got, &want, 0) <= 2.0);
}

#[test]
fn cli_errors_name_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("models/tiny-sd");
    let init = fixture("reference/img2img/init.png");
    std::fs::write(dir.path().join("junk.png"), b"not a picture").unwrap();
    let square = RgbImage {
        width: 8,
        height: 8,
        data: vec![255; 8 * 8 * 3],
    };
    beeswax::image_out::write_png(&dir.path().join("square.png"), &square, "").unwrap();
    for (args, words) in [
        (
            vec!["--init-image", "missing.png"],
            vec!["--init-image", "missing.png"],
        ),
        (
            vec!["--init-image", "junk.png"],
            vec!["--init-image", "junk.png", "not a readable"],
        ),
        (
            vec![
                "--init-image",
                init.to_str().unwrap(),
                "--mask",
                "square.png",
            ],
            vec!["aspect ratios differ"],
        ),
        (
            vec!["--init-image", init.to_str().unwrap(), "--strength", "1.5"],
            vec!["--strength", "at most 1"],
        ),
        (vec!["--strength", "0.5"], vec!["--init-image"]),
        (
            vec!["--init-image", init.to_str().unwrap(), "--outpaint", "1,2"],
            vec!["left,right,top,bottom"],
        ),
    ] {
        let out = beeswax(
            dir.path(),
            &[
                &[
                    "generate",
                    "--model",
                    model.to_str().unwrap(),
                    "--prompt",
                    "x",
                    "--steps",
                    "2",
                    "--quiet",
                ][..],
                &args,
            ]
            .concat(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        for w in words {
            assert!(err.contains(w), "{args:?}: {err}");
        }
    }
}
