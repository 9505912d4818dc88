//! The stand-in's object tree: adapter, devices, services and characteristics, their properties and signals.

use std::collections::HashMap;

use dbus::arg::{RefArg, Variant};
use dbus::Message;

use super::DiscoveryFilter;

pub(super) const ADAPTER: &str = "/org/bluez/hci0";
pub(super) const OM: &str = "org.freedesktop.DBus.ObjectManager";
pub(super) const PROPS: &str = "org.freedesktop.DBus.Properties";
pub(super) const INTROSPECT: &str = "org.freedesktop.DBus.Introspectable";
pub(super) const ADAPTER1: &str = "org.bluez.Adapter1";
pub(super) const DEVICE1: &str = "org.bluez.Device1";
pub(super) const SERVICE1: &str = "org.bluez.GattService1";
pub(super) const CHAR1: &str = "org.bluez.GattCharacteristic1";

/// A property value as BlueZ types it.
#[derive(Debug, Clone)]
pub(super) enum Prop {
    Str(String),
    Bool(bool),
    Path(String),
    Bytes(Vec<u8>),
    Strs(Vec<String>),
    I16(i16),
    U32(u32),
    /// `a{qv}` of byte arrays.
    Manufacturer(Vec<(u16, Vec<u8>)>),
    /// `a{sv}` of byte arrays.
    ServiceData(Vec<(String, Vec<u8>)>),
}

impl Prop {
    pub(super) fn variant(&self) -> Variant<Box<dyn RefArg>> {
        Variant(match self {
            Prop::Str(s) => Box::new(s.clone()) as Box<dyn RefArg>,
            Prop::Bool(b) => Box::new(*b),
            Prop::Path(p) => Box::new(dbus::Path::from(p.clone())),
            Prop::Bytes(b) => Box::new(b.clone()),
            Prop::Strs(s) => Box::new(s.clone()),
            Prop::I16(i) => Box::new(*i),
            Prop::U32(u) => Box::new(*u),
            Prop::Manufacturer(m) => Box::new(
                m.iter()
                    .map(|(k, v)| (*k, Variant(v.clone())))
                    .collect::<HashMap<u16, Variant<Vec<u8>>>>(),
            ),
            Prop::ServiceData(m) => Box::new(
                m.iter()
                    .map(|(k, v)| (k.clone(), Variant(v.clone())))
                    .collect::<HashMap<String, Variant<Vec<u8>>>>(),
            ),
        })
    }
}

pub(super) type Interfaces = Vec<(&'static str, Vec<(&'static str, Prop)>)>;
pub(super) type PropMap = HashMap<String, Variant<Box<dyn RefArg>>>;

pub(super) fn prop_map(props: &[(&'static str, Prop)]) -> PropMap {
    props
        .iter()
        .map(|(k, v)| (k.to_string(), v.variant()))
        .collect()
}

#[derive(Debug)]
pub(super) struct Char {
    pub(super) path: String,
    pub(super) uuid: String,
    pub(super) flags: Vec<&'static str>,
    pub(super) value: Vec<u8>,
    pub(super) notifying: bool,
}

#[derive(Debug)]
pub(super) struct Service {
    pub(super) path: String,
    pub(super) uuid: String,
    pub(super) chars: Vec<Char>,
}

#[derive(Debug)]
pub(super) struct Dev {
    pub(super) path: String,
    pub(super) address: String,
    pub(super) name: Option<String>,
    /// In radio range.
    pub(super) present: bool,
    /// Exported on the bus (found by a discovery).
    pub(super) exported: bool,
    pub(super) connected: bool,
    pub(super) services: Vec<Service>,
    /// Latest advertisement: RSSI, manufacturer data, service data.
    pub(super) rssi: i16,
    pub(super) manufacturer_data: Vec<(u16, Vec<u8>)>,
    pub(super) service_data: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// hci0 is plugged in.
    pub(super) adapter_present: bool,
    pub(super) powered: bool,
    pub(super) discovering: bool,
    pub(super) devices: Vec<Dev>,
    /// `(characteristic UUID, value)` of every WriteValue.
    pub(super) writes: Vec<(String, Vec<u8>)>,
    /// Method calls received, as `Interface.Member`.
    pub(super) calls: Vec<String>,
    /// Connect calls per device address.
    pub(super) connects: HashMap<String, usize>,
    /// Filters set by each client (unique bus name).
    pub(super) filters: HashMap<String, DiscoveryFilter>,
    /// Clients discovering now.
    pub(super) discovering_clients: Vec<String>,
    /// Advertisements signalled (PropertiesChanged or InterfacesAdded with data).
    pub(super) adverts_sent: usize,
}

impl State {
    pub(super) fn adapter_props(&self) -> Vec<(&'static str, Prop)> {
        vec![
            ("Address", Prop::Str("00:1A:7D:DA:71:13".into())),
            ("AddressType", Prop::Str("public".into())),
            ("Name", Prop::Str("fieldgate-test".into())),
            ("Alias", Prop::Str("fieldgate-test".into())),
            ("Class", Prop::U32(0)),
            ("Powered", Prop::Bool(self.powered)),
            ("Discoverable", Prop::Bool(false)),
            ("Pairable", Prop::Bool(false)),
            ("Discovering", Prop::Bool(self.discovering)),
            ("UUIDs", Prop::Strs(vec![])),
            ("Modalias", Prop::Str("usb:v1D6Bp0246d0540".into())),
        ]
    }

    pub(super) fn device_props(d: &Dev) -> Vec<(&'static str, Prop)> {
        let mut v = vec![
            ("Address", Prop::Str(d.address.clone())),
            ("AddressType", Prop::Str("public".into())),
            ("Paired", Prop::Bool(false)),
            ("Bonded", Prop::Bool(false)),
            ("Trusted", Prop::Bool(false)),
            ("Blocked", Prop::Bool(false)),
            ("LegacyPairing", Prop::Bool(false)),
            ("Connected", Prop::Bool(d.connected)),
            ("ServicesResolved", Prop::Bool(d.connected)),
            ("Adapter", Prop::Path(ADAPTER.into())),
            ("RSSI", Prop::I16(d.rssi)),
            (
                "UUIDs",
                Prop::Strs(d.services.iter().map(|s| s.uuid.clone()).collect()),
            ),
        ];
        if !d.manufacturer_data.is_empty() {
            v.push((
                "ManufacturerData",
                Prop::Manufacturer(d.manufacturer_data.clone()),
            ));
        }
        if !d.service_data.is_empty() {
            v.push(("ServiceData", Prop::ServiceData(d.service_data.clone())));
        }
        if let Some(n) = &d.name {
            v.push(("Name", Prop::Str(n.clone())));
            v.push(("Alias", Prop::Str(n.clone())));
        }
        v
    }

    pub(super) fn service_props(d: &Dev, s: &Service) -> Vec<(&'static str, Prop)> {
        vec![
            ("UUID", Prop::Str(s.uuid.clone())),
            ("Primary", Prop::Bool(true)),
            ("Device", Prop::Path(d.path.clone())),
        ]
    }

    pub(super) fn char_props(s: &Service, c: &Char) -> Vec<(&'static str, Prop)> {
        vec![
            ("UUID", Prop::Str(c.uuid.clone())),
            ("Service", Prop::Path(s.path.clone())),
            ("Value", Prop::Bytes(c.value.clone())),
            ("Notifying", Prop::Bool(c.notifying)),
            (
                "Flags",
                Prop::Strs(c.flags.iter().map(|f| f.to_string()).collect()),
            ),
        ]
    }

    /// Every object of one device, parents first.
    pub(super) fn device_objects(d: &Dev) -> Vec<(String, Interfaces)> {
        let mut out = vec![(d.path.clone(), vec![(DEVICE1, Self::device_props(d))])];
        for s in &d.services {
            out.push((s.path.clone(), vec![(SERVICE1, Self::service_props(d, s))]));
            for c in &s.chars {
                out.push((c.path.clone(), vec![(CHAR1, Self::char_props(s, c))]));
            }
        }
        out
    }

    /// Every exported object.
    pub(super) fn objects(&self) -> Vec<(String, Interfaces)> {
        if !self.adapter_present {
            return Vec::new();
        }
        let mut out = vec![(ADAPTER.to_string(), vec![(ADAPTER1, self.adapter_props())])];
        for d in self.devices.iter().filter(|d| d.exported) {
            out.extend(Self::device_objects(d));
        }
        out
    }

    pub(super) fn device_at(&mut self, path: &str) -> Option<&mut Dev> {
        self.devices
            .iter_mut()
            .find(|d| d.exported && d.path == path)
    }

    pub(super) fn char_at(&mut self, path: &str) -> Option<(&mut Dev, usize, usize)> {
        let d = self
            .devices
            .iter_mut()
            .find(|d| d.exported && path.starts_with(&format!("{}/", d.path)))?;
        for (si, s) in d.services.iter().enumerate() {
            for (ci, c) in s.chars.iter().enumerate() {
                if c.path == path {
                    return Some((d, si, ci));
                }
            }
        }
        None
    }
}

pub(super) fn props_changed(path: &str, iface: &str, changed: &[(&'static str, Prop)]) -> Message {
    Message::new_signal(path, PROPS, "PropertiesChanged")
        .expect("signal")
        .append3(iface.to_string(), prop_map(changed), Vec::<String>::new())
}

pub(super) fn interfaces_added(path: &str, ifaces: &Interfaces) -> Message {
    let map: HashMap<String, PropMap> = ifaces
        .iter()
        .map(|(i, p)| (i.to_string(), prop_map(p)))
        .collect();
    Message::new_signal("/", OM, "InterfacesAdded")
        .expect("signal")
        .append2(dbus::Path::from(path.to_string()), map)
}

pub(super) fn interfaces_removed(path: &str, ifaces: &Interfaces) -> Message {
    let names: Vec<String> = ifaces.iter().map(|(i, _)| i.to_string()).collect();
    Message::new_signal("/", OM, "InterfacesRemoved")
        .expect("signal")
        .append2(dbus::Path::from(path.to_string()), names)
}
