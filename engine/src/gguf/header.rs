//! Parsing a GGUF header (magic, version, metadata, tensor infos) from a file, with every
//! length and count checked against what is left of the file before anything is allocated
//! for it, so a hostile or truncated file gives an error naming what is wrong and where.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::error::GgufError;
use super::metadata::{ids, Array, Value};

/// Deepest nesting of arrays inside arrays accepted (the format allows nesting; ggml files
/// use none).
const MAX_ARRAY_DEPTH: usize = 8;

/// Most dimensions a tensor may have (ggml uses 4; 5-D tensors exist in some ComfyUI files).
pub(crate) const MAX_DIMS: usize = 8;

/// The header as stored, before the tensor entries are checked against the file.
pub(crate) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<RawTensor>,
    /// The byte just after the last tensor info.
    pub end: u64,
}

/// One tensor info as stored.
pub(crate) struct RawTensor {
    pub name: String,
    /// ggml order: innermost (row length) first.
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Relative to the start of the data section.
    pub offset: u64,
    /// Where this entry starts in the file (for error messages).
    pub at: u64,
}

/// A sequential reader over the file that knows how much is left.
struct Source<'a> {
    reader: BufReader<&'a File>,
    path: &'a Path,
    pos: u64,
    len: u64,
}

impl<'a> Source<'a> {
    fn malformed(&self, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            offset: self.pos,
            what,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Errors unless `n` more bytes are in the file.
    fn need(&self, n: u64, ctx: &str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(self.malformed(format!(
                "{ctx} needs {n} bytes but only {} are left in the file ({} bytes); \
                 the file is truncated or corrupt",
                self.remaining(),
                self.len
            )));
        }
        Ok(())
    }

    fn bytes(&mut self, n: u64, ctx: &str) -> Result<Vec<u8>, GgufError> {
        self.need(n, ctx)?;
        let mut buf = vec![0u8; n as usize];
        self.reader
            .read_exact(&mut buf)
            .map_err(|source| GgufError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, ctx: &str) -> Result<[u8; N], GgufError> {
        self.need(N as u64, ctx)?;
        let mut buf = [0u8; N];
        self.reader
            .read_exact(&mut buf)
            .map_err(|source| GgufError::Io {
                path: self.path.to_path_buf(),
                source,
            })?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, ctx: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(ctx)?))
    }

    fn u64(&mut self, ctx: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(ctx)?))
    }

    fn string(&mut self, ctx: &str) -> Result<String, GgufError> {
        let len = self.u64(ctx)?;
        let start = self.pos;
        let bytes = self.bytes(len, &format!("{ctx} (a string of length {len})"))?;
        String::from_utf8(bytes).map_err(|e| GgufError::Malformed {
            path: self.path.to_path_buf(),
            offset: start,
            what: format!("{ctx} is not valid UTF-8 ({e})"),
        })
    }

    /// Reads `count` fixed-size elements of `size` bytes each, converting each with `f`.
    fn fixed<T, const N: usize>(
        &mut self,
        count: u64,
        ctx: &str,
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, GgufError> {
        let total = count.saturating_mul(N as u64);
        let raw = self.bytes(total, ctx)?;
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                f(b)
            })
            .collect())
    }

    fn bool(&mut self, ctx: &str) -> Result<bool, GgufError> {
        match self.array::<1>(ctx)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.malformed(format!("{ctx} is a bool stored as {b} (must be 0 or 1)"))),
        }
    }

    fn value(&mut self, ty: u32, ctx: &str, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            ids::U8 => Value::U8(self.array::<1>(ctx)?[0]),
            ids::I8 => Value::I8(i8::from_le_bytes(self.array(ctx)?)),
            ids::U16 => Value::U16(u16::from_le_bytes(self.array(ctx)?)),
            ids::I16 => Value::I16(i16::from_le_bytes(self.array(ctx)?)),
            ids::U32 => Value::U32(self.u32(ctx)?),
            ids::I32 => Value::I32(i32::from_le_bytes(self.array(ctx)?)),
            ids::U64 => Value::U64(self.u64(ctx)?),
            ids::I64 => Value::I64(i64::from_le_bytes(self.array(ctx)?)),
            ids::F32 => Value::F32(f32::from_le_bytes(self.array(ctx)?)),
            ids::F64 => Value::F64(f64::from_le_bytes(self.array(ctx)?)),
            ids::BOOL => Value::Bool(self.bool(ctx)?),
            ids::STRING => Value::String(self.string(ctx)?),
            ids::ARRAY => Value::Array(self.array_value(ctx, depth)?),
            other => {
                return Err(self.malformed(format!(
                    "{ctx} has value type {other}, which is not a GGUF type (0..=12)"
                )))
            }
        })
    }

    fn array_value(&mut self, ctx: &str, depth: usize) -> Result<Array, GgufError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.malformed(format!(
                "{ctx} nests arrays more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        let ty = self.u32(ctx)?;
        let n = self.u64(ctx)?;
        let ctx = format!("{ctx} (an array of {n} elements of type {ty})");
        let ctx = ctx.as_str();
        Ok(match ty {
            ids::U8 => Array::U8(self.bytes(n, ctx)?),
            ids::I8 => Array::I8(self.fixed(n, ctx, i8::from_le_bytes)?),
            ids::U16 => Array::U16(self.fixed(n, ctx, u16::from_le_bytes)?),
            ids::I16 => Array::I16(self.fixed(n, ctx, i16::from_le_bytes)?),
            ids::U32 => Array::U32(self.fixed(n, ctx, u32::from_le_bytes)?),
            ids::I32 => Array::I32(self.fixed(n, ctx, i32::from_le_bytes)?),
            ids::U64 => Array::U64(self.fixed(n, ctx, u64::from_le_bytes)?),
            ids::I64 => Array::I64(self.fixed(n, ctx, i64::from_le_bytes)?),
            ids::F32 => Array::F32(self.fixed(n, ctx, f32::from_le_bytes)?),
            ids::F64 => Array::F64(self.fixed(n, ctx, f64::from_le_bytes)?),
            ids::BOOL => {
                let raw = self.bytes(n, ctx)?;
                if let Some(b) = raw.iter().find(|&&b| b > 1) {
                    return Err(self.malformed(format!("{ctx} holds a bool stored as {b}")));
                }
                Array::Bool(raw.into_iter().map(|b| b == 1).collect())
            }
            ids::STRING => {
                // Each string takes at least its 8-byte length.
                self.need(n.saturating_mul(8), ctx)?;
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(self.string(ctx)?);
                }
                Array::String(v)
            }
            ids::ARRAY => {
                // Each nested array takes at least its type and length.
                self.need(n.saturating_mul(12), ctx)?;
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(self.array_value(ctx, depth + 1)?);
                }
                Array::Array(v)
            }
            other => {
                return Err(self.malformed(format!(
                    "{ctx}: element type {other} is not a GGUF type (0..=12)"
                )))
            }
        })
    }
}

/// Checks the magic and version; returns the version.
fn magic_and_version(src: &mut Source) -> Result<u32, GgufError> {
    let magic: [u8; 4] = src.array("the magic").map_err(|_| GgufError::NotGguf {
        path: src.path.to_path_buf(),
        found: "fewer than 4 bytes".into(),
    })?;
    if &magic != b"GGUF" {
        return Err(GgufError::NotGguf {
            path: src.path.to_path_buf(),
            found: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    let version = src.u32("the version")?;
    let hint = match version {
        2 | 3 => return Ok(version),
        1 => "GGUF v1 (2023) used 32-bit counts; convert the file again with a current tool",
        v if (1..=3).contains(&v.swap_bytes()) => {
            "this is a big-endian GGUF file; only \
                                                  little-endian files are read"
        }
        _ => "beeswax reads versions 2 and 3",
    };
    Err(GgufError::Version {
        path: src.path.to_path_buf(),
        version,
        hint,
    })
}

/// Reads the header of `file` (`len` bytes long).
pub(crate) fn parse(file: &File, path: &Path, len: u64) -> Result<Header, GgufError> {
    let mut src = Source {
        reader: BufReader::with_capacity(1 << 16, file),
        path,
        pos: 0,
        len,
    };
    let version = magic_and_version(&mut src)?;
    let n_tensors = src.u64("the tensor count")?;
    let n_kv = src.u64("the metadata count")?;
    // A metadata entry takes at least 13 bytes, a tensor info at least 24.
    let least = n_kv
        .saturating_mul(13)
        .saturating_add(n_tensors.saturating_mul(24));
    src.need(
        least,
        &format!("{n_kv} metadata entries and {n_tensors} tensor infos"),
    )?;

    let mut metadata = Vec::new();
    let mut keys = HashSet::new();
    for i in 0..n_kv {
        let key = src.string(&format!("the key of metadata entry {i}"))?;
        let ctx = format!("metadata {key:?}");
        let ty = src.u32(&ctx)?;
        let value = src.value(ty, &ctx, 0)?;
        if !keys.insert(key.clone()) {
            return Err(src.malformed(format!("{ctx} appears twice")));
        }
        metadata.push((key, value));
    }

    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let at = src.pos;
        let name = src.string(&format!("the name of tensor info {i}"))?;
        let ctx = format!("tensor {name:?}");
        let n_dims = src.u32(&ctx)?;
        if n_dims as usize > MAX_DIMS {
            return Err(src.malformed(format!(
                "{ctx} has {n_dims} dimensions (at most {MAX_DIMS} are accepted)"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(src.u64(&ctx)?);
        }
        let type_id = src.u32(&ctx)?;
        let offset = src.u64(&ctx)?;
        if !names.insert(name.clone()) {
            return Err(src.malformed(format!("{ctx} appears twice")));
        }
        tensors.push(RawTensor {
            name,
            dims,
            type_id,
            offset,
            at,
        });
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        end: src.pos,
    })
}
