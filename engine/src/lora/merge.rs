//! Merging LoRAs into a job's copy of the weights, and building the job's networks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::delta::module_delta;
use super::file::{LoraFile, LoraModule};
use super::keys::{IndexedComponent, TargetIndex};
use super::LoraError;
use crate::family::{FusedPart, FusedTarget, LoraAlias, Model, Patches, Role, Weights};
use crate::weights::{gemm_layout, swap_halves};
use crate::Result;

/// Every LoRA spelling of every LoRA-able weight of `weights`.
pub fn index(weights: &Weights) -> TargetIndex {
    let mut index = TargetIndex::new();
    for c in &weights.components {
        index.add(IndexedComponent {
            name: &c.name,
            role: c.role,
            lora: &c.lora,
            weights: c.tensors.iter().map(|(k, t)| (k.as_str(), t.rank())).chain(
                c.quantized
                    .iter()
                    .flat_map(|q| q.names.iter().map(|k| (k.as_str(), 2))),
            ),
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
    merged_weights_with(base, &[], loras)
}

/// [`merged_weights`] where module names of `aliases` (a checkpoint layout the networks split
/// or rename, see [`crate::family::Networks::lora_aliases`]) change the parts of the weights
/// they list.
pub fn merged_weights_with(
    base: &Weights,
    aliases: &[LoraAlias],
    loras: &[WeightedLora],
) -> Result<(Patches, Vec<MatchReport>), LoraError> {
    let index = index(base);
    let aliases: HashMap<&str, &LoraAlias> =
        aliases.iter().map(|a| (a.module.as_str(), a)).collect();
    let mut sums: HashMap<Slot, Tensor> = HashMap::new();
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
                match aliases.get(module.name.as_str()) {
                    Some(alias) => {
                        for (slot, delta) in fused_deltas(base, file, module, alias, lora.weight)? {
                            report.unet_layers += 1;
                            add_delta(&mut sums, slot, delta)?;
                        }
                    }
                    None => report.unmatched.extend(module.keys().map(str::to_string)),
                }
                continue;
            };
            let Some((shape, device)) = shape_and_device(base, &target.component, &target.key)
            else {
                continue;
            };
            let on_device;
            let module = if device.is_cpu() {
                module
            } else {
                on_device = module.to_device(&device)?;
                &on_device
            };
            let delta = module_delta(file, module, &target.key, &shape, lora.weight)?;
            match target.role {
                Role::Denoiser => report.unet_layers += 1,
                Role::TextEncoder => report.text_encoder_layers += 1,
            }
            let slot = (target.component.clone(), target.key.clone());
            add_delta(&mut sums, slot, delta)?;
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
    Ok((merge_sums(base, sums)?, reports))
}

/// Each summed change added to its base weight (in f32), in the kernels' layout.
fn merge_sums(base: &Weights, sums: HashMap<Slot, Tensor>) -> Result<Patches, LoraError> {
    let mut patches = Patches::new();
    for ((component, key), sum) in sums {
        let Some(c) = base.get(&component) else {
            continue;
        };
        // A quantized layer is merged into a dequantized copy (used dense by the job).
        let Some(w) = c.dense(&key).map_err(|e| LoraError::Weights {
            component: component.clone(),
            key: key.clone(),
            message: e.to_string(),
        })?
        else {
            continue;
        };
        let w = &w;
        let merged = if w.dtype() == DType::F32 {
            (w + sum.to_device(w.device())?)?
        } else {
            (w.to_dtype(DType::F32)? + sum.to_device(w.device())?)?.to_dtype(w.dtype())?
        };
        let merged = gemm_layout(&key, merged)?;
        patches.entry(component).or_default().insert(key, merged);
    }
    Ok(patches)
}

type Slot = (String, String);

/// The shape and device of weight `key` of `component`, dense or quantized.
fn shape_and_device(
    base: &Weights,
    component: &str,
    key: &str,
) -> Option<(Vec<usize>, candle_core::Device)> {
    let c = base.get(component)?;
    let shape = c.shape(key)?;
    let device = match (c.tensors.get(key), &c.quantized) {
        (Some(t), _) => t.device().clone(),
        (None, Some(q)) => q.device.clone(),
        (None, None) => return None,
    };
    Some((shape, device))
}

fn add_delta(sums: &mut HashMap<Slot, Tensor>, slot: Slot, delta: Tensor) -> Result<(), LoraError> {
    let sum = match sums.remove(&slot) {
        Some(previous) => (previous + delta)?,
        None => delta,
    };
    sums.insert(slot, sum);
    Ok(())
}

/// The change of a fused module (e.g. FLUX's BFL `qkv`) cut into the parts its targets take:
/// the module's change has the rows of every `Rows` part together (or the target's own shape).
fn fused_deltas(
    base: &Weights,
    file: &LoraFile,
    module: &LoraModule,
    alias: &LoraAlias,
    multiplier: f64,
) -> Result<Vec<(Slot, Tensor)>, LoraError> {
    let weight = |t: &FusedTarget| shape_and_device(base, &t.component, &t.key);
    let Some((mut shape, device)) = alias.targets.first().and_then(weight) else {
        return Ok(Vec::new());
    };
    let rows = alias.targets.iter().map(|t| match t.part {
        FusedPart::Rows { start, len } => start + len,
        _ => 0,
    });
    if let (Some(rows), Some(first_dim)) = (rows.max().filter(|&r| r > 0), shape.first_mut()) {
        *first_dim = rows;
    }
    let on_device;
    let module = if device.is_cpu() {
        module
    } else {
        on_device = module.to_device(&device)?;
        &on_device
    };
    let delta = module_delta(file, module, &alias.module, &shape, multiplier)?;
    let mut out = Vec::with_capacity(alias.targets.len());
    for target in &alias.targets {
        if weight(target).is_none() {
            continue;
        }
        let part = match target.part {
            FusedPart::Whole => delta.clone(),
            FusedPart::Rows { start, len } => delta.narrow(0, start, len)?,
            FusedPart::SwappedHalves => swap_halves(&delta)?,
        };
        out.push(((target.component.clone(), target.key.clone()), part));
    }
    Ok(out)
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
    let aliases = model.networks.lora_aliases();
    let (patches, reports) =
        merged_weights_with(&model.weights, &aliases, loras).map_err(|e| match e {
            super::LoraError::ShapeMismatch(mut m) => {
                m.family = model.family.name.clone();
                super::LoraError::ShapeMismatch(m)
            }
            other => other,
        })?;
    Ok(Applied {
        model: model.with_weights(&patches)?,
        reports,
    })
}
