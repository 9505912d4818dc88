//! The driver interface of fieldgate: typed raw values, readings, write requests
//! and errors, plus one module per field-bus protocol.
//!
//! A driver knows its protocol and nothing else: it polls (or subscribes),
//! decodes raw data into [`Value`]s of the property's [`DataType`], and encodes
//! writes. Scaling, enums, deadbands, topics and payloads belong to the gateway.

#[cfg(feature = "ble")]
pub mod ble;
pub mod dummy;
#[cfg(feature = "modbus")]
pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;
pub mod resolve;
pub mod value;

use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub use value::{DataType, Value};

/// Why a read or write of one property (or a whole device) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    /// Coarse class of the failure, used as the `kind` metric label.
    pub kind: ErrorKind,
    /// Human-readable reason, published in the state's `errors` map.
    pub message: String,
}

impl DriverError {
    /// Builds an error of `kind` with a readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A request that got no answer within `after`.
    pub fn timeout(after: Duration) -> Self {
        Self::new(
            ErrorKind::Timeout,
            format!("timeout after {}", humantime::format_duration(after)),
        )
    }
}

/// Coarse classes of driver failures (metric label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No answer in time.
    Timeout,
    /// The device answered with a protocol exception / bad status.
    Exception,
    /// Connection refused, lost, or other I/O failure.
    Io,
    /// Data arrived but could not be decoded as the configured type.
    Decode,
    /// The device (or one of its points) could not be found.
    NotFound,
    /// The request was refused before reaching the device (e.g. not writable).
    Rejected,
    /// The driver or transport is not available in this build or on this host.
    Unsupported,
}

impl ErrorKind {
    /// Every kind, in declaration order (`kind as usize` indexes it).
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Timeout,
        ErrorKind::Exception,
        ErrorKind::Io,
        ErrorKind::Decode,
        ErrorKind::NotFound,
        ErrorKind::Rejected,
        ErrorKind::Unsupported,
    ];

    /// The metric label for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Exception => "exception",
            ErrorKind::Io => "io",
            ErrorKind::Decode => "decode",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

/// Why a set of readings was taken: decides whether an on-change publisher
/// must publish regardless of deadbands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCause {
    /// A scheduled poll (or subscription data change).
    Poll,
    /// An explicit `$get` or the read-back after a `$set`: always published.
    Forced,
}

/// One snapshot of some (usually all) properties of a device, in the order
/// and by the index of [`DeviceSpec::properties`].
#[derive(Debug, Clone)]
pub struct Readings {
    /// When the values were read.
    pub at: SystemTime,
    /// Why they were read.
    pub cause: ReadCause,
    /// `(property index, value or error)`. A subscription driver may send only
    /// the properties that changed.
    pub values: Vec<(usize, Result<Value, DriverError>)>,
    /// How long the poll took (for the poll-duration histogram), if it was one.
    pub duration: Option<Duration>,
}

/// What a running device reports to the gateway.
#[derive(Debug, Clone)]
pub enum DeviceEvent {
    /// New values (or per-property errors).
    Readings(Readings),
    /// The driver can talk to the device.
    Online,
    /// The driver cannot talk to the device at all; the reason says why.
    Offline(DriverError),
}

/// The result of a validated write request.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// How many of the requested writes (from the front) were applied.
    pub applied: usize,
    /// The write the device refused, by its index in the request, and why.
    /// Writes after it were not attempted.
    pub failed: Option<(usize, DriverError)>,
}

/// A request from the gateway to a running device.
#[derive(Debug)]
pub enum DeviceCommand {
    /// Read everything now and report it with [`ReadCause::Forced`].
    ReadNow,
    /// Write these `(property index, raw value)` pairs in order, stopping at
    /// the first failure, then read back (reported with [`ReadCause::Forced`]).
    /// Values already have the property's [`DataType`].
    Write {
        /// The writes, in the order they must reach the device.
        writes: Vec<(usize, Value)>,
        /// Where the outcome goes once the writes are done.
        reply: oneshot::Sender<WriteOutcome>,
    },
}

/// A property as a driver sees it: its raw type and protocol address.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertySpec {
    /// Property name (unique within the device).
    pub name: std::sync::Arc<str>,
    /// Raw type on the device.
    pub data_type: DataType,
    /// Whether writes are allowed.
    pub writable: bool,
    /// Protocol-specific addressing.
    pub address: PropertyAddress,
}

/// Where a property lives, per protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyAddress {
    /// A simulated value (dummy driver).
    Simulated(dummy::Generator),
    /// A Modbus register, coil or bit.
    #[cfg(feature = "modbus")]
    Modbus(modbus::RegisterAddress),
    /// A GATT characteristic of a BLE peripheral.
    #[cfg(feature = "ble")]
    Ble(ble::CharacteristicAddress),
    /// A field of a BLE advertisement (or the device's `$advertisement` slot).
    #[cfg(feature = "ble")]
    BleAdvert(ble::adverts::AdvertAddress),
    /// An OPC-UA node.
    #[cfg(feature = "opcua")]
    OpcUa(opcua::NodeAddress),
}

/// How to reach the device, per protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    /// The built-in simulator.
    Dummy,
    /// A Modbus unit on a TCP endpoint or serial line.
    #[cfg(feature = "modbus")]
    Modbus(modbus::ModbusConnection),
    /// A BLE peripheral on a BlueZ adapter.
    #[cfg(feature = "ble")]
    Ble(ble::BleConnection),
    /// A BLE device read passively from its advertisements.
    #[cfg(feature = "ble")]
    BleAdvert(ble::adverts::scan::AdvertConnection),
    /// An OPC-UA server endpoint (one session per device).
    #[cfg(feature = "opcua")]
    OpcUa(opcua::OpcUaConnection),
}

/// Everything a driver needs to run one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// Device name (for logs).
    pub name: String,
    /// Poll period (subscriptions: publishing interval).
    pub sync_interval: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How to reach the device.
    pub connection: Connection,
    /// The device's properties, indexed by position (shared: the gateway
    /// keeps the spec a driver runs, to compare it on reload).
    pub properties: std::sync::Arc<[PropertySpec]>,
}

/// The device's side of its event channel is gone (the device stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the device stopped")]
pub struct DeviceGone;

/// Where a driver sends its device's events. A gateway runs one such
/// channel per device, so it is a flume channel (under 200 bytes empty,
/// against over 800 for tokio's, whose state is cache-padded and whose
/// slots come 32 at a time), and events travel boxed: a queue that once
/// filled keeps its buffer.
#[derive(Debug, Clone)]
pub struct EventSender(flume::Sender<Box<DeviceEvent>>);

impl EventSender {
    /// Sends `event`, waiting while the channel is full.
    pub async fn send(&self, event: DeviceEvent) -> Result<(), DeviceGone> {
        self.0
            .send_async(Box::new(event))
            .await
            .map_err(|_| DeviceGone)
    }
}

/// The gateway's end of a device's event channel.
#[derive(Debug)]
pub struct EventReceiver(flume::Receiver<Box<DeviceEvent>>);

impl EventReceiver {
    /// The next event; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<DeviceEvent> {
        self.0.recv_async().await.ok().map(|event| *event)
    }
}

/// A device's event channel holding up to `capacity` events.
pub fn event_channel(capacity: usize) -> (EventSender, EventReceiver) {
    let (tx, rx) = flume::bounded(capacity);
    (EventSender(tx), EventReceiver(rx))
}

/// The gateway's end of a device's command channel.
#[derive(Debug, Clone)]
pub struct CommandSender(flume::Sender<Box<DeviceCommand>>);

impl CommandSender {
    /// Sends `command`, waiting while the channel is full.
    pub async fn send(&self, command: DeviceCommand) -> Result<(), DeviceGone> {
        self.0
            .send_async(Box::new(command))
            .await
            .map_err(|_| DeviceGone)
    }

    /// Sends `command` if there is room now; gives it back otherwise.
    pub fn try_send(&self, command: DeviceCommand) -> Result<(), DeviceCommand> {
        self.0.try_send(Box::new(command)).map_err(|e| match e {
            flume::TrySendError::Full(c) | flume::TrySendError::Disconnected(c) => *c,
        })
    }
}

/// Where a driver receives its device's commands. Commands travel boxed, for
/// the same reason as events. A stream rather than a receiver: a driver
/// waits for commands in every round of its loop, and the stream keeps its
/// registration between rounds instead of making a new one each time.
#[derive(Debug)]
pub struct CommandReceiver(flume::r#async::RecvStream<'static, Box<DeviceCommand>>);

impl CommandReceiver {
    /// The next command; `None` once the gateway's sender is gone.
    pub async fn recv(&mut self) -> Option<DeviceCommand> {
        futures_util::StreamExt::next(&mut self.0)
            .await
            .map(|command| *command)
    }
}

/// A device's command channel holding up to `capacity` commands.
pub fn command_channel(capacity: usize) -> (CommandSender, CommandReceiver) {
    let (tx, rx) = flume::bounded(capacity);
    (CommandSender(tx), CommandReceiver(rx.into_stream()))
}

/// The channels and lifetime of one running device.
pub struct DeviceLink {
    /// Where the driver sends readings and connectivity changes.
    pub events: EventSender,
    /// Where the gateway's commands arrive, in order.
    pub commands: CommandReceiver,
    /// Cancelled when the device must stop.
    pub cancel: CancellationToken,
}

/// Shared per-process driver state: buses that several devices share
/// (one Modbus TCP endpoint or serial line, one BLE adapter, ...).
#[derive(Default, Clone)]
pub struct Buses {
    #[cfg(feature = "modbus")]
    modbus: modbus::BusRegistry,
    #[cfg(feature = "ble")]
    ble: ble::AdapterRegistry,
}

#[cfg(feature = "ble")]
impl Buses {
    /// The BLE adapters (for `fieldgate discover ble`).
    pub fn ble(&self) -> &ble::AdapterRegistry {
        &self.ble
    }
}

impl Buses {
    /// Creates an empty registry; buses open on demand and close when their
    /// last device stops.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A device's driver at work, boxed: see [`run_device`].
pub type DriverFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// The driver of one device, to be polled until `link.cancel` fires. It never
/// ends early on device errors: those are reported as events and retried
/// with backoff.
///
/// The future is boxed: inline, every device's task would be as large as
/// the largest driver's future (OPC-UA's is kilobytes), whichever driver the
/// device uses.
pub fn run_device(spec: DeviceSpec, link: DeviceLink, buses: &Buses) -> DriverFuture<'_> {
    #[cfg(not(any(feature = "modbus", feature = "ble")))]
    let _ = buses;
    match spec.connection {
        Connection::Dummy => Box::pin(dummy::run(spec, link)),
        #[cfg(feature = "modbus")]
        Connection::Modbus(_) => buses.modbus.run_device(spec, link),
        #[cfg(feature = "ble")]
        Connection::Ble(_) => Box::pin(buses.ble.run_device(spec, link)),
        #[cfg(feature = "ble")]
        Connection::BleAdvert(_) => Box::pin(buses.ble.run_advert_device(spec, link)),
        #[cfg(feature = "opcua")]
        Connection::OpcUa(_) => Box::pin(opcua::run(spec, link)),
    }
}

/// Names of the drivers compiled into this build (for `--version` and metrics).
pub fn enabled_drivers() -> Vec<&'static str> {
    let mut v = vec!["dummy"];
    if cfg!(feature = "modbus") {
        v.push("modbus");
    }
    if cfg!(feature = "ble") {
        v.push("ble");
    }
    if cfg!(feature = "opcua") {
        v.push("opcua");
    }
    v
}

/// Exponential backoff with full jitter, for reconnects and retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial` and doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The next delay: a random duration in `[ceiling/2, ceiling]`, where the
    /// ceiling doubles with each attempt up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter_ns = rand::random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    /// Forgets past failures after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let bounds = [
            (500, 1000),
            (1000, 2000),
            (2000, 4000),
            (4000, 8000),
            (4000, 8000),
        ];
        for (lo, hi) in bounds {
            let d = b.next_delay().as_millis() as u64;
            assert!((lo..=hi).contains(&d), "{d} not in {lo}..={hi}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
