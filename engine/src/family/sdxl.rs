//! Stable Diffusion XL (base, refiner, inpainting, Turbo): the family's text encoders in order
//! (CLIP-L and OpenCLIP-G for the base, OpenCLIP-G alone for the refiner), each giving the
//! states of its penultimate layer without the final LayerNorm (earlier layers with CLIP
//! skip), concatenated along the width; the pooled output of the pooled encoder through its
//! projection; and time ids (original size, crop top-left, then target size or the refiner's
//! aesthetic score) as the UNet's added conditioning. Which encoders, states and ids a model
//! uses is data: its family manifest.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::denoiser;
use super::model::{ComponentWeights, LoraNames, Role};
use super::prompting::{self, encode_stacked, ClipEncoder, StackedEncoder, StackedPrompt};
use super::spec::{HiddenStates, TextEncoderKind, TextEncoderSpec, TimeIds};
use super::{
    Conditioning, EncodeOptions, Family, LoadOptions, Model, ModelSource, Networks, Patches,
    ScheduledConditioning, Vae, Weights,
};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::config_file::read_json;
use crate::models::unet::{AddedCond, UNet2DConditionModel, UNetConfig};
use crate::prompt::{EncoderSlot, PromptSyntax};
use crate::tokenizer::ClipTokenizer;
use crate::weights::{in_file, tensors_var_builder};
use crate::{Error, Result};

/// One loaded text encoder with its tokenizer.
#[derive(Debug, Clone)]
struct TextEncoder {
    spec: TextEncoderSpec,
    tokenizer: Arc<ClipTokenizer>,
    model: Arc<ClipTextModel>,
    config: ClipTextConfig,
}

/// SDXL networks.
#[derive(Debug, Clone)]
pub struct SdxlNetworks {
    family: Arc<Family>,
    encoders: Vec<TextEncoder>,
    unet: Arc<UNet2DConditionModel>,
    device: Device,
    dtype: DType,
}

impl SdxlNetworks {
    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }
}

/// Loads an SDXL model of `family` from `source` (a diffusers folder, or a single file with its
/// configs).
pub fn load(family: Arc<Family>, source: &ModelSource, options: &LoadOptions) -> Result<Model> {
    let (device, dtype) = (&options.device, options.dtype);
    let mut encoders = Vec::new();
    let mut components = Vec::new();
    for spec in &family.text_encoders {
        let tokenizer = ClipTokenizer::from_dir(&source.tokenizer_dir(&spec.tokenizer))?;
        let config: ClipTextConfig = read_json(&source.config(&spec.component, "config.json")?)?;
        let (file, weights) = source.weights(&spec.component, "model")?;
        let tensors = weights
            .with_weights_dtype(options.weights_dtype)
            .read_all(dtype, device)?;
        encoders.push(text_encoder(
            spec, tokenizer, config, &file, &tensors, dtype, device,
        )?);
        // Bare module names (no prefix) name the first text encoder.
        let bare = components
            .iter()
            .all(|c: &ComponentWeights| c.role != Role::TextEncoder);
        let lora = LoraNames::new(&spec.lora.kohya, &spec.lora.peft, bare);
        components.push(ComponentWeights::new(
            &spec.component,
            Role::TextEncoder,
            file,
            tensors,
            lora,
        ));
    }
    let unet_config_path = source.config(&family.denoiser.component, "config.json")?;
    let unet_config: UNetConfig = read_json(&unet_config_path)?;
    check_widths(&unet_config, &encoders, &unet_config_path)?;
    let unet_weights = denoiser::unet_weights(
        source,
        &family.denoiser.component,
        &unet_config,
        true,
        options,
    )?;
    let unet = in_file(
        &unet_weights.file,
        UNet2DConditionModel::new_quantized(
            tensors_var_builder(unet_weights.tensors.clone(), dtype, device),
            &unet_config,
            unet_weights.quantized.as_ref(),
        ),
    )?;
    let lora = &family.denoiser.lora;
    components.insert(
        0,
        unet_weights.component(
            &family.denoiser.component,
            Role::Denoiser,
            LoraNames::new(&lora.kohya, &lora.peft, true),
        ),
    );
    let vae_dir = &family.vae.component;
    let vae = Vae::load(
        &source.config(vae_dir, "config.json")?,
        &source
            .weights(vae_dir, "diffusion_pytorch_model")?
            .1
            .with_weights_dtype(options.weights_dtype),
        dtype,
        device,
    )?;
    let scheduler_config = source.scheduler_config()?;
    let networks = SdxlNetworks {
        family: family.clone(),
        encoders,
        unet: Arc::new(unet),
        device: device.clone(),
        dtype,
    };
    Ok(Model {
        family,
        source: source.origin.clone(),
        networks: Arc::new(networks),
        vae,
        preview_vae: None,
        scheduler_config,
        device: device.clone(),
        dtype,
        weights: Arc::new(Weights { components }),
    })
}

/// A text encoder built from its tensors; a pooled encoder without a projection is an error.
fn text_encoder(
    spec: &TextEncoderSpec,
    tokenizer: ClipTokenizer,
    config: ClipTextConfig,
    file: &Path,
    tensors: &HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<TextEncoder> {
    let vb = tensors_var_builder(tensors.clone(), dtype, device);
    let model = in_file(file, ClipTextModel::new(vb, &config))?;
    if spec.pooled && !model.has_projection() {
        return Err(Error::Config {
            path: file.to_path_buf(),
            message: format!(
                "text encoder `{}` gives the pooled conditioning but has no \
                 `text_projection.weight`: is it a CLIPTextModelWithProjection?",
                spec.component
            ),
        });
    }
    Ok(TextEncoder {
        spec: spec.clone(),
        tokenizer: Arc::new(tokenizer),
        model: Arc::new(model),
        config,
    })
}

/// The UNet attends to the encoders' concatenated widths and embeds the pooled width plus
/// the time ids: both must agree with the configs.
fn check_widths(config: &UNetConfig, encoders: &[TextEncoder], path: &Path) -> Result<()> {
    let plan = config.plan().map_err(|message| Error::Config {
        path: path.to_path_buf(),
        message,
    })?;
    let width: usize = encoders.iter().map(|e| e.config.hidden_size).sum();
    if plan.cross_attention_dim[0] != width {
        let parts: Vec<String> = encoders
            .iter()
            .map(|e| format!("{} {}", e.spec.component, e.config.hidden_size))
            .collect();
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: format!(
                "`cross_attention_dim` {} is not the text encoders' concatenated width {width} \
                 ({})",
                plan.cross_attention_dim[0],
                parts.join(" + ")
            ),
        });
    }
    Ok(())
}

impl SdxlNetworks {
    /// The time ids of `options`: original size (height, width), crop top-left (top, left),
    /// then the target size or the aesthetic score, as diffusers' `_get_add_time_ids` (the
    /// negative prompt takes the same sizes).
    fn time_ids(&self, options: &EncodeOptions, negative: bool) -> Result<Option<Tensor>> {
        let c = &self.family.conditioning;
        let s = &options.size_conditioning;
        let hw = |size: Option<(usize, usize)>| {
            let (w, h) = size.unwrap_or(options.size);
            [h as f32, w as f32]
        };
        let [oh, ow] = hw(s.original_size);
        let (top, left) = (s.crop_top_left.0 as f32, s.crop_top_left.1 as f32);
        let ids = match c.time_ids {
            None => return Ok(None),
            Some(TimeIds::Size) => {
                let [th, tw] = hw(s.target_size);
                vec![oh, ow, top, left, th, tw]
            }
            Some(TimeIds::Aesthetic) => {
                let score = if negative {
                    c.negative_aesthetic_score
                } else {
                    c.aesthetic_score
                };
                vec![oh, ow, top, left, score as f32]
            }
        };
        let n = ids.len();
        Ok(Some(Tensor::from_vec(ids, (1, n), &self.device)?))
    }

    /// The encoders as [`prompting::encode_stacked`] takes them, for `clip_skip`.
    fn stacked(&self, clip_skip: usize) -> Result<Vec<StackedEncoder<'_>>> {
        let layers = self.text_layers();
        if clip_skip == 0 || clip_skip > layers {
            return Err(Error::invalid(
                "clip skip",
                clip_skip,
                format!("must be between 1 and {layers} (the text encoders' layer count)"),
            ));
        }
        Ok(self
            .encoders
            .iter()
            .map(|encoder| {
                let n = encoder.model.num_layers();
                let (layers, final_layer_norm) = match encoder.spec.hidden_states {
                    HiddenStates::Penultimate => (n - clip_skip, false),
                    HiddenStates::LastNormed => (n + 1 - clip_skip, true),
                };
                // SDXL embeddings carry `clip_l` and `clip_g`: the projected encoder is
                // OpenCLIP-G (base and refiner), the other CLIP-L.
                let slot = match encoder.spec.kind {
                    TextEncoderKind::ClipProjection => EncoderSlot::ClipG,
                    _ => EncoderSlot::ClipL,
                };
                StackedEncoder {
                    clip: ClipEncoder {
                        model: &encoder.model,
                        slot,
                        device: &self.device,
                    },
                    tokenizer: &encoder.tokenizer,
                    layers,
                    final_layer_norm,
                    pooled: encoder.spec.pooled,
                }
            })
            .collect())
    }
}

impl Networks for SdxlNetworks {
    /// Plans the prompt once in the job's syntax (with the first encoder's tokenizer, see
    /// [`super::prompting`]) and encodes the same chunks with every text encoder, each padded
    /// with its own pad token and weighted on its own (A1111's mean restoration, ComfyUI's
    /// empty-prompt weighting); each encoder's chunks are concatenated along the sequence and
    /// the encoders along the width. The pooled embedding is the pooled encoder's projected
    /// output of each text's first chunk. `clip_skip` 1 is diffusers' default (the penultimate
    /// layer), 2 one earlier (diffusers' `clip_skip=1`), on every encoder. `plain` is
    /// diffusers' encoding (77 tokens; a longer prompt is cut with a warning). An empty
    /// negative prompt is all zeros when the family says `force_zeros_for_empty_prompt`
    /// (diffusers and A1111), except in the comfy syntax (ComfyUI encodes the empty text).
    fn encode(
        &self,
        prompt: &str,
        options: &EncodeOptions,
        warnings: &mut Vec<String>,
    ) -> Result<ScheduledConditioning> {
        let encoders = self.stacked(options.clip_skip)?;
        let first = encoders.first().ok_or_else(|| {
            Error::invalid("text encoders", 0, "an SDXL family needs a text encoder")
        })?;
        let plan = prompting::plan(prompt, options, first.tokenizer, warnings)?;
        let StackedPrompt {
            encoded,
            pooled,
            empty,
        } = encode_stacked(&plan, first.tokenizer, &encoders, options.pad_prompts)?;
        let zeroed = options.negative
            && prompt.is_empty()
            && options.syntax != PromptSyntax::Comfy
            && self.family.conditioning.force_zeros_for_empty_prompt;
        let added = self.time_ids(options, options.negative)?;
        let scheduled = ScheduledConditioning::from_prompt(encoded, |p, t, context| {
            let pooled = pooled[p][t].clone();
            let (context, pooled) = if zeroed {
                (
                    context.zeros_like()?,
                    pooled.map(|p| p.zeros_like()).transpose()?,
                )
            } else {
                (context, pooled)
            };
            Ok(Conditioning {
                context,
                pooled,
                added: added.clone(),
            })
        })?;
        let empty = match empty {
            Some((context, pooled)) => Some(Conditioning {
                context,
                pooled,
                added: self.time_ids(options, false)?,
            }),
            None => None,
        };
        Ok(prompting::finish(scheduled, &plan, empty))
    }

    fn predict(
        &self,
        latents: &Tensor,
        timestep: f64,
        cond: &Conditioning,
        _guidance: f64,
    ) -> Result<Tensor> {
        let added = match (&cond.pooled, &cond.added) {
            (Some(pooled), Some(time_ids)) => Some(AddedCond {
                text_embeds: pooled.to_dtype(self.dtype)?,
                time_ids: time_ids.to_dtype(self.dtype)?,
            }),
            _ => None,
        };
        let out = self.unet.forward(
            &latents.to_dtype(self.dtype)?,
            timestep,
            &cond.context.to_dtype(self.dtype)?,
            added.as_ref(),
        )?;
        Ok(out.to_dtype(DType::F32)?)
    }

    fn in_channels(&self) -> usize {
        self.unet.config().in_channels
    }

    fn text_layers(&self) -> usize {
        self.encoders
            .iter()
            .map(|e| e.model.num_layers())
            .min()
            .unwrap_or(0)
    }

    fn sample_size(&self) -> Option<usize> {
        self.unet.config().sample_size
    }

    fn with_weights(&self, weights: &Weights, patches: &Patches) -> Result<Arc<dyn Networks>> {
        let mut out = self.clone();
        let rebuilt = |name: &str| -> Option<(VarBuilder<'static>, &Path)> {
            let patched = patches.get(name).filter(|p| !p.is_empty())?;
            let base = weights.get(name)?;
            let mut map = base.tensors.clone();
            map.extend(patched.iter().map(|(k, t)| (k.clone(), t.clone())));
            Some((
                tensors_var_builder(map, self.dtype, &self.device),
                base.file.as_path(),
            ))
        };
        let name = &self.family.denoiser.component;
        if let Some((vb, file)) = rebuilt(name) {
            let quantized = weights
                .get(name)
                .and_then(|base| denoiser::job_quantized(base, patches.get(name)));
            let unet =
                UNet2DConditionModel::new_quantized(vb, self.unet.config(), quantized.as_ref());
            out.unet = Arc::new(in_file(file, unet)?);
        }
        for encoder in &mut out.encoders {
            if let Some((vb, file)) = rebuilt(&encoder.spec.component) {
                let model = ClipTextModel::new(vb, &encoder.config);
                encoder.model = Arc::new(in_file(file, model)?);
            }
        }
        Ok(Arc::new(out))
    }
}
