//! The ble driver: a GATT peripheral (`mode: connect`, properties by
//! characteristic) or a device read from its advertisements (see
//! [`super::ble_adverts`]).

use std::path::Path;
#[cfg(feature = "ble")]
use std::sync::Arc;
#[cfg(feature = "ble")]
use std::time::Duration;

use fieldgate_drivers::{Connection, DeviceSpec, PropertyAddress, PropertySpec};

#[cfg(feature = "ble")]
use super::ble_adverts;
use super::DriverConfig;
use crate::config::ctx::Ctx;
use crate::config::devices::ParsedDevice;
#[cfg(feature = "ble")]
use crate::config::properties::semantics;
use crate::config::resolved::PropertySemantics;
use crate::config::tree::{join, Node};
use crate::config::types::*;

/// The ble driver's config.
pub(super) struct Ble;

/// Keys of a ble `protocol:` (both modes).
const PROTOCOL_KEYS: &[&str] = &[
    "address",
    "name",
    "adapter",
    "scanTimeout",
    "byteOrder",
    "mode",
    "format",
    "bindKey",
    "staleAfter",
];
/// Keys of a ble property besides the common ones (both modes).
const PROPERTY_KEYS: &[&str] = &[
    "service",
    "characteristic",
    "access",
    "byteOffset",
    "byteOrder",
    "field",
    "source",
    "companyId",
    "serviceUuid",
];

impl DriverConfig for Ble {
    fn protocol_keys(&self) -> &'static [&'static str] {
        PROTOCOL_KEYS
    }

    fn property_keys(&self) -> &'static [&'static str] {
        PROPERTY_KEYS
    }

    #[cfg_attr(not(feature = "ble"), allow(unused_variables))]
    fn check_property(
        &self,
        ctx: &mut Ctx,
        d: &ParsedDevice<'_>,
        p: &PropertyConfig,
        pn: &Node,
        pp: &str,
    ) {
        if let Some(bo) = p.byte_order {
            check_byte_order(ctx, pn, pp, bo);
        }
        #[cfg(feature = "ble")]
        if ble_adverts::is_advert(d.config.protocol.as_ref()) {
            ble_adverts::check_property(
                ctx,
                d.config
                    .protocol
                    .as_ref()
                    .unwrap_or(&ProtocolConfig::default()),
                p,
                pn,
                pp,
            );
            return;
        }
        #[cfg(feature = "ble")]
        ble_adverts::check_gatt_property(ctx, pn, pp);
        if p.characteristic.as_deref().is_none_or(str::is_empty) {
            ctx.at(
                pn,
                pp,
                "a ble property needs `characteristic` (a GATT UUID)",
            );
        }
        #[cfg(feature = "ble")]
        check_gatt_keys(ctx, p, pn, pp);
    }

    #[cfg(feature = "ble")]
    fn check_device(&self, ctx: &mut Ctx, _base: &Path, d: &ParsedDevice<'_>) {
        let path = &d.path;
        let proto = d.config.protocol.clone().unwrap_or_default();
        let pnode = d.node.get("protocol");
        let ppath = join(path, "protocol");
        check_protocol(ctx, &proto, d.node, path, pnode, &ppath);
        if let Some(pn) = pnode {
            ble_adverts::check_protocol(ctx, &proto, pn, &ppath);
        }
        if ble_adverts::is_advert(d.config.protocol.as_ref()) {
            ble_adverts::check_device(ctx, d);
        }
    }

    /// Not in this build: the target is checked, then the device refused.
    #[cfg(not(feature = "ble"))]
    fn check_device(&self, ctx: &mut Ctx, _base: &Path, d: &ParsedDevice<'_>) {
        let path = &d.path;
        let proto = d.config.protocol.clone().unwrap_or_default();
        let pnode = d.node.get("protocol");
        let ppath = join(path, "protocol");
        if proto.address.is_none() && proto.name.is_none() {
            ctx.key(
                d.node,
                path,
                &["protocol"],
                "a ble device needs `protocol.address` or `protocol.name`",
            );
        }
        if let (Some(bo), Some(pn)) = (proto.byte_order, pnode) {
            check_byte_order(ctx, pn, &ppath, bo);
        }
        ctx.val(
            d.node,
            path,
            &["driver"],
            format!(
                "driver `ble` is not supported by this build yet; drivers available: {}",
                fieldgate_drivers::enabled_drivers().join(", ")
            ),
        );
    }

    #[cfg(feature = "ble")]
    fn build(
        &self,
        _base: &Path,
        _state_directory: &str,
        d: &ParsedDevice<'_>,
        specs: &mut Vec<PropertySpec>,
        sems: &mut Vec<PropertySemantics>,
    ) -> Option<Connection> {
        if ble_adverts::is_advert(d.config.protocol.as_ref()) {
            return ble_adverts::build(d, specs, sems);
        }
        use fieldgate_drivers::ble as b;
        let proto = d.config.protocol.clone().unwrap_or_default();
        let target = match (&proto.address, &proto.name) {
            (Some(a), _) => b::Target::Address(b::parse_address(a).ok()?),
            (None, Some(n)) => b::Target::Name(n.clone()),
            (None, None) => return None,
        };
        let dev_order = proto
            .byte_order
            .and_then(ble_order)
            .unwrap_or(b::Endian::Little);
        for (p, pn, _) in &d.props {
            let access = ble_access(p);
            let name: Arc<str> = p.name.as_str().into();
            specs.push(PropertySpec {
                name: Arc::clone(&name),
                data_type: p.data_type,
                writable: access.writable(),
                address: PropertyAddress::Ble(b::CharacteristicAddress {
                    service: match &p.service {
                        Some(s) => Some(b::parse_uuid(s).ok()?),
                        None => None,
                    },
                    characteristic: b::parse_uuid(p.characteristic.as_deref()?).ok()?,
                    access,
                    byte_order: p.byte_order.and_then(ble_order).unwrap_or(dev_order),
                    byte_offset: usize::from(p.byte_offset.unwrap_or(0)),
                }),
            });
            let mut sem = semantics(p, pn, name)?;
            sem.writable = access.writable();
            sems.push(sem);
        }
        Some(Connection::Ble(b::BleConnection {
            adapter: proto.adapter.clone(),
            target,
            scan_timeout: proto
                .scan_timeout
                .map(|t| t.0)
                .unwrap_or(Duration::from_secs(30)),
        }))
    }

    /// Not in this build: refused while validating.
    #[cfg(not(feature = "ble"))]
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

    #[cfg(feature = "ble")]
    fn report_connection(&self, out: &mut String, spec: &DeviceSpec) {
        use std::fmt::Write as _;
        match &spec.connection {
            Connection::Ble(c) => {
                let _ = writeln!(
                    out,
                    "    connection: ble {} on {}, scanTimeout {}",
                    c.target,
                    c.adapter.as_deref().unwrap_or("the first adapter"),
                    crate::config::report::dur(c.scan_timeout)
                );
            }
            Connection::BleAdvert(c) => {
                let _ = writeln!(out, "{}", ble_adverts::describe(c));
            }
            _ => {}
        }
    }

    #[cfg(not(feature = "ble"))]
    fn report_connection(&self, _out: &mut String, _spec: &DeviceSpec) {}

    #[cfg(feature = "ble")]
    fn report_address(&self, line: &mut String, address: &PropertyAddress) {
        use fieldgate_drivers::ble::describe_uuid;
        use std::fmt::Write as _;
        match address {
            PropertyAddress::Ble(a) => {
                let _ = write!(line, ", {}", a.access.as_str());
                if let Some(s) = a.service {
                    let _ = write!(line, " service {}", describe_uuid(&s));
                }
                let _ = write!(
                    line,
                    " characteristic {} {} byteOffset {}",
                    describe_uuid(&a.characteristic),
                    a.byte_order.as_str(),
                    a.byte_offset
                );
            }
            PropertyAddress::BleAdvert(a) => {
                line.push_str(&ble_adverts::describe_address(a));
            }
            _ => {}
        }
    }

    #[cfg(not(feature = "ble"))]
    fn report_address(&self, _line: &mut String, _address: &PropertyAddress) {}
}

/// The driver's endianness for a config byte order (`None`: a modbus one).
#[cfg(feature = "ble")]
pub(super) fn ble_order(b: ByteOrderName) -> Option<fieldgate_drivers::ble::Endian> {
    use fieldgate_drivers::ble::Endian;
    match b {
        ByteOrderName::Little => Some(Endian::Little),
        ByteOrderName::Big => Some(Endian::Big),
        _ => None,
    }
}

/// A ble property's access: as given, else `readWrite` when `writable`,
/// else `read`.
#[cfg(feature = "ble")]
fn ble_access(p: &PropertyConfig) -> fieldgate_drivers::ble::Access {
    use fieldgate_drivers::ble::Access;
    match p.access {
        Some(BleAccess::Read) => Access::Read,
        Some(BleAccess::Notify) => Access::Notify,
        Some(BleAccess::Write) => Access::Write,
        Some(BleAccess::ReadWrite) => Access::ReadWrite,
        None if p.writable => Access::ReadWrite,
        None => Access::Read,
    }
}

/// The ble keys of one property: UUIDs, and `writable` agreeing with `access`.
#[cfg(feature = "ble")]
fn check_gatt_keys(ctx: &mut Ctx, p: &PropertyConfig, pn: &Node, pp: &str) {
    use fieldgate_drivers::ble::parse_uuid;
    for (key, v) in [
        ("service", &p.service),
        ("characteristic", &p.characteristic),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            if let Err(m) = parse_uuid(v) {
                ctx.val(pn, pp, &[key], m);
            }
        }
    }
    if p.writable && matches!(p.access, Some(BleAccess::Read | BleAccess::Notify)) {
        ctx.val(
            pn,
            pp,
            &["writable"],
            "a ble property with access `read` or `notify` cannot be writable; use access `write` or `readWrite`",
        );
    }
}

/// The ble `protocol:` keys: one of address/name, adapter, scanTimeout.
#[cfg(feature = "ble")]
fn check_protocol(
    ctx: &mut Ctx,
    proto: &ProtocolConfig,
    dnode: &Node,
    path: &str,
    pnode: Option<&Node>,
    ppath: &str,
) {
    let Some(pn) = pnode else {
        ctx.key(
            dnode,
            path,
            &["driver"],
            "a ble device needs `protocol` with `address` or `name`",
        );
        return;
    };
    match (&proto.address, &proto.name) {
        (None, None) => ctx.key(
            dnode,
            path,
            &["protocol"],
            "a ble device needs `protocol.address` or `protocol.name`",
        ),
        (Some(_), Some(_)) => ctx.key(pn, ppath, &["name"], "give `address` or `name`, not both"),
        (Some(a), None) => {
            if let Err(m) = fieldgate_drivers::ble::parse_address(a) {
                ctx.val(pn, ppath, &["address"], m);
            }
        }
        (None, Some(n)) => {
            if n.is_empty() {
                ctx.val(pn, ppath, &["name"], "name must not be empty");
            }
        }
    }
    if proto.adapter.as_deref() == Some("") {
        ctx.val(
            pn,
            ppath,
            &["adapter"],
            "adapter must not be empty (e.g. hci0; leave it out for the first adapter)",
        );
    }
    if proto.scan_timeout.is_some_and(|t| t.0.is_zero()) {
        ctx.val(
            pn,
            ppath,
            &["scanTimeout"],
            "scanTimeout must be greater than 0s",
        );
    }
    if let Some(bo) = proto.byte_order {
        check_byte_order(ctx, pn, ppath, bo);
    }
}

/// A ble byte order is `little` or `big`.
fn check_byte_order(ctx: &mut Ctx, n: &Node, path: &str, bo: ByteOrderName) {
    if matches!(
        bo,
        ByteOrderName::Abcd | ByteOrderName::Badc | ByteOrderName::Cdab | ByteOrderName::Dcba
    ) {
        ctx.val(
            n,
            path,
            &["byteOrder"],
            "a ble byteOrder is `little` or `big`",
        );
    }
}
