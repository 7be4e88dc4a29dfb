//! A safetensors file, its header read and checked once: the header length fits the file, the
//! header is a JSON object, every entry names a dtype, a shape and a byte range that lies
//! inside the data section and holds exactly `shape × dtype` bytes, and no two entries' bytes
//! overlap. The file is then mapped (privately, on the first read; see [`super::mapping`]): a
//! tensor stored in the dtype asked for on CPU is used in place, any other is converted from
//! the mapped bytes into memory the caller owns. Where the file cannot be mapped, tensors are
//! read one at a time with positioned reads.
//!
//! Only safetensors are read (pickles are refused before we get here, see
//! [`crate::model_files`]), so reading a file executes nothing from it.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Tensor};

use super::mapping::Mapping;

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
    file_len: u64,
    data_start: u64,
    entries: HashMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
    mapping: OnceLock<Option<Mapping>>,
    /// Data offsets of the tensors handed out in place (their pages are never forgotten).
    in_place: Mutex<HashSet<usize>>,
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
        check_disjoint(&entries).map_err(header_error)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            file_len,
            data_start,
            entries,
            metadata,
            mapping: OnceLock::new(),
            in_place: Mutex::new(HashSet::new()),
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

    /// The file mapped, if it can be (see [`super::mapping`]).
    fn mapping(&self) -> Option<&Mapping> {
        self.mapping
            .get_or_init(|| {
                let len = usize::try_from(self.file_len).ok()?;
                Mapping::new(&self.file, len)
            })
            .as_ref()
    }

    /// The entry of `name`, with its dtype in candle.
    fn entry(&self, name: &str) -> Result<(&TensorInfo, DType), WeightsError> {
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
        Ok((info, stored))
    }

    /// Where `info`'s bytes lie in the file: offset and length.
    fn data_range(&self, info: &TensorInfo) -> (usize, usize) {
        let (start, end) = info.offsets;
        (self.data_start as usize + start, end - start)
    }

    /// The file's bytes `[offset, offset + len)` (tensor `name`'s), by a positioned read.
    fn read_at(&self, name: &str, (offset, len): (usize, usize)) -> Result<Vec<u8>, WeightsError> {
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, offset as u64)
            .map_err(|e| self.tensor_error(name, &format!("reading its data: {e}")))?;
        Ok(bytes)
    }

    /// The stored bytes of `name`, copied.
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>, WeightsError> {
        let info = self
            .entries
            .get(name)
            .ok_or_else(|| self.tensor_error(name, "not found"))?;
        let (offset, len) = self.data_range(info);
        match self.mapping() {
            Some(mapping) => Ok(mapping.bytes(offset, len).to_vec()),
            None => self.read_at(name, (offset, len)),
        }
    }

    /// Reads `name` converted to `dtype` on `device`. On CPU, a tensor stored as `dtype` is
    /// the mapped file's bytes themselves where they can be (see [`super::mapping`]).
    pub fn read(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor, WeightsError> {
        self.read_with(name, dtype, device, Ok)
    }

    /// Reads `name` as [`SafetensorsFile::read`] does and passes it through `then` (a change
    /// of layout, say). When the result is not the mapped bytes themselves (`then` copied
    /// them, or they were converted), the mapping's pages of the tensor are given back, so
    /// they stop counting in the process's memory.
    pub fn read_with(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
        then: impl FnOnce(Tensor) -> Result<Tensor, WeightsError>,
    ) -> Result<Tensor, WeightsError> {
        let (info, stored) = self.entry(name)?;
        let (offset, len) = self.data_range(info);
        let Some(mapping) = self.mapping() else {
            let bytes = self.read_at(name, (offset, len))?;
            return then(self.converted(name, &bytes, info, stored, dtype, device)?);
        };
        let in_place = match device.is_cpu() && stored == dtype {
            true => mapping.tensor(offset, len, stored, &info.shape),
            false => None,
        };
        let t = match in_place {
            Some(t) => t,
            None => {
                let bytes = mapping.bytes(offset, len);
                self.converted(name, bytes, info, stored, dtype, device)?
            }
        };
        let t = then(t)?;
        // Candle never writes a weight in place, so the pages given back here were never
        // written; the lock orders this against another read of the same tensor in place.
        let mut kept = self.in_place.lock().unwrap_or_else(|e| e.into_inner());
        if mapping.holds(&t) {
            kept.insert(offset);
        } else if !kept.contains(&offset) {
            mapping.forget(offset, len);
        }
        Ok(t)
    }

    /// The tensor stored as `bytes`, in `dtype` on `device` (a copy).
    fn converted(
        &self,
        name: &str,
        bytes: &[u8],
        info: &TensorInfo,
        stored: DType,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, WeightsError> {
        Tensor::from_raw_buffer(bytes, stored, &info.shape, device)
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

/// Refuses entries whose bytes overlap (the format forbids it, and tensors used in place from
/// the mapped file must not share memory).
fn check_disjoint(entries: &HashMap<String, TensorInfo>) -> Result<(), String> {
    let mut ranges: Vec<(usize, usize, &str)> = entries
        .iter()
        .filter(|(_, info)| info.offsets.0 < info.offsets.1)
        .map(|(name, info)| (info.offsets.0, info.offsets.1, name.as_str()))
        .collect();
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return Err(format!(
                "the data of tensors `{a}` and `{b}` overlap; a valid file stores each tensor in \
                 its own bytes"
            ));
        }
    }
    Ok(())
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
        let overlapping = file_with(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                "b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0u8; 12],
        );
        let e = SafetensorsFile::open(overlapping.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a` and `b` overlap"), "{e}");
    }

    /// A header padded so that the data section starts 8-aligned in the file.
    fn aligned_file(entries: &str, data: &[u8]) -> tempfile::NamedTempFile {
        let mut header = entries.to_string();
        while (8 + header.len()) % 8 != 0 {
            header.push(' ');
        }
        file_with(&header, data)
    }

    #[test]
    fn tensors_are_used_in_place_copied_when_unaligned_and_outlive_the_file() {
        // `h` (3 f16) leaves `w` 2 bytes past an f32 boundary; `v` is aligned.
        let mut data: Vec<u8> = [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        data.extend(
            [half::f16::from_f32(0.5); 3]
                .iter()
                .flat_map(|v| v.to_le_bytes()),
        );
        data.extend([3f32, 4.0].iter().flat_map(|v| v.to_le_bytes()));
        let f = aligned_file(
            r#"{"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                "h":{"dtype":"F16","shape":[3],"data_offsets":[8,14]},
                "w":{"dtype":"F32","shape":[2],"data_offsets":[14,22]}}"#,
            &data,
        );
        let st = SafetensorsFile::open(f.path()).unwrap();
        let v = st.read("v", DType::F32, &Device::Cpu).unwrap();
        let w = st.read("w", DType::F32, &Device::Cpu).unwrap();
        let h = st.read("h", DType::F32, &Device::Cpu).unwrap();
        let mapping = st.mapping().expect("the crate's allocator maps files");
        assert!(mapping.holds(&v), "an aligned f32 tensor is used in place");
        assert!(!mapping.holds(&w), "an unaligned one is copied");
        assert!(!mapping.holds(&h), "a widened one is copied");
        let doubled = st
            .read_with("v", DType::F32, &Device::Cpu, |t| {
                Ok((t * 2.0).expect("f32 arithmetic"))
            })
            .unwrap();
        drop(st);
        assert_eq!(v.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        assert_eq!(w.to_vec1::<f32>().unwrap(), [3.0, 4.0]);
        assert_eq!(h.to_vec1::<f32>().unwrap(), [0.5; 3]);
        assert_eq!(doubled.to_vec1::<f32>().unwrap(), [2.0, 4.0]);
    }
}
