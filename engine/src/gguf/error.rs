//! What can go wrong reading, checking, writing or quantizing a GGUF file. Every message names
//! the file, and the tensor or metadata key where there is one.

use std::path::PathBuf;

use super::types::GgmlType;

/// An error from the [`gguf`](super) module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file does not start with the `GGUF` magic.
    #[error("{path}: not a GGUF file (it starts with {found:?}, a GGUF file with \"GGUF\")")]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// The first bytes found.
        found: String,
    },
    /// The GGUF version is one beeswax does not read.
    #[error("{path}: GGUF version {version} is not supported ({hint})")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version field as read (little-endian).
        version: u32,
        /// What to do about it.
        hint: &'static str,
    },
    /// The header is inconsistent (a length, count or offset that cannot be right).
    #[error("{path}: malformed GGUF header at byte {offset}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Where in the file the problem was found.
        offset: u64,
        /// What is wrong, naming the key or tensor.
        what: String,
    },
    /// A tensor's entry is inconsistent (shape, type, offset or size).
    #[error("{path}: tensor {tensor:?}: {what}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        what: String,
    },
    /// A tensor is stored in a ggml type beeswax cannot decode.
    #[error(
        "{path}: tensor {tensor:?} is stored as {ty}, which beeswax cannot dequantize \
         (supported: {supported}); re-quantize the model with one of those types, \
         e.g. `beeswax quantize model.safetensors out.gguf --type q8_0`"
    )]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The tensor's type.
        ty: GgmlType,
        /// The types that are supported.
        supported: &'static str,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: no tensor {tensor:?} in this GGUF file{hint}")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The name looked for.
        tensor: String,
        /// Extra guidance (may be empty).
        hint: String,
    },
    /// A metadata value has the wrong type or an impossible value.
    #[error("{path}: metadata {key:?}: {what}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// The file holds a model of another architecture than the one being loaded.
    #[error(
        "{path}: this GGUF file holds a {found} model ({how}), but a {expected} model is \
         needed here; pass the GGUF of the right model"
    )]
    Architecture {
        /// The file.
        path: PathBuf,
        /// The architecture found.
        found: String,
        /// How it was determined (`general.architecture`, or the tensor names).
        how: String,
        /// The architectures accepted, as "a or b".
        expected: String,
    },
    /// Values cannot be quantized as asked.
    #[error("{path}: tensor {tensor:?}: cannot store as {ty}: {what}")]
    Quantize {
        /// The input file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The target type.
        ty: GgmlType,
        /// Why.
        what: String,
    },
    /// The input of `quantize` is not usable (not safetensors, unknown architecture, ...).
    #[error("{path}: {what}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        what: String,
    },
    /// A tensor operation failed while building a tensor.
    #[error("{path}: tensor {tensor:?}: {source}")]
    Candle {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// candle's error.
        source: Box<candle_core::Error>,
    },
}

impl From<GgufError> for crate::Error {
    fn from(e: GgufError) -> Self {
        crate::Error::Gguf(Box::new(e))
    }
}
