//! The passive scan shared per adapter, and the loop of one advertising
//! device.
//!
//! One BlueZ discovery per adapter (its own D-Bus session, discovery filter
//! transport LE with `DuplicateData: true`, so every advertisement arrives as
//! a `ManufacturerData`/`ServiceData` property change on `org.bluez.Device1`)
//! feeds every advertising device on that adapter through a small bounded
//! channel each. GATT devices keep their own btleplug session and discovery;
//! BlueZ merges the two clients' discovery filters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use bluez_async::{
    AdapterId, BluetoothEvent, BluetoothSession, DeviceEvent as BzDeviceEvent, DeviceId,
    DeviceInfo, DiscoveryFilter, Transport,
};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{bthome, decode, AdvertAddress, AdvertSettings, Advertisement, DecodeError};
use crate::ble::{adapters_unlisted, bluez_unreachable, io, session_task_failed, Target};
use crate::{
    Backoff, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError, ErrorKind,
    PropertyAddress, ReadCause, Readings, Value, WriteOutcome,
};

/// Advertisements waiting for one device; more are dropped (the next one
/// carries newer data anyway).
const DEVICE_QUEUE: usize = 16;
/// Most devices the scan remembers (advertisers nearby, not only ours).
const MAX_KNOWN: usize = 4096;
/// Longest wait for the D-Bus connection and the adapter list.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A BTHome packet id seen again within this time is a repeat even when it
/// looks older (ids wrap at 256).
const PACKET_ID_WINDOW: Duration = Duration::from_secs(4);

/// How an advertising device is reached: adapter, address or name, format.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdvertConnection {
    /// Adapter name (e.g. `hci0`); `None` = the first adapter BlueZ lists.
    pub adapter: Option<String>,
    /// The advertiser.
    pub target: Target,
    /// Format, bind key, staleness.
    pub settings: AdvertSettings,
}

/// The state of an adapter's scan, as devices see it.
#[derive(Debug, Clone, PartialEq)]
enum ScanStatus {
    /// Not (yet) scanning.
    Starting,
    /// Discovery runs.
    Running,
    /// The scan failed; it is retried with backoff.
    Failed(DriverError),
}

type Sender = flume::Sender<Arc<Advertisement>>;

/// Who wants which advertisements.
#[derive(Default)]
struct Subscribers {
    next_id: u64,
    by_address: HashMap<[u8; 6], Vec<(u64, Sender)>>,
    by_name: Vec<(String, u64, Sender)>,
    all: Vec<(u64, Sender)>,
}

impl Subscribers {
    fn remove(&mut self, id: u64) {
        self.by_address.retain(|_, v| {
            v.retain(|(i, _)| *i != id);
            !v.is_empty()
        });
        self.by_name.retain(|(_, i, _)| *i != id);
        self.all.retain(|(i, _)| *i != id);
    }

    fn dispatch(&self, adv: &Arc<Advertisement>) {
        let send = |tx: &Sender| {
            if tx.try_send(Arc::clone(adv)).is_err() {
                debug!("ble: advertisement queue full, one dropped");
            }
        };
        if let Some(v) = self.by_address.get(&adv.address) {
            v.iter().for_each(|(_, tx)| send(tx));
        }
        if let Some(name) = &adv.name {
            self.by_name
                .iter()
                .filter(|(n, _, _)| n == name)
                .for_each(|(_, _, tx)| send(tx));
        }
        self.all.iter().for_each(|(_, tx)| send(tx));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One adapter's passive scan: runs while anyone subscribes.
struct Scanner {
    subscribers: Mutex<Subscribers>,
    status: watch::Sender<ScanStatus>,
    stop: CancellationToken,
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The passive scans in use, keyed by configured adapter (`None` = first).
#[derive(Default, Clone)]
pub struct AdvertHub {
    scanners: Arc<Mutex<HashMap<Option<String>, Weak<Scanner>>>>,
}

/// A device's (or a discovery's) share of a scan: its advertisements and the
/// scan's status. Dropping it unsubscribes; the last one stops the scan.
pub struct Subscription {
    scanner: Arc<Scanner>,
    id: u64,
    rx: flume::Receiver<Arc<Advertisement>>,
    status: watch::Receiver<ScanStatus>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.scanner.subscribers).remove(self.id);
    }
}

impl Subscription {
    /// The next advertisement, or the scan's failure.
    async fn next(&mut self) -> Result<Arc<Advertisement>, DriverError> {
        loop {
            if let ScanStatus::Failed(e) = &*self.status.borrow_and_update() {
                return Err(e.clone());
            }
            tokio::select! {
                a = self.rx.recv_async() => {
                    return a.map_err(|_| DriverError::new(ErrorKind::Io, "scan stopped"));
                }
                changed = self.status.changed() => {
                    if changed.is_err() {
                        return Err(DriverError::new(ErrorKind::Io, "scan stopped"));
                    }
                }
            }
        }
    }
}

/// Whom a subscription is for.
pub enum Interest {
    /// One advertiser.
    Target(Target),
    /// Every advertiser (discovery).
    All,
}

impl AdvertHub {
    /// Subscribes to the advertisements of `interest` on `adapter`, starting
    /// that adapter's scan if it is not running yet.
    pub fn subscribe(&self, adapter: &Option<String>, interest: Interest) -> Subscription {
        let scanner = {
            let mut map = lock(&self.scanners);
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(adapter).and_then(Weak::upgrade) {
                Some(s) => s,
                None => {
                    let (status, _) = watch::channel(ScanStatus::Starting);
                    let s = Arc::new(Scanner {
                        subscribers: Mutex::default(),
                        status,
                        stop: CancellationToken::new(),
                    });
                    map.insert(adapter.clone(), Arc::downgrade(&s));
                    tokio::spawn(run_scanner(
                        Arc::downgrade(&s),
                        adapter.clone(),
                        s.stop.clone(),
                    ));
                    s
                }
            }
        };
        let (tx, rx) = flume::bounded(DEVICE_QUEUE);
        let id = {
            let mut subs = lock(&scanner.subscribers);
            subs.next_id += 1;
            let id = subs.next_id;
            match interest {
                Interest::Target(Target::Address(a)) => {
                    let key = parse_mac(&a).unwrap_or_default();
                    subs.by_address.entry(key).or_default().push((id, tx));
                }
                Interest::Target(Target::Name(n)) => subs.by_name.push((n, id, tx)),
                Interest::All => subs.all.push((id, tx)),
            }
            id
        };
        let status = scanner.status.subscribe();
        Subscription {
            scanner,
            id,
            rx,
            status,
        }
    }
}

/// `AA:BB:CC:DD:EE:FF` → bytes.
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Runs (and reruns, with backoff) the scan until the scanner is dropped.
async fn run_scanner(scanner: Weak<Scanner>, adapter: Option<String>, stop: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut last_error = String::new();
    loop {
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            e = scan_once(&scanner, &adapter, &mut backoff) => e,
        };
        let Some(s) = scanner.upgrade() else { return };
        if ended.message != last_error {
            warn!(
                adapter = adapter.as_deref().unwrap_or("(first)"),
                "ble: passive scan: {}", ended.message
            );
            last_error = ended.message.clone();
        }
        s.status.send_replace(ScanStatus::Failed(ended));
        drop(s);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Opens a BlueZ session, finds the adapter and starts discovery.
async fn open(
    adapter: &Option<String>,
) -> Result<
    (
        BluetoothSession,
        AdapterId,
        String,
        tokio::task::JoinHandle<()>,
    ),
    DriverError,
> {
    // Connecting to the system bus blocks inside libdbus: keep it off the
    // async workers.
    let rt = tokio::runtime::Handle::current();
    let (session, lost) = tokio::task::spawn_blocking(move || {
        rt.block_on(async {
            let (resource, session) = BluetoothSession::new().await?;
            let lost = tokio::spawn(async move {
                let _ = resource.await;
            });
            Ok::<_, bluez_async::BluetoothError>((session, lost))
        })
    })
    .await
    .map_err(session_task_failed)?
    .map_err(bluez_unreachable)?;
    let adapters = session.get_adapters().await.map_err(adapters_unlisted)?;
    let names: Vec<String> = adapters.iter().map(|a| a.id.to_string()).collect();
    let Some(found) = adapters
        .into_iter()
        .find(|a| adapter.as_ref().is_none_or(|c| *c == a.id.to_string()))
    else {
        lost.abort();
        return Err(DriverError::new(
            ErrorKind::NotFound,
            match adapter {
                Some(c) if names.is_empty() => {
                    format!("Bluetooth adapter {c} not found (BlueZ lists no adapters)")
                }
                Some(c) => format!(
                    "Bluetooth adapter {c} not found (BlueZ lists {})",
                    names.join(", ")
                ),
                None => "no Bluetooth adapter (BlueZ lists none)".into(),
            },
        ));
    };
    let name = found.id.to_string();
    Ok((session, found.id, name, lost))
}

/// One scan: open, discover, dispatch until the session fails.
async fn scan_once(
    scanner: &Weak<Scanner>,
    adapter: &Option<String>,
    backoff: &mut Backoff,
) -> DriverError {
    let (session, id, name, mut lost) =
        match tokio::time::timeout(OPEN_TIMEOUT, open(adapter)).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return e,
            Err(_) => {
                return DriverError::timeout(OPEN_TIMEOUT)
                    .with_prefix("opening BlueZ on the D-Bus system bus")
            }
        };
    let _abort = AbortOnDrop(lost.abort_handle());
    let mut events = match session.adapter_event_stream(&id).await {
        Ok(e) => e.boxed(),
        Err(e) => return io(format!("cannot listen to adapter {name}: {e}")),
    };
    let filter = DiscoveryFilter {
        transport: Some(Transport::Le),
        duplicate_data: Some(true),
        ..Default::default()
    };
    if let Err(e) = session
        .start_discovery_on_adapter_with_filter(&id, &filter)
        .await
    {
        return io(format!("cannot start discovery on {name}: {e}"));
    }
    let _stop = StopDiscovery {
        session: session.clone(),
        adapter: id.clone(),
    };
    info!(adapter = %name, "ble: passive scan started (LE, duplicate data)");
    backoff.reset();
    let mut known: HashMap<DeviceId, Arc<Advertisement>> = HashMap::new();
    if let Ok(devices) = session.get_devices_on_adapter(&id).await {
        for d in devices {
            remember(&mut known, d);
        }
    }
    match scanner.upgrade() {
        Some(s) => {
            s.status.send_replace(ScanStatus::Running);
        }
        None => return io("stopped"),
    }
    loop {
        let ev = tokio::select! {
            _ = &mut lost => return io(format!("lost the D-Bus connection (scan on {name})")),
            ev = events.next() => match ev {
                Some(ev) => ev,
                None => return io(format!("BlueZ event stream ended (scan on {name})")),
            },
        };
        let BluetoothEvent::Device { id: dev, event } = ev else {
            if let BluetoothEvent::Adapter {
                event: bluez_async::AdapterEvent::Powered { powered: false },
                ..
            } = ev
            {
                return io(format!("adapter {name} powered off"));
            }
            continue;
        };
        let updated = match event {
            BzDeviceEvent::Discovered => match session.get_device_info(&dev).await {
                Ok(info) => Some(remember(&mut known, info)),
                Err(e) => {
                    debug!("ble: device info of {dev}: {e}");
                    None
                }
            },
            BzDeviceEvent::Rssi { rssi } => {
                if let Some(a) = known.get_mut(&dev) {
                    Arc::make_mut(a).rssi = Some(rssi);
                }
                None
            }
            BzDeviceEvent::ManufacturerData { manufacturer_data } => {
                with_known(&session, &mut known, &dev, |a| {
                    a.manufacturer_data = manufacturer_data;
                })
                .await
            }
            BzDeviceEvent::ServiceData { service_data } => {
                with_known(&session, &mut known, &dev, |a| {
                    a.service_data = service_data
                })
                .await
            }
            _ => None,
        };
        if let Some(adv) = updated {
            let Some(s) = scanner.upgrade() else {
                return io("stopped");
            };
            lock(&s.subscribers).dispatch(&adv);
        }
    }
}

/// Applies `update` to the known device `dev` (looking it up first if it is
/// new) and returns its advertisement.
async fn with_known(
    session: &BluetoothSession,
    known: &mut HashMap<DeviceId, Arc<Advertisement>>,
    dev: &DeviceId,
    update: impl FnOnce(&mut Advertisement),
) -> Option<Arc<Advertisement>> {
    if !known.contains_key(dev) {
        let info = session.get_device_info(dev).await.ok()?;
        remember(known, info);
    }
    let a = known.get_mut(dev)?;
    update(Arc::make_mut(a));
    Some(Arc::clone(a))
}

/// Stores what BlueZ knows of a device; the map stays bounded.
fn remember(
    known: &mut HashMap<DeviceId, Arc<Advertisement>>,
    d: DeviceInfo,
) -> Arc<Advertisement> {
    if known.len() >= MAX_KNOWN && !known.contains_key(&d.id) {
        if let Some(k) = known.keys().next().cloned() {
            known.remove(&k);
        }
    }
    let adv = Arc::new(Advertisement {
        address: d.mac_address.into(),
        name: d.name,
        rssi: d.rssi,
        manufacturer_data: d.manufacturer_data,
        service_data: d.service_data,
    });
    known.insert(d.id, Arc::clone(&adv));
    adv
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops discovery when a scan ends.
struct StopDiscovery {
    session: BluetoothSession,
    adapter: AdapterId,
}

impl Drop for StopDiscovery {
    fn drop(&mut self) {
        let session = self.session.clone();
        let adapter = self.adapter.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ =
                    tokio::time::timeout(OPEN_TIMEOUT, session.stop_discovery_on_adapter(&adapter))
                        .await;
            });
        }
    }
}

impl DriverError {
    fn with_prefix(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// Everything nearby for `duration` (for `fieldgate discover ble`): the last
/// advertisement of each device, in order of first sight.
pub async fn observe(
    hub: &AdvertHub,
    adapter: &Option<String>,
    duration: Duration,
) -> Result<Vec<Arc<Advertisement>>, DriverError> {
    let mut sub = hub.subscribe(adapter, Interest::All);
    let deadline = tokio::time::Instant::now() + duration;
    let mut seen: Vec<Arc<Advertisement>> = Vec::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            a = sub.next() => {
                let a = a?;
                if let Some(s) = seen.iter_mut().find(|s| s.address == a.address) {
                    *s = a;
                } else if seen.len() < MAX_KNOWN {
                    seen.push(a);
                }
            }
        }
    }
    Ok(seen)
}

/// What the device loop remembers between advertisements.
struct DeviceMemory {
    online: bool,
    last_packet: Option<(u8, Instant)>,
    last_counter: Option<u32>,
    last_readings: Option<Readings>,
    last_error: String,
}

/// Runs one advertising device until `link.cancel` fires.
pub async fn run_device(
    hub: &AdvertHub,
    spec: DeviceSpec,
    mut link: DeviceLink,
    conn: AdvertConnection,
) {
    let cancel = link.cancel.clone();
    let mut sub = hub.subscribe(&conn.adapter, Interest::Target(conn.target.clone()));
    let stale_after = conn.settings.stale_after;
    let mut stale_at = tokio::time::Instant::now() + stale_after;
    let mut mem = DeviceMemory {
        online: false,
        last_packet: None,
        last_counter: None,
        last_readings: None,
        last_error: String::new(),
    };
    // Offline is reported once per silence; `None` = reported.
    let mut stale_pending = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(stale_at), if stale_pending => {
                stale_pending = false;
                mem.online = false;
                let why = DriverError::new(
                    ErrorKind::NotFound,
                    format!(
                        "no advertisement from {} for {}",
                        conn.target,
                        humantime::format_duration(stale_after)
                    ),
                );
                if link.events.send(DeviceEvent::Offline(why)).await.is_err() {
                    return;
                }
            }
            a = sub.next() => match a {
                Ok(adv) => {
                    stale_at = tokio::time::Instant::now() + stale_after;
                    stale_pending = true;
                    if on_advert(&spec, &conn, &link, &mut mem, &adv).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if mem.online || e.message != mem.last_error {
                        mem.online = false;
                        mem.last_error = e.message.clone();
                        if link.events.send(DeviceEvent::Offline(e)).await.is_err() {
                            return;
                        }
                    }
                    // The scanner retries; wait for it (or for the stop).
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = sub.status.changed() => {}
                    }
                }
            },
            cmd = link.commands.recv() => match cmd {
                None => return,
                Some(DeviceCommand::ReadNow) => {
                    if let Some(r) = &mem.last_readings {
                        let mut r = r.clone();
                        r.cause = ReadCause::Forced;
                        if link.events.send(DeviceEvent::Readings(r)).await.is_err() {
                            return;
                        }
                    }
                }
                Some(DeviceCommand::Write { reply, .. }) => {
                    let _ = reply.send(WriteOutcome {
                        applied: 0,
                        failed: Some((0, DriverError::new(
                            ErrorKind::Rejected,
                            "an advertising device is read-only",
                        ))),
                    });
                }
            },
        }
    }
}

/// Turns one advertisement into readings. Errs when the device stopped.
async fn on_advert(
    spec: &DeviceSpec,
    conn: &AdvertConnection,
    link: &DeviceLink,
    mem: &mut DeviceMemory,
    adv: &Advertisement,
) -> Result<(), ()> {
    let settings = &conn.settings;
    let decoded = match decode(settings.format, adv, settings.bind_key.as_ref()) {
        Ok(d) => Ok(Some(d)),
        Err(DecodeError::Absent(_)) if settings.format == super::Format::Raw => Ok(None),
        Err(DecodeError::Absent(_)) => return Ok(()),
        Err(DecodeError::Invalid(m)) => Err(m),
    };
    if let Ok(Some(d)) = &decoded {
        let now = Instant::now();
        if let Some(id) = d.packet_id {
            let recent = mem
                .last_packet
                .is_some_and(|(_, at)| now.duration_since(at) <= PACKET_ID_WINDOW);
            if bthome::is_repeat(mem.last_packet.map(|(p, _)| p), id, recent) {
                mem.last_packet = Some((id, now));
                return Ok(());
            }
            mem.last_packet = Some((id, now));
        }
        if let Some(c) = d.counter {
            // A smaller encryption counter is a replayed packet (a restart of
            // the sensor starts again near 0).
            if mem.last_counter.is_some_and(|l| c < l && c >= 100) || mem.last_counter == Some(c) {
                debug!(device = %spec.name, counter = c, "ble: replayed encrypted advertisement ignored");
                return Ok(());
            }
            mem.last_counter = Some(c);
        }
    }
    let mut values: Vec<(usize, Result<Value, DriverError>)> = Vec::new();
    let mut raw_hits = 0;
    for (i, p) in spec.properties.iter().enumerate() {
        let PropertyAddress::BleAdvert(a) = &p.address else {
            continue;
        };
        match (a, &decoded) {
            (AdvertAddress::Status, Ok(_)) => values.push((i, Ok(Value::String(String::new())))),
            (AdvertAddress::Status, Err(m)) => {
                values.push((i, Err(DriverError::new(ErrorKind::Decode, m.clone()))))
            }
            (AdvertAddress::Field(f), Ok(_)) if f == super::RSSI.name => {
                if let Some(r) = adv.rssi {
                    values.push((i, Ok(Value::Int(i64::from(r)))));
                }
            }
            (AdvertAddress::Field(f), Ok(Some(d))) => {
                if let Some(v) = d.get(f) {
                    values.push((i, Ok(v.clone())));
                }
            }
            (AdvertAddress::Raw(r), Ok(_)) => {
                if let Some(v) = r.read(adv, p.data_type) {
                    raw_hits += 1;
                    values.push((i, v));
                }
            }
            _ => {}
        }
    }
    if matches!(decoded, Ok(None)) && raw_hits == 0 {
        // A raw device's advertisement that carries none of its sources:
        // something else it advertises, not a reading.
        return Ok(());
    }
    if !mem.online {
        mem.online = true;
        mem.last_error.clear();
        link.events.send(DeviceEvent::Online).await.map_err(drop)?;
    }
    if let Err(m) = &decoded {
        if *m != mem.last_error {
            warn!(device = %spec.name, "ble: {m}");
            mem.last_error = m.clone();
        }
    }
    let readings = Readings {
        at: SystemTime::now(),
        cause: ReadCause::Poll,
        values,
        duration: None,
    };
    mem.last_readings = Some(readings.clone());
    link.events
        .send(DeviceEvent::Readings(readings))
        .await
        .map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("A4:C1:38:00:11:22"),
            Some([0xa4, 0xc1, 0x38, 0, 0x11, 0x22])
        );
        assert_eq!(parse_mac("A4:C1:38:00:11"), None);
        assert_eq!(parse_mac("A4:C1:38:00:11:22:33"), None);
    }
}
