//! Property ↔ Sparkplug metric: the datatype a property publishes as (after
//! scaling and enum labels), its value, its birth properties, and DCMD
//! metric values turned back into `$set` JSON values.

use fieldgate_drivers::DataType as Raw;

use super::proto::payload::{metric, property_value, Metric, PropertySet, PropertyValue};
use super::proto::DataType;
use crate::config::resolved::PropertySemantics;
use crate::state::Published;

/// The Sparkplug datatype of a property's published value: an `enum` is a
/// String (its label), a scaled number a Double, otherwise the raw type.
pub(crate) fn datatype(prop: &PropertySemantics) -> DataType {
    if !prop.enum_entries().is_empty() {
        return DataType::String;
    }
    let scaled = prop.is_scaled();
    match prop.data_type {
        Raw::Bool => DataType::Boolean,
        Raw::String => DataType::String,
        Raw::Bytes => DataType::Bytes,
        _ if scaled => DataType::Double,
        Raw::Int8 => DataType::Int8,
        Raw::Int16 => DataType::Int16,
        Raw::Int32 => DataType::Int32,
        Raw::Int64 => DataType::Int64,
        Raw::Uint8 => DataType::UInt8,
        Raw::Uint16 => DataType::UInt16,
        Raw::Uint32 => DataType::UInt32,
        Raw::Uint64 => DataType::UInt64,
        Raw::Float32 => DataType::Float,
        Raw::Float64 => DataType::Double,
    }
}

/// The metric value of `value` published as `dt` (`None`: the value does
/// not fit the datatype, published as null). Signed integers of up to 32
/// bits travel in `int_value` as the two's complement of their own width
/// (Int16 -3 is 65533), as Sparkplug 3.0 says.
pub(crate) fn value(
    dt: DataType,
    value: &Published,
    prop: &PropertySemantics,
) -> Option<metric::Value> {
    use metric::Value as V;
    let int = |v: &Published| -> Option<i128> {
        match *v {
            Published::Int(i) => Some(i128::from(i)),
            Published::Uint(u) => Some(i128::from(u)),
            Published::Float(f) if f.fract() == 0.0 => Some(f as i128),
            _ => None,
        }
    };
    let float = |v: &Published| -> Option<f64> {
        match *v {
            Published::Int(i) => Some(i as f64),
            Published::Uint(u) => Some(u as f64),
            Published::Float(f) => Some(f),
            _ => None,
        }
    };
    Some(match dt {
        DataType::Boolean => match value {
            Published::Bool(b) => V::BooleanValue(*b),
            _ => return None,
        },
        DataType::String => match value {
            Published::Label(i) => V::StringValue(prop.enum_entries().get(*i)?.label.clone()),
            Published::Text(s) => V::StringValue(s.clone()),
            // An enum value without a label is published as its number.
            other => V::StringValue(match other {
                Published::Int(i) => i.to_string(),
                Published::Uint(u) => u.to_string(),
                Published::Float(f) => f.to_string(),
                Published::Bool(b) => b.to_string(),
                _ => return None,
            }),
        },
        DataType::Bytes => match value {
            Published::Text(hex) => V::BytesValue(unhex(hex)?),
            _ => return None,
        },
        DataType::Int8 => V::IntValue(u32::from(i8::try_from(int(value)?).ok()? as u8)),
        DataType::Int16 => V::IntValue(u32::from(i16::try_from(int(value)?).ok()? as u16)),
        DataType::Int32 => V::IntValue(i32::try_from(int(value)?).ok()? as u32),
        DataType::Int64 => V::LongValue(i64::try_from(int(value)?).ok()? as u64),
        DataType::UInt8 => V::IntValue(u8::try_from(int(value)?).ok()?.into()),
        DataType::UInt16 => V::IntValue(u16::try_from(int(value)?).ok()?.into()),
        DataType::UInt32 => V::IntValue(u32::try_from(int(value)?).ok()?),
        DataType::UInt64 => V::LongValue(u64::try_from(int(value)?).ok()?),
        DataType::Float => V::FloatValue(float(value)? as f32),
        DataType::Double => V::DoubleValue(float(value)?),
        _ => return None,
    })
}

/// A metric with `value`, or an explicit null when there is none (the last
/// read failed or the value does not fit).
pub(crate) fn data_metric(
    alias: u64,
    dt: DataType,
    value_now: Option<&Published>,
    prop: &PropertySemantics,
    timestamp: u64,
) -> Metric {
    let v = value_now.and_then(|v| value(dt, v, prop));
    Metric {
        alias: Some(alias),
        timestamp: Some(timestamp),
        datatype: Some(dt as u32),
        is_null: v.is_none().then_some(true),
        value: v,
        ..Default::default()
    }
}

/// The birth form of a property's metric: name, alias, datatype, value and
/// the properties `engUnit`, `description`, `writable`, `min`/`max` and
/// `enum` (the labels, comma-separated, in raw-value order).
pub(crate) fn birth_metric(
    alias: u64,
    prop: &PropertySemantics,
    value_now: Option<&Published>,
    timestamp: u64,
) -> Metric {
    let dt = datatype(prop);
    let mut m = data_metric(alias, dt, value_now, prop, timestamp);
    m.name = Some(prop.name.to_string());
    let mut set = PropertySet::default();
    let mut add = |key: &str, v: property_value::Value, t: DataType| {
        set.keys.push(key.to_owned());
        set.values.push(PropertyValue {
            r#type: Some(t as u32),
            is_null: None,
            value: Some(v),
        });
    };
    if let Some(unit) = prop.unit() {
        add(
            "engUnit",
            property_value::Value::StringValue(unit.to_owned()),
            DataType::String,
        );
    }
    if let Some(d) = prop.description() {
        add(
            "description",
            property_value::Value::StringValue(d.to_owned()),
            DataType::String,
        );
    }
    add(
        "writable",
        property_value::Value::BooleanValue(prop.writable),
        DataType::Boolean,
    );
    for (key, bound) in [("min", prop.min()), ("max", prop.max())] {
        if let Some(b) = bound {
            add(key, property_value::Value::DoubleValue(b), DataType::Double);
        }
    }
    if !prop.enum_entries().is_empty() {
        let labels: Vec<&str> = prop
            .enum_entries()
            .iter()
            .map(|e| e.label.as_str())
            .collect();
        add(
            "enum",
            property_value::Value::StringValue(labels.join(",")),
            DataType::String,
        );
    }
    m.properties = Some(set);
    m
}

/// Why a DCMD metric carries no value a `$set` could take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandValueError {
    /// The metric is marked null.
    #[error("a null value cannot be written")]
    Null,
    /// The metric has no value at all.
    #[error("the metric has no value")]
    Missing,
    /// A dataset, template or extension value.
    #[error("datasets, templates and extensions cannot be written")]
    Unsupported,
    /// NaN or infinite.
    #[error("the value is not finite")]
    NotFinite,
}

/// A DCMD metric's value as the JSON value a `$set` would carry for `prop`
/// (the `$set` validation then checks type, enum label and bounds).
pub(crate) fn command_json(m: &Metric) -> Result<serde_json::Value, CommandValueError> {
    use metric::Value as V;
    use serde_json::Value as J;
    if m.is_null == Some(true) {
        return Err(CommandValueError::Null);
    }
    let dt = m.datatype.and_then(|d| DataType::try_from(d as i32).ok());
    Ok(match (&m.value, dt) {
        (Some(V::BooleanValue(b)), _) => J::Bool(*b),
        (Some(V::StringValue(s)), _) => J::String(s.clone()),
        (Some(V::BytesValue(b)), _) => J::String(crate::state::hex(b)),
        (Some(V::FloatValue(f)), _) => json_f64(f64::from(*f))?,
        (Some(V::DoubleValue(f)), _) => json_f64(*f)?,
        (Some(V::IntValue(i)), Some(DataType::Int8)) => J::from(*i as u8 as i8),
        (Some(V::IntValue(i)), Some(DataType::Int16)) => J::from(*i as u16 as i16),
        (Some(V::IntValue(i)), Some(DataType::Int32)) => J::from(*i as i32),
        (Some(V::IntValue(i)), _) => J::from(*i),
        (Some(V::LongValue(l)), Some(DataType::Int64)) => J::from(*l as i64),
        (Some(V::LongValue(l)), _) => J::from(*l),
        (None, _) => return Err(CommandValueError::Missing),
        (Some(_), _) => return Err(CommandValueError::Unsupported),
    })
}

/// `f` as a JSON number (JSON has no NaN or infinity).
fn json_f64(f: f64) -> Result<serde_json::Value, CommandValueError> {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .ok_or(CommandValueError::NotFinite)
}

/// Bytes from lowercase or uppercase hex (`None` for malformed text).
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
