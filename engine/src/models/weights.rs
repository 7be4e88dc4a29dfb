//! Loading weights: memory-mapped safetensors behind a [`VarBuilder`], loaded once.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// Memory-maps a safetensors file as a [`VarBuilder`] that converts to `dtype` on load.
///
/// Only safetensors are accepted (pickles are refused before we get here, see
/// [`crate::model_files`]), so mapping the file executes nothing from it.
#[allow(unsafe_code)]
pub fn mmap(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the file is mapped read-only; like every mmap user we rely on it not being
    // truncated or rewritten while the model is loaded, which the docs ask of operators.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device) }.map_err(|source| {
        Error::Weights {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Attaches the weights file to an error raised while building a model from it (missing
/// tensor, wrong shape: candle's message names the tensor and both shapes).
pub fn in_file<T>(path: &Path, result: candle_core::Result<T>) -> Result<T> {
    result.map_err(|source| Error::Weights {
        path: path.to_path_buf(),
        source,
    })
}
