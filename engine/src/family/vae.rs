//! The autoencoder between pixels and latents, with the latent scaling of its config: every
//! family's pipeline encodes and decodes through this, so scaling and shift live in one place.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::models::config_file::read_json;
use crate::models::vae::{Decoder, Encoder, VaeConfig};
use crate::noise::NoiseSource;
use crate::weights::{in_file, WeightSource};
use crate::{Error, Result};

/// A loaded VAE (diffusers' `AutoencoderKL`).
#[derive(Debug, Clone)]
pub struct Vae {
    /// Latents to pixels.
    pub decoder: Arc<Decoder>,
    /// Pixels to the latent distribution (image-to-image and inpainting).
    pub encoder: Arc<Encoder>,
    /// Its config (scale factor, scaling and shift factors).
    pub config: VaeConfig,
    /// dtype it computes in: f32 when f16 would overflow (`force_upcast`).
    pub dtype: DType,
}

impl Vae {
    /// Loads a VAE from its config file and weights, computing in `dtype` unless the config
    /// asks for f32 (`force_upcast` with f16).
    pub fn load(
        config_path: &Path,
        weights: &WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config: VaeConfig = read_json(config_path)?;
        config.validate().map_err(|message| Error::Config {
            path: config_path.to_path_buf(),
            message,
        })?;
        let dtype = if dtype == DType::F16 && config.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let path = weights.file().path().to_path_buf();
        let vb = weights.var_builder(dtype, device);
        let decoder = in_file(&path, Decoder::new(vb.clone(), &config))?;
        let encoder = in_file(&path, Encoder::new(vb, &config))?;
        Ok(Self {
            decoder: Arc::new(decoder),
            encoder: Arc::new(encoder),
            config,
            dtype,
        })
    }

    /// Pixels per latent pixel along a side (diffusers' `vae_scale_factor`).
    pub fn scale_factor(&self) -> usize {
        self.config.scale_factor()
    }

    /// Latent channels.
    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// Decodes denoiser-space latents `[1, C, h, w]` to pixels `[1, 3, H, W]` in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let mut z = (latents / c.scaling_factor)?;
        if let Some(shift) = c.shift_factor {
            z = (z + shift)?;
        }
        Ok(self.decoder.forward(&z.to_dtype(self.dtype)?)?)
    }

    /// Encodes pixels `[1, 3, H, W]` in [-1, 1] to denoiser-space latents `[batch, C, h, w]`:
    /// the distribution's mean, or with `sample` a draw `mean + std · ε` with ε from `rng`.
    pub fn encode(
        &self,
        pixels: &Tensor,
        batch: usize,
        sample: bool,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let (mean, logvar) = self.encoder.forward(&pixels.to_dtype(self.dtype)?)?;
        let mean = mean.to_dtype(DType::F32)?.repeat((batch, 1, 1, 1))?;
        let z = if sample {
            let std = (logvar.to_dtype(DType::F32)? * 0.5)?
                .exp()?
                .repeat((batch, 1, 1, 1))?;
            (&mean + (std * rng.randn_like(&mean)?)?)?
        } else {
            mean
        };
        let c = &self.config;
        let z = match c.shift_factor {
            Some(shift) => (z - shift)?,
            None => z,
        };
        Ok((z * c.scaling_factor)?)
    }
}
