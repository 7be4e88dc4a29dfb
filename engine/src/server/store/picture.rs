//! An image job's picture and mask as PNG files (fast compression: they are kept only until
//! the job has run). A mask is stored as 8-bit gray: masks decoded from pictures are
//! multiples of 1/255, which round-trip exactly.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, ImageFormat};

use crate::image_in::Mask;
use crate::image_out::RgbImage;

fn encode(
    data: &[u8],
    width: usize,
    height: usize,
    color: ExtendedColorType,
) -> Result<Vec<u8>, String> {
    let (w, h) = (
        u32::try_from(width).map_err(|e| e.to_string())?,
        u32::try_from(height).map_err(|e| e.to_string())?,
    );
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(data, w, h, color)
        .map_err(|e| format!("cannot encode the picture: {e}"))?;
    Ok(out)
}

/// `picture` as a PNG.
pub fn encode_rgb(picture: &RgbImage) -> Result<Vec<u8>, String> {
    encode(
        &picture.data,
        picture.width,
        picture.height,
        ExtendedColorType::Rgb8,
    )
}

/// `mask` (values in [0, 1]) as an 8-bit gray PNG.
pub fn encode_mask(mask: &Mask) -> Result<Vec<u8>, String> {
    let gray: Vec<u8> = (mask.data.iter())
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    encode(&gray, mask.width, mask.height, ExtendedColorType::L8)
}

fn decode(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    image::load_from_memory_with_format(bytes, ImageFormat::Png)
        .map_err(|e| format!("not a readable PNG: {e}"))
}

/// A PNG as an RGB picture.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    let rgb = decode(bytes)?.to_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

/// A gray PNG as a mask.
pub fn decode_mask(bytes: &[u8]) -> Result<Mask, String> {
    let gray = decode(bytes)?.to_luma8();
    Ok(Mask {
        width: gray.width() as usize,
        height: gray.height() as usize,
        data: gray.pixels().map(|p| f32::from(p.0[0]) / 255.0).collect(),
    })
}
