//! The BLE advertisement part of the config (`protocol.mode: advertisement`):
//! its protocol keys, its properties (`field:` or raw `source:`), checks with
//! located errors, and the driver spec.

use std::sync::Arc;
use std::time::Duration;

use fieldgate_drivers::ble::adverts::{
    parse_bind_key, scan::AdvertConnection, AdvertAddress, AdvertSettings, Format, RawField,
    RawSource, STATUS_PROPERTY,
};
use fieldgate_drivers::ble::{parse_address, parse_uuid, Target};
use fieldgate_drivers::{Connection, DataType, PropertyAddress, PropertySpec};

use super::ble::ble_order;
use crate::config::ctx::Ctx;
use crate::config::devices::ParsedDevice;
use crate::config::properties::semantics;
use crate::config::resolved::PropertySemantics;
use crate::config::tree::{did_you_mean, list, Kind, Node};
use crate::config::types::*;

/// Default `staleAfter`.
pub(super) const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);

/// Property keys that only a GATT (`mode: connect`) property takes.
const GATT_KEYS: &[&str] = &["service", "characteristic", "access"];
/// Property keys that only an advertisement property takes.
const ADVERT_KEYS: &[&str] = &["field", "source", "companyId", "serviceUuid"];

/// Whether a ble device's protocol selects the advertisement mode.
pub(super) fn is_advert(proto: Option<&ProtocolConfig>) -> bool {
    proto.is_some_and(|p| p.mode.as_deref() == Some("advertisement"))
}

fn format_of(f: AdvertFormatName) -> Format {
    match f {
        AdvertFormatName::Bthome => Format::Bthome,
        AdvertFormatName::Pvvx => Format::Pvvx,
        AdvertFormatName::Atc1441 => Format::Atc1441,
        AdvertFormatName::Ruuvi => Format::Ruuvi,
        AdvertFormatName::Raw => Format::Raw,
    }
}

/// A property node with `name` and `type` filled in from `field:` when the
/// user left them out (the format decides a field's type); `None` when
/// nothing needs filling.
pub(crate) fn fill_defaults(p: &Node, device: &Node) -> Option<Node> {
    let field = p.get("field")?.text()?;
    let missing_type = p.get("type").is_none();
    let missing_name = p.get("name").is_none();
    if !missing_type && !missing_name {
        return None;
    }
    let format = device
        .get("protocol")
        .and_then(|pr| pr.get("format"))
        .and_then(Node::text)
        .and_then(|f| Format::parse(&f));
    let t = format
        .and_then(|f| f.field(&field))
        .map_or(DataType::Float64, |f| f.data_type);
    let Kind::Map(entries) = &p.kind else {
        return None;
    };
    let mut entries = entries.to_vec();
    let text = |s: &str| Node {
        line: p.line,
        column: p.column,
        kind: Kind::Str(s.into()),
    };
    if missing_name {
        entries.push((text("name"), text(&field)));
    }
    if missing_type {
        entries.push((text("type"), text(t.as_str())));
    }
    Some(Node {
        line: p.line,
        column: p.column,
        kind: Kind::Map(entries.into_boxed_slice()),
    })
}

/// The protocol keys of a ble device: `mode`, and in advertisement mode
/// `format`, `bindKey`, `staleAfter` (and no `scanTimeout`).
pub(super) fn check_protocol(ctx: &mut Ctx, proto: &ProtocolConfig, pn: &Node, ppath: &str) {
    let advert = match proto.mode.as_deref() {
        None | Some("connect") => false,
        Some("advertisement") => true,
        Some(other) => {
            ctx.val(
                pn,
                ppath,
                &["mode"],
                format!("unknown ble mode `{other}`; allowed: `connect` (GATT, the default), `advertisement` (passive)"),
            );
            return;
        }
    };
    if !advert {
        for key in ["format", "bindKey", "staleAfter"] {
            if pn.get(key).is_some() {
                ctx.key(
                    pn,
                    ppath,
                    &[key],
                    format!("`{key}` applies to `mode: advertisement`; this device connects (mode connect)"),
                );
            }
        }
        return;
    }
    if pn.get("scanTimeout").is_some() {
        ctx.key(
            pn,
            ppath,
            &["scanTimeout"],
            "`scanTimeout` applies to `mode: connect`; an advertising device uses `staleAfter`",
        );
    }
    match proto.format {
        None => ctx.key(
            pn,
            ppath,
            &["mode"],
            "`mode: advertisement` needs `format`: bthome, pvvx, atc1441, ruuvi or raw",
        ),
        Some(f) => {
            if let Some(k) = proto.bind_key.as_deref() {
                if f != AdvertFormatName::Bthome {
                    ctx.key(
                        pn,
                        ppath,
                        &["bindKey"],
                        format!(
                            "`bindKey` is for encrypted BTHome; format {} is not encrypted",
                            format_of(f).as_str()
                        ),
                    );
                } else if !k.is_empty() {
                    if let Err(m) = parse_bind_key(k) {
                        ctx.val(pn, ppath, &["bindKey"], m);
                    }
                }
            }
        }
    }
    if proto.stale_after.is_some_and(|t| t.0.is_zero()) {
        ctx.val(
            pn,
            ppath,
            &["staleAfter"],
            "staleAfter must be greater than 0s",
        );
    }
}

/// One property of an advertising device.
pub(super) fn check_property(
    ctx: &mut Ctx,
    proto: &ProtocolConfig,
    p: &PropertyConfig,
    pn: &Node,
    pp: &str,
) {
    for key in GATT_KEYS {
        if pn.get(key).is_some() {
            ctx.key(
                pn,
                pp,
                &[key],
                format!("`{key}` is for GATT properties (mode connect); an advertisement property takes `field`, or `source` with `companyId`/`serviceUuid`, `byteOffset`, `type`"),
            );
        }
    }
    if p.writable {
        ctx.val(
            pn,
            pp,
            &["writable"],
            "an advertising device is read-only (it is never connected)",
        );
    }
    let format = proto.format.map(format_of);
    match (&p.field, p.source) {
        (Some(_), Some(_)) => ctx.key(
            pn,
            pp,
            &["source"],
            "give `field` (a decoded field) or `source` (raw bytes), not both",
        ),
        (None, None) => ctx.at(
            pn,
            pp,
            match format {
                Some(Format::Raw) | None => "an advertisement property needs `source` (manufacturerData or serviceData) or `field: rssi`".to_string(),
                Some(f) => format!(
                    "an advertisement property needs `field` (one of the {} fields: {}) or a raw `source`",
                    f.as_str(),
                    field_names(f)
                ),
            },
        ),
        (Some(name), None) => {
            let Some(f) = format else { return };
            match f.field(name) {
                None => ctx.val(
                    pn,
                    pp,
                    &["field"],
                    if f == Format::Raw {
                        format!("format raw decodes no field `{name}`; its only field is `rssi` (define raw values with `source`)")
                    } else {
                        {
                            let names: Vec<&str> =
                                f.fields().iter().map(|i| i.name).chain(["rssi"]).collect();
                            match did_you_mean(name, &names) {
                                Some(m) => format!(
                                    "format {} has no field `{name}`; did you mean `{m}`? Its fields: {}",
                                    f.as_str(),
                                    field_names(f)
                                ),
                                None => format!(
                                    "format {} has no field `{name}`; its fields: {}",
                                    f.as_str(),
                                    field_names(f)
                                ),
                            }
                        }
                    },
                ),
                Some(info) => {
                    if pn.get("type").is_some() && p.data_type != info.data_type {
                        ctx.val(
                            pn,
                            pp,
                            &["type"],
                            format!(
                                "field `{name}` of format {} is {}; leave `type` out (the format sets it)",
                                f.as_str(),
                                info.data_type
                            ),
                        );
                    }
                    if pn.get("byteOffset").is_some() {
                        ctx.key(pn, pp, &["byteOffset"], "`byteOffset` applies to a raw `source`, not to a decoded `field`");
                    }
                }
            }
        }
        (None, Some(source)) => {
            match source {
                AdvertSourceName::ManufacturerData => {
                    if p.company_id.is_none() {
                        ctx.key(pn, pp, &["source"], "`source: manufacturerData` needs `companyId` (e.g. 0x0499)");
                    }
                    if pn.get("serviceUuid").is_some() {
                        ctx.key(pn, pp, &["serviceUuid"], "`serviceUuid` goes with `source: serviceData`");
                    }
                }
                AdvertSourceName::ServiceData => {
                    match p.service_uuid.as_deref() {
                        None => ctx.key(pn, pp, &["source"], "`source: serviceData` needs `serviceUuid` (e.g. \"181a\")"),
                        Some(u) => {
                            if let Err(m) = parse_uuid(u) {
                                ctx.val(pn, pp, &["serviceUuid"], m);
                            }
                        }
                    }
                    if pn.get("companyId").is_some() {
                        ctx.key(pn, pp, &["companyId"], "`companyId` goes with `source: manufacturerData`");
                    }
                }
            }
            if pn.get("type").is_none() {
                ctx.key(pn, pp, &["source"], "a raw advertisement property needs `type`");
            }
        }
    }
    if p.field.is_some() {
        for key in ["companyId", "serviceUuid"] {
            if pn.get(key).is_some() {
                ctx.key(
                    pn,
                    pp,
                    &[key],
                    format!("`{key}` goes with a raw `source`, not with `field`"),
                );
            }
        }
    }
}

/// A mode-connect (GATT) property must not use the advertisement keys.
pub(super) fn check_gatt_property(ctx: &mut Ctx, pn: &Node, pp: &str) {
    for key in ADVERT_KEYS {
        if pn.get(key).is_some() {
            ctx.key(
                pn,
                pp,
                &[key],
                format!("`{key}` is for advertising devices; set `protocol.mode: advertisement` (this device connects over GATT)"),
            );
        }
    }
}

/// A raw-format device needs properties.
pub(super) fn check_device(ctx: &mut Ctx, d: &ParsedDevice<'_>) {
    let proto = d.config.protocol.clone().unwrap_or_default();
    if proto.format == Some(AdvertFormatName::Raw) && d.props.is_empty() {
        ctx.key(
            d.node,
            &d.path,
            &["properties", "protocol"],
            "format raw needs `properties`, each with `source`, `companyId` or `serviceUuid`, `byteOffset` and `type`",
        );
    }
}

fn field_names(f: Format) -> String {
    let names: Vec<&str> = f.fields().iter().map(|i| i.name).chain(["rssi"]).collect();
    if names.len() > 14 {
        format!("{}, … (see docs/ble.md)", list(&names[..14]))
    } else {
        list(&names)
    }
}

/// The driver spec of an advertising device: its connection, and its
/// properties (the listed ones, or every field of the format), plus the
/// hidden `$advertisement` error slot.
pub(super) fn build(
    d: &ParsedDevice<'_>,
    specs: &mut Vec<PropertySpec>,
    sems: &mut Vec<PropertySemantics>,
) -> Option<Connection> {
    let proto = d.config.protocol.clone().unwrap_or_default();
    let target = match (&proto.address, &proto.name) {
        (Some(a), _) => Target::Address(parse_address(a).ok()?),
        (None, Some(n)) => Target::Name(n.clone()),
        (None, None) => return None,
    };
    let format = format_of(proto.format?);
    let bind_key = match proto.bind_key.as_deref() {
        None | Some("") => None,
        Some(k) => Some(parse_bind_key(k).ok()?),
    };
    let dev_order = proto
        .byte_order
        .and_then(ble_order)
        .unwrap_or(fieldgate_drivers::ble::Endian::Little);
    if d.props.is_empty() {
        for f in format.fields() {
            let name: Arc<str> = f.name.into();
            specs.push(PropertySpec {
                name: Arc::clone(&name),
                data_type: f.data_type,
                writable: false,
                address: PropertyAddress::BleAdvert(AdvertAddress::Field(f.name.to_string())),
            });
            sems.push(PropertySemantics::new(name, f.data_type, false).with(|s| {
                s.unit = f.unit.map(Box::from);
            }));
        }
    }
    for (p, pn, _) in &d.props {
        let name: Arc<str> = p.name.as_str().into();
        let (address, unit) = match (&p.field, p.source) {
            (Some(f), _) => (
                AdvertAddress::Field(f.clone()),
                format.field(f).and_then(|i| i.unit),
            ),
            (None, Some(source)) => (
                AdvertAddress::Raw(RawField {
                    source: match source {
                        AdvertSourceName::ManufacturerData => {
                            RawSource::ManufacturerData(p.company_id?)
                        }
                        AdvertSourceName::ServiceData => {
                            RawSource::ServiceData(parse_uuid(p.service_uuid.as_deref()?).ok()?)
                        }
                    },
                    byte_offset: usize::from(p.byte_offset.unwrap_or(0)),
                    byte_order: p.byte_order.and_then(ble_order).unwrap_or(dev_order),
                }),
                None,
            ),
            (None, None) => return None,
        };
        specs.push(PropertySpec {
            name: Arc::clone(&name),
            data_type: p.data_type,
            writable: false,
            address: PropertyAddress::BleAdvert(address),
        });
        let mut sem = semantics(p, pn, name)?;
        if p.unit.is_none() && p.scale.is_none() && p.offset.is_none() {
            if let Some(u) = unit {
                sem = sem.with(|s| s.unit = Some(Box::from(u)));
            }
        }
        sems.push(sem);
    }
    let status: Arc<str> = STATUS_PROPERTY.into();
    specs.push(PropertySpec {
        name: Arc::clone(&status),
        data_type: DataType::String,
        writable: false,
        address: PropertyAddress::BleAdvert(AdvertAddress::Status),
    });
    sems.push(PropertySemantics::new(status, DataType::String, false));
    Some(Connection::BleAdvert(AdvertConnection {
        adapter: proto.adapter.clone(),
        target,
        settings: AdvertSettings {
            format,
            bind_key,
            stale_after: proto.stale_after.map_or(DEFAULT_STALE_AFTER, |t| t.0),
        },
    }))
}

/// `check` lines for an advertising device's connection.
pub(crate) fn describe(c: &AdvertConnection) -> String {
    format!(
        "    connection: ble advertisements of {} on {} (passive scan shared per adapter), format {}{}, staleAfter {}",
        c.target,
        c.adapter.as_deref().unwrap_or("the first adapter"),
        c.settings.format.as_str(),
        if c.settings.bind_key.is_some() {
            " (encrypted, bindKey set)"
        } else {
            ""
        },
        humantime::format_duration(c.settings.stale_after)
    )
}

/// The `check` words for an advertisement property's source.
pub(crate) fn describe_address(a: &AdvertAddress) -> String {
    match a {
        AdvertAddress::Field(f) => format!(", field {f}"),
        AdvertAddress::Raw(r) => {
            let src = match r.source {
                RawSource::ManufacturerData(id) => format!("manufacturerData 0x{id:04x}"),
                RawSource::ServiceData(u) => {
                    format!("serviceData {}", fieldgate_drivers::ble::describe_uuid(&u))
                }
            };
            format!(
                ", {src} byteOffset {} {}",
                r.byte_offset,
                r.byte_order.as_str()
            )
        }
        AdvertAddress::Status => String::new(),
    }
}
