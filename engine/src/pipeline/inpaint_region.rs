//! Fitting an inpainting job's picture and mask to the job size: the whole picture, or only
//! the masked region (AUTOMATIC1111's "Only masked"), and where the results are pasted back.

use super::{ImageInput, InpaintArea, MaskInput};
use crate::image_in::{
    crop, crop_region, expand_crop_region, gaussian_blur, resize_image, resize_mask, ImageError,
    Mask, ResizeMode, RgbImage,
};
use crate::Result;

/// The picture and masks at the job size, and where the result goes.
pub(super) struct Region {
    /// The picture fitted to the job size (before any fill).
    pub picture: RgbImage,
    /// The blurred mask at the job size.
    pub mask: Mask,
    /// The picture the results are pasted into.
    pub canvas: RgbImage,
    /// The mask they are pasted with (the canvas's size).
    pub overlay: Mask,
    /// Where in the canvas, and at which size, a result goes.
    pub paste: (usize, usize, usize, usize),
}

/// The mask at the picture's size: as given, resized with a warning when only the size
/// differs, refused when the aspect ratio differs (or nothing is masked).
pub(super) fn matched_mask(
    mask: &Mask,
    picture: &RgbImage,
    warnings: &mut Vec<String>,
) -> Result<Mask> {
    if mask.is_empty() {
        return Err(ImageError::Mismatch {
            what: "mask".into(),
            message: "the mask is all black: nothing to repaint (white marks what to repaint)"
                .into(),
        }
        .into());
    }
    if (mask.width, mask.height) == (picture.width, picture.height) {
        return Ok(mask.clone());
    }
    let ratio = |w: usize, h: usize| w as f64 / h as f64;
    let (rm, rp) = (
        ratio(mask.width, mask.height),
        ratio(picture.width, picture.height),
    );
    if (rm / rp - 1.0).abs() > 0.01 {
        return Err(ImageError::Mismatch {
            what: "mask".into(),
            message: format!(
                "the mask is {}x{} but the picture is {}x{}: the aspect ratios differ, so it \
                 cannot be resized to fit; make a mask of the picture's size",
                mask.width, mask.height, picture.width, picture.height
            ),
        }
        .into());
    }
    warnings.push(format!(
        "the mask is {}x{}, the picture {}x{}: the mask was resized to the picture's size",
        mask.width, mask.height, picture.width, picture.height
    ));
    Ok(resize_mask(
        mask,
        picture.width,
        picture.height,
        ResizeMode::Stretch,
    ))
}

/// Fits the picture and `mask` (already matched to the picture) to `width × height` for the
/// job's inpaint area.
pub(super) fn region(
    image: &ImageInput,
    job_mask: &MaskInput,
    mask: &Mask,
    width: usize,
    height: usize,
) -> Result<Region> {
    let picture = &image.picture;
    match job_mask.area {
        InpaintArea::Whole => {
            let mode = image.resize;
            let fitted = resize_image(picture, width, height, mode);
            // Blurred at the picture's size, then fitted, as AUTOMATIC1111 does.
            let mask = resize_mask(&gaussian_blur(mask, job_mask.blur), width, height, mode);
            Ok(Region {
                overlay: mask.scaled(2.0),
                canvas: fitted.clone(),
                picture: fitted,
                mask,
                paste: (0, 0, width, height),
            })
        }
        InpaintArea::Masked { padding } => {
            let blurred = gaussian_blur(mask, job_mask.blur);
            let Some(r) = crop_region(&blurred, padding) else {
                return Err(ImageError::Mismatch {
                    what: "mask".into(),
                    message: "the mask is all black: nothing to repaint".into(),
                }
                .into());
            };
            let r = expand_crop_region(r, width, height, picture.width, picture.height);
            Ok(Region {
                picture: resize_image(&crop(picture, r), width, height, ResizeMode::Fill),
                mask: resize_mask(&blurred.crop(r), width, height, ResizeMode::Fill),
                canvas: picture.clone(),
                overlay: blurred,
                paste: (r.x1, r.y1, r.width(), r.height()),
            })
        }
    }
}
