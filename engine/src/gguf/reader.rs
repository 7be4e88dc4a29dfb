//! [`GgufFile`]: an opened, checked GGUF file whose tensors are read one at a time with
//! positioned reads (never mapped, never the whole file in memory).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use super::dequantize;
use super::error::GgufError;
use super::header::{self, RawTensor};
use super::metadata::Value;
use super::naming::{self, Architecture};
use super::types::{GgmlType, DEQUANTIZABLE};

/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The metadata key ComfyUI-GGUF uses for the original shape of a reshaped tensor.
pub const ORIG_SHAPE_KEY: &str = "comfy.gguf.orig_shape.";

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The name in the file.
    pub name: String,
    /// The shape in PyTorch order (outermost first), after `comfy.gguf.orig_shape`.
    pub shape: Vec<usize>,
    /// The shape of the stored data in PyTorch order (differs from `shape` only for tensors
    /// ComfyUI-GGUF reshaped to rows of 256 before quantizing).
    pub stored_shape: Vec<usize>,
    /// How the values are stored.
    pub ty: GgmlType,
    /// Where the data starts in the file.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// How a file's architecture was determined (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchitectureSource {
    /// The `general.architecture` metadata.
    Metadata,
    /// The tensor names (files made by stable-diffusion.cpp carry no architecture).
    TensorNames,
}

/// An opened GGUF file (v2 or v3, little-endian), with every header field checked.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and checks `path`: magic, version, counts, string and array lengths, tensor
    /// dimensions and types, `general.alignment`, and that every tensor's data is aligned and
    /// lies inside the file without overlapping another's. Tensor data is not read.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = crate::fs_limits::open_regular(path).map_err(|e| io(e.into_io()))?;
        let len = file.metadata().map_err(io)?.len();
        let header = header::parse(&file, path, len)?;
        let keys: HashMap<String, usize> = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let mut gguf = GgufFile {
            path: path.to_path_buf(),
            file,
            version: header.version,
            alignment: DEFAULT_ALIGNMENT,
            metadata: header.metadata,
            keys,
            tensors: Vec::new(),
            index: HashMap::new(),
        };
        gguf.alignment = gguf.read_alignment()?;
        let data_start = header.end.next_multiple_of(gguf.alignment);
        if !header.tensors.is_empty() && data_start > len {
            return Err(GgufError::Malformed {
                path: path.to_path_buf(),
                offset: header.end,
                what: format!(
                    "the tensor data should start at byte {data_start} but the file has {len} \
                     bytes; the file is truncated"
                ),
            });
        }
        for raw in &header.tensors {
            let info = gguf.check_tensor(raw, data_start, len)?;
            gguf.index.insert(info.name.clone(), gguf.tensors.len());
            gguf.tensors.push(info);
        }
        gguf.check_overlaps()?;
        Ok(gguf)
    }

    fn read_alignment(&self) -> Result<u64, GgufError> {
        let key = "general.alignment";
        match self.get(key) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(Value::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
            Some(v) => Err(GgufError::Metadata {
                path: self.path.clone(),
                key: key.into(),
                what: format!("must be a uint32 power of two, found {} {v}", v.type_name()),
            }),
        }
    }

    fn tensor_error(&self, name: &str, what: String) -> GgufError {
        GgufError::Tensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            what,
        }
    }

    fn check_tensor(
        &self,
        raw: &RawTensor,
        data_start: u64,
        len: u64,
    ) -> Result<TensorInfo, GgufError> {
        let bad = |what: String| {
            self.tensor_error(&raw.name, format!("{what} (entry at byte {})", raw.at))
        };
        let ty = GgmlType::from_id(raw.type_id).ok_or_else(|| {
            bad(format!(
                "has ggml type id {}, which is not a ggml type this version of beeswax knows",
                raw.type_id
            ))
        })?;
        let mut elements: u64 = 1;
        for &d in &raw.dims {
            elements = elements
                .checked_mul(d)
                .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok())
                .ok_or_else(|| bad(format!("dimensions {:?} overflow", raw.dims)))?;
        }
        let row = raw.dims.first().copied().unwrap_or(1);
        if row % ty.block_size() as u64 != 0 {
            return Err(bad(format!(
                "is {ty} (blocks of {}) but its rows have {row} elements",
                ty.block_size()
            )));
        }
        let size = ty
            .bytes_for(elements)
            .ok_or_else(|| bad(format!("{elements} elements do not fill whole {ty} blocks")))?;
        if raw.offset % self.alignment != 0 {
            return Err(bad(format!(
                "data offset {} is not a multiple of the alignment {}",
                raw.offset, self.alignment
            )));
        }
        let end = data_start
            .checked_add(raw.offset)
            .and_then(|s| s.checked_add(size))
            .filter(|&e| e <= len);
        let Some(end) = end else {
            return Err(bad(format!(
                "its {size} bytes of data at offset {} (from byte {data_start}) run past the end \
                 of the file ({len} bytes); the file is truncated or the offset is wrong",
                raw.offset
            )));
        };
        let start = end - size;
        let stored_shape: Vec<usize> = raw.dims.iter().rev().map(|&d| d as usize).collect();
        let shape = self
            .orig_shape(&raw.name, elements)?
            .unwrap_or_else(|| stored_shape.clone());
        Ok(TensorInfo {
            name: raw.name.clone(),
            shape,
            stored_shape,
            ty,
            offset: start,
            size,
        })
    }

    /// ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>`, checked against the element count.
    fn orig_shape(&self, name: &str, elements: u64) -> Result<Option<Vec<usize>>, GgufError> {
        let key = format!("{ORIG_SHAPE_KEY}{name}");
        let Some(value) = self.get(&key) else {
            return Ok(None);
        };
        let bad = |what: String| GgufError::Metadata {
            path: self.path.clone(),
            key: key.clone(),
            what,
        };
        let dims = value
            .as_array()
            .and_then(|a| a.as_i64s())
            .ok_or_else(|| bad(format!("must be an array of integers, found {value}")))?;
        let shape: Option<Vec<usize>> = dims.iter().map(|&d| usize::try_from(d).ok()).collect();
        let shape = shape.filter(|s| s.len() <= header::MAX_DIMS);
        let count = shape
            .as_ref()
            .and_then(|s| s.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)));
        match (shape, count) {
            (Some(shape), Some(n)) if n == elements => Ok(Some(shape)),
            _ => Err(bad(format!(
                "original shape {dims:?} does not hold the tensor's {elements} elements"
            ))),
        }
    }

    fn check_overlaps(&self) -> Result<(), GgufError> {
        let mut spans: Vec<&TensorInfo> = self.tensors.iter().filter(|t| t.size > 0).collect();
        spans.sort_by_key(|t| t.offset);
        for pair in spans.windows(2) {
            if pair[0].offset + pair[0].size > pair[1].offset {
                return Err(self.tensor_error(
                    &pair[1].name,
                    format!("its data overlaps that of tensor {:?}", pair[0].name),
                ));
            }
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The string under `key`: `Ok(None)` if absent, an error naming the key if not a string.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(GgufError::Metadata {
                path: self.path.clone(),
                key: key.into(),
                what: format!("must be a string, found {} {v}", v.type_name()),
            }),
        }
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name` (the name in the file).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            hint: String::new(),
        })
    }

    /// The stored bytes of tensor `name`, read with one positioned read.
    pub fn read_raw(&self, name: &str) -> Result<Vec<u8>, GgufError> {
        let mut bytes = vec![0u8; self.info(name)?.size as usize];
        self.read_raw_into(name, &mut bytes)?;
        Ok(bytes)
    }

    /// Reads the stored bytes of tensor `name` into `buf`, which must be exactly their size.
    pub fn read_raw_into(&self, name: &str, buf: &mut [u8]) -> Result<(), GgufError> {
        let info = self.info(name)?;
        if buf.len() as u64 != info.size {
            return Err(self.tensor_error(
                name,
                format!(
                    "has {} bytes, a buffer of {} was given",
                    info.size,
                    buf.len()
                ),
            ));
        }
        self.file
            .read_exact_at(buf, info.offset)
            .map_err(|source| GgufError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Tensor `name` dequantized, in its PyTorch shape: F16 and BF16 tensors keep their dtype,
    /// everything else becomes f32, equal bit for bit to `gguf.quants.dequantize`. A type
    /// beeswax cannot decode is an error naming the tensor and the type.
    pub fn dequantize(&self, name: &str, device: &Device) -> Result<Tensor, GgufError> {
        let info = self.info(name)?;
        if !info.ty.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.to_string(),
                ty: info.ty,
                supported: DEQUANTIZABLE,
            });
        }
        let bytes = self.read_raw(name)?;
        let shape = info.shape.as_slice();
        let tensor = match info.ty {
            GgmlType::F16 => {
                let v: Vec<f16> = halves(&bytes).map(f16::from_bits).collect();
                Tensor::from_vec(v, shape, device)
            }
            GgmlType::BF16 => {
                let v: Vec<bf16> = halves(&bytes).map(bf16::from_bits).collect();
                Tensor::from_vec(v, shape, device)
            }
            ty => {
                let v = dequantize::to_f32(ty, &bytes).ok_or_else(|| {
                    self.tensor_error(
                        name,
                        format!("{} bytes are not whole {ty} blocks", bytes.len()),
                    )
                })?;
                Tensor::from_vec(v, shape, device)
            }
        };
        tensor.map_err(|source: candle_core::Error| GgufError::Candle {
            path: self.path.clone(),
            tensor: name.to_string(),
            source: Box::new(source),
        })
    }

    /// Like [`dequantize`](Self::dequantize), converted to `dtype`.
    pub fn dequantize_as(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, GgufError> {
        self.dequantize(name, device)?
            .to_dtype(dtype)
            .map_err(|source: candle_core::Error| GgufError::Candle {
                path: self.path.clone(),
                tensor: name.to_string(),
                source: Box::new(source),
            })
    }

    /// The architecture: `general.architecture` if present (files made by ComfyUI-GGUF and
    /// beeswax), else told from the tensor names (files made by stable-diffusion.cpp, and
    /// those marked `pig`, which ComfyUI-GGUF also reads by their names).
    pub fn architecture(&self) -> Result<Option<(Architecture, ArchitectureSource)>, GgufError> {
        match self.get_str("general.architecture")? {
            Some(name) if name != "pig" => {
                return Ok(Some((
                    Architecture::from_name(name),
                    ArchitectureSource::Metadata,
                )))
            }
            _ => {}
        }
        let names = self.tensors.iter().map(|t| t.name.as_str());
        Ok(naming::detect_architecture(names).map(|a| (a, ArchitectureSource::TensorNames)))
    }

    /// The architecture, which must be one of `expected`: otherwise an error naming what the
    /// file holds and what was expected.
    pub fn expect_architecture(
        &self,
        expected: &[Architecture],
    ) -> Result<Architecture, GgufError> {
        let (found, how) = match self.architecture()? {
            Some((arch, ArchitectureSource::Metadata)) => (arch, "general.architecture"),
            Some((arch, ArchitectureSource::TensorNames)) => (arch, "told from its tensor names"),
            None => (
                Architecture::Other("unrecognised".into()),
                "no general.architecture, and its tensor names match no known denoiser",
            ),
        };
        if expected.contains(&found) {
            return Ok(found);
        }
        Err(GgufError::Architecture {
            path: self.path.clone(),
            found: format!("{:?}", found.name()),
            how: how.into(),
            expected: naming::one_of(expected),
        })
    }
}

/// The little-endian u16s of `bytes`.
fn halves(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
}
