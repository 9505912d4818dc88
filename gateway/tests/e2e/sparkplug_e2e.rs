//! Sparkplug B 3.0 end to end (CONTRACT §10): the real `fieldgate` binary
//! against a Sparkplug host we did not write — pysparkplug (PyPI, in a venv
//! cached under /var/cache/fieldgate-test/sparkplug, made by
//! tests/sparkplug/ensure-venv.sh) driven by tests/sparkplug/host.py — over
//! a Mosquitto and a tokio-modbus server started by the test. The host
//! decodes every message, checks the bdSeq/seq/alias rules, sends Rebirth,
//! DCMDs and STATE; the test kills the gateway and the broker.

use crate::support;

use crate::modbus_server;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use support::{Gateway, Mosquitto};

const WAIT: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python: installs pysparkplug once (the script says so).
/// A host that cannot be installed fails the test.
fn host_python() -> String {
    let out = Command::new("bash")
        .arg(repo().join("tests/sparkplug/ensure-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/sparkplug/ensure-venv.sh");
    assert!(
        out.status.success(),
        "cannot install the Sparkplug host (pysparkplug): ensure-venv.sh failed"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The pysparkplug host process and its line protocol.
struct Host {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Host {
    fn start(port: u16, group: &str, node: &str, primary: Option<&str>) -> Self {
        let mut cmd = Command::new(host_python());
        cmd.arg(repo().join("tests/sparkplug/host.py"))
            .arg(port.to_string())
            .arg(group)
            .arg(node);
        if let Some(h) = primary {
            cmd.arg(h).arg("primary");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the pysparkplug host");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut host = Self {
            child,
            stdin,
            lines,
        };
        let ready = host.read(WAIT);
        assert_eq!(ready["ready"], true, "host did not start: {ready}");
        host
    }

    fn read(&mut self, timeout: Duration) -> Value {
        let line = self
            .lines
            .recv_timeout(timeout)
            .expect("the pysparkplug host did not answer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("host said {line:?}: {e}"))
    }

    fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin, "{req}").expect("write to host");
        self.stdin.flush().unwrap();
        self.read(WAIT + Duration::from_secs(30))
    }

    /// The first message of `kind` (for `device`) after message `after`.
    fn wait(&mut self, kind: &str, device: Option<&str>, after: i64) -> Value {
        let mut req =
            json!({"cmd": "wait", "type": kind, "after": after, "timeout": WAIT.as_secs()});
        if let Some(d) = device {
            req["device"] = json!(d);
        }
        let got = self.call(req);
        assert!(
            got.get("timeout").is_none(),
            "no {kind} {device:?} after #{after}: {got}"
        );
        assert!(got.get("error").is_none(), "host could not decode: {got}");
        got
    }

    fn wait_with(&mut self, mut req: Value) -> Value {
        req["cmd"] = json!("wait");
        req["timeout"] = json!(WAIT.as_secs());
        let got = self.call(req.clone());
        assert!(got.get("timeout").is_none(), "nothing matched {req}: {got}");
        got
    }

    fn check(&mut self) -> Value {
        let c = self.call(json!({"cmd": "check"}));
        assert_eq!(c["ok"], true, "Sparkplug rules broken: {c:#}");
        eprintln!("host check: {c}");
        c
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn index(m: &Value) -> i64 {
    m["index"].as_i64().unwrap()
}

fn metric<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no metric {name} in {m}"))
}

fn bdseq(m: &Value) -> i64 {
    metric(m, "bdSeq")["value"].as_i64().unwrap()
}

fn config(
    port: u16,
    state: &Path,
    metrics: u16,
    modbus: std::net::SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"gateway:
  namespace: plant-a
  stateDirectory: {state}
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
mqtt:
  client: {{ server: "tcp://127.0.0.1:{port}", maxReconnectInterval: 1s }}
  message: {{ format: sparkplugB }}
  sparkplug: {{ groupId: plant-a, edgeNodeId: gw-01{extra} }}
devices:
  - {{ name: fan, driver: dummy, model: fan, syncInterval: 200ms }}
  - name: boiler
    driver: dummy
    syncInterval: 200ms
    properties:
      - {{ name: count, type: uint32, scale: 0.5, unit: l, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}
      - {{ name: level, type: int16, simulate: {{ constant: -3 }} }}
      - {{ name: ok, type: bool, simulate: {{ constant: true }} }}
  - name: plc
    driver: modbus
    syncInterval: 200ms
    timeout: 1s
    protocol: {{ tcp: {{ endpoint: "{modbus}" }}, unitId: 1 }}
    properties:
      - {{ name: setpoint, register: holding, address: 0, type: int16, scale: 0.1, writable: true, min: 5, max: 30, unit: "°C", description: boiler setpoint }}
      - {{ name: mode, register: holding, address: 1, type: uint16, writable: true, enum: {{ 0: off, 1: heating, 2: eco }} }}
      - {{ name: pump, register: coil, address: 0, type: bool, writable: true }}
"#,
        state = state.display()
    )
}

fn rejected(metrics: u16, device: &str) -> u64 {
    let (_, body) =
        support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics").unwrap_or_default();
    let needle =
        format!("fieldgate_device_set_commands_total{{device=\"{device}\",result=\"rejected\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparkplug_host_sees_births_data_commands_rebirth_and_death() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let storage = modbus_server::Storage::with(|t| {
        t.holding.insert(0, 215); // 21.5 °C
        t.holding.insert(1, 1); // heating
        t.coils.insert(0, false);
    });
    let server = modbus_server::tcp_server(storage.clone(), "127.0.0.1:0").await;
    let state = tempfile::tempdir().unwrap();
    let metrics = support::free_port();
    let mut host = Host::start(port, "plant-a", "gw-01", None);
    let yaml = config(port, state.path(), metrics, server.addr, "");
    let mut gw = Gateway::start(&yaml);

    // Births: NBIRTH with bdSeq 0 (fresh state directory), then DBIRTHs
    // with every property: datatypes after scaling, properties, aliases.
    let nbirth = host.wait("NBIRTH", None, -1);
    assert_eq!(nbirth["seq"], 0);
    assert_eq!(bdseq(&nbirth), 0);
    assert_eq!(metric(&nbirth, "Node Control/Rebirth")["value"], false);
    assert_eq!(
        metric(&nbirth, "Node Control/Rebirth")["datatype"],
        "BOOLEAN"
    );
    let plc = host.wait("DBIRTH", Some("plc"), index(&nbirth));
    let sp = metric(&plc, "setpoint");
    assert_eq!(sp["datatype"], "DOUBLE", "a scaled int16 is a Double");
    assert_eq!(sp["value"], 21.5);
    assert_eq!(sp["properties"]["engUnit"], "°C");
    assert_eq!(sp["properties"]["description"], "boiler setpoint");
    assert_eq!(sp["properties"]["writable"], true);
    assert_eq!(sp["properties"]["min"], 5.0);
    let mode = metric(&plc, "mode");
    assert_eq!(mode["datatype"], "STRING", "an enum is a String metric");
    assert_eq!(mode["value"], "heating");
    assert_eq!(mode["properties"]["enum"], "off,heating,eco");
    assert_eq!(metric(&plc, "pump")["datatype"], "BOOLEAN");
    let boiler = host.wait("DBIRTH", Some("boiler"), index(&nbirth));
    assert_eq!(metric(&boiler, "count")["datatype"], "DOUBLE");
    assert_eq!(metric(&boiler, "count")["properties"]["engUnit"], "l");
    assert_eq!(metric(&boiler, "level")["datatype"], "INT16");
    assert_eq!(metric(&boiler, "level")["value"], -3);
    assert_eq!(metric(&boiler, "ok")["datatype"], "BOOLEAN");
    let fan = host.wait("DBIRTH", Some("fan"), index(&nbirth));
    assert_eq!(metric(&fan, "gear")["datatype"], "STRING");
    // DDATA by alias, resolved by pysparkplug through the DBIRTH.
    let data = host.wait_with(
        json!({"type": "DDATA", "device": "boiler", "after": index(&boiler),
        "metric": {"name": "count"}}),
    );
    assert!(metric(&data, "count")["alias"].is_u64());

    // Rebirth: a new NBIRTH with seq 0 and the same bdSeq, then DBIRTHs.
    let before = host.call(json!({"cmd": "count"}))["count"]
        .as_i64()
        .unwrap()
        - 1;
    host.call(json!({"cmd": "rebirth"}));
    let reborn = host.wait("NBIRTH", None, before);
    assert_eq!(reborn["seq"], 0);
    assert_eq!(bdseq(&reborn), 0, "a rebirth keeps the connection's bdSeq");
    let plc2 = host.wait("DBIRTH", Some("plc"), index(&reborn));
    host.wait("DBIRTH", Some("fan"), index(&reborn));

    // DCMD through the `$set` path: by name, by alias, an enum label.
    host.call(json!({"cmd": "dcmd", "device": "plc", "metrics": [
        {"name": "setpoint", "datatype": "DOUBLE", "value": 23.4}]}));
    host.wait_with(
        json!({"type": "DDATA", "device": "plc", "after": index(&plc2),
        "metric": {"name": "setpoint", "value": 23.4}}),
    );
    assert_eq!(storage.holding(0), Some(234), "the register was written");
    let alias = metric(&plc2, "mode")["alias"].clone();
    host.call(json!({"cmd": "dcmd", "device": "plc", "metrics": [
        {"alias": alias, "datatype": "STRING", "value": "eco"}]}));
    host.wait_with(
        json!({"type": "DDATA", "device": "plc", "after": index(&plc2),
        "metric": {"name": "mode", "value": "eco"}}),
    );
    assert_eq!(storage.holding(1), Some(2));
    host.call(json!({"cmd": "dcmd", "device": "plc", "metrics": [
        {"name": "pump", "datatype": "BOOLEAN", "value": true}]}));
    host.wait_with(
        json!({"type": "DDATA", "device": "plc", "after": index(&plc2),
        "metric": {"name": "pump", "value": true}}),
    );
    assert_eq!(storage.coil(0), Some(true));
    host.call(json!({"cmd": "dcmd", "device": "fan", "metrics": [
        {"name": "gear", "datatype": "STRING", "value": "fast"}]}));
    host.wait_with(
        json!({"type": "DDATA", "device": "fan", "after": index(&plc2),
        "metric": {"name": "gear", "value": "fast"}}),
    );

    // A refused DCMD writes nothing, is logged and counted.
    host.call(json!({"cmd": "dcmd", "device": "plc", "metrics": [
        {"name": "setpoint", "datatype": "DOUBLE", "value": 99.0}]}));
    host.call(json!({"cmd": "dcmd", "device": "plc", "metrics": [
        {"name": "mode", "datatype": "STRING", "value": "turbo"}]}));
    assert!(
        support::wait_until(WAIT, || rejected(metrics, "plc") >= 2),
        "refused DCMDs not counted as rejected"
    );
    assert!(gw.wait_for_log("Sparkplug DCMD refused", WAIT));
    assert_eq!(storage.holding(0), Some(234), "nothing written");
    assert_eq!(storage.holding(1), Some(2), "nothing written");

    // The gateway dies: the broker sends the will, NDEATH with the bdSeq
    // of the births.
    let before = host.call(json!({"cmd": "count"}))["count"]
        .as_i64()
        .unwrap()
        - 1;
    gw.kill9();
    let death = host.wait("NDEATH", None, before);
    assert_eq!(bdseq(&death), 0);
    assert_eq!(death["qos"], 1, "NDEATH is the will, QoS 1");
    assert_eq!(death["retain"], false);

    // A restart on the same state directory: bdSeq + 1.
    let _gw2 = Gateway::start(&yaml);
    let nbirth2 = host.wait("NBIRTH", None, index(&death));
    assert_eq!(bdseq(&nbirth2), 1, "bdSeq kept across restarts");
    host.wait("DBIRTH", Some("plc"), index(&nbirth2));
    let plc3 = host.wait("DBIRTH", Some("plc"), index(&nbirth2));
    assert_eq!(metric(&plc3, "setpoint")["value"], 23.4);

    let c = host.check();
    for kind in ["NBIRTH", "DBIRTH", "DDATA", "NDEATH"] {
        assert!(
            c["counts"][kind].as_u64().unwrap_or(0) > 0,
            "no {kind}: {c}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_host_state_and_outages_give_births_then_history() {
    let mut broker = Mosquitto::start();
    let port = broker.port();
    let storage = modbus_server::Storage::with(|t| {
        t.holding.insert(0, 215);
        t.holding.insert(1, 0);
    });
    let server = modbus_server::tcp_server(storage, "127.0.0.1:0").await;
    let state = tempfile::tempdir().unwrap();
    let metrics = support::free_port();
    let yaml = config(
        port,
        state.path(),
        metrics,
        server.addr,
        ", primaryHostId: scada",
    );
    // The node waits for the primary host before it births.
    let mut gw = Gateway::start(&yaml);
    assert!(gw.wait_for_log("waiting for primary host `scada`", WAIT));
    let mut host = Host::start(port, "plant-a", "gw-01", Some("scada"));
    let nbirth = host.wait("NBIRTH", None, -1);
    let first_bdseq = bdseq(&nbirth);
    let boiler = host.wait("DBIRTH", Some("boiler"), index(&nbirth));
    host.wait_with(json!({"type": "DDATA", "device": "boiler", "after": index(&boiler)}));

    // The host goes offline: NDEATH (same bdSeq); data meanwhile is kept
    // and sent as history after the new births when it is back.
    host.call(json!({"cmd": "state", "online": false}));
    let death = host.wait("NDEATH", None, index(&nbirth));
    assert_eq!(bdseq(&death), first_bdseq);
    assert_eq!(death["qos"], 1);
    assert!(gw.wait_for_log("primary host is offline", WAIT));
    // …and a new connection (Sparkplug 3.0), whose births wait for the host.
    assert!(gw.wait_for_log("disconnecting to connect again", WAIT));
    // Let the boiler's counter advance while the host is away (its reads
    // go on: wait for a few of them in the metrics).
    let reads = || {
        let (_, body) =
            support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics").unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix("fieldgate_device_reads_total{device=\"boiler\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let r0 = reads();
    assert!(support::wait_until(WAIT, || reads() >= r0 + 4));
    host.call(json!({"cmd": "state", "online": true}));
    let reborn = host.wait("NBIRTH", None, index(&death));
    assert_eq!(
        bdseq(&reborn),
        (first_bdseq + 1) % 256,
        "a new connection after the NDEATH"
    );
    let dbirth = host.wait("DBIRTH", Some("boiler"), index(&reborn));
    let hist = host.wait_with(
        json!({"type": "DDATA", "device": "boiler", "after": index(&dbirth),
        "historical": true}),
    );
    let count = metric(&hist, "count");
    assert_eq!(count["is_historical"], true);
    assert!(
        count["timestamp"].as_u64().unwrap() < reborn["timestamp"].as_u64().unwrap(),
        "historical values carry the time they were read"
    );

    // The broker goes away and comes back (without its retained STATE):
    // a new connection, bdSeq + 1, births once the host's STATE is back,
    // then the history.
    let before = host.call(json!({"cmd": "count"}))["count"]
        .as_i64()
        .unwrap()
        - 1;
    broker.stop();
    assert!(gw.wait_for_log("connection to the broker lost", WAIT));
    let r0 = reads();
    assert!(support::wait_until(WAIT, || reads() >= r0 + 4));
    broker.restart();
    let nbirth3 = host.wait("NBIRTH", None, before);
    assert_eq!(
        bdseq(&nbirth3),
        (first_bdseq + 2) % 256,
        "one bdSeq step per connection"
    );
    let dbirth3 = host.wait("DBIRTH", Some("boiler"), index(&nbirth3));
    let hist3 = host.wait_with(
        json!({"type": "DDATA", "device": "boiler", "after": index(&dbirth3),
        "historical": true}),
    );
    assert!(
        metric(&hist3, "count")["timestamp"].as_u64().unwrap()
            < nbirth3["timestamp"].as_u64().unwrap()
    );
    // A device that stops answering: DDEATH, and NDATA with the devices online.
    let plc_birth = host.wait("DBIRTH", Some("plc"), index(&nbirth3));
    server.stop().await;
    let ddeath = host.wait("DDEATH", Some("plc"), index(&plc_birth));
    let ndata = host.wait("NDATA", None, index(&ddeath));
    assert_eq!(metric(&ndata, "Node Info/Devices Online")["value"], 2);

    // A clean stop: NDEATH with the bdSeq of the current connection.
    gw.sigterm();
    let death = host.wait("NDEATH", None, index(&ndata));
    assert_eq!(bdseq(&death), bdseq(&nbirth3));
    assert!(gw.wait_exit(WAIT).is_some_and(|s| s.success()));
    host.check();
}

/// `fieldgate_device_reads_total` of `device`.
fn reads(metrics: u16, device: &str) -> u64 {
    let (_, body) =
        support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics").unwrap_or_default();
    let needle = format!("fieldgate_device_reads_total{{device=\"{device}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_file_store_history_survives_a_restart() {
    let mut broker = Mosquitto::start();
    let port = broker.port();
    let storage = modbus_server::Storage::with(|t| {
        t.holding.insert(0, 215);
        t.holding.insert(1, 0);
    });
    let server = modbus_server::tcp_server(storage, "127.0.0.1:0").await;
    let state = tempfile::tempdir().unwrap();
    let metrics = support::free_port();
    // As primary host, the host's STATE (after each of its connects) gates
    // the births: none can be missed while it reconnects.
    let yaml = config(
        port,
        state.path(),
        metrics,
        server.addr,
        ", primaryHostId: scada",
    )
    .replace(
        "maxReconnectInterval: 1s }",
        "maxReconnectInterval: 1s, store: { type: file } }",
    );
    let mut host = Host::start(port, "plant-a", "gw-01", Some("scada"));
    let mut gw = Gateway::start(&yaml);
    let nbirth = host.wait("NBIRTH", None, -1);
    assert_eq!(bdseq(&nbirth), 0);
    let boiler = host.wait("DBIRTH", Some("boiler"), index(&nbirth));
    host.wait_with(json!({"type": "DDATA", "device": "boiler", "after": index(&boiler)}));

    // The broker goes away; the boiler's counter goes on into the history
    // on disk; then the gateway dies (SIGKILL) while the broker is away.
    let before = host.call(json!({"cmd": "count"}))["count"]
        .as_i64()
        .unwrap()
        - 1;
    broker.stop();
    assert!(gw.wait_for_log("connection to the broker lost", WAIT));
    let r0 = reads(metrics, "boiler");
    assert!(support::wait_until(WAIT, || reads(metrics, "boiler") >= r0 + 5));
    let died_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    gw.kill9();

    // A new process on the same state directory, still without a broker,
    // finds the history; once the broker is back: NBIRTH (seq 0, the next
    // bdSeq, as stored), DBIRTHs, then the first run's readings as
    // historical DDATA with the aliases of the new births.
    let gw2 = Gateway::start(&yaml);
    assert!(
        gw2.wait_for_log("historical DDATA kept from before the restart", WAIT),
        "{}",
        gw2.log()
    );
    broker.restart();
    let nbirth2 = host.wait("NBIRTH", None, before);
    assert_eq!(nbirth2["seq"], 0);
    let stored: i64 = std::fs::read_to_string(state.path().join("sparkplug/plant-a-gw-01.bdseq"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        bdseq(&nbirth2),
        stored,
        "the NBIRTH carries the stored bdSeq"
    );
    assert_ne!(bdseq(&nbirth2), 0, "a new connection, a new bdSeq");
    let dbirth = host.wait("DBIRTH", Some("boiler"), index(&nbirth2));
    let hist = host.wait_with(
        json!({"type": "DDATA", "device": "boiler", "after": index(&dbirth),
        "historical": true}),
    );
    let count = metric(&hist, "count");
    assert_eq!(count["is_historical"], true);
    assert!(
        count["timestamp"].as_u64().unwrap() < died_at,
        "the first historical DDATA was read by the first process: {hist}"
    );
    assert_eq!(
        count["alias"],
        metric(&dbirth, "count")["alias"],
        "history uses the new births' aliases"
    );
    host.check();
    server.stop().await;
}
