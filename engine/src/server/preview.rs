//! Cheap previews of a running job: the latents mapped to RGB by a fixed linear map (4×3
//! matrix, no VAE), at latent resolution. The coefficients are AUTOMATIC1111's "Approx cheap"
//! ones for the Stable Diffusion 1.x/2.x latent space (both families share the VAE).

use base64::Engine;
use candle_core::{DType, Tensor};

use crate::image_out::{encode_png, RgbImage};
use crate::Result;

/// Latent channel → RGB weights: row `c` is what latent channel `c` adds to (R, G, B).
pub const SD_LATENT_RGB: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// The RGB offset added after the matrix (none for SD 1.x/2.x).
pub const SD_LATENT_BIAS: [f32; 3] = [0.0, 0.0, 0.0];

/// The first image of `latents` [batch, 4, h, w] as an RGB image of `w`×`h` pixels.
pub fn latents_to_rgb(latents: &Tensor) -> Result<RgbImage> {
    let first = latents.get(0)?.to_dtype(DType::F32)?;
    let (c, h, w) = first.dims3()?;
    let planes = first.flatten_from(1)?.to_vec2::<f32>()?;
    let planes = &planes[..c.min(SD_LATENT_RGB.len())];
    let mut data = Vec::with_capacity(h * w * 3);
    for p in 0..h * w {
        for (rgb, bias) in SD_LATENT_BIAS.iter().enumerate() {
            let v: f32 = bias
                + planes
                    .iter()
                    .zip(&SD_LATENT_RGB)
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

/// The preview of `latents` as a `data:image/png;base64,...` URL and the PNG bytes.
pub fn preview_png(latents: &Tensor) -> Result<(String, Vec<u8>)> {
    let png = encode_png(&latents_to_rgb(latents)?, "")?;
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    Ok((url, png))
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
        let img = latents_to_rgb(&t).unwrap();
        let want: Vec<u8> = SD_LATENT_RGB[0]
            .iter()
            .map(|v| ((v + 1.0) * 127.5).round() as u8)
            .collect();
        assert_eq!((img.width, img.height), (1, 1));
        assert_eq!(img.data, want);
    }
}
