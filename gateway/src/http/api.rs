//! The JSON of `/api/v1/status`, `/api/v1/devices` and
//! `/api/v1/devices/<name>` (documented in docs/http-api.md). Device state
//! comes from the device tasks themselves, asked on request: nothing is kept
//! per device for the page.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::info::{Facts, GatewayInfo};
use crate::device::{DeviceProbe, Snapshot, Unanswered};
use crate::telemetry::{Health, Metrics};

/// How long a listing waits for the devices' answers in all.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// RFC 3339 UTC with milliseconds.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Seconds from `t` to now (0 when `t` is in the future), 0.1 s precision.
fn age_seconds(t: SystemTime) -> f64 {
    let age = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    (age * 10.0).round() / 10.0
}

/// A float as JSON (`null` when not finite).
fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// `GET /api/v1/status`.
pub fn status(info: &GatewayInfo, metrics: &Metrics, health: &Health) -> Value {
    let Some(facts) = info.facts() else {
        return json!({ "error": "status unavailable" });
    };
    let reasons = health.reasons();
    let sessions: Vec<Value> = facts
        .sessions
        .iter()
        .map(|s| session(metrics, &s.id, &s.server))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "drivers": fieldgate_drivers::enabled_drivers(),
        "namespace": facts.namespace,
        "uptimeSeconds": info.uptime_seconds(),
        "status": if reasons.is_empty() { "ok" } else { "degraded" },
        "reasons": reasons,
        "warnings": health.warnings(),
        "clockSynchronized": crate::clock::is_synchronized(),
        "config": config(&facts),
        "sessions": sessions,
        "devices": { "total": info.devices().len() },
        "commands": {
            "enabled": facts.commands,
            "tokenRequired": facts.commands && facts.token.is_some(),
        },
    })
}

fn config(facts: &Facts) -> Value {
    let last_reload = facts.last_reload.as_ref().map(|r| {
        let errors: Vec<Value> = r
            .errors
            .iter()
            .map(|e| {
                json!({
                    "file": e.file,
                    "line": e.line,
                    "column": e.column,
                    "path": e.key_path,
                    "message": e.message,
                    "text": e.to_string(),
                })
            })
            .collect();
        json!({ "result": r.result, "at": rfc3339(r.at), "errors": errors })
    });
    json!({
        "path": facts.config_path,
        "hash": facts.config_hash,
        "loadedAt": rfc3339(facts.loaded_at),
        "lastReload": last_reload,
    })
}

/// One session's live figures, read from its metric series.
fn session(metrics: &Metrics, id: &str, server: &str) -> Value {
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
    let dropped = metrics
        .mqtt_dropped
        .get_metric_with_label_values(&[id])
        .map(|m| m.get())
        .unwrap_or(0);
    // The server in use (of a cluster list), else the configured one(s).
    let (server, connected) = metrics
        .mqtt_connection(id)
        .unwrap_or_else(|| (server.to_owned(), false));
    json!({
        "id": id,
        "server": server,
        "connected": connected,
        "storeMessages": gauge(&metrics.mqtt_store_messages),
        "storeBytes": gauge(&metrics.mqtt_store_bytes),
        "storeOldestAgeSeconds": num((oldest * 10.0).round() / 10.0),
        "dropped": dropped,
    })
}

/// `GET /api/v1/devices`: every running device, sorted by name. All devices
/// are asked at once; one that does not answer within [`SNAPSHOT_WAIT`] is
/// listed with `"status": "busy"`.
pub async fn devices(info: &GatewayInfo) -> Value {
    let probes = info.devices();
    let asked: Vec<_> = probes.iter().map(|p| (p, p.request_snapshot())).collect();
    let deadline = Instant::now() + SNAPSHOT_WAIT;
    let mut out = Vec::with_capacity(asked.len());
    for (probe, asked) in asked {
        let answer = match asked {
            Ok(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(_)) => Err(Unanswered::Stopped),
                Err(_) => Err(Unanswered::Timeout),
            },
            Err(e) => Err(e),
        };
        out.push(device(probe, answer));
    }
    json!({ "devices": out })
}

/// `GET /api/v1/devices/<name>`: `None` when no such device runs.
pub async fn one_device(info: &GatewayInfo, name: &str) -> Option<Value> {
    let probe = find(info, name)?;
    let answer = match probe.request_snapshot() {
        Ok(rx) => match tokio::time::timeout(SNAPSHOT_WAIT, rx).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => Err(Unanswered::Stopped),
            Err(_) => Err(Unanswered::Timeout),
        },
        Err(e) => Err(e),
    };
    Some(device(&probe, answer))
}

/// The running device named `name`.
pub fn find(info: &GatewayInfo, name: &str) -> Option<DeviceProbe> {
    let probes = info.devices();
    let i = probes
        .binary_search_by(|p| p.settings.name.as_str().cmp(name))
        .ok()?;
    probes.get(i).cloned()
}

/// One device: its settings (name, driver, topic, property metadata) and,
/// when it answered, its state.
fn device(probe: &DeviceProbe, answer: Result<Snapshot, Unanswered>) -> Value {
    let s = &probe.settings;
    let mut d = Map::new();
    d.insert("name".into(), json!(s.name));
    d.insert("driver".into(), json!(s.driver.as_str()));
    d.insert("topic".into(), json!(s.message.topic));
    d.insert(
        "syncIntervalSeconds".into(),
        num(s.spec.sync_interval.as_secs_f64()),
    );
    let snapshot = match answer {
        Ok(snapshot) => Some(snapshot),
        Err(why) => {
            let status = match why {
                Unanswered::Busy | Unanswered::Timeout => "busy",
                Unanswered::Stopped => "stopped",
            };
            d.insert("status".into(), json!(status));
            d.insert("online".into(), Value::Null);
            d.insert("error".into(), Value::Null);
            d.insert("lastReading".into(), Value::Null);
            d.insert("lastReadingAgeSeconds".into(), Value::Null);
            None
        }
    };
    if let Some(snap) = &snapshot {
        let status = match snap.online {
            Some(true) => "online",
            Some(false) => "offline",
            None => "starting",
        };
        d.insert("status".into(), json!(status));
        d.insert("online".into(), json!(snap.online));
        d.insert(
            "error".into(),
            match (&snap.online, &snap.offline_reason) {
                (Some(false), Some(r)) => json!(r),
                _ => Value::Null,
            },
        );
        d.insert(
            "lastReading".into(),
            snap.last_reading.map_or(Value::Null, |t| json!(rfc3339(t))),
        );
        d.insert(
            "lastReadingAgeSeconds".into(),
            snap.last_reading
                .map_or(Value::Null, |t| num(age_seconds(t))),
        );
    }
    let mut errors = Map::new();
    let props: Vec<Value> = s
        .properties
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut m = Map::new();
            m.insert("name".into(), json!(&*p.name));
            m.insert("type".into(), json!(p.data_type.as_str()));
            if let Some(u) = p.unit() {
                m.insert("unit".into(), json!(u));
            }
            if let Some(desc) = p.description() {
                m.insert("description".into(), json!(desc));
            }
            m.insert("writable".into(), json!(p.writable));
            if !p.enum_entries().is_empty() {
                let labels: Vec<&str> = p.enum_entries().iter().map(|e| e.label.as_str()).collect();
                m.insert("enum".into(), json!(labels));
            }
            if let Some(x) = p.min() {
                m.insert("min".into(), num(x));
            }
            if let Some(x) = p.max() {
                m.insert("max".into(), num(x));
            }
            match snapshot.as_ref().and_then(|snap| snap.values.get(i)) {
                Some(Some(Ok(v))) => {
                    m.insert("value".into(), v.clone());
                }
                Some(Some(Err(e))) => {
                    m.insert("error".into(), json!(e));
                    errors.insert(p.name.to_string(), json!(e));
                }
                _ => {}
            }
            Value::Object(m)
        })
        .collect();
    d.insert("properties".into(), Value::Array(props));
    d.insert("errors".into(), Value::Object(errors));
    Value::Object(d)
}
