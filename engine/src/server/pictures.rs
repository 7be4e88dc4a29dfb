//! Pictures sent to the HTTP service: the picture (and mask) of image-to-image and inpainting
//! jobs, decoded with [`crate::image_in`]'s limits (file size, and pixel count read from the
//! header before decoding) so a non-image or a decompression bomb is a 4xx naming the field.

use axum::http::StatusCode;
use base64::Engine;

use super::config::ServerConfig;
use super::errors::ApiError;
use crate::image_in::{decode_image, ImageError, Limits, Mask, Picture, RgbImage};

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

/// A picture as a client sent it: base64 text (the JSON APIs) or bytes (multipart forms).
#[derive(Debug, Clone)]
pub enum Sent {
    /// Base64, optionally behind a `data:` URL prefix.
    Base64(String),
    /// The file's bytes.
    Bytes(Vec<u8>),
}

impl Sent {
    fn decode(&self, field: &str, limits: &Limits) -> Result<Picture, ApiError> {
        match self {
            Sent::Base64(text) => decode_base64(field, text, limits),
            Sent::Bytes(bytes) => decode_bytes(field, bytes, limits),
        }
    }
}

/// Decodes a job's picture and optional mask off the async runtime (decoding is CPU work);
/// each error names its field.
pub async fn decode_with_mask(
    limits: Limits,
    picture: (&'static str, Sent),
    mask: Option<(&'static str, Sent)>,
) -> Result<(Picture, Option<Picture>), ApiError> {
    tokio::task::spawn_blocking(move || {
        let decoded = picture.1.decode(picture.0, &limits)?;
        let mask = mask
            .map(|(field, sent)| sent.decode(field, &limits))
            .transpose()?;
        Ok::<_, ApiError>((decoded, mask))
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding the pictures failed: {e}")))?
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
