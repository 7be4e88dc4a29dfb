//! Writing GGUF v3 files: metadata and tensor infos first, then each tensor's data, padded to
//! the alignment, produced one tensor at a time by the caller so a large model is never held
//! in memory whole.

use std::collections::HashSet;
use std::io::Write;

use super::metadata::{encode_str, Value};
use super::types::GgmlType;

/// The alignment beeswax writes (ggml's default).
pub const ALIGNMENT: u64 = 32;

/// A tensor planned for writing.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// Its name.
    pub name: String,
    /// Its shape in PyTorch order.
    pub shape: Vec<usize>,
    /// How it is stored.
    pub ty: GgmlType,
}

impl PlannedTensor {
    /// Bytes of data, or `None` if the row length is not a whole number of blocks.
    pub fn size(&self) -> Option<u64> {
        let row = self.shape.last().copied().unwrap_or(1);
        if row % self.ty.block_size() != 0 {
            return None;
        }
        self.ty
            .bytes_for(self.shape.iter().product::<usize>() as u64)
    }
}

/// Why a plan cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Two metadata entries or two tensors share a name.
    #[error("{0:?} is added twice")]
    Duplicate(String),
    /// A tensor's row is not a whole number of blocks of its type.
    #[error("tensor {name:?} of shape {shape:?} cannot be stored as {ty}: rows must be a multiple of {block} elements")]
    Shape {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The type asked for.
        ty: GgmlType,
        /// The type's block size.
        block: usize,
    },
    /// The data given for a tensor does not have the planned size.
    #[error("tensor {name:?}: {got} bytes of data given, {want} planned")]
    Size {
        /// The tensor.
        name: String,
        /// Bytes given.
        got: usize,
        /// Bytes planned.
        want: u64,
    },
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Producing a tensor's data failed (the caller's error).
    #[error("{0}")]
    Data(String),
}

/// A GGUF file being planned: add metadata and tensors, then [`write`](Self::write).
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PlannedTensor>,
    keys: HashSet<String>,
    names: HashSet<String>,
}

impl GgufWriter {
    /// An empty file (alignment [`ALIGNMENT`], written as `general.alignment`).
    pub fn new() -> Self {
        let mut w = Self::default();
        w.metadata
            .push(("general.alignment".into(), Value::U32(ALIGNMENT as u32)));
        w.keys.insert("general.alignment".into());
        w
    }

    /// Adds a metadata entry.
    pub fn add_metadata(&mut self, key: &str, value: Value) -> Result<(), WriteError> {
        if !self.keys.insert(key.to_string()) {
            return Err(WriteError::Duplicate(key.to_string()));
        }
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Plans a tensor (written in the order added).
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
    ) -> Result<(), WriteError> {
        let planned = PlannedTensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            ty,
        };
        if planned.size().is_none() {
            return Err(WriteError::Shape {
                name: name.to_string(),
                shape: shape.to_vec(),
                ty,
                block: ty.block_size(),
            });
        }
        if !self.names.insert(name.to_string()) {
            return Err(WriteError::Duplicate(name.to_string()));
        }
        self.tensors.push(planned);
        Ok(())
    }

    /// The tensors planned so far.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// The header bytes (magic to the end of the tensor infos, padded to the alignment).
    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_str(key, &mut out);
            value.encode(&mut out);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            encode_str(&t.name, &mut out);
            let dims = if t.shape.is_empty() {
                vec![1]
            } else {
                t.shape.clone()
            };
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for &d in dims.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.size().unwrap_or(0)).next_multiple_of(ALIGNMENT);
        }
        out.resize(out.len().next_multiple_of(ALIGNMENT as usize), 0);
        out
    }

    /// Writes the file to `out`. `data(i, tensor)` gives the stored bytes of the `i`-th planned
    /// tensor; it is called once per tensor, in order, so only one tensor's data is held at a
    /// time. Returns the bytes written.
    pub fn write<W: Write, E: std::fmt::Display>(
        &self,
        mut out: W,
        mut data: impl FnMut(usize, &PlannedTensor) -> Result<Vec<u8>, E>,
    ) -> Result<u64, WriteError> {
        let header = self.header();
        out.write_all(&header)?;
        let mut written = header.len() as u64;
        for (i, t) in self.tensors.iter().enumerate() {
            let bytes = data(i, t).map_err(|e| WriteError::Data(e.to_string()))?;
            let want = t.size().unwrap_or(0);
            if bytes.len() as u64 != want {
                return Err(WriteError::Size {
                    name: t.name.clone(),
                    got: bytes.len(),
                    want,
                });
            }
            out.write_all(&bytes)?;
            let padded = want.next_multiple_of(ALIGNMENT);
            out.write_all(&vec![0u8; (padded - want) as usize])?;
            written += padded;
        }
        out.flush()?;
        Ok(written)
    }
}
