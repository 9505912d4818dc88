//! Owns the running MQTT sessions and devices and applies a new effective
//! config as a diff: unchanged devices and sessions are left untouched,
//! changed ones restart, removed ones stop (and clear their retained topics),
//! added ones start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fieldgate_drivers::Buses;

use crate::config::resolved::{DeviceSettings, Resolved, SessionSettings};
use crate::device::{self, RunningDevice};
use crate::mqtt::{self, SessionHandle};
use crate::telemetry::{Health, Metrics};

/// How long stopping sessions may take to flush on a clean stop.
const SESSION_STOP_DEADLINE: Duration = Duration::from_secs(3);

/// The running topology.
pub struct Supervisor {
    metrics: Metrics,
    health: Health,
    buses: Buses,
    sessions: HashMap<SessionSettings, SessionHandle>,
    devices: HashMap<String, RunningDevice>,
}

/// What a config change does, device by device (for logs and tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DiffSummary {
    /// Devices started that did not exist.
    pub added: Vec<String>,
    /// Devices restarted with new settings.
    pub changed: Vec<String>,
    /// Devices stopped and cleared.
    pub removed: Vec<String>,
    /// Devices left running untouched.
    pub unchanged: Vec<String>,
    /// Sessions (client ids) started.
    pub sessions_started: Vec<String>,
    /// Sessions (client ids) stopped.
    pub sessions_stopped: Vec<String>,
}

/// Equal when a device can keep running: same settings and same session options.
fn same_device(
    a: &DeviceSettings,
    a_sess: &SessionSettings,
    b: &DeviceSettings,
    b_sess: &SessionSettings,
) -> bool {
    a_sess == b_sess
        && DeviceSettings {
            session: 0,
            ..a.clone()
        } == DeviceSettings {
            session: 0,
            ..b.clone()
        }
}

impl Supervisor {
    /// An empty topology; call [`Supervisor::apply`] with the first config.
    pub fn new(metrics: Metrics, health: Health) -> Self {
        Self {
            metrics,
            health,
            buses: Buses::new(),
            sessions: HashMap::new(),
            devices: HashMap::new(),
        }
    }

    /// The session settings a running device uses.
    fn session_of(&self, device: &RunningDevice, old: &Resolved) -> Option<SessionSettings> {
        old.sessions.get(device.settings.session).cloned()
    }

    /// Moves the running topology from `old` (what runs now; empty at
    /// start-up) to `new`.
    pub async fn apply(&mut self, old: &Resolved, new: &Resolved) -> DiffSummary {
        let mut summary = DiffSummary::default();

        // Decide per device.
        let mut stop: Vec<(RunningDevice, bool)> = Vec::new();
        let mut start: Vec<Arc<DeviceSettings>> = Vec::new();
        let new_by_name: HashMap<&str, &DeviceSettings> =
            new.devices.iter().map(|d| (d.name.as_str(), d)).collect();
        let names: Vec<String> = self.devices.keys().cloned().collect();
        for name in names {
            let Some(running) = self.devices.remove(&name) else {
                continue;
            };
            let old_sess = self.session_of(&running, old);
            match new_by_name.get(name.as_str()) {
                None => {
                    summary.removed.push(name);
                    stop.push((running, true));
                }
                Some(next) => {
                    let next_sess = new.sessions.get(next.session);
                    let keep = match (old_sess.as_ref(), next_sess) {
                        (Some(a), Some(b)) => same_device(&running.settings, a, next, b),
                        _ => false,
                    };
                    if keep {
                        summary.unchanged.push(name.clone());
                        // Keep the new index into `new.sessions`.
                        let mut settings = (*running.settings).clone();
                        settings.session = next.session;
                        self.devices
                            .insert(name, running.with_settings(Arc::new(settings)));
                    } else {
                        // A new topic or session means the old retained topics go.
                        let clear = running.settings.message.topic != next.message.topic
                            || old_sess.as_ref() != next_sess;
                        summary.changed.push(name);
                        stop.push((running, clear));
                        start.push(Arc::new((*next).clone()));
                    }
                }
            }
        }
        for d in &new.devices {
            if !self.devices.contains_key(&d.name) && !summary.changed.contains(&d.name) {
                summary.added.push(d.name.clone());
                start.push(Arc::new(d.clone()));
            }
        }

        // Stop what goes, all at once; their sessions are still up.
        futures_join_all(stop.into_iter().map(|(d, clear)| d.stop(clear))).await;

        // Sessions: start new ones, stop ones no longer used.
        for s in &new.sessions {
            if !self.sessions.contains_key(s) {
                summary.sessions_started.push(s.client_id.clone());
                let handle = mqtt::spawn(s.clone(), self.metrics.clone(), self.health.clone());
                self.sessions.insert(s.clone(), handle);
            }
        }
        let gone: Vec<SessionSettings> = self
            .sessions
            .keys()
            .filter(|s| !new.sessions.contains(s))
            .cloned()
            .collect();
        for s in gone {
            if let Some(handle) = self.sessions.remove(&s) {
                summary.sessions_stopped.push(s.client_id.clone());
                handle.stop(SESSION_STOP_DEADLINE).await;
            }
        }

        // Start what is new or changed.
        for settings in start {
            let Some(session) = new
                .sessions
                .get(settings.session)
                .and_then(|s| self.sessions.get(s))
                .cloned()
            else {
                tracing::error!(device = %settings.name, "no MQTT session for device; not started");
                continue;
            };
            let name = settings.name.clone();
            let running =
                device::spawn(settings, session, self.buses.clone(), self.metrics.clone());
            self.devices.insert(name, running);
        }
        summary
    }

    /// Clean stop: every device publishes `offline`, then every session
    /// publishes its will payload, flushes and disconnects.
    pub async fn shutdown(&mut self) {
        let devices: Vec<RunningDevice> = self.devices.drain().map(|(_, d)| d).collect();
        futures_join_all(devices.into_iter().map(|d| d.stop(false))).await;
        let sessions: Vec<SessionHandle> = self.sessions.drain().map(|(_, s)| s).collect();
        futures_join_all(sessions.into_iter().map(|s| s.stop(SESSION_STOP_DEADLINE))).await;
    }
}

/// Awaits all futures concurrently (each on its own task).
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while let Some(res) = set.join_next().await {
        if let Err(e) = res {
            tracing::error!("stopping a task failed: {e}");
        }
    }
}
