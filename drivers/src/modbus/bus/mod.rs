//! The bus task (one per serial line or TCP endpoint, one transaction in
//! flight) and the per-device loop that schedules polls and writes on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tracing::{debug, info, warn};

use super::codec::{decode_bit, decode_registers, encode_bit, encode_registers, width};
use super::plan::{kind_name, Plan, ReadRequest};
use super::transport::{connect, describe, inter_frame_gap};
use super::{ModbusConnection, RegisterKind, Transport};
use crate::{
    Backoff, Connection, DataType, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError,
    DriverFuture, ErrorKind, PropertyAddress, PropertySpec, ReadCause, Readings, Value,
    WriteOutcome,
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
    address: Option<super::RegisterAddress>,
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

/// The bus task's state: the connection and its reconnect schedule.
struct Bus {
    transport: Transport,
    conn: Option<Context>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    last_error: Option<DriverError>,
    gap: Option<Duration>,
    last_frame: Option<Instant>,
    /// The exception code of the last transaction, if it got one.
    last_exception: Option<ExceptionCode>,
    /// Transactions in a row that got no answer on this connection.
    missed: u32,
}

impl Bus {
    fn new(transport: Transport) -> Self {
        let gap = match &transport {
            Transport::Rtu(s) => Some(inter_frame_gap(s)),
            _ => None,
        };
        Self {
            transport,
            conn: None,
            backoff: Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX),
            retry_at: None,
            last_error: None,
            gap,
            last_frame: None,
            last_exception: None,
            missed: 0,
        }
    }

    /// Serves jobs until both queues close. An async block rather than an
    /// async fn, which would store `self` twice (argument and local).
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn: see above
    fn run(
        mut self,
        urgent: flume::Receiver<Job>,
        poll: flume::Receiver<Job>,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // Streams: each stays registered between jobs instead of
            // registering anew for every job.
            let mut urgent = urgent.into_stream();
            let mut poll = poll.into_stream();
            debug!(bus = %describe(&self.transport), "bus started");
            loop {
                let job = tokio::select! {
                    biased;
                    Some(job) = futures_util::StreamExt::next(&mut urgent) => job,
                    Some(job) = futures_util::StreamExt::next(&mut poll) => job,
                    else => break,
                };
                let done = match job.work {
                    Work::Read(mut plan) => {
                        let cycle = self.read_cycle(job.unit, job.timeout, &mut plan).await;
                        Done::Read(plan, cycle)
                    }
                    Work::Write(writes) => {
                        // Boxed: writes are rare, and inline their future
                        // would size every bus task.
                        Done::Write(Box::pin(self.write_all(job.unit, job.timeout, writes)).await)
                    }
                };
                let _ = job.reply.send(done);
            }
            if let Some(mut ctx) = self.conn.take() {
                let _ = ctx.disconnect().await;
            }
            debug!(bus = %describe(&self.transport), "bus closed");
        }
    }

    /// The open connection, opening it if its reconnect delay has passed.
    async fn connection(&mut self, timeout: Duration) -> Result<&mut Context, DriverError> {
        if self.conn.is_none() {
            if let (Some(at), Some(err)) = (self.retry_at, &self.last_error) {
                if Instant::now() < at {
                    return Err(err.clone());
                }
            }
            match connect(&self.transport, timeout).await {
                Ok(ctx) => {
                    info!(bus = %describe(&self.transport), "connected");
                    // The backoff is reset by the first answer, so a peer
                    // that accepts and then drops us is still retried slowly.
                    self.conn = Some(ctx);
                    self.missed = 0;
                    self.retry_at = None;
                    self.last_error = None;
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    debug!(bus = %describe(&self.transport), error = %e, ?delay, "connect failed");
                    self.retry_at = Some(Instant::now() + delay);
                    self.last_error = Some(e.clone());
                    return Err(e);
                }
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| DriverError::new(ErrorKind::Io, "not connected"))
    }

    /// Drops a TCP connection (plain or RTU framing) so that the next
    /// transaction dials again at once; a serial line stays open.
    fn forget_stream(&mut self) {
        self.missed = 0;
        if matches!(
            self.transport,
            Transport::Tcp { .. } | Transport::RtuOverTcp { .. }
        ) {
            if self.conn.take().is_some() {
                debug!(bus = %describe(&self.transport), "dropping the connection after a missed answer");
            }
            self.retry_at = None;
        }
    }

    /// Closes the serial port after missed answers (or because its device
    /// node is gone) so that the next transaction opens it again, after the
    /// bus's reconnect backoff; returns the error the transaction reports.
    fn reopen_serial(&mut self, vanished: bool, timeout: DriverError) -> DriverError {
        self.missed = 0;
        self.conn = None;
        let port = match &self.transport {
            Transport::Rtu(s) => s.port.as_str(),
            _ => "",
        };
        let err = if vanished {
            warn!(bus = %describe(&self.transport), "serial port vanished (adapter unplugged?); waiting for it to come back");
            DriverError::new(ErrorKind::Io, format!("serial port {port} vanished"))
        } else {
            debug!(bus = %describe(&self.transport), "no answer on the line: opening the port again");
            timeout
        };
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        self.last_error = Some(err.clone());
        err
    }

    /// One request/response on the bus, bounded by `timeout`.
    async fn transact(
        &mut self,
        unit: u8,
        timeout: Duration,
        request: Request<'_>,
    ) -> Result<Response, DriverError> {
        let (gap, last_frame) = (self.gap, self.last_frame);
        let ctx = self.connection(timeout).await?;
        if let (Some(gap), Some(last)) = (gap, last_frame) {
            tokio::time::sleep_until(last + gap).await;
        }
        ctx.set_slave(Slave(unit));
        let result = tokio::time::timeout(timeout, ctx.call(request)).await;
        self.last_frame = Some(Instant::now());
        self.last_exception = match &result {
            Ok(Ok(Err(code))) => Some(*code),
            _ => None,
        };
        if let Ok(Ok(_)) = &result {
            self.backoff.reset();
            self.missed = 0;
        }
        match result {
            Err(_) => {
                // Missed answers in a row, with no answer from any unit in
                // between. TCP: the path may be dead without a FIN or RST
                // (a half-open connection never heals by itself): dial
                // afresh. Serial: the adapter may be gone: open the port
                // again. One silent unit among answering ones does not
                // count: their answers keep the connection.
                self.missed += 1;
                let err = DriverError::timeout(timeout);
                if let Transport::Rtu(s) = &self.transport {
                    let vanished = !tokio::fs::try_exists(&s.port).await.unwrap_or(true);
                    if vanished || self.missed >= MISSED_BEFORE_REOPEN {
                        return Err(self.reopen_serial(vanished, err));
                    }
                } else if self.missed >= MISSED_BEFORE_REDIAL {
                    self.forget_stream();
                }
                Err(err)
            }
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(code))) => Err(DriverError::new(
                ErrorKind::Exception,
                describe_exception(code),
            )),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                // An answer to another request (e.g. a late one): the
                // stream is out of step.
                self.forget_stream();
                Err(DriverError::new(
                    ErrorKind::Decode,
                    format!("bad response: {e}"),
                ))
            }
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                // The framed reader stops after a decode error: start afresh.
                self.conn = None;
                self.retry_at = None;
                Err(DriverError::new(
                    ErrorKind::Decode,
                    format!("bad frame (CRC or framing): {e}"),
                ))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                warn!(bus = %describe(&self.transport), error = %e, "connection lost");
                let err = DriverError::new(ErrorKind::Io, format!("connection lost: {e}"));
                self.conn = None;
                self.retry_at = Some(Instant::now() + self.backoff.next_delay());
                self.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    async fn read_cycle(&mut self, unit: u8, timeout: Duration, plan: &mut Arc<Plan>) -> Cycle {
        let started = Instant::now();
        let mut values = Vec::new();
        let mut answered = false;
        let mut failure: Option<DriverError> = None;
        let mut i = 0;
        // The requests are read from a handle on the plan (no copy of a
        // request per cycle); it is renewed when a split changes the plan.
        let mut current = Arc::clone(plan);
        while let Some(request) = current.requests.get(i) {
            if let Some(err) = &failure {
                // A unit that timed out (or a lost bus) costs one timeout per
                // cycle, not one per request.
                fail_items(&mut values, request, err);
                i += 1;
                continue;
            }
            let sent = read_request(request);
            match self.transact(unit, timeout, sent).await {
                Ok(response) => {
                    answered = true;
                    decode_response(&mut values, request, response);
                    i += 1;
                }
                Err(e) if e.kind == ErrorKind::Exception => {
                    match self.last_exception {
                        // A gateway whose target does not answer: as silent
                        // as a timeout.
                        Some(
                            ExceptionCode::GatewayPathUnavailable
                            | ExceptionCode::GatewayTargetDevice,
                        ) => {
                            fail_items(&mut values, request, &e);
                            failure = Some(e);
                            i += 1;
                            continue;
                        }
                        // Transient: the request itself is fine.
                        Some(ExceptionCode::Acknowledge | ExceptionCode::ServerDeviceBusy) => {
                            answered = true;
                            fail_items(&mut values, request, &e);
                            i += 1;
                            continue;
                        }
                        _ => answered = true,
                    }
                    if Plan::split_at(plan, i) {
                        debug!(unit, error = %e, "splitting refused read request");
                        current = Arc::clone(plan);
                        continue;
                    }
                    fail_items(&mut values, request, &e);
                    i += 1;
                }
                Err(e) if e.kind == ErrorKind::Decode => {
                    answered = true;
                    fail_items(&mut values, request, &e);
                    i += 1;
                }
                Err(e) => {
                    fail_items(&mut values, request, &e);
                    failure = Some(e);
                    i += 1;
                }
            }
        }
        values.sort_by_key(|(index, _)| *index);
        Cycle {
            values,
            answered,
            failure,
            duration: started.elapsed(),
        }
    }

    async fn write_all(
        &mut self,
        unit: u8,
        timeout: Duration,
        writes: Vec<WriteItem>,
    ) -> WriteOutcome {
        let mut outcome = WriteOutcome::default();
        for (n, write) in writes.into_iter().enumerate() {
            match self.write_one(unit, timeout, write).await {
                Ok(()) => outcome.applied += 1,
                Err(e) => {
                    outcome.failed = Some((n, e));
                    break;
                }
            }
        }
        outcome
    }

    /// One property write: FC5 for a coil, FC6 for one register, FC16 for a
    /// multi-register value; a bit or a byte of a register is
    /// read-modify-write (FC3, then FC6).
    async fn write_one(
        &mut self,
        unit: u8,
        timeout: Duration,
        write: WriteItem,
    ) -> Result<(), DriverError> {
        let rejected = |m: String| DriverError::new(ErrorKind::Rejected, m);
        if !write.exists {
            return Err(DriverError::new(ErrorKind::NotFound, "no such property"));
        }
        let Some(address) = write.address else {
            return Err(rejected("not a Modbus property".into()));
        };
        if !write.writable {
            return Err(rejected("property is not writable".into()));
        }
        let at = address.address;
        match address.kind {
            RegisterKind::Coil => {
                let on = encode_bit(&write.value)?;
                self.transact(unit, timeout, Request::WriteSingleCoil(at, on))
                    .await
                    .map(drop)
            }
            RegisterKind::DiscreteInput | RegisterKind::Input => Err(rejected(format!(
                "{} registers are read-only",
                kind_name(address.kind)
            ))),
            RegisterKind::Holding => {
                let partial = address.bit.is_some()
                    || matches!(write.data_type, DataType::Int8 | DataType::Uint8);
                let current = if partial {
                    let response = self
                        .transact(unit, timeout, Request::ReadHoldingRegisters(at, 1))
                        .await?;
                    match response {
                        Response::ReadHoldingRegisters(regs) => match regs.first() {
                            Some(r) => Some(*r),
                            None => {
                                return Err(DriverError::new(
                                    ErrorKind::Decode,
                                    "short response: 0 of 1 registers",
                                ))
                            }
                        },
                        other => return Err(unexpected(&other)),
                    }
                } else {
                    None
                };
                let words = encode_registers(write.data_type, &address, &write.value, current)?;
                let request = match words.as_slice() {
                    [one] => Request::WriteSingleRegister(at, *one),
                    _ => Request::WriteMultipleRegisters(at, words.into()),
                };
                self.transact(unit, timeout, request).await.map(drop)
            }
        }
    }
}

fn unexpected(response: &Response) -> DriverError {
    DriverError::new(
        ErrorKind::Decode,
        format!("unexpected response {:?}", response.function_code()),
    )
}

fn read_request(r: &ReadRequest) -> Request<'static> {
    match r.kind {
        RegisterKind::Coil => Request::ReadCoils(r.start, r.count),
        RegisterKind::DiscreteInput => Request::ReadDiscreteInputs(r.start, r.count),
        RegisterKind::Input => Request::ReadInputRegisters(r.start, r.count),
        RegisterKind::Holding => Request::ReadHoldingRegisters(r.start, r.count),
    }
}

fn fail_items(
    values: &mut Vec<(usize, Result<Value, DriverError>)>,
    request: &ReadRequest,
    err: &DriverError,
) {
    values.extend(request.items.iter().map(|i| (i.index, Err(err.clone()))));
}

fn decode_response(
    values: &mut Vec<(usize, Result<Value, DriverError>)>,
    request: &ReadRequest,
    response: Response,
) {
    let short = |need: u16, got: usize| {
        DriverError::new(
            ErrorKind::Decode,
            format!("short response: {got} of {need} values"),
        )
    };
    match (request.kind, response) {
        (RegisterKind::Coil, Response::ReadCoils(bits))
        | (RegisterKind::DiscreteInput, Response::ReadDiscreteInputs(bits)) => {
            for item in &request.items {
                let offset = (item.address.address - request.start) as usize;
                let result = match bits.get(offset) {
                    Some(bit) if bits.len() >= request.count as usize => {
                        decode_bit(item.data_type, *bit)
                    }
                    _ => Err(short(request.count, bits.len())),
                };
                values.push((item.index, result));
            }
        }
        (RegisterKind::Holding, Response::ReadHoldingRegisters(regs))
        | (RegisterKind::Input, Response::ReadInputRegisters(regs)) => {
            for item in &request.items {
                let offset = (item.address.address - request.start) as usize;
                let end = offset + width(item.data_type, &item.address) as usize;
                let result = match regs.get(offset..end) {
                    Some(slice) if regs.len() == request.count as usize => {
                        decode_registers(item.data_type, &item.address, slice)
                    }
                    _ if regs.len() != request.count as usize => Err(DriverError::new(
                        ErrorKind::Decode,
                        format!(
                            "wrong response length: {} registers for {}",
                            regs.len(),
                            request.count
                        ),
                    )),
                    _ => Err(short(request.count, regs.len())),
                };
                values.push((item.index, result));
            }
        }
        (_, other) => {
            let err = unexpected(&other);
            fail_items(values, request, &err);
        }
    }
}

/// The device side: its schedule, offline state and backoff.
struct DeviceLoop {
    /// Device name (for logs).
    name: String,
    sync_interval: Duration,
    timeout: Duration,
    properties: Arc<[PropertySpec]>,
    unit: u8,
    plan: Option<Arc<Plan>>,
    /// The merged plan, restored every [`REMERGE_EVERY`] cycles after splits
    /// (the same allocation as `plan` until a split).
    merged: Arc<Plan>,
    cycles: u32,
    attachment: Attachment,
    online: Option<bool>,
    offline_reason: Option<String>,
    backoff: Backoff,
    paused_until: Option<Instant>,
}

impl DeviceLoop {
    fn new(spec: DeviceSpec, conn: &ModbusConnection, attachment: Attachment) -> Self {
        let plan = Arc::new(Plan::for_device(
            &spec,
            conn.max_registers_per_read,
            conn.max_gap,
        ));
        let initial = spec.sync_interval.max(Duration::from_millis(100));
        Self {
            unit: conn.unit_id,
            merged: Arc::clone(&plan),
            plan: Some(plan),
            cycles: 0,
            attachment,
            online: None,
            offline_reason: None,
            backoff: Backoff::new(initial, UNIT_BACKOFF_MAX.max(initial)),
            paused_until: None,
            // Not the whole spec: its connection settings are the bus's.
            name: spec.name,
            sync_interval: spec.sync_interval,
            timeout: spec.timeout,
            properties: spec.properties,
        }
    }

    /// Polls and writes until cancelled. An async block rather than an
    /// async fn: a function's arguments would be stored twice in its future
    /// (as arguments and as locals), and every device holds this future.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn: see above
    fn run(mut self, mut link: DeviceLink) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let mut ticker =
                tokio::time::interval(self.sync_interval.max(Duration::from_millis(1)));
            // On the syncInterval grid: with Delay each tick handled late moved
            // every later poll back, losing polls on a busy machine.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                let keep_going = tokio::select! {
                    biased;
                    _ = link.cancel.cancelled() => false,
                    cmd = link.commands.recv() => match cmd {
                        None => false,
                        Some(DeviceCommand::ReadNow) => self.read(&link, ReadCause::Forced).await,
                        Some(DeviceCommand::Write { writes, reply }) => {
                            self.write(&link, writes, reply).await
                        }
                    },
                    _ = ticker.tick() => {
                        if self.paused_until.is_some_and(|until| Instant::now() < until) {
                            true
                        } else {
                            self.read(&link, ReadCause::Poll).await
                        }
                    }
                };
                if !keep_going {
                    return;
                }
            }
        }
    }

    /// Sends a job and waits for its answer; `None` when cancelled or the bus is gone.
    async fn submit(&self, link: &DeviceLink, work: Work, urgent: bool) -> Option<Done> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            unit: self.unit,
            timeout: self.timeout,
            work,
            reply,
        };
        let queue = if urgent {
            &self.attachment.queues.urgent
        } else {
            &self.attachment.queues.poll
        };
        tokio::select! {
            _ = link.cancel.cancelled() => return None,
            sent = queue.send_async(job) => sent.ok()?,
        }
        tokio::select! {
            _ = link.cancel.cancelled() => None,
            done = answer => done.ok(),
        }
    }

    /// Sends an event unless cancelled; false when the device must stop.
    async fn emit(&self, link: &DeviceLink, event: DeviceEvent) -> bool {
        tokio::select! {
            _ = link.cancel.cancelled() => false,
            sent = link.events.send(event) => sent.is_ok(),
        }
    }

    async fn read(&mut self, link: &DeviceLink, cause: ReadCause) -> bool {
        let Some(mut plan) = self.plan.take() else {
            return false;
        };
        self.cycles = self.cycles.wrapping_add(1);
        if self.cycles.is_multiple_of(REMERGE_EVERY) && !Arc::ptr_eq(&plan, &self.merged) {
            // Refusals may have been temporary: try the merged reads again.
            plan = Arc::clone(&self.merged);
        }
        let Some(Done::Read(plan, cycle)) = self
            .submit(link, Work::Read(plan), cause == ReadCause::Forced)
            .await
        else {
            return false;
        };
        self.plan = Some(plan);
        if cycle.answered {
            self.backoff.reset();
            self.paused_until = None;
            self.offline_reason = None;
            if self.online != Some(true) {
                self.online = Some(true);
                info!(device = %self.name, "online");
                if !self.emit(link, DeviceEvent::Online).await {
                    return false;
                }
            }
        } else if let Some(err) = cycle.failure.clone() {
            if err.kind == ErrorKind::Timeout && cause == ReadCause::Poll {
                // A silent unit is skipped for a while so it costs its
                // neighbours on the bus at most one timeout per attempt.
                self.paused_until = Some(Instant::now() + self.backoff.next_delay());
            }
            let changed = self.online != Some(false)
                || self.offline_reason.as_deref() != Some(err.message.as_str());
            self.online = Some(false);
            if changed {
                warn!(device = %self.name, error = %err, "offline");
                self.offline_reason = Some(err.message.clone());
                if !self.emit(link, DeviceEvent::Offline(err)).await {
                    return false;
                }
            }
        }
        let readings = Readings {
            at: SystemTime::now(),
            cause,
            values: cycle.values,
            duration: (cause == ReadCause::Poll).then_some(cycle.duration),
        };
        self.emit(link, DeviceEvent::Readings(readings)).await
    }

    async fn write(
        &mut self,
        link: &DeviceLink,
        writes: Vec<(usize, Value)>,
        reply: oneshot::Sender<WriteOutcome>,
    ) -> bool {
        let items = writes
            .into_iter()
            .map(|(index, value)| match self.properties.get(index) {
                Some(p) => WriteItem {
                    data_type: p.data_type,
                    address: match &p.address {
                        PropertyAddress::Modbus(a) => Some(a.clone()),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    },
                    writable: p.writable,
                    value,
                    exists: true,
                },
                None => WriteItem {
                    data_type: DataType::Bool,
                    address: None,
                    writable: false,
                    value,
                    exists: false,
                },
            })
            .collect();
        let Some(Done::Write(outcome)) = self.submit(link, Work::Write(items), true).await else {
            return false;
        };
        let _ = reply.send(outcome);
        self.read(link, ReadCause::Forced).await
    }
}
