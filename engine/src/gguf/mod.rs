//! GGUF files: reading ggml-quantized diffusion models (FLUX transformers, SD/SDXL UNets) as
//! written by ComfyUI-GGUF and stable-diffusion.cpp, and writing them (`beeswax quantize`).
//!
//! - [`GgufFile`] opens a file (GGUF v2/v3), checks every field a hostile or truncated file
//!   could get wrong, and gives the metadata, the tensor list (names, PyTorch-order shapes,
//!   types) and each tensor dequantized on request ([`GgufFile::dequantize`]), read with one
//!   positioned read. Dequantization is bit-exact with the `gguf` Python package for F32, F16,
//!   BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (and decodes Q8_K);
//!   any other type is an error naming the tensor and the type.
//! - [`GgufWeights`] is a file's denoiser for model code: a [`candle_nn::VarBuilder`] that
//!   dequantizes tensors once at load, and [`GgufWeights::qmatmul`] for linear layers that
//!   multiply the quantized blocks ([`crate::models::linear::Linear`]).
//! - [`naming`] documents the tensor names accepted, strips known prefixes and tells
//!   architectures; [`GgufFile::expect_architecture`] refuses a file of another model.
//! - [`GgufWriter`], [`quantize()`] and [`quantize_file`] write files: ggml's quantization
//!   (bit-exact with `gguf.quants.quantize` for the types it implements, ports of ggml's
//!   reference encoders for the K-quants) with the per-tensor [`rules`] of ComfyUI-GGUF and
//!   stable-diffusion.cpp.

mod convert;
pub mod dequantize;
mod error;
mod header;
mod k_quants;
pub mod metadata;
pub mod naming;
mod quantize;
mod reader;
pub mod rules;
mod types;
mod weights;
mod writer;

pub use convert::{
    quantize_file, quantize_unet_folder, QuantizeOptions, QuantizeReport, QUANTIZATION_VERSION,
};
pub use error::GgufError;
pub use metadata::{Array, Value};
pub use naming::{detect_architecture, strip_known_prefix, Architecture};
pub use quantize::quantize;
pub use reader::{ArchitectureSource, GgufFile, TensorInfo, DEFAULT_ALIGNMENT, ORIG_SHAPE_KEY};
pub use types::{GgmlType, UnknownTypeName, DEQUANTIZABLE, QUANTIZE_TARGETS};
pub use weights::{GgufWeights, Slice};
pub use writer::{GgufWriter, PlannedTensor, WriteError, ALIGNMENT};
