//! Finding the peripheral, connecting with service discovery, and resolving the configured characteristics.

use std::sync::Arc;
use std::time::Instant;

use btleplug::api::{
    BDAddr, Central as _, CentralEvent, CharPropFlags, Characteristic, Peripheral as _,
};
use btleplug::platform::{Peripheral, PeripheralId};
use futures::StreamExt;
use tracing::debug;

use crate::ble::{describe_uuid, Access, BleConnection, CharacteristicAddress, Target};
use crate::{DeviceSpec, DriverError, ErrorKind, PropertyAddress};

use super::session::{Bound, Session};
use super::shared::{ConnectedGuard, Opened, SharedAdapter};
use super::{io, EventStream, CONNECT_TIMEOUT, RESCAN_EVERY};

/// Opens the adapter, finds the peripheral, connects and subscribes.
pub(super) async fn connect(
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
pub(super) async fn find(
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
pub(super) fn resolve<'a>(
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
