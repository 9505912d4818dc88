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

mod calls;
mod daemon;
mod objects;

use calls::handle_call;
pub use daemon::DbusDaemon;
use objects::{
    interfaces_added, interfaces_removed, props_changed, Char, Dev, Prop, Service, State, ADAPTER,
    ADAPTER1, CHAR1, DEVICE1,
};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dbus::blocking::SyncConnection;
use dbus::channel::{Channel, MatchingReceiver as _, Sender as _};
use dbus::message::MatchRule;
use dbus::Message;

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
            // A short wait: signals sent from other threads (`set_value`,
            // `advertise`) leave only when this loop next runs, so a 50 ms
            // wait held a notification back for 25 ms on average (what the
            // bench's notify-latency measured before).
            while !s.load(Ordering::Relaxed) {
                if c.process(Duration::from_millis(1)).is_err() {
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
