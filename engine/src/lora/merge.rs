//! Merging LoRAs into a job's copy of the weights, and building the job's networks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::delta::module_delta;
use super::file::LoraFile;
use super::keys::{Component, TargetIndex};
use super::LoraError;
use crate::models::clip::ClipTextModel;
use crate::models::unet::UNet2DConditionModel;
use crate::models::weights::gemm_layout;
use crate::pipeline::StableDiffusion;
use crate::Result;

/// The base weights of the networks LoRAs change, kept in memory by [`StableDiffusion`]: the
/// networks are built from these very tensors (shared, not copied), and a job's patched
/// networks share every tensor it does not change.
#[derive(Debug)]
pub struct BaseWeights {
    /// UNet weights by key, in the model's dtype.
    pub unet: HashMap<String, Tensor>,
    /// The UNet weights file (for error messages).
    pub unet_file: PathBuf,
    /// Text-encoder weights by key (as the file names them).
    pub text_encoder: HashMap<String, Tensor>,
    /// The text-encoder weights file.
    pub text_encoder_file: PathBuf,
    /// Every LoRA spelling of every weight.
    pub index: TargetIndex,
}

impl BaseWeights {
    /// Indexes the two weight maps.
    pub fn new(
        unet: HashMap<String, Tensor>,
        unet_file: PathBuf,
        text_encoder: HashMap<String, Tensor>,
        text_encoder_file: PathBuf,
    ) -> Self {
        let index = TargetIndex::new(
            unet.iter().map(|(k, t)| (k.as_str(), t.rank())),
            text_encoder.iter().map(|(k, t)| (k.as_str(), t.rank())),
        );
        Self {
            unet,
            unet_file,
            text_encoder,
            text_encoder_file,
            index,
        }
    }

    fn map(&self, component: Component) -> &HashMap<String, Tensor> {
        match component {
            Component::Unet => &self.unet,
            Component::TextEncoder => &self.text_encoder,
        }
    }
}

/// A LoRA file with the weight a job uses it at.
#[derive(Debug, Clone)]
pub struct WeightedLora {
    /// The name it was asked for by (catalog name, or file stem).
    pub name: String,
    /// The parsed file.
    pub file: Arc<LoraFile>,
    /// Its weight (multiplier); negative weights invert it.
    pub weight: f64,
}

/// How a LoRA file matched the model.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchReport {
    /// The LoRA's name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// UNet weights it changes.
    pub unet_layers: usize,
    /// Text-encoder weights it changes.
    pub text_encoder_layers: usize,
    /// Keys that match no layer of the model (or hold a parameter beeswax does not apply).
    pub unmatched: Vec<String>,
}

impl MatchReport {
    /// A warning for the user when some keys matched nothing: the count and a few examples.
    pub fn warning(&self) -> Option<String> {
        if self.unmatched.is_empty() {
            return None;
        }
        let examples: Vec<&str> = self.unmatched.iter().take(3).map(String::as_str).collect();
        Some(format!(
            "LoRA `{}` ({}): {} keys match no layer of this model and were ignored, e.g. {}",
            self.name,
            self.path.display(),
            self.unmatched.len(),
            examples.join(", ")
        ))
    }
}

/// The weights a set of LoRAs changes: the merged tensors (in the model's dtype), by key.
#[derive(Debug, Default)]
pub struct Patches {
    /// Merged UNet weights.
    pub unet: HashMap<String, Tensor>,
    /// Merged text-encoder weights.
    pub text_encoder: HashMap<String, Tensor>,
}

/// Merges `loras` into copies of the `base` weights they change:
/// `W + sum_i weight_i x alpha_i / rank_i x dW_i`, computed in f32.
///
/// A file that matches no layer, or whose change has the wrong shape for the weight it names
/// (a LoRA of another model family), is an error; keys that match nothing are reported.
pub fn merged_weights(
    base: &BaseWeights,
    loras: &[WeightedLora],
) -> Result<(Patches, Vec<MatchReport>), LoraError> {
    let mut sums: HashMap<(Component, String), Tensor> = HashMap::new();
    let mut reports = Vec::with_capacity(loras.len());
    for lora in loras {
        let file = &lora.file;
        let mut report = MatchReport {
            name: lora.name.clone(),
            path: file.path.clone(),
            unet_layers: 0,
            text_encoder_layers: 0,
            unmatched: file.ignored_keys.clone(),
        };
        for module in &file.modules {
            let Some(target) = base.index.resolve(&module.name) else {
                report.unmatched.extend(module.keys().map(str::to_string));
                continue;
            };
            let weight = &base.map(target.component)[&target.key];
            let on_device;
            let module = if weight.device().is_cpu() {
                module
            } else {
                on_device = module.to_device(weight.device())?;
                &on_device
            };
            let delta = module_delta(file, module, &target.key, weight.dims(), lora.weight)?;
            match target.component {
                Component::Unet => report.unet_layers += 1,
                Component::TextEncoder => report.text_encoder_layers += 1,
            }
            let slot = (target.component, target.key.clone());
            let sum = match sums.remove(&slot) {
                Some(previous) => (previous + delta)?,
                None => delta,
            };
            sums.insert(slot, sum);
        }
        if report.unet_layers + report.text_encoder_layers == 0 {
            let mut examples = report.unmatched.clone();
            examples.truncate(3);
            return Err(LoraError::NoMatch {
                path: file.path.clone(),
                count: file.key_count,
                examples,
            });
        }
        report.unmatched.sort();
        reports.push(report);
    }
    let mut patches = Patches::default();
    for ((component, key), sum) in sums {
        let w = &base.map(component)[&key];
        let merged = if w.dtype() == DType::F32 {
            (w + sum.to_device(w.device())?)?
        } else {
            (w.to_dtype(DType::F32)? + sum.to_device(w.device())?)?.to_dtype(w.dtype())?
        };
        let merged = gemm_layout(&key, merged)?;
        match component {
            Component::Unet => patches.unet.insert(key, merged),
            Component::TextEncoder => patches.text_encoder.insert(key, merged),
        };
    }
    Ok((patches, reports))
}

/// A job's model with LoRAs merged in, and how each LoRA matched.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The model to run the job on: the base model's tokenizer, VAE and configs, with the
    /// UNet and text encoder rebuilt where LoRAs change them (shared otherwise).
    pub model: StableDiffusion,
    /// One report per LoRA, in order.
    pub reports: Vec<MatchReport>,
}

impl Applied {
    /// The warnings of the reports (keys that matched nothing).
    pub fn warnings(&self) -> Vec<String> {
        self.reports
            .iter()
            .filter_map(MatchReport::warning)
            .collect()
    }
}

/// `model` with `loras` merged into its UNet and text encoder, for one job.
///
/// `model` itself is never modified: the returned model shares its tokenizer, VAE and every
/// unchanged weight, so jobs with other LoRAs (or none) can run on `model` before, after and
/// at the same time. With no LoRAs this is a cheap clone of `model`.
pub fn apply(model: &StableDiffusion, loras: &[WeightedLora]) -> Result<Applied> {
    let mut out = model.clone();
    if loras.is_empty() {
        return Ok(Applied {
            model: out,
            reports: Vec::new(),
        });
    }
    let base = &model.base_weights;
    let (patches, reports) = merged_weights(base, loras)?;
    let vb = |base: &HashMap<String, Tensor>, patched: HashMap<String, Tensor>| {
        let mut map = base.clone();
        map.extend(patched);
        VarBuilder::from_tensors(map, model.dtype, &model.device)
    };
    if !patches.unet.is_empty() {
        let unet = UNet2DConditionModel::new(vb(&base.unet, patches.unet), model.unet.config());
        out.unet = Arc::new(crate::models::weights::in_file(&base.unet_file, unet)?);
    }
    if !patches.text_encoder.is_empty() {
        let te = ClipTextModel::new(
            vb(&base.text_encoder, patches.text_encoder),
            &model.text_config,
        );
        out.text_encoder = Arc::new(crate::models::weights::in_file(
            &base.text_encoder_file,
            te,
        )?);
    }
    Ok(Applied {
        model: out,
        reports,
    })
}
