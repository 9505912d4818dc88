//! One BlueZ session and one discovery per adapter, shared by the devices on
//! it, and the per-device connection loop.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use btleplug::api::{
    BDAddr, Central as _, CentralEvent, CharPropFlags, Characteristic, Manager as _,
    Peripheral as _, ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::{Stream, StreamExt};
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use super::codec::{decode, encode, splice};
use super::{describe_uuid, Access, BleConnection, CharacteristicAddress, Target};
use crate::{
    Backoff, Connection, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError,
    ErrorKind, PropertyAddress, ReadCause, Readings, Value, WriteOutcome,
};

/// First reconnect delay; doubles (with jitter) up to [`RECONNECT_MAX`].
const RECONNECT_INITIAL: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Longest wait for the D-Bus system bus connection and the adapter list.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a connection and service discovery (BlueZ resolves
/// services after connecting).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the known peripherals are checked again while scanning (names
/// can arrive after the discovery event).
const RESCAN_EVERY: Duration = Duration::from_secs(1);

type EventStream = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;
type NotificationStream = Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;

fn io(m: impl Into<String>) -> DriverError {
    DriverError::new(ErrorKind::Io, m)
}

/// The adapters in use, keyed by configured adapter name (`None` = first).
#[derive(Default, Clone)]
pub struct AdapterRegistry {
    adapters: Arc<Mutex<HashMap<Option<String>, Weak<SharedAdapter>>>>,
    /// The passive scans of advertising devices.
    adverts: super::adverts::scan::AdvertHub,
}

impl AdapterRegistry {
    /// The shared adapter for `name`, opened on first use; it closes when its
    /// last device stops.
    fn attach(&self, name: &Option<String>) -> Arc<SharedAdapter> {
        let mut map = match self.adapters.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(a) = map.get(name).and_then(Weak::upgrade) {
            return a;
        }
        let a = Arc::new(SharedAdapter {
            configured: name.clone(),
            open: tokio::sync::Mutex::new(None),
            scanners: Mutex::new(0),
        });
        map.insert(name.clone(), Arc::downgrade(&a));
        a
    }

    /// Runs one advertising BLE device until `link.cancel` fires.
    pub async fn run_advert_device(&self, spec: DeviceSpec, link: DeviceLink) {
        let Connection::BleAdvert(conn) = spec.connection.clone() else {
            return;
        };
        super::adverts::scan::run_device(&self.adverts, spec, link, conn).await;
    }

    /// The passive scans shared by advertising devices (and `discover ble`).
    pub fn adverts(&self) -> &super::adverts::scan::AdvertHub {
        &self.adverts
    }

    /// Runs one BLE device until `link.cancel` fires.
    pub async fn run_device(&self, spec: DeviceSpec, mut link: DeviceLink) {
        let Connection::Ble(conn) = spec.connection.clone() else {
            return;
        };
        let shared = self.attach(&conn.adapter);
        let cancel = link.cancel.clone();
        let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
        let mut last_error = String::new();
        loop {
            let ended = tokio::select! {
                _ = cancel.cancelled() => return,
                e = run_session(&shared, &spec, &conn, &mut link, &mut backoff) => e,
            };
            if ended.message != last_error {
                warn!(device = %spec.name, "ble: {}", ended.message);
                last_error = ended.message.clone();
            }
            if link.events.send(DeviceEvent::Offline(ended)).await.is_err() {
                return;
            }
            let wait = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = &mut wait => break,
                    cmd = link.commands.recv() => match cmd {
                        Some(cmd) => reject(cmd, "device is offline"),
                        None => return,
                    },
                }
            }
        }
    }
}

/// Answers a command that cannot be carried out now.
fn reject(cmd: DeviceCommand, why: &str) {
    if let DeviceCommand::Write { reply, .. } = cmd {
        let _ = reply.send(WriteOutcome {
            applied: 0,
            failed: Some((0, io(why))),
        });
    }
}

/// An opened adapter: the BlueZ session lives inside.
#[derive(Clone)]
struct Opened {
    adapter: Adapter,
    /// Its BlueZ name, e.g. `hci0`.
    name: String,
}

/// One adapter shared by its devices: the session and the discovery.
struct SharedAdapter {
    configured: Option<String>,
    open: tokio::sync::Mutex<Option<Opened>>,
    /// Devices currently scanning; discovery runs while this is above 0.
    scanners: Mutex<usize>,
}

impl SharedAdapter {
    /// The opened adapter, connecting to BlueZ on the system bus if needed.
    async fn get(&self) -> Result<Opened, DriverError> {
        let mut slot = self.open.lock().await;
        if let Some(o) = slot.as_ref() {
            return Ok(o.clone());
        }
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.open_adapter())
            .await
            .map_err(|_| {
                DriverError::timeout(OPEN_TIMEOUT)
                    .with_context("opening BlueZ on the D-Bus system bus")
            })??;
        info!(adapter = %opened.name, "ble: adapter opened");
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// Forgets the session so that the next device reopens it (adapter loss,
    /// BlueZ restart).
    async fn reset(&self) {
        *self.open.lock().await = None;
    }

    async fn open_adapter(&self) -> Result<Opened, DriverError> {
        // Connecting to the system bus blocks inside libdbus: keep it off the
        // async workers.
        let handle = tokio::runtime::Handle::current();
        let manager = tokio::task::spawn_blocking(move || handle.block_on(Manager::new()))
            .await
            .map_err(|e| io(format!("BlueZ session task failed: {e}")))?
            .map_err(|e| {
                DriverError::new(
                    ErrorKind::Unsupported,
                    format!("cannot reach BlueZ: D-Bus system bus unavailable ({e})"),
                )
            })?;
        let adapters = manager
            .adapters()
            .await
            .map_err(|e| io(format!("cannot list Bluetooth adapters: {e}")))?;
        let mut names = Vec::new();
        for adapter in adapters {
            let info = adapter
                .adapter_info()
                .await
                .map_err(|e| io(format!("cannot read adapter info: {e}")))?;
            let name = info
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if self.configured.as_ref().is_none_or(|c| *c == name) {
                return Ok(Opened { adapter, name });
            }
            names.push(name);
        }
        Err(DriverError::new(
            ErrorKind::NotFound,
            match &self.configured {
                Some(c) if names.is_empty() => {
                    format!("Bluetooth adapter {c} not found (BlueZ lists no adapters)")
                }
                Some(c) => format!(
                    "Bluetooth adapter {c} not found (BlueZ lists {})",
                    names.join(", ")
                ),
                None => "no Bluetooth adapter (BlueZ lists none)".into(),
            },
        ))
    }

    /// Starts discovery unless another device already runs it.
    async fn start_scan(self: &Arc<Self>, opened: &Opened) -> Result<ScanGuard, DriverError> {
        let first = {
            let mut n = lock(&self.scanners);
            *n += 1;
            *n == 1
        };
        let guard = ScanGuard {
            shared: self.clone(),
            adapter: opened.adapter.clone(),
        };
        if first {
            if let Err(e) = opened.adapter.start_scan(ScanFilter::default()).await {
                // The adapter may be gone: list the adapters again next time.
                self.reset().await;
                return Err(io(format!(
                    "cannot start discovery on {}: {e}",
                    opened.name
                )));
            }
        }
        Ok(guard)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A device's share of the adapter's discovery; the last one out stops it.
struct ScanGuard {
    shared: Arc<SharedAdapter>,
    adapter: Adapter,
}

impl Drop for ScanGuard {
    fn drop(&mut self) {
        let last = {
            let mut n = lock(&self.shared.scanners);
            *n = n.saturating_sub(1);
            *n == 0
        };
        if last {
            let adapter = self.adapter.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tokio::time::timeout(OPEN_TIMEOUT, adapter.stop_scan()).await;
                });
            }
        }
    }
}

/// Disconnects the peripheral when a session ends for any reason.
struct ConnectedGuard {
    peripheral: Peripheral,
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        let p = self.peripheral.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(OPEN_TIMEOUT, p.disconnect()).await;
            });
        }
    }
}

impl DriverError {
    fn with_context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// A property resolved to a characteristic of the connected peripheral.
struct Bound {
    index: usize,
    address: CharacteristicAddress,
    characteristic: Characteristic,
}

/// One connection: find, connect, resolve, then poll/notify/write until the
/// connection is lost. Returns why it ended.
async fn run_session(
    shared: &Arc<SharedAdapter>,
    spec: &DeviceSpec,
    conn: &BleConnection,
    link: &mut DeviceLink,
    backoff: &mut Backoff,
) -> DriverError {
    let setup = connect(shared, spec, conn);
    tokio::pin!(setup);
    let (session, opened) = loop {
        tokio::select! {
            r = &mut setup => match r {
                Ok(s) => break s,
                Err(e) => return e,
            },
            cmd = link.commands.recv() => match cmd {
                Some(cmd) => reject(cmd, "device is not connected yet"),
                None => return io("device stopped"),
            },
        }
    };
    let Session {
        peripheral,
        bound,
        mut errors,
        mut notifications,
        mut events,
        _guard,
    } = session;
    if link.events.send(DeviceEvent::Online).await.is_err() {
        return io("device stopped");
    }
    backoff.reset();
    info!(device = %spec.name, adapter = %opened.name, peripheral = %peripheral.address(), "ble: connected");
    let ctx = Ctx {
        spec,
        peripheral: &peripheral,
        bound: &bound,
    };
    if let Err(e) = ctx.read(link, ReadCause::Poll, true, &mut errors).await {
        return e;
    }
    let mut ticker = tokio::time::interval(spec.sync_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let id = peripheral.id();
    let polled = bound.iter().any(|b| b.address.access.polled());
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if polled {
                    if let Err(e) = ctx.read(link, ReadCause::Poll, false, &mut errors).await {
                        return e;
                    }
                } else if !ctx.still_connected().await {
                    // Notify-only devices: a cheap BlueZ property check
                    // notices a link that vanished without a signal
                    // (adapter removed).
                    return io("disconnected");
                }
            }
            n = notifications.next() => match n {
                Some(n) => {
                    if ctx.notified(link, n).await.is_err() {
                        return io("device stopped");
                    }
                }
                None => {
                    shared.reset().await;
                    return io(format!("lost the BlueZ connection on {}", opened.name));
                }
            },
            ev = events.next() => match ev {
                Some(CentralEvent::DeviceDisconnected(gone)) if gone == id => {
                    return io("disconnected");
                }
                Some(CentralEvent::StateUpdate(state)) => {
                    debug!(device = %spec.name, "ble: adapter state {state:?}");
                    if matches!(state, btleplug::api::CentralState::PoweredOff) {
                        return io(format!("adapter {} powered off", opened.name));
                    }
                }
                Some(_) => {}
                None => {
                    shared.reset().await;
                    return io(format!("lost the BlueZ connection on {}", opened.name));
                }
            },
            cmd = link.commands.recv() => match cmd {
                None => return io("device stopped"),
                Some(DeviceCommand::ReadNow) => {
                    if let Err(e) = ctx.read(link, ReadCause::Forced, true, &mut errors).await {
                        return e;
                    }
                }
                Some(DeviceCommand::Write { writes, reply }) => {
                    if let Err(e) = ctx.write(writes, reply).await {
                        return e;
                    }
                    if let Err(e) = ctx.read(link, ReadCause::Forced, true, &mut errors).await {
                        return e;
                    }
                }
            },
        }
    }
}

/// What a successful connect hands to the session loop.
struct Session {
    peripheral: Peripheral,
    bound: Vec<Bound>,
    /// Properties that could not be resolved, reported on every read.
    errors: Vec<(usize, DriverError)>,
    notifications: NotificationStream,
    events: EventStream,
    _guard: ConnectedGuard,
}

/// Opens the adapter, finds the peripheral, connects and subscribes.
async fn connect(
    shared: &Arc<SharedAdapter>,
    spec: &DeviceSpec,
    conn: &BleConnection,
) -> Result<(Session, Opened), DriverError> {
    let opened = shared.get().await?;
    let adapter = &opened.adapter;
    // Subscribe before looking, so no discovery is missed; a failure here
    // means the session is gone (BlueZ restarted, adapter removed).
    let events = match adapter.events().await {
        Ok(e) => e,
        Err(e) => {
            shared.reset().await;
            return Err(io(format!(
                "adapter {} unavailable ({e}); will reopen",
                opened.name
            )));
        }
    };
    let peripheral = find(shared, &opened, conn, events).await?;
    let events = adapter
        .events()
        .await
        .map_err(|e| io(format!("adapter {} unavailable: {e}", opened.name)))?;
    let guard = ConnectedGuard {
        peripheral: peripheral.clone(),
    };
    let connected = async {
        if !peripheral.is_connected().await.unwrap_or(false) {
            peripheral.connect().await?;
        }
        peripheral.discover_services().await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connected).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(io(format!("connect failed: {e}"))),
        Err(_) => return Err(DriverError::timeout(CONNECT_TIMEOUT).with_context("connect")),
    }
    let characteristics: Vec<Characteristic> = peripheral.characteristics().into_iter().collect();
    let mut bound = Vec::new();
    let mut errors = Vec::new();
    for (index, p) in spec.properties.iter().enumerate() {
        let PropertyAddress::Ble(a) = &p.address else {
            continue;
        };
        match resolve(a, &characteristics) {
            Ok(c) => bound.push(Bound {
                index,
                address: a.clone(),
                characteristic: c.clone(),
            }),
            Err(e) => errors.push((index, e)),
        }
    }
    let notifications = peripheral
        .notifications()
        .await
        .map_err(|e| io(format!("cannot listen for notifications: {e}")))?;
    let mut subscribed: Vec<&Characteristic> = Vec::new();
    for b in bound.iter().filter(|b| b.address.access == Access::Notify) {
        if subscribed.contains(&&b.characteristic) {
            continue;
        }
        match tokio::time::timeout(spec.timeout, peripheral.subscribe(&b.characteristic)).await {
            Ok(Ok(())) => subscribed.push(&b.characteristic),
            Ok(Err(e)) => errors.push((
                b.index,
                DriverError::new(ErrorKind::Exception, format!("subscribe failed: {e}")),
            )),
            Err(_) => errors.push((b.index, DriverError::timeout(spec.timeout))),
        }
    }
    let failed: Vec<usize> = errors.iter().map(|(i, _)| *i).collect();
    bound.retain(|b| !failed.contains(&b.index));
    Ok((
        Session {
            peripheral,
            bound,
            errors,
            notifications,
            events,
            _guard: guard,
        },
        opened,
    ))
}

/// Scans until the peripheral shows up or the scan timeout passes.
async fn find(
    shared: &Arc<SharedAdapter>,
    opened: &Opened,
    conn: &BleConnection,
    mut events: EventStream,
) -> Result<Peripheral, DriverError> {
    let adapter = &opened.adapter;
    let wanted_address = match &conn.target {
        Target::Address(a) => a.parse::<BDAddr>().ok(),
        Target::Name(_) => None,
    };
    let matches = |p: Peripheral| async move {
        match &conn.target {
            Target::Address(_) => (Some(p.address()) == wanted_address).then_some(p),
            Target::Name(n) => {
                let props = p.properties().await.ok().flatten()?;
                let named = props.local_name.as_deref() == Some(n.as_str())
                    || props.advertisement_name.as_deref() == Some(n.as_str());
                named.then_some(p)
            }
        }
    };
    let _scan = shared.start_scan(opened).await?;
    let deadline = tokio::time::Instant::now() + conn.scan_timeout;
    let started = Instant::now();
    let mut recheck = tokio::time::interval(RESCAN_EVERY);
    loop {
        let candidate: Option<PeripheralId> = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ev = events.next() => match ev {
                Some(CentralEvent::DeviceDiscovered(id))
                | Some(CentralEvent::DeviceUpdated(id))
                | Some(CentralEvent::ServicesAdvertisement { id, .. }) => Some(id),
                Some(_) => None,
                None => {
                    shared.reset().await;
                    return Err(io(format!("lost the BlueZ connection on {}", opened.name)));
                }
            },
            _ = recheck.tick() => {
                if let Ok(all) = adapter.peripherals().await {
                    for p in all {
                        if let Some(p) = matches(p).await {
                            return Ok(p);
                        }
                    }
                }
                None
            }
        };
        if let Some(id) = candidate {
            if let Ok(p) = adapter.peripheral(&id).await {
                if let Some(p) = matches(p).await {
                    debug!(target = %conn.target, after = ?started.elapsed(), "ble: found");
                    return Ok(p);
                }
            }
        }
    }
    Err(DriverError::new(
        ErrorKind::NotFound,
        format!(
            "{} not found after {} scan on {}",
            conn.target,
            humantime::format_duration(conn.scan_timeout),
            opened.name
        ),
    ))
}

/// Picks the characteristic of a property: by UUID, within its service if
/// one is given; a UUID offered by several services needs `service`.
fn resolve<'a>(
    a: &CharacteristicAddress,
    all: &'a [Characteristic],
) -> Result<&'a Characteristic, DriverError> {
    let found: Vec<&Characteristic> = all
        .iter()
        .filter(|c| c.uuid == a.characteristic && a.service.is_none_or(|s| s == c.service_uuid))
        .collect();
    let not_found = |m: String| DriverError::new(ErrorKind::NotFound, m);
    let c = match found.as_slice() {
        [] => {
            return Err(not_found(match a.service {
                Some(s) => format!(
                    "characteristic {} not found in service {}",
                    describe_uuid(&a.characteristic),
                    describe_uuid(&s)
                ),
                None => format!(
                    "characteristic {} not found",
                    describe_uuid(&a.characteristic)
                ),
            }))
        }
        [one] => *one,
        many => {
            let services: Vec<String> = many
                .iter()
                .map(|c| describe_uuid(&c.service_uuid))
                .collect();
            return Err(DriverError::new(
                ErrorKind::Rejected,
                format!(
                    "characteristic {} is in several services ({}); set `service`",
                    describe_uuid(&a.characteristic),
                    services.join(", ")
                ),
            ));
        }
    };
    let flags = c.properties;
    let missing = match a.access {
        Access::Read if !flags.contains(CharPropFlags::READ) => Some("read"),
        Access::Notify if !flags.intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE) => {
            Some("notify")
        }
        Access::Write | Access::ReadWrite
            if !flags.intersects(CharPropFlags::WRITE | CharPropFlags::WRITE_WITHOUT_RESPONSE) =>
        {
            Some("write")
        }
        Access::ReadWrite if !flags.contains(CharPropFlags::READ) => Some("read"),
        _ => None,
    };
    match missing {
        Some(op) => Err(DriverError::new(
            ErrorKind::Rejected,
            format!(
                "characteristic {} does not allow {op}",
                describe_uuid(&a.characteristic)
            ),
        )),
        None => Ok(c),
    }
}

/// The connected device as the session loop uses it.
struct Ctx<'a> {
    spec: &'a DeviceSpec,
    peripheral: &'a Peripheral,
    bound: &'a [Bound],
}

impl Ctx<'_> {
    /// Reads the polled properties (and, when `all`, the readable notify
    /// ones) once per characteristic and reports them. Errs when the
    /// connection is gone.
    async fn read(
        &self,
        link: &DeviceLink,
        cause: ReadCause,
        all: bool,
        errors: &mut [(usize, DriverError)],
    ) -> Result<(), DriverError> {
        let started = Instant::now();
        let mut values: Vec<(usize, Result<Value, DriverError>)> = Vec::new();
        let mut cache: Vec<(&Characteristic, Result<Vec<u8>, DriverError>)> = Vec::new();
        for b in self.bound {
            let wanted = b.address.access.polled()
                || (all
                    && b.address.access == Access::Notify
                    && b.characteristic.properties.contains(CharPropFlags::READ));
            if !wanted {
                continue;
            }
            let bytes = match cache.iter().find(|(c, _)| *c == &b.characteristic) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = self.read_bytes(&b.characteristic).await;
                    cache.push((&b.characteristic, r.clone()));
                    r
                }
            };
            let value = bytes.and_then(|bytes| {
                decode(
                    &bytes,
                    self.data_type(b.index),
                    b.address.byte_order,
                    b.address.byte_offset,
                )
            });
            values.push((b.index, value));
        }
        let failures = cache.iter().filter(|(_, r)| r.is_err()).count();
        if failures > 0 && !self.still_connected().await {
            return Err(io("disconnected"));
        }
        values.extend(errors.iter().map(|(i, e)| (*i, Err(e.clone()))));
        if values.is_empty() {
            return Ok(());
        }
        values.sort_by_key(|(i, _)| *i);
        let readings = Readings {
            at: SystemTime::now(),
            cause,
            values,
            duration: Some(started.elapsed()),
        };
        link.events
            .send(DeviceEvent::Readings(readings))
            .await
            .map_err(|_| io("device stopped"))
    }

    async fn read_bytes(&self, c: &Characteristic) -> Result<Vec<u8>, DriverError> {
        match tokio::time::timeout(self.spec.timeout, self.peripheral.read(c)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(DriverError::new(
                ErrorKind::Exception,
                format!("read failed: {e}"),
            )),
            Err(_) => Err(DriverError::timeout(self.spec.timeout)),
        }
    }

    async fn still_connected(&self) -> bool {
        matches!(
            tokio::time::timeout(self.spec.timeout, self.peripheral.is_connected()).await,
            Ok(Ok(true))
        )
    }

    fn data_type(&self, index: usize) -> crate::DataType {
        self.spec
            .properties
            .get(index)
            .map(|p| p.data_type)
            .unwrap_or(crate::DataType::Bytes)
    }

    /// Reports the properties bound to a notifying characteristic.
    async fn notified(&self, link: &DeviceLink, n: ValueNotification) -> Result<(), ()> {
        let values: Vec<(usize, Result<Value, DriverError>)> = self
            .bound
            .iter()
            .filter(|b| {
                b.address.access == Access::Notify
                    && b.characteristic.uuid == n.uuid
                    && b.characteristic.service_uuid == n.service_uuid
            })
            .map(|b| {
                (
                    b.index,
                    decode(
                        &n.value,
                        self.data_type(b.index),
                        b.address.byte_order,
                        b.address.byte_offset,
                    ),
                )
            })
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        let readings = Readings {
            at: SystemTime::now(),
            cause: ReadCause::Poll,
            values,
            duration: None,
        };
        link.events
            .send(DeviceEvent::Readings(readings))
            .await
            .map_err(drop)
    }

    /// Applies writes in order, stopping at the first failure. Errs when the
    /// connection is gone (after replying).
    async fn write(
        &self,
        writes: Vec<(usize, Value)>,
        reply: oneshot::Sender<WriteOutcome>,
    ) -> Result<(), DriverError> {
        let mut outcome = WriteOutcome::default();
        for (n, (index, value)) in writes.into_iter().enumerate() {
            match self.write_one(index, &value).await {
                Ok(()) => outcome.applied += 1,
                Err(e) => {
                    outcome.failed = Some((n, e));
                    break;
                }
            }
        }
        let failed_io = matches!(&outcome.failed, Some((_, e)) if e.kind != ErrorKind::Rejected && e.kind != ErrorKind::NotFound);
        let _ = reply.send(outcome);
        if failed_io && !self.still_connected().await {
            return Err(io("disconnected"));
        }
        Ok(())
    }

    async fn write_one(&self, index: usize, value: &Value) -> Result<(), DriverError> {
        let rejected = |m: &str| DriverError::new(ErrorKind::Rejected, m);
        let p = self
            .spec
            .properties
            .get(index)
            .ok_or_else(|| DriverError::new(ErrorKind::NotFound, "no such property"))?;
        if !p.writable {
            return Err(rejected("property is not writable"));
        }
        let Some(b) = self.bound.iter().find(|b| b.index == index) else {
            return Err(DriverError::new(
                ErrorKind::NotFound,
                "characteristic not resolved on the device",
            ));
        };
        if !b.address.access.writable() {
            return Err(rejected("property access is not write or readWrite"));
        }
        let encoded = encode(value, p.data_type, b.address.byte_order)?;
        let bytes = if b.address.byte_offset == 0 {
            encoded
        } else if b.characteristic.properties.contains(CharPropFlags::READ) {
            let current = self.read_bytes(&b.characteristic).await?;
            splice(&current, b.address.byte_offset, &encoded)
        } else {
            splice(&[], b.address.byte_offset, &encoded)
        };
        let kind = if b.characteristic.properties.contains(CharPropFlags::WRITE) {
            WriteType::WithResponse
        } else {
            WriteType::WithoutResponse
        };
        match tokio::time::timeout(
            self.spec.timeout,
            self.peripheral.write(&b.characteristic, &bytes, kind),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DriverError::new(
                ErrorKind::Exception,
                format!("write failed: {e}"),
            )),
            Err(_) => Err(DriverError::timeout(self.spec.timeout)),
        }
    }
}
