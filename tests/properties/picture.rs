//! The picture decoder entry (`image_in::decode_image`, which every route and the CLI use) on
//! mutated PNG, JPEG and WebP files and on random bytes: a picture within the limits or an
//! `ImageError`, never a panic, never more memory than the pixel limit allows.

use std::io::Cursor;

use beeswax::image_in::{decode_image, Limits};
use image::{ImageFormat, RgbaImage};
use proptest::prelude::*;

use super::alloc::bounded;
use super::mutate::{apply, config, edits};

const LIMITS: Limits = Limits {
    max_file_bytes: 1 << 20,
    max_pixels: 256 * 256,
};

/// The decoder's working memory for a picture at the pixel limit, with generous slack.
const BOUND: usize = 32 << 20;

/// A 24x17 picture with alpha, encoded as `format`.
fn seed(format: ImageFormat) -> Vec<u8> {
    let img = RgbaImage::from_fn(24, 17, |x, y| {
        image::Rgba([(x * 10) as u8, (y * 15) as u8, ((x + y) * 5) as u8, 200])
    });
    let mut out = Cursor::new(Vec::new());
    if format == ImageFormat::Jpeg {
        image::DynamicImage::ImageRgba8(img)
            .to_rgb8()
            .write_to(&mut out, format)
            .unwrap();
    } else {
        img.write_to(&mut out, format).unwrap();
    }
    out.into_inner()
}

fn check(bytes: &[u8]) {
    match bounded("decode", BOUND, || decode_image(bytes, "picture", &LIMITS)) {
        Ok(p) => {
            let (w, h) = (p.rgb.width as u64, p.rgb.height as u64);
            assert!(w * h <= LIMITS.max_pixels, "{w}x{h} decoded over the limit");
            if let Some(a) = &p.alpha {
                assert_eq!(a.len() as u64, w * h);
            }
        }
        // The error is an `ImageError` by type; its message names the input.
        Err(e) => assert!(e.to_string().contains("picture"), "{e}"),
    }
}

#[test]
fn the_seeds_decode() {
    for f in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
        let p = decode_image(&seed(f), "seed", &LIMITS).unwrap();
        assert_eq!((p.rgb.width, p.rgb.height), (24, 17), "{f:?}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_png_never_panics(e in edits(4)) {
        check(&apply(&seed(ImageFormat::Png), &e));
    }

    #[test]
    fn mutated_jpeg_never_panics(e in edits(4)) {
        check(&apply(&seed(ImageFormat::Jpeg), &e));
    }

    #[test]
    fn mutated_webp_never_panics(e in edits(4)) {
        check(&apply(&seed(ImageFormat::WebP), &e));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes);
    }
}
