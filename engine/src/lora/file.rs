//! Reading a LoRA file: every tensor key split into a module name and a parameter, in the
//! layouts found in the wild.
//!
//! | layout | keys |
//! |---|---|
//! | kohya/sd-scripts, LyCORIS LoCon | `lora_unet_<path>.lora_down.weight`, `.lora_up.weight`, `.lora_mid.weight`, `.alpha` |
//! | LyCORIS LoHa | `.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b`, `.hada_t1`, `.hada_t2`, `.alpha` |
//! | LyCORIS LoKr | `.lokr_w1` or `.lokr_w1_a`/`_b`, `.lokr_w2` or `.lokr_w2_a`/`_b`, `.lokr_t2`, `.alpha` |
//! | LyCORIS full | `.diff` |
//! | diffusers/PEFT | `unet.<path>.lora_A.weight`, `.lora_B.weight`, `text_encoder.<path>...`; alphas in the `lora_adapter_metadata` JSON |
//! | PEFT `save_pretrained` | `base_model.model.<path>.lora_A.weight` |
//! | older diffusers | `<path>.lora.down.weight`, `<path>.lora_linear_layer.down.weight`, `<attn>.processor.to_q_lora.down.weight` |
//!
//! Keys with any other parameter (bias changes `diff_b`, norms, IA3, ...) are kept as
//! `ignored_keys` and reported; DoRA magnitude vectors are refused when the module is applied.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::LoraError;
use crate::weights::SafetensorsFile;

/// A parameter of one LoRA module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Param {
    /// Low-rank down projection (kohya `lora_down`, PEFT `lora_A`): [r, in, (k, k)].
    Down,
    /// Low-rank up projection (kohya `lora_up`, PEFT `lora_B`): [out, r, (1, 1)].
    Up,
    /// Tucker core of a LoCon convolution: [r, r, k, k].
    Mid,
    /// The module's alpha (scale = alpha / rank).
    Alpha,
    /// LoHa `hada_w1_a`.
    HadaW1A,
    /// LoHa `hada_w1_b`.
    HadaW1B,
    /// LoHa `hada_w2_a`.
    HadaW2A,
    /// LoHa `hada_w2_b`.
    HadaW2B,
    /// LoHa Tucker core `hada_t1`.
    HadaT1,
    /// LoHa Tucker core `hada_t2`.
    HadaT2,
    /// LoKr full first factor `lokr_w1`.
    LokrW1,
    /// LoKr `lokr_w1_a`.
    LokrW1A,
    /// LoKr `lokr_w1_b`.
    LokrW1B,
    /// LoKr full second factor `lokr_w2`.
    LokrW2,
    /// LoKr `lokr_w2_a`.
    LokrW2A,
    /// LoKr `lokr_w2_b`.
    LokrW2B,
    /// LoKr Tucker core `lokr_t2`.
    LokrT2,
    /// A full weight difference (LyCORIS `full`).
    Diff,
    /// DoRA magnitude (`dora_scale`, PEFT `lora_magnitude_vector`): not supported.
    DoraScale,
}

/// Key endings and the parameter they hold; the longest match wins.
const SUFFIXES: &[(&str, Param)] = &[
    (".lora_down.weight", Param::Down),
    (".lora_up.weight", Param::Up),
    (".lora_mid.weight", Param::Mid),
    (".lora_A.weight", Param::Down),
    (".lora_B.weight", Param::Up),
    (".lora.down.weight", Param::Down),
    (".lora.up.weight", Param::Up),
    (".lora_linear_layer.down.weight", Param::Down),
    (".lora_linear_layer.up.weight", Param::Up),
    ("_lora.down.weight", Param::Down),
    ("_lora.up.weight", Param::Up),
    (".alpha", Param::Alpha),
    (".hada_w1_a", Param::HadaW1A),
    (".hada_w1_b", Param::HadaW1B),
    (".hada_w2_a", Param::HadaW2A),
    (".hada_w2_b", Param::HadaW2B),
    (".hada_t1", Param::HadaT1),
    (".hada_t2", Param::HadaT2),
    (".lokr_w1", Param::LokrW1),
    (".lokr_w1_a", Param::LokrW1A),
    (".lokr_w1_b", Param::LokrW1B),
    (".lokr_w2", Param::LokrW2),
    (".lokr_w2_a", Param::LokrW2A),
    (".lokr_w2_b", Param::LokrW2B),
    (".lokr_t2", Param::LokrT2),
    (".diff", Param::Diff),
    (".dora_scale", Param::DoraScale),
    (".lora_magnitude_vector", Param::DoraScale),
    (".lora_magnitude_vector.weight", Param::DoraScale),
];

/// The tensors of one module (one model layer) of a LoRA file.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// The module name, normalised (see [`split_key`]).
    pub name: String,
    /// Its tensors (f32, CPU) with the keys they were read from.
    pub tensors: BTreeMap<Param, (String, Tensor)>,
}

impl LoraModule {
    /// The tensor for `param`, if the file has it.
    pub fn get(&self, param: Param) -> Option<&Tensor> {
        self.tensors.get(&param).map(|(_, t)| t)
    }

    /// A copy with every tensor on `device` (deltas are computed where the model lives).
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        let tensors = self
            .tensors
            .iter()
            .map(|(p, (k, t))| Ok((*p, (k.clone(), t.to_device(device)?))))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            name: self.name.clone(),
            tensors,
        })
    }

    /// The file keys of this module.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.values().map(|(k, _)| k.as_str())
    }
}

/// PEFT scaling settings of one component, from `lora_adapter_metadata`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeftScaling {
    /// `lora_alpha`.
    pub lora_alpha: Option<f64>,
    /// `alpha_pattern`: module-name suffixes with their own alpha (matched literally).
    pub alpha_pattern: Vec<(String, f64)>,
    /// `use_rslora`: scale alpha / sqrt(rank).
    pub use_rslora: bool,
}

/// A parsed LoRA file.
#[derive(Debug, Clone)]
pub struct LoraFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its modules, sorted by name.
    pub modules: Vec<LoraModule>,
    /// Keys whose parameter beeswax does not apply (reported as unmatched).
    pub ignored_keys: Vec<String>,
    /// PEFT settings per component prefix (`unet`, `text_encoder`).
    pub peft: HashMap<String, PeftScaling>,
    /// Number of tensors in the file.
    pub key_count: usize,
}

/// Splits a key into its normalised module name and parameter, or `None` if the ending is not
/// a LoRA parameter. Normalising strips PEFT's `base_model.model.` and maps the older diffusers
/// attention-processor names (`attn1.processor.to_out_lora`) to module paths (`attn1.to_out.0`).
pub fn split_key(key: &str) -> Option<(String, Param)> {
    let (suffix, param) = SUFFIXES
        .iter()
        .filter(|(s, _)| key.ends_with(s))
        .max_by_key(|(s, _)| s.len())?;
    let mut module = key[..key.len() - suffix.len()].to_string();
    if suffix.starts_with('_') {
        // `...processor.to_q_lora.down.weight`: the module is `...to_q`.
        module = processor_module(&module)?;
    }
    if let Some(rest) = module.strip_prefix("base_model.model.") {
        module = rest.to_string();
    }
    Some((module, *param))
}

/// `down_blocks.0...attn1.processor.to_out` -> `down_blocks.0...attn1.to_out.0`; text encoder
/// `self_attn.to_q` -> `self_attn.q_proj` (diffusers' first LoRA format).
fn processor_module(module: &str) -> Option<String> {
    let (parent, last) = module.rsplit_once('.')?;
    let parent = parent.strip_suffix(".processor").unwrap_or(parent);
    let name = if parent.ends_with("self_attn") {
        match last {
            "to_q" => "q_proj",
            "to_k" => "k_proj",
            "to_v" => "v_proj",
            "to_out" => "out_proj",
            other => other,
        }
    } else if last == "to_out" {
        "to_out.0"
    } else {
        last
    };
    Some(format!("{parent}.{name}"))
}

fn unreadable(path: &Path, message: impl ToString) -> LoraError {
    LoraError::Unreadable {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl LoraFile {
    /// Reads and parses `path` (tensors as f32 on the CPU; LoRA files are small), through the
    /// one safetensors reader ([`crate::weights::SafetensorsFile`]).
    pub fn read(path: &Path) -> Result<Self, LoraError> {
        let file = SafetensorsFile::open(path).map_err(|e| unreadable(path, e))?;
        let peft = match file.metadata().get("lora_adapter_metadata") {
            Some(json) => peft_scaling(path, json)?,
            None => HashMap::new(),
        };
        let mut modules: BTreeMap<String, LoraModule> = BTreeMap::new();
        let mut ignored_keys = Vec::new();
        let key_count = file.len();
        for key in file.names() {
            let Some((module, param)) = split_key(key) else {
                ignored_keys.push(key.to_string());
                continue;
            };
            let tensor = file
                .read(key, DType::F32, &Device::Cpu)
                .map_err(|e| unreadable(path, e))?;
            modules
                .entry(module.clone())
                .or_insert_with(|| LoraModule {
                    name: module,
                    tensors: BTreeMap::new(),
                })
                .tensors
                .insert(param, (key.to_string(), tensor));
        }
        if key_count == 0 {
            return Err(unreadable(path, "it holds no tensors"));
        }
        ignored_keys.sort();
        Ok(Self {
            path: path.to_path_buf(),
            modules: modules.into_values().collect(),
            ignored_keys,
            peft,
            key_count,
        })
    }

    /// The alpha PEFT metadata gives module `name` (e.g. `unet.down_blocks.0...to_k`), and
    /// whether it uses rsLoRA scaling.
    pub fn peft_alpha(&self, name: &str) -> Option<(f64, bool)> {
        let (component, rest) = name.split_once('.')?;
        let scaling = self.peft.get(component)?;
        let pattern = scaling
            .alpha_pattern
            .iter()
            .filter(|(p, _)| rest == p || rest.ends_with(&format!(".{p}")))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| *a);
        Some((pattern.or(scaling.lora_alpha)?, scaling.use_rslora))
    }
}

/// Reads `{component}.lora_alpha`, `.alpha_pattern` and `.use_rslora` from diffusers'
/// `lora_adapter_metadata` JSON.
fn peft_scaling(path: &Path, json: &str) -> Result<HashMap<String, PeftScaling>, LoraError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| unreadable(path, format!("`lora_adapter_metadata` is not JSON: {e}")))?;
    let mut out: HashMap<String, PeftScaling> = HashMap::new();
    let Some(map) = value.as_object() else {
        return Ok(out);
    };
    for (key, v) in map {
        let Some((component, field)) = key.rsplit_once('.') else {
            continue;
        };
        let entry = out.entry(component.to_string()).or_default();
        match field {
            "lora_alpha" => entry.lora_alpha = v.as_f64(),
            "use_rslora" => entry.use_rslora = v.as_bool().unwrap_or(false),
            "alpha_pattern" => {
                if let Some(patterns) = v.as_object() {
                    entry.alpha_pattern = patterns
                        .iter()
                        .filter_map(|(p, a)| Some((p.clone(), a.as_f64()?)))
                        .collect();
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_every_layout() {
        let cases = [
            (
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                "lora_unet_down_blocks_0_attentions_0_proj_in",
                Param::Down,
            ),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", "lora_te_text_model_encoder_layers_0_mlp_fc1", Param::Alpha),
            ("unet.mid_block.attentions.0.proj_out.lora_B.weight", "unet.mid_block.attentions.0.proj_out", Param::Up),
            (
                "base_model.model.down_blocks.0.resnets.0.conv1.lora_A.weight",
                "down_blocks.0.resnets.0.conv1",
                Param::Down,
            ),
            (
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
                Param::Up,
            ),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight",
                "text_encoder.text_model.encoder.layers.0.self_attn.k_proj",
                Param::Down,
            ),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                Param::Up,
            ),
            ("lora_unet_x.lokr_w1_a", "lora_unet_x", Param::LokrW1A),
            ("lora_unet_x.lokr_w1", "lora_unet_x", Param::LokrW1),
            ("lora_unet_x.hada_t2", "lora_unet_x", Param::HadaT2),
        ];
        for (key, module, param) in cases {
            assert_eq!(split_key(key), Some((module.to_string(), param)), "{key}");
        }
        assert_eq!(split_key("lora_unet_x.diff_b"), None);
        assert_eq!(split_key("lora_unet_x.bias"), None);
    }
}
