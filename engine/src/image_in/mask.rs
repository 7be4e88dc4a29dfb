//! Masks: values in [0, 1] where 1 (white) means "repaint". Blur (AUTOMATIC1111's Gaussian),
//! the crop region of "inpaint only masked", and pasting a result back over the original.

use super::RgbImage;

/// A single-channel mask, row-major, values in [0, 1]; 1 = repaint.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` values.
    pub data: Vec<f32>,
}

/// A rectangle `[x1, x2) × [y1, y2)` in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRegion {
    /// Left edge (inclusive).
    pub x1: usize,
    /// Top edge (inclusive).
    pub y1: usize,
    /// Right edge (exclusive).
    pub x2: usize,
    /// Bottom edge (exclusive).
    pub y2: usize,
}

impl CropRegion {
    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.x2 - self.x1
    }
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.y2 - self.y1
    }
}

impl Mask {
    /// A mask of one value everywhere.
    pub fn filled(width: usize, height: usize, value: f32) -> Self {
        Self {
            width,
            height,
            data: vec![value; width * height],
        }
    }

    /// Whether no pixel is to be repainted (every value is 0).
    pub fn is_empty(&self) -> bool {
        self.data.iter().all(|&v| v <= 0.0)
    }

    /// diffusers' `binarize`: 1 where the value is at least 0.5, else 0.
    pub fn binarized(&self) -> Self {
        Self {
            data: self
                .data
                .iter()
                .map(|&v| if v >= 0.5 { 1.0 } else { 0.0 })
                .collect(),
            ..*self
        }
    }

    /// Nearest-neighbour downsampling to `width × height` exactly as PyTorch's
    /// `interpolate(mode="nearest")`: source index `floor(dst * in / out)`.
    pub fn nearest(&self, width: usize, height: usize) -> Self {
        let sx = self.width as f32 / width as f32;
        let sy = self.height as f32 / height as f32;
        let mut data = Vec::with_capacity(width * height);
        for y in 0..height {
            let src_y = ((y as f32 * sy).floor() as usize).min(self.height - 1);
            for x in 0..width {
                let src_x = ((x as f32 * sx).floor() as usize).min(self.width - 1);
                data.push(self.data[src_y * self.width + src_x]);
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// The part of the mask inside `region`.
    pub fn crop(&self, region: CropRegion) -> Self {
        let mut data = Vec::with_capacity(region.width() * region.height());
        for y in region.y1..region.y2 {
            data.extend_from_slice(
                &self.data[y * self.width + region.x1..y * self.width + region.x2],
            );
        }
        Self {
            width: region.width(),
            height: region.height(),
            data,
        }
    }

    /// Each value times `factor`, clamped to [0, 1] (AUTOMATIC1111 doubles the blurred mask it
    /// pastes with, so the generated image fully covers the mask's own edge).
    pub fn scaled(&self, factor: f32) -> Self {
        Self {
            data: self
                .data
                .iter()
                .map(|&v| (v * factor).clamp(0.0, 1.0))
                .collect(),
            ..*self
        }
    }
}

/// AUTOMATIC1111's mask blur: OpenCV's `GaussianBlur` with standard deviation `sigma` pixels,
/// kernel size `2·floor(2.5·sigma + 0.5) + 1`, along x then y, borders reflected (101).
/// `sigma` 0 returns the mask unchanged.
pub fn gaussian_blur(mask: &Mask, sigma: f32) -> Mask {
    if sigma <= 0.0 || mask.data.is_empty() {
        return mask.clone();
    }
    let radius = (2.5 * sigma + 0.5).floor() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let (w, h) = (mask.width, mask.height);
    let reflect = |i: isize, n: usize| -> usize {
        let n = n as isize;
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let mut i = i.rem_euclid(period);
        if i >= n {
            i = period - i;
        }
        i as usize
    };
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, g)| g * mask.data[y * w + reflect(x as isize + k as isize - radius, w)])
                .sum();
        }
    }
    let mut data = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            data[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, g)| g * tmp[reflect(y as isize + k as isize - radius, h) * w + x])
                .sum::<f32>()
                .clamp(0.0, 1.0);
        }
    }
    Mask {
        width: w,
        height: h,
        data,
    }
}

/// The bounding box of the mask's positive pixels grown by `padding` on each side (clipped
/// to the mask), as AUTOMATIC1111's `get_crop_region`; `None` when nothing is masked.
pub fn crop_region(mask: &Mask, padding: usize) -> Option<CropRegion> {
    let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..mask.height {
        for x in 0..mask.width {
            if mask.data[y * mask.width + x] > 0.0 {
                x1 = x1.min(x);
                y1 = y1.min(y);
                x2 = x2.max(x + 1);
                y2 = y2.max(y + 1);
            }
        }
    }
    (x1 != usize::MAX).then(|| CropRegion {
        x1: x1.saturating_sub(padding),
        y1: y1.saturating_sub(padding),
        x2: x2.saturating_add(padding).min(mask.width),
        y2: y2.saturating_add(padding).min(mask.height),
    })
}

/// Grows `region` along one axis so its aspect ratio matches `width / height` (the size the
/// region is processed at), staying inside the `image_width × image_height` picture where it
/// can, as AUTOMATIC1111's `expand_crop_region`.
pub fn expand_crop_region(
    region: CropRegion,
    width: usize,
    height: usize,
    image_width: usize,
    image_height: usize,
) -> CropRegion {
    fn grow(lo: usize, hi: usize, desired: f64, limit: usize) -> (usize, usize) {
        let (mut lo, mut hi) = (lo as i64, hi as i64);
        let diff = (desired - (hi - lo) as f64) as i64;
        if diff <= 0 {
            return (lo as usize, hi as usize);
        }
        lo -= diff / 2;
        hi += diff - diff / 2;
        let limit = limit as i64;
        if hi >= limit {
            lo -= hi - limit;
            hi = limit;
        }
        if lo < 0 {
            hi -= lo;
            lo = 0;
        }
        (lo as usize, hi.min(limit) as usize)
    }
    let r = region;
    let ratio_region = r.width() as f64 / r.height() as f64;
    let ratio = width as f64 / height as f64;
    if ratio_region > ratio {
        let (y1, y2) = grow(r.y1, r.y2, r.width() as f64 / ratio, image_height);
        CropRegion { y1, y2, ..r }
    } else {
        let (x1, x2) = grow(r.x1, r.x2, r.height() as f64 * ratio, image_width);
        CropRegion { x1, x2, ..r }
    }
}

/// Pastes `generated` over `original` where `mask` says (soft: `g·m + o·(1 - m)`, rounded),
/// at `(x, y)` in the original when `generated` is smaller (a crop region's result).
/// `mask` has the original's size.
pub fn composite(
    original: &RgbImage,
    generated: &RgbImage,
    mask: &Mask,
    at: (usize, usize),
) -> RgbImage {
    let mut out = original.clone();
    let (ox, oy) = at;
    for y in 0..generated.height.min(original.height.saturating_sub(oy)) {
        for x in 0..generated.width.min(original.width.saturating_sub(ox)) {
            let (px, py) = (ox + x, oy + y);
            let m = mask.data[py * mask.width + px];
            if m <= 0.0 {
                continue;
            }
            let o = (py * original.width + px) * 3;
            let g = (y * generated.width + x) * 3;
            for c in 0..3 {
                let v = generated.data[g + c] as f32 * m + original.data[o + c] as f32 * (1.0 - m);
                out.data[o + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_constants_and_spreads_symmetrically() {
        let flat = Mask::filled(9, 7, 0.6);
        let b = gaussian_blur(&flat, 2.0);
        assert!(b.data.iter().all(|v| (v - 0.6).abs() < 1e-5));
        let mut dot = Mask::filled(11, 11, 0.0);
        dot.data[5 * 11 + 5] = 1.0;
        let b = gaussian_blur(&dot, 1.5);
        assert!((b.data[5 * 11 + 4] - b.data[5 * 11 + 6]).abs() < 1e-7);
        assert!((b.data[4 * 11 + 5] - b.data[5 * 11 + 4]).abs() < 1e-7);
        assert!(b.data[5 * 11 + 5] < 1.0 && b.data[5 * 11 + 5] > b.data[5 * 11 + 4]);
        let total: f32 = b.data.iter().sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        // kernel radius floor(2.5 * 1.5 + 0.5) = 4: nothing beyond it.
        assert_eq!(b.data[5 * 11], 0.0);
        assert!(b.data[5 * 11 + 1] > 0.0);
    }

    #[test]
    fn nearest_matches_torch() {
        // torch: interpolate(arange(16).view(1,1,4,4), size=(2,2)) = [[0,2],[8,10]]
        let m = Mask {
            width: 4,
            height: 4,
            data: (0..16).map(|v| v as f32).collect(),
        };
        assert_eq!(m.nearest(2, 2).data, vec![0.0, 2.0, 8.0, 10.0]);
        // size (3, 3): floor(i * 4/3) = 0, 1, 2
        assert_eq!(m.nearest(3, 1).data, vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn crop_region_pads_and_expands_to_the_aspect_ratio() {
        let mut m = Mask::filled(100, 50, 0.0);
        for y in 20..30 {
            for x in 40..50 {
                m.data[y * 100 + x] = 1.0;
            }
        }
        let r = crop_region(&m, 4).unwrap();
        assert_eq!((r.x1, r.y1, r.x2, r.y2), (36, 16, 54, 34));
        // processed at 2:1 -> grow x from 18 to 36 wide
        let e = expand_crop_region(r, 64, 32, 100, 50);
        assert_eq!((e.x1, e.y1, e.x2, e.y2), (27, 16, 63, 34));
        // near the right edge it shifts left
        let r = CropRegion {
            x1: 90,
            y1: 0,
            x2: 100,
            y2: 20,
        };
        let e = expand_crop_region(r, 64, 32, 100, 50);
        assert_eq!((e.x1, e.x2), (60, 100));
        assert!(crop_region(&Mask::filled(4, 4, 0.0), 2).is_none());
    }

    #[test]
    fn composite_keeps_unmasked_pixels() {
        let o = RgbImage {
            width: 2,
            height: 1,
            data: vec![10, 10, 10, 20, 20, 20],
        };
        let g = RgbImage {
            width: 2,
            height: 1,
            data: vec![200, 200, 200, 100, 100, 100],
        };
        let m = Mask {
            width: 2,
            height: 1,
            data: vec![0.0, 0.5],
        };
        assert_eq!(
            composite(&o, &g, &m, (0, 0)).data,
            vec![10, 10, 10, 60, 60, 60]
        );
    }
}
