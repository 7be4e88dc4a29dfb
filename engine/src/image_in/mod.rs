//! Image input: user pictures and masks for image-to-image, inpainting and outpainting.
//!
//! Pictures are decoded from PNG, JPEG or WebP with limits on the file size and the pixel count
//! checked *before* decoding ([`Limits`]), so a decompression bomb is refused with a clear
//! error instead of exhausting memory; a file that ends before its format's end marker is
//! refused too (the decoder would fill the missing rows silently). A decoded picture is an [`RgbImage`] (alpha dropped);
//! a mask is a [`Mask`] of values in [0, 1] where 1 (white) means "repaint". Resizing to the
//! job size follows AUTOMATIC1111's resize modes ([`ResizeMode`]); mask blur, the crop region
//! of "inpaint only masked", masked-content fill and outpaint padding live in the submodules.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageReader};

pub use crate::image_out::RgbImage;

mod complete;
mod fill;
mod mask;
mod outpaint;
mod resize;

pub use fill::fill_masked;
pub use mask::{composite, crop_region, expand_crop_region, gaussian_blur, CropRegion, Mask};
pub use outpaint::{outpaint, Outpaint};
pub use resize::{crop, resize_image, resize_mask, ResizeMode};

/// Errors reading a picture or a mask.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read.
    #[error("{what} {path}: {source}")]
    Read {
        /// Which input (`--init-image`, `--mask`, `init_image`, ...).
        what: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than the limit.
    #[error("{what}: the file is {bytes} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Which input.
        what: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The picture has more pixels than the limit (a decompression bomb, or just too big).
    #[error(
        "{what}: the picture is {width}x{height} = {pixels} pixels, more than the limit of \
         {limit} pixels (refused before decoding; scale it down first)"
    )]
    TooManyPixels {
        /// Which input.
        what: String,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// width × height.
        pixels: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not a PNG, JPEG or WebP picture, or are corrupt.
    #[error("{what}: not a readable PNG, JPEG or WebP picture: {message}")]
    Decode {
        /// Which input.
        what: String,
        /// The decoder's message.
        message: String,
    },
    /// The file ends before the end of the picture (a cut-off upload or download).
    #[error(
        "{what}: the {format} picture is truncated: its data ends before the end of the \
         picture; send the whole file"
    )]
    Truncated {
        /// Which input.
        what: String,
        /// `PNG`, `JPEG` or `WebP`.
        format: &'static str,
    },
    /// A mask cannot be matched to its picture.
    #[error("{what}: {message}")]
    Mismatch {
        /// Which input.
        what: String,
        /// What does not fit and how to fix it.
        message: String,
    },
}

/// Limits on decoded pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted file (or request body part) in bytes.
    pub max_file_bytes: u64,
    /// Largest accepted width × height, checked from the header before decoding.
    pub max_pixels: u64,
}

impl Default for Limits {
    /// 50 MB files and 50 megapixels (about 7000 × 7000).
    fn default() -> Self {
        Self {
            max_file_bytes: 50 * 1024 * 1024,
            max_pixels: 50_000_000,
        }
    }
}

/// A decoded picture: RGB plus the alpha channel when the file has a non-opaque one.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    /// The colour channels.
    pub rgb: RgbImage,
    /// Alpha, one byte per pixel, when the file has an alpha channel that is not all opaque.
    pub alpha: Option<Vec<u8>>,
}

/// Which way round a mask's alpha channel is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlphaMask {
    /// Opaque = repaint (AUTOMATIC1111: painted strokes on a transparent layer; alpha above
    /// 128 counts as painted).
    OpaqueRepaints,
    /// Transparent = repaint (OpenAI's `/v1/images/edits`).
    TransparentRepaints,
}

/// Reads and decodes a picture file; `what` names the input in errors (e.g. `--init-image`).
pub fn read_image(path: &Path, what: &str, limits: &Limits) -> Result<Picture, ImageError> {
    let read_err = |source| ImageError::Read {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let data =
        crate::fs_limits::read_regular(path, limits.max_file_bytes).map_err(|e| match e {
            crate::fs_limits::ReadError::TooLarge { bytes, limit, .. } => ImageError::TooLarge {
                what: format!("{what} {}", path.display()),
                bytes,
                limit,
            },
            other => read_err(other.into_io()),
        })?;
    decode_image(&data, &format!("{what} {}", path.display()), limits)
}

fn check_file_size(bytes: u64, what: &str, limits: &Limits) -> Result<(), ImageError> {
    if bytes > limits.max_file_bytes {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            bytes,
            limit: limits.max_file_bytes,
        });
    }
    Ok(())
}

/// Decodes a PNG, JPEG or WebP picture from memory, refusing files over the size limit and
/// pictures whose header declares more pixels than the limit (before any pixel is decoded).
pub fn decode_image(bytes: &[u8], what: &str, limits: &Limits) -> Result<Picture, ImageError> {
    check_file_size(bytes.len() as u64, what, limits)?;
    let decode_err = |e: &dyn std::fmt::Display| ImageError::Decode {
        what: what.to_string(),
        message: e.to_string(),
    };
    let reader = || {
        let r = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| decode_err(&e))?;
        let name = match r.format() {
            Some(image::ImageFormat::Png) => "PNG",
            Some(image::ImageFormat::Jpeg) => "JPEG",
            Some(image::ImageFormat::WebP) => "WebP",
            Some(other) => {
                return Err(decode_err(&format!("{other:?} pictures are not supported")))
            }
            None => return Err(decode_err(&"the data is not a picture in a known format")),
        };
        Ok((r, name))
    };
    let (header, format) = reader()?;
    let kind = header.format();
    let (width, height) = header.into_dimensions().map_err(|e| decode_err(&e))?;
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            what: what.to_string(),
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(decode_err(&"the picture has no pixels"));
    }
    if kind.is_some_and(|k| complete::is_truncated(bytes, k)) {
        return Err(ImageError::Truncated {
            what: what.to_string(),
            format,
        });
    }
    let (mut r, _) = reader()?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    // Room for the decoded picture at 16 bits x 4 channels plus the decoder's own buffers.
    decoder_limits.max_alloc = Some(pixels * 8 * 2 + (64 << 20));
    r.limits(decoder_limits);
    let decoded = r.decode().map_err(|e| decode_err(&e))?;
    Ok(picture_from(decoded))
}

fn picture_from(decoded: DynamicImage) -> Picture {
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    let alpha = if decoded.color().has_alpha() {
        let rgba = decoded.to_rgba8();
        let alpha: Vec<u8> = rgba.pixels().map(|p| p.0[3]).collect();
        alpha.iter().any(|&a| a != 255).then_some(alpha)
    } else {
        None
    };
    Picture {
        rgb: RgbImage {
            width,
            height,
            data: decoded.to_rgb8().into_raw(),
        },
        alpha,
    }
}

/// PIL's `convert("L")`: ITU-R 601-2 luma, `(299 R + 587 G + 114 B) / 1000`, in fixed point.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// A mask from a decoded picture: its alpha channel when it has a non-opaque one (read as
/// `alpha` says), else its grayscale value (white = repaint, grey = partly).
pub fn mask_from_picture(picture: &Picture, alpha: AlphaMask) -> Mask {
    let (width, height) = (picture.rgb.width, picture.rgb.height);
    let data = match (&picture.alpha, alpha) {
        (Some(a), AlphaMask::OpaqueRepaints) => {
            a.iter().map(|&v| if v > 128 { 1.0 } else { 0.0 }).collect()
        }
        (Some(a), AlphaMask::TransparentRepaints) => {
            a.iter().map(|&v| 1.0 - v as f32 / 255.0).collect()
        }
        (None, _) => picture
            .rgb
            .data
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]) as f32 / 255.0)
            .collect(),
    };
    Mask {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, rgba: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut e = png::Encoder::new(&mut bytes, width, height);
        e.set_color(png::ColorType::Rgba);
        e.set_depth(png::BitDepth::Eight);
        let mut w = e.write_header().unwrap();
        w.write_image_data(rgba).unwrap();
        w.finish().unwrap();
        bytes
    }

    #[test]
    fn decodes_rgba_and_reads_alpha_masks_both_ways() {
        let bytes = png(2, 1, &[10, 20, 30, 255, 200, 100, 0, 0]);
        let p = decode_image(&bytes, "test", &Limits::default()).unwrap();
        assert_eq!(p.rgb.data, vec![10, 20, 30, 200, 100, 0]);
        assert_eq!(p.alpha, Some(vec![255, 0]));
        let m = mask_from_picture(&p, AlphaMask::OpaqueRepaints);
        assert_eq!(m.data, vec![1.0, 0.0]);
        let m = mask_from_picture(&p, AlphaMask::TransparentRepaints);
        assert_eq!(m.data, vec![0.0, 1.0]);
    }

    #[test]
    fn opaque_alpha_is_ignored_and_grayscale_is_the_mask() {
        let bytes = png(2, 1, &[255, 255, 255, 255, 0, 0, 0, 255]);
        let p = decode_image(&bytes, "test", &Limits::default()).unwrap();
        assert_eq!(p.alpha, None);
        let m = mask_from_picture(&p, AlphaMask::OpaqueRepaints);
        assert_eq!(m.data, vec![1.0, 0.0]);
    }

    #[test]
    fn pil_luma() {
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn bombs_and_non_images_are_refused_before_decoding() {
        // A valid PNG header declaring 100000 x 100000 pixels: refused from the header alone.
        let mut bytes = Vec::new();
        {
            let mut e = png::Encoder::new(&mut bytes, 100_000, 100_000);
            e.set_color(png::ColorType::Rgb);
            let mut w = e.write_header().unwrap();
            // A few bytes of image data: a real bomb's data is small too.
            w.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0x03, 0x00])
                .unwrap();
            drop(w);
        }
        let err = decode_image(&bytes, "init_image", &Limits::default()).unwrap_err();
        assert!(matches!(err, ImageError::TooManyPixels { .. }), "{err}");
        assert!(err.to_string().contains("100000x100000"), "{err}");

        let err = decode_image(b"hello, not a picture", "mask", &Limits::default()).unwrap_err();
        assert!(err.to_string().starts_with("mask: not a readable"), "{err}");

        let small = Limits {
            max_file_bytes: 10,
            ..Limits::default()
        };
        let err = decode_image(&png(1, 1, &[0; 4]), "x", &small).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    }
}
