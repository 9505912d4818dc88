//! BTHome v2 (<https://bthome.io/format/>): service data on UUID 0xFCD2.
//!
//! The first byte is the device information: bit 0 encrypted, bit 1 MAC
//! included (deprecated), bit 2 trigger-based, bits 5–7 the version (2).
//! Then objects follow, each an object id and a value of the id's fixed
//! length (text, raw and command objects carry a length byte). Encrypted
//! payloads end with a 4-byte counter and a 4-byte MIC; the cipher is AES-CCM
//! with the 16-byte bind key, a 4-byte tag and the 13-byte nonce
//! `MAC ‖ 0xD2 0xFC ‖ device information ‖ counter`.

use std::borrow::Cow;

use aes::Aes128;
use ccm::aead::{generic_array::GenericArray, AeadInPlace, KeyInit};
use ccm::consts::{U13, U4};
use ccm::Ccm;

use super::{
    field, invalid, le_int, le_uint, scaled, short_uuid, Advertisement, BindKey, DecodeError,
    Decoded, FieldInfo,
};
use crate::{DataType, Value};

/// The BTHome v2 service UUID 0xFCD2.
pub const UUID: uuid::Uuid = short_uuid(0xfcd2);

type Cipher = Ccm<Aes128, U4, U13>;

/// How an object's bytes become a value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Unsigned little-endian, times the factor.
    Uint,
    /// Signed little-endian, times the factor.
    Sint,
    /// A binary sensor: 0 = false, anything else true.
    Binary,
    /// Button event: one byte.
    Button,
    /// Dimmer event: direction byte and step count.
    Dimmer,
    /// Command: opcode and arguments, published as hex.
    Command,
    /// UTF-8 text with a length byte.
    Text,
    /// Bytes with a length byte.
    Raw,
    /// Device type id (device information).
    DeviceType,
    /// Firmware version in 4 or 3 bytes, least significant part first.
    Firmware,
}

/// One object id of the specification.
struct Object {
    id: u8,
    name: &'static str,
    kind: Kind,
    len: usize,
    factor: f64,
    decimals: i32,
}

const fn obj(
    id: u8,
    name: &'static str,
    kind: Kind,
    len: usize,
    factor: f64,
    decimals: i32,
) -> Object {
    Object {
        id,
        name,
        kind,
        len,
        factor,
        decimals,
    }
}

use Kind::*;

/// Every object id of the BTHome v2 specification (ascending).
const OBJECTS: &[Object] = &[
    obj(0x00, "packetId", Uint, 1, 1.0, 0),
    obj(0x01, "battery", Uint, 1, 1.0, 0),
    obj(0x02, "temperature", Sint, 2, 0.01, 2),
    obj(0x03, "humidity", Uint, 2, 0.01, 2),
    obj(0x04, "pressure", Uint, 3, 0.01, 2),
    obj(0x05, "illuminance", Uint, 3, 0.01, 2),
    obj(0x06, "mass", Uint, 2, 0.01, 2),
    obj(0x07, "massLb", Uint, 2, 0.01, 2),
    obj(0x08, "dewPoint", Sint, 2, 0.01, 2),
    obj(0x09, "count", Uint, 1, 1.0, 0),
    obj(0x0a, "energy", Uint, 3, 0.001, 3),
    obj(0x0b, "power", Uint, 3, 0.01, 2),
    obj(0x0c, "voltage", Uint, 2, 0.001, 3),
    obj(0x0d, "pm25", Uint, 2, 1.0, 0),
    obj(0x0e, "pm10", Uint, 2, 1.0, 0),
    obj(0x0f, "generic", Binary, 1, 1.0, 0),
    obj(0x10, "powerOn", Binary, 1, 1.0, 0),
    obj(0x11, "opening", Binary, 1, 1.0, 0),
    obj(0x12, "co2", Uint, 2, 1.0, 0),
    obj(0x13, "tvoc", Uint, 2, 1.0, 0),
    obj(0x14, "moisture", Uint, 2, 0.01, 2),
    obj(0x15, "batteryLow", Binary, 1, 1.0, 0),
    obj(0x16, "batteryCharging", Binary, 1, 1.0, 0),
    obj(0x17, "carbonMonoxide", Binary, 1, 1.0, 0),
    obj(0x18, "cold", Binary, 1, 1.0, 0),
    obj(0x19, "connectivity", Binary, 1, 1.0, 0),
    obj(0x1a, "door", Binary, 1, 1.0, 0),
    obj(0x1b, "garageDoor", Binary, 1, 1.0, 0),
    obj(0x1c, "gasDetected", Binary, 1, 1.0, 0),
    obj(0x1d, "heat", Binary, 1, 1.0, 0),
    obj(0x1e, "light", Binary, 1, 1.0, 0),
    obj(0x1f, "lock", Binary, 1, 1.0, 0),
    obj(0x20, "moistureDetected", Binary, 1, 1.0, 0),
    obj(0x21, "motion", Binary, 1, 1.0, 0),
    obj(0x22, "moving", Binary, 1, 1.0, 0),
    obj(0x23, "occupancy", Binary, 1, 1.0, 0),
    obj(0x24, "plug", Binary, 1, 1.0, 0),
    obj(0x25, "presence", Binary, 1, 1.0, 0),
    obj(0x26, "problem", Binary, 1, 1.0, 0),
    obj(0x27, "running", Binary, 1, 1.0, 0),
    obj(0x28, "safety", Binary, 1, 1.0, 0),
    obj(0x29, "smoke", Binary, 1, 1.0, 0),
    obj(0x2a, "sound", Binary, 1, 1.0, 0),
    obj(0x2b, "tamper", Binary, 1, 1.0, 0),
    obj(0x2c, "vibration", Binary, 1, 1.0, 0),
    obj(0x2d, "window", Binary, 1, 1.0, 0),
    obj(0x2e, "humidity", Uint, 1, 1.0, 0),
    obj(0x2f, "moisture", Uint, 1, 1.0, 0),
    obj(0x3a, "button", Button, 1, 1.0, 0),
    obj(0x3b, "command", Command, 0, 1.0, 0),
    obj(0x3c, "dimmer", Dimmer, 2, 1.0, 0),
    obj(0x3d, "count", Uint, 2, 1.0, 0),
    obj(0x3e, "count", Uint, 4, 1.0, 0),
    obj(0x3f, "rotation", Sint, 2, 0.1, 1),
    obj(0x40, "distance", Uint, 2, 1.0, 0),
    obj(0x41, "distanceM", Uint, 2, 0.1, 1),
    obj(0x42, "duration", Uint, 3, 0.001, 3),
    obj(0x43, "current", Uint, 2, 0.001, 3),
    obj(0x44, "speed", Uint, 2, 0.01, 2),
    obj(0x45, "temperature", Sint, 2, 0.1, 1),
    obj(0x46, "uvIndex", Uint, 1, 0.1, 1),
    obj(0x47, "volume", Uint, 2, 0.1, 1),
    obj(0x48, "volumeMl", Uint, 2, 1.0, 0),
    obj(0x49, "flowRate", Uint, 2, 0.001, 3),
    obj(0x4a, "voltage", Uint, 2, 0.1, 1),
    obj(0x4b, "gas", Uint, 3, 0.001, 3),
    obj(0x4c, "gas", Uint, 4, 0.001, 3),
    obj(0x4d, "energy", Uint, 4, 0.001, 3),
    obj(0x4e, "volume", Uint, 4, 0.001, 3),
    obj(0x4f, "water", Uint, 4, 0.001, 3),
    obj(0x50, "timestamp", Uint, 4, 1.0, 0),
    obj(0x51, "acceleration", Uint, 2, 0.001, 3),
    obj(0x52, "gyroscope", Uint, 2, 0.001, 3),
    obj(0x53, "text", Text, 0, 1.0, 0),
    obj(0x54, "raw", Raw, 0, 1.0, 0),
    obj(0x55, "volumeStorage", Uint, 4, 0.001, 3),
    obj(0x56, "conductivity", Uint, 2, 1.0, 0),
    obj(0x57, "temperature", Sint, 1, 1.0, 0),
    // 0.35 °C steps, given to one decimal as the BTHome receivers do.
    obj(0x58, "temperature", Sint, 1, 0.35, 1),
    obj(0x59, "count", Sint, 1, 1.0, 0),
    obj(0x5a, "count", Sint, 2, 1.0, 0),
    obj(0x5b, "count", Sint, 4, 1.0, 0),
    obj(0x5c, "power", Sint, 4, 0.01, 2),
    obj(0x5d, "current", Sint, 2, 0.001, 3),
    obj(0x5e, "direction", Uint, 2, 0.01, 2),
    obj(0x5f, "precipitation", Uint, 2, 0.1, 1),
    obj(0x60, "channel", Uint, 1, 1.0, 0),
    obj(0x61, "rotationalSpeed", Uint, 2, 1.0, 0),
    obj(0x62, "speed", Sint, 4, 0.000001, 6),
    obj(0x63, "acceleration", Sint, 4, 0.000001, 6),
    obj(0x64, "lightLevel", Uint, 1, 1.0, 0),
    obj(0x65, "settingsRevision", Uint, 1, 1.0, 0),
    obj(0xf0, "deviceTypeId", DeviceType, 2, 1.0, 0),
    obj(0xf1, "firmwareVersion", Firmware, 4, 1.0, 0),
    obj(0xf2, "firmwareVersion", Firmware, 3, 1.0, 0),
];

use DataType::{Bool, Bytes, Float64, Int64, String as Text_, Uint16, Uint32, Uint8};

/// Every field a BTHome v2 advertisement can carry, with its type and unit.
pub const FIELDS: &[FieldInfo] = &[
    field("packetId", Uint8, None),
    field("battery", Uint8, Some("%")),
    field("temperature", Float64, Some("°C")),
    field("humidity", Float64, Some("%")),
    field("pressure", Float64, Some("hPa")),
    field("illuminance", Float64, Some("lx")),
    field("mass", Float64, Some("kg")),
    field("massLb", Float64, Some("lb")),
    field("dewPoint", Float64, Some("°C")),
    field("count", Int64, None),
    field("energy", Float64, Some("kWh")),
    field("power", Float64, Some("W")),
    field("voltage", Float64, Some("V")),
    field("pm25", Uint16, Some("µg/m³")),
    field("pm10", Uint16, Some("µg/m³")),
    field("co2", Uint16, Some("ppm")),
    field("tvoc", Uint16, Some("µg/m³")),
    field("moisture", Float64, Some("%")),
    field("rotation", Float64, Some("°")),
    field("distance", Uint16, Some("mm")),
    field("distanceM", Float64, Some("m")),
    field("duration", Float64, Some("s")),
    field("current", Float64, Some("A")),
    field("speed", Float64, Some("m/s")),
    field("uvIndex", Float64, None),
    field("volume", Float64, Some("L")),
    field("volumeMl", Uint16, Some("mL")),
    field("flowRate", Float64, Some("m³/h")),
    field("gas", Float64, Some("m³")),
    field("water", Float64, Some("L")),
    field("timestamp", Uint32, Some("s")),
    field("acceleration", Float64, Some("m/s²")),
    field("gyroscope", Float64, Some("°/s")),
    field("volumeStorage", Float64, Some("L")),
    field("conductivity", Uint16, Some("µS/cm")),
    field("direction", Float64, Some("°")),
    field("precipitation", Float64, Some("mm")),
    field("channel", Uint8, None),
    field("rotationalSpeed", Uint16, Some("rpm")),
    field("lightLevel", Uint8, None),
    field("settingsRevision", Uint8, None),
    field("text", Text_, None),
    field("raw", Bytes, None),
    field("button", Text_, None),
    field("dimmer", Text_, None),
    field("dimmerSteps", Uint8, None),
    field("command", Text_, None),
    field("generic", Bool, None),
    field("powerOn", Bool, None),
    field("opening", Bool, None),
    field("batteryLow", Bool, None),
    field("batteryCharging", Bool, None),
    field("carbonMonoxide", Bool, None),
    field("cold", Bool, None),
    field("connectivity", Bool, None),
    field("door", Bool, None),
    field("garageDoor", Bool, None),
    field("gasDetected", Bool, None),
    field("heat", Bool, None),
    field("light", Bool, None),
    field("lock", Bool, None),
    field("moistureDetected", Bool, None),
    field("motion", Bool, None),
    field("moving", Bool, None),
    field("occupancy", Bool, None),
    field("plug", Bool, None),
    field("presence", Bool, None),
    field("problem", Bool, None),
    field("running", Bool, None),
    field("safety", Bool, None),
    field("smoke", Bool, None),
    field("sound", Bool, None),
    field("tamper", Bool, None),
    field("vibration", Bool, None),
    field("window", Bool, None),
    field("deviceTypeId", Uint16, None),
    field("firmwareVersion", Text_, None),
];

/// Button event names (object 0x3A).
fn button(b: u8) -> Cow<'static, str> {
    Cow::Borrowed(match b {
        0x00 => "none",
        0x01 => "press",
        0x02 => "double_press",
        0x03 => "triple_press",
        0x04 => "long_press",
        0x05 => "long_double_press",
        0x06 => "long_triple_press",
        0x80 => "hold_press",
        0x81 => "hold_release",
        other => return Cow::Owned(format!("unknown_0x{other:02x}")),
    })
}

/// Dimmer event names (object 0x3C).
fn dimmer(b: u8) -> Cow<'static, str> {
    Cow::Borrowed(match b {
        0x00 => "none",
        0x01 => "rotate_left",
        0x02 => "rotate_right",
        other => return Cow::Owned(format!("unknown_0x{other:02x}")),
    })
}

/// The type of field `name` (the first entry of [`FIELDS`] with it).
fn type_of(name: &str) -> DataType {
    FIELDS
        .iter()
        .find(|f| f.name == name)
        .map_or(DataType::Float64, |f| f.data_type)
}

/// Decodes the BTHome v2 service data of `adv`, decrypting with `key`.
pub fn decode(adv: &Advertisement, key: Option<&BindKey>) -> Result<Decoded, DecodeError> {
    let data = adv
        .service_data
        .get(&UUID)
        .ok_or(DecodeError::Absent("BTHome"))?;
    let (&info, rest) = data
        .split_first()
        .ok_or_else(|| invalid("BTHome service data is empty"))?;
    let version = info >> 5;
    if version != 2 {
        return Err(invalid(format!(
            "BTHome version {version} in the device information byte; only version 2 is supported"
        )));
    }
    let encrypted = info & 0x01 != 0;
    let (mac, body) = if info & 0x02 != 0 {
        if rest.len() < 6 {
            return Err(invalid("BTHome payload too short for the included MAC"));
        }
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(rest[..6].iter().rev()) {
            *d = *s;
        }
        (mac, &rest[6..])
    } else {
        (adv.address, rest)
    };
    let mut out = Decoded::default();
    let plain;
    let objects: &[u8] = if encrypted {
        let Some(key) = key else {
            return Err(invalid(
                "advertisement is encrypted; set protocol.bindKey (32 hex digits)",
            ));
        };
        if body.len() < 8 {
            return Err(invalid("encrypted BTHome payload too short"));
        }
        let (cipher_text, tail) = body.split_at(body.len() - 8);
        let (counter, mic) = tail.split_at(4);
        let mut nonce = [0u8; 13];
        nonce[..6].copy_from_slice(&mac);
        nonce[6..8].copy_from_slice(&[0xd2, 0xfc]);
        nonce[8] = info;
        nonce[9..].copy_from_slice(counter);
        let mut buf = cipher_text.to_vec();
        Cipher::new(GenericArray::from_slice(key))
            .decrypt_in_place_detached(
                GenericArray::from_slice(&nonce),
                b"",
                &mut buf,
                GenericArray::from_slice(mic),
            )
            .map_err(|_| {
                invalid("cannot decrypt the advertisement: wrong bindKey (or a corrupted packet)")
            })?;
        out.counter = Some(le_uint(counter) as u32);
        plain = buf;
        &plain
    } else {
        if key.is_some() {
            return Err(invalid(
                "advertisement is not encrypted but a bindKey is set: rejected (a downgrade?); remove bindKey if the sensor no longer encrypts",
            ));
        }
        body
    };
    parse_objects(objects, &mut out)?;
    Ok(out)
}

/// Parses the (plain) objects into `out`. Stops at an unknown object id or
/// a truncated object, keeping what came before, as receivers do.
fn parse_objects(bytes: &[u8], out: &mut Decoded) -> Result<(), DecodeError> {
    let mut at = 0;
    let mut stopped = None;
    while at < bytes.len() {
        let id = bytes[at];
        let Some(o) = OBJECTS.iter().find(|o| o.id == id) else {
            stopped = Some(format!("unknown BTHome object id 0x{id:02x}"));
            break;
        };
        let (start, len) = if o.len == 0 {
            let Some(&l) = bytes.get(at + 1) else {
                stopped = Some(format!("BTHome object 0x{id:02x} has no length byte"));
                break;
            };
            let l = if o.kind == Command {
                1 + usize::from(l & 0x1f)
            } else {
                usize::from(l)
            };
            (at + 2, l)
        } else {
            (at + 1, o.len)
        };
        let Some(v) = bytes.get(start..start + len) else {
            stopped = Some(format!("BTHome object 0x{id:02x} is truncated"));
            break;
        };
        at = start + len;
        if len == 0 {
            continue;
        }
        let value = match o.kind {
            Uint | Sint => {
                let raw = if o.kind == Uint {
                    le_uint(v) as f64
                } else {
                    le_int(v) as f64
                };
                if id == 0x00 {
                    out.packet_id = Some(v[0]);
                }
                match type_of(o.name) {
                    DataType::Float64 => Value::Float(scaled(raw, o.factor, o.decimals)),
                    DataType::Int64 => Value::Int(raw as i64),
                    _ => Value::Uint(raw as u64),
                }
            }
            Binary => Value::Bool(v[0] != 0),
            Button => Value::String(button(v[0]).into_owned()),
            Dimmer => {
                out.fields
                    .push((numbered(out, "dimmerSteps"), Value::Uint(u64::from(v[1]))));
                Value::String(dimmer(v[0]).into_owned())
            }
            Command => Value::String(v.iter().map(|b| format!("{b:02x}")).collect()),
            Text => Value::String(String::from_utf8_lossy(v).into_owned()),
            Raw => Value::Bytes(v.to_vec()),
            DeviceType => Value::Uint(le_uint(v)),
            Firmware => Value::String(
                v.iter()
                    .rev()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join("."),
            ),
        };
        let name = numbered(out, o.name);
        out.fields.push((name, value));
    }
    if out.fields.is_empty() {
        if let Some(why) = stopped {
            return Err(invalid(why));
        }
    }
    Ok(())
}

/// `name` for the first object of its kind, `name_2`, `name_3`, … for the
/// next ones in the same advertisement.
fn numbered(out: &Decoded, name: &'static str) -> Cow<'static, str> {
    let seen = out
        .fields
        .iter()
        .filter(|(n, _)| n == name || n.strip_prefix(name).is_some_and(|r| r.starts_with('_')))
        .count();
    if seen == 0 {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("{name}_{}", seen + 1))
    }
}

/// Whether a packet with id `new` must be dropped after one with `last`
/// within `recent` (seconds apart ≤ 4): the same id again, or an older one
/// (ids wrap at 256; a newer one is at most 63 ahead).
pub fn is_repeat(last: Option<u8>, new: u8, recent: bool) -> bool {
    match last {
        None => false,
        Some(l) if l == new => true,
        Some(l) => recent && new.wrapping_sub(l) >= 64,
    }
}

/// Encrypts `objects` as a sensor would (tests and the stand-in's fixtures).
pub fn encrypt(key: &BindKey, mac: &[u8; 6], info: u8, counter: u32, objects: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 13];
    nonce[..6].copy_from_slice(mac);
    nonce[6..8].copy_from_slice(&[0xd2, 0xfc]);
    nonce[8] = info;
    nonce[9..].copy_from_slice(&counter.to_le_bytes());
    let mut buf = objects.to_vec();
    let tag = Cipher::new(GenericArray::from_slice(key))
        .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut buf)
        .unwrap_or_default();
    let mut out = vec![info];
    out.extend_from_slice(&buf);
    out.extend_from_slice(&counter.to_le_bytes());
    out.extend_from_slice(&tag);
    out
}

#[cfg(test)]
mod tests {
    use super::super::hex;
    use super::*;

    fn adv(service_data: &str) -> Advertisement {
        let mut a = Advertisement {
            address: [0x54, 0x48, 0xe6, 0x8f, 0x80, 0xa5],
            ..Default::default()
        };
        a.service_data.insert(UUID, hex(service_data));
        a
    }

    fn f(d: &Decoded, name: &str) -> Value {
        d.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing in {d:?}"))
    }

    /// The examples of the specification's object table, each after the
    /// device information byte 0x40 (v2, not encrypted).
    #[test]
    fn specification_examples() {
        let cases: &[(&str, &str, Value)] = &[
            ("0161", "battery", Value::Uint(97)),
            ("02CA09", "temperature", Value::Float(25.06)),
            ("03BF13", "humidity", Value::Float(50.55)),
            ("04138A01", "pressure", Value::Float(1008.83)),
            ("05138A14", "illuminance", Value::Float(13460.67)),
            ("065E1F", "mass", Value::Float(80.3)),
            ("073E1D", "massLb", Value::Float(74.86)),
            ("08CA06", "dewPoint", Value::Float(17.38)),
            ("0960", "count", Value::Int(96)),
            ("0A138A14", "energy", Value::Float(1346.067)),
            ("0B021B00", "power", Value::Float(69.14)),
            ("0C020C", "voltage", Value::Float(3.074)),
            ("0D120C", "pm25", Value::Uint(3090)),
            ("0E021C", "pm10", Value::Uint(7170)),
            ("0F01", "generic", Value::Bool(true)),
            ("1001", "powerOn", Value::Bool(true)),
            ("1100", "opening", Value::Bool(false)),
            ("12E204", "co2", Value::Uint(1250)),
            ("133301", "tvoc", Value::Uint(307)),
            ("14020C", "moisture", Value::Float(30.74)),
            ("1A01", "door", Value::Bool(true)),
            ("2101", "motion", Value::Bool(true)),
            ("2D01", "window", Value::Bool(true)),
            ("2E23", "humidity", Value::Float(35.0)),
            ("2F23", "moisture", Value::Float(35.0)),
            ("3A01", "button", Value::String("press".into())),
            ("3A04", "button", Value::String("long_press".into())),
            ("3C0103", "dimmer", Value::String("rotate_left".into())),
            ("3C0103", "dimmerSteps", Value::Uint(3)),
            ("3D0960", "count", Value::Int(24585)),
            ("3E2A2C0960", "count", Value::Int(1611213866)),
            ("3F020C", "rotation", Value::Float(307.4)),
            ("400C00", "distance", Value::Uint(12)),
            ("414E00", "distanceM", Value::Float(7.8)),
            ("424E3400", "duration", Value::Float(13.39)),
            ("434E34", "current", Value::Float(13.39)),
            ("444E34", "speed", Value::Float(133.9)),
            ("451101", "temperature", Value::Float(27.3)),
            ("4632", "uvIndex", Value::Float(5.0)),
            ("478756", "volume", Value::Float(2215.1)),
            ("48DC87", "volumeMl", Value::Uint(34780)),
            ("49DC87", "flowRate", Value::Float(34.78)),
            ("4A020C", "voltage", Value::Float(307.4)),
            ("4B138A14", "gas", Value::Float(1346.067)),
            ("4C41018A01", "gas", Value::Float(25821.505)),
            ("4D12138A14", "energy", Value::Float(344593.17)),
            ("4E87562A01", "volume", Value::Float(19551.879)),
            ("4F87562A01", "water", Value::Float(19551.879)),
            ("505D396164", "timestamp", Value::Uint(1684093277)),
            ("518756", "acceleration", Value::Float(22.151)),
            ("528756", "gyroscope", Value::Float(22.151)),
            (
                "530C48656C6C6F20576F726C6421",
                "text",
                Value::String("Hello World!".into()),
            ),
            (
                "540C48656C6C6F20576F726C6421",
                "raw",
                Value::Bytes(b"Hello World!".to_vec()),
            ),
            ("5587562A01", "volumeStorage", Value::Float(19551.879)),
            ("56E803", "conductivity", Value::Uint(1000)),
            ("57EA", "temperature", Value::Float(-22.0)),
            ("58EA", "temperature", Value::Float(-7.7)),
            ("59EA", "count", Value::Int(-22)),
            ("5AEAEA", "count", Value::Int(-5398)),
            ("5BEA0234EA", "count", Value::Int(-365690134)),
            ("5C02EA00EA", "power", Value::Float(-3690388.46)),
            ("5D02EA", "current", Value::Float(-5.63)),
            ("5E5F8E", "direction", Value::Float(364.47)),
            ("5F5D02", "precipitation", Value::Float(60.5)),
            ("6001", "channel", Value::Uint(1)),
        ];
        for (objects, name, want) in cases {
            let d = decode(&adv(&format!("40{objects}")), None)
                .unwrap_or_else(|e| panic!("{objects}: {e}"));
            assert_eq!(&f(&d, name), want, "{objects}");
        }
    }

    /// The specification's worked example: packet id, temperature, humidity.
    #[test]
    fn full_packet_with_packet_id() {
        let d = decode(&adv("4000a40164" /* id 0xa4, battery 100 */), None).unwrap();
        assert_eq!(d.packet_id, Some(0xa4));
        assert_eq!(f(&d, "packetId"), Value::Uint(0xa4));
        let d = decode(&adv("40001b016402c808036c1a"), None).unwrap();
        assert_eq!(f(&d, "battery"), Value::Uint(100));
        assert_eq!(f(&d, "temperature"), Value::Float(22.48));
        assert_eq!(f(&d, "humidity"), Value::Float(67.64));
    }

    #[test]
    fn repeated_objects_are_numbered() {
        let d = decode(&adv("4002CA0902CB093A013A02"), None).unwrap();
        assert_eq!(f(&d, "temperature"), Value::Float(25.06));
        assert_eq!(f(&d, "temperature_2"), Value::Float(25.07));
        assert_eq!(f(&d, "button"), Value::String("press".into()));
        assert_eq!(f(&d, "button_2"), Value::String("double_press".into()));
    }

    /// The encrypted example of the specification: key
    /// 231d39c1d7cc1ab1aee224cd096db932, MAC 54:48:E6:8F:80:A5, objects
    /// 02CA09 03BF13 (25.06 °C, 50.55 %), counter 0x00112233.
    #[test]
    fn encrypted_specification_example() {
        let key = super::super::parse_bind_key("231d39c1d7cc1ab1aee224cd096db932").unwrap();
        let data = "41e445f3c9962b332211006c7c4519";
        let d = decode(&adv(data), Some(&key)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f(&d, "temperature"), Value::Float(25.06));
        assert_eq!(f(&d, "humidity"), Value::Float(50.55));
        assert_eq!(d.counter, Some(0x0011_2233));
        // And our encryption gives the same bytes.
        let mac = [0x54, 0x48, 0xe6, 0x8f, 0x80, 0xa5];
        assert_eq!(
            encrypt(&key, &mac, 0x41, 0x0011_2233, &hex("02CA0903BF13")),
            hex(data)
        );
        // A wrong key is a clear error, no values.
        let mut wrong = key;
        wrong[0] ^= 1;
        let e = decode(&adv(data), Some(&wrong)).unwrap_err();
        assert!(e.to_string().contains("wrong bindKey"), "{e}");
        let e = decode(&adv(data), None).unwrap_err();
        assert!(e.to_string().contains("set protocol.bindKey"), "{e}");
        let e = decode(&adv("4002CA09"), Some(&key)).unwrap_err();
        assert!(e.to_string().contains("not encrypted"), "{e}");
    }

    #[test]
    fn bad_payloads_are_errors_not_panics() {
        for bad in ["", "20", "40FF", "4002CA"] {
            let r = decode(&adv(bad), None);
            assert!(matches!(r, Err(DecodeError::Invalid(_))), "{bad}: {r:?}");
        }
        // Known objects before an unknown one are kept.
        let d = decode(&adv("4002CA09FF01"), None).unwrap();
        assert_eq!(f(&d, "temperature"), Value::Float(25.06));
        assert_eq!(
            decode(&Advertisement::default(), None),
            Err(DecodeError::Absent("BTHome"))
        );
    }

    #[test]
    fn packet_id_rule() {
        assert!(!is_repeat(None, 5, true));
        assert!(is_repeat(Some(5), 5, true));
        assert!(is_repeat(Some(5), 5, false));
        assert!(!is_repeat(Some(5), 6, true));
        assert!(!is_repeat(Some(255), 0, true));
        assert!(is_repeat(Some(10), 9, true));
        assert!(!is_repeat(Some(10), 9, false));
    }
}
