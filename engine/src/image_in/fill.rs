//! AUTOMATIC1111's "fill" masked content: the masked region is painted with colours blurred in
//! from its surroundings before encoding, so the model starts from a plausible colour field.

use super::{Mask, RgbImage};

/// Fills the masked part of `image` (mask > 0, soft) with colours spread in from the unmasked
/// part, as AUTOMATIC1111's `masking.fill`: the unmasked picture (alpha = 1 - mask) is
/// blurred at radii 256, 64, 16, 4, 2 and 0 and the layers are composited over each other
/// (1, 1, 2, 4, 2 and 1 times). Gaussian blurs are approximated by three box blurs, as PIL does.
pub fn fill_masked(image: &RgbImage, mask: &Mask) -> RgbImage {
    let (w, h) = (image.width, image.height);
    let n = w * h;
    // Premultiplied colour and alpha of the known pixels.
    let alpha: Vec<f32> = mask.data.iter().map(|m| 1.0 - m.clamp(0.0, 1.0)).collect();
    let premult: Vec<Vec<f32>> = (0..3)
        .map(|c| {
            (0..n)
                .map(|i| image.data[i * 3 + c] as f32 * alpha[i])
                .collect()
        })
        .collect();
    let mut out_rgb = vec![[0f32; 3]; n];
    let mut out_a = vec![0f32; n];
    for (sigma, repeats) in [
        (256.0, 1),
        (64.0, 1),
        (16.0, 2),
        (4.0, 4),
        (2.0, 2),
        (0.0, 1),
    ] {
        let a = box_gaussian(&alpha, w, h, sigma);
        let p: Vec<Vec<f32>> = premult
            .iter()
            .map(|ch| box_gaussian(ch, w, h, sigma))
            .collect();
        for _ in 0..repeats {
            for i in 0..n {
                let src_a = a[i].clamp(0.0, 1.0);
                if src_a <= 0.0 {
                    continue;
                }
                let new_a = src_a + out_a[i] * (1.0 - src_a);
                for c in 0..3 {
                    let src = p[c][i] / a[i];
                    out_rgb[i][c] =
                        (src * src_a + out_rgb[i][c] * out_a[i] * (1.0 - src_a)) / new_a;
                }
                out_a[i] = new_a;
            }
        }
    }
    RgbImage {
        width: w,
        height: h,
        data: out_rgb
            .iter()
            .flat_map(|p| p.map(|v| v.round().clamp(0.0, 255.0) as u8))
            .collect(),
    }
}

/// A Gaussian blur of standard deviation `sigma` approximated by three box blurs (edges
/// extended), along x then y. `sigma` 0 is the identity.
fn box_gaussian(data: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    // Three boxes of width 2r+1 have variance 3·((2r+1)² - 1)/12 = sigma².
    let r = (((4.0 * sigma * sigma + 1.0).sqrt() - 1.0) / 2.0).round() as usize;
    if r == 0 {
        return data.to_vec();
    }
    let mut cur = data.to_vec();
    for _ in 0..3 {
        cur = box_pass(&cur, w, h, r, true);
        cur = box_pass(&cur, w, h, r, false);
    }
    cur
}

/// One running-sum box blur of radius `r` along rows (`horizontal`) or columns.
fn box_pass(data: &[f32], w: usize, h: usize, r: usize, horizontal: bool) -> Vec<f32> {
    let (len, lines) = if horizontal { (w, h) } else { (h, w) };
    let at = |line: usize, i: usize| {
        if horizontal {
            line * w + i
        } else {
            i * w + line
        }
    };
    let mut out = vec![0f32; data.len()];
    let norm = 1.0 / (2 * r + 1) as f64;
    for line in 0..lines {
        let get = |i: i64| data[at(line, i.clamp(0, len as i64 - 1) as usize)] as f64;
        let mut sum: f64 = (-(r as i64)..=r as i64).map(get).sum();
        for i in 0..len {
            out[at(line, i)] = (sum * norm) as f32;
            sum += get(i as i64 + r as i64 + 1) - get(i as i64 - r as i64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_keeps_known_pixels_and_spreads_their_colour() {
        let (w, h) = (16, 8);
        let mut data = Vec::new();
        for _y in 0..h {
            for x in 0..w {
                data.extend(if x < 8 { [200, 0, 0] } else { [0, 0, 0] });
            }
        }
        let image = RgbImage {
            width: w,
            height: h,
            data,
        };
        let mut mask = Mask::filled(w, h, 0.0);
        for y in 0..h {
            for x in 8..w {
                mask.data[y * w + x] = 1.0;
            }
        }
        let filled = fill_masked(&image, &mask);
        for y in 0..h {
            for x in 0..w {
                let p = &filled.data[(y * w + x) * 3..(y * w + x + 1) * 3];
                // Known pixels stay; masked ones take the only known colour (red).
                assert_eq!(p, &[200, 0, 0], "pixel {x},{y}");
            }
        }
    }

    #[test]
    fn box_blur_preserves_constants() {
        let d = vec![3.0f32; 30];
        assert!(box_gaussian(&d, 6, 5, 4.0)
            .iter()
            .all(|v| (v - 3.0).abs() < 1e-5));
    }
}
