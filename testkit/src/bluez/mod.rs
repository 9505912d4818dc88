//! A private D-Bus daemon and a small BlueZ stand-in on it, for end-to-end
//! tests of the BLE driver without a radio.
//!
//! [`DbusDaemon`] runs `dbus-daemon` with a permissive config on a unix
//! socket in a temp dir; the gateway reaches it through
//! `DBUS_SYSTEM_BUS_ADDRESS`. [`Bluez`] owns `org.bluez` on that bus and
//! exports what BlueZ documents (doc/org.bluez.*.rst) and what btleplug's
//! backend (bluez-async) calls:
//! - `/`: `org.freedesktop.DBus.ObjectManager` (`GetManagedObjects`,
//!   `InterfacesAdded`, `InterfacesRemoved`);
//! - `/org/bluez/hci0`: `org.bluez.Adapter1` (`StartDiscovery`,
//!   `StopDiscovery`, `SetDiscoveryFilter`; `Powered`,
//!   `Discovering`, ...);
//! - `/org/bluez/hci0/dev_XX_..`: `org.bluez.Device1` (`Connect`,
//!   `Disconnect`; `Address`, `Name`, `Connected`, `ServicesResolved`, ...);
//! - `.../serviceNNNN`: `org.bluez.GattService1` (`UUID`, `Primary`, `Device`);
//! - `.../serviceNNNN/charNNNN`: `org.bluez.GattCharacteristic1`
//!   (`ReadValue`, `WriteValue`, `StartNotify`, `StopNotify`; `UUID`, `Flags`,
//!   `Value`, `Notifying`), notifications as `PropertiesChanged` on `Value`;
//! - `org.freedesktop.DBus.Properties` (`Get`, `GetAll`, `Set`,
//!   `PropertiesChanged`) and `org.freedesktop.DBus.Introspectable` on every
//!   object.
//!
//! Like BlueZ, a device object appears only while discovery runs (or once it
//! was found before) and disappears with `InterfacesRemoved` when the
//! peripheral goes away; its GATT objects are exported with it (BlueZ's
//! cached GATT database).
//!
//! Advertisements ([`Bluez::advertise`]) reach the bus as BlueZ sends them:
//! a device seen for the first time appears with `InterfacesAdded` carrying
//! its `RSSI`, `ManufacturerData` (`a{qv}`) and `ServiceData` (`a{sv}`);
//! later ones are `PropertiesChanged` on `org.bluez.Device1`. Discovery is
//! kept per D-Bus client with its `SetDiscoveryFilter` (`Transport`,
//! `DuplicateData`): advertisements are delivered only while some client
//! discovers with transport `le` or `auto`, and an unchanged advertisement
//! is signalled again only when a client asked for `DuplicateData: true`
//! (else only its RSSI changes).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dbus::arg::{RefArg, Variant};
use dbus::blocking::SyncConnection;
use dbus::channel::{Channel, MatchingReceiver as _, Sender as _};
use dbus::message::MatchRule;
use dbus::strings::ErrorName;
use dbus::Message;

/// A private `dbus-daemon` on a unix socket in a temp dir.
pub struct DbusDaemon {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl DbusDaemon {
    /// Starts the daemon and waits for it to print its address.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for dbus-daemon");
        let socket = dir.path().join("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write bus.conf");
        let mut child = Command::new(dbus_daemon_binary())
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--print-address=1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its notices (e.g. about the fd limit as non-root) go to a file.
            .stderr(
                std::fs::File::create(dir.path().join("dbus-daemon.log")).expect("dbus-daemon.log"),
            )
            .spawn()
            .expect("start dbus-daemon (Debian package dbus-daemon)");
        let stdout = child.stdout.take().expect("dbus-daemon stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read dbus-daemon address");
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address: {line:?}"
        );
        Self {
            child,
            address,
            _dir: dir,
        }
    }

    /// The bus address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for DbusDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dbus_daemon_binary() -> PathBuf {
    ["/usr/bin/dbus-daemon", "/bin/dbus-daemon"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("dbus-daemon"))
}

/// A GATT characteristic of a stand-in peripheral.
#[derive(Debug, Clone)]
pub struct CharDef {
    /// 128-bit UUID, lower case.
    pub uuid: String,
    /// BlueZ flags: read, write, write-without-response, notify, indicate.
    pub flags: Vec<&'static str>,
    /// Initial value.
    pub value: Vec<u8>,
}

/// A GATT service of a stand-in peripheral.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    /// 128-bit UUID, lower case.
    pub uuid: String,
    /// Its characteristics.
    pub chars: Vec<CharDef>,
}

/// A stand-in peripheral.
#[derive(Debug, Clone)]
pub struct DeviceDef {
    /// `AA:BB:CC:DD:EE:FF`
    pub address: String,
    /// Advertised name.
    pub name: Option<String>,
    /// GATT services.
    pub services: Vec<ServiceDef>,
}

/// The 128-bit form of a 16-bit SIG UUID.
pub fn sig_uuid(short: u16) -> String {
    format!("0000{short:04x}-0000-1000-8000-00805f9b34fb")
}

const ADAPTER: &str = "/org/bluez/hci0";
const OM: &str = "org.freedesktop.DBus.ObjectManager";
const PROPS: &str = "org.freedesktop.DBus.Properties";
const INTROSPECT: &str = "org.freedesktop.DBus.Introspectable";
const ADAPTER1: &str = "org.bluez.Adapter1";
const DEVICE1: &str = "org.bluez.Device1";
const SERVICE1: &str = "org.bluez.GattService1";
const CHAR1: &str = "org.bluez.GattCharacteristic1";

/// A property value as BlueZ types it.
#[derive(Debug, Clone)]
enum Prop {
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
    fn variant(&self) -> Variant<Box<dyn RefArg>> {
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

type Interfaces = Vec<(&'static str, Vec<(&'static str, Prop)>)>;
type PropMap = HashMap<String, Variant<Box<dyn RefArg>>>;

fn prop_map(props: &[(&'static str, Prop)]) -> PropMap {
    props
        .iter()
        .map(|(k, v)| (k.to_string(), v.variant()))
        .collect()
}

#[derive(Debug)]
struct Char {
    path: String,
    uuid: String,
    flags: Vec<&'static str>,
    value: Vec<u8>,
    notifying: bool,
}

#[derive(Debug)]
struct Service {
    path: String,
    uuid: String,
    chars: Vec<Char>,
}

#[derive(Debug)]
struct Dev {
    path: String,
    address: String,
    name: Option<String>,
    /// In radio range.
    present: bool,
    /// Exported on the bus (found by a discovery).
    exported: bool,
    connected: bool,
    services: Vec<Service>,
    /// Latest advertisement: RSSI, manufacturer data, service data.
    rssi: i16,
    manufacturer_data: Vec<(u16, Vec<u8>)>,
    service_data: Vec<(String, Vec<u8>)>,
}

/// One D-Bus client's discovery filter (`SetDiscoveryFilter`).
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryFilter {
    /// `auto` (default), `le` or `bredr`.
    pub transport: String,
    /// Report every advertisement, even unchanged ones.
    pub duplicate_data: bool,
}

impl Default for DiscoveryFilter {
    fn default() -> Self {
        Self {
            transport: "auto".into(),
            duplicate_data: true,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// hci0 is plugged in.
    adapter_present: bool,
    powered: bool,
    discovering: bool,
    devices: Vec<Dev>,
    /// `(characteristic UUID, value)` of every WriteValue.
    writes: Vec<(String, Vec<u8>)>,
    /// Method calls received, as `Interface.Member`.
    calls: Vec<String>,
    /// Connect calls per device address.
    connects: HashMap<String, usize>,
    /// Filters set by each client (unique bus name).
    filters: HashMap<String, DiscoveryFilter>,
    /// Clients discovering now.
    discovering_clients: Vec<String>,
    /// Advertisements signalled (PropertiesChanged or InterfacesAdded with data).
    adverts_sent: usize,
}

impl State {
    fn adapter_props(&self) -> Vec<(&'static str, Prop)> {
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

    fn device_props(d: &Dev) -> Vec<(&'static str, Prop)> {
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

    fn service_props(d: &Dev, s: &Service) -> Vec<(&'static str, Prop)> {
        vec![
            ("UUID", Prop::Str(s.uuid.clone())),
            ("Primary", Prop::Bool(true)),
            ("Device", Prop::Path(d.path.clone())),
        ]
    }

    fn char_props(s: &Service, c: &Char) -> Vec<(&'static str, Prop)> {
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
    fn device_objects(d: &Dev) -> Vec<(String, Interfaces)> {
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
    fn objects(&self) -> Vec<(String, Interfaces)> {
        if !self.adapter_present {
            return Vec::new();
        }
        let mut out = vec![(ADAPTER.to_string(), vec![(ADAPTER1, self.adapter_props())])];
        for d in self.devices.iter().filter(|d| d.exported) {
            out.extend(Self::device_objects(d));
        }
        out
    }

    fn device_at(&mut self, path: &str) -> Option<&mut Dev> {
        self.devices
            .iter_mut()
            .find(|d| d.exported && d.path == path)
    }

    fn char_at(&mut self, path: &str) -> Option<(&mut Dev, usize, usize)> {
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

fn props_changed(path: &str, iface: &str, changed: &[(&'static str, Prop)]) -> Message {
    Message::new_signal(path, PROPS, "PropertiesChanged")
        .expect("signal")
        .append3(iface.to_string(), prop_map(changed), Vec::<String>::new())
}

fn interfaces_added(path: &str, ifaces: &Interfaces) -> Message {
    let map: HashMap<String, PropMap> = ifaces
        .iter()
        .map(|(i, p)| (i.to_string(), prop_map(p)))
        .collect();
    Message::new_signal("/", OM, "InterfacesAdded")
        .expect("signal")
        .append2(dbus::Path::from(path.to_string()), map)
}

fn interfaces_removed(path: &str, ifaces: &Interfaces) -> Message {
    let names: Vec<String> = ifaces.iter().map(|(i, _)| i.to_string()).collect();
    Message::new_signal("/", OM, "InterfacesRemoved")
        .expect("signal")
        .append2(dbus::Path::from(path.to_string()), names)
}

/// The BlueZ stand-in: owns `org.bluez` on the given bus, serves from a
/// thread, and lets the test move peripherals and change values.
pub struct Bluez {
    conn: Arc<SyncConnection>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bluez {
    /// Connects to `address`, takes `org.bluez` and exports adapter hci0 and
    /// the given peripherals (all in range, exported once discovered).
    pub fn start(address: &str, devices: Vec<DeviceDef>) -> Self {
        let mut channel = Channel::open_private(address).expect("connect to the private bus");
        channel.register().expect("register on the private bus");
        let conn = Arc::new(SyncConnection::from(channel));
        conn.request_name("org.bluez", false, true, true)
            .expect("own org.bluez");
        let mut state = State {
            adapter_present: true,
            powered: true,
            ..State::default()
        };
        for d in devices {
            let path = format!("{ADAPTER}/dev_{}", d.address.replace(':', "_"));
            let mut handle = 0x000a;
            let services = d
                .services
                .into_iter()
                .map(|s| {
                    let spath = format!("{path}/service{handle:04x}");
                    handle += 1;
                    let chars = s
                        .chars
                        .into_iter()
                        .map(|c| {
                            let cpath = format!("{spath}/char{handle:04x}");
                            handle += 2;
                            Char {
                                path: cpath,
                                uuid: c.uuid,
                                flags: c.flags,
                                value: c.value,
                                notifying: false,
                            }
                        })
                        .collect();
                    Service {
                        path: spath,
                        uuid: s.uuid,
                        chars,
                    }
                })
                .collect();
            state.devices.push(Dev {
                path,
                address: d.address,
                name: d.name,
                present: true,
                exported: false,
                connected: false,
                services,
                rssi: -60,
                manufacturer_data: Vec::new(),
                service_data: Vec::new(),
            });
        }
        let state = Arc::new(Mutex::new(state));
        let st = state.clone();
        conn.start_receive(
            MatchRule::new_method_call(),
            Box::new(move |msg, conn| {
                let (reply, signals) = handle_call(&st, &msg);
                // The reply goes first, then the signals it caused (as BlueZ
                // does for Connect: the call returns, then Connected and
                // ServicesResolved change).
                let _ = conn.send(reply);
                for s in signals {
                    let _ = conn.send(s);
                }
                true
            }),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (conn.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if c.process(Duration::from_millis(50)).is_err() {
                    break;
                }
            }
        });
        Self {
            conn,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let _ = self.conn.send(m);
        }
    }

    /// Sets a characteristic's value (by device address and characteristic
    /// UUID); when notifications are on, emits `PropertiesChanged` on `Value`.
    pub fn set_value(&self, address: &str, char_uuid: &str, value: &[u8]) {
        let mut msgs = Vec::new();
        {
            let mut st = self.state.lock().unwrap();
            let d = st
                .devices
                .iter_mut()
                .find(|d| d.address == address)
                .expect("known device");
            let connected = d.connected && d.exported;
            for s in &mut d.services {
                for c in &mut s.chars {
                    if c.uuid == char_uuid {
                        c.value = value.to_vec();
                        if c.notifying && connected {
                            msgs.push(props_changed(
                                &c.path,
                                CHAR1,
                                &[("Value", Prop::Bytes(c.value.clone()))],
                            ));
                        }
                    }
                }
            }
        }
        self.send(msgs);
    }

    /// Moves the peripheral out of range (`false`: it disconnects and its
    /// objects are removed) or back into range (`true`: exported again at
    /// once if discovery runs, else at the next discovery).
    pub fn set_present(&self, address: &str, present: bool) {
        let mut msgs = Vec::new();
        {
            let mut st = self.state.lock().unwrap();
            let discovering = st.discovering;
            let d = st
                .devices
                .iter_mut()
                .find(|d| d.address == address)
                .expect("known device");
            d.present = present;
            if !present && d.exported {
                if d.connected {
                    d.connected = false;
                    for s in &mut d.services {
                        for c in &mut s.chars {
                            c.notifying = false;
                        }
                    }
                    msgs.push(props_changed(
                        &d.path,
                        DEVICE1,
                        &[
                            ("ServicesResolved", Prop::Bool(false)),
                            ("Connected", Prop::Bool(false)),
                        ],
                    ));
                }
                d.exported = false;
                for (path, ifaces) in State::device_objects(d).iter().rev() {
                    msgs.push(interfaces_removed(path, ifaces));
                }
            } else if present && discovering && !d.exported {
                d.exported = true;
                for (path, ifaces) in State::device_objects(d) {
                    msgs.push(interfaces_added(&path, &ifaces));
                }
            }
        }
        self.send(msgs);
    }

    /// Unplugs hci0 abruptly: the adapter and every device object vanish
    /// (`InterfacesRemoved`) without a `Connected` change.
    pub fn unplug_adapter(&self) {
        let mut msgs = Vec::new();
        {
            let mut st = self.state.lock().unwrap();
            for (path, ifaces) in st.objects().iter().rev() {
                msgs.push(interfaces_removed(path, ifaces));
            }
            st.adapter_present = false;
            st.discovering = false;
            st.discovering_clients.clear();
            for d in &mut st.devices {
                d.exported = false;
                d.connected = false;
                for s in &mut d.services {
                    for c in &mut s.chars {
                        c.notifying = false;
                    }
                }
            }
        }
        self.send(msgs);
    }

    /// Plugs hci0 back in (powered, not discovering).
    pub fn plug_adapter(&self) {
        let msgs = {
            let mut st = self.state.lock().unwrap();
            st.adapter_present = true;
            st.powered = true;
            vec![interfaces_added(
                ADAPTER,
                &vec![(ADAPTER1, st.adapter_props())],
            )]
        };
        self.send(msgs);
    }

    /// The peripheral advertises: `manufacturer` (company id, bytes) and/or
    /// `service` (16-bit or 128-bit service UUID, bytes) with `rssi`. Signalled
    /// as BlueZ would (see the module docs); returns whether it reached the
    /// bus as an advertisement.
    pub fn advertise(
        &self,
        address: &str,
        manufacturer: Option<(u16, &[u8])>,
        service: Option<(&str, &[u8])>,
        rssi: i16,
    ) -> bool {
        let mut msgs = Vec::new();
        let sent = {
            let mut st = self.state.lock().unwrap();
            let le_clients: Vec<DiscoveryFilter> = st
                .discovering_clients
                .iter()
                .map(|c| st.filters.get(c).cloned().unwrap_or_default())
                .filter(|f| f.transport != "bredr")
                .collect();
            let adapter_ok = st.adapter_present && st.powered;
            let d = st
                .devices
                .iter_mut()
                .find(|d| d.address == address)
                .expect("known device");
            if !adapter_ok || !d.present || le_clients.is_empty() {
                false
            } else {
                let mut changed: Vec<(&'static str, Prop)> = Vec::new();
                let mut data_changed = false;
                if let Some((id, bytes)) = manufacturer {
                    let new = vec![(id, bytes.to_vec())];
                    data_changed |= d.manufacturer_data != new;
                    d.manufacturer_data = new;
                    changed.push((
                        "ManufacturerData",
                        Prop::Manufacturer(d.manufacturer_data.clone()),
                    ));
                }
                if let Some((uuid, bytes)) = service {
                    let uuid = if uuid.len() == 4 {
                        sig_uuid(u16::from_str_radix(uuid, 16).expect("16-bit uuid"))
                    } else {
                        uuid.to_lowercase()
                    };
                    let new = vec![(uuid, bytes.to_vec())];
                    data_changed |= d.service_data != new;
                    d.service_data = new;
                    changed.push(("ServiceData", Prop::ServiceData(d.service_data.clone())));
                }
                let rssi_changed = d.rssi != rssi;
                d.rssi = rssi;
                if !d.exported {
                    d.exported = true;
                    for (p, ifaces) in State::device_objects(d) {
                        msgs.push(interfaces_added(&p, &ifaces));
                    }
                    true
                } else {
                    let duplicates = le_clients.iter().any(|f| f.duplicate_data);
                    let mut props = Vec::new();
                    if rssi_changed || duplicates {
                        props.push(("RSSI", Prop::I16(rssi)));
                    }
                    let report_data = data_changed || duplicates;
                    if report_data {
                        props.extend(changed);
                    }
                    if !props.is_empty() {
                        msgs.push(props_changed(&d.path, DEVICE1, &props));
                    }
                    report_data
                }
            }
        };
        if sent {
            self.state.lock().unwrap().adverts_sent += 1;
        }
        self.send(msgs);
        sent
    }

    /// The discovery filter each client set, and whether it discovers now.
    pub fn discovery_filters(&self) -> Vec<(DiscoveryFilter, bool)> {
        let st = self.state.lock().unwrap();
        st.filters
            .iter()
            .map(|(c, f)| (f.clone(), st.discovering_clients.contains(c)))
            .collect()
    }

    /// Whether any client discovers now.
    pub fn discovering(&self) -> bool {
        self.state.lock().unwrap().discovering
    }

    /// Advertisements signalled so far.
    pub fn adverts_sent(&self) -> usize {
        self.state.lock().unwrap().adverts_sent
    }

    /// Values written to a characteristic (by UUID), oldest first.
    pub fn writes(&self, char_uuid: &str) -> Vec<Vec<u8>> {
        self.state
            .lock()
            .unwrap()
            .writes
            .iter()
            .filter(|(u, _)| u == char_uuid)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether the peripheral is connected.
    pub fn connected(&self, address: &str) -> bool {
        self.state
            .lock()
            .unwrap()
            .devices
            .iter()
            .any(|d| d.address == address && d.connected)
    }

    /// How many `Connect` calls the peripheral got.
    pub fn connects(&self, address: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .connects
            .get(address)
            .copied()
            .unwrap_or(0)
    }

    /// Whether notifications are on for a characteristic (by UUID).
    pub fn notifying(&self, char_uuid: &str) -> bool {
        self.state.lock().unwrap().devices.iter().any(|d| {
            d.services
                .iter()
                .flat_map(|s| &s.chars)
                .any(|c| c.uuid == char_uuid && c.notifying)
        })
    }

    /// Method calls received so far, as `Interface.Member`.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Waits until `cond` holds for the stand-in's state, or panics.
    pub fn wait(&self, what: &str, timeout: Duration, cond: impl Fn(&Bluez) -> bool) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "stand-in: timed out waiting for {what}; calls: {:?}",
            self.calls()
        );
    }
}

impl Drop for Bluez {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn error(msg: &Message, name: &str, text: &str) -> Message {
    let name = ErrorName::new(name.to_string()).expect("error name");
    let text = std::ffi::CString::new(text).expect("error text");
    msg.error(&name, &text)
}

/// Children of `path` among the exported objects (for Introspect).
fn children(objects: &[(String, Interfaces)], path: &str) -> Vec<String> {
    let prefix = if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    };
    let mut names: Vec<String> = objects
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The reply to one method call and the signals it causes.
fn handle_call(state: &Mutex<State>, msg: &Message) -> (Message, Vec<Message>) {
    let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
    let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
    let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
    let mut st = state.lock().unwrap();
    st.calls.push(format!("{iface}.{member}"));
    let objects = st.objects();
    let object = objects.iter().find(|(p, _)| *p == path);
    let mut signals = Vec::new();
    let on_adapter = path == ADAPTER && st.adapter_present;
    let reply = match (iface.as_str(), member.as_str()) {
        (OM, "GetManagedObjects") if path == "/" => {
            let map: HashMap<dbus::Path<'static>, HashMap<String, PropMap>> = objects
                .iter()
                .map(|(p, ifaces)| {
                    (
                        dbus::Path::from(p.clone()),
                        ifaces
                            .iter()
                            .map(|(i, props)| (i.to_string(), prop_map(props)))
                            .collect(),
                    )
                })
                .collect();
            msg.method_return().append1(map)
        }
        (INTROSPECT, "Introspect") => {
            let known = path == "/"
                || object.is_some()
                || objects
                    .iter()
                    .any(|(p, _)| p.starts_with(&format!("{path}/")));
            if !known {
                error(
                    msg,
                    "org.freedesktop.DBus.Error.UnknownObject",
                    "no such object",
                )
            } else {
                let mut xml = String::from(
                    "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\" \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n",
                );
                let mut ifaces = vec![INTROSPECT, PROPS];
                if path == "/" {
                    ifaces.push(OM);
                }
                if let Some((_, own)) = object {
                    ifaces.extend(own.iter().map(|(i, _)| *i));
                }
                for i in ifaces {
                    xml.push_str(&format!("  <interface name=\"{i}\"/>\n"));
                }
                for c in children(&objects, &path) {
                    xml.push_str(&format!("  <node name=\"{c}\"/>\n"));
                }
                xml.push_str("</node>\n");
                msg.method_return().append1(xml)
            }
        }
        (PROPS, "GetAll") | (PROPS, "Get") | (PROPS, "Set") => {
            let Ok(want) = msg.read1::<String>() else {
                return (
                    error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "bad args"),
                    Vec::new(),
                );
            };
            let props = object.and_then(|(_, ifaces)| {
                ifaces
                    .iter()
                    .find(|(i, _)| *i == want)
                    .map(|(_, p)| p.clone())
            });
            match (member.as_str(), props) {
                (_, None) => error(
                    msg,
                    "org.freedesktop.DBus.Error.InvalidArgs",
                    "no such interface",
                ),
                ("GetAll", Some(p)) => msg.method_return().append1(prop_map(&p)),
                ("Get", Some(p)) => {
                    let name: String = msg
                        .read2::<String, String>()
                        .map(|x| x.1)
                        .unwrap_or_default();
                    match p.iter().find(|(k, _)| *k == name) {
                        Some((_, v)) => msg.method_return().append1(v.variant()),
                        None => error(
                            msg,
                            "org.freedesktop.DBus.Error.InvalidArgs",
                            "no such property",
                        ),
                    }
                }
                (_, Some(_)) => {
                    // Set: only the adapter's Powered is writable here.
                    let mut it = msg.iter_init();
                    it.next();
                    let name: String = it.read().unwrap_or_default();
                    let value: Option<bool> = it
                        .get::<Variant<Box<dyn RefArg>>>()
                        .and_then(|v| v.0.as_i64())
                        .map(|v| v != 0);
                    if path == ADAPTER && want == ADAPTER1 && name == "Powered" {
                        if let Some(v) = value {
                            st.powered = v;
                            signals.push(props_changed(
                                ADAPTER,
                                ADAPTER1,
                                &[("Powered", Prop::Bool(v))],
                            ));
                        }
                        msg.method_return()
                    } else {
                        error(
                            msg,
                            "org.freedesktop.DBus.Error.PropertyReadOnly",
                            "read-only property",
                        )
                    }
                }
            }
        }
        (ADAPTER1, "SetDiscoveryFilter") if on_adapter => {
            let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();
            match msg.read1::<PropMap>() {
                Err(_) => error(msg, "org.bluez.Error.InvalidArguments", "Invalid arguments"),
                Ok(map) => {
                    let mut f = DiscoveryFilter::default();
                    let mut bad = None;
                    for (k, v) in &map {
                        match k.as_str() {
                            "Transport" => match v.0.as_str() {
                                Some(t @ ("auto" | "le" | "bredr")) => f.transport = t.into(),
                                _ => bad = Some("Transport"),
                            },
                            "DuplicateData" => match v.0.as_i64() {
                                Some(b) => f.duplicate_data = b != 0,
                                None => bad = Some("DuplicateData"),
                            },
                            "UUIDs" | "RSSI" | "Pathloss" | "Discoverable" | "Pattern" => {}
                            _ => bad = Some("unknown key"),
                        }
                    }
                    match bad {
                        Some(_) => {
                            error(msg, "org.bluez.Error.InvalidArguments", "Invalid arguments")
                        }
                        None => {
                            if map.is_empty() {
                                st.filters.remove(&sender);
                            } else {
                                st.filters.insert(sender, f);
                            }
                            msg.method_return()
                        }
                    }
                }
            }
        }
        (ADAPTER1, "StartDiscovery") if on_adapter => {
            let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();
            if !st.powered {
                error(msg, "org.bluez.Error.NotReady", "Resource Not Ready")
            } else if st.discovering_clients.contains(&sender) {
                error(
                    msg,
                    "org.bluez.Error.InProgress",
                    "Operation already in progress",
                )
            } else {
                st.discovering_clients.push(sender);
                if !st.discovering {
                    st.discovering = true;
                    signals.push(props_changed(
                        ADAPTER,
                        ADAPTER1,
                        &[("Discovering", Prop::Bool(true))],
                    ));
                }
                for d in st.devices.iter_mut().filter(|d| d.present && !d.exported) {
                    d.exported = true;
                    for (p, ifaces) in State::device_objects(d) {
                        signals.push(interfaces_added(&p, &ifaces));
                    }
                }
                msg.method_return()
            }
        }
        (ADAPTER1, "StopDiscovery") if on_adapter => {
            let sender = msg.sender().map(|s| s.to_string()).unwrap_or_default();
            if st.discovering_clients.contains(&sender) {
                st.discovering_clients.retain(|c| *c != sender);
                if st.discovering_clients.is_empty() && st.discovering {
                    st.discovering = false;
                    signals.push(props_changed(
                        ADAPTER,
                        ADAPTER1,
                        &[("Discovering", Prop::Bool(false))],
                    ));
                }
                msg.method_return()
            } else {
                error(msg, "org.bluez.Error.Failed", "No discovery started")
            }
        }
        (DEVICE1, "Connect") => match st.device_at(&path) {
            None => error(
                msg,
                "org.freedesktop.DBus.Error.UnknownObject",
                "no such device",
            ),
            Some(d) if !d.present => error(
                msg,
                "org.bluez.Error.Failed",
                "le-connection-abort-by-local",
            ),
            Some(d) => {
                let address = d.address.clone();
                if !d.connected {
                    d.connected = true;
                    signals.push(props_changed(
                        &path,
                        DEVICE1,
                        &[("Connected", Prop::Bool(true))],
                    ));
                    signals.push(props_changed(
                        &path,
                        DEVICE1,
                        &[("ServicesResolved", Prop::Bool(true))],
                    ));
                }
                *st.connects.entry(address).or_default() += 1;
                msg.method_return()
            }
        },
        (DEVICE1, "Disconnect") => match st.device_at(&path) {
            None => error(
                msg,
                "org.freedesktop.DBus.Error.UnknownObject",
                "no such device",
            ),
            Some(d) => {
                if d.connected {
                    d.connected = false;
                    for s in &mut d.services {
                        for c in &mut s.chars {
                            c.notifying = false;
                        }
                    }
                    signals.push(props_changed(
                        &path,
                        DEVICE1,
                        &[
                            ("ServicesResolved", Prop::Bool(false)),
                            ("Connected", Prop::Bool(false)),
                        ],
                    ));
                }
                msg.method_return()
            }
        },
        (CHAR1, m @ ("ReadValue" | "WriteValue" | "StartNotify" | "StopNotify")) => {
            let written: Option<Vec<u8>> = if m == "WriteValue" {
                msg.read1::<Vec<u8>>().ok()
            } else {
                None
            };
            match st.char_at(&path) {
                None => error(
                    msg,
                    "org.freedesktop.DBus.Error.UnknownObject",
                    "no such characteristic",
                ),
                Some((d, _, _)) if !d.connected => {
                    error(msg, "org.bluez.Error.Failed", "Not connected")
                }
                Some((d, si, ci)) => {
                    let c = &mut d.services[si].chars[ci];
                    let has = |f: &str| c.flags.contains(&f);
                    match m {
                        "ReadValue" if has("read") => msg.method_return().append1(c.value.clone()),
                        "WriteValue" if has("write") || has("write-without-response") => {
                            let v = written.unwrap_or_default();
                            c.value = v.clone();
                            let uuid = c.uuid.clone();
                            st.writes.push((uuid, v));
                            msg.method_return()
                        }
                        "StartNotify" if has("notify") || has("indicate") => {
                            if !c.notifying {
                                c.notifying = true;
                                signals.push(props_changed(
                                    &path,
                                    CHAR1,
                                    &[("Notifying", Prop::Bool(true))],
                                ));
                            }
                            msg.method_return()
                        }
                        "StopNotify" => {
                            if c.notifying {
                                c.notifying = false;
                                signals.push(props_changed(
                                    &path,
                                    CHAR1,
                                    &[("Notifying", Prop::Bool(false))],
                                ));
                                msg.method_return()
                            } else {
                                error(msg, "org.bluez.Error.Failed", "No notify session started")
                            }
                        }
                        _ => error(
                            msg,
                            "org.bluez.Error.NotPermitted",
                            "Operation not permitted",
                        ),
                    }
                }
            }
        }
        _ => error(
            msg,
            "org.freedesktop.DBus.Error.UnknownMethod",
            &format!("unknown method {iface}.{member} on {path}"),
        ),
    };
    (reply, signals)
}
