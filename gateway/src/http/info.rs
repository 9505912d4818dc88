//! What the status page tells about the gateway itself: version, uptime,
//! the loaded config (hash, when, the last reload and its errors), the MQTT
//! sessions it runs, whether writes are allowed, and which devices run.
//! The daemon updates it on start and on every reload; the listener reads it.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use crate::config::resolved::Secret;
use crate::config::{ConfigErrors, Resolved};
use crate::device::DeviceProbe;

/// The outcome of the last reload attempt.
#[derive(Debug, Clone)]
pub(crate) struct ReloadOutcome {
    /// `ok`, `invalid` or `rolled_back`.
    pub result: &'static str,
    /// When it was tried.
    pub at: SystemTime,
    /// The errors of an invalid config (empty when `ok`).
    pub errors: Vec<crate::config::ConfigError>,
    /// Why a reload was rolled back.
    pub reason: Option<String>,
}

/// One MQTT session as configured.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    /// Client id (the metric label `session`).
    pub id: String,
    /// The broker address(es), as configured (no credentials; a cluster's
    /// list joined by `, `).
    pub server: String,
}

/// The gateway's facts that change only on start and reload.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// `gateway.namespace`.
    pub namespace: String,
    /// The config file.
    pub config_path: String,
    /// `gateway.stateDirectory`.
    pub state_directory: std::path::PathBuf,
    /// Content hash of the loaded config file.
    pub config_hash: Option<String>,
    /// When the running config was loaded.
    pub loaded_at: SystemTime,
    /// The last reload attempt, if any.
    pub last_reload: Option<ReloadOutcome>,
    /// The running sessions.
    pub sessions: Vec<SessionInfo>,
    /// Writes allowed (`gateway.metrics.commands`).
    pub commands: bool,
    /// The token writes need, if any.
    pub token: Option<Secret>,
}

/// Shared between the daemon (writes) and the listener (reads).
#[derive(Clone)]
pub(crate) struct GatewayInfo {
    started: Instant,
    facts: Arc<Mutex<Facts>>,
    /// Sorted by name; replaced as a whole after each apply (one pointer
    /// per device, nothing else kept for the page).
    devices: Arc<RwLock<Arc<[DeviceProbe]>>>,
}

impl GatewayInfo {
    /// Facts of the config `resolved`, loaded from `path` with `hash`.
    pub(crate) fn new(path: &std::path::Path, resolved: &Resolved, hash: Option<String>) -> Self {
        let facts = Facts {
            namespace: String::new(),
            config_path: path.display().to_string(),
            state_directory: resolved.gateway.state_directory.clone(),
            config_hash: None,
            loaded_at: SystemTime::now(),
            last_reload: None,
            sessions: Vec::new(),
            commands: false,
            token: None,
        };
        let info = Self {
            started: Instant::now(),
            facts: Arc::new(Mutex::new(facts)),
            devices: Arc::new(RwLock::new(Arc::from(Vec::new()))),
        };
        info.loaded(resolved, hash);
        info
    }

    /// A config was loaded and applied (start-up or a reload).
    pub(crate) fn loaded(&self, resolved: &Resolved, hash: Option<String>) {
        if let Ok(mut f) = self.facts.lock() {
            f.namespace = resolved.gateway.namespace.clone();
            f.state_directory = resolved.gateway.state_directory.clone();
            f.config_hash = hash;
            f.loaded_at = SystemTime::now();
            f.sessions = resolved
                .sessions
                .iter()
                .map(|s| SessionInfo {
                    id: s.client_id.clone(),
                    server: s
                        .servers()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                })
                .collect();
            f.commands = resolved.gateway.metrics_commands;
            f.token = resolved.gateway.metrics_token.clone();
        }
    }

    /// A reload was tried: `errors` is `None` when it succeeded.
    pub(crate) fn reloaded(&self, errors: Option<&ConfigErrors>) {
        if let Ok(mut f) = self.facts.lock() {
            f.last_reload = Some(ReloadOutcome {
                result: if errors.is_some() { "invalid" } else { "ok" },
                at: SystemTime::now(),
                errors: errors.map(|e| e.0.clone()).unwrap_or_default(),
                reason: None,
            });
        }
    }

    /// The last reload was rolled back at the end of its probation.
    pub(crate) fn rolled_back(&self, reason: &str) {
        if let Ok(mut f) = self.facts.lock() {
            f.last_reload = Some(ReloadOutcome {
                result: "rolled_back",
                at: SystemTime::now(),
                errors: Vec::new(),
                reason: Some(reason.to_owned()),
            });
        }
    }

    /// The running devices changed: `probes` sorted by name.
    pub(crate) fn set_devices(&self, probes: Vec<DeviceProbe>) {
        if let Ok(mut d) = self.devices.write() {
            *d = Arc::from(probes);
        }
    }

    /// The running devices, sorted by name.
    pub(crate) fn devices(&self) -> Arc<[DeviceProbe]> {
        self.devices
            .read()
            .map(|d| Arc::clone(&d))
            .unwrap_or_else(|_| Arc::from(Vec::new()))
    }

    /// A copy of the current facts.
    pub(crate) fn facts(&self) -> Option<Facts> {
        self.facts.lock().ok().map(|f| f.clone())
    }

    /// Seconds since the daemon started.
    pub(crate) fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}
