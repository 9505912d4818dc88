//! BLE advertisements read passively, without a connection: one pure decoder
//! per format (bytes → named fields) and the passive scan shared per adapter.
//!
//! - `bthome`: BTHome v2 service data (UUID 0xFCD2), plain or AES-CCM encrypted.
//! - `pvvx`, `atc1441`: the custom formats of LYWSD03MMC firmware (service data
//!   on UUID 0x181A).
//! - `ruuvi`: RuuviTag data format 5 (manufacturer data of company 0x0499).
//! - `raw`: one value at an offset of a manufacturer or service data entry.
//! - `scan`: the shared passive scan and the per-device loop.

pub mod atc1441;
pub mod bthome;
pub mod pvvx;
pub mod raw;
pub mod ruuvi;
pub mod scan;

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::{DataType, Value};

pub use raw::{RawField, RawSource};

/// An advertisement format (`protocol.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// BTHome v2.
    Bthome,
    /// pvvx custom format (LYWSD03MMC and relatives).
    Pvvx,
    /// ATC1441 custom format.
    Atc1441,
    /// RuuviTag data format 5 (RAWv2).
    Ruuvi,
    /// Fields defined byte by byte in the config.
    Raw,
}

impl Format {
    /// Every format, in config order.
    pub const ALL: [Format; 5] = [
        Format::Bthome,
        Format::Pvvx,
        Format::Atc1441,
        Format::Ruuvi,
        Format::Raw,
    ];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Bthome => "bthome",
            Format::Pvvx => "pvvx",
            Format::Atc1441 => "atc1441",
            Format::Ruuvi => "ruuvi",
            Format::Raw => "raw",
        }
    }

    /// Parses the config spelling.
    pub fn parse(text: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == text)
    }

    /// The fields a decoder of this format can produce (first instance of
    /// each; BTHome adds `_2`, `_3`, … for repeated objects).
    pub fn fields(self) -> &'static [FieldInfo] {
        match self {
            Format::Bthome => bthome::FIELDS,
            Format::Pvvx => pvvx::FIELDS,
            Format::Atc1441 => atc1441::FIELDS,
            Format::Ruuvi => ruuvi::FIELDS,
            Format::Raw => &[],
        }
    }

    /// The description of field `name` of this format (`rssi` for every
    /// format; BTHome's numbered repeats like `temperature_2` too).
    pub fn field(self, name: &str) -> Option<FieldInfo> {
        if name == RSSI.name {
            return Some(RSSI);
        }
        if let Some(f) = self.fields().iter().find(|f| f.name == name) {
            return Some(*f);
        }
        if self == Format::Bthome {
            let (base, n) = name.rsplit_once('_')?;
            let n: u32 = n.parse().ok()?;
            if n >= 2 {
                return self.fields().iter().find(|f| f.name == base).copied();
            }
        }
        None
    }
}

/// One field a decoder produces: its name, raw type and unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldInfo {
    /// Field name, as published.
    pub name: &'static str,
    /// The type of its value.
    pub data_type: DataType,
    /// Unit, for `$meta`.
    pub unit: Option<&'static str>,
}

const fn field(name: &'static str, data_type: DataType, unit: Option<&'static str>) -> FieldInfo {
    FieldInfo {
        name,
        data_type,
        unit,
    }
}

/// The received signal strength of the latest advertisement (every format).
pub const RSSI: FieldInfo = field("rssi", DataType::Int16, Some("dBm"));

/// The BLE SIG "Environmental Sensing" service UUID 0x181A (pvvx, ATC1441).
pub const ENVIRONMENTAL_SENSING: Uuid = short_uuid(0x181a);

/// A 16-bit UUID on the Bluetooth base UUID.
pub const fn short_uuid(short: u16) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_1000_8000_0080_5f9b_34fb | ((short as u128) << 96))
}

/// What a device advertised, as BlueZ reports it (the latest data of each
/// kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advertisement {
    /// The advertiser's address, most significant byte first.
    pub address: [u8; 6],
    /// The advertised local name, when known.
    pub name: Option<String>,
    /// Signal strength of the latest advertisement.
    pub rssi: Option<i16>,
    /// Manufacturer data by company id.
    pub manufacturer_data: HashMap<u16, Vec<u8>>,
    /// Service data by service UUID.
    pub service_data: HashMap<Uuid, Vec<u8>>,
}

/// The fields decoded from one advertisement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    /// `(field name, value)` in the order the advertisement carried them.
    pub fields: Vec<(Cow<'static, str>, Value)>,
    /// BTHome packet id (object 0x00), when present.
    pub packet_id: Option<u8>,
    /// BTHome encryption counter, when encrypted.
    pub counter: Option<u32>,
}

impl Decoded {
    fn push(&mut self, name: &'static str, value: Value) {
        self.fields.push((Cow::Borrowed(name), value));
    }

    /// The value of field `name`, if decoded.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Why an advertisement gave no readings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The advertisement does not carry this format's data at all (an
    /// update of something else): not an error, nothing to publish.
    #[error("advertisement carries no {0} data")]
    Absent(&'static str),
    /// The format's data is there but cannot be decoded (or decrypted).
    #[error("{0}")]
    Invalid(String),
}

fn invalid(m: impl Into<String>) -> DecodeError {
    DecodeError::Invalid(m.into())
}

/// A BTHome v2 bind key: 16 bytes, written as 32 hex digits.
pub type BindKey = [u8; 16];

/// Parses a bind key of 32 hex digits.
pub fn parse_bind_key(text: &str) -> Result<BindKey, String> {
    let t = text.trim();
    let mut key = [0u8; 16];
    let ok = t.len() == 32
        && t.is_char_boundary(0)
        && key.iter_mut().enumerate().all(|(i, b)| {
            t.get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .map(|v| *b = v)
                .is_some()
        });
    if ok {
        Ok(key)
    } else {
        Err(format!(
            "bindKey must be 32 hex digits (16 bytes), got {} characters",
            t.chars().count()
        ))
    }
}

/// Decodes `adv` as `format` (not `raw`, whose fields are config-defined).
pub fn decode(
    format: Format,
    adv: &Advertisement,
    key: Option<&BindKey>,
) -> Result<Decoded, DecodeError> {
    match format {
        Format::Bthome => bthome::decode(adv, key),
        Format::Pvvx => pvvx::decode(adv),
        Format::Atc1441 => atc1441::decode(adv),
        Format::Ruuvi => ruuvi::decode(adv),
        Format::Raw => Err(DecodeError::Absent("raw")),
    }
}

/// The known formats `adv` carries, each with what it decodes to (for
/// `fieldgate discover ble`). Encrypted BTHome is reported without a key.
pub fn recognise(adv: &Advertisement) -> Vec<(Format, Result<Decoded, DecodeError>)> {
    [Format::Bthome, Format::Pvvx, Format::Atc1441, Format::Ruuvi]
        .into_iter()
        .filter_map(|f| match decode(f, adv, None) {
            Err(DecodeError::Absent(_)) => None,
            r => Some((f, r)),
        })
        .collect()
}

/// How an advertising device is read (the `protocol` of mode
/// `advertisement`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdvertSettings {
    /// The advertisement format.
    pub format: Format,
    /// BTHome bind key, when the sensor encrypts.
    pub bind_key: Option<BindKey>,
    /// Offline when nothing was heard for this long.
    pub stale_after: Duration,
}

/// Where an advertising device's property comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum AdvertAddress {
    /// A field the format's decoder produces (or `rssi`).
    Field(String),
    /// Bytes of a manufacturer or service data entry.
    Raw(RawField),
    /// The device-level `$advertisement` error slot: never published as a
    /// value, only in `errors` when an advertisement cannot be decoded.
    Status,
}

/// The name of the device-level error slot of an advertising device.
pub const STATUS_PROPERTY: &str = "$advertisement";

/// Reads `len` little-endian bytes as an unsigned integer.
fn le_uint(b: &[u8]) -> u64 {
    b.iter()
        .rev()
        .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
}

/// Reads `b` as a little-endian two's complement integer.
fn le_int(b: &[u8]) -> i64 {
    let bits = (b.len() * 8) as u32;
    if bits == 0 || bits > 64 {
        return 0;
    }
    let u = le_uint(b);
    let shift = 64 - bits;
    ((u << shift) as i64) >> shift
}

/// `raw × factor`, rounded to the factor's decimal places (as the published
/// specifications give the values: 2248 × 0.01 = 22.48, not
/// 22.480000000000004). The product is rounded by its exact decimal value,
/// ties to even, as Python's `round` in Home Assistant's parsers does
/// (37 × 0.35 is 12.949999999999999 in binary, so 12.9).
fn scaled(raw: f64, factor: f64, decimals: i32) -> f64 {
    let x = raw * factor;
    let d = usize::try_from(decimals).unwrap_or(0);
    format!("{x:.d$}").parse().unwrap_or(x)
}

/// The LYWSD03MMC firmware formats repeat the sender's MAC in their payload:
/// an advertisement naming another device is refused.
pub(crate) fn check_sender(adv: &Advertisement, named: &[u8; 6]) -> Result<(), DecodeError> {
    if *named == adv.address {
        return Ok(());
    }
    Err(invalid(format!(
        "advertisement names MAC {}, not the sender's {}",
        format_address(named),
        format_address(&adv.address)
    )))
}

/// The address as `AA:BB:CC:DD:EE:FF`.
pub fn format_address(a: &[u8; 6]) -> String {
    a.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_keys() {
        let k = parse_bind_key("231d39c1d7cc1ab1aee224cd096db932").unwrap();
        assert_eq!(k[0], 0x23);
        assert_eq!(k[15], 0x32);
        assert!(parse_bind_key("231d39c1d7cc1ab1aee224cd096db93").is_err());
        assert!(parse_bind_key("231d39c1d7cc1ab1aee224cd096db93z").is_err());
        assert!(parse_bind_key("ü31d39c1d7cc1ab1aee224cd096db93").is_err());
    }

    #[test]
    fn fields_by_name() {
        assert_eq!(
            Format::Bthome.field("temperature").unwrap().unit,
            Some("°C")
        );
        assert_eq!(
            Format::Bthome.field("temperature_2").unwrap().name,
            "temperature"
        );
        assert!(Format::Bthome.field("temperature_1").is_none());
        assert!(Format::Pvvx.field("temperature_2").is_none());
        assert_eq!(Format::Raw.field("rssi"), Some(RSSI));
        assert!(Format::Ruuvi.field("nope").is_none());
    }

    #[test]
    fn integers() {
        assert_eq!(le_uint(&[0x13, 0x8a, 0x14]), 0x148a13);
        assert_eq!(le_int(&[0xea]), -22);
        assert_eq!(le_int(&[0xea, 0xea]), -5398);
        assert_eq!(scaled(2248.0, 0.01, 2), 22.48);
        assert_eq!(scaled(37.0, 0.35, 1), 12.9);
        assert_eq!(scaled(-21.0, 0.35, 1), -7.3);
        assert_eq!(scaled(-22.0, 0.35, 1), -7.7);
    }
}
