//! What a model family is made of, as data: the value a family manifest
//! (`manifests/families/<name>.toml`, parsed by [`super::manifest`]) describes.

use std::path::PathBuf;

use super::preview::LatentPreview;
use crate::schedulers::{PredictionType, SchedulerKind};

/// The code that implements a family's networks. New architectures add a variant and one arm
/// in [`super::Families::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Stable Diffusion 1.x/2.x ([`super::sd`]).
    Sd,
    /// Stable Diffusion XL ([`super::sdxl`]).
    Sdxl,
    /// FLUX.1 ([`super::flux`]).
    Flux,
}

impl Architecture {
    /// Every architecture, in listing order.
    pub const ALL: [Architecture; 3] = [Architecture::Sd, Architecture::Sdxl, Architecture::Flux];

    /// The name manifests use.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Sd => "sd",
            Architecture::Sdxl => "sdxl",
            Architecture::Flux => "flux",
        }
    }
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

impl GuidanceMode {
    /// Every mode with the name manifests use.
    pub const NAMED: [(&'static str, GuidanceMode); 3] = [
        ("classifier-free", GuidanceMode::ClassifierFree),
        ("distilled", GuidanceMode::Distilled),
        ("none", GuidanceMode::None),
    ];
}

/// A value a diffusers folder's config must hold for a family to claim it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRule {
    /// The config file, relative to the model folder (e.g. `text_encoder/config.json`).
    pub file: String,
    /// The field.
    pub field: String,
    /// The value it must have (`null`: the field is absent or null).
    pub equals: serde_json::Value,
    /// The value assumed when the field is absent (`null`: none).
    pub default: serde_json::Value,
}

/// One dimension of a [`KeyRule`]'s shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// Exactly this size.
    Is(usize),
    /// Any size (`"*"` in manifests).
    Any,
}

/// A condition on one tensor of a single-file checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRule {
    /// The tensor key, in the file's own naming.
    pub key: String,
    /// Whether the key must be present (`true`) or absent (`false`).
    pub present: bool,
    /// The shape it must have, when present.
    pub shape: Option<Vec<Dim>>,
}

/// How a component's tensors are named inside an original-layout single file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// Diffusers' own names below the prefix (rare in single files; tests and converted files).
    Diffusers,
    /// CompVis/SGM UNet names (`input_blocks.1.0.in_layers.0.weight`, ...).
    LdmUnet,
    /// CompVis VAE names (`encoder.down.0.block.0.norm1.weight`, ...).
    LdmVae,
    /// transformers' CLIPTextModel names below the prefix (`text_model.encoder.layers...`).
    Clip,
    /// OpenCLIP names (`transformer.resblocks.0.attn.in_proj_weight`, ...).
    OpenClip,
}

impl KeyLayout {
    /// Every layout, in listing order.
    pub const ALL: [KeyLayout; 5] = [
        KeyLayout::Diffusers,
        KeyLayout::LdmUnet,
        KeyLayout::LdmVae,
        KeyLayout::Clip,
        KeyLayout::OpenClip,
    ];

    /// The name manifests use.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyLayout::Diffusers => "diffusers",
            KeyLayout::LdmUnet => "ldm-unet",
            KeyLayout::LdmVae => "ldm-vae",
            KeyLayout::Clip => "clip",
            KeyLayout::OpenClip => "open-clip",
        }
    }
}

/// Where a component lives in a single-file checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleFile {
    /// The key prefix of the component's tensors (e.g. `model.diffusion_model.`).
    pub prefix: String,
    /// How the keys below the prefix are named.
    pub layout: KeyLayout,
}

/// How LoRA files name a component's modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraPrefixes {
    /// kohya's prefix, e.g. `lora_unet`, `lora_te1`.
    pub kohya: String,
    /// diffusers/PEFT's prefix, e.g. `unet`, `text_encoder_2`.
    pub peft: String,
}

/// Which hidden states of a text encoder the denoiser attends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenStates {
    /// The last layer (earlier ones with CLIP skip) through the final LayerNorm (SD 1.x/2.x).
    LastNormed,
    /// The layer before the last (earlier ones with CLIP skip) without the final LayerNorm
    /// (SDXL).
    Penultimate,
}

/// What kind of text encoder a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderKind {
    /// transformers' `CLIPTextModel`.
    Clip,
    /// transformers' `CLIPTextModelWithProjection` (a pooled, projected output).
    ClipProjection,
    /// transformers' `T5EncoderModel` (FLUX's `text_encoder_2`).
    T5,
}

/// One text encoder of a family, in the order their states are concatenated.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEncoderSpec {
    /// Its diffusers folder (`text_encoder`, `text_encoder_2`).
    pub component: String,
    /// Its tokenizer's folder (`tokenizer`, `tokenizer_2`).
    pub tokenizer: String,
    /// What it is.
    pub kind: TextEncoderKind,
    /// Which states the denoiser attends to.
    pub hidden_states: HiddenStates,
    /// Whether its pooled (projected) output conditions the denoiser.
    pub pooled: bool,
    /// How LoRA files name it.
    pub lora: LoraPrefixes,
    /// Where it lives in a single file.
    pub single_file: Option<SingleFile>,
}

/// The denoiser of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct DenoiserSpec {
    /// Its diffusers folder (`unet`).
    pub component: String,
    /// How LoRA files name it.
    pub lora: LoraPrefixes,
    /// Where it lives in a single file.
    pub single_file: Option<SingleFile>,
}

/// The autoencoder of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeSpec {
    /// Its diffusers folder (`vae`).
    pub component: String,
    /// Where it lives in a single file.
    pub single_file: Option<SingleFile>,
    /// The Hugging Face repo of the family's tiny autoencoder (`madebyollin/taesd`), which
    /// `--vae taesd` and a pack's `vae = "taesd"` resolve to.
    pub taesd: Option<String>,
}

/// SDXL's added conditioning: which time ids follow the pooled text embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeIds {
    /// Original size, crop top-left, target size (SDXL base: 6 ids).
    Size,
    /// Original size, crop top-left, aesthetic score (SDXL refiner: 5 ids).
    Aesthetic,
}

/// How a prompt becomes conditioning beyond the text states.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConditioningSpec {
    /// The time ids, if the denoiser takes them.
    pub time_ids: Option<TimeIds>,
    /// Whether an empty negative prompt is all zeros rather than the encoded empty string.
    pub force_zeros_for_empty_prompt: bool,
    /// Aesthetic score of the positive prompt (refiner).
    pub aesthetic_score: f64,
    /// Aesthetic score of the negative prompt (refiner).
    pub negative_aesthetic_score: f64,
}

impl Default for ConditioningSpec {
    fn default() -> Self {
        Self {
            time_ids: None,
            force_zeros_for_empty_prompt: false,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
        }
    }
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
    /// What its denoiser predicts, when the family fixes it (else the scheduler config says).
    pub prediction: Option<PredictionType>,
    /// The kind of sampler it takes.
    pub scheduler_kind: SchedulerKind,
    /// How it uses the guidance scale.
    pub guidance: GuidanceMode,
    /// Image side in pixels when neither the request nor the model says.
    pub default_size: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Latent → RGB factors for previews.
    pub preview: LatentPreview,
    /// Text encoders, in concatenation order.
    pub text_encoders: Vec<TextEncoderSpec>,
    /// The denoiser.
    pub denoiser: DenoiserSpec,
    /// The autoencoder.
    pub vae: VaeSpec,
    /// Conditioning beyond the text states.
    pub conditioning: ConditioningSpec,
    /// Diffusers-layout configs and tokenizers used when a single file carries none: the
    /// manifest's `config` name, resolved beside the manifest (`config_dir`) or, when no such
    /// folder exists there, to the bundled folder of that name (see [`super::bundled`]).
    pub config: Option<String>,
    /// The `config` folder beside the manifest (`None` for the shipped families, whose
    /// folders are embedded).
    pub config_dir: Option<PathBuf>,
    /// Families with a higher priority are tried first when detecting.
    pub priority: i64,
    /// What a single file of this family holds (all must hold).
    pub detect: Vec<KeyRule>,
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
    /// The manifest it was read from (`None`: built in).
    pub manifest: Option<PathBuf>,
}
