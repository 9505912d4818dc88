//! End-to-end tests of hot reload (CONTRACT §5): the real `fieldgate`
//! binary, a Mosquitto and a tokio-modbus server started by the test; the
//! config is edited by rename-save, in-place write, symlink swap and SIGHUP,
//! and the effects are observed over MQTT, the device server, the log and
//! /metrics only.

use crate::support;

use crate::modbus_server;

use std::time::{Duration, Instant, SystemTime};

use support::{Gateway, Message, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(15);
/// Poll period of the devices whose cadence is checked.
const PERIOD: Duration = Duration::from_millis(250);

/// A config talking to the broker on `port`, metrics on `metrics` (`""` = off).
fn config(port: u16, metrics: &str, client_extra: &str, devices: &str) -> String {
    format!(
        r#"gateway:
  namespace: test
  metrics: {{ listen: "{metrics}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{port}
    maxReconnectInterval: 1s
{client_extra}
devices:
{devices}
"#
    )
}

/// A dummy device with one `counter` property `n` starting at `start`.
fn counter(name: &str, start: u64, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    driver: dummy
    syncInterval: 250ms
{extra}    properties:
      - {{ name: n, type: uint32, simulate: {{ counter: {{ start: {start}, step: 1 }} }} }}
"#
    )
}

/// A Modbus TCP device on the test's server.
fn plc(addr: std::net::SocketAddr) -> String {
    format!(
        r#"  - name: plc
    driver: modbus
    syncInterval: 250ms
    timeout: 1s
    protocol:
      tcp: {{ endpoint: "{addr}" }}
      unitId: 1
    properties:
      - {{ name: t, register: holding, address: 0, type: uint16 }}
      - {{ name: p, register: holding, address: 1, type: uint16 }}
"#
    )
}

fn topic(device: &str) -> String {
    format!("fieldgate/test/{device}")
}

/// A probe that records every message it sees while waiting for some.
struct Recorder {
    probe: MqttProbe,
    seen: Vec<Message>,
}

impl Recorder {
    async fn subscribe_all(port: u16) -> Self {
        let probe = MqttProbe::connect(port).await;
        probe.subscribe("fieldgate/test/#", 1).await;
        Self {
            probe,
            seen: Vec::new(),
        }
    }

    /// The first message matching `pred`; every message is recorded.
    async fn wait(&mut self, what: &str, mut pred: impl FnMut(&Message) -> bool) -> Message {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self
                .probe
                .next(left)
                .await
                .unwrap_or_else(|| panic!("timed out waiting for {what}"));
            self.seen.push(m.clone());
            if pred(&m) {
                return m;
            }
        }
    }

    /// The first message matching `pred`, already recorded or still to come.
    async fn seen_or_wait(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Message {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return m.clone();
        }
        self.wait(what, pred).await
    }

    /// The next state of `device`.
    async fn state(&mut self, device: &str) -> Message {
        let t = topic(device);
        self.wait(&format!("state of {device}"), |m| {
            m.topic == t && !m.payload.is_empty()
        })
        .await
    }

    /// Waits for `n` more states of `device`.
    async fn states(&mut self, device: &str, n: usize) {
        for _ in 0..n {
            self.state(device).await;
        }
    }

    /// Index in `seen` of the first message on `topic` with `payload`.
    fn position(&self, topic: &str, payload: &[u8]) -> Option<usize> {
        self.seen
            .iter()
            .position(|m| m.topic == topic && m.payload == payload)
    }

    /// Every recorded state payload of `device`, parsed.
    fn states_of(&self, device: &str) -> Vec<serde_json::Value> {
        let t = topic(device);
        self.seen
            .iter()
            .filter(|m| m.topic == t && !m.payload.is_empty())
            .map(Message::json)
            .collect()
    }
}

/// The timestamps of `states` are strictly increasing (no duplicate) and
/// no interval reaches twice the poll period (no gap).
fn assert_steady(device: &str, states: &[serde_json::Value]) {
    assert!(states.len() >= 8, "{device}: too few states: {states:?}");
    let times: Vec<SystemTime> = states
        .iter()
        .map(|s| {
            let ts = s["timestamp"].as_str().expect("timestamp");
            humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{ts}: {e}"))
        })
        .collect();
    for w in times.windows(2) {
        let dt = w[1]
            .duration_since(w[0])
            .unwrap_or_else(|_| panic!("{device}: timestamp went back or repeated: {w:?}"));
        assert!(dt > Duration::ZERO, "{device}: repeated timestamp {w:?}");
        assert!(
            dt < 2 * PERIOD,
            "{device}: gap of {dt:?} between publishes (period {PERIOD:?})"
        );
    }
}

/// The counter `n` of `states` goes up by exactly one each time: the
/// simulator was never restarted and no poll went unpublished.
fn assert_counting(device: &str, states: &[serde_json::Value]) {
    let ns: Vec<u64> = states
        .iter()
        .map(|s| s["properties"]["n"].as_u64().expect("n"))
        .collect();
    for w in ns.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{device}: counter jumped: {ns:?}");
    }
}

/// The value of the first /metrics line starting with `prefix`.
fn metric(port: u16, prefix: &str) -> Option<f64> {
    support::http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .ok()?
        .1
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

const RELOADS_OK: &str = r#"fieldgate_config_reloads_total{result="ok"}"#;
const RELOADS_INVALID: &str = r#"fieldgate_config_reloads_total{result="invalid"}"#;

/// The `fieldgate_config_info` line (it carries the loaded file's hash).
fn config_info(port: u16) -> Option<String> {
    support::http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .ok()?
        .1
        .lines()
        .find(|l| l.starts_with("fieldgate_config_info{"))
        .map(str::to_owned)
}

/// Waits until the metric at `prefix` equals `want`.
async fn wait_metric(port: u16, prefix: &str, want: f64) {
    let ok = support::wait_until_async(WAIT, || metric(port, prefix) == Some(want)).await;
    assert!(
        ok,
        "{prefix} never became {want} (now {:?})",
        metric(port, prefix)
    );
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_added_changed_removed_while_unchanged_ones_run_untouched() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let storage = modbus_server::Storage::with(|t| {
        t.holding.insert(0, 215);
        t.holding.insert(1, 7);
    });
    let server = modbus_server::tcp_server(storage, "127.0.0.1:0").await;
    let retained = "    mqtt: { message: { retained: true } }\n";
    let keep = counter("keep", 0, "");
    let plc = plc(server.addr);
    let v1 = [
        keep.as_str(),
        &plc,
        &counter("chg", 0, ""),
        &counter("gone", 0, retained),
    ]
    .concat();
    let mut rec = Recorder::subscribe_all(port).await;
    let gw = Gateway::start(&config(port, "", "", &v1));
    rec.state("keep").await;
    rec.state("plc").await;
    rec.state("gone").await;
    rec.seen_or_wait("gone online", |m| {
        m.topic == topic("gone/$state") && m.payload == b"online"
    })
    .await;

    // 1. Rename-save: `gone` goes, `added` comes.
    let v2 = [
        keep.as_str(),
        &plc,
        &counter("chg", 0, ""),
        &counter("added", 0, ""),
    ]
    .concat();
    gw.replace_config(&config(port, "", "", &v2));
    rec.state("added").await;
    for t in ["gone", "gone/$meta", "gone/$state"] {
        let t = topic(t);
        rec.seen_or_wait(&format!("{t} cleared"), |m| {
            m.topic == t && m.payload.is_empty()
        })
        .await;
    }
    let offline = rec
        .position(&topic("gone/$state"), b"offline")
        .expect("`gone` went offline");
    for t in ["gone", "gone/$meta", "gone/$state"] {
        let cleared = rec.position(&topic(t), b"").expect("cleared");
        assert!(offline < cleared, "{t} cleared before `offline`");
    }

    // 2. In-place write: `chg` changes (its counter restarts at its new start).
    let v3 = [
        keep.as_str(),
        &plc,
        &counter("chg", 1000, ""),
        &counter("added", 0, ""),
    ]
    .concat();
    gw.write_config(&config(port, "", "", &v3));
    let chg = topic("chg");
    rec.wait("chg restarted with start 1000", |m| {
        m.topic == chg && !m.payload.is_empty() && m.json()["properties"]["n"] == 1000
    })
    .await;

    // 3. More reloads that leave `keep` and `plc` alone: add, then remove.
    let v4 = [v3.clone(), counter("added2", 0, "")].concat();
    gw.replace_config(&config(port, "", "", &v4));
    rec.state("added2").await;
    let v5 = [keep.as_str(), &plc, &counter("chg", 1000, "")].concat();
    gw.write_config(&config(port, "", "", &v5));
    for d in ["added", "added2"] {
        let t = topic(&format!("{d}/$state"));
        rec.seen_or_wait(&format!("{d} offline"), |m| {
            m.topic == t && m.payload == b"offline"
        })
        .await;
    }
    rec.states("keep", 3).await;
    rec.states("plc", 3).await;

    // The unchanged devices were never touched: one TCP connection to the
    // Modbus server, and a steady cadence of both through all four reloads.
    assert_eq!(server.connections(), 1, "plc kept its one connection");
    let keep_states = rec.states_of("keep");
    assert_steady("keep", &keep_states);
    assert_counting("keep", &keep_states);
    assert_steady("plc", &rec.states_of("plc"));
    assert_eq!(count(&gw.log(), "config applied"), 4, "{}", gw.log());

    // Nothing retained is left of `gone`: a fresh subscriber gets the
    // retained `keep/$state` (subscribed last, so delivered last) and
    // nothing for `gone`.
    let mut fresh = MqttProbe::connect(port).await;
    fresh.subscribe("fieldgate/test/gone", 1).await;
    fresh.subscribe("fieldgate/test/gone/#", 1).await;
    fresh.subscribe("fieldgate/test/keep/$state", 1).await;
    fresh
        .wait_topic(WAIT, "fieldgate/test/keep/$state")
        .await
        .expect("retained keep/$state");
    let left: Vec<String> = fresh
        .drain()
        .into_iter()
        .filter(|m| m.topic.contains("/gone"))
        .map(|m| m.topic)
        .collect();
    assert!(
        left.is_empty(),
        "retained topics of `gone` remain: {left:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_changes_nothing_and_is_reported() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let mport = support::free_port();
    let metrics = format!("127.0.0.1:{mport}");
    let keep = counter("keep", 0, "");
    let mut rec = Recorder::subscribe_all(port).await;
    let gw = Gateway::start(&config(port, &metrics, "", &keep));
    rec.state("keep").await;
    let loaded_info = config_info(mport).expect("config hash metric");
    let loaded_at =
        metric(mport, "fieldgate_config_last_reload_timestamp_seconds").expect("load time metric");

    let broken =
        config(port, &metrics, "", &keep).replace("syncInterval: 250ms", "syncInterval: soon");
    let bad_line = broken
        .lines()
        .position(|l| l.contains("soon"))
        .expect("edited line")
        + 1;
    gw.write_config(&broken);
    wait_metric(mport, RELOADS_INVALID, 1.0).await;
    assert!(
        gw.wait_for_log("devices[0].syncInterval", WAIT),
        "{}",
        gw.log()
    );
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("devices[0].syncInterval"))
        .expect("error line");
    assert!(line.contains("ERROR"), "logged at error level: {line}");
    assert!(
        line.contains(&format!("{}:{bad_line}:19:", gw.config_path().display())),
        "located error: {line}"
    );

    // Everything keeps running as before: the counter goes on.
    rec.states("keep", 4).await;
    assert_counting("keep", &rec.states_of("keep"));
    assert_eq!(metric(mport, RELOADS_OK), Some(0.0));
    assert_eq!(config_info(mport).as_ref(), Some(&loaded_info));
    assert_eq!(
        metric(mport, "fieldgate_config_last_reload_timestamp_seconds"),
        Some(loaded_at)
    );

    // A valid edit afterwards is applied.
    let fixed = [keep.clone(), counter("later", 0, "")].concat();
    gw.replace_config(&config(port, &metrics, "", &fixed));
    rec.state("later").await;
    wait_metric(mport, RELOADS_OK, 1.0).await;
    assert_eq!(metric(mport, RELOADS_INVALID), Some(1.0));
    let info = config_info(mport).expect("config hash metric");
    assert_ne!(info, loaded_info, "the hash follows the loaded file");
    let reloaded_at = metric(mport, "fieldgate_config_last_reload_timestamp_seconds");
    assert!(
        reloaded_at > Some(loaded_at),
        "{reloaded_at:?} after {loaded_at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_even_what_the_watcher_cannot_see() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let mport = support::free_port();
    let metrics = format!("127.0.0.1:{mport}");
    let keep = counter("keep", 0, "");
    let v1 = config(port, &metrics, "", &keep);
    let mut rec = Recorder::subscribe_all(port).await;
    let gw = Gateway::start_with_env(&v1, &[("RUST_LOG", "info,fieldgate::daemon=debug")]);
    rec.state("keep").await;

    // Make config.yaml a symlink into a subdirectory: edits inside it are
    // invisible to the (non-recursive) directory watch.
    let sub = gw.dir().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("config.yaml"), &v1).unwrap();
    let tmp = gw.dir().join("config.yaml.link");
    std::os::unix::fs::symlink("sub/config.yaml", &tmp).unwrap();
    std::fs::rename(&tmp, gw.config_path()).unwrap();
    assert!(gw.wait_for_log("config file touched but unchanged", WAIT));

    let v2 = config(port, &metrics, "", &[keep, counter("hup", 0, "")].concat());
    std::fs::write(sub.join("config.yaml"), v2).unwrap();
    gw.sighup();
    rec.state("hup").await;
    wait_metric(mport, RELOADS_OK, 1.0).await;
    let log = gw.log();
    assert!(log.contains("SIGHUP: reloading"), "{log}");
    assert!(!log.contains("config file changed"), "{log}");

    // SIGHUP without any change reloads too (and leaves devices alone).
    gw.sighup();
    wait_metric(mport, RELOADS_OK, 2.0).await;
    rec.states("keep", 3).await;
    assert_counting("keep", &rec.states_of("keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_edits_within_100ms_are_one_reload() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let mport = support::free_port();
    let metrics = format!("127.0.0.1:{mport}");
    let keep = counter("keep", 0, "");
    let mut rec = Recorder::subscribe_all(port).await;
    let gw = Gateway::start(&config(port, &metrics, "", &keep));
    rec.state("keep").await;

    let versions: Vec<String> = (1..=10)
        .map(|i| {
            let extra: String = (1..=i).map(|j| counter(&format!("e{j}"), 0, "")).collect();
            config(port, &metrics, "", &[keep.clone(), extra].concat())
        })
        .collect();
    let started = Instant::now();
    for (i, v) in versions.iter().enumerate() {
        if i % 2 == 0 {
            gw.write_config(v);
        } else {
            gw.replace_config(v);
        }
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "edits took {took:?}");

    rec.state("e10").await;
    wait_metric(mport, RELOADS_OK, 1.0).await;
    // Let any straggling trigger run out (the debounce caps at 600 ms),
    // then check it was still one reload.
    rec.states("keep", 4).await;
    assert_eq!(metric(mport, RELOADS_OK), Some(1.0));
    assert_eq!(count(&gw.log(), "config applied"), 1, "{}", gw.log());
    assert_counting("keep", &rec.states_of("keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_while_the_broker_is_down_applies_when_it_is_back() {
    let mut broker = Mosquitto::start();
    let port = broker.port();
    let keep = counter("keep", 0, "");
    let mut rec = Recorder::subscribe_all(port).await;
    let gw = Gateway::start(&config(port, "", "", &keep));
    rec.state("keep").await;

    broker.stop();
    gw.replace_config(&config(
        port,
        "",
        "",
        &[keep, counter("late", 0, "")].concat(),
    ));
    assert!(gw.wait_for_log("config applied", WAIT), "{}", gw.log());
    broker.restart();
    let mut probe = MqttProbe::connect(port).await;
    probe.subscribe("fieldgate/test/late", 1).await;
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/late" && !m.payload.is_empty()
        })
        .await
        .expect("the device added while the broker was down publishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_option_change_moves_devices_and_keeps_the_queue() {
    let persist = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start_with(&format!(
        "persistence true\npersistence_location {}/\n",
        persist.path().display()
    ));
    let port = broker.port();
    let mport = support::free_port();
    let metrics = format!("127.0.0.1:{mport}");
    let devices = [counter("c", 0, ""), counter("d", 0, "")].concat();
    let v1 = config(
        port,
        &metrics,
        "    messageChannelDepth: 1000\n  message: { qos: 1 }",
        &devices,
    );
    let gw = Gateway::start(&v1);
    let mut probe = MqttProbe::connect_persistent(port, "reload-observer").await;
    probe.subscribe("fieldgate/test/c", 1).await;
    let first = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/c")
        .await
        .expect("state of c")
        .json()["properties"]["n"]
        .as_u64()
        .unwrap();

    // With the broker down, change a client option: the session is
    // replaced, the devices move to the new one, the queue goes along.
    broker.stop_graceful();
    let v2 = v1.replace(
        "maxReconnectInterval: 1s",
        "maxReconnectInterval: 1s\n    keepAlive: 20s",
    );
    gw.replace_config(&v2);
    assert!(gw.wait_for_log("config applied", WAIT), "{}", gw.log());
    let log = gw.log();
    let applied = log
        .lines()
        .find(|l| l.contains("config applied"))
        .expect("summary");
    assert!(
        applied.contains(r#"moved=["c", "d"]"#) || applied.contains(r#"moved=["d", "c"]"#),
        "{applied}"
    );
    assert!(
        applied.contains(r#"sessions_started=["fieldgate-test"]"#),
        "{applied}"
    );
    wait_metric(mport, RELOADS_OK, 1.0).await;
    broker.restart();

    // Every value after `first` arrives in order: the driver was not
    // restarted (no jump back to 0) and no queued message was lost.
    let mut expected = first + 1;
    while expected < first + 30 {
        let m = probe
            .wait_for(WAIT, |m| m.topic == "fieldgate/test/c")
            .await
            .unwrap_or_else(|| panic!("value {expected} never came"));
        let n = m.json()["properties"]["n"].as_u64().unwrap();
        if n < expected {
            continue; // an at-least-once duplicate
        }
        assert_eq!(n, expected, "no value lost or repeated from a restart");
        expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_style_symlink_swap_reloads() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let keep = counter("keep", 0, "");
    let v1 = config(port, "", "", &keep);
    let mut rec = Recorder::subscribe_all(port).await;
    let gw = Gateway::start_with_env(&v1, &[("RUST_LOG", "info,fieldgate::daemon=debug")]);
    rec.state("keep").await;
    let dir = gw.dir();

    // The ConfigMap layout: config.yaml -> ..data/config.yaml, ..data -> ..v1.
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/config.yaml"), &v1).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml.link")).unwrap();
    std::fs::rename(dir.join("config.yaml.link"), gw.config_path()).unwrap();
    assert!(gw.wait_for_log("config file touched but unchanged", WAIT));

    // The kubelet's update: a new directory, a new ..data link renamed over.
    let v2 = config(port, "", "", &[keep, counter("k8s", 0, "")].concat());
    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v2/config.yaml"), v2).unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..v1")).unwrap();
    rec.state("k8s").await;
    assert!(gw.log().contains("config file changed"), "{}", gw.log());
    rec.states("keep", 2).await;
    assert_counting("keep", &rec.states_of("keep"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_applies_on_reload() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let keep = counter("keep", 0, "");
    let at = |level: &str, devices: &str| {
        config(port, "", "", devices).replace(
            "  metrics:",
            &format!("  log: {{ level: {level} }}\n  metrics:"),
        )
    };
    let mut rec = Recorder::subscribe_all(port).await;
    // An empty RUST_LOG leaves the level to the config.
    let gw = Gateway::start_with_env(&at("warn", &keep), &[("RUST_LOG", "")]);
    rec.state("keep").await;
    assert!(!gw.log().contains("fieldgate starting"), "{}", gw.log());

    gw.replace_config(&at("info", &[keep, counter("more", 0, "")].concat()));
    rec.state("more").await;
    assert!(gw.wait_for_log("config applied", WAIT), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_copied_in_place_slowly_is_applied_once_whole() {
    // scp / SMB / `rsync --inplace`: the file is truncated and written in
    // pieces. Every piece ends at a line, so most prefixes are valid
    // configs with fewer devices: none of them may be applied.
    let broker = Mosquitto::start();
    let mut rec = Recorder::subscribe_all(broker.port()).await;
    let metrics = support::free_port();
    let listen = format!("127.0.0.1:{metrics}");
    let gw = Gateway::start(&config(
        broker.port(),
        &listen,
        "",
        &counter("keeper", 0, ""),
    ));
    rec.state("keeper").await;
    assert!(support::wait_until(WAIT, || metric(metrics, RELOADS_OK).is_some()));
    let ok_before = metric(metrics, RELOADS_OK).unwrap_or(0.0);
    let invalid_before = metric(metrics, RELOADS_INVALID).unwrap_or(0.0);

    let devices: String = std::iter::once(counter("keeper", 0, ""))
        .chain((0..40).map(|i| counter(&format!("copied-{i}"), 0, "")))
        .collect();
    let full = config(broker.port(), &listen, "", &devices);
    let lines: Vec<&str> = full.split_inclusive('\n').collect();
    let pieces: Vec<String> = lines.chunks(8).map(|c| c.concat()).collect();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(gw.config_path())
            .unwrap();
        // The copy's pace: a piece every 150 ms (the watcher's quiet time),
        // ~4 s in all, longer than the watcher's 600 ms burst cap.
        let mut pace = tokio::time::interval(Duration::from_millis(150));
        for piece in &pieces {
            pace.tick().await;
            f.write_all(piece.as_bytes()).unwrap();
            f.flush().unwrap();
        }
    }
    let last = "copied-39";
    rec.wait("the last copied device online", |m| {
        m.topic == format!("{}/$state", topic(last)) && m.payload == b"online"
    })
    .await;
    let ok = metric(metrics, RELOADS_OK).unwrap_or(0.0) - ok_before;
    let invalid = metric(metrics, RELOADS_INVALID).unwrap_or(0.0) - invalid_before;
    assert_eq!(
        (ok, invalid),
        (1.0, 0.0),
        "reloads while the file was being written:\n{}",
        gw.log()
    );
    let log = gw.log();
    assert!(log.contains("still being written"), "{log}");
}

const RELOADS_ROLLED_BACK: &str = r#"fieldgate_config_reloads_total{result="rolled_back"}"#;
const PLC_UP: &str = r#"fieldgate_device_up{device="plc"}"#;

/// `/api/v1/status`'s `config.lastReload.result`.
fn last_reload_result(port: u16) -> Option<String> {
    let (_, body) = support::http_get(&format!("127.0.0.1:{port}"), "/api/v1/status").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["config"]["lastReload"]["result"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_on_probation_rolls_back_and_a_fixed_file_sticks() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let mport = support::free_port();
    let metrics = format!("127.0.0.1:{mport}");
    let old = modbus_server::tcp_server(
        modbus_server::Storage::with(|t| {
            t.holding.insert(0, 215);
            t.holding.insert(1, 7);
        }),
        "127.0.0.1:0",
    )
    .await;
    let with_probation = |devices: &str| {
        config(port, &metrics, "", devices).replace(
            "  metrics: {",
            "  reload: { probation: 3s }\n  healthInterval: 60s\n  metrics: {",
        )
    };
    let keep = counter("keep", 0, "");
    let v1 = [keep.as_str(), &plc(old.addr)].concat();
    let mut rec = Recorder::subscribe_all(port).await;
    let gw = Gateway::start(&with_probation(&v1));
    rec.state("plc").await;
    wait_metric(mport, PLC_UP, 1.0).await;
    let loaded_info = config_info(mport).expect("config hash metric");

    // The PLC "moved" to a port where nothing listens: probation, then back.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .expect("address");
    gw.replace_config(&with_probation(&[keep.as_str(), &plc(dead)].concat()));
    assert!(gw.wait_for_log("on probation", WAIT), "{}", gw.log());
    wait_metric(mport, RELOADS_ROLLED_BACK, 1.0).await;
    let log = gw.log();
    let why = log
        .lines()
        .find(|l| l.contains("rolling back to the previous config"))
        .unwrap_or_else(|| panic!("no rollback in the log: {log}"));
    assert!(
        why.contains("1 of 2 kept and changed devices online") && why.contains("plc"),
        "{why}"
    );
    // The device comes back on the old endpoint: a new connection there and
    // fresh readings from it.
    assert!(
        support::wait_until_async(WAIT, || old.connections() >= 2).await,
        "plc never reconnected to the old endpoint"
    );
    rec.wait("plc reading the old endpoint again", |m| {
        m.topic == topic("plc") && !m.payload.is_empty() && m.json()["properties"]["t"] == 215
    })
    .await;
    wait_metric(mport, PLC_UP, 1.0).await;
    assert_eq!(
        config_info(mport).as_ref(),
        Some(&loaded_info),
        "the running config's hash is the previous file's again"
    );
    assert_eq!(last_reload_result(mport).as_deref(), Some("rolled_back"));
    // G/$health (retained) says so too.
    let mut health = MqttProbe::connect(port).await;
    health.subscribe("fieldgate/test/$health", 1).await;
    let doc = health
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/$health"
                && m.json()["config"]["lastReload"]["result"] == "rolled_back"
        })
        .await
        .expect("G/$health with the rollback");
    let errors = doc.json()["config"]["lastReload"]["errors"].clone();
    assert!(errors.to_string().contains("plc"), "{errors}");
    // `keep` ran untouched through the reload and the rollback.
    rec.states("keep", 2).await;
    assert_counting("keep", &rec.states_of("keep"));

    // The file is fixed: a new server on another port; the next save is
    // applied and, with the PLC online at the end of the probation, sticks.
    let new = modbus_server::tcp_server(
        modbus_server::Storage::with(|t| {
            t.holding.insert(0, 300);
            t.holding.insert(1, 7);
        }),
        "127.0.0.1:0",
    )
    .await;
    gw.replace_config(&with_probation(&[keep.as_str(), &plc(new.addr)].concat()));
    rec.wait("plc reading the new endpoint", |m| {
        m.topic == topic("plc") && !m.payload.is_empty() && m.json()["properties"]["t"] == 300
    })
    .await;
    assert!(
        gw.wait_for_log("passed its probation", WAIT),
        "{}",
        gw.log()
    );
    assert_eq!(metric(mport, RELOADS_ROLLED_BACK), Some(1.0));
    assert_eq!(last_reload_result(mport).as_deref(), Some("ok"));
    rec.states("plc", 2).await;
    let last = rec.states_of("plc").pop().expect("a plc state");
    assert_eq!(last["properties"]["t"], 300, "the new config stuck: {last}");
    old.stop().await;
    new.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_included_file_copied_in_place_slowly_is_applied_once_whole() {
    // The settle rule covers the files pulled in by `include:` too: an
    // included file written in pieces (every piece ends at a line, so most
    // prefixes are valid device lists) is never half applied.
    let broker = Mosquitto::start();
    let mut rec = Recorder::subscribe_all(broker.port()).await;
    let metrics = support::free_port();
    let listen = format!("127.0.0.1:{metrics}");
    let main = format!(
        "include: [ conf.d/*.yaml ]\n{}",
        config(broker.port(), &listen, "", &counter("keeper", 0, ""))
    );
    let gw = Gateway::start(&main);
    rec.state("keeper").await;
    // The included file appears (written whole), picked up by SIGHUP.
    std::fs::create_dir(gw.dir().join("conf.d")).unwrap();
    let included = gw.dir().join("conf.d/more.yaml");
    std::fs::write(&included, format!("devices:\n{}", counter("first", 0, ""))).unwrap();
    gw.sighup();
    rec.state("first").await;
    assert!(support::wait_until(WAIT, || metric(metrics, RELOADS_OK).is_some()));
    let ok_before = metric(metrics, RELOADS_OK).unwrap_or(0.0);
    let invalid_before = metric(metrics, RELOADS_INVALID).unwrap_or(0.0);

    let devices: String = std::iter::once(counter("first", 0, ""))
        .chain((0..40).map(|i| counter(&format!("copied-{i}"), 0, "")))
        .collect();
    let full = format!("devices:\n{devices}");
    let lines: Vec<&str> = full.split_inclusive('\n').collect();
    let pieces: Vec<String> = lines.chunks(8).map(|c| c.concat()).collect();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&included)
            .unwrap();
        // A piece every 150 ms (the watcher's quiet time), ~4 s in all.
        let mut pace = tokio::time::interval(Duration::from_millis(150));
        for piece in &pieces {
            pace.tick().await;
            f.write_all(piece.as_bytes()).unwrap();
            f.flush().unwrap();
        }
    }
    rec.wait("the last copied device online", |m| {
        m.topic == format!("{}/$state", topic("copied-39")) && m.payload == b"online"
    })
    .await;
    let ok = metric(metrics, RELOADS_OK).unwrap_or(0.0) - ok_before;
    let invalid = metric(metrics, RELOADS_INVALID).unwrap_or(0.0) - invalid_before;
    assert_eq!(
        (ok, invalid),
        (1.0, 0.0),
        "reloads while the included file was being written:\n{}",
        gw.log()
    );
    // `first` was never removed by a truncated copy.
    assert!(
        !rec.seen
            .iter()
            .any(|m| m.topic == format!("{}/$state", topic("first")) && m.payload == b"offline"),
        "a half-written included file was applied:\n{}",
        gw.log()
    );
    let log = gw.log();
    assert!(log.contains("still being written"), "{log}");
}
