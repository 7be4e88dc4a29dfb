//! `beeswax quantize`: a safetensors model (a diffusers component file or a single-file
//! checkpoint) written as a GGUF file, tensor by tensor, with the per-tensor types of
//! [`super::rules`] and the input's key names.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::Dtype;

use super::error::GgufError;
use super::metadata::Value;
use super::naming::{denoiser_prefix, detect_architecture, Architecture};
use super::quantize::quantize;
use super::rules::choose_type;
use super::types::{GgmlType, QUANTIZE_TARGETS};
use super::writer::{GgufWriter, PlannedTensor, WriteError};
use crate::checkpoint::keymap::unet_ldm_names;

/// ggml's quantization version written in `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// What to write.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// The type of the linear layers (one of [`QUANTIZE_TARGETS`]).
    pub target: GgmlType,
    /// The architecture to record; required when it cannot be told from the tensor names, and
    /// must agree with them when it can.
    pub architecture: Option<Architecture>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    /// The architecture recorded in `general.architecture`.
    pub architecture: Architecture,
    /// Every tensor written, in file order, with its stored type.
    pub tensors: Vec<(String, GgmlType)>,
    /// Tensors left out because they hold no floats (e.g. `position_ids`), with their dtype.
    pub skipped: Vec<(String, String)>,
    /// Size of the output file.
    pub bytes: u64,
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, serde::Deserialize)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The input file, read tensor by tensor.
struct Input {
    path: PathBuf,
    file: File,
    data_start: u64,
    /// `(name, entry)` in data order.
    entries: Vec<(String, Entry)>,
}

impl Input {
    fn bad(&self, what: String) -> GgufError {
        GgufError::Input {
            path: self.path.clone(),
            what,
        }
    }

    fn open(path: &Path) -> Result<Self, GgufError> {
        let bad = |what: String| GgufError::Input {
            path: path.to_path_buf(),
            what,
        };
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = crate::fs_limits::open_regular(path).map_err(|e| io(e.into_io()))?;
        let len = file.metadata().map_err(io)?.len();
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0)
            .map_err(|_| bad("not a safetensors file (shorter than 8 bytes)".into()))?;
        let header_len = u64::from_le_bytes(n);
        if header_len > len.saturating_sub(8) || header_len > 100 << 20 {
            return Err(bad(format!(
                "not a safetensors file (header length {header_len} does not fit its {len} bytes)"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8).map_err(io)?;
        let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("not a safetensors file (bad header: {e})")))?;
        let data_start = 8 + header_len;
        let mut entries = Vec::new();
        for (name, value) in raw {
            if name == "__metadata__" {
                continue;
            }
            let entry: Entry = serde_json::from_value(value)
                .map_err(|e| bad(format!("bad header entry for tensor {name:?}: {e}")))?;
            let (start, end) = entry.data_offsets;
            let elements = entry
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            let bytes = elements.and_then(|n| n.checked_mul(entry.dtype.bitsize() as u64));
            if start > end
                || data_start.saturating_add(end) > len
                || bytes != Some((end - start) * 8)
            {
                return Err(bad(format!(
                    "tensor {name:?} ({:?} {:?}) has data bytes {start}..{end}, which do not fit \
                     its shape or lie outside the file",
                    entry.dtype, entry.shape
                )));
            }
            entries.push((name, entry));
        }
        entries.sort_by_key(|(_, e)| e.data_offsets.0);
        Ok(Input {
            path: path.to_path_buf(),
            file,
            data_start,
            entries,
        })
    }

    fn read(&self, entry: &Entry) -> Result<Vec<u8>, GgufError> {
        let (start, end) = entry.data_offsets;
        let mut bytes = vec![0u8; (end - start) as usize];
        self.file
            .read_exact_at(&mut bytes, self.data_start + start)
            .map_err(|source| GgufError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(bytes)
    }
}

/// The lossless GGUF float type of a safetensors dtype; `Ok(None)` for non-float tensors.
fn float_type(input: &Input, name: &str, dtype: Dtype) -> Result<Option<GgmlType>, GgufError> {
    Ok(Some(match dtype {
        Dtype::F32 | Dtype::F64 => GgmlType::F32,
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::BF16,
        Dtype::BOOL
        | Dtype::U8
        | Dtype::I8
        | Dtype::U16
        | Dtype::I16
        | Dtype::U32
        | Dtype::I32
        | Dtype::U64
        | Dtype::I64 => return Ok(None),
        other => {
            return Err(input.bad(format!(
                "tensor {name:?} is {other:?}, which beeswax cannot read; convert the model to \
                 bf16, f16 or f32 first"
            )))
        }
    }))
}

/// The stored values of `bytes` (of `dtype`) as f32.
fn to_f32(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// The architecture to record: detected from the names, checked against `given`.
fn architecture(input: &Input, given: Option<&Architecture>) -> Result<Architecture, GgufError> {
    let detected = detect_architecture(input.entries.iter().map(|(n, _)| n.as_str()));
    match (detected, given) {
        (Some(d), Some(g)) if &d != g => Err(input.bad(format!(
            "its tensor names are those of a {d} model, but --arch {g} was given; leave --arch \
             out or correct it"
        ))),
        (Some(d), _) => Ok(d),
        (None, Some(g)) => Ok(g.clone()),
        (None, None) => Err(input.bad(
            "cannot tell the architecture from its tensor names (no FLUX, SD3 or SD/SDXL UNet \
             keys); pass --arch NAME (e.g. flux, sd1, sdxl, sd3)"
                .into(),
        )),
    }
}

/// llama.cpp's `general.file_type` for a file mostly of `target`.
fn file_type(target: GgmlType) -> u32 {
    use GgmlType::*;
    match target {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q4_1 => 3,
        Q8_0 => 7,
        Q5_0 => 8,
        Q5_1 => 9,
        Q4_K => 14,
        Q5_K => 16,
        Q6_K => 18,
        _ => 32, // BF16
    }
}

/// The stored bytes of one planned tensor.
fn encode(
    input: &Input,
    entry: &Entry,
    planned: &PlannedTensor,
    source: GgmlType,
) -> Result<Vec<u8>, GgufError> {
    let bytes = input.read(entry)?;
    let lossless = entry.dtype != Dtype::F64;
    if planned.ty == source && lossless {
        return Ok(bytes);
    }
    let values = to_f32(&bytes, entry.dtype);
    drop(bytes);
    let fail = |what: String| GgufError::Quantize {
        path: input.path.clone(),
        tensor: planned.name.clone(),
        ty: planned.ty,
        what,
    };
    if !planned.ty.is_float() {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(fail(format!("element {i} is {}", values[i])));
        }
    }
    quantize(planned.ty, &values).ok_or_else(|| fail("not a whole number of blocks".into()))
}

/// The output planned: metadata and tensor infos in the writer, and for each planned tensor
/// its input entry and lossless input type.
struct Plan<'a> {
    writer: GgufWriter,
    sources: Vec<(&'a Entry, GgmlType)>,
    skipped: Vec<(String, String)>,
    architecture: Architecture,
}

fn plan<'a>(input: &'a Input, options: &QuantizeOptions) -> Result<Plan<'a>, GgufError> {
    let architecture = architecture(input, options.architecture.as_ref())?;
    let prefix = denoiser_prefix(input.entries.iter().map(|(n, _)| n.as_str()));
    let mut writer = GgufWriter::new();
    let meta = [
        (
            "general.architecture",
            Value::String(architecture.name().into()),
        ),
        (
            "general.quantization_version",
            Value::U32(QUANTIZATION_VERSION),
        ),
        ("general.file_type", Value::U32(file_type(options.target))),
    ];
    for (key, value) in meta {
        writer
            .add_metadata(key, value)
            .map_err(|e| input.bad(e.to_string()))?;
    }
    let (mut sources, mut skipped) = (Vec::new(), Vec::new());
    for (name, entry) in &input.entries {
        let Some(source) = float_type(input, name, entry.dtype)? else {
            skipped.push((name.clone(), format!("{:?}", entry.dtype)));
            continue;
        };
        let in_denoiser = prefix.is_none_or(|p| name.starts_with(p));
        let ty = choose_type(name, &entry.shape, source, options.target, in_denoiser);
        writer
            .add_tensor(name, &entry.shape, ty)
            .map_err(|e| input.bad(e.to_string()))?;
        sources.push((entry, source));
    }
    Ok(Plan {
        writer,
        sources,
        skipped,
        architecture,
    })
}

/// Writes the planned file to `part`; returns its size. The caller renames or removes it.
fn write_part(
    input: &Input,
    plan: &Plan,
    part: &Path,
    mut progress: impl FnMut(usize, usize, &PlannedTensor),
) -> Result<u64, GgufError> {
    let file = File::create(part).map_err(|source| GgufError::Io {
        path: part.to_path_buf(),
        source,
    })?;
    let n = plan.sources.len();
    let mut failure = None;
    let written = plan.writer.write(BufWriter::new(file), |i, planned| {
        progress(i, n, planned);
        let (entry, source) = plan.sources[i];
        encode(input, entry, planned, source).map_err(|e| {
            let message = e.to_string();
            failure = Some(e);
            message
        })
    });
    written.map_err(|e| match (failure, e) {
        (Some(failure), _) => failure,
        (None, WriteError::Io(source)) => GgufError::Io {
            path: part.to_path_buf(),
            source,
        },
        (None, other) => input.bad(other.to_string()),
    })
}

/// Writes the safetensors file `input` as the GGUF file `output` (through `output.part`, renamed
/// when complete). `progress(i, n, tensor)` is called before each tensor is encoded.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    progress: impl FnMut(usize, usize, &PlannedTensor),
) -> Result<QuantizeReport, GgufError> {
    check_target(output, options)?;
    write(Input::open(input)?, output, options, progress)
}

/// Writes the UNet of the diffusers folder `dir` (`unet/diffusion_pytorch_model.safetensors`,
/// SD 1.x/2.x or SDXL) as the GGUF file `output`, its tensors renamed to the original (LDM)
/// names that ComfyUI-GGUF and stable-diffusion.cpp files use (`input_blocks.1.1.proj_in.weight`),
/// without a prefix.
pub fn quantize_unet_folder(
    dir: &Path,
    output: &Path,
    options: &QuantizeOptions,
    progress: impl FnMut(usize, usize, &PlannedTensor),
) -> Result<QuantizeReport, GgufError> {
    check_target(output, options)?;
    let path = dir.join("unet").join("diffusion_pytorch_model.safetensors");
    if !path.is_file() {
        return Err(GgufError::Input {
            path: dir.to_path_buf(),
            what: format!(
                "a folder is quantized through its UNet, and {} does not exist; give a \
                 .safetensors file instead (a FLUX transformer in the BFL layout, a component \
                 file or a single-file checkpoint)",
                path.display()
            ),
        });
    }
    let mut input = Input::open(&path)?;
    let names = unet_ldm_names(input.entries.iter().map(|(n, _)| n.as_str()));
    let renamed: HashMap<String, String> =
        names.into_iter().map(|(d, l)| (d.to_string(), l)).collect();
    if let Some((name, _)) = input.entries.iter().find(|(n, _)| !renamed.contains_key(n)) {
        return Err(input.bad(format!(
            "tensor {name:?} is not a diffusers UNet tensor beeswax can name in the original \
             layout; quantize the file itself to keep its names"
        )));
    }
    for (name, _) in &mut input.entries {
        if let Some(ldm) = renamed.get(name.as_str()) {
            *name = ldm.clone();
        }
    }
    write(input, output, options, progress)
}

fn check_target(output: &Path, options: &QuantizeOptions) -> Result<(), GgufError> {
    if options.target.can_quantize() {
        return Ok(());
    }
    Err(GgufError::Input {
        path: output.to_path_buf(),
        what: format!(
            "cannot write {} tensors (types: {QUANTIZE_TARGETS})",
            options.target
        ),
    })
}

fn write(
    input: Input,
    output: &Path,
    options: &QuantizeOptions,
    progress: impl FnMut(usize, usize, &PlannedTensor),
) -> Result<QuantizeReport, GgufError> {
    let plan = plan(&input, options)?;
    let part = PathBuf::from(format!("{}.part", output.display()));
    let bytes = match write_part(&input, &plan, &part, progress) {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, output).map_err(|source| GgufError::Io {
        path: output.to_path_buf(),
        source,
    })?;
    Ok(QuantizeReport {
        architecture: plan.architecture,
        tensors: plan
            .writer
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.ty))
            .collect(),
        skipped: plan.skipped,
        bytes,
    })
}
