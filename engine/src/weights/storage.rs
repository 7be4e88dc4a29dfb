//! The dtype weights are held in, apart from the dtype they are computed in: on CPU with f32
//! compute, a model's weight matrices and convolution filters can stay f16 or bf16 in memory
//! (half the memory) and be widened inside the kernels just before use (see
//! `crate::kernels`); so may a text encoder's token embedding table (gathered by row, the rows
//! widened per prompt). Vectors (biases, norm scales) and other embedding tables are always
//! widened at load: they are small and read by plain candle ops.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

/// What dtype a model's weight matrices are held in (`--weights-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightsDtype {
    /// The file's own type where it is 16-bit (a folder's `*.fp16.safetensors`, a 16-bit single
    /// file), f32 otherwise.
    #[default]
    File,
    /// f32: everything widened at load (the memory of an f32 model).
    F32,
    /// f16, narrowing f32 files at load.
    F16,
    /// bf16, narrowing f32 files at load.
    Bf16,
}

impl WeightsDtype {
    /// The dtype a weight matrix stored as `stored` is held in on CPU with f32 compute.
    pub fn held(self, stored: DType) -> DType {
        match self {
            WeightsDtype::File if matches!(stored, DType::F16 | DType::BF16) => stored,
            WeightsDtype::File | WeightsDtype::F32 => DType::F32,
            WeightsDtype::F16 => DType::F16,
            WeightsDtype::Bf16 => DType::BF16,
        }
    }
}

impl FromStr for WeightsDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "file" | "auto" => Ok(WeightsDtype::File),
            "f32" | "fp32" | "float32" => Ok(WeightsDtype::F32),
            "f16" | "fp16" | "float16" => Ok(WeightsDtype::F16),
            "bf16" | "bfloat16" => Ok(WeightsDtype::Bf16),
            other => Err(format!(
                "unknown weights dtype `{other}`: use f32, f16 or bf16 (or `file` for the file's \
                 own 16-bit type)"
            )),
        }
    }
}

impl fmt::Display for WeightsDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightsDtype::File => "file",
            WeightsDtype::F32 => "f32",
            WeightsDtype::F16 => "f16",
            WeightsDtype::Bf16 => "bf16",
        })
    }
}

/// Whether the tensor `name` of shape `dims` may stay 16-bit in memory: a weight matrix or
/// filter bank the CPU kernels multiply (a rank-2 `*weight` other than an embedding table, or
/// a rank-4 convolution weight), or a CLIP token embedding table (`*token_embedding.weight`,
/// whose gathered rows the text encoder widens; 49408 rows, the largest table of SD's).
pub fn is_kernel_weight(name: &str, dims: &[usize]) -> bool {
    let weight = name == "weight" || name.ends_with(".weight");
    let embedding = name.ends_with("embedding.weight") || name.ends_with("embeddings.weight");
    let token_table = name.ends_with("token_embedding.weight");
    weight && (dims.len() == 4 || (dims.len() == 2 && (!embedding || token_table)))
}

/// Whether a tensor of `dtype` may be handed as it is to a model asking for `wanted` on
/// `device`: a 16-bit weight kept for f32 compute on CPU.
pub fn is_kept(dtype: DType, wanted: DType, device: &Device) -> bool {
    device.is_cpu() && wanted == DType::F32 && matches!(dtype, DType::F16 | DType::BF16)
}

/// A [`VarBuilder`] over tensors already read (as [`VarBuilder::from_tensors`]), that hands
/// 16-bit weights kept for f32 compute on CPU ([`is_kept`]) over as they are instead of
/// widening them; every other tensor is converted to `dtype`.
pub fn tensors_var_builder(
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Kept(tensors)), dtype, device.clone())
}

struct Kept(HashMap<String, Tensor>);

impl Kept {
    fn tensor(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.0.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let t = t.to_device(dev)?;
        if is_kept(t.dtype(), dtype, dev) {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for Kept {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.tensor(name, dtype, dev)?;
        if t.shape() != &s {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt())?
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keeps_16_bit_types_only() {
        assert_eq!(WeightsDtype::File.held(DType::F16), DType::F16);
        assert_eq!(WeightsDtype::File.held(DType::BF16), DType::BF16);
        assert_eq!(WeightsDtype::File.held(DType::F32), DType::F32);
        assert_eq!(WeightsDtype::F16.held(DType::F32), DType::F16);
        assert_eq!(WeightsDtype::F32.held(DType::F16), DType::F32);
        assert_eq!("BF16".parse::<WeightsDtype>(), Ok(WeightsDtype::Bf16));
        assert!("f8".parse::<WeightsDtype>().is_err());
    }

    #[test]
    fn only_matrices_and_filters_are_kernel_weights() {
        assert!(is_kernel_weight("down.0.proj.weight", &[8, 4]));
        assert!(is_kernel_weight("conv_in.weight", &[8, 4, 3, 3]));
        assert!(!is_kernel_weight("conv_in.bias", &[8]));
        assert!(!is_kernel_weight("norm.weight", &[8]));
        assert!(!is_kernel_weight(
            "embeddings.position_embedding.weight",
            &[77, 8]
        ));
        assert!(is_kernel_weight(
            "embeddings.token_embedding.weight",
            &[99, 8]
        ));
    }

    #[test]
    fn the_var_builder_keeps_16_bit_weights_for_f32_compute() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((3, 2), DType::F16, &dev).unwrap();
        let b = Tensor::zeros(3, DType::F16, &dev).unwrap();
        let map = HashMap::from([("w".to_string(), w), ("b".to_string(), b)]);
        let vb = tensors_var_builder(map.clone(), DType::F32, &dev);
        assert_eq!(vb.get((3, 2), "w").unwrap().dtype(), DType::F16);
        let vb = tensors_var_builder(map, DType::F64, &dev);
        assert_eq!(vb.get(3, "b").unwrap().dtype(), DType::F64);
    }
}
