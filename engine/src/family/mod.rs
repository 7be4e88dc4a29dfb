//! Model families: what a model is made of and how a pipeline drives it.
//!
//! A [`Family`] is data: its name, the architecture that implements it, its scheduler kind
//! (diffusion or flow matching), how it uses guidance, its latent preview and the rules that
//! recognise its files. The architecture is code, one module per architecture (today [`sd`]:
//! Stable Diffusion 1.x/2.x), implementing the [`Networks`] seam: encode a prompt, read in the
//! job's prompt syntax, to [`ScheduledConditioning`] (a [`Conditioning`] per step: prompt
//! editing, alternation, `AND`; see [`prompting`] for the CLIP recipe), predict with the
//! denoiser, rebuild around LoRA-merged weights. A loaded
//! [`Model`] holds the networks beside the family-independent parts (VAE, scheduler config,
//! the weights for LoRAs), and every pipeline works through it.
//!
//! Adding a family means a [`Family`] value (a manifest, later) and, for a new architecture, a
//! module implementing [`Networks`] plus one arm in [`load`].

mod conditioning;
pub mod denoiser;
pub mod flux;
mod model;
mod preview;
pub mod prompting;
mod scheduled;
pub mod sd;
mod vae;

use std::path::Path;
use std::sync::Arc;

pub use conditioning::Conditioning;
pub use model::{
    ComponentWeights, EncodeOptions, FusedPart, FusedTarget, LoadOptions, LoraAlias, LoraNames,
    Model, Networks, Patches, Role, Weights,
};
pub use preview::LatentPreview;
pub use scheduled::{ScheduledConditioning, ScheduledPart};
pub use vae::Vae;

use crate::schedulers::SchedulerKind;
use crate::{model_files, Error, Result};

/// The code that implements a family's networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Stable Diffusion 1.x/2.x ([`sd`]).
    Sd,
    /// FLUX.1 ([`flux`]).
    Flux,
}

/// How a family uses the guidance scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidanceMode {
    /// Classifier-free guidance: a negative pass beside the positive one when guidance > 1.
    ClassifierFree,
    /// Guidance distilled into an embedding (FLUX.1-dev): the scale feeds the denoiser, no
    /// negative pass runs unless true CFG is asked for (`true_cfg`, diffusers'
    /// `true_cfg_scale`).
    Distilled,
    /// No guidance at all (FLUX.1-schnell): the scale is ignored; true CFG still works.
    None,
}

/// A value a diffusers folder's config must hold for a family to claim it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRule {
    /// The config file, relative to the model folder (e.g. `text_encoder/config.json`).
    pub file: String,
    /// The field.
    pub field: String,
    /// The value it must have.
    pub equals: serde_json::Value,
}

/// A model family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The name manifests use (`sd1`).
    pub name: String,
    /// One line for listings.
    pub description: String,
    /// The code that runs it.
    pub architecture: Architecture,
    /// The kind of sampler it takes.
    pub scheduler_kind: SchedulerKind,
    /// How it uses the guidance scale.
    pub guidance: GuidanceMode,
    /// Image side in pixels when neither the request nor the model says.
    pub default_size: usize,
    /// Latent → RGB factors for previews.
    pub preview: LatentPreview,
    /// What a diffusers folder of this family holds (all must hold).
    pub folder_rules: Vec<ConfigRule>,
    /// T5 tokens per prompt (FluxPipeline's `max_sequence_length`), for families with T5.
    pub max_sequence_length: Option<usize>,
    /// Steps when neither the request nor the pack says (FLUX.1-schnell: 4).
    pub default_steps: Option<usize>,
    /// Guidance scale when neither the request nor the pack says (FLUX.1-dev: 3.5).
    pub default_guidance: Option<f64>,
    /// Width and height must be multiples of this many pixels (FLUX: 16, the VAE's factor
    /// times the 2x2 packing); `None`: the VAE's scale factor.
    pub size_multiple: Option<usize>,
}

impl Family {
    /// The families built into beeswax.
    pub fn builtin() -> Vec<Family> {
        let sd = |name: &str, description: &str, activation: &str, size| Family {
            name: name.into(),
            description: description.into(),
            architecture: Architecture::Sd,
            scheduler_kind: SchedulerKind::Diffusion,
            guidance: GuidanceMode::ClassifierFree,
            default_size: size,
            preview: LatentPreview::sd(),
            folder_rules: vec![
                ConfigRule {
                    file: "text_encoder/config.json".into(),
                    field: "hidden_act".into(),
                    equals: activation.into(),
                },
                ConfigRule {
                    file: "unet/config.json".into(),
                    field: "_class_name".into(),
                    equals: "UNet2DConditionModel".into(),
                },
            ],
            max_sequence_length: None,
            default_steps: None,
            default_guidance: None,
            size_multiple: None,
        };
        let flux = |name: &str, description: &str, dev: bool, max_sequence_length| Family {
            name: name.into(),
            description: description.into(),
            architecture: Architecture::Flux,
            scheduler_kind: SchedulerKind::Flow,
            guidance: if dev {
                GuidanceMode::Distilled
            } else {
                GuidanceMode::None
            },
            default_size: 1024,
            preview: LatentPreview::flux(),
            folder_rules: vec![
                ConfigRule {
                    file: "transformer/config.json".into(),
                    field: "_class_name".into(),
                    equals: "FluxTransformer2DModel".into(),
                },
                ConfigRule {
                    file: "transformer/config.json".into(),
                    field: "guidance_embeds".into(),
                    equals: dev.into(),
                },
            ],
            max_sequence_length: Some(max_sequence_length),
            // FluxPipeline's defaults: 28 steps at guidance 3.5; schnell is made for 4 steps.
            default_steps: Some(if dev { 28 } else { 4 }),
            default_guidance: Some(if dev { 3.5 } else { 0.0 }),
            size_multiple: Some(16),
        };
        vec![
            sd(
                "sd1",
                "Stable Diffusion 1.x (CLIP ViT-L/14 text encoder)",
                "quick_gelu",
                512,
            ),
            sd(
                "sd2",
                "Stable Diffusion 2.x (OpenCLIP ViT-H/14 text encoder)",
                "gelu",
                768,
            ),
            flux(
                "flux-dev",
                "FLUX.1-dev (CLIP-L + T5-XXL, guidance distilled into an embedding)",
                true,
                512,
            ),
            flux(
                "flux-schnell",
                "FLUX.1-schnell (CLIP-L + T5-XXL, timestep-distilled, no guidance)",
                false,
                256,
            ),
        ]
    }

    /// The built-in family called `name`.
    pub fn named(name: &str) -> Option<Arc<Family>> {
        Self::builtin()
            .into_iter()
            .find(|f| f.name == name)
            .map(Arc::new)
    }

    /// Whether the diffusers folder `dir` holds a model of this family; `Err` with the rule
    /// that failed.
    fn check_folder(&self, dir: &Path) -> std::result::Result<(), String> {
        for rule in &self.folder_rules {
            let path = dir.join(&rule.file);
            let value: Option<serde_json::Value> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get(&rule.field).cloned());
            let found = value.unwrap_or(serde_json::Value::Null);
            // `hidden_act` defaults to quick_gelu in transformers' CLIPTextConfig.
            // ... and `guidance_embeds` to false in diffusers' FluxTransformer2DModel.
            let found = match (&found, rule.field.as_str()) {
                (serde_json::Value::Null, "hidden_act") => "quick_gelu".into(),
                (serde_json::Value::Null, "guidance_embeds") => false.into(),
                _ => found,
            };
            if found != rule.equals {
                return Err(format!(
                    "{} has `{}` = {found}, a {} model has {}",
                    rule.file, rule.field, self.name, rule.equals
                ));
            }
        }
        Ok(())
    }
}

/// Loads the diffusers folder `dir`: as a model of family `declared` when given (files that
/// disagree with it are an error naming both), else of the first built-in family whose rules
/// the folder meets.
pub fn load(dir: &Path, declared: Option<&str>, options: &LoadOptions) -> Result<Model> {
    model_files::model_index(dir)?;
    let families = Family::builtin();
    let family = match declared {
        Some(name) => {
            let family = families.iter().find(|f| f.name == name).ok_or_else(|| {
                Error::invalid(
                    "family",
                    name,
                    format!("not a known family ({})", names(&families)),
                )
            })?;
            if let Err(why) = family.check_folder(dir) {
                let other = families.iter().find(|f| f.check_folder(dir).is_ok());
                return Err(Error::Config {
                    path: dir.to_path_buf(),
                    message: format!(
                        "declared family `{name}` does not match the files: {why}{}",
                        other.map_or(String::new(), |o| format!(
                            "; the files look like family `{}`",
                            o.name
                        ))
                    ),
                });
            }
            family.clone()
        }
        None => families
            .iter()
            .find(|f| f.check_folder(dir).is_ok())
            .cloned()
            .ok_or_else(|| Error::Config {
                path: dir.to_path_buf(),
                message: format!(
                    "the folder matches no known family ({}): {}",
                    names(&families),
                    families
                        .iter()
                        .filter_map(|f| f.check_folder(dir).err())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            })?,
    };
    let family = Arc::new(family);
    match family.architecture {
        Architecture::Sd if options.denoiser.is_some() => Err(Error::invalid(
            "denoiser file",
            options
                .denoiser
                .as_deref()
                .map_or(String::new(), |p| p.display().to_string()),
            format!(
                "family `{}` loads its UNet from its folder only (GGUF and single-file \
                 UNets are not supported yet); give the folder",
                family.name
            ),
        )),
        Architecture::Sd => sd::load(family, dir, options),
        Architecture::Flux => flux::load(family, dir, options),
    }
}

fn names(families: &[Family]) -> String {
    families
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
