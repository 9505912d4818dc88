//! Raw property types and the typed values drivers read and write.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The raw type of a property on the device (config key `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A boolean.
    Bool,
    /// Signed 8-bit integer.
    Int8,
    /// Signed 16-bit integer.
    Int16,
    /// Signed 32-bit integer.
    Int32,
    /// Signed 64-bit integer.
    Int64,
    /// Unsigned 8-bit integer.
    Uint8,
    /// Unsigned 16-bit integer.
    Uint16,
    /// Unsigned 32-bit integer.
    Uint32,
    /// Unsigned 64-bit integer.
    Uint64,
    /// IEEE 754 single precision.
    Float32,
    /// IEEE 754 double precision.
    Float64,
    /// Text.
    String,
    /// Opaque bytes (hex in JSON).
    Bytes,
}

impl DataType {
    /// The config spelling of this type.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::Int8 => "int8",
            DataType::Int16 => "int16",
            DataType::Int32 => "int32",
            DataType::Int64 => "int64",
            DataType::Uint8 => "uint8",
            DataType::Uint16 => "uint16",
            DataType::Uint32 => "uint32",
            DataType::Uint64 => "uint64",
            DataType::Float32 => "float32",
            DataType::Float64 => "float64",
            DataType::String => "string",
            DataType::Bytes => "bytes",
        }
    }

    /// True for the integer and float types (the ones scale/offset/min/max apply to).
    pub fn is_numeric(self) -> bool {
        self.is_integer() || self.is_float()
    }

    /// True for the integer types.
    pub fn is_integer(self) -> bool {
        self.integer_range().is_some()
    }

    /// True for float32 and float64.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::Float32 | DataType::Float64)
    }

    /// The inclusive range of an integer type, as i128 so both signed and
    /// unsigned 64-bit bounds fit.
    pub fn integer_range(self) -> Option<(i128, i128)> {
        Some(match self {
            DataType::Int8 => (i8::MIN as i128, i8::MAX as i128),
            DataType::Int16 => (i16::MIN as i128, i16::MAX as i128),
            DataType::Int32 => (i32::MIN as i128, i32::MAX as i128),
            DataType::Int64 => (i64::MIN as i128, i64::MAX as i128),
            DataType::Uint8 => (0, u8::MAX as i128),
            DataType::Uint16 => (0, u16::MAX as i128),
            DataType::Uint32 => (0, u32::MAX as i128),
            DataType::Uint64 => (0, u64::MAX as i128),
            _ => return None,
        })
    }

    /// Size in bytes of fixed-size types; `None` for string and bytes.
    pub fn fixed_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Int8 | DataType::Uint8 => 1,
            DataType::Int16 | DataType::Uint16 => 2,
            DataType::Int32 | DataType::Uint32 | DataType::Float32 => 4,
            DataType::Int64 | DataType::Uint64 | DataType::Float64 => 8,
            DataType::String | DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A raw value as read from or written to a device.
///
/// Integers of every width travel as [`Value::Int`] (signed types) or
/// [`Value::Uint`] (unsigned types); floats as [`Value::Float`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// bool
    Bool(bool),
    /// int8..int64
    Int(i64),
    /// uint8..uint64
    Uint(u64),
    /// float32, float64
    Float(f64),
    /// string
    String(String),
    /// bytes
    Bytes(Vec<u8>),
}

impl Value {
    /// The value as a float, for numeric and bool values.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
            Value::Int(i) => Some(i as f64),
            Value::Uint(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            Value::String(_) | Value::Bytes(_) => None,
        }
    }

    /// The value as an exact integer (i128 holds every i64 and u64), for
    /// integer and bool values.
    pub fn as_i128(&self) -> Option<i128> {
        match *self {
            Value::Bool(b) => Some(b as i128),
            Value::Int(i) => Some(i as i128),
            Value::Uint(u) => Some(u as i128),
            _ => None,
        }
    }

    /// Builds the integer value of `data_type` from `v`, or `None` if `v` does
    /// not fit that type's range (or the type is not an integer).
    pub fn integer_of(data_type: DataType, v: i128) -> Option<Value> {
        let (lo, hi) = data_type.integer_range()?;
        if v < lo || v > hi {
            return None;
        }
        Some(if lo < 0 {
            Value::Int(v as i64)
        } else {
            Value::Uint(v as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_of_respects_ranges() {
        assert_eq!(Value::integer_of(DataType::Int16, -2), Some(Value::Int(-2)));
        assert_eq!(Value::integer_of(DataType::Int16, 40000), None);
        assert_eq!(Value::integer_of(DataType::Uint8, -1), None);
        assert_eq!(
            Value::integer_of(DataType::Uint64, u64::MAX as i128),
            Some(Value::Uint(u64::MAX))
        );
        assert_eq!(Value::integer_of(DataType::Float32, 1), None);
    }
}
