//! A denoiser's weights from a file other than its diffusers folder's own: a BFL/ComfyUI
//! single-file FLUX transformer (safetensors) or a GGUF file (ComfyUI-GGUF /
//! stable-diffusion.cpp naming, or `beeswax quantize`'s), read as the diffusers-named tensors
//! the model code loads. GGUF tensors are dequantized once, here, to the compute dtype.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{ComponentWeights, LoadOptions, LoraNames, ModelSource, QuantizedLayers, Role};
use crate::checkpoint::keymap::ldm_to_unet;
use crate::gguf::{Architecture, GgufWeights, Slice};
use crate::models::flux::{bfl, FluxConfig};
use crate::models::unet::UNetConfig;
use crate::weights::{
    gemm_layout, KeyMap, SafetensorsFile, TensorOp, TensorRef, WeightSource, WeightsError,
};
use crate::{Error, Result};

/// A denoiser's tensors, named as the diffusers model loads them, and the file they came from.
#[derive(Debug)]
pub struct Denoiser {
    /// The file (for messages and LoRA reports).
    pub file: PathBuf,
    /// The dense tensors by diffusers name (without the linear weights `quantized` serves).
    pub tensors: HashMap<String, Tensor>,
    /// A GGUF file's quantized linear weights, served in diffusers names.
    pub quantized: Option<GgufWeights>,
    /// The weights `quantized` multiplies quantized, by diffusers name (for LoRAs).
    pub layers: Option<QuantizedLayers>,
}

impl Denoiser {
    /// The denoiser's LoRA-able weights as component `name`.
    pub fn component(&self, name: &str, role: Role, lora: LoraNames) -> ComponentWeights {
        ComponentWeights {
            quantized: self.layers.clone(),
            ..ComponentWeights::new(name, role, self.file.clone(), self.tensors.clone(), lora)
        }
    }
}

/// The quantized weights a job's denoiser multiplies: `base`'s, except the layers `patched`
/// replaces (LoRA-merged, dense). `None` for a dense denoiser.
pub fn job_quantized(
    base: &ComponentWeights,
    patched: Option<&HashMap<String, Tensor>>,
) -> Option<GgufWeights> {
    let layers = base.quantized.as_ref()?;
    let dense = patched
        .into_iter()
        .flat_map(|p| p.keys())
        .filter(|k| layers.names.contains(*k))
        .cloned();
    Some(layers.weights.clone().with_dense(dense))
}

/// The UNet weights of a SD/SDXL family (component `component`, an `xl` UNet for SDXL):
/// from the GGUF file `options.denoiser` when given, else from `source`.
pub fn unet_weights(
    source: &ModelSource,
    component: &str,
    config: &UNetConfig,
    xl: bool,
    options: &LoadOptions,
) -> Result<Denoiser> {
    let (dtype, device) = (options.dtype, &options.device);
    match &options.denoiser {
        Some(path) if is_gguf(path) => unet(path, config, xl, dtype, device),
        Some(path) => Err(Error::invalid(
            "denoiser file",
            path.display().to_string(),
            "a UNet's weights come from a GGUF file (.gguf) or from the model itself; pass a \
             single-file checkpoint as --model FILE instead",
        )),
        None => {
            let (file, weights) = source.weights(component, "diffusion_pytorch_model")?;
            Ok(Denoiser {
                file,
                tensors: weights
                    .with_weights_dtype(options.weights_dtype)
                    .read_all(dtype, device)?,
                quantized: None,
                layers: None,
            })
        }
    }
}

/// The GGUF architectures a UNet family of architecture `architecture` reads: ComfyUI-GGUF
/// writes `sd1` for SD 1.x and 2.x UNets alike, `sdxl` for SDXL's.
pub fn unet_architectures(xl: bool) -> &'static [Architecture] {
    if xl {
        &[Architecture::Sdxl]
    } else {
        &[Architecture::Sd1]
    }
}

/// A UNet of `config` from the GGUF file `path` (an `xl` UNet for SDXL families): tensor names
/// in the original (LDM) layout as ComfyUI-GGUF and stable-diffusion.cpp write them (with or
/// without `model.diffusion_model.`, other components' tensors ignored) or in diffusers'.
/// Linear weights stored in a quantized type are served quantized; every other tensor is
/// dequantized once to `dtype`.
pub fn unet(
    path: &Path,
    config: &UNetConfig,
    xl: bool,
    dtype: DType,
    device: &Device,
) -> Result<Denoiser> {
    let gguf = GgufWeights::open(path, unet_architectures(xl))?;
    let plan = config.plan().map_err(|message| Error::Config {
        path: path.to_path_buf(),
        message,
    })?;
    let layers = plan.layers.first().copied().unwrap_or(0);
    let names: Vec<String> = gguf.names().into_iter().map(str::to_string).collect();
    let ldm = names.iter().any(|n| n == "input_blocks.0.0.weight");
    // diffusers name -> name in the file (without the prefix).
    let map: HashMap<String, String> = names
        .iter()
        .filter_map(|n| {
            let diffusers = if ldm {
                ldm_to_unet(n, layers)?
            } else {
                n.clone()
            };
            Some((diffusers, n.clone()))
        })
        .collect();
    if !map.contains_key("conv_in.weight") {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: "holds no UNet: neither `input_blocks.0.0.weight` (original layout, \
                      optionally under `model.diffusion_model.`) nor `conv_in.weight` \
                      (diffusers) is in the file"
                .into(),
        });
    }
    let map = Arc::new(map);
    let lookup = map.clone();
    let gguf = gguf.with_rename(move |name| {
        lookup
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    });
    // Only the UNet's linear layers multiply quantized: a 1x1 convolution (SD 1.x's
    // proj_in/proj_out) is always read dense, whatever its stored type.
    let linear: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|n| is_unet_linear(n, config.use_linear_projection))
        .collect();
    let mut tensors = HashMap::new();
    for name in map.keys() {
        if linear.contains(&name.as_str()) && gguf.multiplies_quantized(name) {
            continue;
        }
        let tensor = gguf.dequantize(name, dtype, device)?;
        let tensor = gemm_layout(name, tensor).map_err(|e| WeightsError::Tensor {
            path: path.to_path_buf(),
            tensor: gguf.file_name(name),
            message: e.to_string(),
        })?;
        tensors.insert(name.clone(), tensor);
    }
    let layers = QuantizedLayers::new(gguf.clone(), linear, dtype, device);
    Ok(Denoiser {
        file: path.to_path_buf(),
        tensors,
        quantized: Some(gguf),
        layers: Some(layers),
    })
}

/// Whether the UNet weight `name` (diffusers) belongs to a linear layer (built by
/// [`crate::models::linear::Linear`]): attention, feed-forward, time and added embeddings,
/// resnet time projections, and the transformers' projections when they are linear.
fn is_unet_linear(name: &str, linear_projection: bool) -> bool {
    let Some(module) = name.strip_suffix(".weight") else {
        return false;
    };
    let last = module.rsplit('.').next().unwrap_or(module);
    let attention = [
        ".to_q",
        ".to_k",
        ".to_v",
        ".to_out.0",
        ".ff.net.0.proj",
        ".ff.net.2",
    ];
    attention.iter().any(|a| module.ends_with(a))
        || matches!(last, "time_emb_proj" | "linear_1" | "linear_2")
        || (linear_projection && matches!(last, "proj_in" | "proj_out"))
}

/// Whether `path` names a GGUF file (by extension).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The FLUX transformer of `config` from `path`: a GGUF file (which must hold a FLUX model),
/// or a safetensors file in the BFL layout (optionally under ComfyUI's
/// `model.diffusion_model.`) or in diffusers' names.
pub fn flux(path: &Path, config: &FluxConfig, dtype: DType, device: &Device) -> Result<Denoiser> {
    let (mut quantized, mut layers) = (None, None);
    let tensors = if is_gguf(path) {
        let gguf = flux_gguf(path, config)?;
        let tensors = flux_from_gguf(&gguf, config, dtype, device)?;
        let names: Vec<String> = bfl::tensor_map(config)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        layers = Some(QuantizedLayers::new(
            gguf.clone(),
            names.iter().map(String::as_str),
            dtype,
            device,
        ));
        quantized = Some(gguf);
        tensors
    } else {
        let file = Arc::new(SafetensorsFile::open(path)?);
        let prefix = [bfl::COMFY_PREFIX, ""]
            .into_iter()
            .find(|p| file.info(&format!("{p}img_in.weight")).is_some());
        match prefix {
            Some(prefix) => {
                let map: KeyMap = bfl::tensor_map(config)
                    .into_iter()
                    .map(|(name, source)| {
                        let op = match source.part {
                            bfl::Part::Whole => TensorOp::Whole,
                            bfl::Part::Rows { start, len } => TensorOp::Rows { start, len },
                            bfl::Part::SwappedHalves => TensorOp::SwappedHalves,
                        };
                        let key = format!("{prefix}{}", source.name);
                        (name, TensorRef { key, op })
                    })
                    .collect();
                WeightSource::mapped(file, map).read_all(dtype, device)?
            }
            None if file.info("x_embedder.weight").is_some() => {
                WeightSource::new(file, "").read_all(dtype, device)?
            }
            None => {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    message: "not a FLUX transformer: neither `img_in.weight` (BFL layout, \
                              optionally under `model.diffusion_model.`) nor \
                              `x_embedder.weight` (diffusers) is in the file"
                        .into(),
                })
            }
        }
    };
    Ok(Denoiser {
        file: path.to_path_buf(),
        tensors,
        quantized,
        layers,
    })
}

/// A FLUX GGUF file served in diffusers names: each weight renamed to its BFL tensor, fused
/// `qkv`/`linear1` parts as row slices, the swapped final modulation dense.
fn flux_gguf(path: &Path, config: &FluxConfig) -> Result<GgufWeights> {
    let map: HashMap<String, bfl::BflTensor> = bfl::tensor_map(config).into_iter().collect();
    let map = Arc::new(map);
    let names = map.clone();
    Ok(GgufWeights::open(path, &[Architecture::Flux])?
        .with_rename(move |name| names.get(name).map_or(name.to_string(), |b| b.name.clone()))
        .with_slices(move |name| match map.get(name).map(|b| b.part) {
            None | Some(bfl::Part::Whole) => Slice::Whole,
            Some(bfl::Part::Rows { start, len }) => Slice::Rows { start, len },
            Some(bfl::Part::SwappedHalves) => Slice::Dense,
        }))
}

/// Every diffusers tensor of the transformer that is not multiplied quantized, dequantized from
/// the BFL-named GGUF tensors (each fused tensor read once and split).
fn flux_from_gguf(
    gguf: &GgufWeights,
    config: &FluxConfig,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut read: HashMap<String, Tensor> = HashMap::new();
    let mut out = HashMap::new();
    for (name, source) in bfl::tensor_map(config) {
        if gguf.multiplies_quantized(&name) {
            continue;
        }
        let whole = match read.get(&source.name) {
            Some(t) => t.clone(),
            None => {
                // The BFL name as stored (the rename maps diffusers names only).
                let stored = format!("{}{}", gguf.prefix().unwrap_or(""), source.name);
                let t = gguf.file().dequantize_as(&stored, dtype, device)?;
                read.insert(source.name.clone(), t.clone());
                t
            }
        };
        let tensor = match source.part {
            bfl::Part::Whole => whole,
            bfl::Part::Rows { start, len } => whole.narrow(0, start, len)?,
            bfl::Part::SwappedHalves => crate::weights::swap_halves(&whole)?,
        };
        let tensor = gemm_layout(&name, tensor).map_err(|e| WeightsError::Tensor {
            path: gguf.file().path().to_path_buf(),
            tensor: source.name.clone(),
            message: e.to_string(),
        })?;
        out.insert(name, tensor);
    }
    Ok(out)
}
