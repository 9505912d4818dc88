//! End-to-end tests of the Modbus driver: the real `fieldgate` binary against
//! tokio-modbus servers started by the test (TCP, RTU on a pseudo-terminal
//! pair, RTU over TCP), observed through a Mosquitto started by the test, the
//! servers' register storage and `/metrics`.

use crate::modbus_server;
use crate::support;

use std::time::Duration;

use modbus_server::{rtu_over_tcp_server, rtu_server, tcp_server, Storage};
use serde_json::{json, Value};
use support::{Gateway, Message, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(15);

/// A config with the given devices (YAML list items), talking to `broker`;
/// `metrics` is `""` or `127.0.0.1:<port>`.
fn config(broker: u16, metrics: &str, devices: &str) -> String {
    format!(
        r#"gateway:
  namespace: test
  metrics: {{ listen: "{metrics}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{broker}
    maxReconnectInterval: 2s
devices:
{devices}
"#
    )
}

/// A probe subscribed to everything under `fieldgate/test/`.
async fn probe(broker: &Mosquitto) -> MqttProbe {
    let p = MqttProbe::connect(broker.port()).await;
    p.subscribe("fieldgate/test/#", 1).await;
    p
}

fn topic(device: &str) -> String {
    format!("fieldgate/test/{device}")
}

/// The next state of `device` that satisfies `pred` (parsed JSON).
async fn state_where(
    probe: &mut MqttProbe,
    device: &str,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let t = topic(device);
    probe
        .wait_for(WAIT, |m| m.topic == t && pred(&m.json()))
        .await
        .unwrap_or_else(|| panic!("no matching state on {t}"))
        .json()
}

/// The next state of `device` in which every property reads and nothing errs.
async fn good_state(probe: &mut MqttProbe, device: &str) -> Value {
    state_where(probe, device, |v| v.get("errors").is_none()).await
}

/// Waits until `T/$state` of `device` says `payload`.
async fn wait_status(probe: &mut MqttProbe, device: &str, payload: &str) {
    let t = format!("{}/$state", topic(device));
    let got = probe
        .wait_for(WAIT, |m: &Message| {
            m.topic == t && m.payload_str() == payload
        })
        .await;
    assert!(got.is_some(), "{t} never said {payload}");
}

/// Waits until each `(device, payload)` was said on its `T/$state`, in any order.
async fn wait_statuses(probe: &mut MqttProbe, expected: &[(&str, &str)]) {
    let mut missing: Vec<(String, &str)> = expected
        .iter()
        .map(|(d, p)| (format!("{}/$state", topic(d)), *p))
        .collect();
    let done = probe
        .wait_for(WAIT, |m| {
            missing.retain(|(t, p)| !(m.topic == *t && m.payload_str() == *p));
            missing.is_empty()
        })
        .await;
    assert!(done.is_some(), "never seen: {missing:?}");
}

/// Sends `$set` to `device` and returns the parsed result.
async fn set(probe: &mut MqttProbe, device: &str, payload: Value) -> Value {
    let t = topic(device);
    let result_topic = format!("{t}/$set/result");
    probe
        .publish(&format!("{t}/$set"), payload.to_string(), 1, false)
        .await;
    probe
        .wait_for(WAIT, |m| m.topic == result_topic)
        .await
        .unwrap_or_else(|| panic!("no $set/result for {payload}"))
        .json()
}

/// The sample of `family` with every label in `labels` from `/metrics`.
fn metric(port: u16, family: &str, labels: &[&str]) -> Option<f64> {
    let (_, body) = support::http_get(&format!("127.0.0.1:{port}"), "/metrics").ok()?;
    body.lines()
        .filter(|l| l.starts_with(family) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Register image of every type and order the values test reads.
fn typed_storage() -> Storage {
    Storage::with(|t| {
        t.holding.extend([
            (0, 0x41AC), // float32 21.5, ABCD
            (1, 0x0000),
            (2, 43),     // int16 43 × 0.5 = 21.5
            (3, 1),      // enum: middle
            (4, 0x7960), // int32 −100000 (0xFFFE7960), CDAB
            (5, 0xFFFE),
            (6, 0x0201), // uint32 0x01020304, BADC
            (7, 0x0403),
            (8, 0x0807), // uint64 0x0102030405060708, DCBA
            (9, 0x0605),
            (10, 0x0403),
            (11, 0x0201),
            (12, 0xFE05), // high byte int8 −2, low byte uint8 5
            (13, 0x0008), // bit 3 set, bit 0 clear
            (14, 0x4647), // "FG-01" in 4 registers, NUL padded
            (15, 0x2D30),
            (16, 0x3100),
            (17, 0x0000),
        ]);
        t.input.extend([
            (0, 0x3FF4), // float64 1.25, ABCD
            (1, 0),
            (2, 0),
            (3, 0),
            (4, 500), // uint16 500 × 0.5 − 1 = 249
            (5, 0xDEAD),
            (6, 0xBEEF),
        ]);
        t.coils.insert(0, true);
        t.discrete.insert(0, false);
    })
}

/// A device reading `typed_storage` through `protocol` (YAML flow mapping).
fn typed_device(name: &str, protocol: &str) -> String {
    format!(
        r#"  - name: {name}
    driver: modbus
    syncInterval: 200ms
    timeout: 500ms
    protocol: {protocol}
    properties:
      - {{ name: temperature, register: holding, address: 0, type: float32 }}
      - {{ name: setpoint, register: holding, address: 2, type: int16, scale: 0.5, writable: true, min: 5, max: 30 }}
      - {{ name: gear, register: holding, address: 3, type: uint16, writable: true, enum: {{ 0: slow, 1: middle, 2: fast }} }}
      - {{ name: delta, register: holding, address: 4, type: int32, byteOrder: CDAB, writable: true }}
      - {{ name: id, register: holding, address: 6, type: uint32, byteOrder: BADC }}
      - {{ name: total, register: holding, address: 8, type: uint64, byteOrder: DCBA, writable: true }}
      - {{ name: trim, register: holding, address: 12, type: int8, byte: high, writable: true }}
      - {{ name: level, register: holding, address: 12, type: uint8, byte: low }}
      - {{ name: alarm, register: holding, address: 13, bit: 3, type: bool }}
      - {{ name: flag, register: holding, address: 13, bit: 0, type: bool, writable: true }}
      - {{ name: tag, register: holding, address: 14, quantity: 4, type: string }}
      - {{ name: energy, register: input, address: 0, type: float64, offset: 10 }}
      - {{ name: flow, register: input, address: 4, type: uint16, scale: 0.5, offset: -1 }}
      - {{ name: raw, register: input, address: 5, quantity: 2, type: bytes }}
      - {{ name: pump, register: coil, address: 0, type: bool, writable: true }}
      - {{ name: door, register: discreteInput, address: 0, type: bool }}
"#
    )
}

/// What `typed_storage` publishes.
fn typed_expected() -> Value {
    json!({
        "temperature": 21.5,
        "setpoint": 21.5,
        "gear": "middle",
        "delta": -100000,
        "id": 0x01020304u32,
        "total": 0x0102030405060708u64,
        "trim": -2,
        "level": 5,
        "alarm": true,
        "flag": false,
        "tag": "FG-01",
        "energy": 11.25,
        "flow": 249.0,
        "raw": "deadbeef",
        "pump": true,
        "door": false,
    })
}

/// Writes one of everything and checks the registers, the result and the
/// read-back state.
async fn write_everything(probe: &mut MqttProbe, device: &str, storage: &Storage) {
    let result = set(
        probe,
        device,
        json!({
            "$id": "w1",
            "setpoint": 22.5,
            "gear": "fast",
            "delta": -2,
            "total": 0x0A0B0C0D0E0F1011u64,
            "trim": 7,
            "flag": true,
            "pump": false,
        }),
    )
    .await;
    assert_eq!(result["ok"], json!(true), "{result}");
    assert_eq!(result["$id"], json!("w1"));
    assert_eq!(result["errors"], json!({}));
    assert_eq!(result["applied"]["gear"], json!("fast"), "{result}");
    // The registers on the server.
    assert_eq!(storage.holding(2), Some(45), "setpoint: 22.5 / 0.5");
    assert_eq!(storage.holding(3), Some(2), "gear: fast");
    // −2i32 = 0xFFFFFFFE, CDAB: low word first.
    assert_eq!(
        (storage.holding(4), storage.holding(5)),
        (Some(0xFFFE), Some(0xFFFF))
    );
    // DCBA: fully little-endian.
    let total: Vec<Option<u16>> = (8..12).map(|a| storage.holding(a)).collect();
    assert_eq!(
        total,
        [Some(0x1110), Some(0x0F0E), Some(0x0D0C), Some(0x0B0A)]
    );
    // int8 into the high byte; the low byte (`level`) is kept.
    assert_eq!(storage.holding(12), Some(0x0705));
    // bit 0 set; bit 3 (`alarm`) is kept.
    assert_eq!(storage.holding(13), Some(0x0009));
    assert_eq!(storage.coil(0), Some(false));
    // The read-back republishes the new values.
    let s = state_where(probe, device, |v| v["properties"]["gear"] == json!("fast")).await;
    let p = &s["properties"];
    assert_eq!(p["setpoint"], json!(22.5));
    assert_eq!(p["delta"], json!(-2));
    assert_eq!(p["total"], json!(0x0A0B0C0D0E0F1011u64));
    assert_eq!(p["trim"], json!(7));
    assert_eq!(p["level"], json!(5));
    assert_eq!(p["flag"], json!(true));
    assert_eq!(p["alarm"], json!(true));
    assert_eq!(p["pump"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_publishes_every_type_and_writes_land_in_the_registers() {
    let storage = typed_storage();
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let broker = Mosquitto::start();
    let mut probe = probe(&broker).await;
    let protocol = format!("{{ tcp: {{ endpoint: \"{}\" }}, unitId: 1 }}", server.addr);
    let gw = Gateway::start(&config(broker.port(), "", &typed_device("plc", &protocol)));
    wait_status(&mut probe, "plc", "online").await;
    let s = good_state(&mut probe, "plc").await;
    assert_eq!(s["name"], json!("plc"));
    assert_eq!(s["properties"], typed_expected());
    write_everything(&mut probe, "plc", &storage).await;
    // Validation failures write nothing.
    let before = storage.holding(2);
    let r = set(&mut probe, "plc", json!({ "setpoint": 99, "level": 1 })).await;
    assert_eq!(r["ok"], json!(false));
    assert!(r["errors"]["setpoint"].is_string(), "{r}");
    assert!(r["errors"]["level"].is_string(), "{r}");
    assert_eq!(storage.holding(2), before);
    drop(gw);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_publishes_and_writes() {
    let storage = typed_storage();
    let server = rtu_over_tcp_server(storage.clone(), "127.0.0.1:0").await;
    let broker = Mosquitto::start();
    let mut probe = probe(&broker).await;
    let protocol = format!(
        "{{ rtuOverTcp: {{ endpoint: \"{}\" }}, unitId: 3 }}",
        server.addr
    );
    let _gw = Gateway::start(&config(
        broker.port(),
        "",
        &typed_device("bridge", &protocol),
    ));
    wait_status(&mut probe, "bridge", "online").await;
    assert_eq!(
        good_state(&mut probe, "bridge").await["properties"],
        typed_expected()
    );
    write_everything(&mut probe, "bridge", &storage).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_on_a_pty_a_silent_unit_leaves_its_neighbour_publishing() {
    let storage = typed_storage();
    storage.0.lock().unwrap().silent_units.insert(9);
    let (path, _slave, server) = rtu_server(storage.clone());
    let broker = Mosquitto::start();
    let mut probe = probe(&broker).await;
    let rtu = format!(
        "rtu: {{ port: \"{path}\", baudRate: 19200, dataBits: 8, parity: none, stopBits: 1 }}"
    );
    let devices = format!(
        "{}  - name: ghost
    driver: modbus
    syncInterval: 200ms
    timeout: 300ms
    protocol: {{ {rtu}, unitId: 9 }}
    properties:
      - {{ name: r0, register: holding, address: 0, type: uint16 }}
",
        typed_device("meter", &format!("{{ {rtu}, unitId: 1 }}"))
    );
    let _gw = Gateway::start(&config(broker.port(), "", &devices));
    wait_statuses(&mut probe, &[("meter", "online"), ("ghost", "offline")]).await;
    assert_eq!(
        good_state(&mut probe, "meter").await["properties"],
        typed_expected()
    );
    // The neighbour keeps publishing complete states while the silent unit
    // keeps timing out (about 15 states in 3 s at 200 ms; a stalled bus
    // would publish none).
    let window = probe.collect_for(Duration::from_secs(3)).await;
    let meter = topic("meter");
    let good = window
        .iter()
        .filter(|m| m.topic == meter && m.json()["properties"] == typed_expected())
        .count();
    assert!(good >= 3, "only {good} complete meter states in 3 s");
    assert!(
        !window
            .iter()
            .any(|m| m.topic == "fieldgate/test/ghost/$state" && m.payload_str() == "online"),
        "the silent unit never answers"
    );
    // Writes share the line with the polls of both units.
    write_everything(&mut probe, "meter", &storage).await;
    server.abort();
}

/// One holding register, polled fast.
fn counter_device(name: &str, endpoint: &str, unit: u8, timeout: &str) -> String {
    format!(
        r#"  - name: {name}
    driver: modbus
    syncInterval: 100ms
    timeout: {timeout}
    protocol: {{ tcp: {{ endpoint: "{endpoint}" }}, unitId: {unit} }}
    properties:
      - {{ name: r0, register: holding, address: 0, type: uint16, writable: true }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_goes_offline_and_restarted_comes_back() {
    let storage = Storage::with(|t| {
        t.holding.insert(0, 7);
    });
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let addr = server.addr;
    let broker = Mosquitto::start();
    let mut probe = probe(&broker).await;
    let _gw = Gateway::start(&config(
        broker.port(),
        "",
        &counter_device("tank", &addr.to_string(), 1, "300ms"),
    ));
    wait_status(&mut probe, "tank", "online").await;
    let s = good_state(&mut probe, "tank").await;
    assert_eq!(s["properties"], json!({ "r0": 7 }));
    server.stop().await;
    wait_status(&mut probe, "tank", "offline").await;
    storage.0.lock().unwrap().holding.insert(0, 8);
    let server = tcp_server(storage.clone(), &addr.to_string()).await;
    wait_status(&mut probe, "tank", "online").await;
    state_where(&mut probe, "tank", |v| {
        v["properties"] == json!({ "r0": 8 })
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_absent_at_start_comes_online_when_it_appears() {
    let port = support::free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let broker = Mosquitto::start();
    let mut probe = probe(&broker).await;
    let _gw = Gateway::start(&config(
        broker.port(),
        "",
        &counter_device("late", &endpoint, 1, "300ms"),
    ));
    wait_status(&mut probe, "late", "offline").await;
    let storage = Storage::with(|t| {
        t.holding.insert(0, 42);
    });
    let server = tcp_server(storage, &endpoint).await;
    wait_status(&mut probe, "late", "online").await;
    let s = good_state(&mut probe, "late").await;
    assert_eq!(s["properties"], json!({ "r0": 42 }));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_refused_writes_and_timeouts_stay_with_their_device_and_count() {
    let storage = Storage::with(|t| {
        t.holding.insert(0, 7);
        t.silent_units.insert(2);
    });
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let endpoint = server.addr.to_string();
    let broker = Mosquitto::start();
    let mut probe = probe(&broker).await;
    let metrics = support::free_port();
    let devices = format!(
        r#"  - name: meter
    driver: modbus
    syncInterval: 100ms
    timeout: 500ms
    protocol: {{ tcp: {{ endpoint: "{endpoint}" }}, unitId: 1 }}
    properties:
      - {{ name: good, register: holding, address: 0, type: uint16, writable: true }}
      - {{ name: missing, register: holding, address: 1, type: uint16, writable: true }}
{}"#,
        counter_device("dead", &endpoint, 2, "200ms")
    );
    let _gw = Gateway::start(&config(
        broker.port(),
        &format!("127.0.0.1:{metrics}"),
        &devices,
    ));
    // The merged request 0..=1 fails with an exception; the planner splits it
    // so that only the property at fault reports the error.
    wait_statuses(&mut probe, &[("meter", "online"), ("dead", "offline")]).await;
    let s = state_where(&mut probe, "meter", |v| v["properties"]["good"] == json!(7)).await;
    assert_eq!(s["properties"], json!({ "good": 7 }));
    assert_eq!(
        s["errors"],
        json!({ "missing": "illegal data address (2)" })
    );
    // A write the device refuses: the one before it is applied, the refusal
    // carries the device's reason.
    let r = set(&mut probe, "meter", json!({ "good": 5, "missing": 1 })).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert_eq!(r["applied"], json!({ "good": 5 }));
    let reason = r["errors"]["missing"].as_str().unwrap_or_default();
    assert!(reason.contains("illegal data address (2)"), "{r}");
    assert_eq!(storage.holding(0), Some(5));
    state_where(&mut probe, "meter", |v| v["properties"]["good"] == json!(5)).await;
    // The meter stays online through all of it.
    let window = probe.collect_for(Duration::from_millis(500)).await;
    assert!(!window
        .iter()
        .any(|m| m.topic == "fieldgate/test/meter/$state" && m.payload_str() == "offline"));
    // Errors are counted by kind.
    let counted = support::wait_until_async(WAIT, || {
        let exc = metric(
            metrics,
            "fieldgate_device_read_errors_total",
            &["device=\"meter\"", "kind=\"exception\""],
        );
        let tmo = metric(
            metrics,
            "fieldgate_device_read_errors_total",
            &["device=\"dead\"", "kind=\"timeout\""],
        );
        exc.is_some_and(|v| v > 0.0) && tmo.is_some_and(|v| v > 0.0)
    })
    .await;
    assert!(counted, "read errors by kind not counted in /metrics");
    server.stop().await;
}

#[test]
fn check_prints_the_read_plan_with_requests_per_cycle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("modbus.yaml");
    let planned = typed_device("plc", r#"{ tcp: { endpoint: "127.0.0.1:1502" } }"#);
    let single = typed_device(
        "plc-single",
        r#"{ tcp: { endpoint: "127.0.0.1:1502" }, maxRegistersPerRead: 1 }"#,
    );
    std::fs::write(&path, config(1883, "", &format!("{planned}{single}"))).expect("write config");
    let out = support::fieldgate(&["check", "-c", path.to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plans: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(" per cycle"))
        .collect();
    // Merged: one request per data table.
    assert_eq!(
        plans[0],
        "read plan: 4 requests per cycle (holding 0..=17, input 0..=6, coil 0..=0, discreteInput 0..=0)",
        "{stdout}"
    );
    assert!(
        stdout.contains("FC3 holding 0..=17 (18 registers): temperature, setpoint"),
        "{stdout}"
    );
    // `maxRegistersPerRead: 1`: one request per register, but a value never
    // straddles two requests, and values sharing a register share its read.
    assert!(
        plans[1].starts_with("read plan: 14 requests per cycle"),
        "{stdout}"
    );
}

#[test]
fn example_modbus_configs_pass_check() {
    for name in ["modbus-tcp.yaml", "modbus-rtu.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../configs")
            .join(name);
        let out = support::fieldgate(&["check", "-c", path.to_str().expect("utf-8 path")]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(" per cycle ("),
            "{name}: no read plan in\n{stdout}"
        );
    }
}
