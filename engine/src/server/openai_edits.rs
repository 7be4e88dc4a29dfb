//! OpenAI Images `POST /v1/images/edits` (multipart): `image`, `mask` (transparent = repaint,
//! as OpenAI's), `prompt`, `n`, `size`, `response_format`, `model`; beeswax extras
//! `negative_prompt`, `steps`, `guidance`, `seed`, `strength`. Without a mask, a picture with a
//! transparent region is inpainted there; an opaque picture is transformed as a whole
//! (image-to-image). Answers like `/v1/images/generations`.

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::Value;

use super::errors::ApiError;
use super::jobs::Origin;
use super::openai::{answer, parse_size, respond, response_format, NAMES};
use super::pictures::{self, Sent};
use super::request::{validate, GenerateRequest};
use super::service::Service;
use super::site::Site;
use crate::image_in::{mask_from_picture, AlphaMask, Mask, Picture, ResizeMode};
use crate::pipeline::{ImageRequest, MaskRequest, MaskedContent};
use crate::prompt::PromptSyntax;

/// Strength of an edit with a mask (the masked region is repainted from scratch).
const MASKED_STRENGTH: f64 = 1.0;
/// Strength of an edit without one.
const WHOLE_STRENGTH: f64 = crate::defaults::STRENGTH;

#[derive(Default)]
struct Form {
    image: Option<Vec<u8>>,
    mask: Option<Vec<u8>>,
    text: Vec<(String, String)>,
}

impl Form {
    fn get(&self, name: &str) -> Option<&str> {
        self.text
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|v| {
                v.trim().parse().map_err(|_| {
                    ApiError::invalid(
                        name,
                        "invalid_value",
                        format!("{name} `{v}` is not a number"),
                    )
                })
            })
            .transpose()
    }
}

fn bad_form(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(
        "body",
        "invalid_multipart",
        format!("the request is not a readable multipart form: {e}"),
    )
}

async fn read_form(mut multipart: Multipart) -> Result<Form, ApiError> {
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(bad_form)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "image" | "image[]" => {
                let bytes = field.bytes().await.map_err(bad_form)?;
                if form.image.is_some() {
                    return Err(ApiError::invalid(
                        "image",
                        "too_many_images",
                        "send one image: beeswax edits one picture per request",
                    ));
                }
                form.image = Some(bytes.to_vec());
            }
            "mask" => form.mask = Some(field.bytes().await.map_err(bad_form)?.to_vec()),
            _ => {
                let text = field.text().await.map_err(bad_form)?;
                form.text.push((name, text));
            }
        }
    }
    Ok(form)
}

/// The form's picture and mask (transparent = repaint; without a mask, the picture's own
/// transparency when it has any), decoded off the async runtime.
async fn pictures_of(service: &Service, form: &Form) -> Result<(Picture, Option<Mask>), ApiError> {
    let image = form.image.clone().ok_or_else(|| {
        ApiError::invalid(
            "image",
            "missing_image",
            "image is required: the picture to edit",
        )
    })?;
    let mask = form.mask.clone();
    let (picture, mask) = service
        .decoder
        .decode_with_mask(
            ("image", Sent::Bytes(image)),
            mask.map(|m| ("mask", Sent::Bytes(m))),
        )
        .await?;
    let mask = match &mask {
        Some(m) => {
            let mask = mask_from_picture(m, AlphaMask::TransparentRepaints);
            pictures::check_mask("mask", &mask, &picture.rgb)?;
            Some(mask)
        }
        None if picture.alpha.is_some() => {
            Some(mask_from_picture(&picture, AlphaMask::TransparentRepaints))
        }
        None => None,
    };
    Ok((picture, mask))
}

/// The 415 for a body that is not a multipart form.
fn not_multipart(e: MultipartRejection) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        "unsupported_media_type",
        format!(
            "/v1/images/edits takes a multipart form (Content-Type: multipart/form-data with a \
             boundary), as OpenAI's clients send it: {}",
            e.body_text()
        ),
    )
}

/// `POST /v1/images/edits`.
pub async fn edits(
    State(service): State<Arc<Service>>,
    Extension(site): Extension<Arc<Site>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let multipart = multipart.map_err(not_multipart)?;
    let form = read_form(multipart).await?;
    let prompt = form.get("prompt").unwrap_or_default().to_string();
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "invalid_prompt",
            "prompt must not be empty",
        ));
    }
    let b64 = response_format(form.get("response_format"))?;
    let (width, height) = parse_size(form.get("size"))?;
    let (picture, mask) = pictures_of(&service, &form).await?;
    let default_strength = if mask.is_some() {
        MASKED_STRENGTH
    } else {
        WHOLE_STRENGTH
    };
    let strength = form.number("strength")?.unwrap_or(default_strength);
    let request = GenerateRequest {
        pipeline: form.get("model").map(str::to_string),
        prompt,
        negative_prompt: form.get("negative_prompt").map(str::to_string),
        steps: form.number("steps")?,
        guidance: form.number("guidance")?,
        true_cfg: None,
        width,
        height,
        seed: form.number("seed")?,
        batch: Some(form.number("n")?.unwrap_or(1)),
        iterations: None,
        scheduler: form.get("scheduler").map(str::to_string),
        schedule: form.get("schedule").map(str::to_string),
        clip_skip: None,
        // OpenAI clients send natural language: read it literally, as diffusers does.
        prompt_syntax: Some(PromptSyntax::Plain),
        pad_prompts: None,
        preview_every: None,
        loras: Vec::new(),
        image: Some(ImageRequest {
            picture: picture.rgb,
            strength: Some(strength),
            resize: Some(ResizeMode::Stretch),
            sample_posterior: false,
            init_noise: None,
            mask: mask.map(|mask| MaskRequest {
                mask,
                blur: Some(0.0),
                only_masked: None,
                content: Some(MaskedContent::Original),
            }),
        }),
        pre_processors: Vec::new(),
        refiner: None,
        refiner_switch_at: None,
    };
    let not_found = |mut e: ApiError| {
        if e.code == "unknown_pipeline" || e.code == "pipeline_not_served" {
            e.status = StatusCode::NOT_FOUND;
            e.code = "model_not_found";
        }
        e
    };
    if service.model_less() {
        let submitted = service.submit_described(&request, &NAMES, Origin::OpenAi);
        let job = submitted.await.map_err(not_found)?;
        return answer(&service, job, b64, &site).await;
    }
    let spec = validate(&service, request, &NAMES).map_err(not_found)?;
    respond(&service, spec, b64, &site).await
}
