//! AUTOMATIC1111 `POST /sdapi/v1/img2img`: image-to-image and inpainting with A1111's field
//! names (`init_images`, `mask`, `denoising_strength`, `inpainting_fill`, `inpaint_full_res`,
//! `inpaint_full_res_padding`, `mask_blur`, `inpainting_mask_invert`, `resize_mode`) on top of
//! the txt2img fields; the answer has txt2img's shape. Unknown fields are ignored, as A1111 does.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::a1111::{request, run, Txt2ImgBody, NAMES};
use super::errors::{A1111Error, A1111Json, ApiError};
use super::image_job::{self, ImageJob, MaskJob};
use super::request::validate;
use super::service::Service;
use crate::image_in::{mask_from_picture, AlphaMask, ResizeMode};
use crate::pipeline::{InpaintArea, MaskedContent};

/// A1111's defaults for the fields it leaves out.
const DEFAULT_STRENGTH: f64 = 0.75;
const DEFAULT_MASK_BLUR: i64 = 4;

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
    let limits = image_job::limits(&service.config);
    let first = match body.init_images.as_slice() {
        [first, ..] => first,
        [] => {
            return Err(ApiError::invalid(
                "init_images",
                "missing_image",
                "init_images must hold one base64-encoded picture",
            )
            .into())
        }
    };
    let resize = match whole("resize_mode", body.resize_mode, 0, 3)? {
        0 => ResizeMode::Stretch,
        1 => ResizeMode::Crop,
        2 => ResizeMode::Fill,
        _ => {
            return Err(ApiError::invalid(
                "resize_mode",
                "unsupported",
                "resize_mode 3 (just resize, latent upscale) is not supported: use 0 (just \
                 resize), 1 (crop and resize) or 2 (resize and fill)",
            )
            .into())
        }
    };
    let strength = body.denoising_strength.unwrap_or(DEFAULT_STRENGTH);
    let content =
        match whole("inpainting_fill", body.inpainting_fill, 0, 3)? {
            0 => MaskedContent::Fill,
            1 => MaskedContent::Original,
            2 => MaskedContent::LatentNoise,
            _ => return Err(ApiError::invalid(
                "inpainting_fill",
                "unsupported",
                "inpainting_fill 3 (latent nothing) is not supported: use 0 (fill), 1 (original) \
                 or 2 (latent noise)",
            )
            .into()),
        };
    let blur = whole("mask_blur", body.mask_blur, DEFAULT_MASK_BLUR, 256)?;
    let padding = whole(
        "inpaint_full_res_padding",
        body.inpaint_full_res_padding,
        0,
        4096,
    )?;
    let full_res = flag("inpaint_full_res", body.inpaint_full_res.as_ref())?;
    let invert = flag(
        "inpainting_mask_invert",
        body.inpainting_mask_invert.as_ref(),
    )?;

    // Decode off the async runtime: pictures can be large.
    let (init, mask) = {
        let first = first.clone();
        let mask = body.mask.clone().filter(|m| !m.trim().is_empty());
        tokio::task::spawn_blocking(move || {
            let init = image_job::decode_base64("init_images[0]", &first, &limits)?;
            let mask = mask
                .map(|m| image_job::decode_base64("mask", &m, &limits))
                .transpose()?;
            Ok::<_, ApiError>((init, mask))
        })
        .await
        .map_err(|e| ApiError::internal(format!("decoding the pictures failed: {e}")))??
    };
    let mask = match mask {
        None => None,
        Some(picture) => {
            let mut mask = mask_from_picture(&picture, AlphaMask::OpaqueRepaints);
            if invert {
                mask.data.iter_mut().for_each(|v| *v = 1.0 - *v);
            }
            image_job::check_mask("mask", &mask, &init.rgb)?;
            Some(MaskJob {
                mask,
                blur: blur as f32,
                area: if full_res {
                    InpaintArea::Masked {
                        padding: padding as usize,
                    }
                } else {
                    InpaintArea::Whole
                },
                content,
            })
        }
    };

    let mut spec = validate(&service.catalog, request(&service, body.base), &NAMES)?;
    image_job::check_strength("denoising_strength", strength, spec.job.steps)?;
    spec.image = Some(ImageJob {
        init_image: init.rgb,
        strength,
        resize,
        mask,
    });
    run(&service, spec, send_images).await
}
