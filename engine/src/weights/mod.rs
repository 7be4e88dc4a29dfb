//! Weights: the one safetensors reader of beeswax ([`SafetensorsFile`], header checked once)
//! and the component views model code loads from ([`WeightSource`]: a key prefix, or a key map
//! for original-layout single files). Model weights, LoRA files and embeddings are all read
//! through it.

mod file;
pub mod mapping;
mod source;
mod storage;

use std::path::Path;

pub use file::{candle_dtype, SafetensorsFile, TensorInfo, WeightsError};
pub use source::{gemm_layout, swap_halves, KeyMap, TensorOp, TensorRef, WeightSource};
pub use storage::{is_kept, is_kernel_weight, tensors_var_builder, WeightsDtype};

/// Attaches the weights file to an error raised while building a model from it (missing
/// tensor, wrong shape: candle's message names the tensor and both shapes).
pub fn in_file<T>(path: &Path, result: candle_core::Result<T>) -> crate::Result<T> {
    result.map_err(|source| crate::Error::Weights {
        path: path.to_path_buf(),
        source,
    })
}

/// The safetensors file at `path` as a VarBuilder over all its tensors (keys as written).
pub fn var_builder(
    path: &Path,
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> Result<candle_nn::VarBuilder<'static>, WeightsError> {
    WeightSource::open(path).map(|s| s.var_builder(dtype, device))
}
