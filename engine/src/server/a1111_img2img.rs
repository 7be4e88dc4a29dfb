//! AUTOMATIC1111 `POST /sdapi/v1/img2img`: image-to-image and inpainting with A1111's field
//! names (`init_images`, `mask`, `denoising_strength`, `inpainting_fill`, `inpaint_full_res`,
//! `inpaint_full_res_padding`, `mask_blur`, `inpainting_mask_invert`, `resize_mode`) on top of
//! the txt2img fields; the answer has txt2img's shape. Unknown fields are ignored, as A1111 does.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::a1111::{request, run, run_described, Txt2ImgBody, NAMES};
use super::errors::{A1111Error, A1111Json, ApiError};
use super::pictures::{self, Sent};
use super::request::validate;
use super::service::Service;
use crate::image_in::{mask_from_picture, AlphaMask, ResizeMode};
use crate::pipeline::{ImageRequest, MaskRequest, MaskedContent};
use crate::{defaults, limits};

/// The img2img request (the fields beeswax uses).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Img2ImgBody {
    #[serde(flatten)]
    base: Txt2ImgBody,
    init_images: Vec<String>,
    mask: Option<String>,
    denoising_strength: Option<f64>,
    inpainting_fill: Option<i64>,
    inpaint_full_res: Option<Value>,
    inpaint_full_res_padding: Option<i64>,
    mask_blur: Option<i64>,
    inpainting_mask_invert: Option<Value>,
    resize_mode: Option<i64>,
}

/// A1111 sends some flags as booleans and some as 0/1.
fn flag(field: &str, value: Option<&Value>) -> Result<bool, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_i64() == Some(0) => Ok(false),
        Some(Value::Number(n)) if n.as_i64() == Some(1) => Ok(true),
        Some(other) => Err(ApiError::invalid(
            field,
            "invalid_value",
            format!("{field} must be true/false or 0/1 (got {other})"),
        )),
    }
}

fn whole(field: &str, value: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let v = value.unwrap_or(default);
    if !(0..=max).contains(&v) {
        return Err(ApiError::invalid(
            field,
            "out_of_range",
            format!("{field} must be between 0 and {max} (got {v})"),
        ));
    }
    Ok(v)
}

/// `POST /sdapi/v1/img2img`.
pub async fn img2img(
    State(service): State<Arc<Service>>,
    A1111Json(body): A1111Json<Img2ImgBody>,
) -> Result<Json<Value>, A1111Error> {
    let send_images = body.base.send_images.unwrap_or(true);
    let image = image_request(&service, &body).await?;
    let mut request = request(&service, body.base);
    request.image = Some(image);
    if service.model_less() {
        return run_described(&service, &request, send_images).await;
    }
    let spec = validate(&service, request, &NAMES)?;
    run(&service, spec, send_images).await
}

/// `resize_mode`: 0 just resize, 1 crop and resize, 2 resize and fill.
fn resize_mode(value: Option<i64>) -> Result<ResizeMode, ApiError> {
    match whole("resize_mode", value, 0, 3)? {
        0 => Ok(ResizeMode::Stretch),
        1 => Ok(ResizeMode::Crop),
        2 => Ok(ResizeMode::Fill),
        _ => Err(ApiError::invalid(
            "resize_mode",
            "unsupported",
            "resize_mode 3 (just resize, latent upscale) is not supported: use 0 (just \
             resize), 1 (crop and resize) or 2 (resize and fill)",
        )),
    }
}

/// `inpainting_fill`: 0 fill, 1 original, 2 latent noise.
fn masked_content(value: Option<i64>) -> Result<MaskedContent, ApiError> {
    match whole("inpainting_fill", value, 0, 3)? {
        0 => Ok(MaskedContent::Fill),
        1 => Ok(MaskedContent::Original),
        2 => Ok(MaskedContent::LatentNoise),
        _ => Err(ApiError::invalid(
            "inpainting_fill",
            "unsupported",
            "inpainting_fill 3 (latent nothing) is not supported: use 0 (fill), 1 (original) \
             or 2 (latent noise)",
        )),
    }
}

/// The picture and mask of an img2img body, decoded off the async runtime (pictures can be
/// large), with A1111's mask options.
async fn image_request(service: &Service, body: &Img2ImgBody) -> Result<ImageRequest, ApiError> {
    let Some(first) = body.init_images.first().cloned() else {
        return Err(ApiError::invalid(
            "init_images",
            "missing_image",
            "init_images must hold one base64-encoded picture",
        ));
    };
    let resize = resize_mode(body.resize_mode)?;
    let content = masked_content(body.inpainting_fill)?;
    let blur = whole(
        "mask_blur",
        body.mask_blur,
        defaults::MASK_BLUR as i64,
        *limits::MASK_BLUR.end() as i64,
    )?;
    let padding = whole(
        "inpaint_full_res_padding",
        body.inpaint_full_res_padding,
        defaults::INPAINT_PADDING as i64,
        *limits::INPAINT_PADDING.end() as i64,
    )?;
    let full_res = flag("inpaint_full_res", body.inpaint_full_res.as_ref())?;
    let invert = flag(
        "inpainting_mask_invert",
        body.inpainting_mask_invert.as_ref(),
    )?;
    let mask = body.mask.clone().filter(|m| !m.trim().is_empty());
    let (init, mask) = service
        .decoder
        .decode_with_mask(
            ("init_images[0]", Sent::Base64(first)),
            mask.map(|m| ("mask", Sent::Base64(m))),
        )
        .await?;
    let mask = match mask {
        None => None,
        Some(picture) => {
            let mut mask = mask_from_picture(&picture, AlphaMask::OpaqueRepaints);
            if invert {
                mask.data.iter_mut().for_each(|v| *v = 1.0 - *v);
            }
            pictures::check_mask("mask", &mask, &init.rgb)?;
            Some(MaskRequest {
                mask,
                blur: Some(blur as f32),
                only_masked: full_res.then_some(Some(padding as usize)),
                content: Some(content),
            })
        }
    };
    Ok(ImageRequest {
        picture: init.rgb,
        strength: body.denoising_strength,
        resize: Some(resize),
        sample_posterior: false,
        init_noise: None,
        mask,
    })
}
