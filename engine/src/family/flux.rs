//! FLUX.1 (dev and schnell): CLIP-L's pooled output and T5's token states condition a
//! flow-matching transformer over 2x2-packed 16-channel latents; an `AutoencoderKL` with a
//! latent shift. Loaded from a diffusers folder, with the transformer optionally from another
//! file (a BFL/ComfyUI single file, or a GGUF file; see [`super::denoiser`]). How each component
//! loads (and `--low-memory`) is in `flux_parts`.
//!
//! The pipeline stays family-generic: [`FluxNetworks::predict`] takes unpacked latents
//! `[B, 16, h, w]`, packs them, builds the image and text positions, passes the timestep as a
//! sigma (`t / 1000`) and, for dev, the guidance scale to its embedding, and unpacks the
//! predicted flow.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::denoiser;
use super::flux_parts::{self as parts, build_transformer, Clip, Transformer, T5};
use super::model::{FusedPart, FusedTarget, LoraAlias};
use super::prompting;
use super::ScheduledPart;
use super::{
    Conditioning, EncodeOptions, Family, LoadOptions, Model, ModelSource, Networks, Patches,
    ScheduledConditioning, Weights,
};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::flux::{self, bfl, FluxTransformer2DModel};
use crate::models::t5::T5EncoderModel;
use crate::prompt::attention::{comfy_token_weights, parse_prompt_attention, BREAK_WEIGHT};
use crate::prompt::encode::clip_chunk_output;
use crate::prompt::{Chunk, EmbeddingVectors, EncoderSlot, PromptSyntax};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::t5::T5Tokenizer;
use crate::tokenizer::ClipTokenizer;
use crate::weights::in_file;
use crate::{model_files, Error, Result};

/// The transformer's component name (its folder).
pub(super) const TRANSFORMER: &str = "transformer";
/// CLIP-L's component name.
pub(super) const TEXT_ENCODER: &str = "text_encoder";
/// T5's component name.
pub(super) const TEXT_ENCODER_2: &str = "text_encoder_2";

/// FLUX networks.
#[derive(Debug, Clone)]
pub struct FluxNetworks {
    clip_tokenizer: Arc<ClipTokenizer>,
    clip: Clip,
    clip_config: ClipTextConfig,
    t5_tokenizer: Arc<T5Tokenizer>,
    t5: T5,
    transformer: Transformer,
    /// T5 tokens per prompt (FluxPipeline's `max_sequence_length`).
    max_sequence_length: usize,
    device: Device,
    dtype: DType,
}

impl FluxNetworks {
    /// The transformer (built now if it was deferred by `--low-memory`).
    pub fn transformer(&self) -> Result<Arc<FluxTransformer2DModel>> {
        self.transformer.get()
    }

    /// T5 tokens per prompt.
    pub fn max_sequence_length(&self) -> usize {
        self.max_sequence_length
    }
}

/// Loads FLUX from `source` as a model of `family`: configs and tokenizers from its folder,
/// the text encoders and the VAE from its single file where that holds them (else from the
/// folder), the transformer from `options.denoiser` when given (a BFL/ComfyUI safetensors file
/// or a GGUF file), else from the folder's `transformer`.
pub fn load(family: Arc<Family>, source: &ModelSource, options: &LoadOptions) -> Result<Model> {
    let (device, dtype) = (&options.device, options.dtype);
    let dir = source.config_dir.as_path();
    let clip_tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
    let (clip, clip_config, clip_weights) = parts::load_clip(source, options)?;
    let t5_tokenizer = T5Tokenizer::from_dir(&dir.join("tokenizer_2"))?;
    let t5 = parts::load_t5(source, options)?;
    let (transformer, transformer_weights) = parts::load_transformer(&family, source, options)?;
    let vae = parts::load_vae(source, options)?;
    let scheduler_config = SchedulerConfig::from_file(&model_files::config(
        dir,
        "scheduler",
        "scheduler_config.json",
    )?)?;
    let max_sequence_length = options
        .max_sequence_length
        .or(family.max_sequence_length)
        .unwrap_or(512);
    let weights = Weights {
        components: std::iter::once(transformer_weights)
            .chain(clip_weights)
            .collect(),
    };
    Ok(Model {
        family,
        source: source.origin.clone(),
        networks: Arc::new(FluxNetworks {
            clip_tokenizer: Arc::new(clip_tokenizer),
            clip,
            clip_config,
            t5_tokenizer: Arc::new(t5_tokenizer),
            t5,
            transformer,
            max_sequence_length,
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

impl FluxNetworks {
    /// CLIP-L (read from its file unless loaded).
    fn clip_model(&self) -> Result<Arc<ClipTextModel>> {
        match &self.clip {
            Clip::Loaded(clip) => Ok(clip.clone()),
            Clip::OnDemand { file, source } => {
                let vb = source.var_builder(self.dtype, &self.device);
                Ok(Arc::new(in_file(
                    file,
                    ClipTextModel::new(vb, &self.clip_config),
                )?))
            }
        }
    }

    /// T5 states and CLIP's pooled output of `prompt`, taken literally.
    fn encode_text(&self, prompt: &str, warnings: &mut Vec<String>) -> Result<Conditioning> {
        let context = self.t5_context(&*self.t5_model()?, prompt, warnings)?;
        // CLIP's own truncation is silent in FluxPipeline too; T5 carries the long prompt.
        let clip = self.clip_tokenizer.encode(prompt)?;
        let ids = Tensor::new(clip.ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let clip = self.clip_model()?;
        let out = clip.encode(&ids, clip.num_layers(), true)?;
        Ok(Conditioning {
            context,
            pooled: Some(out.pooled),
            added: None,
        })
    }
}

impl FluxNetworks {
    /// T5 (read from its files unless loaded).
    fn t5_model(&self) -> Result<Arc<T5EncoderModel>> {
        self.t5.load(self.dtype, &self.device)
    }

    /// `t5`'s states of `text`, taken literally (a truncation warning added once).
    fn t5_context(
        &self,
        t5: &T5EncoderModel,
        text: &str,
        warnings: &mut Vec<String>,
    ) -> Result<Tensor> {
        let tokens = self.t5_tokenizer.encode(text, self.max_sequence_length)?;
        if let Some(dropped) = &tokens.truncated {
            let warning = format!(
                "the prompt is longer than {} T5 tokens (max sequence length); this part was \
                 dropped: \"{dropped}\"",
                self.max_sequence_length
            );
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        }
        let ids = Tensor::new(tokens.ids.as_slice(), &self.device)?.unsqueeze(0)?;
        Ok(t5.forward(&ids)?.to_dtype(self.dtype)?)
    }

    /// CLIP-L's pooled output of one chunk (textual-inversion vectors in place: an SDXL pair's
    /// `clip_l`, or a single-encoder embedding of CLIP-L's width).
    fn clip_pooled(&self, clip: &ClipTextModel, chunk: &Chunk) -> Result<Tensor> {
        let pair = chunk
            .embeddings
            .iter()
            .any(|p| matches!(p.embedding.vectors, EmbeddingVectors::Sdxl { .. }));
        let slot = if pair {
            EncoderSlot::ClipL
        } else {
            EncoderSlot::Only
        };
        let out = clip_chunk_output(clip, chunk, slot, clip.num_layers(), true, &self.device)?;
        Ok(out.pooled)
    }

    /// A prompt in the a1111 or comfy syntax (see [`Networks::encode`]).
    fn encode_markup(
        &self,
        prompt: &str,
        options: &EncodeOptions,
        warnings: &mut Vec<String>,
    ) -> Result<ScheduledConditioning> {
        let plan = prompting::plan(prompt, options, &self.clip_tokenizer, warnings)?;
        // Each encoder is read once for all the texts (with --low-memory, from its files).
        let (clip, t5) = (self.clip_model()?, self.t5_model()?);
        let mut dropped = false;
        let mut parts = Vec::new();
        for part in &plan.parts {
            let mut conds = Vec::new();
            for (text, chunks) in part.texts.iter().zip(&part.chunks) {
                let (t5_text, weighted) = markup_free(text, options.syntax);
                dropped |= weighted;
                let first = chunks.chunks.first().unwrap_or(&plan.empty);
                conds.push(Conditioning {
                    context: self.t5_context(&t5, &t5_text, warnings)?,
                    pooled: Some(self.clip_pooled(&clip, first)?),
                    added: None,
                });
            }
            parts.push(ScheduledPart {
                weight: part.weight,
                schedule: part.schedule.clone(),
                conds,
            });
        }
        if dropped {
            warnings.push(
                "FLUX does not weight prompts: T5 takes the text without its emphasis weights, \
                 and CLIP's pooled output is unweighted (as in Forge and ComfyUI)"
                    .to_string(),
            );
        }
        let scheduled = ScheduledConditioning {
            parts,
            empty: None,
            embeddings: Vec::new(),
        };
        Ok(prompting::finish(scheduled, &plan, None))
    }
}

/// `text` without the emphasis markup of `syntax` (A1111's brackets, weights, `BREAK` as a space;
/// ComfyUI's parentheses and weights), and whether a weight other than 1 was dropped.
fn markup_free(text: &str, syntax: PromptSyntax) -> (String, bool) {
    let segments = match syntax {
        PromptSyntax::Plain => return (text.to_string(), false),
        PromptSyntax::A1111 => parse_prompt_attention(text),
        PromptSyntax::Comfy => comfy_token_weights(text),
    };
    let weighted = segments
        .iter()
        .any(|(_, w)| *w != 1.0 && *w != BREAK_WEIGHT);
    // `BREAK` (its surrounding spaces already taken by the parser) keeps the words apart.
    let text = segments
        .into_iter()
        .map(|(text, w)| if w == BREAK_WEIGHT { " ".into() } else { text })
        .collect::<Vec<_>>()
        .join("");
    (text, weighted)
}

impl Networks for FluxNetworks {
    /// FluxPipeline's `encode_prompt`: T5's states over `max_sequence_length` tokens (a longer
    /// prompt is cut with a warning) as the context, CLIP-L's pooled output (77 tokens) as
    /// `pooled`. CLIP skip does not apply (the pooled output uses every layer). In the a1111
    /// and comfy syntaxes the prompt is planned as on SD (prompt editing, alternation, `AND`,
    /// textual inversion in CLIP): each distinct text's pooled output comes from its first
    /// CLIP chunk (unweighted, as A1111/Forge's `zs[0].pooled` and ComfyUI's `first_pooled`, so
    /// CLIP weights change nothing) and T5 takes the text with its markup removed; when a
    /// weight other than 1 is dropped, a warning says so.
    fn encode(
        &self,
        prompt: &str,
        options: &EncodeOptions,
        warnings: &mut Vec<String>,
    ) -> Result<ScheduledConditioning> {
        if options.syntax == PromptSyntax::Plain {
            return Ok(ScheduledConditioning::fixed(
                self.encode_text(prompt, warnings)?,
            ));
        }
        self.encode_markup(prompt, options, warnings)
    }

    fn predict(
        &self,
        latents: &Tensor,
        timestep: f64,
        cond: &Conditioning,
        guidance: f64,
    ) -> Result<Tensor> {
        let (b, _, h, w) = latents.dims4()?;
        let pooled = cond.pooled.as_ref().ok_or_else(|| {
            Error::invalid(
                "conditioning",
                "without a pooled embedding",
                "FLUX needs CLIP's pooled output; encode the prompt with the FLUX networks",
            )
        })?;
        let img = flux::pack_latents(&latents.to_dtype(self.dtype)?)?;
        let img_ids = flux::image_ids(h / 2, w / 2, &self.device)?;
        let txt_ids = flux::text_ids(cond.context.dim(1)?, &self.device)?;
        // FluxPipeline passes the f32 timestep divided by 1000.
        let sigma = Tensor::full(timestep as f32 / 1000.0, b, &self.device)?;
        let guidance = self
            .transformer
            .config
            .guidance_embeds
            .then(|| Tensor::full(guidance as f32, b, &self.device))
            .transpose()?;
        let out = self.transformer.get()?.forward(
            &img,
            &img_ids,
            &cond.context,
            &txt_ids,
            &sigma,
            guidance.as_ref(),
            pooled,
        )?;
        Ok(flux::unpack_latents(&out, h, w)?.to_dtype(DType::F32)?)
    }

    fn in_channels(&self) -> usize {
        self.transformer.config.in_channels / 4
    }

    fn text_layers(&self) -> usize {
        self.clip_config.num_hidden_layers
    }

    fn sample_size(&self) -> Option<usize> {
        None
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
        if let Some((vb, file)) = rebuilt(TRANSFORMER) {
            let config = &self.transformer.config;
            let quantized = weights
                .get(TRANSFORMER)
                .and_then(|base| denoiser::job_quantized(base, patches.get(TRANSFORMER)));
            let transformer = build_transformer(vb, config, quantized.as_ref());
            let transformer = Arc::new(in_file(file, transformer)?);
            out.transformer = Transformer::built(config.clone(), transformer);
        }
        if let Some((vb, file)) = rebuilt(TEXT_ENCODER) {
            let clip = in_file(file, ClipTextModel::new(vb, &self.clip_config))?;
            out.clip = Clip::Loaded(Arc::new(clip));
        }
        Ok(Arc::new(out))
    }

    /// kohya/ComfyUI LoRAs name the original (BFL) modules: `lora_unet_double_blocks_0_img_attn_qkv`
    /// changes rows of three diffusers weights (q, k, v), `final_layer.adaLN_modulation.1`
    /// the swapped halves of `norm_out.linear`.
    fn lora_aliases(&self) -> Vec<LoraAlias> {
        let mut by_bfl: Vec<(String, Vec<FusedTarget>)> = Vec::new();
        for (name, source) in bfl::tensor_map(&self.transformer.config) {
            let Some(module) = source.name.strip_suffix(".weight") else {
                continue;
            };
            let part = match source.part {
                bfl::Part::Whole => FusedPart::Whole,
                bfl::Part::Rows { start, len } => FusedPart::Rows { start, len },
                bfl::Part::SwappedHalves => FusedPart::SwappedHalves,
            };
            let target = FusedTarget {
                component: TRANSFORMER.to_string(),
                key: name,
                part,
            };
            match by_bfl.iter_mut().find(|(m, _)| m == module) {
                Some((_, targets)) => targets.push(target),
                None => by_bfl.push((module.to_string(), vec![target])),
            }
        }
        by_bfl
            .into_iter()
            .flat_map(|(module, targets)| {
                [
                    format!("lora_unet_{}", module.replace('.', "_")),
                    format!("diffusion_model.{module}"),
                    module,
                ]
                .map(|name| LoraAlias {
                    module: name,
                    targets: targets.clone(),
                })
            })
            .collect()
    }
}
