//! Tests of [`super`].

use super::*;
use crate::family::Families;

#[test]
fn shipped_families_parse() {
    let families = Families::builtin();
    let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
    for name in [
        "sd1",
        "sd2",
        "sd2-v",
        "sdxl",
        "sdxl-refiner",
        "sd1-inpaint",
        "sd2-inpaint",
        "sdxl-inpaint",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let sdxl = families.get("sdxl").unwrap();
    assert_eq!(sdxl.architecture, Architecture::Sdxl);
    assert_eq!(sdxl.text_encoders.len(), 2);
    assert_eq!(sdxl.conditioning.time_ids, Some(TimeIds::Size));
    assert_eq!(
        families.get("sd2-v").unwrap().prediction,
        Some(PredictionType::VPrediction)
    );
}

#[test]
fn flux_families_carry_their_settings() {
    let families = Families::builtin();
    let dev = families.get("flux-dev").unwrap();
    let schnell = families.get("flux-schnell").unwrap();
    for (f, guidance, tokens, steps) in [
        (&dev, GuidanceMode::Distilled, 512, 28),
        (&schnell, GuidanceMode::None, 256, 4),
    ] {
        assert_eq!(f.architecture, Architecture::Flux);
        assert_eq!(f.scheduler_kind, SchedulerKind::Flow);
        assert_eq!(f.guidance, guidance);
        assert_eq!(f.max_sequence_length, Some(tokens));
        assert_eq!(f.default_steps, Some(steps));
        assert_eq!(f.size_multiple, Some(16));
        assert_eq!(f.preview, LatentPreview::flux());
        assert_eq!(f.latent_channels, 16);
        let kinds: Vec<_> = f.text_encoders.iter().map(|t| (t.kind, t.pooled)).collect();
        assert_eq!(
            kinds,
            [(TextEncoderKind::Clip, true), (TextEncoderKind::T5, false)]
        );
        assert_eq!(f.denoiser.component, "transformer");
    }
    assert_eq!(dev.default_guidance, Some(3.5));
    // FLUX folders also meet sd1's folder rules (CLIP-L, no unet/): FLUX is tried first.
    let order: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
    let at = |n: &str| order.iter().position(|o| *o == n).unwrap();
    assert!(at("flux-dev") < at("sd1") && at("flux-schnell") < at("sd1"));
}

#[test]
fn errors_name_line_and_field() {
    let text = include_str!("../../../manifests/families/sd1.toml")
        .replace("architecture = \"sd\"", "architecture = \"sd9\"");
    let err = parse(Path::new("x.toml"), &text).unwrap_err().to_string();
    let line = text
        .lines()
        .position(|l| l.starts_with("architecture"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("x.toml:{line}:")), "{err}");
    assert!(err.contains("family.architecture") && err.contains("sd, sdxl"));

    let text = include_str!("../../../manifests/families/sd1.toml")
        .replace("channels = 4", "channels = 3");
    let err = parse(Path::new("x.toml"), &text).unwrap_err().to_string();
    assert!(err.contains("family.latent.preview") && err.contains("3 channels"));

    let text = include_str!("../../../manifests/families/sd1.toml")
        .replace("madebyollin/taesd", "madebyollin/taesd/x");
    let err = parse(Path::new("x.toml"), &text).unwrap_err().to_string();
    assert!(
        err.contains("family.vae.taesd") && err.contains("repo id"),
        "{err}"
    );
    let family = parse(
        Path::new("x.toml"),
        include_str!("../../../manifests/families/sdxl.toml"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(family.vae.taesd.as_deref(), Some("madebyollin/taesdxl"));
}
