//! GGUF metadata values (`general.architecture`, `general.alignment`, ...): the value types of
//! the format, typed arrays (so a large array costs its own size in memory, not an enum per
//! element), accessors, and their little-endian encoding for the writer.

use std::fmt;

/// The value type ids of the GGUF format.
pub(crate) mod ids {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float32`
    F32(f32),
    /// `float64`
    F64(f64),
    /// `bool`
    Bool(bool),
    /// `string` (UTF-8)
    String(String),
    /// `array` of one element type.
    Array(Array),
}

/// A metadata array: all elements share one type.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `uint8` elements.
    U8(Vec<u8>),
    /// `int8` elements.
    I8(Vec<i8>),
    /// `uint16` elements.
    U16(Vec<u16>),
    /// `int16` elements.
    I16(Vec<i16>),
    /// `uint32` elements.
    U32(Vec<u32>),
    /// `int32` elements.
    I32(Vec<i32>),
    /// `uint64` elements.
    U64(Vec<u64>),
    /// `int64` elements.
    I64(Vec<i64>),
    /// `float32` elements.
    F32(Vec<f32>),
    /// `float64` elements.
    F64(Vec<f64>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// `string` elements.
    String(Vec<String>),
    /// Nested arrays.
    Array(Vec<Array>),
}

impl Value {
    /// The GGUF type name (`uint32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "uint8",
            Value::I8(_) => "int8",
            Value::U16(_) => "uint16",
            Value::I16(_) => "int16",
            Value::U32(_) => "uint32",
            Value::I32(_) => "int32",
            Value::U64(_) => "uint64",
            Value::I64(_) => "int64",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::I8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The array, if this is an array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => ids::U8,
            Value::I8(_) => ids::I8,
            Value::U16(_) => ids::U16,
            Value::I16(_) => ids::I16,
            Value::U32(_) => ids::U32,
            Value::I32(_) => ids::I32,
            Value::U64(_) => ids::U64,
            Value::I64(_) => ids::I64,
            Value::F32(_) => ids::F32,
            Value::F64(_) => ids::F64,
            Value::Bool(_) => ids::BOOL,
            Value::String(_) => ids::STRING,
            Value::Array(_) => ids::ARRAY,
        }
    }

    /// Appends the value's type id and its encoding to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.type_id().to_le_bytes());
        match self {
            Value::U8(v) => out.push(*v),
            Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(u8::from(*v)),
            Value::String(s) => encode_str(s, out),
            Value::Array(a) => a.encode(out),
        }
    }
}

/// Appends a GGUF string (u64 length, then the bytes).
pub(crate) fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

macro_rules! encode_all {
    ($out:ident, $v:ident) => {
        for x in $v {
            $out.extend_from_slice(&x.to_le_bytes());
        }
    };
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as signed integers, if they are integers that fit.
    pub fn as_i64s(&self) -> Option<Vec<i64>> {
        fn all<T: Copy + TryInto<i64>>(v: &[T]) -> Option<Vec<i64>> {
            v.iter().map(|&x| x.try_into().ok()).collect()
        }
        match self {
            Array::U8(v) => all(v),
            Array::I8(v) => all(v),
            Array::U16(v) => all(v),
            Array::I16(v) => all(v),
            Array::U32(v) => all(v),
            Array::I32(v) => all(v),
            Array::U64(v) => all(v),
            Array::I64(v) => all(v),
            _ => None,
        }
    }

    /// The elements, if they are strings.
    pub fn as_strs(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// The GGUF type id of the elements.
    fn element_type_id(&self) -> u32 {
        match self {
            Array::U8(_) => ids::U8,
            Array::I8(_) => ids::I8,
            Array::U16(_) => ids::U16,
            Array::I16(_) => ids::I16,
            Array::U32(_) => ids::U32,
            Array::I32(_) => ids::I32,
            Array::U64(_) => ids::U64,
            Array::I64(_) => ids::I64,
            Array::F32(_) => ids::F32,
            Array::F64(_) => ids::F64,
            Array::Bool(_) => ids::BOOL,
            Array::String(_) => ids::STRING,
            Array::Array(_) => ids::ARRAY,
        }
    }

    /// Appends the element type, the length and the elements (without the `array` type id).
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.element_type_id().to_le_bytes());
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        match self {
            Array::U8(v) => out.extend_from_slice(v),
            Array::I8(v) => encode_all!(out, v),
            Array::U16(v) => encode_all!(out, v),
            Array::I16(v) => encode_all!(out, v),
            Array::U32(v) => encode_all!(out, v),
            Array::I32(v) => encode_all!(out, v),
            Array::U64(v) => encode_all!(out, v),
            Array::I64(v) => encode_all!(out, v),
            Array::F32(v) => encode_all!(out, v),
            Array::F64(v) => encode_all!(out, v),
            Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
            Array::String(v) => v.iter().for_each(|s| encode_str(s, out)),
            Array::Array(v) => v.iter().for_each(|a| a.encode(out)),
        }
    }
}

impl fmt::Display for Value {
    /// Scalars as themselves, strings quoted, arrays by type and length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(a) => write!(f, "array of {} elements", a.len()),
        }
    }
}
