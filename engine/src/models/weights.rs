//! Loading weights: safetensors files behind a [`VarBuilder`], each tensor read once.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// Opens a safetensors file as a [`VarBuilder`] that converts to `dtype` on load.
///
/// Each tensor is read from the file with a positioned read when the model asks for it, into
/// memory the model then owns. (The name is historical: an earlier version memory-mapped the
/// file, which made every weight count twice in the process's resident memory while loading,
/// once as mapped file pages and once as the loaded copy.) Only safetensors are accepted
/// (pickles are refused before we get here, see [`crate::model_files`]), so reading the file
/// executes nothing from it.
pub fn mmap(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let weights_error = |source| Error::Weights {
        path: path.to_path_buf(),
        source,
    };
    let file = SafetensorsFile::open(path).map_err(weights_error)?;
    Ok(VarBuilder::from_backend(
        Box::new(file),
        dtype,
        device.clone(),
    ))
}

/// `tensor` (the weight called `name`) in the memory layout the CPU kernels multiply fastest:
/// a linear layer's matrix `[out, in]` is kept as the transposed view of contiguous
/// `[in, out]` storage, which the GEMM streams without repacking it on every call (up to 2x
/// faster for the UNet's feed-forward layers). The tensor's shape and values are unchanged;
/// only its strides differ. Embedding tables (`*embedding.weight`, read by row) and every
/// other rank stay as stored; so do tensors on other devices.
pub fn gemm_layout(name: &str, tensor: Tensor) -> candle_core::Result<Tensor> {
    if tensor.rank() == 2 && tensor.device().is_cpu() && !name.ends_with("embedding.weight") {
        tensor.t()?.contiguous()?.t()
    } else {
        Ok(tensor)
    }
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, serde::Deserialize)]
struct Entry {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// A safetensors file read tensor by tensor (`pread`), without mapping it.
#[derive(Debug)]
struct SafetensorsFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    data_start: u64,
    entries: std::collections::HashMap<String, Entry>,
}

impl SafetensorsFile {
    fn open(path: &Path) -> candle_core::Result<Self> {
        use std::os::unix::fs::FileExt;
        let bad = |what: String| candle_core::Error::Msg(format!("{}: {what}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0)
            .map_err(|e| bad(format!("not a safetensors file (no header length): {e}")))?;
        let header_len = u64::from_le_bytes(len);
        let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
            return Err(bad(format!(
                "header length {header_len} does not fit the file"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| bad(format!("cannot read header: {e}")))?;
        let raw: std::collections::HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("bad header: {e}")))?;
        let data_start = 8 + header_len;
        let mut entries = std::collections::HashMap::new();
        for (name, value) in raw {
            if name == "__metadata__" {
                continue;
            }
            let entry: Entry = serde_json::from_value(value)
                .map_err(|e| bad(format!("bad header entry {name:?}: {e}")))?;
            let (start, end) = entry.data_offsets;
            if start > end || data_start + end as u64 > file_len {
                return Err(bad(format!("tensor {name:?} lies outside the file")));
            }
            entries.insert(name, entry);
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            data_start,
            entries,
        })
    }

    fn read(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        use std::os::unix::fs::FileExt;
        let entry = self.entries.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let (start, end) = entry.data_offsets;
        let mut bytes = vec![0u8; end - start];
        self.file
            .read_exact_at(&mut bytes, self.data_start + start as u64)
            .map_err(|e| {
                candle_core::Error::Msg(format!("{}: reading {name}: {e}", self.path.display()))
            })?;
        let stored = match entry.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::I64 => DType::I64,
            safetensors::Dtype::U32 => DType::U32,
            safetensors::Dtype::U8 => DType::U8,
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "{}: tensor {name} has unsupported dtype {other:?}",
                    self.path.display()
                )))
            }
        };
        let want: usize = entry.shape.iter().product::<usize>() * stored.size_in_bytes();
        if want != bytes.len() {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor {name} has {} bytes, its shape {:?} needs {want}",
                self.path.display(),
                bytes.len(),
                entry.shape
            )));
        }
        let tensor = Tensor::from_raw_buffer(&bytes, stored, &entry.shape, dev)?.to_dtype(dtype)?;
        gemm_layout(name, tensor)
    }
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsFile {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.read(name, dtype, dev)?;
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
        self.read(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// Attaches the weights file to an error raised while building a model from it (missing
/// tensor, wrong shape: candle's message names the tensor and both shapes).
pub fn in_file<T>(path: &Path, result: candle_core::Result<T>) -> Result<T> {
    result.map_err(|source| Error::Weights {
        path: path.to_path_buf(),
        source,
    })
}
