//! The modbus driver: `protocol:` with one of `tcp`, `rtu`, `rtuOverTcp`,
//! and register properties.

use std::path::Path;
#[cfg(feature = "modbus")]
use std::sync::Arc;

use fieldgate_drivers::{Connection, DataType, DeviceSpec, PropertyAddress, PropertySpec};

use super::DriverConfig;
use crate::config::ctx::Ctx;
use crate::config::devices::ParsedDevice;
#[cfg(feature = "modbus")]
use crate::config::properties::semantics;
use crate::config::resolved::PropertySemantics;
use crate::config::tree::{join, list, Node};
use crate::config::types::*;

/// The modbus driver's config.
pub(super) struct Modbus;

/// Keys of a modbus `protocol:`.
const PROTOCOL_KEYS: &[&str] = &[
    "tcp",
    "rtu",
    "rtuOverTcp",
    "unitId",
    "byteOrder",
    "maxRegistersPerRead",
    "maxGap",
];
/// Keys of a modbus property besides the common ones.
const PROPERTY_KEYS: &[&str] = &[
    "register",
    "address",
    "bit",
    "quantity",
    "byte",
    "byteOrder",
];

impl DriverConfig for Modbus {
    fn protocol_keys(&self) -> &'static [&'static str] {
        PROTOCOL_KEYS
    }

    fn property_keys(&self) -> &'static [&'static str] {
        PROPERTY_KEYS
    }

    fn check_property(
        &self,
        ctx: &mut Ctx,
        _d: &ParsedDevice<'_>,
        p: &PropertyConfig,
        pn: &Node,
        pp: &str,
    ) {
        if let Some(bo) = p.byte_order {
            check_byte_order(ctx, pn, pp, bo);
        }
        check_property(ctx, p, pn, pp);
    }

    /// Exactly one transport, its settings, and properties.
    fn check_device(&self, ctx: &mut Ctx, _base: &Path, d: &ParsedDevice<'_>) {
        let path = &d.path;
        let proto = d.config.protocol.clone().unwrap_or_default();
        let pnode = d.node.get("protocol");
        let ppath = join(path, "protocol");
        let given: Vec<&str> = [
            ("tcp", proto.tcp.is_some()),
            ("rtu", proto.rtu.is_some()),
            ("rtuOverTcp", proto.rtu_over_tcp.is_some()),
        ]
        .into_iter()
        .filter(|(_, b)| *b)
        .map(|(k, _)| k)
        .collect();
        match (given.len(), pnode) {
            (1, _) => {}
            (0, Some(_)) => ctx.key(
                d.node,
                path,
                &["protocol"],
                "a modbus device needs exactly one of `tcp`, `rtu`, `rtuOverTcp` under `protocol`",
            ),
            (0, None) => ctx.key(
                d.node,
                path,
                &["driver"],
                "a modbus device needs `protocol` with exactly one of `tcp`, `rtu`, `rtuOverTcp`",
            ),
            (_, Some(pn)) => ctx.key(
                pn,
                &ppath,
                &[given[1]],
                format!(
                    "give exactly one of `tcp`, `rtu`, `rtuOverTcp`, not {}",
                    list(&given)
                ),
            ),
            _ => {}
        }
        if let Some(pn) = pnode {
            for (k, e) in [("tcp", &proto.tcp), ("rtuOverTcp", &proto.rtu_over_tcp)] {
                if let Some(e) = e {
                    if let Err(m) = check_endpoint(&e.endpoint) {
                        if let Some(en) = pn.get(k) {
                            ctx.val(en, &join(&ppath, k), &["endpoint"], m);
                        }
                    }
                }
            }
            if let (Some(r), Some(rn)) = (&proto.rtu, pn.get("rtu")) {
                let rp = join(&ppath, "rtu");
                if r.port.is_empty() {
                    ctx.val(
                        rn,
                        &rp,
                        &["port"],
                        "port must not be empty (e.g. /dev/ttyUSB0)",
                    );
                }
                if r.baud_rate == 0 {
                    ctx.val(rn, &rp, &["baudRate"], "baudRate must be greater than 0");
                }
                if !(5..=8).contains(&r.data_bits) {
                    ctx.val(
                        rn,
                        &rp,
                        &["dataBits"],
                        format!(
                            "dataBits {} is out of range; allowed: 5, 6, 7, 8",
                            r.data_bits
                        ),
                    );
                }
                if !(1..=2).contains(&r.stop_bits) {
                    ctx.val(
                        rn,
                        &rp,
                        &["stopBits"],
                        format!("stopBits {} is out of range; allowed: 1, 2", r.stop_bits),
                    );
                }
            }
            if let Some(m) = proto.max_registers_per_read {
                if !(1..=125).contains(&m) {
                    ctx.val(
                        pn,
                        &ppath,
                        &["maxRegistersPerRead"],
                        format!("maxRegistersPerRead {m} is out of range; allowed: 1..=125"),
                    );
                }
            }
            if let Some(bo) = proto.byte_order {
                check_byte_order(ctx, pn, &ppath, bo);
            }
        }
        if d.props.is_empty() && d.node.get("properties").is_none() {
            ctx.key(
                d.node,
                path,
                &["name"],
                "a modbus device needs `properties`",
            );
        }
        #[cfg(not(feature = "modbus"))]
        if drv == DriverKind::Modbus {
            ctx.val(
                d.node,
                path,
                &["driver"],
                "driver `modbus` is not enabled in this build (feature `modbus`)",
            );
        }
    }

    #[cfg(feature = "modbus")]
    fn build(
        &self,
        _base: &Path,
        _state_directory: &str,
        d: &ParsedDevice<'_>,
        specs: &mut Vec<PropertySpec>,
        sems: &mut Vec<PropertySemantics>,
    ) -> Option<Connection> {
        use fieldgate_drivers::modbus as mb;
        let proto = d.config.protocol.clone().unwrap_or_default();
        let transport = if let Some(t) = &proto.tcp {
            mb::Transport::Tcp {
                endpoint: t.endpoint.clone(),
            }
        } else if let Some(t) = &proto.rtu_over_tcp {
            mb::Transport::RtuOverTcp {
                endpoint: t.endpoint.clone(),
            }
        } else if let Some(r) = &proto.rtu {
            mb::Transport::Rtu(mb::SerialSettings {
                port: r.port.clone(),
                baud_rate: r.baud_rate,
                data_bits: r.data_bits,
                parity: match r.parity {
                    ParityName::None => mb::Parity::None,
                    ParityName::Even => mb::Parity::Even,
                    ParityName::Odd => mb::Parity::Odd,
                },
                stop_bits: r.stop_bits,
            })
        } else {
            return None;
        };
        let dev_order = proto
            .byte_order
            .and_then(modbus_order)
            .unwrap_or(mb::ByteOrder::Abcd);
        for (p, pn, _) in &d.props {
            let kind = match p.register? {
                RegisterName::Coil => mb::RegisterKind::Coil,
                RegisterName::DiscreteInput => mb::RegisterKind::DiscreteInput,
                RegisterName::Input => mb::RegisterKind::Input,
                RegisterName::Holding => mb::RegisterKind::Holding,
            };
            let name: Arc<str> = p.name.as_str().into();
            specs.push(PropertySpec {
                name: Arc::clone(&name),
                data_type: p.data_type,
                writable: p.writable,
                address: PropertyAddress::Modbus(mb::RegisterAddress {
                    kind,
                    address: p.address?,
                    bit: p.bit,
                    quantity: p.quantity,
                    byte_order: p.byte_order.and_then(modbus_order).unwrap_or(dev_order),
                    byte: match p.byte {
                        Some(ByteName::High) => mb::ByteSelect::High,
                        _ => mb::ByteSelect::Low,
                    },
                }),
            });
            sems.push(semantics(p, pn, name)?);
        }
        Some(Connection::Modbus(mb::ModbusConnection {
            transport,
            unit_id: proto.unit_id.unwrap_or(1),
            max_registers_per_read: proto.max_registers_per_read.unwrap_or(125),
            max_gap: proto.max_gap.unwrap_or(10),
        }))
    }

    /// Not in this build: refused while validating.
    #[cfg(not(feature = "modbus"))]
    fn build(
        &self,
        _base: &Path,
        _state_directory: &str,
        _d: &ParsedDevice<'_>,
        _specs: &mut Vec<PropertySpec>,
        _sems: &mut Vec<PropertySemantics>,
    ) -> Option<Connection> {
        None
    }

    #[cfg(feature = "modbus")]
    fn report_connection(&self, out: &mut String, spec: &DeviceSpec) {
        use fieldgate_drivers::modbus::{Parity, Transport};
        use std::fmt::Write as _;
        let Connection::Modbus(c) = &spec.connection else {
            return;
        };
        let tr = match &c.transport {
            Transport::Tcp { endpoint } => format!("tcp {endpoint}"),
            Transport::RtuOverTcp { endpoint } => format!("rtu over tcp {endpoint}"),
            Transport::Rtu(s) => format!(
                "rtu {} {} {}{}{}",
                s.port,
                s.baud_rate,
                s.data_bits,
                match s.parity {
                    Parity::None => "N",
                    Parity::Even => "E",
                    Parity::Odd => "O",
                },
                s.stop_bits
            ),
        };
        let _ = writeln!(
            out,
            "    connection: {tr}, unit {}, maxRegistersPerRead {}, maxGap {}",
            c.unit_id, c.max_registers_per_read, c.max_gap
        );
        if let Transport::Rtu(s) = &c.transport {
            if let Some(w) = unstable_serial_name(&s.port) {
                let _ = writeln!(out, "    warning: {w}");
            }
        }
    }

    #[cfg(not(feature = "modbus"))]
    fn report_connection(&self, _out: &mut String, _spec: &DeviceSpec) {}

    #[cfg(feature = "modbus")]
    fn report_address(&self, line: &mut String, address: &PropertyAddress) {
        use std::fmt::Write as _;
        let PropertyAddress::Modbus(a) = address else {
            return;
        };
        let _ = write!(line, ", {:?} {}", a.kind, a.address);
        if let Some(b) = a.bit {
            let _ = write!(line, " bit {b}");
        }
        if let Some(q) = a.quantity {
            let _ = write!(line, " quantity {q}");
        }
        let _ = write!(line, " {:?}", a.byte_order);
    }

    #[cfg(not(feature = "modbus"))]
    fn report_address(&self, _line: &mut String, _address: &PropertyAddress) {}

    /// The read plan: which registers one poll reads in which request.
    #[cfg(feature = "modbus")]
    fn report_tail(&self, out: &mut String, spec: &DeviceSpec) {
        use std::fmt::Write as _;
        if matches!(spec.connection, Connection::Modbus(_)) {
            let _ = writeln!(out, "    read plan:");
            for l in fieldgate_drivers::modbus::describe_plan(spec) {
                let _ = writeln!(out, "      {l}");
            }
        }
    }
}

/// The register keys of one property.
fn check_property(ctx: &mut Ctx, p: &PropertyConfig, pn: &Node, pp: &str) {
    let t = p.data_type;
    let Some(reg) = p.register else {
        ctx.at(
            pn,
            pp,
            "a modbus property needs `register` (coil | discreteInput | input | holding)",
        );
        if p.address.is_none() {
            ctx.at(pn, pp, "a modbus property needs `address` (0-based)");
        }
        return;
    };
    let Some(addr) = p.address else {
        ctx.at(pn, pp, "a modbus property needs `address` (0-based)");
        return;
    };
    let bit_reg = matches!(reg, RegisterName::Coil | RegisterName::DiscreteInput);
    if bit_reg && t != DataType::Bool {
        ctx.val(
            pn,
            pp,
            &["type"],
            format!(
                "{} holds a single bit; its type must be `bool`, not `{t}`",
                a_reg(reg)
            ),
        );
    }
    if let Some(b) = p.bit {
        if bit_reg {
            ctx.key(
                pn,
                pp,
                &["bit"],
                format!(
                    "`bit` applies only to input and holding registers, not {}",
                    a_reg(reg)
                ),
            );
        } else if t != DataType::Bool {
            ctx.key(
                pn,
                pp,
                &["bit"],
                format!("`bit` needs `type: bool`, not `{t}`"),
            );
        } else if b > 15 {
            ctx.val(
                pn,
                pp,
                &["bit"],
                format!("bit {b} is out of range; allowed: 0..=15"),
            );
        }
    }
    let var = matches!(t, DataType::String | DataType::Bytes);
    match (var, p.quantity) {
        (true, None) => ctx.at(
            pn,
            pp,
            format!("a `{t}` property needs `quantity` (number of registers)"),
        ),
        (true, Some(0)) => ctx.val(pn, pp, &["quantity"], "quantity must be at least 1"),
        (true, Some(_)) if bit_reg => {}
        (false, Some(_)) => ctx.key(
            pn,
            pp,
            &["quantity"],
            format!("`quantity` applies only to `string` and `bytes`; `{t}` has a fixed size"),
        ),
        _ => {}
    }
    if p.byte.is_some() && (bit_reg || !matches!(t, DataType::Int8 | DataType::Uint8)) {
        ctx.key(
            pn,
            pp,
            &["byte"],
            "`byte` applies only to int8/uint8 in input or holding registers",
        );
    }
    if p.byte_order.is_some() && (bit_reg || t.fixed_size().is_some_and(|s| s < 4)) {
        ctx.key(
            pn,
            pp,
            &["byteOrder"],
            format!("`byteOrder` applies only to 32/64-bit values, string and bytes, not `{t}`"),
        );
    }
    if p.writable && matches!(reg, RegisterName::DiscreteInput | RegisterName::Input) {
        ctx.val(
            pn,
            pp,
            &["writable"],
            format!(
                "{} is read-only; only coils and holding registers are writable",
                a_reg(reg)
            ),
        );
    }
    let size: u32 = if bit_reg || p.bit.is_some() {
        1
    } else {
        match t.fixed_size() {
            Some(n) => (n as u32).div_ceil(2),
            None => p.quantity.unwrap_or(1).max(1) as u32,
        }
    };
    if addr as u32 + size - 1 > 65_535 {
        ctx.val(
            pn,
            pp,
            &["address"],
            format!("address {addr} + {size} registers runs past 65535"),
        );
    }
}

/// A register kind with its article, for messages.
fn a_reg(r: RegisterName) -> &'static str {
    match r {
        RegisterName::Coil => "a coil",
        RegisterName::DiscreteInput => "a discrete input",
        RegisterName::Input => "an input register",
        RegisterName::Holding => "a holding register",
    }
}

/// A TCP endpoint that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not `host:port` (e.g. 192.168.1.10:502)")]
pub(crate) struct EndpointError(pub(crate) String);

/// A TCP endpoint is `host:port`.
fn check_endpoint(e: &str) -> Result<(), EndpointError> {
    let ok = e
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(EndpointError(e.to_owned()))
    }
}

/// The driver's word order for a config byte order (`None`: a ble one).
#[cfg(feature = "modbus")]
fn modbus_order(b: ByteOrderName) -> Option<fieldgate_drivers::modbus::ByteOrder> {
    use fieldgate_drivers::modbus::ByteOrder as B;
    Some(match b {
        ByteOrderName::Abcd => B::Abcd,
        ByteOrderName::Badc => B::Badc,
        ByteOrderName::Cdab => B::Cdab,
        ByteOrderName::Dcba => B::Dcba,
        _ => return None,
    })
}

/// A modbus byte order is one of `ABCD`, `BADC`, `CDAB`, `DCBA`.
fn check_byte_order(ctx: &mut Ctx, n: &Node, path: &str, bo: ByteOrderName) {
    if !matches!(
        bo,
        ByteOrderName::Abcd | ByteOrderName::Badc | ByteOrderName::Cdab | ByteOrderName::Dcba
    ) {
        ctx.val(
            n,
            path,
            &["byteOrder"],
            "a modbus byteOrder is one of `ABCD`, `BADC`, `CDAB`, `DCBA`",
        );
    }
}

/// A warning for a serial port named by enumeration order (`/dev/ttyUSB0`,
/// `/dev/ttyACM1`): such a name moves when the adapter is replugged or
/// another one appears, while its `/dev/serial/by-id/…` link stays.
#[cfg(feature = "modbus")]
fn unstable_serial_name(port: &str) -> Option<String> {
    let name = port.strip_prefix("/dev/")?;
    let digits = ["ttyUSB", "ttyACM"]
        .iter()
        .find_map(|p| name.strip_prefix(p))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!(
        "{port} may name another adapter after a replug or a reboot; use its stable link under /dev/serial/by-id/ (see docs/install.md)"
    ))
}

#[cfg(all(test, feature = "modbus"))]
mod tests {
    use super::unstable_serial_name;

    #[test]
    fn enumerated_usb_serial_names_are_warned_about() {
        assert!(unstable_serial_name("/dev/ttyUSB0").is_some());
        assert!(unstable_serial_name("/dev/ttyACM12").is_some());
        assert!(unstable_serial_name("/dev/serial/by-id/usb-FTDI-if00-port0").is_none());
        assert!(unstable_serial_name("/dev/ttyAMA0").is_none());
        assert!(unstable_serial_name("/dev/ttySC0").is_none());
        assert!(unstable_serial_name("/dev/ttyUSB").is_none());
    }
}
