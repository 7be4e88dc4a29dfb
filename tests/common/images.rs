//! Images: the one comparison with a reference picture (within 2/255), pixel differences
//! between two images, and reading and making PNGs.

use std::collections::HashMap;
use std::path::Path;

use beeswax::image_out::RgbImage;
use candle_core::{DType, Device, Tensor};

use super::conformance::{record, Measured, Run};

/// How far (in 1/255) an image may be from the reference's: the engine's parity threshold.
pub const IMAGE_TOLERANCE: f32 = 2.0;

/// `image` as floats [H, W, 3] in 0..=255.
pub fn pixels(image: &RgbImage) -> Tensor {
    Tensor::from_vec(
        image.data.iter().map(|&b| b as f32).collect::<Vec<_>>(),
        (image.height, image.width, 3),
        &Device::Cpu,
    )
    .unwrap()
}

/// Largest and mean difference, in 1/255, between `image` and a reference picture `want`
/// [H, W, 3] (8-bit values, or floats in [0, 1] as diffusers' `output_type="np"` gives them).
pub fn pixel_diffs(image: &RgbImage, want: &Tensor) -> (f32, f32) {
    pixel_tensor_diffs(&pixels(image), want)
}

/// Like [`pixel_diffs`], for a picture `got` given as floats [H, W, 3] in 0..=255 (a decoded
/// image before rounding).
pub fn pixel_tensor_diffs(got: &Tensor, want: &Tensor) -> (f32, f32) {
    let want = if want.dtype() == DType::U8 {
        want.to_dtype(DType::F32).unwrap()
    } else {
        (want.to_dtype(DType::F32).unwrap() * 255.0).unwrap()
    };
    assert_eq!(got.dims(), want.dims(), "image size");
    (
        super::compare::max_abs_diff(got, &want),
        super::compare::mean_abs_diff(got, &want),
    )
}

/// Largest difference, in 1/255, between `image` and a reference picture `want` (see
/// [`pixel_diffs`]).
pub fn max_pixel_diff(image: &RgbImage, want: &Tensor) -> f32 {
    pixel_diffs(image, want).0
}

/// Asserts that each of `images` is within 2/255 of its picture in the reference batch `want`
/// [B, H, W, 3] (see [`max_pixel_diff`]).
pub fn assert_images_close(what: &str, images: &[RgbImage], want: &Tensor) {
    assert!(!images.is_empty(), "{what}: no image");
    for (i, image) in images.iter().enumerate() {
        let diff = max_pixel_diff(image, &want.get(i).unwrap());
        assert!(
            diff <= IMAGE_TOLERANCE,
            "{what} image {i}: max difference {diff}/255 exceeds {IMAGE_TOLERANCE}/255"
        );
        eprintln!("{what} image {i}: max difference {diff}/255");
    }
}

/// The latents tolerance of a whole run, in units of the reference latents' std.
pub const LATENTS_TOLERANCE: f32 = 1e-3;

/// Asserts that a run matches its reference `r`: final latents within 1e-3 x the std of
/// `r["latents"]`, and each image within 2/255 of its picture in `r[image_key]`; the row of
/// `run` joins the conformance table (see [`assert_conforms`]).
pub fn assert_run_matches(
    run: &Run,
    latents: &Tensor,
    images: &[RgbImage],
    r: &HashMap<String, Tensor>,
    image_key: &str,
) {
    let latents = Some((latents, &r["latents"], LATENTS_TOLERANCE));
    let images: Vec<Tensor> = images.iter().map(pixels).collect();
    assert_conforms(run, latents, &images, &r[image_key]);
}

/// The one whole-run comparison: `latents` (got, reference, tolerance in units of the
/// reference's std), when given, and each of `images` (floats [H, W, 3] in 0..=255, see
/// [`pixels`]) within 2/255 of its picture in the reference batch `want` [B, H, W, 3]. What it
/// measured is recorded as `run`'s row of the
/// conformance table ([`super::conformance::record`]) before it asserts.
pub fn assert_conforms(
    run: &Run,
    latents: Option<(&Tensor, &Tensor, f32)>,
    images: &[Tensor],
    want: &Tensor,
) {
    let what = &run.case;
    assert!(!images.is_empty(), "{what}: no image");
    let diffs: Vec<(f32, f32)> = (images.iter().enumerate())
        .map(|(i, image)| pixel_tensor_diffs(image, &want.get(i).unwrap()))
        .collect();
    let latents_diff = latents.map(|(got, want, _)| {
        let (diff, std) = super::compare::max_diff_and_std(got, want);
        assert!(std > 0.0, "{what}: reference latents are constant");
        diff / std
    });
    let measured = Measured {
        image_max: diffs.iter().map(|d| d.0).fold(0.0, f32::max),
        image_mean: diffs.iter().map(|d| d.1).sum::<f32>() / diffs.len() as f32,
        image_tol: IMAGE_TOLERANCE,
        latents: latents_diff,
        latents_tol: latents.map(|l| l.2),
    };
    record(run, &measured);
    if let (Some(d), Some((.., tol))) = (latents_diff, latents) {
        assert!(
            d <= tol,
            "{what} latents: max |diff| {d:.3e} x std exceeds {tol} x std"
        );
        eprintln!("{what} latents: max |diff| {d:.2e} x std");
    }
    for (i, (max, mean)) in diffs.iter().enumerate() {
        assert!(
            *max <= IMAGE_TOLERANCE,
            "{what} image {i}: max difference {max}/255 exceeds {IMAGE_TOLERANCE}/255"
        );
        eprintln!("{what} image {i}: max difference {max}/255, mean {mean:.3}/255");
    }
}

/// The largest difference over the colour channels of pixel (x, y) of two same-size images.
pub fn pixel_diff(a: &RgbImage, b: &RgbImage, x: usize, y: usize) -> u8 {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "image sizes differ"
    );
    let i = (y * a.width + x) * 3;
    (0..3)
        .map(|c| a.data[i + c].abs_diff(b.data[i + c]))
        .max()
        .unwrap()
}

/// How many pixels where `region(x, y)` holds differ by more than `tolerance`/255.
pub fn changed_pixels(
    a: &RgbImage,
    b: &RgbImage,
    tolerance: u8,
    region: impl Fn(usize, usize) -> bool,
) -> usize {
    (0..a.height)
        .flat_map(|y| (0..a.width).map(move |x| (x, y)))
        .filter(|&(x, y)| region(x, y) && pixel_diff(a, b, x, y) > tolerance)
        .count()
}

/// A decoded PNG: its pixels as 8-bit RGB and its `parameters` text (empty when absent).
#[derive(Debug, Clone)]
pub struct Png {
    /// The pixels.
    pub image: RgbImage,
    /// The AUTOMATIC1111 `parameters` text chunk.
    pub parameters: String,
}

impl Png {
    /// Decodes PNG bytes.
    pub fn decode(bytes: &[u8]) -> Png {
        let reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let parameters = reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .find(|c| c.keyword == "parameters")
            .map(|c| c.text.clone())
            .unwrap_or_default();
        let rgb = image::load_from_memory(bytes).unwrap().to_rgb8();
        Png {
            image: RgbImage {
                width: rgb.width() as usize,
                height: rgb.height() as usize,
                data: rgb.into_raw(),
            },
            parameters,
        }
    }

    /// Reads and decodes the PNG at `path`.
    pub fn read(path: &Path) -> Png {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Png::decode(&bytes)
    }

    /// (width, height).
    pub fn size(&self) -> (usize, usize) {
        (self.image.width, self.image.height)
    }
}

/// A PNG of `width × height` pixels of `channels` (3 = RGB, 4 = RGBA) made by `pixel(x, y)`.
pub fn make_png(
    width: u32,
    height: u32,
    channels: usize,
    pixel: impl Fn(u32, u32) -> [u8; 4],
) -> Vec<u8> {
    let mut data = Vec::new();
    for y in 0..height {
        for x in 0..width {
            data.extend_from_slice(&pixel(x, y)[..channels]);
        }
    }
    let mut bytes = Vec::new();
    let mut e = png::Encoder::new(&mut bytes, width, height);
    e.set_color(if channels == 4 {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    e.set_depth(png::BitDepth::Eight);
    let mut w = e.write_header().unwrap();
    w.write_image_data(&data).unwrap();
    w.finish().unwrap();
    bytes
}

/// A colourful test picture, as PNG bytes.
pub fn picture(width: u32, height: u32) -> Vec<u8> {
    make_png(width, height, 3, |x, y| {
        [(x * 5) as u8, (y * 3) as u8, ((x + y) * 2) as u8, 255]
    })
}
