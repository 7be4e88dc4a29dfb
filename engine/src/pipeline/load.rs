//! Loading a diffusers-layout model folder: configs first (architecture is data), then the
//! memory-mapped weights of each component, once.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::config_file::read_json;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{Decoder, Encoder, VaeConfig};
use crate::models::weights::{in_file, mmap};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::ClipTokenizer;
use crate::{model_files, Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where tensors live.
    pub device: Device,
    /// Compute dtype of the text encoder and UNet.
    pub dtype: DType,
}

/// A Stable Diffusion model, loaded and ready to run jobs.
#[derive(Debug)]
pub struct StableDiffusion {
    /// Folder the model came from.
    pub dir: PathBuf,
    /// The prompt tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The CLIP text encoder.
    pub text_encoder: ClipTextModel,
    /// Its config.
    pub text_config: ClipTextConfig,
    /// The denoising UNet.
    pub unet: UNet2DConditionModel,
    /// The VAE decoder.
    pub vae_decoder: Decoder,
    /// The VAE encoder (image-to-image and inpainting).
    pub vae_encoder: Encoder,
    /// The VAE config (scale factor, scaling factor).
    pub vae_config: VaeConfig,
    /// The model's own scheduler config; schedulers chosen by name start from it.
    pub scheduler_config: SchedulerConfig,
    /// Device of every tensor.
    pub device: Device,
    /// dtype of the text encoder and UNet.
    pub dtype: DType,
    /// dtype of the VAE: f32 when f16 would overflow (`force_upcast`).
    pub vae_dtype: DType,
}

fn config_error(path: &Path, message: String) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        message,
    }
}

impl StableDiffusion {
    /// Loads every component of the diffusers folder `dir`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        model_files::model_index(dir)?;
        let (device, dtype) = (&options.device, options.dtype);

        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;

        let text_config_path = model_files::config(dir, "text_encoder", "config.json")?;
        let text_config: ClipTextConfig = read_json(&text_config_path)?;
        let text_weights = model_files::weights(dir, "text_encoder", "model")?;
        let text_encoder = in_file(
            &text_weights,
            ClipTextModel::new(mmap(&text_weights, dtype, device)?, &text_config),
        )?;

        let unet_config_path = model_files::config(dir, "unet", "config.json")?;
        let unet_config: UNetConfig = read_json(&unet_config_path)?;
        unet_config
            .plan()
            .map_err(|m| config_error(&unet_config_path, m))?;
        let unet_weights = model_files::weights(dir, "unet", "diffusion_pytorch_model")?;
        let unet = in_file(
            &unet_weights,
            UNet2DConditionModel::new(mmap(&unet_weights, dtype, device)?, &unet_config),
        )?;

        let vae_config_path = model_files::config(dir, "vae", "config.json")?;
        let vae_config: VaeConfig = read_json(&vae_config_path)?;
        vae_config
            .validate()
            .map_err(|m| config_error(&vae_config_path, m))?;
        let vae_dtype = if dtype == DType::F16 && vae_config.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let vae_weights = model_files::weights(dir, "vae", "diffusion_pytorch_model")?;
        let vae_vb = mmap(&vae_weights, vae_dtype, device)?;
        let vae_decoder = in_file(&vae_weights, Decoder::new(vae_vb.clone(), &vae_config))?;
        let vae_encoder = in_file(&vae_weights, Encoder::new(vae_vb, &vae_config))?;

        let scheduler_config = SchedulerConfig::from_file(&model_files::config(
            dir,
            "scheduler",
            "scheduler_config.json",
        )?)?;

        if text_config.hidden_size != unet_config_dim(&unet_config) {
            return Err(config_error(
                &unet_config_path,
                format!(
                    "`cross_attention_dim` {} does not match the text encoder's `hidden_size` {} in {}",
                    unet_config_dim(&unet_config),
                    text_config.hidden_size,
                    text_config_path.display()
                ),
            ));
        }

        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            text_encoder,
            text_config,
            unet,
            vae_decoder,
            vae_encoder,
            vae_config,
            scheduler_config,
            device: device.clone(),
            dtype,
            vae_dtype,
        })
    }

    /// Pixels per latent pixel (diffusers' `vae_scale_factor`).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }
}

fn unet_config_dim(c: &UNetConfig) -> usize {
    match &c.cross_attention_dim {
        crate::models::config_file::PerBlock::All(d) => *d,
        crate::models::config_file::PerBlock::Each(v) => v.first().copied().unwrap_or(0),
    }
}
