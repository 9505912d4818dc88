//! Modbus driver: TCP, RTU and RTU-over-TCP transports, read planner, codecs
//! and the per-bus scheduler.
//!
//! - `codec`: values ⇄ registers per type and byte order. 16-bit values swap
//!   their bytes under BADC/DCBA; strings and bytes are never reordered.
//! - `plan`: merged reads per data table; a request refused with an exception
//!   (other than busy/acknowledge/gateway) is split in halves down to single
//!   properties; the merged plan is tried again every 100 cycles.
//! - `transport`: TCP, RTU (3.5-character gap between frames), RTU over TCP.
//! - `bus`: one task per transport, one transaction in flight, writes and
//!   forced reads ahead of polls. A cycle stops at the first timeout or I/O
//!   failure (the rest of its properties get that error); a unit that gave
//!   no answer at all is offline and, after a timeout, skipped with backoff.
//!   Bits and bytes of a register are written read-modify-write (FC3, FC6).

pub mod bus;
pub mod codec;
pub mod mbap;
pub mod plan;
pub mod probe;
pub mod transport;

pub use bus::BusRegistry;

use crate::{Connection, DeviceSpec};

/// How the bus is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Modbus TCP (MBAP framing) to `host:port`.
    Tcp {
        /// `host:port`
        endpoint: String,
    },
    /// RTU framing over a serial line.
    Rtu(SerialSettings),
    /// RTU framing over a TCP stream (serial device servers).
    RtuOverTcp {
        /// `host:port`
        endpoint: String,
    },
}

/// Serial line settings for RTU.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    /// Device path, e.g. `/dev/ttyUSB0`.
    pub port: String,
    /// Baud rate.
    pub baud_rate: u32,
    /// 5..=8
    pub data_bits: u8,
    /// Parity bit.
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// One Modbus unit on a bus.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusConnection {
    /// The bus (shared by every device with an equal transport).
    pub transport: Transport,
    /// Unit / slave id.
    pub unit_id: u8,
    /// Read planner: most registers (≤125) or bits (≤2000) per request.
    pub max_registers_per_read: u16,
    /// Read planner: largest run of unused addresses merged into one request.
    pub max_gap: u16,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegisterKind {
    /// Read/write bits (FC1, FC5, FC15).
    Coil,
    /// Read-only bits (FC2).
    DiscreteInput,
    /// Read-only 16-bit registers (FC4).
    Input,
    /// Read/write 16-bit registers (FC3, FC6, FC16).
    Holding,
}

/// Word/byte order of multi-register values, named by where the bytes of the
/// big-endian value A B C D (…) land in the register image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Big-endian words, big-endian bytes (the Modbus default).
    Abcd,
    /// Big-endian words, bytes swapped within each word.
    Badc,
    /// Little-endian words, big-endian bytes.
    Cdab,
    /// Fully little-endian.
    Dcba,
}

/// Which byte of a register an 8-bit value occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteSelect {
    /// The high (first transmitted) byte.
    High,
    /// The low byte.
    Low,
}

/// Where a property lives on a Modbus unit.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterAddress {
    /// Data table.
    pub kind: RegisterKind,
    /// 0-based address.
    pub address: u16,
    /// A single bit of a register (0 = least significant).
    pub bit: Option<u8>,
    /// Number of registers for `string`/`bytes`; derived from the type otherwise.
    pub quantity: Option<u16>,
    /// Order of multi-register values.
    pub byte_order: ByteOrder,
    /// For int8/uint8 in a register: which byte (default low).
    pub byte: ByteSelect,
}

/// Human-readable read plan of a Modbus device for `fieldgate check`: one
/// line per request of a poll cycle, plus a summary line first.
pub fn describe_plan(spec: &DeviceSpec) -> Vec<String> {
    match &spec.connection {
        Connection::Modbus(conn) => {
            plan::Plan::for_device(spec, conn.max_registers_per_read, conn.max_gap).describe(spec)
        }
        #[allow(unreachable_patterns)]
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataType, PropertyAddress, PropertySpec};
    use std::time::Duration;

    fn device(connection: Connection) -> DeviceSpec {
        DeviceSpec {
            name: "d".into(),
            sync_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            connection,
            properties: vec![PropertySpec {
                name: "serial".into(),
                data_type: DataType::String,
                writable: false,
                address: PropertyAddress::Modbus(RegisterAddress {
                    kind: RegisterKind::Input,
                    address: 20,
                    bit: None,
                    quantity: Some(8),
                    byte_order: ByteOrder::Abcd,
                    byte: ByteSelect::Low,
                }),
            }]
            .into(),
        }
    }

    #[test]
    fn describe_plan_summarises_then_lists_requests() {
        let spec = device(Connection::Modbus(ModbusConnection {
            transport: Transport::Tcp {
                endpoint: "127.0.0.1:502".into(),
            },
            unit_id: 1,
            max_registers_per_read: 125,
            max_gap: 10,
        }));
        assert_eq!(
            describe_plan(&spec),
            vec![
                "read plan: 1 request per cycle (input 20..=27)".to_string(),
                "  FC4 input 20..=27 (8 registers): serial".to_string(),
            ]
        );
        assert!(describe_plan(&device(Connection::Dummy)).is_empty());
    }
}
