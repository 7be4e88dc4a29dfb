//! [`GgufWeights`]: a denoiser's weights in a GGUF file, served to model code two ways: as a
//! [`VarBuilder`] that dequantizes each tensor once when the model asks for it (norms,
//! convolutions, embeddings, and linear layers kept dense), and as candle [`QMatMul`]s built
//! from the raw blocks for linear layers that multiply quantized.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use super::error::GgufError;
use super::naming::{denoiser_prefix, Architecture};
use super::reader::{GgufFile, TensorInfo};
use crate::weights::gemm_layout;

/// Maps the name a model asks for to the name in the file (after the denoiser prefix).
type Rename = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Which part of its file tensor a model's weight is, for [`GgufWeights::qmatmul`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// All of it.
    Whole,
    /// Rows `start..start + len` (a part of a fused matrix, e.g. FLUX's `qkv`).
    Rows {
        /// First row.
        start: usize,
        /// Row count.
        len: usize,
    },
    /// A rearranged copy: always used dense.
    Dense,
}

/// Maps a model's weight name to its [`Slice`].
type Slices = Arc<dyn Fn(&str) -> Slice + Send + Sync>;

/// The denoiser weights of a GGUF file.
///
/// Names given to its methods are the model's names: each is passed through the rename
/// function if one is set ([`with_rename`](Self::with_rename)), then the file's denoiser prefix
/// (`model.diffusion_model.`, see [`super::naming`]) is put back in front.
#[derive(Clone)]
pub struct GgufWeights {
    file: Arc<GgufFile>,
    architecture: Architecture,
    prefix: Option<&'static str>,
    rename: Option<Rename>,
    slices: Option<Slices>,
    /// Model weights served dense from elsewhere (LoRA-patched), never quantized.
    dense: Arc<HashSet<String>>,
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWeights")
            .field("path", &self.file.path())
            .field("architecture", &self.architecture)
            .field("prefix", &self.prefix)
            .field("renamed", &self.rename.is_some())
            .finish()
    }
}

impl GgufWeights {
    /// Opens `path` and checks that it holds one of the `expected` architectures (any, if
    /// `expected` is empty).
    pub fn open(path: &Path, expected: &[Architecture]) -> Result<Self, GgufError> {
        Self::new(Arc::new(GgufFile::open(path)?), expected)
    }

    /// The denoiser weights of an opened file, checked as in [`open`](Self::open).
    pub fn new(file: Arc<GgufFile>, expected: &[Architecture]) -> Result<Self, GgufError> {
        let architecture = if expected.is_empty() {
            file.architecture()?
                .map(|(a, _)| a)
                .unwrap_or_else(|| Architecture::Other("unknown".into()))
        } else {
            file.expect_architecture(expected)?
        };
        let prefix = denoiser_prefix(file.tensors().iter().map(|t| t.name.as_str()));
        Ok(Self {
            file,
            architecture,
            prefix,
            rename: None,
            slices: None,
            dense: Arc::default(),
        })
    }

    /// Looks model names up under `rename(name)` instead (e.g. a diffusers-layout model over an
    /// LDM-layout file: `rename` maps diffusers names to LDM names).
    pub fn with_rename(mut self, rename: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.rename = Some(Arc::new(rename));
        self
    }

    /// These weights where the model's linear weights may be row slices of the file's tensors
    /// (after the rename): `slices` says which part each weight is; quantized matmuls are then
    /// built from those rows' blocks alone.
    pub fn with_slices(mut self, slices: impl Fn(&str) -> Slice + Send + Sync + 'static) -> Self {
        self.slices = Some(Arc::new(slices));
        self
    }

    /// These weights where the model's weights `names` are served dense by the model's own
    /// [`VarBuilder`] instead ([`qmatmul`](Self::qmatmul) gives `None` for them): a job's
    /// LoRA-patched copies of quantized layers.
    pub fn with_dense(mut self, names: impl IntoIterator<Item = String>) -> Self {
        let mut dense: HashSet<String> = (*self.dense).clone();
        dense.extend(names);
        self.dense = Arc::new(dense);
        self
    }

    /// Which part of its file tensor the model's weight `name` is.
    fn slice(&self, name: &str) -> Slice {
        if self.dense.contains(name) {
            return Slice::Dense;
        }
        self.slices.as_ref().map_or(Slice::Whole, |f| f(name))
    }

    /// Whether [`qmatmul`](Self::qmatmul) multiplies the model's weight `name` quantized
    /// (else the model reads it dense, dequantized).
    pub fn multiplies_quantized(&self, name: &str) -> bool {
        let slice = self.slice(name);
        self.tensor(name).is_some_and(|info| {
            let in_dim = without_trailing_ones(&info.shape).get(1).copied();
            slice != Slice::Dense
                && info.ty.candle_matmul_dtype().is_some()
                && in_dim.is_some_and(|d| d % info.ty.block_size() == 0)
        })
    }

    /// The file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The architecture the file holds.
    pub fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    /// The denoiser prefix of the file's names, if it has one.
    pub fn prefix(&self) -> Option<&'static str> {
        self.prefix
    }

    /// The denoiser's tensor names as stored, without the prefix (before any rename): what a
    /// loader inspects to tell the layout and configuration.
    pub fn names(&self) -> Vec<&str> {
        let names = self.file.tensors().iter().map(|t| t.name.as_str());
        match self.prefix {
            Some(p) => names.filter_map(|n| n.strip_prefix(p)).collect(),
            None => names.collect(),
        }
    }

    /// The name in the file of the model's tensor `name`.
    pub fn file_name(&self, name: &str) -> String {
        let renamed = match &self.rename {
            Some(rename) => rename(name),
            None => name.to_string(),
        };
        match self.prefix {
            Some(p) => format!("{p}{renamed}"),
            None => renamed,
        }
    }

    /// The model's tensor `name`, if the file has it.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.file.tensor(&self.file_name(name))
    }

    fn require(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        let file_name = self.file_name(name);
        self.file
            .tensor(&file_name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.file.path().to_path_buf(),
                tensor: file_name.clone(),
                hint: if file_name == name {
                    String::new()
                } else {
                    format!(" (looked up for the model's {name:?})")
                },
            })
    }

    /// The model's tensor `name` dequantized to `dtype` on `device`.
    pub fn dequantize(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, GgufError> {
        self.file
            .dequantize_as(&self.file_name(name), dtype, device)
    }

    /// The `[out, in]` shape of the model's linear weight `name`: the stored shape without
    /// trailing 1s, with a row slice's row count for a part of a fused tensor.
    pub fn linear_shape(&self, name: &str) -> Option<Vec<usize>> {
        let info = self.tensor(name)?;
        let mut dims = without_trailing_ones(&info.shape).to_vec();
        if let (Slice::Rows { len, .. }, Some(rows)) = (
            self.slices.as_ref().map_or(Slice::Whole, |f| f(name)),
            dims.first_mut(),
        ) {
            *rows = len;
        }
        Some(dims)
    }

    /// The model's linear weight `name` (`[out, in]`) dequantized to `dtype`: its rows of the
    /// file tensor when it is a slice of a fused one, in the layout the dense kernels use.
    /// What a LoRA is merged into.
    pub fn dequantize_weight(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, GgufError> {
        let info = self.require(name)?;
        let candle = |source: candle_core::Error| GgufError::Candle {
            path: self.file.path().to_path_buf(),
            tensor: info.name.clone(),
            source: Box::new(source),
        };
        let whole = self.file.dequantize_as(&info.name, dtype, device)?;
        let dims = without_trailing_ones(whole.dims()).to_vec();
        let whole = whole.reshape(dims).map_err(candle)?;
        let part = match self.slices.as_ref().map_or(Slice::Whole, |f| f(name)) {
            Slice::Rows { start, len } => whole.narrow(0, start, len).map_err(candle)?,
            _ => whole,
        };
        gemm_layout(name, part).map_err(candle)
    }

    /// A quantized matmul over the raw blocks of the linear weight `name` (`[out_dim, in_dim]`,
    /// or a 1x1 convolution `[out_dim, in_dim, 1, 1]`), or `None` when the weight should be
    /// used dense: stored as a float, in a type candle's quantized matmul lacks (Q8_K), or
    /// with rows that do not start on block boundaries (ComfyUI-GGUF's reshaped tensors).
    pub fn qmatmul(
        &self,
        name: &str,
        out_dim: usize,
        in_dim: usize,
        device: &Device,
    ) -> Result<Option<QMatMul>, GgufError> {
        let info = self.require(name)?;
        let slice = self.slice(name);
        let (start, rows) = match slice {
            Slice::Dense => return Ok(None),
            Slice::Whole => (0, out_dim),
            Slice::Rows { start, len } if len == out_dim => {
                (start, info.shape.first().copied().unwrap_or(0))
            }
            Slice::Rows { len, .. } => (0, len),
        };
        if without_trailing_ones(&info.shape) != [rows, in_dim] || start + out_dim > rows {
            return Err(GgufError::Tensor {
                path: self.file.path().to_path_buf(),
                tensor: info.name.clone(),
                what: format!(
                    "has shape {:?}, the model expects a linear weight [{out_dim}, {in_dim}]",
                    info.shape
                ),
            });
        }
        let Some(dtype) = info.ty.candle_matmul_dtype() else {
            return Ok(None);
        };
        if in_dim % info.ty.block_size() != 0 {
            return Ok(None);
        }
        // candle reinterprets the bytes as blocks, which needs them aligned: read into an
        // over-allocated buffer at an aligned offset (candle copies them into its storage).
        let size = info.size as usize;
        let mut buf = vec![0u8; size + 16];
        let at = (16 - buf.as_ptr() as usize % 16) % 16;
        self.file
            .read_raw_into(&info.name, &mut buf[at..at + size])?;
        // Rows are whole blocks (in_dim is a multiple of the block size): a row range is a
        // byte range. Moving it to the front keeps the buffer aligned.
        let row_bytes = size / rows;
        let size = out_dim * row_bytes;
        buf.copy_within(at + start * row_bytes..at + start * row_bytes + size, at);
        let candle = |source: candle_core::Error| GgufError::Candle {
            path: self.file.path().to_path_buf(),
            tensor: info.name.clone(),
            source: Box::new(source),
        };
        let storage = QStorage::from_data(Cow::Borrowed(&buf[at..at + size]), device, dtype)
            .map_err(candle)?;
        let qtensor = QTensor::new(storage, (out_dim, in_dim)).map_err(candle)?;
        QMatMul::from_qtensor(qtensor).map(Some).map_err(candle)
    }

    /// A [`VarBuilder`] over the denoiser's tensors, each dequantized to `dtype` when asked for.
    /// A shape that differs from the stored one only by trailing 1s (a 1x1 convolution kept as
    /// `[out, in, 1, 1]` where the model has a linear layer, or the reverse) is reshaped.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(self.clone())), dtype, device.clone())
    }
}

/// `dims` without its trailing 1s.
fn without_trailing_ones(dims: &[usize]) -> &[usize] {
    let end = dims.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
    &dims[..end]
}

/// The [`VarBuilder`] backend of [`GgufWeights::var_builder`].
struct Backend(GgufWeights);

impl Backend {
    fn read(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if self.0.tensor(name).is_none() {
            return Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt());
        }
        self.0
            .dequantize(name, dtype, dev)
            .map_err(candle_core::Error::wrap)
    }
}

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut tensor = self.read(name, dtype, dev)?;
        if tensor.shape() != &s {
            if without_trailing_ones(tensor.dims()) != without_trailing_ones(s.dims()) {
                return Err(candle_core::Error::UnexpectedShape {
                    msg: format!(
                        "shape mismatch for {name} ({:?} in {})",
                        self.0.file_name(name),
                        self.0.file.path().display()
                    ),
                    expected: s,
                    got: tensor.shape().clone(),
                }
                .bt());
            }
            tensor = tensor.reshape(s)?;
        }
        gemm_layout(name, tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        gemm_layout(name, self.read(name, dtype, dev)?)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensor(name).is_some()
    }
}
