//! ggml's tensor types: their ids in a GGUF file, names, and block geometry.
//!
//! Every type ggml (and the `gguf` Python package) defines is listed so that a file holding
//! one beeswax cannot decode still opens, is laid out and checked, and names the type when that
//! tensor is asked for.

use std::fmt;
use std::str::FromStr;

/// A ggml tensor type, as stored in a GGUF tensor's `type` field.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 4-bit, blocks of 32 with an f16 scale.
    Q4_0,
    /// 4-bit, blocks of 32 with an f16 scale and minimum.
    Q4_1,
    /// 5-bit, blocks of 32 with an f16 scale.
    Q5_0,
    /// 5-bit, blocks of 32 with an f16 scale and minimum.
    Q5_1,
    /// 8-bit, blocks of 32 with an f16 scale.
    Q8_0,
    /// 8-bit, blocks of 32 with f16 scale and sum (an activation type).
    Q8_1,
    /// 2-bit K-quant, super-blocks of 256.
    Q2_K,
    /// 3-bit K-quant, super-blocks of 256.
    Q3_K,
    /// 4-bit K-quant, super-blocks of 256.
    Q4_K,
    /// 5-bit K-quant, super-blocks of 256.
    Q5_K,
    /// 6-bit K-quant, super-blocks of 256.
    Q6_K,
    /// 8-bit K-quant with an f32 scale (an activation type).
    Q8_K,
    /// Importance-matrix 2-bit type.
    IQ2_XXS,
    /// Importance-matrix 2-bit type.
    IQ2_XS,
    /// Importance-matrix 3-bit type.
    IQ3_XXS,
    /// Importance-matrix 1-bit type.
    IQ1_S,
    /// Non-linear 4-bit type.
    IQ4_NL,
    /// Importance-matrix 3-bit type.
    IQ3_S,
    /// Importance-matrix 2-bit type.
    IQ2_S,
    /// Non-linear 4-bit type with super-blocks.
    IQ4_XS,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// Importance-matrix 1-bit type.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// Ternary type.
    TQ1_0,
    /// Ternary type.
    TQ2_0,
    /// Microscaling FP4.
    MXFP4,
    /// NVIDIA FP4.
    NVFP4,
    /// 1-bit type.
    Q1_0,
}

/// `(type, id, name, elements per block, bytes per block)`, from ggml's `ggml.h` and the
/// `gguf` package's `GGML_QUANT_SIZES`.
const TABLE: [(GgmlType, u32, &str, usize, usize); 34] = {
    use GgmlType::*;
    const K: usize = 256;
    [
        (F32, 0, "F32", 1, 4),
        (F16, 1, "F16", 1, 2),
        (Q4_0, 2, "Q4_0", 32, 2 + 16),
        (Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
        (Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
        (Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
        (Q8_0, 8, "Q8_0", 32, 2 + 32),
        (Q8_1, 9, "Q8_1", 32, 4 + 4 + 32),
        (Q2_K, 10, "Q2_K", K, 2 + 2 + K / 16 + K / 4),
        (Q3_K, 11, "Q3_K", K, 2 + K / 4 + K / 8 + 12),
        (Q4_K, 12, "Q4_K", K, 2 + 2 + K / 2 + 12),
        (Q5_K, 13, "Q5_K", K, 2 + 2 + K / 2 + K / 8 + 12),
        (Q6_K, 14, "Q6_K", K, 2 + K / 2 + K / 4 + K / 16),
        (Q8_K, 15, "Q8_K", K, 4 + K + K / 8),
        (IQ2_XXS, 16, "IQ2_XXS", K, 2 + K / 4),
        (IQ2_XS, 17, "IQ2_XS", K, 2 + K / 4 + K / 32),
        (IQ3_XXS, 18, "IQ3_XXS", K, 2 + K / 4 + K / 8),
        (IQ1_S, 19, "IQ1_S", K, 2 + K / 8 + K / 16),
        (IQ4_NL, 20, "IQ4_NL", 32, 2 + 16),
        (IQ3_S, 21, "IQ3_S", K, 2 + K / 4 + K / 8 + K / 32 + 4),
        (IQ2_S, 22, "IQ2_S", K, 2 + K / 4 + K / 16),
        (IQ4_XS, 23, "IQ4_XS", K, 2 + 2 + K / 2 + K / 64),
        (I8, 24, "I8", 1, 1),
        (I16, 25, "I16", 1, 2),
        (I32, 26, "I32", 1, 4),
        (I64, 27, "I64", 1, 8),
        (F64, 28, "F64", 1, 8),
        (IQ1_M, 29, "IQ1_M", K, K / 8 + K / 16 + K / 32),
        (BF16, 30, "BF16", 1, 2),
        (TQ1_0, 34, "TQ1_0", K, 2 + 4 * 13),
        (TQ2_0, 35, "TQ2_0", K, 2 + 64),
        (MXFP4, 39, "MXFP4", 32, 1 + 16),
        (NVFP4, 40, "NVFP4", 64, 4 + 32),
        (Q1_0, 41, "Q1_0", 128, 2 + 16),
    ]
};

/// The types [`GgmlType::can_dequantize`] accepts, for error messages.
pub const DEQUANTIZABLE: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, \
                                 Q4_K, Q5_K, Q6_K, Q8_K";

/// The types `beeswax quantize --type` writes, for error messages.
pub const QUANTIZE_TARGETS: &str = "f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1, q4_k, q5_k, q6_k";

impl GgmlType {
    fn entry(self) -> (GgmlType, u32, &'static str, usize, usize) {
        // Every variant is in the table (checked by a unit test), so the fallback is unused.
        TABLE
            .iter()
            .copied()
            .find(|e| e.0 == self)
            .unwrap_or((self, u32::MAX, "?", 1, 1))
    }

    /// The type with ggml id `id`, if ggml defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The id stored in GGUF files.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// ggml's name (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> usize {
        self.entry().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.entry().4
    }

    /// Whether beeswax can dequantize tensors of this type ([`DEQUANTIZABLE`]).
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16
                | BF16
                | Q4_0
                | Q4_1
                | Q5_0
                | Q5_1
                | Q8_0
                | Q2_K
                | Q3_K
                | Q4_K
                | Q5_K
                | Q6_K
                | Q8_K
        )
    }

    /// Whether beeswax can write tensors of this type ([`QUANTIZE_TARGETS`]).
    pub fn can_quantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
        )
    }

    /// Whether the type stores plain floats (no blocks).
    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    /// Bytes taken by `elements` values, or `None` if `elements` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        if elements % block != 0 {
            return None;
        }
        (elements / block).checked_mul(self.type_size() as u64)
    }

    /// candle's type for this ggml type, where candle's quantized matmul handles it.
    pub fn candle_matmul_dtype(self) -> Option<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType as C;
        use GgmlType::*;
        Some(match self {
            Q4_0 => C::Q4_0,
            Q4_1 => C::Q4_1,
            Q5_0 => C::Q5_0,
            Q5_1 => C::Q5_1,
            Q8_0 => C::Q8_0,
            Q2_K => C::Q2K,
            Q3_K => C::Q3K,
            Q4_K => C::Q4K,
            Q5_K => C::Q5K,
            Q6_K => C::Q6K,
            _ => return None,
        })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A type name that is not one of ggml's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ggml type {0:?} (known: {QUANTIZE_TARGETS}, and the other ggml names)")]
pub struct UnknownTypeName(pub String);

impl FromStr for GgmlType {
    type Err = UnknownTypeName;

    /// Parses ggml's names case-insensitively (`q4_k`, `Q8_0`, `bf16`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TABLE
            .iter()
            .find(|e| e.2.eq_ignore_ascii_case(s))
            .map(|e| e.0)
            .ok_or_else(|| UnknownTypeName(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, e) in TABLE.iter().enumerate() {
            assert_eq!(GgmlType::from_id(e.1), Some(e.0));
            assert_eq!(e.0.name().parse::<GgmlType>(), Ok(e.0));
            assert!(TABLE[..i].iter().all(|o| o.0 != e.0 && o.1 != e.1));
        }
        assert_eq!("q4_k".parse::<GgmlType>(), Ok(GgmlType::Q4_K));
        assert!("q4_3".parse::<GgmlType>().is_err());
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q6_K.type_size(), 210);
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_0.bytes_for(33), None);
    }
}
