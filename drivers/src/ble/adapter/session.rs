//! One connected session of a device: initial read, notifications, polls and commands until the link drops.

use std::sync::Arc;

use btleplug::api::{CentralEvent, Characteristic, Peripheral as _};
use btleplug::platform::Peripheral;
use futures::StreamExt;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info};

use crate::ble::{BleConnection, CharacteristicAddress};
use crate::{Backoff, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError, ReadCause};

use super::connect::connect;
use super::gatt::Ctx;
use super::shared::{ConnectedGuard, SharedAdapter};
use super::{io, reject, EventStream, NotificationStream};

/// A property resolved to a characteristic of the connected peripheral.
pub(super) struct Bound {
    pub(super) index: usize,
    pub(super) address: CharacteristicAddress,
    pub(super) characteristic: Characteristic,
}

/// One connection: find, connect, resolve, then poll/notify/write until the
/// connection is lost. Returns why it ended.
pub(super) async fn run_session(
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
pub(super) struct Session {
    pub(super) peripheral: Peripheral,
    pub(super) bound: Vec<Bound>,
    /// Properties that could not be resolved, reported on every read.
    pub(super) errors: Vec<(usize, DriverError)>,
    pub(super) notifications: NotificationStream,
    pub(super) events: EventStream,
    pub(super) _guard: ConnectedGuard,
}
