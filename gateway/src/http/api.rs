//! The JSON of `/api/v1/status`, `/api/v1/devices` and
//! `/api/v1/devices/<name>` (documented in docs/http-api.md). Device state
//! comes from the device tasks themselves, asked on request: nothing is kept
//! per device for the page.

use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::info::GatewayInfo;
use crate::device::{DeviceProbe, Snapshot, Unanswered};
use crate::health::{num, rfc3339, HealthReport};
use crate::telemetry::{Health, Metrics};

/// How long a listing waits for the devices' answers in all.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// Seconds from `t` to now (0 when `t` is in the future), 0.1 s precision.
fn age_seconds(t: SystemTime) -> f64 {
    let age = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    (age * 10.0).round() / 10.0
}

/// `GET /api/v1/status`: the [`HealthReport`] with what the page adds
/// (drivers, config path, structured reload errors, whether writes are allowed).
pub(crate) fn status(info: &GatewayInfo, metrics: &Metrics, health: &Health) -> Value {
    let (Some(facts), Some(report)) = (info.facts(), HealthReport::gather(info, metrics, health))
    else {
        return json!({ "error": "status unavailable" });
    };
    let sessions: Vec<Value> = report
        .sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "server": s.server,
                "connected": s.connected,
                "storeMessages": s.store_messages,
                "storeBytes": s.store_bytes,
                "storeOldestAgeSeconds": num(s.store_oldest_age_seconds),
                "dropped": s.dropped,
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "drivers": fieldgate_drivers::enabled_drivers(),
        "namespace": report.namespace,
        "uptimeSeconds": report.uptime_seconds,
        "status": report.status(),
        "reasons": report.reasons,
        "warnings": report.warnings,
        "clockSynchronized": report.clock_synchronized,
        "config": config(&report),
        "sessions": sessions,
        "devices": { "total": report.devices_total, "online": report.devices_online },
        "stateDirectory": { "freeBytes": report.state_free_bytes },
        "commands": {
            "enabled": facts.commands,
            "tokenRequired": facts.commands && facts.token.is_some(),
        },
    })
}

fn config(report: &HealthReport) -> Value {
    let last_reload = report.last_reload.as_ref().map(|r| {
        let mut errors: Vec<Value> = r
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
        if let Some(reason) = &r.reason {
            errors.push(json!({
                "file": null, "line": null, "column": null, "path": null,
                "message": reason, "text": reason,
            }));
        }
        json!({ "result": r.result, "at": rfc3339(r.at), "errors": errors })
    });
    json!({
        "path": report.config_path,
        "hash": report.config_hash,
        "loadedAt": rfc3339(report.loaded_at),
        "lastReload": last_reload,
    })
}

/// `GET /api/v1/devices`: every running device, sorted by name. All devices
/// are asked at once; one that does not answer within [`SNAPSHOT_WAIT`] is
/// listed with `"status": "busy"`.
pub(crate) async fn devices(info: &GatewayInfo) -> Value {
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
pub(crate) async fn one_device(info: &GatewayInfo, name: &str) -> Option<Value> {
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
pub(crate) fn find(info: &GatewayInfo, name: &str) -> Option<DeviceProbe> {
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
