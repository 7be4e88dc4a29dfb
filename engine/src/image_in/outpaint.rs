//! Outpainting: a bigger canvas around the picture and the mask that repaints the new border.

use super::{Mask, RgbImage};

/// Pixels added on each side of the picture (`--outpaint left,right,top,bottom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outpaint {
    /// Added on the left.
    pub left: usize,
    /// Added on the right.
    pub right: usize,
    /// Added at the top.
    pub top: usize,
    /// Added at the bottom.
    pub bottom: usize,
}

impl std::str::FromStr for Outpaint {
    type Err = String;
    /// `left,right,top,bottom` in pixels, e.g. `0,128,0,0`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [l, r, t, b] = parts.as_slice() else {
            return Err(format!(
                "{s:?} is not left,right,top,bottom (four pixel counts, e.g. 0,128,0,0)"
            ));
        };
        let px = |v: &str, side: &str| -> Result<usize, String> {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n <= 4096)
                .ok_or_else(|| format!("{side} {v:?} is not a pixel count from 0 to 4096"))
        };
        let o = Self {
            left: px(l, "left")?,
            right: px(r, "right")?,
            top: px(t, "top")?,
            bottom: px(b, "bottom")?,
        };
        if o == Self::default() {
            return Err("all four sides are 0: nothing to outpaint".into());
        }
        Ok(o)
    }
}

/// The padded canvas (the border filled by extending the picture's edge pixels) and its
/// mask: white over the new border, reaching `2 × mask_blur` pixels into the picture on the
/// padded sides (as AUTOMATIC1111's outpainting script) so that the blurred seam falls on
/// the old picture rather than on the new border.
pub fn outpaint(image: &RgbImage, pad: Outpaint, mask_blur: usize) -> (RgbImage, Mask) {
    let (w, h) = (image.width, image.height);
    let width = w + pad.left + pad.right;
    let height = h + pad.top + pad.bottom;
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        let sy = y.saturating_sub(pad.top).min(h - 1);
        for x in 0..width {
            let sx = x.saturating_sub(pad.left).min(w - 1);
            data.extend_from_slice(&image.data[(sy * w + sx) * 3..(sy * w + sx + 1) * 3]);
        }
    }
    let overlap = |side: usize| if side > 0 { 2 * mask_blur } else { 0 };
    let x1 = pad.left + overlap(pad.left);
    let y1 = pad.top + overlap(pad.top);
    let x2 = (pad.left + w).saturating_sub(overlap(pad.right)).max(x1);
    let y2 = (pad.top + h).saturating_sub(overlap(pad.bottom)).max(y1);
    let mut mask = Mask::filled(width, height, 1.0);
    for y in y1..y2 {
        for x in x1..x2 {
            mask.data[y * width + x] = 0.0;
        }
    }
    (
        RgbImage {
            width,
            height,
            data,
        },
        mask,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_and_masks_the_border() {
        let image = RgbImage {
            width: 2,
            height: 1,
            data: vec![1, 1, 1, 2, 2, 2],
        };
        let pad: Outpaint = "1,2,0,1".parse().unwrap();
        let (canvas, mask) = outpaint(&image, pad, 0);
        assert_eq!((canvas.width, canvas.height), (5, 2));
        assert_eq!(
            &canvas.data[..15],
            &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
        );
        assert_eq!(mask.data, vec![1., 0., 0., 1., 1., 1., 1., 1., 1., 1.]);
        assert!("1,2,3".parse::<Outpaint>().is_err());
        assert!("0,0,0,0".parse::<Outpaint>().is_err());
        assert!("a,0,0,1".parse::<Outpaint>().is_err());
    }
}
