//! One BlueZ session and one discovery per adapter, shared by the devices on
//! it, and the per-device connection loop.

mod connect;
mod gatt;
mod session;
mod shared;

use session::run_session;
use shared::SharedAdapter;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use btleplug::api::{CentralEvent, ValueNotification};
use futures::Stream;
use tracing::warn;

use crate::{
    Backoff, Connection, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError,
    WriteOutcome,
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

use super::io;

type EventStream = Pin<Box<dyn Stream<Item = CentralEvent> + Send>>;
type NotificationStream = Pin<Box<dyn Stream<Item = ValueNotification> + Send>>;

/// The adapters in use, keyed by configured adapter name (`None` = first).
#[derive(Default, Clone)]
pub struct AdapterRegistry {
    adapters: Arc<Mutex<HashMap<Option<String>, Weak<SharedAdapter>>>>,
    /// The passive scans of advertising devices.
    adverts: crate::ble::adverts::scan::AdvertHub,
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
        crate::ble::adverts::scan::run_device(&self.adverts, spec, link, conn).await;
    }

    /// The passive scans shared by advertising devices (and `discover ble`).
    pub fn adverts(&self) -> &crate::ble::adverts::scan::AdvertHub {
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

impl DriverError {
    fn with_context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}
