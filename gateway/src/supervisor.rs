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
use crate::mqtt::SessionHandle;
use crate::telemetry::{Health, Metrics};

pub(crate) mod plan;

pub(crate) use plan::DiffSummary;
use plan::{DeviceStep, Plan, SessionStep};

/// Devices started together before their session's backlog is looked at.
const START_BATCH: usize = 50;
/// The backlog (messages) a session may have before more devices start.
const START_BACKLOG: usize = 200;
/// The longest a batch of devices waits for its session (to connect, or to
/// send); after one batch waited this long, the others do not wait.
const START_BATCH_WAIT: Duration = Duration::from_millis(50);

/// How long stopping sessions may take to flush on a clean stop.
const SESSION_STOP_DEADLINE: Duration = Duration::from_secs(3);

/// The running topology.
pub(crate) struct Supervisor {
    metrics: Metrics,
    health: Health,
    buses: Buses,
    sessions: HashMap<SessionSettings, SessionHandle>,
    devices: HashMap<String, RunningDevice>,
    /// Home Assistant discovery configs (northbound dialect).
    discovery: crate::northbound::homeassistant::Discovery,
}

impl Supervisor {
    /// An empty topology; call [`Supervisor::apply`] with the first config.
    pub(crate) fn new(metrics: Metrics, health: Health) -> Self {
        Self {
            metrics,
            health,
            buses: Buses::new(),
            sessions: HashMap::new(),
            devices: HashMap::new(),
            discovery: Default::default(),
        }
    }

    /// Moves the running topology from `old` (what runs now; empty at
    /// start-up) to `new`: plans the steps ([`plan::plan`]) and executes
    /// them.
    pub(crate) async fn apply(&mut self, old: &Resolved, new: &Resolved) -> DiffSummary {
        let plan = plan::plan(old, new);
        self.execute(&plan, old, new).await;
        plan.summary(old, new)
    }

    /// Executes `plan` (made from `old` and `new`).
    pub(crate) async fn execute(&mut self, plan: &Plan, old: &Resolved, new: &Resolved) {
        let new_by_name: HashMap<&str, &Arc<DeviceSettings>> =
            new.devices.iter().map(|d| (d.name.as_str(), d)).collect();

        // 1. Per device: keep (sharing the new config's copy, equal but for
        //    the session index), note a move, collect what stops and starts.
        let mut stop: Vec<(RunningDevice, bool)> = Vec::new();
        let mut start: Vec<Arc<DeviceSettings>> = Vec::new();
        let mut moving: Vec<&str> = Vec::new();
        for (name, step) in &plan.devices {
            let next = new_by_name.get(name.as_str());
            match step {
                DeviceStep::Keep | DeviceStep::Move => match (self.devices.remove(name), next) {
                    (Some(running), Some(next)) => {
                        self.devices
                            .insert(name.clone(), running.with_settings(Arc::clone(next)));
                        if *step == DeviceStep::Move {
                            moving.push(name);
                        }
                    }
                    // Configured but not running (it had no session): start it.
                    (None, Some(next)) => start.push(Arc::clone(next)),
                    (Some(running), None) => stop.push((running, true)),
                    (None, None) => {}
                },
                DeviceStep::Restart { clear_retained } => {
                    if let Some(running) = self.devices.remove(name) {
                        stop.push((running, *clear_retained));
                    }
                    start.extend(next.map(|d| Arc::clone(d)));
                }
                DeviceStep::Stop => {
                    if let Some(running) = self.devices.remove(name) {
                        stop.push((running, true));
                    }
                }
                DeviceStep::Start => start.extend(next.map(|d| Arc::clone(d))),
            }
        }
        // Starts in the new config's order.
        let order: HashMap<&str, usize> = new
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        start.sort_by_key(|d| order.get(d.name.as_str()).copied());

        // 2. Stop what goes, all at once, while its session is still up.
        join_all(stop.into_iter().map(|(d, clear)| d.stop(clear))).await;

        // 3. Start new sessions. One that replaces a session with the same
        //    client id takes over its undelivered messages before connecting.
        let mut successors = Vec::new();
        for step in &plan.sessions {
            let (n, replaces) = match *step {
                SessionStep::Start(n) => (n, None),
                SessionStep::Replace { old: o, new: n } => (n, old.sessions.get(o)),
                SessionStep::Stop(_) => continue,
            };
            let Some(s) = new.sessions.get(n) else {
                continue;
            };
            let handle = match replaces.filter(|o| self.sessions.contains_key(*o)) {
                Some(o) => {
                    let (handle, takeover) = crate::northbound::spawn_successor(
                        s.clone(),
                        self.metrics.clone(),
                        self.health.clone(),
                    );
                    successors.push((o.clone(), takeover, handle.clone()));
                    handle
                }
                None => {
                    crate::northbound::spawn(s.clone(), self.metrics.clone(), self.health.clone())
                }
            };
            self.sessions.insert(s.clone(), handle);
        }

        // 4. Point moved devices at their new session.
        for name in moving {
            if let Some(d) = self.devices.get(name) {
                if let Some(h) = new
                    .sessions
                    .get(d.settings.session)
                    .and_then(|s| self.sessions.get(s))
                {
                    d.move_to(h.clone()).await;
                }
            }
        }

        // 5. Retire sessions no longer used: hand over to a successor, or
        //    stop cleanly.
        for step in &plan.sessions {
            let o = match *step {
                SessionStep::Replace { old: o, .. } | SessionStep::Stop(o) => o,
                SessionStep::Start(_) => continue,
            };
            let Some(s) = old.sessions.get(o) else {
                continue;
            };
            let Some(handle) = self.sessions.remove(s) else {
                continue;
            };
            match successors.iter().position(|(o, _, _)| o == s) {
                Some(i) => {
                    let (_, takeover, next) = successors.swap_remove(i);
                    let left = handle.hand_over(SESSION_STOP_DEADLINE, &next).await;
                    if left.is_none() {
                        // Nothing is lost: the old session passes its
                        // messages on (or leaves them on disk) when it ends.
                        tracing::warn!(
                            session = %s.client_id,
                            "reload: the old MQTT session did not hand over within {}s; the new one starts now and takes its messages when it ends",
                            SESSION_STOP_DEADLINE.as_secs()
                        );
                        self.metrics
                            .mqtt_handover_timeouts
                            .with_label_values(&[&s.client_id])
                            .inc();
                    }
                    let _ = takeover.send(left.unwrap_or_default());
                }
                None => handle.stop(SESSION_STOP_DEADLINE).await,
            }
        }

        // 6. Start what is new or changed, in batches no faster than their
        //    sessions send the first messages (`$meta`, `$state`, the first
        //    state): a thousand devices starting at once would otherwise
        //    queue all of theirs at the same moment (~2.5 KB per device).
        //    Once a batch waited in vain (the broker down or slow), the rest
        //    start without waiting: a reload is applied within a second.
        let mut pacing = true;
        for (i, settings) in start.into_iter().enumerate() {
            let Some(session) = new
                .sessions
                .get(settings.session)
                .and_then(|s| self.sessions.get(s))
                .cloned()
            else {
                tracing::error!(device = %settings.name, "no MQTT session for device; not started");
                continue;
            };
            if pacing && i > 0 && i % START_BATCH == 0 {
                pacing = session
                    .pace_new_devices(START_BACKLOG, START_BATCH_WAIT)
                    .await;
            }
            let name = settings.name.clone();
            let running =
                device::spawn(settings, session, self.buses.clone(), self.metrics.clone());
            self.devices.insert(name, running);
        }

        // 7. Dialects: Home Assistant discovery configs for what now runs.
        self.discovery.apply(new, &self.sessions).await;
    }

    /// The gateway's own session (the first of `current`'s sessions, which
    /// carries `G/$health`), when it runs.
    pub(crate) fn gateway_session(&self, current: &Resolved) -> Option<SessionHandle> {
        current
            .sessions
            .first()
            .and_then(|s| self.sessions.get(s))
            .cloned()
    }

    /// Handles to every running device, sorted by name (for the status page).
    pub(crate) fn probes(&self) -> Vec<device::DeviceProbe> {
        let mut probes: Vec<_> = self.devices.values().map(RunningDevice::probe).collect();
        probes.sort_unstable_by(|a, b| a.settings.name.cmp(&b.settings.name));
        probes
    }

    /// Clean stop: every device publishes `offline`, then every session
    /// publishes its will payload, flushes and disconnects.
    pub(crate) async fn shutdown(&mut self) {
        let devices: Vec<RunningDevice> = self.devices.drain().map(|(_, d)| d).collect();
        join_all(devices.into_iter().map(|d| d.stop(false))).await;
        let sessions: Vec<SessionHandle> = self.sessions.drain().map(|(_, s)| s).collect();
        join_all(sessions.into_iter().map(|s| s.stop(SESSION_STOP_DEADLINE))).await;
    }
}

/// Awaits all futures concurrently (each on its own task).
async fn join_all<F>(futs: impl IntoIterator<Item = F>)
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
