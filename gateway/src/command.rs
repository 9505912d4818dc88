//! `$set` commands: decoding and validating a request against the device's
//! properties (all-or-nothing), and building the `$set/result` reply.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{alphabet, Engine as _};
use fieldgate_drivers::{DataType, DriverError, Value};
use serde_json::{Map, Number};

use crate::config::resolved::{DeviceSettings, PropertySemantics};
use crate::config::types::PayloadEncode;
use crate::state::{normalize, scaling, DeviceState, ScaleFactorError};

pub mod rate;
pub mod reply;
#[cfg(test)]
mod tests;

/// Largest `$set` payload accepted, counted before base64 decoding.
pub const MAX_SET_PAYLOAD: usize = 64 * 1024;

/// Error key for problems not tied to one property.
const PAYLOAD_KEY: &str = "$payload";

/// Standard base64, accepting input with or without `=` padding.
const BASE64_IN: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Key of the request id.
const ID_KEY: &str = "$id";

/// Largest `$set/result` payload (before base64).
pub const MAX_RESULT: usize = 64 * 1024;
/// Errors listed one by one in a result; the rest are counted in `$more`.
pub const MAX_LISTED_ERRORS: usize = 32;
/// Key of the count of errors not listed.
const MORE_KEY: &str = "$more";
/// Longest key echoed in a result or log line; longer ones are cut.
const MAX_ECHOED_KEY: usize = 256;

/// A validated `$set`: raw writes in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct SetRequest {
    /// The request's `$id`, echoed in the result.
    pub id: Option<serde_json::Value>,
    /// `(property index, raw value)` in the order given in the request.
    pub writes: Vec<(usize, Value)>,
    /// Per write, the `scaleFactor` exponent its raw value was computed
    /// with (`None`: the property has no `scaleFactor`), to report the
    /// applied value in the same units.
    pub exponents: Vec<Option<i32>>,
}

/// A `$set` that failed validation: nothing may be written.
#[derive(Debug, Clone, PartialEq)]
pub struct SetRejection {
    /// The request's `$id`, if it could be read.
    pub id: Option<serde_json::Value>,
    /// Property name (or `$payload`) → reason, for every problem found.
    pub errors: Vec<(String, String)>,
}

impl SetRejection {
    /// The errors for a log line: the first few, cut, and how many more.
    pub fn summary(&self) -> String {
        const SHOWN: usize = 5;
        let mut out = self
            .errors
            .iter()
            .take(SHOWN)
            .map(|(k, v)| format!("{}: {}", cut_key(k), cut_key(v)))
            .collect::<Vec<_>>()
            .join("; ");
        if self.errors.len() > SHOWN {
            out.push_str(&format!("; and {} more", self.errors.len() - SHOWN));
        }
        out
    }

    /// A rejection of the whole payload (no `$id` known).
    fn payload(reason: impl Into<String>) -> Self {
        Self {
            id: None,
            errors: vec![(PAYLOAD_KEY.to_owned(), reason.into())],
        }
    }
}

/// "a string", "an array", … for error messages.
fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Decodes (per `encode`) and validates a `$set` payload for a device that
/// has read nothing yet (a property with a `scaleFactor` cannot be set).
pub fn parse_set(
    payload: &[u8],
    encode: PayloadEncode,
    device: &DeviceSettings,
) -> Result<SetRequest, SetRejection> {
    parse_set_with(payload, encode, device, |p| match p.scale_factor() {
        None => Ok(None),
        Some(sf) => Err(ScaleFactorError::Unread {
            name: sf.name.clone(),
        }),
    })
}

/// Decodes (per `encode`) and validates a `$set` payload for a running
/// device: `state` (the device's own) gives its `scaleFactor` readings.
pub fn parse_set_in(
    payload: &[u8],
    encode: PayloadEncode,
    device: &DeviceSettings,
    state: &DeviceState,
) -> Result<SetRequest, SetRejection> {
    parse_set_with(payload, encode, device, |p| state.scale_exponent(p))
}

/// [`parse_set`] with `exponent` giving the current `scaleFactor` reading
/// of a property.
fn parse_set_with(
    payload: &[u8],
    encode: PayloadEncode,
    device: &DeviceSettings,
    exponent: impl Fn(&PropertySemantics) -> Result<Option<i32>, ScaleFactorError>,
) -> Result<SetRequest, SetRejection> {
    if payload.len() > MAX_SET_PAYLOAD {
        // Not the exact size: the bridge may have cut a huge message.
        return Err(SetRejection::payload(format!(
            "payload is too large: more than {MAX_SET_PAYLOAD} bytes"
        )));
    }
    let decoded;
    let json = match encode {
        PayloadEncode::Raw => payload,
        PayloadEncode::Base64 => {
            decoded = BASE64_IN
                .decode(payload.trim_ascii())
                .map_err(|e| SetRejection::payload(format!("payload is not valid base64: {e}")))?;
            decoded.as_slice()
        }
    };
    let doc: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| SetRejection::payload(format!("not JSON: {e}")))?;
    let serde_json::Value::Object(map) = doc else {
        return Err(SetRejection::payload(format!(
            "expected a JSON object of property values, got {}",
            kind_of(&doc)
        )));
    };

    let mut id = None;
    let mut errors = Vec::new();
    let mut writes = Vec::new();
    let mut exponents = Vec::new();
    // The writable properties are listed with the first unknown key only.
    let mut listed_writable = false;
    for (key, value) in &map {
        if key == ID_KEY {
            match value {
                serde_json::Value::Array(_) | serde_json::Value::Object(_) => errors.push((
                    key.clone(),
                    format!(
                        "expected a string, number, boolean or null, got {}",
                        kind_of(value)
                    ),
                )),
                _ => id = Some(value.clone()),
            }
            continue;
        }
        if key.starts_with('$') {
            errors.push((
                key.clone(),
                "unknown control key; the only one allowed is \"$id\"".to_owned(),
            ));
            continue;
        }
        let Some(index) = device.properties.iter().position(|p| *p.name == **key) else {
            errors.push((key.clone(), unknown_property(key, device, !listed_writable)));
            listed_writable = true;
            continue;
        };
        let prop = &device.properties[index];
        if !prop.writable {
            errors.push((key.clone(), "property is read-only".to_owned()));
            continue;
        }
        // The inverse of a `scaleFactor` needs its current reading.
        let exponent = match exponent(prop) {
            Ok(e) => e,
            Err(e) => {
                errors.push((key.clone(), format!("cannot convert to the raw value: {e}")));
                continue;
            }
        };
        match to_raw(prop, value, exponent) {
            Ok(raw) => {
                writes.push((index, raw));
                exponents.push(exponent);
            }
            Err(reason) => errors.push((key.clone(), reason.to_string())),
        }
    }
    if errors.is_empty() && writes.is_empty() {
        errors.push((PAYLOAD_KEY.to_owned(), "no properties to set".to_owned()));
    }
    if errors.is_empty() {
        Ok(SetRequest {
            id,
            writes,
            exponents,
        })
    } else {
        Err(SetRejection { id, errors })
    }
}

/// The message for an unknown property: a close match, and what is writable.
fn unknown_property(key: &str, device: &DeviceSettings, list_writable: bool) -> String {
    let writable: Vec<&str> = device
        .properties
        .iter()
        .filter(|p| p.writable)
        .map(|p| &*p.name)
        .collect();
    let mut msg = "unknown property".to_owned();
    let closest = writable
        .iter()
        .map(|name| (strsim::jaro_winkler(key, name), *name))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((_, name)) = closest {
        msg.push_str(&format!(" (did you mean \"{name}\"?)"));
    }
    if writable.is_empty() {
        msg.push_str("; this device has no writable properties");
    } else if !list_writable {
        msg.push_str("; see above for the writable properties");
    } else {
        msg.push_str("; writable properties: ");
        msg.push_str(&writable.join(", "));
    }
    msg
}

/// A quoted, comma-separated list of the enum labels of `prop`.
fn label_list(prop: &PropertySemantics) -> String {
    prop.enum_entries()
        .iter()
        .map(|e| format!("\"{}\"", e.label))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why one requested `$set` value cannot be written; the text goes into
/// the result's `errors` under the property's name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetValueError {
    /// An enum property got something other than a label.
    #[error("expected one of the labels {labels}, got {got}")]
    NotALabel {
        /// The allowed labels, quoted and comma-separated.
        labels: String,
        /// The JSON kind received (`a number`, …).
        got: &'static str,
    },
    /// An enum property got a label it does not have.
    #[error("unknown label \"{label}\"; allowed: {labels}")]
    UnknownLabel {
        /// The label received.
        label: String,
        /// The allowed labels, quoted and comma-separated.
        labels: String,
    },
    /// A `bool` property got something else.
    #[error("expected true or false, got {0}")]
    NotABool(&'static str),
    /// A `string` property got something else.
    #[error("expected a string, got {0}")]
    NotAString(&'static str),
    /// A `bytes` property got something other than a string.
    #[error("expected a hex string of bytes, got {0}")]
    NotHexText(&'static str),
    /// A numeric property got something else.
    #[error("expected a number, got {0}")]
    NotANumber(&'static str),
    /// Hex text of odd length.
    #[error("expected an even-length hex string, got {0} characters")]
    OddHexLength(usize),
    /// A character that is not a hex digit.
    #[error("expected a hex string, found {found:?} at position {position}")]
    BadHexDigit {
        /// The character.
        found: char,
        /// Its 0-based byte position.
        position: usize,
    },
    /// NaN or infinite.
    #[error("{0} is not a finite number")]
    NotFinite(Number),
    /// Below the property's `min`.
    #[error("{value} is below the minimum {min}")]
    BelowMin {
        /// The value received.
        value: Number,
        /// The property's `min`.
        min: f64,
    },
    /// Above the property's `max`.
    #[error("{value} is above the maximum {max}")]
    AboveMax {
        /// The value received.
        value: Number,
        /// The property's `max`.
        max: f64,
    },
    /// A fraction for an unscaled integer property.
    #[error("expected an integer for {ty}, got {value}")]
    NotAnInteger {
        /// The property's type.
        ty: DataType,
        /// The value received.
        value: Number,
    },
    /// Scaling back to the raw value overflowed.
    #[error("{0} is not finite after scaling")]
    NotFiniteAfterScaling(Number),
    /// The raw value (after inverse scaling) is outside the raw type.
    #[error("{value} does not fit {ty} after scaling (raw {raw})")]
    OutOfRangeAfterScaling {
        /// The value received.
        value: Number,
        /// The raw type.
        ty: DataType,
        /// The raw value it scales to.
        raw: f64,
    },
    /// The value is outside the raw type.
    #[error("{value} does not fit {ty}")]
    OutOfRange {
        /// The value received.
        value: Number,
        /// The raw type.
        ty: DataType,
    },
}

/// Converts one requested value (published units, or a label) to the raw
/// value to write, or says why it cannot be written; `exponent` is the
/// current reading of the property's `scaleFactor`.
fn to_raw(
    prop: &PropertySemantics,
    value: &serde_json::Value,
    exponent: Option<i32>,
) -> Result<Value, SetValueError> {
    if !prop.enum_entries().is_empty() {
        let Some(label) = value.as_str() else {
            return Err(SetValueError::NotALabel {
                labels: label_list(prop),
                got: kind_of(value),
            });
        };
        return prop
            .enum_entries()
            .iter()
            .find(|e| e.label == label)
            .map(|e| e.raw.clone())
            .ok_or_else(|| SetValueError::UnknownLabel {
                label: label.to_owned(),
                labels: label_list(prop),
            });
    }
    match prop.data_type {
        DataType::Bool => value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| SetValueError::NotABool(kind_of(value))),
        DataType::String => value
            .as_str()
            .map(|s| Value::String(s.to_owned()))
            .ok_or_else(|| SetValueError::NotAString(kind_of(value))),
        DataType::Bytes => {
            let s = value
                .as_str()
                .ok_or_else(|| SetValueError::NotHexText(kind_of(value)))?;
            parse_hex(s).map(Value::Bytes)
        }
        data_type => {
            let serde_json::Value::Number(n) = value else {
                return Err(SetValueError::NotANumber(kind_of(value)));
            };
            numeric_raw(prop, data_type, n, exponent)
        }
    }
}

/// Decodes an even-length hex string.
fn parse_hex(s: &str) -> Result<Vec<u8>, SetValueError> {
    if !s.len().is_multiple_of(2) {
        return Err(SetValueError::OddHexLength(s.chars().count()));
    }
    let digit = |position: usize, c: u8| -> Result<u8, SetValueError> {
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or(SetValueError::BadHexDigit {
                found: c as char,
                position,
            })
    };
    s.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(i, pair)| Ok(digit(2 * i, pair[0])? << 4 | digit(2 * i + 1, pair[1])?))
        .collect()
}

/// Checks bounds and converts a number in published units to the raw value.
fn numeric_raw(
    prop: &PropertySemantics,
    data_type: DataType,
    n: &Number,
    exponent: Option<i32>,
) -> Result<Value, SetValueError> {
    let Some(v) = n.as_f64().filter(|v| v.is_finite()) else {
        return Err(SetValueError::NotFinite(n.clone()));
    };
    if let Some(min) = prop.min().filter(|min| v < *min) {
        return Err(SetValueError::BelowMin {
            value: n.clone(),
            min,
        });
    }
    if let Some(max) = prop.max().filter(|max| v > *max) {
        return Err(SetValueError::AboveMax {
            value: n.clone(),
            max,
        });
    }
    let scaling = scaling(prop, exponent);
    if let Some((lo, hi)) = data_type.integer_range() {
        let exact = n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from));
        let raw = match (scaling, exact) {
            (None, Some(raw)) => raw,
            (None, None) if v.fract() != 0.0 => {
                return Err(SetValueError::NotAnInteger {
                    ty: data_type,
                    value: n.clone(),
                });
            }
            (None, None) => v as i128,
            (Some(s), _) => {
                let r = s.invert(v).round();
                if !r.is_finite() {
                    return Err(SetValueError::NotFiniteAfterScaling(n.clone()));
                }
                if r < lo as f64 || r > hi as f64 {
                    return Err(SetValueError::OutOfRangeAfterScaling {
                        value: n.clone(),
                        ty: data_type,
                        raw: r,
                    });
                }
                r as i128
            }
        };
        return Value::integer_of(data_type, raw).ok_or_else(|| SetValueError::OutOfRange {
            value: n.clone(),
            ty: data_type,
        });
    }
    let raw = match scaling {
        None => v,
        Some(s) => s.invert(v),
    };
    if !raw.is_finite() {
        return Err(SetValueError::NotFiniteAfterScaling(n.clone()));
    }
    if data_type == DataType::Float32 && raw.abs() > f64::from(f32::MAX) {
        return Err(match scaling {
            None => SetValueError::OutOfRange {
                value: n.clone(),
                ty: data_type,
            },
            Some(_) => SetValueError::OutOfRangeAfterScaling {
                value: n.clone(),
                ty: data_type,
                raw,
            },
        });
    }
    if data_type == DataType::Float32 {
        return Ok(Value::Float(f64::from(raw as f32)));
    }
    Ok(Value::Float(raw))
}

/// Builds a result object in the documented key order.
fn result_json(
    id: Option<&serde_json::Value>,
    ok: bool,
    applied: Map<String, serde_json::Value>,
    errors: Map<String, serde_json::Value>,
) -> Vec<u8> {
    let mut out = Map::new();
    if let Some(id) = id {
        out.insert(ID_KEY.to_owned(), id.clone());
    }
    out.insert("ok".to_owned(), serde_json::Value::Bool(ok));
    out.insert("applied".to_owned(), serde_json::Value::Object(applied));
    out.insert("errors".to_owned(), serde_json::Value::Object(errors));
    serde_json::to_vec(&serde_json::Value::Object(out)).unwrap_or_default()
}

/// The `$set/result` payload (plain JSON, not yet base64) for a request that
/// reached the device: `applied` holds the published-unit values of the first
/// `applied` writes, `failed` the write the device refused.
pub fn result_payload(
    device: &DeviceSettings,
    request: &SetRequest,
    applied: usize,
    failed: Option<(usize, &DriverError)>,
) -> Vec<u8> {
    let applied = applied.min(request.writes.len());
    let mut applied_map = Map::new();
    for (n, (index, raw)) in request.writes[..applied].iter().enumerate() {
        let Some(prop) = device.properties.get(*index) else {
            continue;
        };
        let exponent = request.exponents.get(n).copied().flatten();
        let value =
            normalize(prop, raw, exponent).map_or(serde_json::Value::Null, |p| p.to_json(prop));
        applied_map.insert(prop.name.to_string(), value);
    }
    let mut errors = Map::new();
    if let Some((position, error)) = failed {
        let name = request
            .writes
            .get(position)
            .and_then(|(index, _)| device.properties.get(*index))
            .map_or(PAYLOAD_KEY, |p| &*p.name);
        errors.insert(
            name.to_owned(),
            serde_json::Value::from(error.message.as_str()),
        );
    } else if applied < request.writes.len() {
        errors.insert(
            PAYLOAD_KEY.to_owned(),
            serde_json::Value::from(format!(
                "only {applied} of {} writes reached the device",
                request.writes.len()
            )),
        );
    }
    result_json(request.id.as_ref(), errors.is_empty(), applied_map, errors)
}

/// The `$set/result` payload for a rejected request: at most
/// [`MAX_LISTED_ERRORS`] errors (the rest counted in `$more`), keys cut,
/// and never more than [`MAX_RESULT`] bytes.
pub fn rejection_payload(rejection: &SetRejection) -> Vec<u8> {
    let mut listed = MAX_LISTED_ERRORS.min(rejection.errors.len());
    loop {
        let mut errors: Map<String, serde_json::Value> = rejection.errors[..listed]
            .iter()
            .map(|(k, v)| (cut_key(k), serde_json::Value::from(cut_message(v))))
            .collect();
        let more = rejection.errors.len() - listed;
        if more > 0 {
            errors.insert(MORE_KEY.to_owned(), serde_json::Value::from(more));
        }
        let id = rejection
            .id
            .as_ref()
            .filter(|id| id.to_string().len() <= MAX_RESULT / 4);
        let out = result_json(id, false, Map::new(), errors);
        if out.len() <= MAX_RESULT || listed == 0 {
            return out;
        }
        listed /= 2;
    }
}

/// `key` cut to [`MAX_ECHOED_KEY`] characters.
fn cut_key(key: &str) -> String {
    match key.char_indices().nth(MAX_ECHOED_KEY) {
        Some((at, _)) => format!("{}…", &key[..at]),
        None => key.to_owned(),
    }
}

/// An error message cut to 16 KiB (the list of writable properties of a
/// device with very many properties).
fn cut_message(msg: &str) -> String {
    const MAX: usize = 16 * 1024;
    if msg.len() <= MAX {
        return msg.to_owned();
    }
    let mut at = MAX;
    while !msg.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}…", &msg[..at])
}
