//! Cheap previews of a running job: the latents mapped to RGB by a fixed linear map (one RGB
//! row per latent channel, no VAE), at latent resolution. The factors belong to a family's
//! latent space (AUTOMATIC1111's "Approx cheap" ones for Stable Diffusion 1.x/2.x).

use candle_core::{DType, Tensor};

use crate::image_out::RgbImage;
use crate::Result;

/// A latent space's linear map to RGB.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentPreview {
    /// Row `c`: what latent channel `c` adds to (R, G, B).
    pub rgb: Vec<[f32; 3]>,
    /// Added after the map.
    pub bias: [f32; 3],
}

impl LatentPreview {
    /// AUTOMATIC1111's factors for the Stable Diffusion 1.x/2.x latent space.
    pub fn sd() -> Self {
        Self {
            rgb: vec![
                [0.298, 0.207, 0.208],
                [0.187, 0.286, 0.173],
                [-0.158, 0.189, 0.264],
                [-0.184, -0.271, -0.473],
            ],
            bias: [0.0; 3],
        }
    }

    /// ComfyUI's factors for the FLUX.1 latent space (16 channels, denoiser space).
    pub fn flux() -> Self {
        Self {
            rgb: vec![
                [-0.0346, 0.0244, 0.0681],
                [0.0034, 0.0210, 0.0687],
                [0.0275, -0.0668, -0.0433],
                [-0.0174, 0.0160, 0.0617],
                [0.0859, 0.0721, 0.0329],
                [0.0004, 0.0383, 0.0115],
                [0.0405, 0.0861, 0.0915],
                [-0.0236, -0.0185, -0.0259],
                [-0.0245, 0.0250, 0.1180],
                [0.1008, 0.0755, -0.0421],
                [-0.0515, 0.0201, 0.0011],
                [0.0428, -0.0012, -0.0036],
                [0.0817, 0.0765, 0.0749],
                [-0.1264, -0.0522, -0.1103],
                [-0.0280, -0.0881, -0.0499],
                [-0.1262, -0.0982, -0.0778],
            ],
            bias: [-0.0329, -0.0718, -0.0851],
        }
    }

    /// The first image of `latents` `[batch, C, h, w]` as an RGB image of `w × h` pixels.
    pub fn to_rgb(&self, latents: &Tensor) -> Result<RgbImage> {
        let first = latents.get(0)?.to_dtype(DType::F32)?;
        let (c, h, w) = first.dims3()?;
        let planes = first.flatten_from(1)?.to_vec2::<f32>()?;
        let planes = &planes[..c.min(self.rgb.len())];
        let mut data = Vec::with_capacity(h * w * 3);
        for p in 0..h * w {
            for (rgb, bias) in self.bias.iter().enumerate() {
                let v: f32 = bias
                    + planes
                        .iter()
                        .zip(&self.rgb)
                        .map(|(plane, weights)| plane[p] * weights[rgb])
                        .sum::<f32>();
                // [-1, 1] → [0, 255], as the decoded image would be.
                data.push(((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8);
            }
        }
        Ok(RgbImage {
            width: w,
            height: h,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_channels_linearly() {
        // One pixel with latent (1, 0, 0, 0) → RGB row 0 of the matrix.
        let t = Tensor::from_vec(
            vec![1f32, 0.0, 0.0, 0.0],
            (1, 4, 1, 1),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let preview = LatentPreview::sd();
        let img = preview.to_rgb(&t).unwrap();
        let want: Vec<u8> = preview.rgb[0]
            .iter()
            .map(|v| ((v + 1.0) * 127.5).round() as u8)
            .collect();
        assert_eq!((img.width, img.height), (1, 1));
        assert_eq!(img.data, want);
    }

    #[test]
    fn flux_previews_use_all_16_channels() {
        // Channel 15 alone: RGB row 15 plus the bias, at latent resolution.
        let mut v = vec![0f32; 16 * 2 * 3];
        for p in 0..6 {
            v[15 * 6 + p] = 1.0;
        }
        let t = Tensor::from_vec(v, (1, 16, 2, 3), &candle_core::Device::Cpu).unwrap();
        let preview = LatentPreview::flux();
        let img = preview.to_rgb(&t).unwrap();
        assert_eq!((img.width, img.height), (3, 2));
        let want: Vec<u8> = (0..3)
            .map(|c| ((preview.rgb[15][c] + preview.bias[c] + 1.0) * 127.5).round() as u8)
            .collect();
        assert_eq!(&img.data[..3], &want[..]);
    }
}
