//! Image inputs of HTTP jobs: the picture (and mask) of image-to-image and inpainting jobs,
//! decoded with [`crate::image_in`]'s limits (file size, and pixel count read from the header
//! before decoding) so a non-image or a decompression bomb is a 4xx naming the field, and the
//! one place a job is run by its mode ([`run`]): text to image, image to image or inpaint.

use std::ops::ControlFlow;

use axum::http::StatusCode;
use base64::Engine;
use candle_core::Tensor;

use super::config::ServerConfig;
use super::errors::ApiError;
use crate::image_in::{decode_image, ImageError, Limits, Mask, Picture, ResizeMode, RgbImage};
use crate::pipeline::{
    image_to_image, inpaint, text_to_image, ImageToImage, Inpaint, InpaintArea, MaskedContent,
    StableDiffusion, StepProgress, TextToImage,
};
use crate::Result;

/// The picture side of an image-to-image or inpainting job.
#[derive(Debug, Clone)]
pub struct ImageJob {
    /// The picture to start from.
    pub init_image: RgbImage,
    /// How much to repaint, in (0, 1].
    pub strength: f64,
    /// How the picture is fitted to the job size.
    pub resize: ResizeMode,
    /// The mask, for inpainting.
    pub mask: Option<MaskJob>,
}

/// The mask side of an inpainting job.
#[derive(Debug, Clone)]
pub struct MaskJob {
    /// 1 = repaint.
    pub mask: Mask,
    /// Gaussian blur of the mask in pixels.
    pub blur: f32,
    /// Whole picture or only the masked region.
    pub area: InpaintArea,
    /// What the masked region starts from.
    pub content: MaskedContent,
}

impl ImageJob {
    /// `img2img` or `inpaint`.
    pub fn mode(&self) -> &'static str {
        if self.mask.is_some() {
            "inpaint"
        } else {
            "img2img"
        }
    }
}

/// The picture limits of this server: the image crate's defaults, files no larger than a
/// request body.
pub fn limits(config: &ServerConfig) -> Limits {
    let default = Limits::default();
    Limits {
        max_file_bytes: default.max_file_bytes.min(config.max_body_bytes as u64),
        ..default
    }
}

/// Decodes a picture sent as base64 (a `data:image/...;base64,` prefix is allowed) in `field`.
pub fn decode_base64(field: &str, text: &str, limits: &Limits) -> Result<Picture, ApiError> {
    let text = text.trim();
    let data = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, d)| d),
        None => text,
    };
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.as_bytes()))
        .map_err(|e| {
            ApiError::invalid(
                field,
                "invalid_image",
                format!("{field}: not valid base64 ({e}); send a base64-encoded PNG, JPEG or WebP"),
            )
        })?;
    decode_bytes(field, &bytes, limits)
}

/// Decodes picture bytes of `field`: 413 when over the limits, 400 when not a picture.
pub fn decode_bytes(field: &str, bytes: &[u8], limits: &Limits) -> Result<Picture, ApiError> {
    decode_image(bytes, field, limits).map_err(|e| match e {
        ImageError::TooLarge { .. } | ImageError::TooManyPixels { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "image_too_large",
            e.to_string(),
        )
        .with_param(field),
        other => ApiError::invalid(field, "invalid_image", other.to_string()),
    })
}

/// Checks `strength` (named `field`) is in (0, 1] and leaves at least one of `steps` to run.
pub fn check_strength(field: &str, strength: f64, steps: usize) -> Result<(), ApiError> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(ApiError::invalid(
            field,
            "out_of_range",
            format!("{field} must be above 0 and at most 1 (got {strength})"),
        ));
    }
    if (steps as f64 * strength) < 1.0 {
        return Err(ApiError::invalid(
            field,
            "out_of_range",
            format!(
                "{field} {strength} with {steps} steps leaves no step to run \
                 (steps × {field} < 1): raise {field} or steps"
            ),
        ));
    }
    Ok(())
}

/// Checks a mask can be matched to its picture: the same size, or the same aspect ratio
/// (it is then resized); `field` names the mask.
pub fn check_mask(field: &str, mask: &Mask, picture: &RgbImage) -> Result<(), ApiError> {
    let (mw, mh) = (mask.width as f64, mask.height as f64);
    let (pw, ph) = (picture.width as f64, picture.height as f64);
    if (mw / mh - pw / ph).abs() > 0.01 * (pw / ph) {
        return Err(ApiError::invalid(
            field,
            "mask_mismatch",
            format!(
                "{field} is {}x{} but the picture is {}x{}: the aspect ratios differ; send a \
                 mask of the picture's size",
                mask.width, mask.height, picture.width, picture.height
            ),
        ));
    }
    Ok(())
}

/// Runs one iteration of a job by its mode: text to image, image to image or inpainting, with
/// the latents handed to `on_step` every `preview_every` steps (and at the last) for previews.
pub fn run(
    model: &StableDiffusion,
    settings: &TextToImage,
    image: Option<&ImageJob>,
    preview_every: Option<usize>,
    on_step: &mut dyn FnMut(StepProgress, Option<&Tensor>) -> ControlFlow<()>,
) -> Result<Output> {
    let progress = &mut |p: StepProgress| {
        let preview = preview_every
            .filter(|&every| p.step % every == 0 || p.step == p.total)
            .map(|_| p.latents.clone());
        on_step(p, preview.as_ref())
    };
    let Some(image) = image else {
        let generated = text_to_image(model, settings, progress)?;
        return Ok(Output {
            images: generated.images,
            warnings: generated.warnings,
        });
    };
    let img2img = ImageToImage {
        base: settings.clone(),
        init_image: image.init_image.clone(),
        strength: image.strength,
        resize: image.resize,
        sample_posterior: false,
        init_noise: None,
    };
    let generated = match &image.mask {
        None => image_to_image(model, &img2img, progress)?,
        Some(m) => inpaint(
            model,
            &Inpaint {
                image: img2img,
                mask: m.mask.clone(),
                mask_blur: m.blur,
                area: m.area,
                masked_content: m.content,
            },
            progress,
        )?,
    };
    Ok(Output {
        images: generated.images,
        warnings: generated.warnings,
    })
}

/// Images and warnings of one run.
#[derive(Debug)]
pub struct Output {
    /// The decoded images.
    pub images: Vec<RgbImage>,
    /// Things the user should know (e.g. a truncated prompt).
    pub warnings: Vec<String>,
}
