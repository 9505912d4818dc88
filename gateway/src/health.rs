//! The gateway's health, from one source: [`HealthReport`] gathers the
//! facts once (status and reasons, version, uptime, config and last reload,
//! devices online, sessions and their stores, free space in the state
//! directory, clock) from the same registries `/metrics` renders. `/healthz`,
//! `/api/v1/status` and the retained `G/$health` document (CONTRACT §13) are
//! views of it; [`spawn_publisher`] publishes the latter periodically and at
//! once when the status changes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::http::info::{GatewayInfo, ReloadOutcome};
use crate::mqtt::{OutMsg, SessionHandle, SessionInput};
use crate::telemetry::{Health, Metrics};

/// How often the publisher looks for a change of status.
const CHECK: Duration = Duration::from_secs(1);

/// One MQTT session's figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionReport {
    /// Client id (the metric label `session`).
    pub id: String,
    /// The broker it talks to.
    pub server: String,
    /// Connected now (`fieldgate_mqtt_connected`).
    pub connected: bool,
    /// Messages waiting in its store (`fieldgate_mqtt_store_messages`).
    pub store_messages: i64,
    /// Bytes waiting in its store (`fieldgate_mqtt_store_bytes`).
    pub store_bytes: i64,
    /// Age of the oldest waiting message (`fieldgate_mqtt_store_oldest_age_seconds`).
    pub store_oldest_age_seconds: f64,
    /// Messages dropped, all reasons (`fieldgate_mqtt_dropped_total`).
    pub dropped: u64,
}

/// The gateway's health at one moment: the one struct every health view
/// (`/healthz`, `/api/v1/status`, `G/$health`, `fieldgate status`) reads.
#[derive(Debug, Clone)]
pub(crate) struct HealthReport {
    /// Why the gateway is degraded; empty when healthy.
    pub reasons: Vec<String>,
    /// Problems that do not degrade it (e.g. an unsynchronised clock).
    pub warnings: Vec<String>,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// `gateway.namespace`.
    pub namespace: String,
    /// The config file.
    pub config_path: String,
    /// Content hash of the running config.
    pub config_hash: Option<String>,
    /// When the running config was loaded (or came back after a rollback).
    pub loaded_at: SystemTime,
    /// The last reload attempt, if any.
    pub last_reload: Option<ReloadOutcome>,
    /// Devices running.
    pub devices_total: usize,
    /// Of those, online (`fieldgate_device_up` = 1).
    pub devices_online: usize,
    /// Every session, in config order.
    pub sessions: Vec<SessionReport>,
    /// Free bytes (for an unprivileged user) where the state directory is;
    /// `None` when it cannot be read.
    pub state_free_bytes: Option<u64>,
    /// The system clock is trusted for timestamps.
    pub clock_synchronized: bool,
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A float as JSON (`null` when not finite).
pub(crate) fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Free bytes for an unprivileged user on the file system holding `dir`
/// (its nearest existing ancestor).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    crate::disk::free_bytes(existing).ok()
}

impl HealthReport {
    /// Gathers the report from the daemon's shared state.
    pub(crate) fn gather(info: &GatewayInfo, metrics: &Metrics, health: &Health) -> Option<Self> {
        let facts = info.facts()?;
        let devices = info.devices();
        let devices_online = devices
            .iter()
            .filter(|p| metrics.devices.is_up(&p.settings.name) == Some(true))
            .count();
        let sessions = facts
            .sessions
            .iter()
            .map(|s| session(metrics, &s.id, &s.server))
            .collect();
        Some(Self {
            reasons: health.reasons(),
            warnings: health.warnings(),
            uptime_seconds: info.uptime_seconds(),
            namespace: facts.namespace,
            config_path: facts.config_path,
            config_hash: facts.config_hash,
            loaded_at: facts.loaded_at,
            last_reload: facts.last_reload,
            devices_total: devices.len(),
            devices_online,
            sessions,
            state_free_bytes: free_bytes(&facts.state_directory),
            clock_synchronized: crate::clock::is_synchronized(),
        })
    }

    /// `ok` or `degraded`.
    pub(crate) fn status(&self) -> &'static str {
        if self.reasons.is_empty() {
            "ok"
        } else {
            "degraded"
        }
    }

    /// The `/healthz` status code and JSON body.
    pub(crate) fn healthz(&self) -> (StatusCode, String) {
        let mut body = json!({ "status": self.status(), "reasons": self.reasons });
        if !self.warnings.is_empty() {
            body["warnings"] = json!(self.warnings);
        }
        let code = if self.reasons.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body.to_string())
    }

    /// `config.lastReload` of `G/$health`: errors as their text.
    fn last_reload_json(&self) -> Value {
        match &self.last_reload {
            None => Value::Null,
            Some(r) => {
                let mut errors: Vec<Value> =
                    r.errors.iter().map(|e| json!(e.to_string())).collect();
                if let Some(reason) = &r.reason {
                    errors.push(json!(reason));
                }
                json!({ "result": r.result, "at": rfc3339(r.at), "errors": errors })
            }
        }
    }

    /// The `G/$health` document (CONTRACT §13).
    pub(crate) fn document(&self) -> Value {
        let sessions: Map<String, Value> = self
            .sessions
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    json!({
                        "connected": s.connected,
                        "server": s.server,
                        "storeMessages": s.store_messages,
                        "storeOldestAgeSeconds": num(s.store_oldest_age_seconds),
                    }),
                )
            })
            .collect();
        json!({
            "status": self.status(),
            "reasons": self.reasons,
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSeconds": self.uptime_seconds,
            "config": {
                "hash": self.config_hash,
                "loadedAt": rfc3339(self.loaded_at),
                "lastReload": self.last_reload_json(),
            },
            "devices": { "total": self.devices_total, "online": self.devices_online },
            "sessions": sessions,
            "stateDirectory": { "freeBytes": self.state_free_bytes },
            "clockSynchronized": self.clock_synchronized,
        })
    }

    /// What counts as a change of status for `G/$health`: everything but
    /// the figures that move all the time (uptime, ages, backlog, free space).
    fn status_key(&self) -> Value {
        let connected: Vec<(&str, bool)> = self
            .sessions
            .iter()
            .map(|s| (s.id.as_str(), s.connected))
            .collect();
        json!([
            self.reasons,
            self.devices_total,
            self.devices_online,
            connected,
            self.config_hash,
            self.last_reload_json(),
            self.clock_synchronized,
        ])
    }
}

/// One session's figures, read from its metric series.
fn session(metrics: &Metrics, id: &str, server: &str) -> SessionReport {
    let gauge = |g: &prometheus::IntGaugeVec| {
        g.get_metric_with_label_values(&[id])
            .map(|m| m.get())
            .unwrap_or(0)
    };
    let oldest = metrics
        .mqtt_store_oldest_age
        .get_metric_with_label_values(&[id])
        .map(|m| m.get())
        .unwrap_or(0.0);
    // The dropped counter has a `reason` label: sum the session's series.
    use prometheus::core::Collector as _;
    let dropped = metrics
        .mqtt_dropped
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "session" && l.value() == id)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum();
    // The server in use (of a cluster list) and the connection, from the
    // session's `fieldgate_mqtt_connected{session,server}` series; before
    // its first series, the configured server(s).
    let (server, connected) = metrics
        .mqtt_connection(id)
        .unwrap_or_else(|| (server.to_owned(), false));
    SessionReport {
        id: id.to_owned(),
        server,
        connected,
        store_messages: gauge(&metrics.mqtt_store_messages),
        store_bytes: gauge(&metrics.mqtt_store_bytes),
        store_oldest_age_seconds: (oldest * 10.0).round() / 10.0,
        dropped,
    }
}

/// Where and how often `G/$health` goes.
#[derive(Clone)]
pub(crate) struct Target {
    /// `G/$health`.
    pub topic: Arc<str>,
    /// The gateway's session.
    pub session: SessionHandle,
    /// `gateway.healthInterval` (zero: on a change only).
    pub interval: Duration,
}

/// Tells the publisher where to publish (after every applied config).
pub(crate) struct Publisher {
    target: watch::Sender<Option<Target>>,
}

impl Publisher {
    /// The config now running publishes through `target`.
    pub(crate) fn set_target(&self, target: Option<Target>) {
        self.target.send_replace(target);
    }
}

/// Starts the `G/$health` publisher: retained, QoS 1, every interval and at
/// once when the status changes (looked at every second) or the target
/// changes.
pub(crate) fn spawn_publisher(
    info: GatewayInfo,
    metrics: Metrics,
    health: Health,
    cancel: CancellationToken,
) -> Publisher {
    let (tx, mut rx) = watch::channel::<Option<Target>>(None);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Value, tokio::time::Instant)> = None;
        loop {
            let forced = tokio::select! {
                _ = cancel.cancelled() => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    true
                }
                _ = tick.tick() => false,
            };
            let Some(target) = rx.borrow_and_update().clone() else {
                continue;
            };
            let Some(report) = HealthReport::gather(&info, &metrics, &health) else {
                continue;
            };
            let key = report.status_key();
            let now = tokio::time::Instant::now();
            let due = match &last {
                None => true,
                Some((k, at)) => {
                    *k != key
                        || (!target.interval.is_zero()
                            && now.duration_since(*at) >= target.interval)
                }
            };
            if !(due || forced) {
                continue;
            }
            target
                .session
                .send(SessionInput::Publish(OutMsg {
                    topic: Arc::clone(&target.topic),
                    payload: Bytes::from(report.document().to_string()),
                    qos: 1,
                    retain: true,
                    correlation: None,
                    props: None,
                }))
                .await;
            last = Some((key, now));
        }
    });
    Publisher { target: tx }
}

/// The topic of the health document: `G/$health`.
pub(crate) fn topic(gateway_topic: &str) -> String {
    format!("{gateway_topic}/$health")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> HealthReport {
        HealthReport {
            reasons: Vec::new(),
            warnings: Vec::new(),
            uptime_seconds: 12,
            namespace: "t".into(),
            config_path: "/etc/fieldgate/config.yaml".into(),
            config_hash: Some("00ff".into()),
            loaded_at: SystemTime::UNIX_EPOCH,
            last_reload: None,
            devices_total: 3,
            devices_online: 2,
            sessions: vec![SessionReport {
                id: "fieldgate-t".into(),
                server: "tcp://127.0.0.1:1883".into(),
                connected: true,
                store_messages: 7,
                store_bytes: 700,
                store_oldest_age_seconds: 1.5,
                dropped: 0,
            }],
            state_free_bytes: Some(1 << 30),
            clock_synchronized: true,
        }
    }

    #[test]
    fn the_document_has_the_contract_schema() {
        let d = report().document();
        let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "status",
            "reasons",
            "version",
            "uptimeSeconds",
            "config",
            "devices",
            "sessions",
            "stateDirectory",
            "clockSynchronized",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(d["status"], "ok");
        assert_eq!(d["devices"], json!({"total": 3, "online": 2}));
        assert_eq!(
            d["sessions"]["fieldgate-t"],
            json!({"connected": true, "server": "tcp://127.0.0.1:1883", "storeMessages": 7, "storeOldestAgeSeconds": 1.5})
        );
        assert_eq!(d["config"]["hash"], "00ff");
        assert_eq!(d["config"]["loadedAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(d["config"]["lastReload"], Value::Null);
        assert_eq!(d["stateDirectory"]["freeBytes"], 1u64 << 30);
        assert_eq!(d["clockSynchronized"], true);
    }

    #[test]
    fn a_rollback_shows_with_its_reason() {
        let mut r = report();
        r.last_reload = Some(ReloadOutcome {
            result: "rolled_back",
            at: SystemTime::UNIX_EPOCH,
            errors: Vec::new(),
            reason: Some("0 of 1 online".into()),
        });
        let d = r.document();
        assert_eq!(
            d["config"]["lastReload"],
            json!({"result": "rolled_back", "at": "1970-01-01T00:00:00.000Z", "errors": ["0 of 1 online"]})
        );
    }

    #[test]
    fn healthz_and_the_document_agree() {
        let mut r = report();
        let (code, body) = r.healthz();
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, r#"{"status":"ok","reasons":[]}"#);
        r.reasons
            .push("MQTT session fieldgate-t not connected".into());
        let (code, body) = r.healthz();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_str(&body).unwrap();
        let d = r.document();
        assert_eq!(body["status"], d["status"]);
        assert_eq!(body["reasons"], d["reasons"]);
    }

    #[test]
    fn moving_figures_are_not_a_change_of_status() {
        let a = report();
        let mut b = a.clone();
        b.uptime_seconds += 60;
        b.sessions[0].store_messages += 1;
        b.sessions[0].store_oldest_age_seconds += 1.0;
        b.state_free_bytes = Some(1);
        assert_eq!(a.status_key(), b.status_key());
        b.devices_online -= 1;
        assert_ne!(a.status_key(), b.status_key());
        let mut c = a.clone();
        c.sessions[0].connected = false;
        assert_ne!(a.status_key(), c.status_key());
    }

    #[test]
    fn free_bytes_of_a_missing_directory_is_that_of_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("not/yet");
        assert!(free_bytes(&missing).is_some());
        assert_eq!(
            free_bytes(&missing).is_some(),
            free_bytes(dir.path()).is_some()
        );
    }
}
