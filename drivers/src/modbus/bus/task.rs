//! The bus task: one connection per transport, one transaction in flight, the devices' jobs in turn.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tracing::{debug, info, warn};

use crate::modbus::codec::{encode_bit, encode_registers};
use crate::modbus::plan::{kind_name, Plan};
use crate::modbus::transport::{connect, describe, inter_frame_gap};
use crate::modbus::{RegisterKind, Transport};
use crate::{Backoff, DataType, DriverError, ErrorKind, WriteOutcome};

use super::response::{decode_response, fail_items, read_request, unexpected};
use super::{
    describe_exception, Cycle, Done, Job, Work, WriteItem, MISSED_BEFORE_REDIAL,
    MISSED_BEFORE_REOPEN, RECONNECT_INITIAL, RECONNECT_MAX,
};

/// The bus task's state: the connection and its reconnect schedule.
pub(super) struct Bus {
    pub(super) transport: Transport,
    pub(super) conn: Option<Context>,
    pub(super) backoff: Backoff,
    pub(super) retry_at: Option<Instant>,
    pub(super) last_error: Option<DriverError>,
    pub(super) gap: Option<Duration>,
    pub(super) last_frame: Option<Instant>,
    /// The exception code of the last transaction, if it got one.
    pub(super) last_exception: Option<ExceptionCode>,
    /// Transactions in a row that got no answer on this connection.
    pub(super) missed: u32,
}

impl Bus {
    pub(super) fn new(transport: Transport) -> Self {
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
    pub(super) fn run(
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
    pub(super) async fn connection(
        &mut self,
        timeout: Duration,
    ) -> Result<&mut Context, DriverError> {
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
    pub(super) fn forget_stream(&mut self) {
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
    pub(super) fn reopen_serial(&mut self, vanished: bool, timeout: DriverError) -> DriverError {
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
    pub(super) async fn transact(
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

    pub(super) async fn read_cycle(
        &mut self,
        unit: u8,
        timeout: Duration,
        plan: &mut Arc<Plan>,
    ) -> Cycle {
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

    pub(super) async fn write_all(
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
    pub(super) async fn write_one(
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
