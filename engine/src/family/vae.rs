//! The autoencoder between pixels and latents, with the latent scaling of its config: every
//! family's pipeline encodes and decodes through this, so scaling and shift live in one place.
//! Two kinds plug in: the family's `AutoencoderKL` and a tiny one (TAESD, `AutoencoderTiny`)
//! trained to match it, for fast decoding and previews.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::models::config_file::read_json;
use crate::models::vae::{Decoder, Encoder, Tiling, VaeConfig};

use super::tiny_vae::TinyVae;
use crate::noise::NoiseSource;
use crate::weights::{in_file, WeightSource};
use crate::{Error, Result};

/// A VAE: diffusers' `AutoencoderKL` (loaded, or read from its weights for each use and freed
/// after: [`Vae::on_demand`], `--low-memory`), or a tiny autoencoder ([`Vae::tiny`]).
#[derive(Debug, Clone)]
pub struct Vae {
    kind: Kind,
    /// dtype it computes in: f32 when f16 would overflow (`force_upcast`).
    pub dtype: DType,
    /// Whether decoding is tiled (applied to decoders read on demand too).
    tiling: Arc<std::sync::Mutex<Option<Tiling>>>,
}

/// Which autoencoder.
#[derive(Debug, Clone)]
enum Kind {
    /// `AutoencoderKL` with its config (scale factor, scaling and shift factors).
    Kl {
        parts: Parts,
        config: Box<VaeConfig>,
    },
    /// `AutoencoderTiny`.
    Tiny(Arc<TinyVae>),
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
            kind: Kind::Kl {
                parts: Parts::Loaded {
                    decoder: Arc::new(decoder),
                    encoder: Arc::new(encoder),
                },
                config: Box::new(config),
            },
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
        if let Kind::Kl { parts, .. } = &mut vae.kind {
            *parts = Parts::OnDemand {
                weights: weights.clone(),
                device: device.clone(),
            };
        }
        Ok(vae)
    }

    /// The tiny autoencoder at `path` (see [`super::tiny_vae`] for the layouts read).
    pub fn tiny(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            kind: Kind::Tiny(Arc::new(TinyVae::load(path, dtype, device)?)),
            dtype,
            tiling: Arc::default(),
        })
    }

    /// Whether `path` holds a tiny autoencoder rather than an `AutoencoderKL`.
    pub fn is_tiny_at(path: &Path) -> bool {
        super::tiny_vae::is_tiny(path)
    }

    /// Fails with the reason when `path` holds no tiny autoencoder (without reading weights).
    pub fn check_tiny_at(path: &Path) -> Result<()> {
        super::tiny_vae::check_files(path)
    }

    /// Whether this is a tiny autoencoder.
    pub fn is_tiny(&self) -> bool {
        matches!(self.kind, Kind::Tiny(_))
    }

    /// The `AutoencoderKL` config, when it is one.
    pub fn kl_config(&self) -> Option<&VaeConfig> {
        match &self.kind {
            Kind::Kl { config, .. } => Some(config),
            Kind::Tiny(_) => None,
        }
    }

    /// Whether the networks are read for each use.
    pub fn is_on_demand(&self) -> bool {
        matches!(
            self.kind,
            Kind::Kl {
                parts: Parts::OnDemand { .. },
                ..
            }
        )
    }

    /// Chooses when decoding is tiled (see [`Decoder::set_tiling`]).
    pub fn set_tiling(&self, tiling: Tiling) {
        if let Ok(mut t) = self.tiling.lock() {
            *t = Some(tiling);
        }
        if let Kind::Kl {
            parts: Parts::Loaded { decoder, .. },
            ..
        } = &self.kind
        {
            decoder.set_tiling(tiling);
        }
    }

    /// The `AutoencoderKL` decoder: the loaded one, or read now.
    fn kl_decoder(&self, parts: &Parts, config: &VaeConfig) -> Result<Arc<Decoder>> {
        match parts {
            Parts::Loaded { decoder, .. } => Ok(decoder.clone()),
            Parts::OnDemand { weights, device } => {
                let path = weights.file().path();
                let vb = weights.var_builder(self.dtype, device);
                let decoder = in_file(path, Decoder::new(vb, config))?;
                if let Some(tiling) = self.tiling.lock().ok().and_then(|t| *t) {
                    decoder.set_tiling(tiling);
                }
                Ok(Arc::new(decoder))
            }
        }
    }

    /// The `AutoencoderKL` encoder: the loaded one, or read now.
    fn kl_encoder(&self, parts: &Parts, config: &VaeConfig) -> Result<Arc<Encoder>> {
        match parts {
            Parts::Loaded { encoder, .. } => Ok(encoder.clone()),
            Parts::OnDemand { weights, device } => {
                let path = weights.file().path();
                let vb = weights.var_builder(self.dtype, device);
                Ok(Arc::new(in_file(path, Encoder::new(vb, config))?))
            }
        }
    }

    /// Pixels per latent pixel along a side (diffusers' `vae_scale_factor`).
    pub fn scale_factor(&self) -> usize {
        match &self.kind {
            Kind::Kl { config, .. } => config.scale_factor(),
            Kind::Tiny(tiny) => tiny.config.scale_factor(),
        }
    }

    /// Latent channels.
    pub fn latent_channels(&self) -> usize {
        match &self.kind {
            Kind::Kl { config, .. } => config.latent_channels,
            Kind::Tiny(tiny) => tiny.config.latent_channels,
        }
    }

    /// The config's `scaling_factor` and `shift_factor`: the networks see
    /// `latents / scaling + shift`.
    fn scaling(&self) -> (f64, f64) {
        match &self.kind {
            Kind::Kl { config, .. } => (config.scaling_factor, config.shift_factor.unwrap_or(0.0)),
            Kind::Tiny(tiny) => (tiny.config.scaling_factor, tiny.config.shift_factor),
        }
    }

    /// Decodes denoiser-space latents `[1, C, h, w]` to pixels `[1, 3, H, W]` in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (scaling, shift) = self.scaling();
        let z = ((latents / scaling)? + shift)?.to_dtype(self.dtype)?;
        Ok(match &self.kind {
            Kind::Kl { parts, config } => self.kl_decoder(parts, config)?.forward(&z)?,
            Kind::Tiny(tiny) => tiny.decoder.forward(&z)?,
        })
    }

    /// Encodes pixels `[1, 3, H, W]` in [-1, 1] to denoiser-space latents `[batch, C, h, w]`:
    /// the distribution's mean, or with `sample` a draw `mean + std · ε` with ε from `rng`
    /// (a tiny autoencoder's encoding is deterministic: `sample` changes nothing).
    pub fn encode(
        &self,
        pixels: &Tensor,
        batch: usize,
        sample: bool,
        rng: &mut dyn NoiseSource,
    ) -> Result<Tensor> {
        let pixels = pixels.to_dtype(self.dtype)?;
        let z = match &self.kind {
            Kind::Kl { parts, config } => {
                let (mean, logvar) = self.kl_encoder(parts, config)?.forward(&pixels)?;
                let mean = mean.to_dtype(DType::F32)?.repeat((batch, 1, 1, 1))?;
                if sample {
                    let std = (logvar.to_dtype(DType::F32)? * 0.5)?
                        .exp()?
                        .repeat((batch, 1, 1, 1))?;
                    (&mean + (std * rng.randn_like(&mean)?)?)?
                } else {
                    mean
                }
            }
            Kind::Tiny(tiny) => {
                let encoder = tiny.encoder.as_ref().ok_or_else(|| Error::Config {
                    path: tiny.path.clone(),
                    message: "this tiny autoencoder has no encoder (TAESD's original layout \
                              keeps it in a `*_encoder.safetensors` file beside the decoder): \
                              image-to-image and inpainting need one"
                        .into(),
                })?;
                encoder
                    .forward(&pixels)?
                    .to_dtype(DType::F32)?
                    .repeat((batch, 1, 1, 1))?
            }
        };
        let (scaling, shift) = self.scaling();
        Ok(((z - shift)? * scaling)?)
    }
}
