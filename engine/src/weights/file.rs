//! A safetensors file, its header read and checked once: the header length fits the file, the
//! header is a JSON object, every entry names a dtype, a shape and a byte range that lies
//! inside the data section and holds exactly `shape × dtype` bytes. Tensors are then read one at
//! a time with positioned reads (never the whole file at once, never mapped), into memory the
//! caller owns.
//!
//! Only safetensors are read (pickles are refused before we get here, see
//! [`crate::model_files`]), so reading a file executes nothing from it.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// The largest header accepted (as the safetensors crate's `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Errors opening or reading a safetensors file. Each names the file, and the tensor where one
/// is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The header is not a valid safetensors header.
    #[error(
        "{}: not a valid safetensors file ({message}); download or convert it again",
        path.display()
    )]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor's entry or data is wrong.
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its dtype as stored.
    pub dtype: safetensors::Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub offsets: (usize, usize),
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// A safetensors file with its checked header.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: std::fs::File,
    data_start: u64,
    entries: HashMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

/// The candle dtype a stored dtype loads as, if candle has it.
pub fn candle_dtype(dtype: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match dtype {
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::F64 => DType::F64,
        S::I64 => DType::I64,
        S::U32 => DType::U32,
        S::U8 => DType::U8,
        _ => return None,
    })
}

fn bytes_per_element(dtype: safetensors::Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

impl SafetensorsFile {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let header_error = |message: String| WeightsError::Header {
            path: path.to_path_buf(),
            message,
        };
        let file = crate::fs_limits::open_regular(path).map_err(|e| io(e.into_io()))?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < 8 {
            return Err(header_error(format!(
                "{file_len} bytes is shorter than the 8-byte header length"
            )));
        }
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0).map_err(io)?;
        let header_len = u64::from_le_bytes(len);
        if header_len > file_len - 8 || header_len > MAX_HEADER_BYTES {
            return Err(header_error(format!(
                "header length {header_len} does not fit the file's {file_len} bytes (truncated?)"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8).map_err(io)?;
        let raw: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| header_error(format!("the header is not a JSON object: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut entries = HashMap::with_capacity(raw.len());
        let mut metadata = HashMap::new();
        for (name, value) in raw {
            if name == "__metadata__" {
                metadata = parse_metadata(value).map_err(header_error)?;
                continue;
            }
            let info =
                parse_entry(&name, value, data_len).map_err(|message| WeightsError::Tensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    message,
                })?;
            entries.insert(name, info);
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            data_start,
            entries,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The header entry of `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.entries.get(name)
    }

    /// The `__metadata__` strings.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The stored bytes of `name`.
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>, WeightsError> {
        let info = self
            .entries
            .get(name)
            .ok_or_else(|| self.tensor_error(name, "not found"))?;
        let (start, end) = info.offsets;
        let mut bytes = vec![0u8; end - start];
        self.file
            .read_exact_at(&mut bytes, self.data_start + start as u64)
            .map_err(|e| self.tensor_error(name, &format!("reading its data: {e}")))?;
        Ok(bytes)
    }

    /// Reads `name` converted to `dtype` on `device`.
    pub fn read(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor, WeightsError> {
        let info = self
            .entries
            .get(name)
            .ok_or_else(|| self.tensor_error(name, "not found"))?;
        let stored = candle_dtype(info.dtype).ok_or_else(|| {
            self.tensor_error(
                name,
                &format!(
                    "dtype {:?} is not supported (beeswax reads F32, F16, BF16, F64, I64, U32 and U8)",
                    info.dtype
                ),
            )
        })?;
        let bytes = self.read_bytes(name)?;
        Tensor::from_raw_buffer(&bytes, stored, &info.shape, device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|e| self.tensor_error(name, &e.to_string()))
    }

    fn tensor_error(&self, name: &str, message: &str) -> WeightsError {
        WeightsError::Tensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            message: message.to_string(),
        }
    }
}

fn parse_metadata(value: serde_json::Value) -> Result<HashMap<String, String>, String> {
    let serde_json::Value::Object(map) = value else {
        return Err("`__metadata__` is not an object".into());
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
        .collect())
}

fn parse_entry(name: &str, value: serde_json::Value, data_len: u64) -> Result<TensorInfo, String> {
    let raw: RawEntry =
        serde_json::from_value(value).map_err(|e| format!("bad header entry: {e}"))?;
    let (start, end) = raw.data_offsets;
    if start > end || end as u64 > data_len {
        return Err(format!(
            "its data [{start}, {end}) lies outside the file's {data_len}-byte data section \
             (truncated file?)"
        ));
    }
    let elements = raw
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", raw.shape))?;
    let want = elements
        .checked_mul(bytes_per_element(raw.dtype))
        .ok_or_else(|| format!("shape {:?} overflows", raw.shape))?;
    if want != end - start {
        return Err(format!(
            "{} bytes stored, but shape {:?} of {:?} needs {want}",
            end - start,
            raw.shape,
            raw.dtype
        ));
    }
    let _ = name;
    Ok(TensorInfo {
        dtype: raw.dtype,
        shape: raw.shape,
        offsets: (start, end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn file_with(header: &str, data: &[u8]) -> tempfile::NamedTempFile {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        write(&bytes)
    }

    #[test]
    fn reads_a_valid_file() {
        let data: Vec<u8> = [1f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f = file_with(
            r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
            &data,
        );
        let st = SafetensorsFile::open(f.path()).unwrap();
        assert_eq!(st.names(), vec!["w"]);
        assert_eq!(st.metadata().get("format").map(String::as_str), Some("pt"));
        let t = st.read("w", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );
    }

    #[test]
    fn refuses_bad_headers_naming_the_fault() {
        let too_short = write(&[1, 2, 3]);
        let e = SafetensorsFile::open(too_short.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter than"), "{e}");
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let huge = write(&huge);
        let e = SafetensorsFile::open(huge.path()).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
        let outside = file_with(
            r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &[0u8; 8],
        );
        let e = SafetensorsFile::open(outside.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor `w`") && e.contains("outside"), "{e}");
        let wrong_size = file_with(
            r#"{"w":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#,
            &[0u8; 8],
        );
        let e = SafetensorsFile::open(wrong_size.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 6"), "{e}");
        let not_json = file_with("nope", &[]);
        let e = SafetensorsFile::open(not_json.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a JSON object"), "{e}");
    }
}
