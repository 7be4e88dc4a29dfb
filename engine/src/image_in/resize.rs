//! Fitting a picture (or mask) to the job size, with AUTOMATIC1111's resize modes and
//! Lanczos resampling (as AUTOMATIC1111 and diffusers' `VaeImageProcessor` use).

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Rgb};

use super::{CropRegion, Mask, RgbImage};

/// How a picture whose size differs from the job's is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMode {
    /// Stretch to the job size, ignoring the aspect ratio (AUTOMATIC1111's "Just resize",
    /// its default, and diffusers' default).
    #[default]
    Stretch,
    /// Scale to cover the job size and cut off what sticks out, centred ("Crop and resize").
    Crop,
    /// Scale to fit inside the job size, centred, and fill the sides by extending the
    /// picture's edge pixels ("Resize and fill").
    Fill,
}

impl std::str::FromStr for ResizeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "stretch" | "just resize" | "0" => Ok(Self::Stretch),
            "crop" | "crop and resize" | "1" => Ok(Self::Crop),
            "fill" | "resize and fill" | "2" => Ok(Self::Fill),
            _ => Err(format!(
                "unknown resize mode {s:?}; valid: stretch, crop, fill"
            )),
        }
    }
}

/// The scaled size of a `w × h` source and its offset inside a `width × height` target.
fn placement(mode: ResizeMode, w: usize, h: usize, width: usize, height: usize) -> Placement {
    let ratio = width as f64 / height as f64;
    let src_ratio = w as f64 / h as f64;
    let fit_width = match mode {
        ResizeMode::Stretch => {
            return Placement {
                w: width,
                h: height,
                x: 0,
                y: 0,
            }
        }
        // Crop: match the width when the target is relatively wider; Fill: the opposite.
        ResizeMode::Crop => ratio > src_ratio,
        ResizeMode::Fill => ratio < src_ratio,
    };
    let (sw, sh) = if fit_width {
        (width, (h * width / w).max(1))
    } else {
        ((w * height / h).max(1), height)
    };
    Placement {
        w: sw,
        h: sh,
        x: width as i64 / 2 - sw as i64 / 2,
        y: height as i64 / 2 - sh as i64 / 2,
    }
}

struct Placement {
    w: usize,
    h: usize,
    x: i64,
    y: i64,
}

/// Copies `src` (`sw × sh`, `c` values per pixel) into a `width × height` canvas at
/// `(x, y)`, extending the edge pixels over whatever it does not cover.
fn place<T: Copy>(
    src: &[T],
    sw: usize,
    sh: usize,
    c: usize,
    p: &Placement,
    width: usize,
    height: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(width * height * c);
    for y in 0..height {
        let sy = (y as i64 - p.y).clamp(0, sh as i64 - 1) as usize;
        for x in 0..width {
            let sx = (x as i64 - p.x).clamp(0, sw as i64 - 1) as usize;
            out.extend_from_slice(&src[(sy * sw + sx) * c..(sy * sw + sx + 1) * c]);
        }
    }
    out
}

/// Fits `image` to `width × height` with `mode` (a copy when the size already matches).
pub fn resize_image(image: &RgbImage, width: usize, height: usize, mode: ResizeMode) -> RgbImage {
    if (image.width, image.height) == (width, height) {
        return image.clone();
    }
    let p = placement(mode, image.width, image.height, width, height);
    let buf: ImageBuffer<Rgb<u8>, Vec<u8>> =
        ImageBuffer::from_raw(image.width as u32, image.height as u32, image.data.clone())
            .unwrap_or_default();
    let scaled = imageops::resize(&buf, p.w as u32, p.h as u32, FilterType::Lanczos3);
    RgbImage {
        width,
        height,
        data: place(scaled.as_raw(), p.w, p.h, 3, &p, width, height),
    }
}

/// Fits `mask` to `width × height` with `mode`, like [`resize_image`], values kept in [0, 1].
pub fn resize_mask(mask: &Mask, width: usize, height: usize, mode: ResizeMode) -> Mask {
    if (mask.width, mask.height) == (width, height) {
        return mask.clone();
    }
    let p = placement(mode, mask.width, mask.height, width, height);
    let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(mask.width as u32, mask.height as u32, mask.data.clone())
            .unwrap_or_default();
    let scaled = imageops::resize(&buf, p.w as u32, p.h as u32, FilterType::Lanczos3);
    let data = place(scaled.as_raw(), p.w, p.h, 1, &p, width, height)
        .into_iter()
        .map(|v| v.clamp(0.0, 1.0))
        .collect();
    Mask {
        width,
        height,
        data,
    }
}

/// The part of `image` inside `region`.
pub fn crop(image: &RgbImage, region: CropRegion) -> RgbImage {
    let mut data = Vec::with_capacity(region.width() * region.height() * 3);
    for y in region.y1..region.y2 {
        let row = y * image.width;
        data.extend_from_slice(&image.data[(row + region.x1) * 3..(row + region.x2) * 3]);
    }
    RgbImage {
        width: region.width(),
        height: region.height(),
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: usize, height: usize) -> RgbImage {
        let data = (0..width * height)
            .flat_map(|i| {
                let (x, y) = (i % width, i / width);
                [
                    (x * 255 / width.max(2)) as u8,
                    (y * 255 / height.max(2)) as u8,
                    128,
                ]
            })
            .collect();
        RgbImage {
            width,
            height,
            data,
        }
    }

    #[test]
    fn modes_give_the_job_size() {
        let img = gradient(40, 20);
        for mode in [ResizeMode::Stretch, ResizeMode::Crop, ResizeMode::Fill] {
            let r = resize_image(&img, 24, 24, mode);
            assert_eq!((r.width, r.height, r.data.len()), (24, 24, 24 * 24 * 3));
        }
        assert_eq!(resize_image(&img, 40, 20, ResizeMode::Crop), img);
    }

    #[test]
    fn crop_cuts_the_sides_and_fill_extends_the_edges() {
        // 40x20 into 20x20: crop keeps the height (20) and the middle 20 columns.
        let mut img = gradient(40, 20);
        for y in 0..20 {
            for x in 0..10 {
                img.data[(y * 40 + x) * 3 + 2] = 0; // a dark band on the left quarter
            }
        }
        let c = resize_image(&img, 20, 20, ResizeMode::Crop);
        assert!(c.data.chunks(3).all(|p| p[2] == 128), "the band is cut off");
        // fill: scaled to 20x10, centred at y = 5; rows above and below repeat the edges.
        let f = resize_image(&img, 20, 20, ResizeMode::Fill);
        let row = |y: usize| &f.data[y * 60..(y + 1) * 60];
        assert_eq!(row(0), row(4));
        assert_eq!(row(0), row(5));
        assert_eq!(row(19), row(14));
    }

    #[test]
    fn parses_a1111_names() {
        assert_eq!("Just resize".parse(), Ok(ResizeMode::Stretch));
        assert_eq!("crop".parse(), Ok(ResizeMode::Crop));
        assert_eq!("2".parse(), Ok(ResizeMode::Fill));
        assert!("zoom".parse::<ResizeMode>().is_err());
    }
}
