//! The bus task (one per serial line or TCP endpoint, one transaction in
//! flight) and the per-device loop that schedules polls and writes on it.

mod device_loop;
mod response;
mod task;

use device_loop::DeviceLoop;
use task::Bus;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_modbus::ExceptionCode;
use tracing::debug;

use crate::modbus::plan::Plan;
use crate::modbus::transport::describe;
use crate::modbus::Transport;
use crate::{
    Connection, DataType, DeviceEvent, DeviceLink, DeviceSpec, DriverError, DriverFuture,
    ErrorKind, Value, WriteOutcome,
};

/// Queue depth of each bus queue; every device has at most one job queued.
const QUEUE_DEPTH: usize = 64;
/// First reconnect delay of a bus; doubles up to [`RECONNECT_MAX`].
const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
/// Longest reconnect delay of a bus.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How often (in cycles) a plan split after exceptions is merged again.
const REMERGE_EVERY: u32 = 100;
/// Transactions in a row without an answer after which a TCP connection is
/// given up and dialled again.
const MISSED_BEFORE_REDIAL: u32 = 2;
/// Transactions in a row without an answer from any unit after which a
/// serial port is closed and opened again: a USB adapter that was pulled
/// may fail only with timeouts on the old handle, and a replugged one comes
/// back as a new device node (a `/dev/serial/by-id/…` link follows it).
const MISSED_BEFORE_REOPEN: u32 = 3;
/// Longest pause of a unit that timed out on a whole cycle.
const UNIT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The readable text of a Modbus exception, e.g. `illegal data address (2)`.
pub fn describe_exception(code: ExceptionCode) -> String {
    let name = match code {
        ExceptionCode::IllegalFunction => "illegal function",
        ExceptionCode::IllegalDataAddress => "illegal data address",
        ExceptionCode::IllegalDataValue => "illegal data value",
        ExceptionCode::ServerDeviceFailure => "server device failure",
        ExceptionCode::Acknowledge => "acknowledge",
        ExceptionCode::ServerDeviceBusy => "server device busy",
        ExceptionCode::MemoryParityError => "memory parity error",
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable",
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
        ExceptionCode::Custom(_) => "exception",
    };
    format!("{name} ({})", u8::from(code))
}

/// One write as the bus executes it.
struct WriteItem {
    data_type: DataType,
    address: Option<crate::modbus::RegisterAddress>,
    writable: bool,
    value: Value,
    /// False when the index names no property of the device.
    exists: bool,
}

/// What a device asks its bus to do.
enum Work {
    /// Run one read cycle of the plan.
    Read(Arc<Plan>),
    /// Apply writes in order, stopping at the first failure.
    Write(Vec<WriteItem>),
}

/// What the bus answers.
enum Done {
    /// The plan (with any splits) and the cycle's results.
    Read(Arc<Plan>, Cycle),
    /// The write outcome.
    Write(WriteOutcome),
}

/// One job of one unit on the bus.
struct Job {
    unit: u8,
    timeout: Duration,
    work: Work,
    reply: oneshot::Sender<Done>,
}

/// The results of one read cycle.
struct Cycle {
    values: Vec<(usize, Result<Value, DriverError>)>,
    /// The unit answered at least once (data or exception).
    answered: bool,
    /// The timeout or I/O failure that ended the cycle, if any.
    failure: Option<DriverError>,
    duration: Duration,
}

/// The two queues of a bus: writes and forced reads jump the polls. flume
/// channels: a tokio channel allocates 32 job slots up front, two per bus,
/// and every Modbus TCP device with its own endpoint has its own bus.
#[derive(Clone)]
struct Queues {
    urgent: flume::Sender<Job>,
    poll: flume::Sender<Job>,
}

struct Entry {
    queues: Queues,
    devices: usize,
}

/// The buses in use, keyed by transport; each runs one task.
#[derive(Default, Clone)]
pub struct BusRegistry {
    buses: Arc<Mutex<HashMap<Transport, Entry>>>,
}

/// A device's membership of a bus; leaving closes the bus after its last device.
struct Attachment {
    registry: BusRegistry,
    transport: Transport,
    queues: Queues,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut buses = self
            .registry
            .buses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = buses.get_mut(&self.transport) {
            entry.devices = entry.devices.saturating_sub(1);
            if entry.devices == 0 {
                buses.remove(&self.transport);
                debug!(bus = %describe(&self.transport), "last device left, closing bus");
            }
        }
    }
}

impl BusRegistry {
    fn attach(&self, transport: &Transport) -> Attachment {
        let mut buses = self
            .buses
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = buses.entry(transport.clone()).or_insert_with(|| {
            let (urgent, urgent_rx) = flume::bounded(QUEUE_DEPTH);
            let (poll, poll_rx) = flume::bounded(QUEUE_DEPTH);
            let bus = Bus::new(transport.clone());
            tokio::spawn(bus.run(urgent_rx, poll_rx));
            Entry {
                queues: Queues { urgent, poll },
                devices: 0,
            }
        });
        entry.devices += 1;
        Attachment {
            registry: self.clone(),
            transport: transport.clone(),
            queues: entry.queues.clone(),
        }
    }

    /// Attaches a device to its bus (opening the bus if needed); the future
    /// serves it until cancelled. The attachment is made here, so that the
    /// future holds the device loop alone, not also the spec and
    /// connection it was built from.
    pub fn run_device(&self, spec: DeviceSpec, link: DeviceLink) -> DriverFuture<'static> {
        let Connection::Modbus(conn) = &spec.connection else {
            return Box::pin(async move {
                let err = DriverError::new(ErrorKind::Unsupported, "not a Modbus device");
                let _ = link.events.send(DeviceEvent::Offline(err)).await;
                link.cancel.cancelled().await;
            });
        };
        let conn = conn.clone();
        let attachment = self.attach(&conn.transport);
        Box::pin(DeviceLoop::new(spec, &conn, attachment).run(link))
    }
}
