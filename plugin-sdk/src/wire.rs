//! The byte layouts that cross the ABI, with encoders and decoders used by both sides.
//!
//! All integers and floats are little-endian. Tensors and images start at 8-byte aligned
//! offsets of their buffer (buffers come from an 8-byte aligned `beeswax_alloc`), so C code
//! may read their data in place. Layouts (offsets in bytes):
//!
//! * **scheduler config** (input of `beeswax_scheduler_new`): `0 u32 steps`,
//!   `4 u32 num_train_timesteps (N)`, `8 u32 prediction_type`, `12 u32 timestep_spacing`,
//!   `16 u32 steps_offset`, `20 u32 flags`, `24 f64 sigma_min`, `32 f64 sigma_max`,
//!   `40 u32 params_len`, `44 u32 json_len`, `48 f64 alphas_cumprod[N]`, then the parameters
//!   (`params_len` bytes, zero-padded to 8), then the model's `scheduler_config.json` text.
//! * **schedule** (output of `beeswax_scheduler_new`): `0 u64 handle`, `8 u32 flags`,
//!   `12 u32 count`, `16 f64 init_noise_sigma`, `24 f64 timesteps[count]`.
//! * **tensor**: `0 u32 dtype`, `4 u32 rank`, `8 u32 dims[rank]`, zero-padded to 8, then the
//!   elements (row-major), zero-padded to 8. Step inputs are tensors back to back.
//! * **image**: `0 u32 width`, `4 u32 height`, `8 u32 channels` (1 mask, 3 RGB, 4 RGBA),
//!   `12 u32 0`, `16 u8 data[height][width][channels]`, zero-padded to 8.
//! * **parameters**: `u32 count`, then per entry `u32 kind`, `u32 name_len`, name bytes, and a
//!   value: kind 0 an `f64` (8 bytes), kind 1 `u32 len` + UTF-8 bytes. No padding.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::abi::{self, MAX_RANK};

/// A malformed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(what: &str) -> DecodeError {
    DecodeError(what.to_string())
}

/// Reads little-endian values from a byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| {
                DecodeError(alloc::format!(
                    "buffer too short: {n} bytes wanted at offset {}, {} available",
                    self.pos,
                    self.remaining()
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// An `f64`.
    pub fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.u64()?))
    }

    /// Skips to the next multiple of 8 (or the end).
    pub fn align8(&mut self) {
        self.pos = ((self.pos + 7) & !7).min(self.buf.len());
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn pad8(out: &mut Vec<u8>) {
    while out.len() % 8 != 0 {
        out.push(0);
    }
}

fn usize_of(v: u32) -> usize {
    v as usize
}

fn u32_of(v: usize, what: &str) -> Result<u32, DecodeError> {
    u32::try_from(v).map_err(|_| DecodeError(alloc::format!("{what} {v} does not fit in 32 bits")))
}

/// A model's scheduler configuration as the plugin receives it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchedulerInit {
    /// Inference steps asked for (1..=num_train_timesteps).
    pub steps: u32,
    /// Training steps.
    pub num_train_timesteps: u32,
    /// [`abi::PREDICTION_EPSILON`], [`abi::PREDICTION_V`] or [`abi::PREDICTION_SAMPLE`].
    pub prediction_type: u32,
    /// [`abi::SPACING_DEFAULT`], ... [`abi::SPACING_TRAILING`].
    pub timestep_spacing: u32,
    /// `steps_offset`.
    pub steps_offset: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// `sigma_min` (meaningful with [`abi::FLAG_HAS_SIGMA_MIN`]).
    pub sigma_min: f64,
    /// `sigma_max` (meaningful with [`abi::FLAG_HAS_SIGMA_MAX`]).
    pub sigma_max: f64,
    /// Cumulative products of `1 - beta` over the training steps, after `trained_betas`,
    /// `beta_schedule` and zero-SNR rescaling (N values).
    pub alphas_cumprod: Vec<f64>,
    /// The manifest's parameters for this plugin.
    pub params: Params,
    /// The model's `scheduler_config.json`, as JSON text, for fields not carried above.
    pub config_json: String,
}

impl SchedulerInit {
    /// Whether flag `bit` is set.
    pub fn flag(&self, bit: u32) -> bool {
        self.flags & bit != 0
    }

    /// Encodes the config.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let params = self.params.encode()?;
        let mut out = Vec::with_capacity(48 + 8 * self.alphas_cumprod.len() + params.len());
        put_u32(&mut out, self.steps);
        put_u32(
            &mut out,
            u32_of(self.alphas_cumprod.len(), "num_train_timesteps")?,
        );
        put_u32(&mut out, self.prediction_type);
        put_u32(&mut out, self.timestep_spacing);
        put_u32(&mut out, self.steps_offset);
        put_u32(&mut out, self.flags);
        put_f64(&mut out, self.sigma_min);
        put_f64(&mut out, self.sigma_max);
        put_u32(&mut out, u32_of(params.len(), "parameters length")?);
        put_u32(&mut out, u32_of(self.config_json.len(), "config length")?);
        for &a in &self.alphas_cumprod {
            put_f64(&mut out, a);
        }
        out.extend_from_slice(&params);
        pad8(&mut out);
        out.extend_from_slice(self.config_json.as_bytes());
        Ok(out)
    }

    /// Decodes a config.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let steps = r.u32()?;
        let n = r.u32()?;
        let prediction_type = r.u32()?;
        let timestep_spacing = r.u32()?;
        let steps_offset = r.u32()?;
        let flags = r.u32()?;
        let sigma_min = r.f64()?;
        let sigma_max = r.f64()?;
        let params_len = usize_of(r.u32()?);
        let json_len = usize_of(r.u32()?);
        if usize_of(n).saturating_mul(8) > r.remaining() {
            return Err(err(
                "scheduler config: alphas_cumprod is shorter than num_train_timesteps",
            ));
        }
        let alphas_cumprod = (0..n).map(|_| r.f64()).collect::<Result<Vec<_>, _>>()?;
        let params = Params::decode(r.bytes(params_len)?)?;
        r.align8();
        let config_json = core::str::from_utf8(r.bytes(json_len)?)
            .map_err(|_| err("scheduler config: the JSON text is not UTF-8"))?
            .to_string();
        Ok(Self {
            steps,
            num_train_timesteps: n,
            prediction_type,
            timestep_spacing,
            steps_offset,
            flags,
            sigma_min,
            sigma_max,
            alphas_cumprod,
            params,
            config_json,
        })
    }
}

/// What `beeswax_scheduler_new` returns: the schedule and a handle for the later calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schedule {
    /// Opaque to the host; passed back to `scale`, `step`, `add_noise` and `drop`.
    pub handle: u64,
    /// `SCHEDULE_*` bits.
    pub flags: u32,
    /// The standard deviation of the starting noise.
    pub init_noise_sigma: f64,
    /// Model timesteps, one per step, in running order.
    pub timesteps: Vec<f64>,
}

impl Schedule {
    /// Encodes the schedule.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(24 + 8 * self.timesteps.len());
        put_u64(&mut out, self.handle);
        put_u32(&mut out, self.flags);
        put_u32(&mut out, u32_of(self.timesteps.len(), "timestep count")?);
        put_f64(&mut out, self.init_noise_sigma);
        for &t in &self.timesteps {
            put_f64(&mut out, t);
        }
        Ok(out)
    }

    /// Decodes a schedule.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let handle = r.u64()?;
        let flags = r.u32()?;
        let count = r.u32()?;
        let init_noise_sigma = r.f64()?;
        if usize_of(count).saturating_mul(8) > r.remaining() {
            return Err(err("schedule: fewer timesteps than its count says"));
        }
        let timesteps = (0..count).map(|_| r.f64()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            handle,
            flags,
            init_noise_sigma,
            timesteps,
        })
    }
}

/// Tensor elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// binary32 values.
    F32(Vec<f32>),
    /// binary64 values.
    F64(Vec<f64>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ABI dtype code.
    pub fn dtype(&self) -> u32 {
        match self {
            TensorData::F32(_) => abi::DTYPE_F32,
            TensorData::F64(_) => abi::DTYPE_F64,
        }
    }
}

/// A tensor: shape plus row-major elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements; `data.len()` is the product of `shape`.
    pub data: TensorData,
}

impl Tensor {
    /// The encoded size of a tensor of this dtype and shape.
    pub fn encoded_len(shape: &[usize], dtype: u32) -> usize {
        let head = (8 + 4 * shape.len() + 7) & !7;
        let size = if dtype == abi::DTYPE_F64 { 8 } else { 4 };
        let body = (shape.iter().product::<usize>() * size + 7) & !7;
        head + body
    }

    /// Appends the encoded tensor to `out` (which must have a length that is a multiple of 8).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        encode_tensor_parts(&self.shape, &self.data, out)
    }

    /// Decodes one tensor at the reader's position (8-byte aligned).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let dtype = r.u32()?;
        let rank = usize_of(r.u32()?);
        if rank > MAX_RANK {
            return Err(DecodeError(alloc::format!(
                "tensor rank {rank} is above {MAX_RANK}"
            )));
        }
        let shape = (0..rank)
            .map(|_| r.u32().map(usize_of))
            .collect::<Result<Vec<_>, _>>()?;
        r.align8();
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| err("tensor: element count overflows"))?;
        let data = match dtype {
            abi::DTYPE_F32 => {
                let bytes = r.bytes(
                    count
                        .checked_mul(4)
                        .ok_or_else(|| err("tensor too large"))?,
                )?;
                TensorData::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
            abi::DTYPE_F64 => {
                let bytes = r.bytes(
                    count
                        .checked_mul(8)
                        .ok_or_else(|| err("tensor too large"))?,
                )?;
                TensorData::F64(
                    bytes
                        .chunks_exact(8)
                        .map(|c| {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(c);
                            f64::from_le_bytes(a)
                        })
                        .collect(),
                )
            }
            other => {
                return Err(DecodeError(alloc::format!(
                    "tensor dtype code {other} is unknown (0 = f32, 1 = f64)"
                )))
            }
        };
        r.align8();
        Ok(Self { shape, data })
    }
}

/// Appends a tensor given as shape + data (see [`Tensor::encode_into`]).
pub fn encode_tensor_parts(
    shape: &[usize],
    data: &TensorData,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    if shape.len() > MAX_RANK {
        return Err(err("tensor rank above 8"));
    }
    if shape.iter().product::<usize>() != data.len() {
        return Err(err("tensor: element count does not match the shape"));
    }
    put_u32(out, data.dtype());
    put_u32(out, u32_of(shape.len(), "rank")?);
    for &d in shape {
        put_u32(out, u32_of(d, "dimension")?);
    }
    pad8(out);
    match data {
        TensorData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    pad8(out);
    Ok(())
}

/// Decodes `count` tensors stored back to back.
pub fn decode_tensors(buf: &[u8], count: usize) -> Result<Vec<Tensor>, DecodeError> {
    let mut r = Reader::new(buf);
    (0..count).map(|_| Tensor::decode(&mut r)).collect()
}

/// An 8-bit image (or mask), row-major, channels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (mask), 3 (RGB) or 4 (RGBA).
    pub channels: u32,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

impl Image {
    /// Appends the encoded image to `out` (whose length must be a multiple of 8).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let want = (self.width as usize)
            .checked_mul(self.height as usize)
            .and_then(|n| n.checked_mul(self.channels as usize));
        if want != Some(self.data.len()) {
            return Err(err("image: data length is not width x height x channels"));
        }
        put_u32(out, self.width);
        put_u32(out, self.height);
        put_u32(out, self.channels);
        put_u32(out, 0);
        out.extend_from_slice(&self.data);
        pad8(out);
        Ok(())
    }

    /// Decodes one image at the reader's position.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let width = r.u32()?;
        let height = r.u32()?;
        let channels = r.u32()?;
        let _reserved = r.u32()?;
        if !matches!(channels, 1 | 3 | 4) {
            return Err(DecodeError(alloc::format!(
                "image: {channels} channels; 1, 3 or 4 expected"
            )));
        }
        let len = (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(channels as usize))
            .ok_or_else(|| err("image too large"))?;
        let data = r.bytes(len)?.to_vec();
        r.align8();
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }
}

/// A parameter value from the manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A number (TOML integers and floats; booleans as 0 and 1).
    Number(f64),
    /// A string.
    String(String),
}

/// The parameters a manifest gives a plugin, in manifest order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    /// (name, value) pairs.
    pub entries: Vec<(String, ParamValue)>,
}

impl Params {
    /// The number named `name`, if given.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.entries.iter().find_map(|(n, v)| match v {
            ParamValue::Number(x) if n == name => Some(*x),
            _ => None,
        })
    }

    /// The string named `name`, if given.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.entries.iter().find_map(|(n, v)| match v {
            ParamValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// Encodes the parameters.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        put_u32(&mut out, u32_of(self.entries.len(), "parameter count")?);
        for (name, value) in &self.entries {
            let kind = match value {
                ParamValue::Number(_) => abi::PARAM_NUMBER,
                ParamValue::String(_) => abi::PARAM_STRING,
            };
            put_u32(&mut out, kind);
            put_u32(&mut out, u32_of(name.len(), "parameter name length")?);
            out.extend_from_slice(name.as_bytes());
            match value {
                ParamValue::Number(x) => put_f64(&mut out, *x),
                ParamValue::String(s) => {
                    put_u32(&mut out, u32_of(s.len(), "parameter length")?);
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        Ok(out)
    }

    /// Decodes parameters.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.is_empty() {
            return Ok(Self::default());
        }
        let mut r = Reader::new(buf);
        let count = r.u32()?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let kind = r.u32()?;
            let len = usize_of(r.u32()?);
            let name = core::str::from_utf8(r.bytes(len)?)
                .map_err(|_| err("parameter name is not UTF-8"))?
                .to_string();
            let value = match kind {
                abi::PARAM_NUMBER => ParamValue::Number(r.f64()?),
                abi::PARAM_STRING => {
                    let len = usize_of(r.u32()?);
                    ParamValue::String(
                        core::str::from_utf8(r.bytes(len)?)
                            .map_err(|_| err("parameter value is not UTF-8"))?
                            .to_string(),
                    )
                }
                other => {
                    return Err(DecodeError(alloc::format!(
                        "parameter kind {other} is unknown"
                    )))
                }
            };
            entries.push((name, value));
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
