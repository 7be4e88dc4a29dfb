//! The crate's error type. Each domain module owns a `thiserror` enum with messages that name
//! the file, field or value at fault; this enum gathers them so callers can use `?` throughout.

use std::path::PathBuf;

/// Any error beeswax reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model pack manifest could not be read or is invalid.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// A Hugging Face hub repository could not be resolved.
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// A model folder is missing a file or holds one we will not read.
    #[error(transparent)]
    ModelFiles(#[from] crate::model_files::ModelFilesError),
    /// The tokenizer could not be loaded or failed on a prompt.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// A prompt or textual-inversion embedding could not be read.
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
    /// A scheduler could not be built or stepped.
    #[error(transparent)]
    Scheduler(#[from] crate::schedulers::SchedulerError),
    /// A LoRA could not be found, read, matched or applied.
    #[error(transparent)]
    Lora(Box<crate::lora::LoraError>),
    /// A GGUF file could not be read, is of another model, or could not be written.
    #[error(transparent)]
    Gguf(Box<crate::gguf::GgufError>),
    /// A picture or mask could not be read or does not fit the job.
    #[error(transparent)]
    Image(#[from] crate::image_in::ImageError),
    /// A `config.json` style file could not be parsed.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What was wrong, naming the field.
        message: String,
    },
    /// A weights file does not fit the architecture its config describes.
    #[error("{path}: {source}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// Candle's error, which names the tensor and both shapes.
        source: candle_core::Error,
    },
    /// A user-supplied value is outside what is allowed.
    #[error("invalid {name} {value}: {allowed}")]
    InvalidArgument {
        /// The flag or field.
        name: String,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A weights file could not be opened or read.
    #[error(transparent)]
    WeightsFile(#[from] crate::weights::WeightsError),
    /// An extension (a plugin's processor) failed on a job's data.
    #[error("{kind} {name} failed: {message}")]
    Extension {
        /// `pre-processor` or `post-processor`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What it reported.
        message: String,
    },
    /// A stage produced NaN or infinite values (NaN weights, or a half-precision overflow).
    #[error(
        "the {what} are not finite after {stage} ({count} NaN or infinite values): the \
         model's weights hold NaN or overflow in this precision; check the weights file, or \
         run in f32 (`--dtype f32`)"
    )]
    NonFinite {
        /// `latents` or `pixels`.
        what: &'static str,
        /// `denoising` or `decoding`.
        stage: &'static str,
        /// How many values are not finite.
        count: usize,
    },
    /// The job was cancelled while running.
    #[error("the job was cancelled")]
    Cancelled,
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidArgument`] for flag or field `name`.
    pub fn invalid(name: &str, value: impl ToString, allowed: impl ToString) -> Self {
        Error::InvalidArgument {
            name: name.to_string(),
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }
}
