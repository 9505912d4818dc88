//! Variant ⇄ [`Value`] conversion for the OPC-UA driver.
//!
//! Reads accept every scalar Variant that fits the property's type without
//! loss (integers are range-checked, floats take any number); writes convert
//! to the Variant type the node last reported, so the server sees its own type.

use opcua::types::{
    ByteString, DataValue, DateTime, StatusCode, UAString, Variant, VariantScalarTypeId,
};

use crate::{DataType, DriverError, ErrorKind, Value};

/// Decodes one data value of a node into a property value, or a per-property
/// error for a Bad/Uncertain status or a Variant that does not fit the type.
pub fn decode(dv: &DataValue, data_type: DataType) -> Result<Value, DriverError> {
    let status = dv.status.unwrap_or(StatusCode::Good);
    if !status.is_good() {
        return Err(status_error(status));
    }
    match &dv.value {
        None | Some(Variant::Empty) => Err(DriverError::new(
            ErrorKind::Decode,
            "the node returned no value",
        )),
        Some(v) => variant_to_value(v, data_type),
    }
}

/// A per-property error for a non-Good status code, naming the status.
pub fn status_error(status: StatusCode) -> DriverError {
    DriverError::new(
        ErrorKind::Exception,
        format!("OPC-UA status {status} (0x{:08X})", status.bits()),
    )
}

fn variant_name(v: &Variant) -> String {
    match v.scalar_type_id() {
        Some(t) => format!("{t:?}"),
        None => match v {
            Variant::Empty => "an empty value".into(),
            _ => "an array or matrix".into(),
        },
    }
}

fn mismatch(v: &Variant, t: DataType) -> DriverError {
    DriverError::new(
        ErrorKind::Decode,
        format!(
            "the node holds {}, which does not fit type `{t}`",
            variant_name(v)
        ),
    )
}

fn integer_of(v: &Variant) -> Option<i128> {
    Some(match *v {
        Variant::SByte(x) => x as i128,
        Variant::Byte(x) => x as i128,
        Variant::Int16(x) => x as i128,
        Variant::UInt16(x) => x as i128,
        Variant::Int32(x) => x as i128,
        Variant::UInt32(x) => x as i128,
        Variant::Int64(x) => x as i128,
        Variant::UInt64(x) => x as i128,
        _ => return None,
    })
}

/// Converts a Variant into a value of `data_type`.
pub fn variant_to_value(v: &Variant, data_type: DataType) -> Result<Value, DriverError> {
    match data_type {
        DataType::Bool => match v {
            Variant::Boolean(b) => Ok(Value::Bool(*b)),
            _ => Err(mismatch(v, data_type)),
        },
        t if t.is_integer() => {
            let i = integer_of(v).ok_or_else(|| mismatch(v, t))?;
            Value::integer_of(t, i).ok_or_else(|| {
                DriverError::new(
                    ErrorKind::Decode,
                    format!("value {i} is out of range for type `{t}`"),
                )
            })
        }
        DataType::Float32 | DataType::Float64 => match v {
            Variant::Float(f) => Ok(Value::Float(*f as f64)),
            Variant::Double(f) => Ok(Value::Float(*f)),
            other => match integer_of(other) {
                Some(i) => Ok(Value::Float(i as f64)),
                None => Err(mismatch(v, data_type)),
            },
        },
        DataType::String => match v {
            Variant::String(s) => Ok(Value::String(
                s.as_ref().trim_end_matches(['\0', ' ']).to_string(),
            )),
            Variant::DateTime(d) => Ok(Value::String(
                d.as_chrono()
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            )),
            Variant::LocalizedText(t) => Ok(Value::String(t.text.as_ref().to_string())),
            _ => Err(mismatch(v, data_type)),
        },
        DataType::Bytes => match v {
            Variant::ByteString(b) => Ok(Value::Bytes(b.value.clone().unwrap_or_default())),
            _ => Err(mismatch(v, data_type)),
        },
        _ => Err(mismatch(v, data_type)),
    }
}

/// The Variant type a property of `data_type` naturally maps to, used when
/// the node's own type is not known yet.
pub fn natural_type(data_type: DataType) -> VariantScalarTypeId {
    match data_type {
        DataType::Bool => VariantScalarTypeId::Boolean,
        DataType::Int8 => VariantScalarTypeId::SByte,
        DataType::Int16 => VariantScalarTypeId::Int16,
        DataType::Int32 => VariantScalarTypeId::Int32,
        DataType::Int64 => VariantScalarTypeId::Int64,
        DataType::Uint8 => VariantScalarTypeId::Byte,
        DataType::Uint16 => VariantScalarTypeId::UInt16,
        DataType::Uint32 => VariantScalarTypeId::UInt32,
        DataType::Uint64 => VariantScalarTypeId::UInt64,
        DataType::Float32 => VariantScalarTypeId::Float,
        DataType::Float64 => VariantScalarTypeId::Double,
        DataType::String => VariantScalarTypeId::String,
        DataType::Bytes => VariantScalarTypeId::ByteString,
    }
}

fn refuse(value: &Value, target: VariantScalarTypeId) -> DriverError {
    DriverError::new(
        ErrorKind::Rejected,
        format!("cannot write {value:?} to a node of type {target:?}"),
    )
}

/// Converts a value into a Variant of the node's type `target`.
pub fn value_to_variant(
    value: &Value,
    target: VariantScalarTypeId,
) -> Result<Variant, DriverError> {
    use VariantScalarTypeId as T;
    let int = value.as_i128().or_else(|| match value {
        Value::Float(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 1e19 => Some(*f as i128),
        _ => None,
    });
    let out_of_range = || {
        DriverError::new(
            ErrorKind::Rejected,
            format!("{value:?} is out of range for a node of type {target:?}"),
        )
    };
    macro_rules! int {
        ($ty:ty, $variant:ident) => {{
            let i = int.ok_or_else(|| refuse(value, target))?;
            Variant::$variant(<$ty>::try_from(i).map_err(|_| out_of_range())?)
        }};
    }
    Ok(match target {
        T::Boolean => match value {
            Value::Bool(b) => Variant::Boolean(*b),
            _ => match int {
                Some(0) => Variant::Boolean(false),
                Some(1) => Variant::Boolean(true),
                _ => return Err(refuse(value, target)),
            },
        },
        T::SByte => int!(i8, SByte),
        T::Byte => int!(u8, Byte),
        T::Int16 => int!(i16, Int16),
        T::UInt16 => int!(u16, UInt16),
        T::Int32 => int!(i32, Int32),
        T::UInt32 => int!(u32, UInt32),
        T::Int64 => int!(i64, Int64),
        T::UInt64 => int!(u64, UInt64),
        T::Float => Variant::Float(value.as_f64().ok_or_else(|| refuse(value, target))? as f32),
        T::Double => Variant::Double(value.as_f64().ok_or_else(|| refuse(value, target))?),
        T::String => match value {
            Value::String(s) => Variant::String(UAString::from(s.as_str())),
            _ => return Err(refuse(value, target)),
        },
        T::DateTime => match value {
            Value::String(s) => {
                Variant::DateTime(Box::new(s.parse::<DateTime>().map_err(|_| {
                    DriverError::new(
                        ErrorKind::Rejected,
                        format!("{s:?} is not an RFC 3339 date and time"),
                    )
                })?))
            }
            _ => return Err(refuse(value, target)),
        },
        T::ByteString => match value {
            Value::Bytes(b) => Variant::ByteString(ByteString::from(b.clone())),
            _ => return Err(refuse(value, target)),
        },
        _ => return Err(refuse(value, target)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_scalar_type() {
        assert_eq!(
            variant_to_value(&Variant::Boolean(true), DataType::Bool),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            variant_to_value(&Variant::SByte(-3), DataType::Int8),
            Ok(Value::Int(-3))
        );
        assert_eq!(
            variant_to_value(&Variant::UInt64(u64::MAX), DataType::Uint64),
            Ok(Value::Uint(u64::MAX))
        );
        assert_eq!(
            variant_to_value(&Variant::Int16(7), DataType::Float64),
            Ok(Value::Float(7.0))
        );
        assert_eq!(
            variant_to_value(&Variant::Float(1.5), DataType::Float32),
            Ok(Value::Float(1.5))
        );
        assert_eq!(
            variant_to_value(&Variant::String("ab \0".into()), DataType::String),
            Ok(Value::String("ab".into()))
        );
        assert_eq!(
            variant_to_value(&Variant::ByteString(vec![1u8, 2].into()), DataType::Bytes),
            Ok(Value::Bytes(vec![1, 2]))
        );
        let dt: DateTime = "2024-05-06T07:08:09Z".parse().unwrap();
        assert_eq!(
            variant_to_value(&Variant::DateTime(Box::new(dt)), DataType::String),
            Ok(Value::String("2024-05-06T07:08:09Z".into()))
        );
    }

    #[test]
    fn range_and_type_mismatches_are_decode_errors() {
        let e = variant_to_value(&Variant::Int32(300), DataType::Uint8).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Decode);
        assert!(e.message.contains("out of range"), "{e}");
        let e = variant_to_value(&Variant::Double(1.0), DataType::Bool).unwrap_err();
        assert!(e.message.contains("Double"), "{e}");
    }

    #[test]
    fn bad_status_names_the_status() {
        let dv = DataValue {
            value: Some(Variant::Int32(1)),
            status: Some(StatusCode::BadNodeIdUnknown),
            ..Default::default()
        };
        let e = decode(&dv, DataType::Int32).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exception);
        assert!(e.message.contains("BadNodeIdUnknown"), "{e}");
    }

    #[test]
    fn writes_convert_to_the_node_type() {
        assert_eq!(
            value_to_variant(&Value::Float(3.0), VariantScalarTypeId::Int16),
            Ok(Variant::Int16(3))
        );
        assert_eq!(
            value_to_variant(&Value::Int(2), VariantScalarTypeId::Double),
            Ok(Variant::Double(2.0))
        );
        assert!(value_to_variant(&Value::Int(-1), VariantScalarTypeId::Byte).is_err());
        assert!(value_to_variant(&Value::String("x".into()), VariantScalarTypeId::Int32).is_err());
        assert!(matches!(
            value_to_variant(
                &Value::String("2024-01-01T00:00:00Z".into()),
                VariantScalarTypeId::DateTime
            ),
            Ok(Variant::DateTime(_))
        ));
    }
}
