//! The autoencoder between pixels and latents, with the latent scaling of its config: every
//! family's pipeline encodes and decodes through this, so scaling and shift live in one place.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::models::config_file::read_json;
use crate::models::vae::{Decoder, Encoder, Tiling, VaeConfig};
use crate::noise::NoiseSource;
use crate::weights::{in_file, WeightSource};
use crate::{Error, Result};

/// A VAE (diffusers' `AutoencoderKL`): loaded, or read from its weights for each use and
/// freed after ([`Vae::on_demand`], `--low-memory`).
#[derive(Debug, Clone)]
pub struct Vae {
    parts: Parts,
    /// Its config (scale factor, scaling and shift factors).
    pub config: VaeConfig,
    /// dtype it computes in: f32 when f16 would overflow (`force_upcast`).
    pub dtype: DType,
    /// Whether decoding is tiled (applied to decoders read on demand too).
    tiling: Arc<std::sync::Mutex<Option<Tiling>>>,
}

/// The networks, or where to read them from.
#[derive(Debug, Clone)]
enum Parts {
    Loaded {
        decoder: Arc<Decoder>,
        encoder: Arc<Encoder>,
    },
    OnDemand {
        weights: WeightSource,
        device: Device,
    },
}

/// The config of `config_path`, checked, and the dtype the VAE computes in for `dtype`.
fn read_config(config_path: &Path, dtype: DType) -> Result<(VaeConfig, DType)> {
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
    Ok((config, dtype))
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
        let (config, dtype) = read_config(config_path, dtype)?;
        let path = weights.file().path().to_path_buf();
        let vb = weights.var_builder(dtype, device);
        let decoder = in_file(&path, Decoder::new(vb.clone(), &config))?;
        let encoder = in_file(&path, Encoder::new(vb, &config))?;
        Ok(Self {
            parts: Parts::Loaded {
                decoder: Arc::new(decoder),
                encoder: Arc::new(encoder),
            },
            config,
            dtype,
            tiling: Arc::default(),
        })
    }

    /// A VAE whose decoder (or encoder) is read from `weights` each time it decodes (or
    /// encodes) and freed after: nothing but the config stays in memory. The weights are
    /// checked once, here, by building both networks.
    pub fn on_demand(
        config_path: &Path,
        weights: &WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut vae = Self::load(config_path, weights, dtype, device)?;
        vae.parts = Parts::OnDemand {
            weights: weights.clone(),
            device: device.clone(),
        };
        Ok(vae)
    }

    /// Whether the networks are read for each use.
    pub fn is_on_demand(&self) -> bool {
        matches!(self.parts, Parts::OnDemand { .. })
    }

    /// Chooses when decoding is tiled (see [`Decoder::set_tiling`]).
    pub fn set_tiling(&self, tiling: Tiling) {
        if let Ok(mut t) = self.tiling.lock() {
            *t = Some(tiling);
        }
        if let Parts::Loaded { decoder, .. } = &self.parts {
            decoder.set_tiling(tiling);
        }
    }

    /// The decoder: the loaded one, or read now.
    pub fn decoder(&self) -> Result<Arc<Decoder>> {
        match &self.parts {
            Parts::Loaded { decoder, .. } => Ok(decoder.clone()),
            Parts::OnDemand { weights, device } => {
                let path = weights.file().path();
                let vb = weights.var_builder(self.dtype, device);
                let decoder = in_file(path, Decoder::new(vb, &self.config))?;
                if let Some(tiling) = self.tiling.lock().ok().and_then(|t| *t) {
                    decoder.set_tiling(tiling);
                }
                Ok(Arc::new(decoder))
            }
        }
    }

    /// The encoder: the loaded one, or read now.
    pub fn encoder(&self) -> Result<Arc<Encoder>> {
        match &self.parts {
            Parts::Loaded { encoder, .. } => Ok(encoder.clone()),
            Parts::OnDemand { weights, device } => {
                let path = weights.file().path();
                let vb = weights.var_builder(self.dtype, device);
                Ok(Arc::new(in_file(path, Encoder::new(vb, &self.config))?))
            }
        }
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
        Ok(self.decoder()?.forward(&z.to_dtype(self.dtype)?)?)
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
        let (mean, logvar) = self.encoder()?.forward(&pixels.to_dtype(self.dtype)?)?;
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
