//! Merging LoRAs into a job's copy of the weights, and building the job's networks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::delta::module_delta;
use super::file::LoraFile;
use super::keys::{IndexedComponent, TargetIndex};
use super::LoraError;
use crate::family::{Model, Patches, Role, Weights};
use crate::weights::gemm_layout;
use crate::Result;

/// Every LoRA spelling of every LoRA-able weight of `weights`.
pub fn index(weights: &Weights) -> TargetIndex {
    let mut index = TargetIndex::new();
    for c in &weights.components {
        index.add(IndexedComponent {
            name: &c.name,
            role: c.role,
            lora: &c.lora,
            weights: c.tensors.iter().map(|(k, t)| (k.as_str(), t.rank())),
        });
    }
    index
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
    /// Denoiser (UNet or transformer) weights it changes.
    pub unet_layers: usize,
    /// Text-encoder weights it changes (all text encoders).
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

/// Merges `loras` into copies of the `base` weights they change:
/// `W + sum_i weight_i x alpha_i / rank_i x dW_i`, computed in f32. Returns the merged
/// tensors (in the model's dtype) by component and key.
///
/// A file that matches no layer, or whose change has the wrong shape for the weight it names
/// (a LoRA of another model family), is an error; keys that match nothing are reported.
pub fn merged_weights(
    base: &Weights,
    loras: &[WeightedLora],
) -> Result<(Patches, Vec<MatchReport>), LoraError> {
    let index = index(base);
    let mut sums: HashMap<(String, String), Tensor> = HashMap::new();
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
            let Some(target) = index.resolve(&module.name) else {
                report.unmatched.extend(module.keys().map(str::to_string));
                continue;
            };
            let Some(weight) = base
                .get(&target.component)
                .and_then(|c| c.tensors.get(&target.key))
            else {
                continue;
            };
            let on_device;
            let module = if weight.device().is_cpu() {
                module
            } else {
                on_device = module.to_device(weight.device())?;
                &on_device
            };
            let delta = module_delta(file, module, &target.key, weight.dims(), lora.weight)?;
            match target.role {
                Role::Denoiser => report.unet_layers += 1,
                Role::TextEncoder => report.text_encoder_layers += 1,
            }
            let slot = (target.component.clone(), target.key.clone());
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
    let mut patches = Patches::new();
    for ((component, key), sum) in sums {
        let Some(w) = base.get(&component).and_then(|c| c.tensors.get(&key)) else {
            continue;
        };
        let merged = if w.dtype() == DType::F32 {
            (w + sum.to_device(w.device())?)?
        } else {
            (w.to_dtype(DType::F32)? + sum.to_device(w.device())?)?.to_dtype(w.dtype())?
        };
        let merged = gemm_layout(&key, merged)?;
        patches.entry(component).or_default().insert(key, merged);
    }
    Ok((patches, reports))
}

/// A job's model with LoRAs merged in, and how each LoRA matched.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The model to run the job on: the base model's VAE and configs, with the networks
    /// rebuilt where LoRAs change them (shared otherwise).
    pub model: Model,
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

/// `model` with `loras` merged into its networks, for one job.
///
/// `model` itself is never modified: the returned model shares its VAE and every unchanged
/// weight, so jobs with other LoRAs (or none) can run on `model` before, after and at the same
/// time. With no LoRAs this is a cheap clone of `model`.
pub fn apply(model: &Model, loras: &[WeightedLora]) -> Result<Applied> {
    if loras.is_empty() {
        return Ok(Applied {
            model: model.clone(),
            reports: Vec::new(),
        });
    }
    let (patches, reports) = merged_weights(&model.weights, loras)?;
    Ok(Applied {
        model: model.with_weights(&patches)?,
        reports,
    })
}
