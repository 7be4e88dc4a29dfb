//! Stable Diffusion XL (base, refiner, inpainting, Turbo): the family's text encoders in order
//! (CLIP-L and OpenCLIP-G for the base, OpenCLIP-G alone for the refiner), each giving the
//! states of its penultimate layer without the final LayerNorm (earlier layers with CLIP
//! skip), concatenated along the width; the pooled output of the pooled encoder through its
//! projection; and time ids (original size, crop top-left, then target size or the refiner's
//! aesthetic score) as the UNet's added conditioning. Which encoders, states and ids a model
//! uses is data: its family manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::denoiser;
use super::flux::literal_text;
use super::model::{ComponentWeights, LoraNames, Role};
use super::spec::{HiddenStates, TextEncoderSpec, TimeIds};
use super::{
    Conditioning, EncodeOptions, Family, LoadOptions, Model, ModelSource, Networks, Patches,
    ScheduledConditioning, Vae, Weights,
};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::config_file::read_json;
use crate::models::unet::{AddedCond, UNet2DConditionModel, UNetConfig};
use crate::tokenizer::ClipTokenizer;
use crate::weights::in_file;
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
        let tensors = weights.read_all(dtype, device)?;
        encoders.push(text_encoder(
            spec, tokenizer, config, &file, &tensors, dtype, device,
        )?);
        components.push(component(
            &spec.component,
            Role::TextEncoder,
            file,
            tensors,
            &spec.lora,
            components
                .iter()
                .all(|c: &ComponentWeights| c.role != Role::TextEncoder),
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
            VarBuilder::from_tensors(unet_weights.tensors.clone(), dtype, device),
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
            LoraNames {
                kohya: lora.kohya.clone(),
                peft: lora.peft.clone(),
                bare: true,
            },
        ),
    );
    let vae_dir = &family.vae.component;
    let vae = Vae::load(
        &source.config(vae_dir, "config.json")?,
        &source.weights(vae_dir, "diffusion_pytorch_model")?.1,
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
    let vb = VarBuilder::from_tensors(tensors.clone(), dtype, device);
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

fn component(
    name: &str,
    role: Role,
    file: PathBuf,
    tensors: HashMap<String, Tensor>,
    lora: &super::spec::LoraPrefixes,
    bare: bool,
) -> ComponentWeights {
    ComponentWeights {
        name: name.to_string(),
        role,
        file,
        tensors,
        lora: LoraNames {
            kohya: lora.kohya.clone(),
            peft: lora.peft.clone(),
            bare,
        },
        quantized: None,
    }
}

impl SdxlNetworks {
    /// The time ids for an image of `size` (width, height): original size, crop top-left
    /// (0, 0), then the target size or the aesthetic score, as diffusers' `_get_add_time_ids`.
    fn time_ids(&self, size: (usize, usize), negative: bool) -> Result<Option<Tensor>> {
        let c = &self.family.conditioning;
        let (w, h) = (size.0 as f32, size.1 as f32);
        let ids = match c.time_ids {
            None => return Ok(None),
            Some(TimeIds::Size) => vec![h, w, 0.0, 0.0, h, w],
            Some(TimeIds::Aesthetic) => {
                let score = if negative {
                    c.negative_aesthetic_score
                } else {
                    c.aesthetic_score
                };
                vec![h, w, 0.0, 0.0, score as f32]
            }
        };
        let n = ids.len();
        Ok(Some(Tensor::from_vec(ids, (1, n), &self.device)?))
    }

    /// One encoder's states `[1, 77, D]` and pooled output `[1, P]`.
    fn encode_one(
        &self,
        encoder: &TextEncoder,
        prompt: &str,
        clip_skip: usize,
        warnings: Option<&mut Vec<String>>,
    ) -> Result<(Tensor, Tensor)> {
        let encoding = encoder.tokenizer.encode(prompt)?;
        if let (Some(dropped), Some(warnings)) = (&encoding.truncated, warnings) {
            warnings.push(format!(
                "the prompt is longer than {} tokens; this part was dropped: \"{dropped}\"",
                encoder.tokenizer.max_length()
            ));
        }
        let ids = Tensor::new(encoding.ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let n = encoder.model.num_layers();
        let out = match encoder.spec.hidden_states {
            HiddenStates::Penultimate => encoder.model.encode(&ids, n - clip_skip, false)?,
            HiddenStates::LastNormed => encoder.model.encode(&ids, n + 1 - clip_skip, true)?,
        };
        let pooled = out.text_embeds.unwrap_or(out.pooled);
        Ok((out.states, pooled))
    }

    /// The literal text `prompt` encoded with every text encoder, states concatenated.
    fn encode_text(
        &self,
        prompt: &str,
        options: &EncodeOptions,
        warnings: &mut Vec<String>,
    ) -> Result<Conditioning> {
        let layers = self.text_layers();
        let clip_skip = options.clip_skip;
        if clip_skip == 0 || clip_skip > layers {
            return Err(Error::invalid(
                "clip skip",
                clip_skip,
                format!("must be between 1 and {layers} (the text encoders' layer count)"),
            ));
        }
        let mut states = Vec::new();
        let mut pooled = None;
        for (i, encoder) in self.encoders.iter().enumerate() {
            let warn = (i == 0).then_some(&mut *warnings);
            let (s, p) = self.encode_one(encoder, prompt, clip_skip, warn)?;
            states.push(s);
            if encoder.spec.pooled {
                pooled = Some(p);
            }
        }
        let mut context = Tensor::cat(&states, 2)?;
        let zeroed = options.negative
            && prompt.is_empty()
            && self.family.conditioning.force_zeros_for_empty_prompt;
        if zeroed {
            context = context.zeros_like()?;
            pooled = pooled.map(|p| p.zeros_like()).transpose()?;
        }
        Ok(Conditioning {
            context,
            pooled,
            added: self.time_ids(options.size, options.negative)?,
        })
    }
}

impl Networks for SdxlNetworks {
    /// Encodes with every text encoder (77 tokens each; a longer prompt is cut with a
    /// warning) and concatenates their states; `clip_skip` 1 is diffusers' default (the
    /// penultimate layer), 2 one earlier (diffusers' `clip_skip=1`), on every encoder. An empty
    /// negative prompt is all zeros when the family says `force_zeros_for_empty_prompt`.
    /// The a1111 and comfy syntaxes are not read yet: their emphasis markup is removed (with
    /// a warning when a weight is dropped) and the literal text encoded for every step.
    fn encode(
        &self,
        prompt: &str,
        options: &EncodeOptions,
        warnings: &mut Vec<String>,
    ) -> Result<ScheduledConditioning> {
        let text = literal_text(prompt, options.syntax, "SDXL (for now)", warnings);
        let mut scheduled =
            ScheduledConditioning::fixed(self.encode_text(&text, options, warnings)?);
        if options.pad_prompts {
            let positive = EncodeOptions {
                negative: false,
                ..*options
            };
            scheduled.empty = Some(self.encode_text("", &positive, &mut Vec::new())?);
        }
        Ok(scheduled)
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
                VarBuilder::from_tensors(map, self.dtype, &self.device),
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
