//! Read-only scanning for `fieldgate probe modbus`: which unit ids answer,
//! and the raw registers of the asked ranges. Only read functions (FC3,
//! FC4) are ever sent.

use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::{Request, Response, Slave};

use super::{transport, RegisterKind, Transport};
use crate::{DriverError, ErrorKind};

/// Registers read per request.
const CHUNK: u16 = 125;

/// One register range to read: table, first and last address (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// `Holding` or `Input` (the only tables a probe decodes).
    pub kind: RegisterKind,
    /// First address (0-based).
    pub first: u16,
    /// Last address (inclusive).
    pub last: u16,
}

/// The registers of one range as read: `None` where the unit refused.
#[derive(Debug, Clone)]
pub struct Block {
    /// The range.
    pub range: Range,
    /// One entry per address from `range.first`.
    pub values: Vec<Option<u16>>,
    /// Why some registers are missing (exceptions, timeouts).
    pub notes: Vec<String>,
}

/// One unit that answered.
#[derive(Debug, Clone)]
pub struct UnitReport {
    /// Unit id.
    pub unit: u8,
    /// Its ranges.
    pub blocks: Vec<Block>,
}

/// What a probe found.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    /// Units that answered (a Modbus exception is an answer too).
    pub units: Vec<UnitReport>,
    /// Units that did not answer within the per-unit timeout.
    pub silent: Vec<u8>,
    /// Units not tried because the total time bound ran out.
    pub not_tried: Vec<u8>,
}

async fn read(
    ctx: &mut Context,
    unit: u8,
    kind: RegisterKind,
    first: u16,
    count: u16,
    timeout: Duration,
) -> Result<Result<Vec<u16>, String>, DriverError> {
    ctx.set_slave(Slave(unit));
    let request = match kind {
        RegisterKind::Input => Request::ReadInputRegisters(first, count),
        _ => Request::ReadHoldingRegisters(first, count),
    };
    match tokio::time::timeout(timeout, ctx.call(request)).await {
        Err(_) => Err(DriverError::timeout(timeout)),
        Ok(Err(e)) => Err(DriverError::new(ErrorKind::Io, e.to_string())),
        Ok(Ok(Err(code))) => Ok(Err(super::bus::describe_exception(code))),
        Ok(Ok(Ok(Response::ReadInputRegisters(v) | Response::ReadHoldingRegisters(v)))) => {
            Ok(Ok(v))
        }
        Ok(Ok(Ok(other))) => Err(DriverError::new(
            ErrorKind::Decode,
            format!("unexpected response {other:?}"),
        )),
    }
}

/// Scans `units` on `transport`: a unit answers when its first register
/// read gets any answer within `unit_timeout`; then every range is read in
/// requests of at most 125 registers (a refused request is retried
/// register by register so only the refused addresses are missing). Stops
/// trying new units once `total` has passed.
pub async fn probe(
    transport: &Transport,
    units: &[u8],
    ranges: &[Range],
    unit_timeout: Duration,
    total: Duration,
) -> Result<ProbeReport, DriverError> {
    let deadline = Instant::now() + total;
    let connect_timeout = unit_timeout.max(Duration::from_secs(3));
    let mut ctx = transport::connect(transport, connect_timeout).await?;
    let mut report = ProbeReport::default();
    let Some(first) = ranges.first() else {
        return Ok(report);
    };
    for (i, &unit) in units.iter().enumerate() {
        if Instant::now() >= deadline {
            report.not_tried.extend_from_slice(&units[i..]);
            break;
        }
        match read(&mut ctx, unit, first.kind, first.first, 1, unit_timeout).await {
            Ok(_) => {}
            Err(_) => {
                report.silent.push(unit);
                // A late answer must not be taken for the next unit's:
                // start on a fresh connection.
                ctx = transport::connect(transport, connect_timeout).await?;
                continue;
            }
        }
        let mut blocks = Vec::new();
        for r in ranges {
            let mut block = Block {
                range: *r,
                values: Vec::new(),
                notes: Vec::new(),
            };
            let mut at = u32::from(r.first);
            while at <= u32::from(r.last) {
                let count = (u32::from(r.last) - at + 1).min(u32::from(CHUNK)) as u16;
                let start = at as u16;
                match read(&mut ctx, unit, r.kind, start, count, unit_timeout).await {
                    Ok(Ok(v)) => {
                        let mut v: Vec<Option<u16>> = v.into_iter().map(Some).collect();
                        v.resize(count as usize, None);
                        block.values.extend(v);
                    }
                    Ok(Err(_)) => {
                        // One by one: only the refused addresses stay empty.
                        for a in start as u32..start as u32 + count as u32 {
                            let one = if Instant::now() < deadline {
                                read(&mut ctx, unit, r.kind, a as u16, 1, unit_timeout).await
                            } else {
                                Err(DriverError::timeout(total))
                            };
                            match one {
                                Ok(Ok(v)) => block.values.push(v.first().copied()),
                                Ok(Err(e)) => {
                                    block.values.push(None);
                                    if !block.notes.contains(&e) {
                                        block.notes.push(e);
                                    }
                                }
                                Err(e) => {
                                    block.values.push(None);
                                    block.notes.push(format!("address {a}: {e}"));
                                    ctx = transport::connect(transport, connect_timeout).await?;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        block
                            .values
                            .extend(std::iter::repeat_n(None, count as usize));
                        block.notes.push(format!("addresses {start}+{count}: {e}"));
                        ctx = transport::connect(transport, connect_timeout).await?;
                    }
                }
                at += u32::from(count);
            }
            blocks.push(block);
        }
        report.units.push(UnitReport { unit, blocks });
    }
    Ok(report)
}
