//! Stable Diffusion 1.x and 2.x: one CLIP text encoder (its last layer, or an earlier one for
//! CLIP skip, always through the final LayerNorm), a conditional UNet attending to the
//! `[1, 77, D]` text states, and an `AutoencoderKL`, loaded from a diffusers folder.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::denoiser;
use super::model::{ComponentWeights, LoraNames, Role};
use super::prompting::{self, ClipEncoder};
use super::{
    timed_load, Conditioning, EncodeOptions, Family, LoadOptions, Model, ModelSource, Networks,
    Patches, ScheduledConditioning, Vae, Weights,
};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::config_file::read_json;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::prompt::EncoderSlot;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{in_file, tensors_var_builder};
use crate::{Error, Result};

/// The UNet's component name (its folder).
const UNET: &str = "unet";
/// The text encoder's component name (its folder).
const TEXT_ENCODER: &str = "text_encoder";

/// SD 1.x/2.x networks.
#[derive(Debug, Clone)]
pub struct SdNetworks {
    tokenizer: Arc<ClipTokenizer>,
    text_encoder: Arc<ClipTextModel>,
    text_config: ClipTextConfig,
    unet: Arc<UNet2DConditionModel>,
    device: candle_core::Device,
    dtype: DType,
}

impl SdNetworks {
    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &ClipTextModel {
        &self.text_encoder
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }
}

/// Loads an SD 1.x/2.x model of `family` from `source` (a diffusers folder, or a single file
/// with its configs). The text encoder and the VAE are read on a second thread while the
/// UNet is read on this one (the reads are memory-bound copies out of the page cache, and
/// one core leaves the other idle); each component's time is reported as a
/// [`super::LOAD_TARGET`] event.
pub fn load(family: Arc<Family>, source: &ModelSource, options: &LoadOptions) -> Result<Model> {
    let (device, dtype) = (&options.device, options.dtype);
    let text_config_path = source.config(TEXT_ENCODER, "config.json")?;
    let text_config: ClipTextConfig = read_json(&text_config_path)?;
    let unet_config_path = source.config(UNET, "config.json")?;
    let unet_config: UNetConfig = read_json(&unet_config_path)?;
    let plan = unet_config.plan().map_err(|message| Error::Config {
        path: unet_config_path.clone(),
        message,
    })?;
    if text_config.hidden_size != plan.cross_attention_dim[0] {
        return Err(Error::Config {
            path: unet_config_path,
            message: format!(
                "`cross_attention_dim` {} does not match the text encoder's `hidden_size` {} in {}",
                plan.cross_attention_dim[0],
                text_config.hidden_size,
                text_config_path.display()
            ),
        });
    }
    let (others, unet) = std::thread::scope(|scope| {
        let others = scope.spawn(|| -> Result<_> {
            let tokenizer = timed_load("tokenizer", || {
                ClipTokenizer::from_dir(&source.tokenizer_dir("tokenizer"))
            })?;
            let text = timed_load(TEXT_ENCODER, || text_encoder(source, &text_config, options))?;
            let vae = timed_load("vae", || {
                Vae::load(
                    &source.config("vae", "config.json")?,
                    &source
                        .weights("vae", "diffusion_pytorch_model")?
                        .1
                        .with_weights_dtype(options.weights_dtype),
                    dtype,
                    device,
                )
            })?;
            Ok((tokenizer, text, vae))
        });
        let unet = timed_load(UNET, || unet(source, &unet_config, options));
        let others = others.join().map_err(|_| {
            Error::invalid(
                "model folder",
                source.origin.display().to_string(),
                "loading the text encoder and VAE failed unexpectedly (a thread panicked)",
            )
        });
        (others, unet)
    });
    let (tokenizer, (text_file, text_map, text_encoder), vae) = others??;
    let (unet_weights, unet) = unet?;
    let scheduler_config = source.scheduler_config()?;

    let weights = Weights {
        components: vec![
            unet_weights.component(
                UNET,
                Role::Denoiser,
                LoraNames::new("lora_unet", UNET, true),
            ),
            ComponentWeights::new(
                TEXT_ENCODER,
                Role::TextEncoder,
                text_file,
                text_map,
                LoraNames::new("lora_te", TEXT_ENCODER, true),
            ),
        ],
    };
    Ok(Model {
        family,
        source: source.origin.clone(),
        networks: Arc::new(SdNetworks {
            tokenizer: Arc::new(tokenizer),
            text_encoder: Arc::new(text_encoder),
            text_config,
            unet: Arc::new(unet),
            device: device.clone(),
            dtype,
        }),
        vae,
        preview_vae: None,
        scheduler_config,
        device: device.clone(),
        dtype,
        weights: Arc::new(weights),
    })
}

/// The CLIP text encoder's file, its tensors (kept for LoRAs) and the network built on them.
fn text_encoder(
    source: &ModelSource,
    config: &ClipTextConfig,
    options: &LoadOptions,
) -> Result<(PathBuf, HashMap<String, Tensor>, ClipTextModel)> {
    let (device, dtype) = (&options.device, options.dtype);
    let (file, weights) = source.weights(TEXT_ENCODER, "model")?;
    let map = weights
        .with_weights_dtype(options.weights_dtype)
        .read_all(dtype, device)?;
    let model = in_file(
        &file,
        ClipTextModel::new(tensors_var_builder(map.clone(), dtype, device), config),
    )?;
    Ok((file, map, model))
}

/// The UNet's weights (kept for LoRAs) and the network built on them.
fn unet(
    source: &ModelSource,
    config: &UNetConfig,
    options: &LoadOptions,
) -> Result<(denoiser::Denoiser, UNet2DConditionModel)> {
    let weights = denoiser::unet_weights(source, UNET, config, false, options)?;
    let unet = in_file(
        &weights.file,
        UNet2DConditionModel::new_quantized(
            tensors_var_builder(weights.tensors.clone(), options.dtype, &options.device),
            config,
            weights.quantized.as_ref(),
        ),
    )?;
    Ok((weights, unet))
}

impl Networks for SdNetworks {
    /// Plans the prompt in the job's syntax (see [`super::prompting`]) and encodes every
    /// distinct text with CLIP: `clip_skip` 1 uses the last layer, 2 the one before (diffusers'
    /// `clip_skip=1`), and so on; the final LayerNorm is applied either way. `plain` is
    /// diffusers' encoding: 77 tokens, a longer prompt cut with a warning naming the dropped
    /// words.
    fn encode(
        &self,
        prompt: &str,
        options: &EncodeOptions,
        warnings: &mut Vec<String>,
    ) -> Result<ScheduledConditioning> {
        let encoder = ClipEncoder {
            model: &self.text_encoder,
            slot: EncoderSlot::Only,
            device: &self.device,
        };
        let layers = encoder.layers(options.clip_skip)?;
        let plan = prompting::plan(prompt, options, &self.tokenizer, warnings)?;
        let (encoded, empty) = encoder.encode(&plan, layers, options.pad_prompts)?;
        let scheduled = ScheduledConditioning::from_prompt(encoded, |_, _, context| {
            Ok(Conditioning::from_context(context))
        })?;
        Ok(prompting::finish(
            scheduled,
            &plan,
            empty.map(Conditioning::from_context),
        ))
    }

    fn predict(
        &self,
        latents: &Tensor,
        timestep: f64,
        cond: &Conditioning,
        _guidance: f64,
    ) -> Result<Tensor> {
        let out = self.unet.forward(
            &latents.to_dtype(self.dtype)?,
            timestep,
            &cond.context,
            None,
        )?;
        Ok(out.to_dtype(DType::F32)?)
    }

    fn in_channels(&self) -> usize {
        self.unet.config().in_channels
    }

    fn text_layers(&self) -> usize {
        self.text_encoder.num_layers()
    }

    fn sample_size(&self) -> Option<usize> {
        self.unet.config().sample_size
    }

    fn with_weights(&self, weights: &Weights, patches: &Patches) -> Result<Arc<dyn Networks>> {
        let mut out = self.clone();
        let device = self.device.clone();
        let rebuilt = |name: &str| -> Option<(VarBuilder<'static>, &std::path::Path)> {
            let patched = patches.get(name).filter(|p| !p.is_empty())?;
            let base = weights.get(name)?;
            let mut map = base.tensors.clone();
            map.extend(patched.iter().map(|(k, t)| (k.clone(), t.clone())));
            Some((
                tensors_var_builder(map, self.dtype, &device),
                base.file.as_path(),
            ))
        };
        if let Some((vb, file)) = rebuilt(UNET) {
            let quantized = weights
                .get(UNET)
                .and_then(|base| denoiser::job_quantized(base, patches.get(UNET)));
            let unet =
                UNet2DConditionModel::new_quantized(vb, self.unet.config(), quantized.as_ref());
            out.unet = Arc::new(in_file(file, unet)?);
        }
        if let Some((vb, file)) = rebuilt(TEXT_ENCODER) {
            let te = ClipTextModel::new(vb, &self.text_config);
            out.text_encoder = Arc::new(in_file(file, te)?);
        }
        Ok(Arc::new(out))
    }
}
