//! Pictures sent to the HTTP service: the picture (and mask) of image-to-image and inpainting
//! jobs, decoded by the service's [`Decoder`] with [`crate::image_in`]'s checks (file size,
//! pixel count read from the header before decoding, truncated files) so a non-image, a cut-off
//! file or a decompression bomb is a 4xx naming the field.
//!
//! The pixel limit follows the largest output the server makes: a picture may have up to
//! [`limits::PICTURE_HEADROOM`] times the pixels of the largest `--max-width` x `--max-height`
//! of the server and its pipelines (larger init images are resized down, as in A1111), at most
//! [`limits::PICTURE_PIXELS_CAP`] and never less than one output. At most [`decode_slots`]
//! requests decode at once, on blocking threads; the others wait for a slot holding only the
//! bytes they were sent, not decoded pixels.

use std::sync::Arc;

use axum::http::StatusCode;
use base64::Engine;
use tokio::sync::Semaphore;

use super::catalog::Catalog;
use super::config::ServerConfig;
use super::errors::ApiError;
use crate::image_in::{decode_image, ImageError, Limits, Mask, Picture, RgbImage};
use crate::limits;

/// How many pictures the server decodes at once: the cores, at most 4 (each decode may hold
/// a picture at the pixel limit several times over).
pub fn decode_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Decodes what clients send, within the server's limits and a bounded number at a time.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    /// The largest output width and height, from which the pixel limit follows.
    output: (usize, usize),
    slots: Arc<Semaphore>,
}

impl Decoder {
    /// The decoder of a server with `config` serving `catalog`, decoding `slots` pictures at
    /// once (at least one).
    pub fn new(config: &ServerConfig, catalog: &Catalog, slots: usize) -> Self {
        let (width, height) = catalog.all().iter().map(|p| &p.limits).fold(
            (config.limits.max_width, config.limits.max_height),
            |(w, h), l| (w.max(l.max_width), h.max(l.max_height)),
        );
        Self::for_output(config.max_body_bytes as u64, (width, height), slots)
    }

    /// A decoder for outputs of at most `output` (width, height) and files of at most
    /// `max_file_bytes` (capped at [`Limits::default`]'s), decoding `slots` pictures at once.
    pub fn for_output(max_file_bytes: u64, output: (usize, usize), slots: usize) -> Self {
        Self {
            limits: Limits {
                max_file_bytes: Limits::default().max_file_bytes.min(max_file_bytes),
                max_pixels: limits::picture_pixels(output.0, output.1),
            },
            output,
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// The limits pictures are decoded with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes a job's picture and optional mask on a blocking thread once a decoding slot is
    /// free; each error names its field.
    pub async fn decode_with_mask(
        &self,
        picture: (&'static str, Sent),
        mask: Option<(&'static str, Sent)>,
    ) -> Result<(Picture, Option<Picture>), ApiError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::internal(format!("the picture decoder is closed: {e}")))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let decoded = this.decode(picture.0, &picture.1)?;
            let mask = mask
                .map(|(field, sent)| this.decode(field, &sent))
                .transpose()?;
            Ok::<_, ApiError>((decoded, mask))
        })
        .await
        .map_err(|e| ApiError::internal(format!("decoding the pictures failed: {e}")))?
    }

    fn decode(&self, field: &str, sent: &Sent) -> Result<Picture, ApiError> {
        let decoded = match sent {
            Sent::Base64(text) => decode_image(&base64_bytes(field, text)?, field, &self.limits),
            Sent::Bytes(bytes) => decode_image(bytes, field, &self.limits),
        };
        decoded.map_err(|e| self.refusal(field, e))
    }

    /// 413 when over the limits (saying which limit and how to raise it), 400 otherwise.
    fn refusal(&self, field: &str, e: ImageError) -> ApiError {
        let too_large = |message: String| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "image_too_large",
                message,
            )
            .with_param(field)
        };
        match e {
            ImageError::TooManyPixels {
                width,
                height,
                pixels,
                limit,
                ..
            } => {
                let (w, h) = self.output;
                too_large(format!(
                    "{field}: the picture is {width}x{height} = {pixels} pixels, more than this \
                     server's limit of {limit} pixels ({} times its largest output, {w}x{h}, \
                     at most {}; refused before decoding): scale the picture down, or raise \
                     the server's --max-width/--max-height (or the pipeline's \
                     max_width/max_height)",
                    limits::PICTURE_HEADROOM,
                    limits::PICTURE_PIXELS_CAP,
                ))
            }
            ImageError::TooLarge { .. } => too_large(format!(
                "{e}; the limit is the server's --max-body-bytes (at most {} bytes)",
                Limits::default().max_file_bytes
            )),
            other => ApiError::invalid(field, "invalid_image", other.to_string()),
        }
    }
}

/// A picture as a client sent it: base64 text (the JSON APIs) or bytes (multipart forms).
#[derive(Debug, Clone)]
pub enum Sent {
    /// Base64, optionally behind a `data:` URL prefix.
    Base64(String),
    /// The file's bytes.
    Bytes(Vec<u8>),
}

/// The bytes of a picture sent as base64 (a `data:image/...;base64,` prefix is allowed) in
/// `field`.
fn base64_bytes(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    let text = text.trim();
    let data = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, d)| d),
        None => text,
    };
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.as_bytes()))
        .map_err(|e| {
            ApiError::invalid(
                field,
                "invalid_image",
                format!("{field}: not valid base64 ({e}); send a base64-encoded PNG, JPEG or WebP"),
            )
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

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::time::Duration;

    use super::*;

    fn encoded(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
        let picture = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 9) as u8, (y * 13) as u8, ((x + y) * 5) as u8])
        });
        let mut bytes = Cursor::new(Vec::new());
        picture.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    /// A small JPEG whose frame header claims `width` x `height` (its data is an 8x8 one's).
    fn lying_jpeg(width: u16, height: u16) -> Vec<u8> {
        let mut bytes = encoded(8, 8, image::ImageFormat::Jpeg);
        let sof = bytes
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline frame header");
        bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        bytes
    }

    async fn decode(decoder: &Decoder, bytes: Vec<u8>) -> Result<Picture, ApiError> {
        let (picture, _) = decoder
            .decode_with_mask(("init_image", Sent::Bytes(bytes)), None)
            .await?;
        Ok(picture)
    }

    #[tokio::test]
    async fn the_pixel_limit_follows_the_largest_output() {
        let decoder = Decoder::for_output(4 << 20, (2048, 2048), 1);
        assert_eq!(decoder.limits().max_pixels, 4 * 2048 * 2048);
        let bomb = lying_jpeg(7000, 7000);
        assert!(bomb.len() < 1000, "{} bytes", bomb.len());
        let e = decode(&decoder, bomb).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.param.as_deref(), Some("init_image"));
        for part in ["7000x7000", "16777216", "2048x2048", "--max-width"] {
            assert!(e.message.contains(part), "{part}: {}", e.message);
        }
        // Twice the output's width and height fits (it is resized down).
        let big = encoded(4096, 128, image::ImageFormat::Png);
        let small = Decoder::for_output(4 << 20, (2048, 64), 1);
        assert_eq!(decode(&small, big.clone()).await.unwrap().rgb.width, 4096);
        let smaller = Decoder::for_output(4 << 20, (2040, 64), 1);
        let e = decode(&smaller, big).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.message);
        // The cap: 50 MP, but never less than one output.
        assert_eq!(limits::picture_pixels(8192, 8192), 8192 * 8192);
        assert_eq!(
            limits::picture_pixels(4096, 4096),
            limits::PICTURE_PIXELS_CAP
        );
    }

    #[tokio::test]
    async fn truncated_pictures_are_refused_naming_the_field() {
        let decoder = Decoder::for_output(4 << 20, (512, 512), 1);
        for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let whole = encoded(64, 48, format);
            assert!(decode(&decoder, whole.clone()).await.is_ok(), "{format:?}");
            let cut = whole[..whole.len() * 2 / 3].to_vec();
            let e = decode(&decoder, cut).await.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{format:?}");
            assert_eq!(e.param.as_deref(), Some("init_image"));
            assert!(e.message.contains("truncated"), "{format:?}: {}", e.message);
        }
    }

    #[tokio::test]
    async fn decodes_wait_for_a_free_slot() {
        let decoder = Decoder::for_output(4 << 20, (512, 512), 1);
        let held = decoder.slots.clone().acquire_owned().await.unwrap();
        let png = encoded(16, 16, image::ImageFormat::Png);
        let waiting =
            tokio::time::timeout(Duration::from_millis(300), decode(&decoder, png.clone()));
        assert!(
            waiting.await.is_err(),
            "a decode ran while every slot was taken"
        );
        drop(held);
        assert_eq!(decode(&decoder, png).await.unwrap().rgb.width, 16);
    }
}
