//! The connected phase of a session: initial read, change notifications or poll timer, liveness, commands.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opcua::client::Session;
use opcua::types::{DataValue, NodeId, ReadValueId, TimestampsToReturn, VariantScalarTypeId};
use tracing::debug;

use super::connection::{describe_status, io, keep_alive_interval, Connected, LoopEvent};
use super::convert;
use super::subscription::subscribe;
use super::writes::write;
use super::{Exit, Mode, OpcUaConnection, Pending};
use crate::{
    DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError, ErrorKind, ReadCause,
    Readings, Value,
};

pub(super) fn read_ids(nodes: &[Option<NodeId>]) -> (Vec<usize>, Vec<ReadValueId>) {
    let mut idx = Vec::new();
    let mut ids = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if let Some(n) = n {
            idx.push(i);
            ids.push(ReadValueId::from(n.clone()));
        }
    }
    (idx, ids)
}

/// The connected phase: initial read, subscription or poll timer, commands.
pub(super) async fn run_connected(
    spec: &DeviceSpec,
    conn: &OpcUaConnection,
    nodes: &[Option<NodeId>],
    mut c: Connected,
    link: &mut DeviceLink,
) -> Exit {
    let mut types: Vec<Option<VariantScalarTypeId>> = vec![None; nodes.len()];
    let pending = Arc::new(Pending::default());
    let invalid: Vec<(usize, Result<Value, DriverError>)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is_none())
        .map(|(i, _)| {
            (
                i,
                Err(DriverError::new(ErrorKind::Rejected, "invalid NodeId")),
            )
        })
        .collect();
    if link.events.send(DeviceEvent::Online).await.is_err() {
        return Exit::Cancelled;
    }
    if conn.mode == Mode::Subscribe {
        if let Err(e) = subscribe(spec, nodes, &c.session, &pending).await {
            return Exit::Lost(e);
        }
    }
    // The initial read: values appear at once, whatever the mode.
    let read = read_all(spec, nodes, &c.session, &mut types, ReadCause::Poll).await;
    if let Err(exit) = deliver(read, &invalid, link).await {
        return exit;
    }
    let mut last_alive = Instant::now();
    let dead_after = keep_alive_interval(spec) * 3 + spec.timeout;
    let mut poll = tokio::time::interval(spec.sync_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let mut liveness = tokio::time::interval(Duration::from_millis(500).min(dead_after / 2));
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let exit = loop {
        tokio::select! {
            _ = link.cancel.cancelled() => break Exit::Cancelled,
            ev = c.events.recv() => match ev {
                Some(LoopEvent::Alive) => last_alive = Instant::now(),
                Some(LoopEvent::Lost(m)) => break Exit::Lost(io(format!("{}: {m}", conn.endpoint))),
                None => break Exit::Lost(io(format!("{}: session ended", conn.endpoint))),
            },
            _ = pending.notify.notified() => {
                let changed: Vec<(usize, DataValue)> = match pending.values.lock() {
                    Ok(mut g) => g.drain().collect(),
                    Err(_) => Vec::new(),
                };
                if changed.is_empty() {
                    continue;
                }
                last_alive = Instant::now();
                let mut values = Vec::with_capacity(changed.len());
                for (i, dv) in changed {
                    values.push((i, decode_one(spec, &mut types, i, &dv)));
                }
                values.sort_by_key(|(i, _)| *i);
                let r = Readings { at: SystemTime::now(), cause: ReadCause::Poll, values, duration: None };
                if link.events.send(DeviceEvent::Readings(r)).await.is_err() {
                    break Exit::Cancelled;
                }
            }
            _ = poll.tick(), if conn.mode == Mode::Poll => {
                let read = read_all(spec, nodes, &c.session, &mut types, ReadCause::Poll).await;
                if let Err(exit) = deliver(read, &invalid, link).await {
                    break exit;
                }
                last_alive = Instant::now();
            }
            _ = liveness.tick() => {
                if last_alive.elapsed() > dead_after {
                    break Exit::Lost(DriverError::new(
                        ErrorKind::Timeout,
                        format!("{}: no answer for {}", conn.endpoint,
                            humantime::format_duration(Duration::from_millis(dead_after.as_millis() as u64))),
                    ));
                }
            }
            cmd = link.commands.recv() => match cmd {
                None => break Exit::Cancelled,
                Some(DeviceCommand::ReadNow) => {
                    let read = read_all(spec, nodes, &c.session, &mut types, ReadCause::Forced).await;
                    if let Err(exit) = deliver(read, &invalid, link).await {
                        break exit;
                    }
                    last_alive = Instant::now();
                }
                Some(DeviceCommand::Write { writes, reply }) => {
                    let (outcome, lost) = write(spec, nodes, &c.session, &mut types, &writes).await;
                    let read = read_all(spec, nodes, &c.session, &mut types, ReadCause::Forced).await;
                    let _ = reply.send(outcome);
                    if let Some(e) = lost {
                        break Exit::Lost(e);
                    }
                    if let Err(exit) = deliver(read, &invalid, link).await {
                        break exit;
                    }
                    last_alive = Instant::now();
                }
            },
        }
    };
    if matches!(exit, Exit::Cancelled) {
        // Be polite on a clean stop; never wait long for it.
        let _ = tokio::time::timeout(Duration::from_secs(1), c.session.disconnect()).await;
    }
    debug!(device = %spec.name, "opcua: session closed");
    exit
}

/// Hands a read to the device, with the errors of the invalid node ids
/// added; the session's exit when the read failed or the device is gone.
async fn deliver(
    read: Result<Readings, DriverError>,
    invalid: &[(usize, Result<Value, DriverError>)],
    link: &DeviceLink,
) -> Result<(), Exit> {
    let mut r = read.map_err(Exit::Lost)?;
    r.values.extend(invalid.iter().cloned());
    link.events
        .send(DeviceEvent::Readings(r))
        .await
        .map_err(|_| Exit::Cancelled)
}

pub(super) fn decode_one(
    spec: &DeviceSpec,
    types: &mut [Option<VariantScalarTypeId>],
    i: usize,
    dv: &DataValue,
) -> Result<Value, DriverError> {
    let Some(p) = spec.properties.get(i) else {
        return Err(DriverError::new(ErrorKind::Decode, "unknown property"));
    };
    if let (Some(v), Some(slot)) = (&dv.value, types.get_mut(i)) {
        if let Some(t) = v.scalar_type_id() {
            *slot = Some(t);
        }
    }
    convert::decode(dv, p.data_type)
}

/// Nodes per Read request (see [`read_all`]).
const READ_CHUNK: usize = 500;

pub(super) async fn read_all(
    spec: &DeviceSpec,
    nodes: &[Option<NodeId>],
    session: &Session,
    types: &mut [Option<VariantScalarTypeId>],
    cause: ReadCause,
) -> Result<Readings, DriverError> {
    let started = Instant::now();
    let (idx, ids) = read_ids(nodes);
    if ids.is_empty() {
        return Ok(Readings {
            at: SystemTime::now(),
            cause,
            values: Vec::new(),
            duration: Some(started.elapsed()),
        });
    }
    // Large devices: read in chunks, so no request exceeds the message size
    // and no response holds more values than the client decodes in one
    // array (1 000); one Read of 20 000 nodes failed with BadRequestTooLarge.
    let mut results = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(READ_CHUNK) {
        let part = tokio::time::timeout(
            spec.timeout + Duration::from_millis(100),
            session.read(chunk, TimestampsToReturn::Neither, 0.0),
        )
        .await
        .map_err(|_| DriverError::timeout(spec.timeout))?
        .map_err(|e| io(format!("Read failed: {}", describe_status(e.status()))))?;
        results.extend(part);
    }
    let mut values = Vec::with_capacity(idx.len());
    for (k, i) in idx.iter().enumerate() {
        let v = match results.get(k) {
            Some(dv) => decode_one(spec, types, *i, dv),
            None => Err(DriverError::new(
                ErrorKind::Decode,
                "the server returned fewer results than requested",
            )),
        };
        values.push((*i, v));
    }
    Ok(Readings {
        at: SystemTime::now(),
        cause,
        values,
        duration: Some(started.elapsed()),
    })
}
