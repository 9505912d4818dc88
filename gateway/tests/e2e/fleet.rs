//! End-to-end tests of running a fleet (CONTRACT §13): the retained
//! `G/$health` document against a real Mosquitto (its schema, that it
//! agrees with `/healthz`, `/api/v1/status` and `/metrics`, that it comes at
//! once on a change and every `gateway.healthInterval`), and the
//! `fieldgate status` command against a running gateway.

use crate::support;

use std::time::Duration;

use serde_json::Value;
use support::{Gateway, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(15);
const HEALTH: &str = "fieldgate/fleet/$health";

/// A gateway on the broker at `port`, metrics on `mport`; `devices` YAML.
fn config(port: u16, mport: u16, interval: &str, devices: &str) -> String {
    format!(
        r#"gateway:
  namespace: fleet
  stateDirectory: "{{dir}}/state"
  healthInterval: {interval}
  metrics: {{ listen: "127.0.0.1:{mport}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{port}
    maxReconnectInterval: 1s
devices:
{devices}"#
    )
}

const FAN: &str = "  - { name: fan, driver: dummy, model: fan, syncInterval: 200ms }\n";

/// A Modbus device at a port where nothing listens: never online.
fn dead_plc() -> String {
    format!(
        r#"  - name: plc
    driver: modbus
    syncInterval: 200ms
    timeout: 500ms
    protocol: {{ tcp: {{ endpoint: "127.0.0.1:{}" }}, unitId: 1 }}
    properties:
      - {{ name: t, register: holding, address: 0, type: uint16 }}
"#,
        support::free_port()
    )
}

fn get_json(mport: u16, path: &str) -> Value {
    let (code, body) = support::http_get(&format!("127.0.0.1:{mport}"), path).expect("HTTP GET");
    assert!(code == 200 || code == 503, "{path}: HTTP {code}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The value of the first /metrics line starting with `prefix`.
fn metric_line(mport: u16, prefix: &str) -> Option<String> {
    support::http_get(&format!("127.0.0.1:{mport}"), "/metrics")
        .ok()?
        .1
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_owned)
}

/// The next `G/$health` document matching `pred`.
async fn health(probe: &mut MqttProbe, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let m = probe
        .wait_for(WAIT, |m| {
            m.topic == HEALTH && !m.payload.is_empty() && pred(&m.json())
        })
        .await
        .unwrap_or_else(|| panic!("no G/$health with {what}"));
    m.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_topic_has_the_contract_schema_and_agrees_with_the_http_views() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let mport = support::free_port();
    let mut probe = MqttProbe::connect(port).await;
    probe.subscribe(HEALTH, 1).await;
    let gw = Gateway::start(&config(port, mport, "60s", FAN));

    let doc = health(&mut probe, "the fan online, connected", |d| {
        d["devices"]["online"] == 1 && d["status"] == "ok"
    })
    .await;
    let mut keys: Vec<&str> = doc
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "clockSynchronized",
            "config",
            "devices",
            "reasons",
            "sessions",
            "stateDirectory",
            "status",
            "uptimeSeconds",
            "version"
        ]
    );
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["reasons"], serde_json::json!([]));
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["uptimeSeconds"].is_u64(), "{doc}");
    assert_eq!(doc["devices"], serde_json::json!({"total": 1, "online": 1}));
    let session = &doc["sessions"]["fieldgate-fleet"];
    assert_eq!(session["connected"], true, "{doc}");
    assert_eq!(
        session["server"],
        format!("tcp://127.0.0.1:{port}"),
        "{doc}"
    );
    assert!(session["storeMessages"].is_i64(), "{doc}");
    assert!(session["storeOldestAgeSeconds"].is_number(), "{doc}");
    assert!(
        doc["stateDirectory"]["freeBytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{doc}"
    );
    assert!(doc["clockSynchronized"].is_boolean(), "{doc}");
    assert!(doc["config"]["loadedAt"].is_string(), "{doc}");
    assert_eq!(doc["config"]["lastReload"], Value::Null, "{doc}");

    // One source: /healthz, /api/v1/status and /metrics say the same.
    let healthz = get_json(mport, "/healthz");
    assert_eq!(healthz["status"], doc["status"]);
    assert_eq!(healthz["reasons"], doc["reasons"]);
    let status = get_json(mport, "/api/v1/status");
    assert_eq!(status["config"]["hash"], doc["config"]["hash"]);
    assert_eq!(status["devices"], doc["devices"]);
    assert_eq!(status["sessions"][0]["id"], "fieldgate-fleet");
    let hash = doc["config"]["hash"].as_str().expect("a config hash");
    let info = metric_line(mport, "fieldgate_config_info{").expect("config info metric");
    assert!(info.contains(hash), "{info} vs {hash}");
    assert_eq!(
        metric_line(
            mport,
            &format!(r#"fieldgate_mqtt_connected{{server="tcp://127.0.0.1:{port}",session="fieldgate-fleet"}}"#)
        )
        .as_deref(),
        Some(format!(r#"fieldgate_mqtt_connected{{server="tcp://127.0.0.1:{port}",session="fieldgate-fleet"}} 1"#).as_str())
    );

    // Retained: a subscriber that comes later gets it at once.
    let mut late = MqttProbe::connect(port).await;
    late.subscribe(HEALTH, 1).await;
    let m = late
        .wait_topic(WAIT, HEALTH)
        .await
        .expect("a retained G/$health");
    assert!(m.retain, "G/$health is retained");

    // A change of status comes at once (the interval is 60 s): a device that
    // never comes online, added by a reload.
    gw.replace_config(&config(port, mport, "60s", &[FAN, &dead_plc()].concat()));
    let doc = health(&mut probe, "the new device", |d| d["devices"]["total"] == 2).await;
    assert_eq!(doc["devices"]["online"], 1, "{doc}");
    assert_eq!(doc["config"]["lastReload"]["result"], "ok", "{doc}");
    assert_eq!(doc["config"]["lastReload"]["errors"], serde_json::json!([]));

    // An invalid edit shows as the last reload's result, with its errors.
    gw.replace_config("devices: [ { name: x } ]\n");
    let doc = health(&mut probe, "the invalid reload", |d| {
        d["config"]["lastReload"]["result"] == "invalid"
    })
    .await;
    let errors = doc["config"]["lastReload"]["errors"]
        .as_array()
        .expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("devices[0]"))),
        "{doc}"
    );

    // A short interval: the document comes again with the status unchanged.
    gw.replace_config(&config(port, mport, "1s", FAN));
    let first = health(&mut probe, "the new config", |d| {
        d["devices"]["total"] == 1 && d["config"]["lastReload"]["result"] == "ok"
    })
    .await;
    let again = health(&mut probe, "a periodic publish", |d| {
        d["uptimeSeconds"].as_u64() > first["uptimeSeconds"].as_u64()
    })
    .await;
    assert_eq!(again["status"], first["status"]);
    assert_eq!(again["config"]["hash"], first["config"]["hash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fieldgate_status_summarises_the_running_gateway() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let mport = support::free_port();
    let gw = Gateway::start(&config(port, mport, "60s", &[FAN, &dead_plc()].concat()));
    let url = format!("http://127.0.0.1:{mport}");
    assert!(
        support::wait_until_async(WAIT, || {
            metric_line(mport, r#"fieldgate_device_up{device="fan"} 1"#).is_some()
                && metric_line(
                    mport,
                    &format!(r#"fieldgate_mqtt_connected{{server="tcp://127.0.0.1:{port}",session="fieldgate-fleet"}} 1"#),
                )
                .is_some()
        })
        .await,
        "the gateway never got ready: {}",
        gw.log()
    );
    let config_file = gw.config_path().to_str().expect("utf-8 path");
    // The plc has tried and failed at least once.
    let mut out = String::new();
    let ok = support::wait_until_async(WAIT, || {
        let o = support::fieldgate(&["status", "-c", config_file]);
        out = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.code() == Some(0) && out.contains("plc") && out.contains("offline")
    })
    .await;
    assert!(ok, "{out}");
    for want in [
        "status      ok",
        "fieldgate-fleet",
        "connected",
        "backlog ",
        "2 total, 1 online, 1 not online",
        "modbus",
        "last reload none since start",
        "state dir",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    let plc = out
        .lines()
        .find(|l| l.trim_start().starts_with("plc"))
        .expect("plc line");
    assert!(
        plc.contains("offline") && plc.len() > "  plc modbus offline".len(),
        "the error: {plc}"
    );
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("fan ")),
        "online without errors is only counted:\n{out}"
    );

    // --url, --all and --json.
    let o = support::fieldgate(&["status", "--url", &url, "--all"]);
    let all = String::from_utf8_lossy(&o.stdout);
    assert!(
        all.lines().any(|l| l.trim_start().starts_with("fan ")),
        "{all}"
    );
    let o = support::fieldgate(&["status", "--url", &url, "--json"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let mut docs = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"));
    assert_eq!(docs.next().expect("status")["namespace"], "fleet");
    assert!(docs.next().expect("devices")["devices"].is_array());

    // A reload shows, and a disconnected session makes it exit 3.
    gw.replace_config(&config(port, mport, "60s", FAN));
    let mut broker = broker;
    assert!(
        support::wait_until_async(WAIT, || {
            let o = support::fieldgate(&["status", "--url", &url]);
            String::from_utf8_lossy(&o.stdout).contains("last reload ok")
        })
        .await
    );
    broker.stop();
    let mut code = None;
    assert!(
        support::wait_until_async(WAIT, || {
            let o = support::fieldgate(&["status", "--url", &url]);
            out = String::from_utf8_lossy(&o.stdout).into_owned();
            code = o.status.code();
            code == Some(3)
        })
        .await,
        "exit {code:?}: {out}"
    );
    assert!(
        out.contains("NOT CONNECTED") && out.contains("reason"),
        "{out}"
    );

    // No daemon there: exit 1 and a message.
    drop(gw);
    let o = support::fieldgate(&["status", "--url", &url]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot reach the daemon"));
}
