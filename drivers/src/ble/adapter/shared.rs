//! One opened adapter shared by its devices: the BlueZ session, the discovery while anyone scans, the connection count.

use std::sync::{Arc, Mutex};

use btleplug::api::{Central as _, Manager as _, Peripheral as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, Peripheral};
use tracing::info;

use crate::{DriverError, ErrorKind};

use super::{io, OPEN_TIMEOUT};
use crate::ble::{adapters_unlisted, bluez_unreachable, session_task_failed};

/// An opened adapter: the BlueZ session lives inside.
#[derive(Clone)]
pub(super) struct Opened {
    pub(super) adapter: Adapter,
    /// Its BlueZ name, e.g. `hci0`.
    pub(super) name: String,
}

/// One adapter shared by its devices: the session and the discovery.
pub(super) struct SharedAdapter {
    pub(super) configured: Option<String>,
    pub(super) open: tokio::sync::Mutex<Option<Opened>>,
    /// Devices currently scanning; discovery runs while this is above 0.
    pub(super) scanners: Mutex<usize>,
}

impl SharedAdapter {
    /// The opened adapter, connecting to BlueZ on the system bus if needed.
    pub(super) async fn get(&self) -> Result<Opened, DriverError> {
        let mut slot = self.open.lock().await;
        if let Some(o) = slot.as_ref() {
            return Ok(o.clone());
        }
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.open_adapter())
            .await
            .map_err(|_| {
                DriverError::timeout(OPEN_TIMEOUT)
                    .with_context("opening BlueZ on the D-Bus system bus")
            })??;
        info!(adapter = %opened.name, "ble: adapter opened");
        *slot = Some(opened.clone());
        Ok(opened)
    }

    /// Forgets the session so that the next device reopens it (adapter loss,
    /// BlueZ restart).
    pub(super) async fn reset(&self) {
        *self.open.lock().await = None;
    }

    pub(super) async fn open_adapter(&self) -> Result<Opened, DriverError> {
        // Connecting to the system bus blocks inside libdbus: keep it off the
        // async workers.
        let handle = tokio::runtime::Handle::current();
        let manager = tokio::task::spawn_blocking(move || handle.block_on(Manager::new()))
            .await
            .map_err(session_task_failed)?
            .map_err(bluez_unreachable)?;
        let adapters = manager.adapters().await.map_err(adapters_unlisted)?;
        let mut names = Vec::new();
        for adapter in adapters {
            let info = adapter
                .adapter_info()
                .await
                .map_err(|e| io(format!("cannot read adapter info: {e}")))?;
            let name = info
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if self.configured.as_ref().is_none_or(|c| *c == name) {
                return Ok(Opened { adapter, name });
            }
            names.push(name);
        }
        Err(DriverError::new(
            ErrorKind::NotFound,
            match &self.configured {
                Some(c) if names.is_empty() => {
                    format!("Bluetooth adapter {c} not found (BlueZ lists no adapters)")
                }
                Some(c) => format!(
                    "Bluetooth adapter {c} not found (BlueZ lists {})",
                    names.join(", ")
                ),
                None => "no Bluetooth adapter (BlueZ lists none)".into(),
            },
        ))
    }

    /// Starts discovery unless another device already runs it.
    pub(super) async fn start_scan(
        self: &Arc<Self>,
        opened: &Opened,
    ) -> Result<ScanGuard, DriverError> {
        let first = {
            let mut n = lock(&self.scanners);
            *n += 1;
            *n == 1
        };
        let guard = ScanGuard {
            shared: self.clone(),
            adapter: opened.adapter.clone(),
        };
        if first {
            if let Err(e) = opened.adapter.start_scan(ScanFilter::default()).await {
                // The adapter may be gone: list the adapters again next time.
                self.reset().await;
                return Err(io(format!(
                    "cannot start discovery on {}: {e}",
                    opened.name
                )));
            }
        }
        Ok(guard)
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A device's share of the adapter's discovery; the last one out stops it.
pub(super) struct ScanGuard {
    pub(super) shared: Arc<SharedAdapter>,
    pub(super) adapter: Adapter,
}

impl Drop for ScanGuard {
    fn drop(&mut self) {
        let last = {
            let mut n = lock(&self.shared.scanners);
            *n = n.saturating_sub(1);
            *n == 0
        };
        if last {
            let adapter = self.adapter.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tokio::time::timeout(OPEN_TIMEOUT, adapter.stop_scan()).await;
                });
            }
        }
    }
}

/// Disconnects the peripheral when a session ends for any reason.
pub(super) struct ConnectedGuard {
    pub(super) peripheral: Peripheral,
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        let p = self.peripheral.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(OPEN_TIMEOUT, p.disconnect()).await;
            });
        }
    }
}
