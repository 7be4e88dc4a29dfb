//! Model families: what a model is made of and how a pipeline drives it.
//!
//! A [`Family`] is data read from a family manifest (`manifests/families/<name>.toml`, see
//! [`manifest`]): its name, the architecture that implements it, its text encoders, denoiser
//! and VAE, its conditioning recipe, latent preview, scheduler kind, and the rules that
//! recognise its files. [`Families`] holds the shipped ones plus the operator's. The
//! architecture is code, one module per architecture ([`sd`]: Stable Diffusion 1.x/2.x,
//! [`sdxl`]: SDXL, [`flux`]: FLUX.1), implementing the [`Networks`] seam: encode a prompt,
//! read in the job's prompt syntax, to [`ScheduledConditioning`] (a [`Conditioning`] per step:
//! prompt editing, alternation, `AND`; see [`prompting`] for the CLIP recipe), predict with the
//! denoiser, rebuild around LoRA-merged weights. A loaded [`Model`] holds the
//! networks beside the family-independent parts (VAE, scheduler config, the weights for
//! LoRAs), and every pipeline works through it.
//!
//! Adding a family of a known architecture is a manifest; a new architecture adds a module
//! implementing [`Networks`], an [`Architecture`] variant and one arm in [`Families::load`].

pub mod bundled;
mod conditioning;
pub mod denoiser;
pub mod flux;
mod flux_parts;
mod load_plan;
mod load_timing;
pub mod manifest;
mod model;
mod preview;
pub mod prompting;
mod registry;
mod scheduled;
pub mod sd;
pub mod sdxl;
mod source;
mod spec;
mod tiny_vae;
mod vae;

use std::path::Path;

pub use conditioning::Conditioning;
pub use load_plan::{find_taesd, load_pack, LoadPlan};
pub use load_timing::{timed_load, LOAD_TARGET};
pub use model::{
    ComponentWeights, EncodeOptions, FusedPart, FusedTarget, LoadOptions, LoraAlias, LoraNames,
    Model, Networks, Patches, QuantizedLayers, Role, SizeConditioning, Weights,
};
pub use preview::LatentPreview;
pub use registry::{load_source, Families, FAMILIES_DIR};
pub use scheduled::{ScheduledConditioning, ScheduledPart};
pub use source::ModelSource;
pub use spec::{
    Architecture, ConditioningSpec, ConfigRule, DenoiserSpec, Dim, Family, GuidanceMode,
    HiddenStates, KeyLayout, KeyRule, LoraPrefixes, SingleFile, TextEncoderKind, TextEncoderSpec,
    TimeIds, VaeSpec,
};
pub use vae::Vae;

use crate::Result;

/// Loads the diffusers folder `dir` with the shipped families: as a model of family
/// `declared` when given (files that disagree with it are an error naming both), else of the
/// first family whose rules the folder meets (see [`Families::load`]).
pub fn load(dir: &Path, declared: Option<&str>, options: &LoadOptions) -> Result<Model> {
    Families::builtin().load(dir, declared, options)
}
