//! A component's view of a weights file: the tensors under a key prefix, or named by a key
//! map, served to model code through candle's [`VarBuilder`]. A diffusers folder gives each
//! component a file of its own (empty prefix); a single-file checkpoint gives every component
//! the same file with its prefix and a map from the component's (diffusers) names to the
//! file's keys, with the few reshapes some layouts need ([`TensorOp`]).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::file::{candle_dtype, SafetensorsFile, WeightsError};
use super::storage::{is_kept, is_kernel_weight, WeightsDtype};

/// How a component tensor is made from a file tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorOp {
    /// As stored.
    Whole,
    /// Rows `start..start + len` of the first dimension (e.g. one of q, k, v from OpenCLIP's
    /// fused `in_proj_weight`).
    Rows {
        /// First row.
        start: usize,
        /// Row count.
        len: usize,
    },
    /// The transpose of a 2-D tensor (e.g. OpenCLIP's `text_projection`).
    Transpose,
    /// Trailing 1-sized dimensions dropped (a 1x1 convolution's `[out, in, 1, 1]` used as a
    /// linear layer's `[out, in]`).
    Squeeze,
    /// The two halves of the first dimension swapped (FLUX's final modulation: BFL stores
    /// `(shift, scale)`, diffusers `(scale, shift)`).
    SwappedHalves,
}

/// Where one component tensor comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The key in the file.
    pub key: String,
    /// What to do with it.
    pub op: TensorOp,
}

/// Component key → file tensor.
pub type KeyMap = HashMap<String, TensorRef>;

/// The tensors of one component in a file.
#[derive(Debug, Clone)]
pub struct WeightSource {
    file: Arc<SafetensorsFile>,
    prefix: String,
    map: Option<Arc<KeyMap>>,
    weights_dtype: WeightsDtype,
}

impl WeightSource {
    /// Every tensor of `file` whose key starts with `prefix`, named without it.
    pub fn new(file: Arc<SafetensorsFile>, prefix: impl Into<String>) -> Self {
        Self {
            file,
            prefix: prefix.into(),
            map: None,
            weights_dtype: WeightsDtype::F32,
        }
    }

    /// The tensors `map` names (component keys to file keys).
    pub fn mapped(file: Arc<SafetensorsFile>, map: KeyMap) -> Self {
        Self {
            file,
            prefix: String::new(),
            map: Some(Arc::new(map)),
            weights_dtype: WeightsDtype::F32,
        }
    }

    /// Opens the file at `path` as one component.
    pub fn open(path: &std::path::Path) -> Result<Self, WeightsError> {
        Ok(Self::new(Arc::new(SafetensorsFile::open(path)?), ""))
    }

    /// This source with its weight matrices and filters held in `weights_dtype` when they are
    /// read for f32 compute on CPU (see [`super::storage`]); by default ([`WeightsDtype::F32`])
    /// every tensor is read in the dtype asked for.
    pub fn with_weights_dtype(mut self, weights_dtype: WeightsDtype) -> Self {
        self.weights_dtype = weights_dtype;
        self
    }

    /// The dtype component tensor `key` is read in when `dtype` is asked for on `device`:
    /// `dtype`, or the held 16-bit type of a kernel weight.
    fn held_dtype(&self, key: &str, file_key: &str, dtype: DType, device: &Device) -> DType {
        let Some(stored) = self.file.info(file_key).and_then(|i| candle_dtype(i.dtype)) else {
            return dtype;
        };
        let held = self.weights_dtype.held(stored);
        let matrix = self
            .shape(key)
            .is_some_and(|dims| is_kernel_weight(key, &dims));
        if matrix && is_kept(held, dtype, device) {
            held
        } else {
            dtype
        }
    }

    /// The underlying file.
    pub fn file(&self) -> &Arc<SafetensorsFile> {
        &self.file
    }

    /// The component's keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = match &self.map {
            Some(map) => map.keys().cloned().collect(),
            None => self
                .file
                .names()
                .into_iter()
                .filter_map(|k| k.strip_prefix(self.prefix.as_str()).map(str::to_string))
                .collect(),
        };
        keys.sort_unstable();
        keys
    }

    /// Whether the component has `key`.
    pub fn contains(&self, key: &str) -> bool {
        match &self.map {
            Some(map) => map.contains_key(key),
            None => self.file.info(&format!("{}{key}", self.prefix)).is_some(),
        }
    }

    /// The shape `key` will have once read (after its [`TensorOp`]).
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let r = self.resolve(key)?;
        let stored = self.file.info(&r.key)?.shape.clone();
        Some(match r.op {
            TensorOp::Whole => stored,
            TensorOp::Rows { len, .. } => {
                let mut s = stored;
                if let Some(first) = s.first_mut() {
                    *first = len;
                }
                s
            }
            TensorOp::Transpose => stored.into_iter().rev().collect(),
            TensorOp::Squeeze => squeezed(&stored),
            TensorOp::SwappedHalves => stored,
        })
    }

    fn resolve(&self, key: &str) -> Option<TensorRef> {
        match &self.map {
            Some(map) => map.get(key).cloned(),
            None => Some(TensorRef {
                key: format!("{}{key}", self.prefix),
                op: TensorOp::Whole,
            }),
        }
    }

    /// Reads component tensor `key` in `dtype` on `device`, in the memory layout the CPU
    /// kernels multiply fastest ([`gemm_layout`]).
    pub fn read(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor, WeightsError> {
        let r = self.resolve(key).ok_or_else(|| WeightsError::Tensor {
            path: self.file.path().to_path_buf(),
            tensor: key.to_string(),
            message: "not found in the component's key map".into(),
        })?;
        let held = self.held_dtype(key, &r.key, dtype, device);
        let op_error = |e: candle_core::Error| WeightsError::Tensor {
            path: self.file.path().to_path_buf(),
            tensor: r.key.clone(),
            message: format!("{:?} for `{key}`: {e}", r.op),
        };
        self.file.read_with(&r.key, held, device, |t| {
            let t = match r.op {
                TensorOp::Whole => t,
                TensorOp::Rows { start, len } => t.narrow(0, start, len).map_err(op_error)?,
                TensorOp::Transpose => t.t().map_err(op_error)?,
                TensorOp::Squeeze => {
                    let dims = squeezed(t.dims());
                    t.reshape(dims).map_err(op_error)?
                }
                TensorOp::SwappedHalves => swap_halves(&t).map_err(op_error)?,
            };
            gemm_layout(key, t).map_err(|e| WeightsError::Tensor {
                path: self.file.path().to_path_buf(),
                tensor: key.to_string(),
                message: e.to_string(),
            })
        })
    }

    /// Every tensor of the component, read once: the networks are built from these very
    /// tensors ([`VarBuilder::from_tensors`]), so keeping the map (to merge LoRAs per job)
    /// costs no extra memory. The tensors are read by all of rayon's threads: a read is mostly
    /// page faults (the file's pages mapped, a copy's pages zeroed by the kernel), which run
    /// in parallel.
    pub fn read_all(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>, WeightsError> {
        self.keys()
            .into_par_iter()
            .map(|k| {
                let t = self.read(&k, dtype, device)?;
                Ok((k, t))
            })
            .collect()
    }

    /// A [`VarBuilder`] reading this component's tensors on demand.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

/// `t` with the two halves of its first dimension swapped.
pub fn swap_halves(t: &Tensor) -> candle_core::Result<Tensor> {
    let half = t.dim(0)? / 2;
    Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)
}

fn squeezed(dims: &[usize]) -> Vec<usize> {
    let mut d = dims.to_vec();
    while d.len() > 2 && d.last() == Some(&1) {
        d.pop();
    }
    d
}

/// `tensor` (the weight called `name`) in the memory layout the CPU kernels multiply fastest:
/// a linear layer's matrix `[out, in]` is kept as the transposed view of contiguous
/// `[in, out]` storage, which the GEMM streams without repacking it on every call (up to 2x
/// faster for the UNet's feed-forward layers). The tensor's shape and values are unchanged;
/// only its strides differ. Embedding tables (`*embedding.weight`, read by row) and every
/// other rank stay as stored; so do tensors on other devices.
pub fn gemm_layout(name: &str, tensor: Tensor) -> candle_core::Result<Tensor> {
    if tensor.rank() == 2 && tensor.device().is_cpu() && !name.ends_with("embedding.weight") {
        crate::kernels::transpose::transposed_storage(&tensor)
    } else {
        Ok(tensor)
    }
}

fn candle_error(e: WeightsError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string()).bt()
}

impl candle_nn::var_builder::SimpleBackend for WeightSource {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if !self.contains(name) {
            return Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt());
        }
        let tensor = self.read(name, dtype, dev).map_err(candle_error)?;
        if tensor.shape() != &s {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt())?
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name, dtype, dev).map_err(candle_error)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}
