//! Bluetooth LE driver: GATT characteristics over BlueZ (D-Bus) via btleplug.
//!
//! - `codec`: characteristic bytes ⇄ typed values (type, byte order, byte offset).
//! - `adapter`: one BlueZ session and one discovery per adapter, shared by the
//!   devices on it, and the per-device loop: find by address or advertised name
//!   within the scan timeout, connect, resolve characteristics, poll `read`
//!   properties, stream `notify` properties over the open connection, write
//!   `$set` values; disconnects and adapter loss mark the device offline and
//!   reconnect with backoff and jitter.
//! - `adverts`: devices that only advertise (BTHome, pvvx, ATC1441, RuuviTag,
//!   raw), read from one passive scan per adapter.

pub mod adapter;
pub mod adverts;
pub mod codec;

use std::time::Duration;

pub use adapter::AdapterRegistry;
pub use uuid::Uuid;

use crate::{DriverError, ErrorKind};

/// A failed I/O step of the BLE driver.
fn io(m: impl Into<String>) -> DriverError {
    DriverError::new(ErrorKind::Io, m)
}

/// The blocking task that opens a BlueZ session ended abnormally.
fn session_task_failed(e: impl std::fmt::Display) -> DriverError {
    io(format!("BlueZ session task failed: {e}"))
}

/// BlueZ cannot be reached: no D-Bus system bus (the driver cannot work
/// on this machine until there is one).
fn bluez_unreachable(e: impl std::fmt::Display) -> DriverError {
    DriverError::new(
        ErrorKind::Unsupported,
        format!("cannot reach BlueZ: D-Bus system bus unavailable ({e})"),
    )
}

/// BlueZ would not list its adapters.
fn adapters_unlisted(e: impl std::fmt::Display) -> DriverError {
    io(format!("cannot list Bluetooth adapters: {e}"))
}

/// Which peripheral a device is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Its MAC address, `AA:BB:CC:DD:EE:FF` (upper case).
    Address(String),
    /// Its advertised local name.
    Name(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(a) => write!(f, "address {a}"),
            Target::Name(n) => write!(f, "name \"{n}\""),
        }
    }
}

/// How a BLE peripheral is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BleConnection {
    /// Adapter name (e.g. `hci0`); `None` = the first adapter BlueZ lists.
    pub adapter: Option<String>,
    /// The peripheral.
    pub target: Target,
    /// How long to scan for it before reporting it not found.
    pub scan_timeout: Duration,
}

/// What the gateway does with a characteristic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Polled at the sync interval.
    Read,
    /// Subscribed: every notification updates the state.
    Notify,
    /// Written by `$set`, never read.
    Write,
    /// Polled and written.
    ReadWrite,
}

impl Access {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Notify => "notify",
            Access::Write => "write",
            Access::ReadWrite => "readWrite",
        }
    }

    /// Whether a poll reads it.
    pub fn polled(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    /// Whether `$set` may write it.
    pub fn writable(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// Byte order of multi-byte values in a characteristic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endian {
    /// Least significant byte first (the GATT convention).
    Little,
    /// Most significant byte first.
    Big,
}

impl Endian {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Endian::Little => "little",
            Endian::Big => "big",
        }
    }
}

/// Where a property lives on a BLE peripheral.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CharacteristicAddress {
    /// Service UUID, when needed to tell equal characteristic UUIDs apart.
    pub service: Option<Uuid>,
    /// Characteristic UUID.
    pub characteristic: Uuid,
    /// Read, notify, write or both.
    pub access: Access,
    /// Byte order of the value.
    pub byte_order: Endian,
    /// Where the value starts in the characteristic's bytes.
    pub byte_offset: usize,
}

/// The Bluetooth base UUID `00000000-0000-1000-8000-00805F9B34FB`.
const BASE_UUID: u128 = 0x0000_0000_0000_1000_8000_0080_5f9b_34fb;

/// Parses a GATT UUID: 16-bit (`2a19`, `0x2A19`), 32-bit (`0000fe95`) or
/// 128-bit (`ebe0ccc1-7a0a-4b0c-8a1a-6ff2997da3a6`).
pub fn parse_uuid(text: &str) -> Result<Uuid, String> {
    let t = text.trim();
    let short = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    let is_hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    if (short.len() == 4 || short.len() == 8) && is_hex(short) {
        let v = u32::from_str_radix(short, 16).map_err(|e| e.to_string())?;
        return Ok(Uuid::from_u128(BASE_UUID | (u128::from(v) << 96)));
    }
    if t.len() == 36 {
        if let Ok(u) = Uuid::parse_str(t) {
            return Ok(u);
        }
    }
    Err(format!(
        "`{text}` is not a GATT UUID; use 16-bit (\"2a19\" or \"0x2A19\") or 128-bit (\"0000181a-0000-1000-8000-00805f9b34fb\")"
    ))
}

/// Parses a MAC address `AA:BB:CC:DD:EE:FF` (either case) into upper case.
pub fn parse_address(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(text.to_ascii_uppercase())
    } else {
        Err(format!(
            "`{text}` is not a Bluetooth address (six hex pairs, e.g. A4:C1:38:00:11:22)"
        ))
    }
}

/// The short form of a UUID built on the Bluetooth base UUID (`0x2a19`), or
/// the full UUID.
pub fn describe_uuid(u: &Uuid) -> String {
    let v = u.as_u128();
    if v & ((1u128 << 96) - 1) == BASE_UUID && (v >> 96) <= 0xffff {
        format!("0x{:04x}", v >> 96)
    } else {
        u.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_short_and_long() {
        let battery = Uuid::parse_str("00002a19-0000-1000-8000-00805f9b34fb").unwrap();
        assert_eq!(parse_uuid("2a19"), Ok(battery));
        assert_eq!(parse_uuid("0x2A19"), Ok(battery));
        assert_eq!(parse_uuid("00002A19"), Ok(battery));
        assert_eq!(
            parse_uuid("00002a19-0000-1000-8000-00805F9B34FB"),
            Ok(battery)
        );
        assert_eq!(describe_uuid(&battery), "0x2a19");
        let custom = "ebe0ccc1-7a0a-4b0c-8a1a-6ff2997da3a6";
        assert_eq!(describe_uuid(&parse_uuid(custom).unwrap()), custom);
        for bad in [
            "",
            "2a1",
            "0x2a1g",
            "battery",
            "ebe0ccc17a0a4b0c8a1a6ff2997da3a6",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("a4:c1:38:00:11:22"),
            Ok("A4:C1:38:00:11:22".to_string())
        );
        for bad in ["A4:C1:38:00:11", "A4-C1-38-00-11-22", "A4:C1:38:00:11:2G"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
