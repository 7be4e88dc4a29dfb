//! Loading a diffusers-layout model folder: configs first (architecture is data), then the
//! memory-mapped weights of each component, once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::lora::merge::BaseWeights;
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
///
/// Cloning is cheap (the networks are shared): a job with LoRAs runs on a clone whose UNet and
/// text encoder are rebuilt around merged weights ([`crate::lora::apply`]).
#[derive(Debug, Clone)]
pub struct StableDiffusion {
    /// Folder the model came from.
    pub dir: PathBuf,
    /// The prompt tokenizer.
    pub tokenizer: Arc<ClipTokenizer>,
    /// The CLIP text encoder.
    pub text_encoder: Arc<ClipTextModel>,
    /// Its config.
    pub text_config: ClipTextConfig,
    /// The denoising UNet.
    pub unet: Arc<UNet2DConditionModel>,
    /// The VAE decoder.
    pub vae_decoder: Arc<Decoder>,
    /// The VAE encoder (image-to-image and inpainting).
    pub vae_encoder: Arc<Encoder>,
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
    /// The UNet and text-encoder weights the networks were built from (shared tensors), which
    /// LoRAs are merged into per job.
    pub base_weights: Arc<BaseWeights>,
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
        let text_map = weights_map(&text_weights, dtype, device)?;
        let text_encoder = in_file(
            &text_weights,
            ClipTextModel::new(
                VarBuilder::from_tensors(text_map.clone(), dtype, device),
                &text_config,
            ),
        )?;

        let unet_config_path = model_files::config(dir, "unet", "config.json")?;
        let unet_config: UNetConfig = read_json(&unet_config_path)?;
        let unet_plan = unet_config
            .plan()
            .map_err(|m| config_error(&unet_config_path, m))?;
        let unet_weights = model_files::weights(dir, "unet", "diffusion_pytorch_model")?;
        let unet_map = weights_map(&unet_weights, dtype, device)?;
        let unet = in_file(
            &unet_weights,
            UNet2DConditionModel::new(
                VarBuilder::from_tensors(unet_map.clone(), dtype, device),
                &unet_config,
            ),
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

        if text_config.hidden_size != unet_plan.cross_attention_dim[0] {
            return Err(config_error(
                &unet_config_path,
                format!(
                    "`cross_attention_dim` {} does not match the text encoder's `hidden_size` {} in {}",
                    unet_plan.cross_attention_dim[0],
                    text_config.hidden_size,
                    text_config_path.display()
                ),
            ));
        }

        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer: Arc::new(tokenizer),
            text_encoder: Arc::new(text_encoder),
            text_config,
            unet: Arc::new(unet),
            vae_decoder: Arc::new(vae_decoder),
            vae_encoder: Arc::new(vae_encoder),
            vae_config,
            scheduler_config,
            device: device.clone(),
            dtype,
            vae_dtype,
            base_weights: Arc::new(BaseWeights::new(
                unet_map,
                unet_weights,
                text_map,
                text_weights,
            )),
        })
    }

    /// Pixels per latent pixel (diffusers' `vae_scale_factor`).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }
}

/// Every tensor of a safetensors file, in `dtype` on `device`, read through the same loader
/// as every other weight ([`mmap`]): kept so that LoRAs can be merged per job (the networks
/// are built from these tensors and share them, so this costs no extra memory).
fn weights_map(path: &Path, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let vb = mmap(path, dtype, device)?;
    tensor_names(path)?
        .into_iter()
        .map(|name| {
            let t = vb.get_unchecked_dtype(&name, dtype);
            Ok((name, in_file(path, t)?))
        })
        .collect()
}

/// The tensor names in a safetensors header.
fn tensor_names(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let error = |message: String| Error::Weights {
        path: path.to_path_buf(),
        source: candle_core::Error::Msg(message),
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(error(format!("header length {len} is not plausible")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| error(format!("bad header: {e}")))?;
    Ok(map
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k != "__metadata__")
        .collect())
}
