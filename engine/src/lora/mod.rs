//! LoRAs: low-rank weight changes from the community, applied per job on a loaded model.
//!
//! * [`file`] reads a LoRA safetensors file in any of the common layouts: kohya/sd-scripts
//!   (`lora_unet_*`, `lora_te_*`, `.alpha`), diffusers/PEFT (`unet.*.lora_A/lora_B`,
//!   `text_encoder.*`, alphas in the `lora_adapter_metadata`), the older diffusers attention
//!   processor names, and LyCORIS (LoCon with Tucker `lora_mid`, LoHa, LoKr, full `diff`).
//! * [`keys`] maps each module of the file to a weight of the loaded UNet or text encoder.
//! * [`delta`] turns one module into its weight change dW, with LyCORIS' formulas.
//! * [`merge`] sums `weight x alpha / rank x dW` over the job's LoRAs and builds patched copies
//!   of the networks that share every untouched tensor with the base model ([`apply`]).
//! * [`prompt`] parses AUTOMATIC1111's `<lora:name:weight>` tags out of prompts.
//! * [`job`] gathers a job's LoRAs (prompt tags, then flags or request fields) for the CLI and
//!   the HTTP service alike.
//! * [`catalog`] holds the `[[lora]]` and `[[lora_set]]` manifest entries (read by
//!   [`manifest`]) and resolves the names (or file paths) a job asks for, checking weights
//!   against a configurable range, with a cache of parsed files.
//!
//! Why merge per job instead of patching in place: the base weights stay in memory as a map of
//! tensors (the networks are built from it, so it costs nothing extra), and a job with LoRAs
//! gets networks built from a copy of that map in which only the affected tensors are replaced.
//! Nothing shared is ever modified, so the next job (with other LoRAs, or none) is correct by
//! construction, concurrent jobs on the same model cannot disturb each other, and the cost of a
//! switch is computing the merged tensors of the affected layers plus rebuilding the module
//! tree around `Arc`-shared tensors.

pub mod catalog;
pub mod delta;
pub mod file;
pub mod job;
pub mod keys;
pub mod manifest;
pub mod merge;
pub mod prompt;

use std::path::PathBuf;

pub use catalog::{LoraCatalog, LoraRequest, ResolvedLora, WeightRange};
pub use file::LoraFile;
pub use job::{prepare_job, JobLoras};
pub use merge::{apply, merged_weights, merged_weights_with, Applied, MatchReport, WeightedLora};
pub use prompt::{extract_lora_tags, lora_tag};

/// Errors reading, matching or applying LoRAs.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// The file could not be read as safetensors (missing, truncated, corrupted).
    #[error(
        "{}: not a readable LoRA safetensors file ({message}); check the path, or download the \
         file again if it is truncated or corrupted",
        path.display()
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A module of the file is incomplete or of a kind we cannot apply.
    #[error("{}: LoRA module `{module}`: {message}", path.display())]
    BadModule {
        /// The file.
        path: PathBuf,
        /// The module name as written in the file.
        module: String,
        /// What is wrong.
        message: String,
    },
    /// No key of the file names a layer of the model.
    #[error(
        "{}: none of its {count} keys matches a layer of this model (e.g. {}): it is not a \
         LoRA for a Stable Diffusion 1.x/2.x UNet or text encoder in a layout beeswax reads \
         (kohya, diffusers/PEFT, LyCORIS)",
        path.display(),
        examples.join(", ")
    )]
    NoMatch {
        /// The file.
        path: PathBuf,
        /// Number of keys.
        count: usize,
        /// A few of them.
        examples: Vec<String>,
    },
    /// The LoRA's change does not have the shape of the weight it names: another model family.
    #[error(
        "{}: `{}` has shape {:?}, which makes a change of {:?} for model weight `{}` of shape \
         {:?}: this LoRA was made for another model family or size; use a LoRA trained for \
         this model{}",
        .0.path.display(), .0.tensor, .0.lora_shape, .0.delta_shape, .0.target, .0.target_shape,
        if .0.family.is_empty() { String::new() } else { format!(" (family `{}`)", .0.family) }
    )]
    ShapeMismatch(Box<ShapeMismatch>),
    /// A LoRA name is neither a catalog entry, a set, nor an existing file.
    #[error(
        "unknown LoRA `{name}`: known LoRAs: {}; known LoRA sets: {}; or give the path of a \
         .safetensors file",
        list_or_none(known),
        list_or_none(sets)
    )]
    UnknownName {
        /// The name asked for.
        name: String,
        /// The LoRA names the manifests declare.
        known: Vec<String>,
        /// The LoRA set names.
        sets: Vec<String>,
    },
    /// A weight is outside the allowed range.
    #[error("LoRA `{name}`: weight {weight} is outside the allowed range {min} to {max}")]
    WeightOutOfRange {
        /// The LoRA.
        name: String,
        /// The weight asked for.
        weight: f64,
        /// Smallest allowed.
        min: f64,
        /// Largest allowed.
        max: f64,
    },
    /// A file's SHA-256 differs from the one its manifest entry declares.
    #[error(
        "{}: SHA-256 is {actual} but the manifest entry for LoRA `{name}` says {expected}: the \
         file changed or is corrupted; download it again or update `sha256`",
        path.display()
    )]
    HashMismatch {
        /// The LoRA name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Declared.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// A `--lora` or `loras` value could not be parsed.
    #[error("invalid LoRA spec `{spec}`: {message}")]
    BadSpec {
        /// The text given.
        spec: String,
        /// What is wrong and the expected form.
        message: String,
    },
    /// A quantized weight could not be dequantized to merge a LoRA into it.
    #[error("cannot merge a LoRA into `{key}` of `{component}`: {message}")]
    Weights {
        /// The component.
        component: String,
        /// The weight.
        key: String,
        /// What went wrong (names the file and tensor).
        message: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// What [`LoraError::ShapeMismatch`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeMismatch {
    /// The file.
    pub path: PathBuf,
    /// The LoRA tensor.
    pub tensor: String,
    /// Its shape.
    pub lora_shape: Vec<usize>,
    /// The change it makes.
    pub delta_shape: Vec<usize>,
    /// The model weight.
    pub target: String,
    /// Its shape.
    pub target_shape: Vec<usize>,
    /// The model's family (empty when not known where the mismatch was found).
    pub family: String,
}

impl From<LoraError> for crate::Error {
    fn from(e: LoraError) -> Self {
        crate::Error::Lora(Box::new(e))
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}
