//! A loaded model of any family: its networks behind the [`Networks`] seam, its VAE, its
//! scheduler config and the weights its networks were built from.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{Conditioning, Family, ScheduledConditioning, Vae};
use crate::image_out::{to_rgb8, RgbImage};
use crate::prompt::{EmbeddingCatalog, PromptSyntax};
use crate::schedulers::SchedulerConfig;
use crate::weights::WeightsDtype;
use crate::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where tensors live.
    pub device: Device,
    /// Compute dtype of the text encoders and the denoiser.
    pub dtype: DType,
    /// The denoiser's weights from this file instead of the folder's own: a GGUF file, or a
    /// single-file transformer (FLUX in the BFL/ComfyUI layout).
    pub denoiser: Option<PathBuf>,
    /// T5 tokens per prompt for families with a T5 encoder, instead of the family's.
    pub max_sequence_length: Option<usize>,
    /// Keep only what runs all the time in memory: FLUX reads its text encoders (CLIP and
    /// T5) for each encoding and its VAE for each decoding, and frees them after (their
    /// text-encoder LoRA modules then match nothing); its transformer is built at its first
    /// use, after the first prompt is encoded.
    pub low_memory: bool,
    /// The dtype weight matrices and convolution filters are held in on CPU with f32 compute
    /// (SD 1.x/2.x and SDXL; other families widen at load): by default the file's own 16-bit
    /// type where it has one.
    pub weights_dtype: WeightsDtype,
}

impl LoadOptions {
    /// `dtype` on `device`, with the model's own files and the family's settings.
    pub fn new(device: Device, dtype: DType) -> Self {
        Self {
            device,
            dtype,
            denoiser: None,
            max_sequence_length: None,
            low_memory: false,
            weights_dtype: WeightsDtype::File,
        }
    }
}

/// SDXL's size conditioning (diffusers' `original_size`, `crops_coords_top_left`,
/// `target_size`); the sizes left unset are the image's, as in diffusers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeConditioning {
    /// The training image's size, (width, height) in pixels [default: the image size].
    pub original_size: Option<(usize, usize)>,
    /// Where the training crop started, (top, left) in pixels [default: (0, 0)].
    pub crop_top_left: (usize, usize),
    /// The size asked for, (width, height) in pixels [default: the image size].
    pub target_size: Option<(usize, usize)>,
}

/// What a prompt is encoded with, besides its text.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions<'a> {
    /// SDXL's size conditioning beyond the image size.
    pub size_conditioning: SizeConditioning,
    /// CLIP skip, AUTOMATIC1111 semantics (1 = the last layer).
    pub clip_skip: usize,
    /// Image width and height in pixels (SDXL's size conditioning).
    pub size: (usize, usize),
    /// Whether this is the negative prompt (SDXL's refiner conditions it differently; A1111
    /// reads `AND` and `:weight` only in the positive prompt).
    pub negative: bool,
    /// How the prompt text is read.
    pub syntax: PromptSyntax,
    /// Sampling steps (prompt editing and alternation are scheduled over them).
    pub steps: usize,
    /// Whether to encode the empty prompt too ([`ScheduledConditioning::empty`]), which the
    /// denoise loop appends to the shorter of prompt and negative prompt (`pad_prompts`).
    pub pad_prompts: bool,
    /// The textual-inversion embeddings prompts may name.
    pub embeddings: Option<&'a EmbeddingCatalog>,
}

/// The networks of one family: the seam every pipeline drives. A family's module implements
/// it (see [`super::sd`]); pipelines never see a UNet, a transformer or a text encoder.
pub trait Networks: Send + Sync + std::fmt::Debug {
    /// Encodes one prompt, read in `options.syntax`, to its conditioning for one image over
    /// `options.steps` steps (static unless the prompt edits or alternates). `plain` is
    /// diffusers' literal encoding. Warnings (e.g. a truncated prompt) are added to `warnings`.
    fn encode(
        &self,
        prompt: &str,
        options: &EncodeOptions,
        warnings: &mut Vec<String>,
    ) -> Result<ScheduledConditioning>;

    /// The denoiser's output for `latents` `[batch, C, h, w]` (f32) at `timestep`, as f32.
    /// `guidance` is the job's guidance scale, which families with an embedded guidance use.
    fn predict(
        &self,
        latents: &Tensor,
        timestep: f64,
        cond: &Conditioning,
        guidance: f64,
    ) -> Result<Tensor>;

    /// The denoiser's input channels (the latent channels, or more for inpainting models).
    fn in_channels(&self) -> usize;

    /// The largest CLIP skip the text encoders allow (their layer count).
    fn text_layers(&self) -> usize;

    /// The denoiser's native sample size in latent pixels, if its config says.
    fn sample_size(&self) -> Option<usize>;

    /// The networks rebuilt with `patches` replacing some of `weights` (LoRAs), sharing every
    /// other tensor; the receiver is not modified.
    fn with_weights(&self, weights: &Weights, patches: &Patches) -> Result<Arc<dyn Networks>>;

    /// LoRA module names that the component weights do not spell, with the weights (or parts
    /// of them) they change: modules of a checkpoint layout whose layers the model splits or
    /// renames (FLUX's BFL `qkv`). None by default.
    fn lora_aliases(&self) -> Vec<LoraAlias> {
        Vec::new()
    }
}

/// Which part of a weight a fused LoRA module changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedPart {
    /// All of it.
    Whole,
    /// Rows `start..start + len` of the fused module's change.
    Rows {
        /// First row.
        start: usize,
        /// Row count.
        len: usize,
    },
    /// All of it with the two halves of its first dimension swapped.
    SwappedHalves,
}

/// A weight a [`LoraAlias`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedTarget {
    /// The component (`transformer`).
    pub component: String,
    /// The weight's key in the component's weights.
    pub key: String,
    /// The part of the module's change it takes.
    pub part: FusedPart,
}

/// A LoRA module name (as [`crate::lora::file::split_key`] normalises it) and the weights it
/// changes; the module's change has as many rows as its targets' parts together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraAlias {
    /// The module name (`lora_unet_double_blocks_0_img_attn_qkv`).
    pub module: String,
    /// What it changes.
    pub targets: Vec<FusedTarget>,
}

/// What a component does, for LoRA reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The UNet or transformer.
    Denoiser,
    /// A text encoder.
    TextEncoder,
}

/// How LoRA files name a component's modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraNames {
    /// kohya's prefix, e.g. `lora_unet`, `lora_te`, `lora_te1`.
    pub kohya: String,
    /// diffusers/PEFT's prefix, e.g. `unet`, `text_encoder`, `text_encoder_2`.
    pub peft: String,
    /// Whether module names without any prefix may name this component (only one component
    /// per role may claim them).
    pub bare: bool,
}

impl LoraNames {
    /// kohya's prefix `kohya`, PEFT's `peft`, and whether bare module names may name it.
    pub fn new(kohya: &str, peft: &str, bare: bool) -> Self {
        Self {
            kohya: kohya.to_string(),
            peft: peft.to_string(),
            bare,
        }
    }
}

/// The tensors one network was built from, by key: the network shares them, so keeping them
/// costs nothing, and a job's LoRAs are merged into copies of the few they change.
#[derive(Debug)]
pub struct ComponentWeights {
    /// The component's name (its diffusers folder: `unet`, `text_encoder`, ...).
    pub name: String,
    /// What it does.
    pub role: Role,
    /// The file the tensors came from (for messages).
    pub file: PathBuf,
    /// The tensors.
    pub tensors: HashMap<String, Tensor>,
    /// How LoRA files name its modules.
    pub lora: LoraNames,
    /// Linear weights the network multiplies quantized (a GGUF denoiser), which `tensors`
    /// does not hold.
    pub quantized: Option<QuantizedLayers>,
}

impl ComponentWeights {
    /// Component `name`'s dense `tensors`, read from `file`, named by LoRA files as `lora`.
    pub fn new(
        name: &str,
        role: Role,
        file: PathBuf,
        tensors: HashMap<String, Tensor>,
        lora: LoraNames,
    ) -> Self {
        Self {
            name: name.to_string(),
            role,
            file,
            tensors,
            lora,
            quantized: None,
        }
    }

    /// The shape of weight `key`, dense or quantized.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        if let Some(t) = self.tensors.get(key) {
            return Some(t.dims().to_vec());
        }
        let q = self.quantized.as_ref().filter(|q| q.names.contains(key))?;
        q.weights.tensor(key).map(|_| q.shape(key))
    }

    /// Weight `key` as a dense tensor: a quantized one dequantized (to merge a LoRA into).
    pub fn dense(&self, key: &str) -> Result<Option<Tensor>> {
        if let Some(t) = self.tensors.get(key) {
            return Ok(Some(t.clone()));
        }
        match self.quantized.as_ref().filter(|q| q.names.contains(key)) {
            Some(q) => Ok(Some(q.weights.dequantize_weight(key, q.dtype, &q.device)?)),
            None => Ok(None),
        }
    }
}

/// The quantized linear weights of a GGUF denoiser, by the network's names.
#[derive(Debug, Clone)]
pub struct QuantizedLayers {
    /// The file's weights.
    pub weights: crate::gguf::GgufWeights,
    /// The network's names of the weights multiplied quantized (`[out, in]` each).
    pub names: std::collections::HashSet<String>,
    /// The dtype dequantized copies take.
    pub dtype: DType,
    /// Their device.
    pub device: Device,
}

impl QuantizedLayers {
    /// The layers of `weights` among `names` that it multiplies quantized.
    pub fn new<'a>(
        weights: crate::gguf::GgufWeights,
        names: impl IntoIterator<Item = &'a str>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let names = names
            .into_iter()
            .filter(|n| weights.multiplies_quantized(n))
            .map(str::to_string)
            .collect();
        Self {
            weights,
            names,
            dtype,
            device: device.clone(),
        }
    }

    /// The `[out, in]` shape of the quantized weight `key` (a row slice's rows for fused ones).
    fn shape(&self, key: &str) -> Vec<usize> {
        self.weights.linear_shape(key).unwrap_or_default()
    }
}

/// Every LoRA-able component's weights.
#[derive(Debug, Default)]
pub struct Weights {
    /// In the family's order.
    pub components: Vec<ComponentWeights>,
}

impl Weights {
    /// The component called `name`.
    pub fn get(&self, name: &str) -> Option<&ComponentWeights> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Replacement tensors per component name.
pub type Patches = HashMap<String, HashMap<String, Tensor>>;

/// A model of any family, loaded and ready to run jobs. Cloning is cheap (everything is
/// shared): a job with LoRAs runs on a clone whose networks were rebuilt around merged weights.
#[derive(Debug, Clone)]
pub struct Model {
    /// The family it belongs to.
    pub family: Arc<Family>,
    /// The folder or file it came from.
    pub source: PathBuf,
    /// Text encoders and denoiser.
    pub networks: Arc<dyn Networks>,
    /// The autoencoder.
    pub vae: Vae,
    /// The tiny autoencoder live previews decode with; `None`: the family's latent → RGB map.
    pub preview_vae: Option<Vae>,
    /// The model's own scheduler config; samplers chosen by name start from it.
    pub scheduler_config: SchedulerConfig,
    /// Device of every tensor.
    pub device: Device,
    /// dtype of the text encoders and the denoiser.
    pub dtype: DType,
    /// What the networks were built from, for LoRAs.
    pub weights: Arc<Weights>,
}

impl Model {
    /// Pixels per latent pixel along a side.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.scale_factor()
    }

    /// This model decoding (and encoding) with `vae` instead of its own VAE (`--vae`, a
    /// pack's `vae`): it must work in the model's latent space (same latent channels and
    /// scale factor; a tiny autoencoder trained for another family would not).
    pub fn with_vae(mut self, vae: Vae) -> Result<Self> {
        self.vae = self.same_latent_space(vae, "the VAE")?;
        Ok(self)
    }

    /// This model previewing with the tiny autoencoder `vae` (decoding the latents after a
    /// step), or with the family's latent → RGB map (`None`).
    pub fn with_preview_vae(mut self, vae: Option<Vae>) -> Result<Self> {
        self.preview_vae = match vae {
            Some(v) => Some(self.same_latent_space(v, "the preview autoencoder")?),
            None => None,
        };
        Ok(self)
    }

    /// The live preview of the first image of `latents` `[batch, C, h, w]` (denoiser space):
    /// decoded by [`Model::preview_vae`] (image size), else mapped to RGB by the family's
    /// latent preview (latent size).
    pub fn preview(&self, latents: &Tensor) -> Result<RgbImage> {
        match &self.preview_vae {
            Some(vae) => {
                let pixels = vae.decode(&latents.narrow(0, 0, 1)?)?;
                to_rgb8(&pixels.squeeze(0)?)
            }
            None => self.family.preview.to_rgb(latents),
        }
    }

    fn same_latent_space(&self, vae: Vae, what: &str) -> Result<Vae> {
        let theirs = (vae.latent_channels(), vae.scale_factor());
        let ours = (self.vae.latent_channels(), self.vae.scale_factor());
        if theirs != ours {
            return Err(Error::Config {
                path: self.source.clone(),
                message: format!(
                    "{what} works on {} latent channels at scale factor {}, but {} model \
                     latents have {} channels at scale factor {}: use the autoencoder made \
                     for this family (taesd for SD 1.x/2.x, taesdxl for SDXL, taef1 for FLUX)",
                    theirs.0, theirs.1, self.family.name, ours.0, ours.1
                ),
            });
        }
        Ok(vae)
    }

    /// The side the model was trained at, in pixels: the denoiser's sample size, else the
    /// family's default.
    pub fn native_size(&self) -> usize {
        match self.networks.sample_size() {
            Some(s) => s * self.vae_scale_factor(),
            None => self.family.default_size,
        }
    }

    /// The latents' shape for `batch` images of `width × height` pixels.
    pub fn latent_shape(&self, batch: usize, width: usize, height: usize) -> [usize; 4] {
        let f = self.vae_scale_factor();
        [batch, self.vae.latent_channels(), height / f, width / f]
    }

    /// Whether the denoiser is an inpainting one: it takes the mask and the masked picture's
    /// latents beside the latents (`2 · C + 1` input channels). Any other count than `C` or
    /// `2 · C + 1` is an error naming the model.
    pub fn is_inpainting(&self) -> Result<bool> {
        let latent = self.vae.latent_channels();
        match self.networks.in_channels() {
            c if c == latent => Ok(false),
            c if c == 2 * latent + 1 => Ok(true),
            c => Err(Error::Config {
                path: self.source.clone(),
                message: format!(
                    "the denoiser takes {c} input channels, neither {latent} (the VAE's latent \
                     channels) nor {} (an inpainting model: latents, mask and masked-picture \
                     latents)",
                    2 * latent + 1
                ),
            }),
        }
    }

    /// This model with its networks rebuilt around `patches` (LoRAs).
    pub fn with_weights(&self, patches: &Patches) -> Result<Self> {
        let mut out = self.clone();
        if !patches.is_empty() {
            out.networks = self.networks.with_weights(&self.weights, patches)?;
        }
        Ok(out)
    }
}
