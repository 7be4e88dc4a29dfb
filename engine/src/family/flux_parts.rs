//! The FLUX components and how they load: CLIP-L and T5 (loaded, or read for each encoding
//! with `--low-memory`), the transformer (built, or built at its first use), the VAE, and the
//! LoRA-able weights of each.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::denoiser::{self, Denoiser};
use super::model::{ComponentWeights, LoraNames, Role};
use super::{Family, LoadOptions, ModelSource, Vae};
use crate::gguf::GgufWeights;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::config_file::read_json;
use crate::models::flux::{FluxConfig, FluxTransformer2DModel};
use crate::models::t5::{T5Config, T5EncoderModel};
use crate::weights::{in_file, WeightSource};
use crate::{model_files, Error, Result};

use super::flux::{TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER};

/// The weights of `component`: the single file's when it holds them (an all-in-one ComfyUI
/// checkpoint), else the file in the config folder.
pub(super) fn component_weights(
    source: &ModelSource,
    component: &str,
    stem: &str,
) -> Result<(PathBuf, WeightSource)> {
    match &source.components {
        Some(map) if map.contains_key(component) => source.weights(component, stem),
        _ => {
            let file = model_files::weights(&source.config_dir, component, stem)?;
            let weights = WeightSource::open(&file)?;
            Ok((file, weights))
        }
    }
}

/// CLIP-L of `source` with its config, and its LoRA-able weights. With low memory, CLIP is
/// checked once here and read for each encoding; its weights are not kept, so text-encoder
/// LoRA modules go unmatched.
pub(super) fn load_clip(
    source: &ModelSource,
    options: &LoadOptions,
) -> Result<(Clip, ClipTextConfig, Option<ComponentWeights>)> {
    let (device, dtype) = (&options.device, options.dtype);
    let config: ClipTextConfig = read_json(&model_files::config(
        &source.config_dir,
        TEXT_ENCODER,
        "config.json",
    )?)?;
    let (file, weights) = component_weights(source, TEXT_ENCODER, "model")?;
    if options.low_memory {
        let vb = weights.var_builder(dtype, device);
        in_file(&file, ClipTextModel::new(vb, &config))?;
        let clip = Clip::OnDemand {
            file,
            source: weights,
        };
        return Ok((clip, config, None));
    }
    let tensors = weights.read_all(dtype, device)?;
    let vb = VarBuilder::from_tensors(tensors.clone(), dtype, device);
    let clip = in_file(&file, ClipTextModel::new(vb, &config))?;
    let lora = ComponentWeights::new(
        TEXT_ENCODER,
        Role::TextEncoder,
        file,
        tensors,
        LoraNames::new("lora_te1", TEXT_ENCODER, false),
    );
    Ok((Clip::Loaded(Arc::new(clip)), config, Some(lora)))
}

/// T5 of `source`: loaded, or (low memory: the largest network) read for each encoding.
pub(super) fn load_t5(source: &ModelSource, options: &LoadOptions) -> Result<T5> {
    let config = T5Config::from_file(&model_files::config(
        &source.config_dir,
        TEXT_ENCODER_2,
        "config.json",
    )?)?;
    let (file, weights) = component_weights(source, TEXT_ENCODER_2, "model")?;
    let t5 = T5::Files {
        file,
        source: weights,
        config,
    };
    if options.low_memory {
        Ok(t5)
    } else {
        Ok(T5::Loaded(t5.load(options.dtype, &options.device)?))
    }
}

/// The transformer of `source` (or of `options.denoiser`) and its LoRA-able weights. It is
/// built (which checks every tensor) either way; with low memory it is dropped again and
/// rebuilt at its first use, after the prompts are encoded and their encoders freed.
pub(super) fn load_transformer(
    family: &Family,
    source: &ModelSource,
    options: &LoadOptions,
) -> Result<(Transformer, ComponentWeights)> {
    let (device, dtype) = (&options.device, options.dtype);
    let config_path = model_files::config(&source.config_dir, TRANSFORMER, "config.json")?;
    let config = FluxConfig::from_file(&config_path)?;
    check_family(family, &config, &config_path)?;
    let Denoiser {
        file,
        tensors,
        quantized,
        layers,
    } = match &options.denoiser {
        Some(path) => denoiser::flux(path, &config, dtype, device)?,
        None => {
            let file =
                model_files::weights(&source.config_dir, TRANSFORMER, "diffusion_pytorch_model")?;
            let tensors = WeightSource::open(&file)?.read_all(dtype, device)?;
            Denoiser {
                file,
                tensors,
                quantized: None,
                layers: None,
            }
        }
    };
    let recipe = Recipe {
        tensors: tensors.clone(),
        quantized,
        file: file.clone(),
        dtype,
        device: device.clone(),
    };
    let built = Arc::new(recipe.build(&config)?);
    let transformer = if options.low_memory {
        drop(built);
        Transformer::deferred(config, recipe)
    } else {
        Transformer::built(config, built)
    };
    let lora = LoraNames::new("lora_transformer", TRANSFORMER, true);
    let weights = ComponentWeights {
        quantized: layers,
        ..ComponentWeights::new(TRANSFORMER, Role::Denoiser, file, tensors, lora)
    };
    Ok((transformer, weights))
}

/// The VAE of `source`: loaded, or (low memory) read for each decoding or encoding.
pub(super) fn load_vae(source: &ModelSource, options: &LoadOptions) -> Result<Vae> {
    let (device, dtype) = (&options.device, options.dtype);
    let (_, weights) = component_weights(source, "vae", "diffusion_pytorch_model")?;
    let config = model_files::config(&source.config_dir, "vae", "config.json")?;
    if options.low_memory {
        Vae::on_demand(&config, &weights, dtype, device)
    } else {
        Vae::load(&config, &weights, dtype, device)
    }
}

/// CLIP-L, loaded, or its weights (`--low-memory`: read for each encoding).
#[derive(Debug, Clone)]
pub(super) enum Clip {
    Loaded(Arc<ClipTextModel>),
    OnDemand { file: PathBuf, source: WeightSource },
}

/// The T5 encoder, loaded, or its files (`--low-memory`: loaded for each encoding).
#[derive(Debug, Clone)]
pub(super) enum T5 {
    Loaded(Arc<T5EncoderModel>),
    Files {
        file: PathBuf,
        source: WeightSource,
        config: T5Config,
    },
}

impl T5 {
    /// The encoder (read from its file unless loaded).
    pub(super) fn load(&self, dtype: DType, device: &Device) -> Result<Arc<T5EncoderModel>> {
        match self {
            T5::Loaded(t5) => Ok(t5.clone()),
            T5::Files {
                file,
                source,
                config,
            } => {
                let vb = source.var_builder(dtype, device);
                Ok(Arc::new(in_file(file, T5EncoderModel::new(vb, config))?))
            }
        }
    }
}

/// The transformer, built, or built at its first use (`--low-memory`).
#[derive(Debug, Clone)]
pub(super) struct Transformer {
    pub(super) config: FluxConfig,
    built: Arc<std::sync::OnceLock<Arc<FluxTransformer2DModel>>>,
    recipe: Option<Arc<Recipe>>,
}

/// What a transformer is built from.
#[derive(Debug)]
pub(super) struct Recipe {
    tensors: HashMap<String, Tensor>,
    quantized: Option<GgufWeights>,
    file: PathBuf,
    dtype: DType,
    device: Device,
}

impl Recipe {
    fn build(&self, config: &FluxConfig) -> Result<FluxTransformer2DModel> {
        let vb = VarBuilder::from_tensors(self.tensors.clone(), self.dtype, &self.device);
        in_file(
            &self.file,
            build_transformer(vb, config, self.quantized.as_ref()),
        )
    }
}

impl Transformer {
    pub(super) fn built(config: FluxConfig, model: Arc<FluxTransformer2DModel>) -> Self {
        let built = std::sync::OnceLock::new();
        let _ = built.set(model);
        Self {
            config,
            built: Arc::new(built),
            recipe: None,
        }
    }

    pub(super) fn deferred(config: FluxConfig, recipe: Recipe) -> Self {
        Self {
            config,
            built: Arc::default(),
            recipe: Some(Arc::new(recipe)),
        }
    }

    /// The model, built now if it was deferred.
    pub(super) fn get(&self) -> Result<Arc<FluxTransformer2DModel>> {
        if let Some(model) = self.built.get() {
            return Ok(model.clone());
        }
        let recipe = self.recipe.as_ref().ok_or_else(|| {
            Error::invalid(
                "transformer",
                "neither built nor deferred",
                "load the model again",
            )
        })?;
        let model = Arc::new(recipe.build(&self.config)?);
        Ok(self.built.get_or_init(|| model).clone())
    }
}

/// The transformer from `vb`, its linear layers from `quantized` where that holds them.
pub(super) fn build_transformer(
    vb: VarBuilder<'static>,
    config: &FluxConfig,
    quantized: Option<&GgufWeights>,
) -> candle_core::Result<FluxTransformer2DModel> {
    match quantized {
        Some(q) => FluxTransformer2DModel::new_quantized(vb, config, q),
        None => FluxTransformer2DModel::new(vb, config),
    }
}

/// A dev transformer (guidance embedding) declared as schnell, or the reverse, is an error.
pub(super) fn check_family(family: &Family, config: &FluxConfig, path: &Path) -> Result<()> {
    let embeds = family.guidance == super::GuidanceMode::Distilled;
    if config.guidance_embeds == embeds {
        return Ok(());
    }
    Err(Error::Config {
        path: path.to_path_buf(),
        message: format!(
            "`guidance_embeds` is {}, but family `{}` {} a guidance embedding; declare {}",
            config.guidance_embeds,
            family.name,
            if embeds { "has" } else { "has no" },
            if config.guidance_embeds {
                "flux-dev"
            } else {
                "flux-schnell"
            }
        ),
    })
}
