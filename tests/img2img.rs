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
use beeswax::pipeline::{Generated, InpaintArea, MaskedContent};
use candle_core::{DType, Device, Tensor};
use common::conformance::Run;
use common::images::{assert_run_matches, changed_pixels};
use common::jobs::{generate_image, generate_inpaint, ImageOptions};
use common::reference::{cases, Case};
use common::{fixture, model};

#[path = "img2img/cli.rs"]
mod cli;

/// The references' picture (96x64) and mask.
fn inputs() -> (RgbImage, Mask) {
    let limits = Limits::default();
    let init = read_image(&fixture("reference/img2img/init.png"), "init", &limits).unwrap();
    let mask = read_image(&fixture("reference/img2img/mask.png"), "mask", &limits).unwrap();
    (
        init.rgb,
        mask_from_picture(&mask, AlphaMask::OpaqueRepaints),
    )
}

/// Runs a reference case (image to image, or inpainting with the references' mask) on `m`:
/// the result and the name of the reference picture to compare it with.
fn run_case(m: &Model, case: &Case, r: &HashMap<String, Tensor>) -> (Generated, &'static str) {
    let (init, mask) = inputs();
    let noise = Some(&r["noise"]);
    if case.kind.as_deref() == Some("img2img") {
        let out = generate_image(m, &case.image_job(&init, noise)).unwrap();
        (out, "image")
    } else {
        let out = generate_inpaint(m, &case.inpaint_job(&init, &mask, noise)).unwrap();
        (out, "image_overlay")
    }
}

#[test]
fn image_to_image_and_inpainting_match_diffusers() {
    let mut models: HashMap<String, Model> = HashMap::new();
    let mut checked = HashMap::<&str, usize>::new();
    let cases = cases("reference/img2img");
    for case in &cases {
        let name = case.model.clone().unwrap();
        let m = models.entry(name.clone()).or_insert_with(|| model(&name));
        assert_eq!(Some(m.networks.in_channels()), case.unet_in_channels);
        let r = case.tensors();
        let (out, image_key) = run_case(m, case, &r);
        let kind = case.kind.as_deref().unwrap();
        assert_eq!(out.images.len(), case.batch);
        let run = Run::of_case(case, &m.family.name);
        assert_run_matches(&run, &out.latents, &out.images, &r, image_key);
        let key = if case.unet_in_channels == Some(9) {
            "9-channel inpaint"
        } else {
            kind
        };
        *checked.entry(key).or_default() += 1;
    }
    eprintln!("checked {checked:?}");
    for (kind, at_least) in [("img2img", 6), ("inpaint", 5), ("9-channel inpaint", 4)] {
        assert!(
            checked.get(kind).copied().unwrap_or(0) >= at_least,
            "{checked:?}"
        );
    }
}

/// Asserts that the inpainting of `init` under `mask` (blurred by `blur`) kept every pixel
/// further than the blur reaches from the mask, and repainted most of the masked ones.
fn check_kept_outside(what: &str, image: &RgbImage, init: &RgbImage, mask: &Mask, blur: f32) {
    let (w, h) = (init.width, init.height);
    assert_eq!((image.width, image.height), (w, h));
    let masked = |x: usize, y: usize| mask.data[y * w + x] > 0.0;
    // The blur reaches floor(2.5 · blur + 0.5) pixels beyond the mask.
    let reach = (2.5 * blur + 0.5) as usize;
    let near_mask = |x: usize, y: usize| {
        (y.saturating_sub(reach)..(y + reach + 1).min(h))
            .any(|yy| (x.saturating_sub(reach)..(x + reach + 1).min(w)).any(|xx| masked(xx, yy)))
    };
    let outside = changed_pixels(image, init, 1, |x, y| !near_mask(x, y));
    assert_eq!(outside, 0, "{what}");
    // ... and the masked region was repainted.
    let inside = changed_pixels(image, init, 1, masked);
    let total = mask.data.iter().filter(|&&v| v > 0.0).count();
    assert!(
        inside * 2 > total,
        "{what}: only {inside} of {total} masked pixels changed"
    );
}

#[test]
fn ordinary_model_inpainting_keeps_pixels_outside_the_mask() {
    let m = model("tiny-sd");
    let (init, mask) = inputs();
    let mut case = Case::new("a red fox", "euler", 4, init.width, init.height);
    case.seed = 7;
    case.strength = Some(0.75);
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
        let options = ImageOptions {
            sample_posterior: true,
            mask_blur: blur,
            area,
            masked_content: content,
            ..Default::default()
        };
        let job = case.inpaint_job_with(&init, &mask, None, &options);
        let out = generate_inpaint(&m, &job).unwrap();
        let what = format!("blur {blur}, {content:?}, {area:?}");
        check_kept_outside(&what, &out.images[0], &init, &mask, blur);
    }
}

/// A small image-to-image case of the tests' own: DDIM, guidance 1, 64x64.
fn small_case(prompt: &str, steps: usize, strength: f64, seed: u64) -> Case {
    let mut case = Case::new(prompt, "ddim", steps, 64, 64);
    case.guidance = 1.0;
    case.strength = Some(strength);
    case.seed = seed;
    case
}

#[test]
fn same_seed_same_picture_and_posterior_sampling_differs_from_the_mean() {
    let m = model("tiny-sd");
    let (init, _) = inputs();
    let case = small_case("a red fox", 4, 0.5, 3);
    let run = |m: &Model, sample_posterior| {
        let options = ImageOptions {
            resize: ResizeMode::Crop,
            sample_posterior,
            ..Default::default()
        };
        let job = case.image_job_with(&init, None, &options);
        generate_image(m, &job).unwrap().images.remove(0)
    };
    let a = run(&m, false);
    let b = run(&m, false);
    let c = run(&m, true);
    assert_eq!(a, b);
    // An inpainting UNet does image-to-image too (mask all ones, masked picture grey).
    let d = run(&model("tiny-sd-inpaint"), false);
    assert_eq!((d.width, d.height), (64, 64));
    assert_ne!(d, a);
    assert_eq!((a.width, a.height), (64, 64));
    assert_ne!(a, c);
}

#[test]
fn bad_inputs_are_refused_with_clear_messages() {
    let m = model("tiny-sd");
    let (init, mask) = inputs();
    for (strength, steps, word) in [
        (0.0, 10, "above 0"),
        (1.5, 10, "at most 1"),
        (0.05, 10, "no step"),
    ] {
        let job = small_case("x", steps, strength, 0).image_job(&init, None);
        let err = generate_image(&m, &job).unwrap_err().to_string();
        assert!(err.contains("strength") && err.contains(word), "{err}");
    }
    let bad_noise = Tensor::zeros((1, 4, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let job = small_case("x", 4, 0.5, 0).image_job(&init, Some(&bad_noise));
    let err = generate_image(&m, &job).unwrap_err().to_string();
    assert!(err.contains("init noise shape"), "{err}");

    // A mask of another aspect ratio is refused; one of the same ratio is resized with a warning.
    let inpaint = |mask: Mask| {
        let job = small_case("x", 2, 0.5, 0).inpaint_job(&init, &mask, None);
        generate_inpaint(&m, &job)
    };
    let err = inpaint(Mask::filled(32, 32, 1.0)).unwrap_err().to_string();
    assert!(err.contains("aspect ratios differ"), "{err}");
    let half = beeswax::image_in::resize_mask(&mask, 48, 32, ResizeMode::Stretch);
    let out = inpaint(half).unwrap();
    assert!(
        out.warnings.iter().any(|w| w.contains("resized")),
        "{:?}",
        out.warnings
    );
    let err = inpaint(Mask::filled(96, 64, 0.0)).unwrap_err().to_string();
    assert!(err.contains("nothing to repaint"), "{err}");
}
