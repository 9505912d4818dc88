//! End-to-end tests of the backbone: the real `fieldgate` binary with the
//! simulator against a Mosquitto started by the test, observed over MQTT only.

use crate::support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::{Gateway, Message, Mosquitto, MqttProbe, MqttProbe5};

const WAIT: Duration = Duration::from_secs(10);

/// A config with the given devices (YAML list items), talking to `port`.
fn config(port: u16, extra_mqtt: &str, devices: &str) -> String {
    format!(
        r#"gateway:
  namespace: test
  metrics: {{ listen: "" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{port}
    maxReconnectInterval: 2s
{extra_mqtt}
devices:
{devices}
"#
    )
}

const FAN: &str = r#"  - name: fan
    driver: dummy
    model: fan
    syncInterval: 200ms
"#;

/// Polls `f` every 50 ms until it yields a value or `timeout` passes.
async fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET on the gateway's metrics listener.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    support::http_get(&format!("127.0.0.1:{port}"), path).ok()
}

/// The value of the first sample of `family` in /metrics.
fn metric(port: u16, family: &str) -> Option<f64> {
    get(port, "/metrics")?
        .1
        .lines()
        .find(|l| l.starts_with(family))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Waits until every topic in `topics` carried `payload` (in any order).
async fn wait_payload_on_all(probe: &mut MqttProbe, topics: &[&str], payload: &str) {
    let mut missing: Vec<&str> = topics.to_vec();
    let done = probe
        .wait_for(WAIT, |m| {
            if m.payload_str() == payload {
                missing.retain(|t| *t != m.topic);
            }
            missing.is_empty()
        })
        .await;
    assert!(done.is_some(), "`{payload}` missing on {missing:?}");
}

async fn state_on(probe: &mut MqttProbe, topic: &str) -> Message {
    probe
        .wait_for(WAIT, |m| m.topic == topic)
        .await
        .unwrap_or_else(|| panic!("no message on {topic}"))
}

/// Sends `$set` and returns the parsed result.
async fn set(probe: &mut MqttProbe, t: &str, payload: &str) -> Value {
    let result_topic = format!("{t}/$set/result");
    probe
        .publish(&format!("{t}/$set"), payload.as_bytes(), 1, false)
        .await;
    probe
        .wait_for(WAIT, |m| m.topic == result_topic)
        .await
        .unwrap_or_else(|| panic!("no result for {payload}"))
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_arrives_with_configured_qos_and_retain() {
    let broker = Mosquitto::start();
    let yaml = config(
        broker.port(),
        "  message: { qos: 1, retained: true }",
        r#"  - name: counter
    driver: dummy
    syncInterval: 100ms
    properties:
      - { name: n, type: uint32, simulate: { counter: { start: 7, step: 1 } } }
      - { name: t, type: float32, scale: 2, simulate: { constant: 1.5 } }
"#,
    );
    let gw = Gateway::start(&yaml);
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/counter", 2).await;
    let m = state_on(&mut probe, "fieldgate/test/counter").await;
    assert_eq!(m.qos, 1, "state uses message.qos");
    let v = m.json();
    assert_eq!(v["name"], "counter");
    assert!(v["properties"]["n"].as_u64().is_some_and(|n| n >= 7));
    assert_eq!(v["properties"]["t"], json!(3.0));
    assert!(v.get("errors").is_none());
    let ts = v["timestamp"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == 24,
        "RFC 3339 with millis: {ts}"
    );

    // A late subscriber gets the retained state.
    let mut late = MqttProbe::connect(broker.port()).await;
    late.subscribe("fieldgate/test/counter", 1).await;
    let m = state_on(&mut late, "fieldgate/test/counter").await;
    assert!(m.retain, "state is retained when message.retained is true");

    // $meta and $state are retained.
    let mut meta = MqttProbe::connect(broker.port()).await;
    meta.subscribe("fieldgate/test/counter/$meta", 1).await;
    meta.subscribe("fieldgate/test/counter/$state", 1).await;
    let m = state_on(&mut meta, "fieldgate/test/counter/$meta").await;
    assert!(m.retain);
    let v = m.json();
    assert_eq!(v["name"], "counter");
    assert_eq!(v["driver"], "dummy");
    assert_eq!(v["properties"]["n"]["type"], "uint32");
    assert_eq!(v["properties"]["n"]["writable"], false);
    let m = state_on(&mut meta, "fieldgate/test/counter/$state").await;
    assert!(m.retain);
    assert_eq!(m.payload_str(), "online");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_retained_store_gets_meta_and_state_again() {
    // Non-persistent: a restart forgets every retained message.
    let mut broker = Mosquitto::start();
    let yaml = config(
        broker.port(),
        "",
        r#"  - name: fan2
    driver: dummy
    syncInterval: 1s
    properties:
      - { name: speed, type: uint16, unit: rpm, writable: true, min: 0, max: 300, simulate: { constant: 10 } }
"#,
    );
    let _gw = Gateway::start(&yaml);
    let mut before = MqttProbe::connect(broker.port()).await;
    before.subscribe("fieldgate/test/fan2/$meta", 1).await;
    let first = state_on(&mut before, "fieldgate/test/fan2/$meta")
        .await
        .json();
    drop(before);

    broker.restart();

    // The gateway reconnects and publishes its retained topics again (this
    // probe may see them live or retained, depending on who came first).
    // One probe per topic: the replay's order is not specified.
    for topic in ["fieldgate/test/fan2/$meta", "fieldgate/test/fan2/$state"] {
        let mut after = MqttProbe::connect(broker.port()).await;
        after.subscribe(topic, 1).await;
        state_on(&mut after, topic).await;
    }

    // Now the broker holds them again: a late subscriber gets them retained,
    // and the `$meta` built anew for the replay is the one published first.
    let mut late = MqttProbe::connect(broker.port()).await;
    late.subscribe("fieldgate/test/fan2/$meta", 1).await;
    let m = state_on(&mut late, "fieldgate/test/fan2/$meta").await;
    assert!(m.retain);
    assert_eq!(m.json(), first);
    assert_eq!(first["properties"]["speed"]["unit"], "rpm");
    assert_eq!(first["properties"]["speed"]["max"], 300.0);
    let mut late = MqttProbe::connect(broker.port()).await;
    late.subscribe("fieldgate/test/fan2/$state", 1).await;
    let m = state_on(&mut late, "fieldgate/test/fan2/$state").await;
    assert!(m.retain);
    assert_eq!(m.payload_str(), "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_values_follow_each_other_per_poll() {
    let broker = Mosquitto::start();
    let yaml = config(
        broker.port(),
        "",
        r#"  - name: c
    driver: dummy
    syncInterval: 50ms
    properties:
      - { name: n, type: uint16, simulate: { counter: { start: 0, step: 3 } } }
"#,
    );
    let _gw = Gateway::start(&yaml);
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/c", 0).await;
    let first = state_on(&mut probe, "fieldgate/test/c").await.json()["properties"]["n"]
        .as_u64()
        .unwrap();
    let second = state_on(&mut probe, "fieldgate/test/c").await.json()["properties"]["n"]
        .as_u64()
        .unwrap();
    assert_eq!(first % 3, 0);
    assert_eq!(second, first + 3, "one step per read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_nn_uid_and_static_name() {
    let broker = Mosquitto::start();
    let yaml = config(
        broker.port(),
        "",
        r#"  - name: by-nn
    driver: dummy
    syncInterval: 100ms
    properties: [ { name: x, type: int8, simulate: { constant: 1 } } ]
  - name: by-uid
    driver: dummy
    syncInterval: 100ms
    mqtt: { message: { topic: { with: uid } } }
    properties: [ { name: x, type: int8, simulate: { constant: 2 } } ]
  - name: by-name
    driver: dummy
    syncInterval: 100ms
    mqtt: { message: { topic: { name: plant/line1/static } } }
    properties: [ { name: x, type: int8, simulate: { constant: 3 } } ]
"#,
    );
    let _gw = Gateway::start(&yaml);
    let uid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"fieldgate://test/by-uid");
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("#", 0).await;
    for (topic, x) in [
        ("fieldgate/test/by-nn".to_string(), 1),
        (format!("fieldgate/{uid}"), 2),
        ("plant/line1/static".to_string(), 3),
    ] {
        let m = state_on(&mut probe, &topic).await;
        assert_eq!(m.json()["properties"]["x"], json!(x), "{topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_encoding_both_ways() {
    let broker = Mosquitto::start();
    let yaml = config(
        broker.port(),
        "  message: { payloadEncode: base64 }",
        r#"  - name: sp
    driver: dummy
    syncInterval: 200ms
    properties:
      - { name: setpoint, type: float32, writable: true, simulate: { constant: 21.0 } }
"#,
    );
    let t = "fieldgate/test/sp";
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe(&format!("{t}/#"), 1).await;
    probe.subscribe(t, 1).await;
    let _gw = Gateway::start(&yaml);
    let raw = state_on(&mut probe, t).await;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&raw.payload)
        .expect("state is base64");
    let v: Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(v["properties"]["setpoint"], json!(21.0));

    // $state and $meta stay plain.
    let mut fresh = MqttProbe::connect(broker.port()).await;
    fresh.subscribe(&format!("{t}/$state"), 1).await;
    let st = state_on(&mut fresh, &format!("{t}/$state")).await;
    assert_eq!(st.payload_str(), "online");

    probe
        .publish(
            &format!("{t}/$set"),
            b64(r#"{"setpoint": 23.5, "$id": "b1"}"#).as_bytes(),
            1,
            false,
        )
        .await;
    let res = state_on(&mut probe, &format!("{t}/$set/result")).await;
    let res: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&res.payload)
            .expect("result is base64"),
    )
    .unwrap();
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["$id"], "b1");
    let after = probe
        .wait_for(WAIT, |m| {
            m.topic == t
                && base64::engine::general_purpose::STANDARD
                    .decode(&m.payload)
                    .ok()
                    .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                    .is_some_and(|v| v["properties"]["setpoint"] == json!(23.5))
        })
        .await;
    assert!(after.is_some(), "state follows the write");

    // A $set that is not base64 gets an error result, also base64.
    probe
        .publish(&format!("{t}/$set"), b"{not base64!}", 1, false)
        .await;
    let res = state_on(&mut probe, &format!("{t}/$set/result")).await;
    let res: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(&res.payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(res["ok"], false);
    assert!(res["errors"]["$payload"].is_string(), "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_the_fan_and_state_follows_at_once() {
    let broker = Mosquitto::start();
    let yaml = config(broker.port(), "", &FAN.replace("200ms", "1h"));
    let t = "fieldgate/test/fan";
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe(t, 1).await;
    probe.subscribe(&format!("{t}/$set/result"), 1).await;
    let _gw = Gateway::start(&yaml);
    let first = state_on(&mut probe, t).await.json();
    assert_eq!(first["properties"]["gear"], "slow");
    assert_eq!(first["properties"]["on"], false);

    let res = set(&mut probe, t, r#"{"$id": 42, "on": true, "gear": "fast"}"#).await;
    assert_eq!(
        res,
        json!({"$id": 42, "ok": true, "applied": {"on": true, "gear": "fast"}, "errors": {}})
    );
    // The read-back is published at once (the poll interval is an hour).
    let after = state_on(&mut probe, t).await.json();
    assert_eq!(after["properties"]["gear"], "fast");
    assert_eq!(after["properties"]["on"], true);
    assert_eq!(after["properties"]["rotatingSpeed"], 200);

    // $get reads and publishes now.
    probe.publish(&format!("{t}/$get"), b"", 1, false).await;
    let got = state_on(&mut probe, t).await.json();
    assert_eq!(got["properties"]["gear"], "fast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_set_payloads_get_errors_and_write_nothing() {
    let broker = Mosquitto::start();
    let yaml = config(
        broker.port(),
        "",
        r#"  - name: dev
    driver: dummy
    syncInterval: 1h
    properties:
      - { name: level, type: int16, writable: true, scale: 0.1, min: -10, max: 10, simulate: { constant: 5 } }
      - { name: mode, type: uint8, writable: true, enum: { 0: auto, 1: manual }, simulate: { constant: 0 } }
      - { name: flag, type: bool, writable: true, simulate: { constant: false } }
      - { name: serial, type: string, simulate: { constant: "SN1" } }
"#,
    );
    let t = "fieldgate/test/dev";
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe(t, 1).await;
    probe.subscribe(&format!("{t}/$set/result"), 1).await;
    let _gw = Gateway::start(&yaml);
    let before = state_on(&mut probe, t).await.json()["properties"].clone();
    assert_eq!(
        before,
        json!({"level": 0.5, "mode": "auto", "flag": false, "serial": "SN1"})
    );

    let big = format!(r#"{{"flag": true, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let cases: Vec<(&str, String, &str)> = vec![
        ("not JSON", "{nope".into(), "$payload"),
        ("not an object", "[1, 2]".into(), "$payload"),
        (
            "unknown property",
            r#"{"nope": 1, "flag": true}"#.into(),
            "nope",
        ),
        (
            "read-only",
            r#"{"serial": "x", "flag": true}"#.into(),
            "serial",
        ),
        ("wrong type", r#"{"flag": "yes"}"#.into(), "flag"),
        (
            "unknown enum label",
            r#"{"mode": "turbo", "flag": true}"#.into(),
            "mode",
        ),
        (
            "above max",
            r#"{"level": 11, "flag": true}"#.into(),
            "level",
        ),
        (
            "below min",
            r#"{"level": -10.5, "flag": true}"#.into(),
            "level",
        ),
        ("too large", big, "$payload"),
    ];
    for (what, payload, key) in cases {
        let res = set(&mut probe, t, &payload).await;
        assert_eq!(res["ok"], false, "{what}: {res}");
        assert!(res["errors"][key].is_string(), "{what}: {res}");
        assert_eq!(res["applied"], json!({}), "{what}: nothing applied");
    }
    // Several errors at once are all reported.
    let res = set(
        &mut probe,
        t,
        r#"{"nope": 1, "serial": "x", "level": 99, "$id": "m"}"#,
    )
    .await;
    assert_eq!(res["$id"], "m");
    for key in ["nope", "serial", "level"] {
        assert!(res["errors"][key].is_string(), "{key}: {res}");
    }
    // Nothing was written.
    probe.publish(&format!("{t}/$get"), b"", 1, false).await;
    let after = state_on(&mut probe, t).await.json()["properties"].clone();
    assert_eq!(after, before);

    // A valid write still works afterwards (the gateway did not crash).
    let res = set(&mut probe, t, r#"{"level": -2.5, "mode": "manual"}"#).await;
    assert_eq!(res["ok"], true, "{res}");
    let after = state_on(&mut probe, t).await.json();
    assert_eq!(after["properties"]["level"], json!(-2.5));
    assert_eq!(after["properties"]["mode"], "manual");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_kill_online_on_restart_offline_on_sigterm() {
    let broker = Mosquitto::start();
    let yaml = config(broker.port(), "", FAN);
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/$will", 1).await;
    probe.subscribe("fieldgate/test/fan/$state", 1).await;

    let mut gw = Gateway::start(&yaml);
    let m = state_on(&mut probe, "fieldgate/test/$will").await;
    assert_eq!(m.payload_str(), "online");
    gw.kill9();
    let m = state_on(&mut probe, "fieldgate/test/$will").await;
    assert_eq!(m.payload_str(), "offline", "the broker delivers the will");
    assert!(m.qos >= 1);

    let mut gw = Gateway::start(&yaml);
    let m = state_on(&mut probe, "fieldgate/test/$will").await;
    assert_eq!(m.payload_str(), "online", "birth after restart");
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/fan/$state" && m.payload_str() == "online"
        })
        .await
        .expect("device online");

    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("exits within 5 s");
    assert!(
        status.success(),
        "exit 0 on SIGTERM: {status:?}\n{}",
        gw.log()
    );
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/fan/$state" && m.payload_str() == "offline"
        })
        .await
        .expect("device offline on a clean stop");
    let mut fresh = MqttProbe::connect(broker.port()).await;
    fresh.subscribe("fieldgate/test/fan/$state", 1).await;
    let m = state_on(&mut fresh, "fieldgate/test/fan/$state").await;
    assert!(m.retain && m.payload_str() == "offline", "retained offline");
    let m = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/$will")
        .await
        .expect("clean-stop will payload");
    assert_eq!(m.payload_str(), "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_with_own_client_gets_own_session_and_will() {
    let broker = Mosquitto::start();
    let port = broker.port();
    let yaml = config(
        port,
        "",
        &format!(
            r#"{FAN}  - name: own
    driver: dummy
    syncInterval: 200ms
    mqtt: {{ client: {{ clientId: own-session, keepAlive: 5s }} }}
    properties: [ {{ name: x, type: int8, simulate: {{ constant: 1 }} }} ]
"#
        ),
    );
    let mut probe = MqttProbe::connect(port).await;
    probe.subscribe("fieldgate/test/$will", 1).await;
    probe.subscribe("fieldgate/test/own/$will", 1).await;
    let mut gw = Gateway::start(&yaml);
    let wills = ["fieldgate/test/$will", "fieldgate/test/own/$will"];
    wait_payload_on_all(&mut probe, &wills, "online").await;
    gw.kill9();
    wait_payload_on_all(&mut probe, &wills, "offline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_reconnects_resubscribes_and_delivers_the_queue() {
    let persist = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start_with(&format!(
        "persistence true\npersistence_location {}/\nautosave_interval 1\n",
        persist.path().display()
    ));
    let port = broker.port();
    let yaml = config(
        port,
        "    messageChannelDepth: 1000\n  message: { qos: 1 }",
        r#"  - name: c
    driver: dummy
    syncInterval: 100ms
    properties:
      - { name: n, type: uint32, writable: true, simulate: { counter: { start: 0, step: 1 } } }
"#,
    );
    let _gw = Gateway::start(&yaml);
    // A persistent subscriber: the broker keeps its QoS 1 messages across
    // the restart, so everything the gateway replays reaches it.
    let mut probe = MqttProbe::connect_persistent(port, "observer").await;
    probe.subscribe("fieldgate/test/c", 1).await;
    probe.subscribe("fieldgate/test/c/$set/result", 1).await;
    let first = state_on(&mut probe, "fieldgate/test/c").await.json()["properties"]["n"]
        .as_u64()
        .unwrap();

    broker.stop_graceful();
    // While the broker is down the gateway keeps polling into its outbox.
    broker.restart();

    // Every counter value after `first` arrives, in order, without gaps.
    let mut expected = first + 1;
    while expected < first + 40 {
        let m = state_on(&mut probe, "fieldgate/test/c").await;
        let n = m.json()["properties"]["n"].as_u64().unwrap();
        if n < expected {
            continue; // an at-least-once duplicate
        }
        assert_eq!(n, expected, "no value lost across the outage");
        expected += 1;
    }
    // Commands work again: the $set subscription was restored.
    let res = set(&mut probe, "fieldgate/test/c", r#"{"n": 1000000}"#).await;
    assert_eq!(res["ok"], true, "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbox_drops_the_oldest() {
    let persist = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start_with(&format!(
        "persistence true\npersistence_location {}/\n",
        persist.path().display()
    ));
    let port = broker.port();
    let metrics_port = support::free_port();
    let yaml = config(
        port,
        "    messageChannelDepth: 5\n  message: { qos: 1 }",
        r#"  - name: c
    driver: dummy
    syncInterval: 20ms
    properties:
      - { name: n, type: uint32, simulate: { counter: { start: 0, step: 1 } } }
"#,
    )
    .replace(
        r#"metrics: { listen: "" }"#,
        &format!(r#"metrics: {{ listen: "127.0.0.1:{metrics_port}" }}"#),
    );
    let _gw = Gateway::start(&yaml);
    let mut probe = MqttProbe::connect_persistent(port, "observer2").await;
    probe.subscribe("fieldgate/test/c", 1).await;
    let first = state_on(&mut probe, "fieldgate/test/c").await.json()["properties"]["n"]
        .as_u64()
        .unwrap();
    broker.stop_graceful();
    // Wait until the gateway has dropped messages (20 ms polls, depth 5).
    let dropped = poll_until(WAIT, || {
        metric(metrics_port, "fieldgate_mqtt_dropped_total").filter(|n| *n > 10.0)
    })
    .await
    .expect("dropped counter rises while the broker is down");
    assert!(dropped > 10.0);
    broker.restart();
    // Once connected nothing more is dropped (a full store waits for the
    // broker): the count is final.
    poll_until(WAIT, || {
        metric(metrics_port, "fieldgate_mqtt_connected").filter(|c| *c == 1.0)
    })
    .await
    .expect("reconnected");
    let dropped = metric(metrics_port, "fieldgate_mqtt_dropped_total").unwrap_or(0.0) as u64;
    // Every value from `first` on arrives (from the probe's queue, the
    // broker's persisted queue, the gateway's store, then live) except the
    // `dropped` oldest of the outage: one gap of at most that size (a
    // message the broker took but did not acknowledge before it stopped
    // may be counted dropped and still arrive), followed by the newest
    // without a hole.
    let mut values = std::collections::BTreeSet::from([first]);
    let deadline = tokio::time::Instant::now() + WAIT;
    let missing = loop {
        let n = state_on(&mut probe, "fieldgate/test/c").await.json()["properties"]["n"]
            .as_u64()
            .unwrap();
        values.insert(n);
        let last = *values.last().unwrap();
        let missing: Vec<u64> = (first..=last).filter(|v| !values.contains(v)).collect();
        let present = last - first + 1 - missing.len() as u64;
        if missing.len() as u64 <= dropped && present >= 40 && last >= first + dropped + 20 {
            break missing;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{dropped} dropped, but missing {} value(s): {missing:?}",
            missing.len()
        );
    };
    assert!(!missing.is_empty(), "nothing dropped went missing");
    let (lo, hi) = (missing[0], missing[missing.len() - 1]);
    assert_eq!(
        hi - lo + 1,
        missing.len() as u64,
        "the dropped values are one run, the oldest of the outage: {missing:?}"
    );
    assert!(
        missing.len() as u64 + 5 >= dropped,
        "{dropped} counted dropped, {} missing: {missing:?}",
        missing.len()
    );
    // The depth (5) newest of the outage came after the run, in order.
    let after: Vec<u64> = values.range(hi + 1..).copied().take(5).collect();
    assert_eq!(
        after,
        (hi + 1..hi + 6).collect::<Vec<_>>(),
        "the newest survive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health() {
    let mut broker = Mosquitto::start();
    let metrics_port = support::free_port();
    let yaml = config(broker.port(), "", FAN).replace(
        r#"metrics: { listen: "" }"#,
        &format!(r#"metrics: {{ listen: "127.0.0.1:{metrics_port}" }}"#),
    );
    let _gw = Gateway::start(&yaml);
    let healthy = poll_until(WAIT, || {
        get(metrics_port, "/healthz").filter(|(c, _)| *c == 200)
    })
    .await
    .expect("healthy once connected")
    .1;
    assert!(healthy.contains(r#""status":"ok""#), "{healthy}");
    assert!(healthy.contains(r#""reasons":[]"#), "{healthy}");
    let text = poll_until(WAIT, || {
        get(metrics_port, "/metrics")
            .map(|(_, body)| body)
            .filter(|b| b.contains("fieldgate_device_reads_total{device=\"fan\"}"))
    })
    .await
    .expect("metrics");
    let connected = format!(
        "fieldgate_mqtt_connected{{server=\"tcp://127.0.0.1:{}\",session=\"fieldgate-test\"}} 1",
        broker.port()
    );
    for family in [
        "fieldgate_build_info{",
        "fieldgate_device_up{device=\"fan\"} 1",
        "fieldgate_device_poll_duration_seconds_bucket{device=\"fan\"",
        connected.as_str(),
        "fieldgate_mqtt_published_total{session=\"fieldgate-test\"}",
        "fieldgate_mqtt_store_messages{session=\"fieldgate-test\"}",
        "fieldgate_config_last_reload_timestamp_seconds",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
    broker.stop();
    let degraded = poll_until(WAIT, || {
        get(metrics_port, "/healthz").filter(|(c, _)| *c == 503)
    })
    .await
    .expect("degraded while the broker is down")
    .1;
    assert!(degraded.contains("degraded"), "{degraded}");
    assert!(degraded.contains("fieldgate-test"), "{degraded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_response_topic_and_correlation_data() {
    let broker = Mosquitto::start();
    let yaml = config(broker.port(), "    protocolVersion: 5", FAN);
    let _gw = Gateway::start(&yaml);
    let mut probe = MqttProbe5::connect(broker.port()).await;
    probe.subscribe("replies/me", 1).await;
    probe.subscribe("fieldgate/test/fan/$state", 1).await;
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/fan/$state" && m.payload_str() == "online"
        })
        .await
        .expect("online");
    probe
        .publish_with_response(
            "fieldgate/test/fan/$set",
            br#"{"gear": "middle"}"#,
            "replies/me",
            b"corr-1",
        )
        .await;
    let m = probe
        .wait_for(WAIT, |m| m.topic == "replies/me")
        .await
        .expect("reply on the response topic");
    assert_eq!(m.json()["ok"], true);
    assert_eq!(m.correlation_data.as_deref(), Some(&b"corr-1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_before_the_broker_exists_and_connects_when_it_appears() {
    let port = support::free_port();
    let yaml = config(port, "", FAN);
    let _gw = Gateway::start(&yaml);
    // The gateway is already retrying when the broker comes up on that port.
    let broker = Mosquitto::start_on(port);
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/fan", 0).await;
    state_on(&mut probe, "fieldgate/test/fan").await;
}

#[test]
fn run_with_an_invalid_config_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "devices:\n  - name: x\n    driver: dummy\n    bogus: 1\n",
    )
    .unwrap();
    let out = support::fieldgate(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4:5"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_config_runs_on_the_embedded_broker() {
    let port = support::free_port();
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo.yaml"))
            .expect("configs/demo.yaml");
    let yaml = demo
        .replace("127.0.0.1:11883", &format!("127.0.0.1:{port}"))
        .replace(
            "127.0.0.1:9880",
            &format!("127.0.0.1:{}", support::free_port()),
        );
    let _gw = Gateway::start(&yaml);
    let mut probe = MqttProbe::connect(port).await;
    probe.subscribe("fieldgate/demo/#", 0).await;
    let m = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/demo/living-room-fan")
        .await
        .expect("fan state from the embedded broker");
    assert!(m.json()["properties"]["gear"].is_string());
}

/// Hundreds of devices starting at once: every `online`, state and
/// `offline` of the start-up and stop bursts is delivered (the store pushes
/// back instead of dropping while the broker is reachable) and every device
/// gets its `$set` topic subscribed (batched through the client's bounded
/// request channel, never dropped when it is full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_a_large_config_takes_set() {
    const DEVICES: usize = 400;
    let broker = Mosquitto::start();
    let mut devices = String::new();
    for d in 0..DEVICES {
        devices.push_str(&format!(
            "  - name: d{d:03}\n    driver: dummy\n    syncInterval: 1h\n    properties:\n      - {{ name: v, type: int32, writable: true, simulate: {{ constant: 0 }} }}\n"
        ));
    }
    let yaml = config(broker.port(), "", &devices);
    let gw = Gateway::start(&yaml);
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/+/$set/result", 1).await;
    probe.subscribe("fieldgate/test/+/$state", 1).await;
    let mut online = std::collections::HashSet::new();
    let all_online = probe
        .wait_for(Duration::from_secs(60), |m| {
            if m.topic.ends_with("/$state") && m.payload_str() == "online" {
                online.insert(m.topic.clone());
            }
            online.len() == DEVICES
        })
        .await;
    assert!(all_online.is_some(), "{} of {DEVICES} online", online.len());

    // A `$set` may reach the broker just before the device's subscription
    // does; send again to the devices that have not answered yet.
    let mut answered = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered.len() < DEVICES && tokio::time::Instant::now() < deadline {
        for d in 0..DEVICES {
            let t = format!("fieldgate/test/d{d:03}");
            if !answered.contains(&t) {
                probe
                    .publish(&format!("{t}/$set"), br#"{"v": 5}"#.to_vec(), 1, false)
                    .await;
            }
        }
        for m in probe.collect_for(Duration::from_secs(2)).await {
            if let Some(t) = m.topic.strip_suffix("/$set/result") {
                assert_eq!(m.json()["ok"], json!(true), "{}", m.payload_str());
                answered.insert(t.to_string());
            }
        }
    }
    assert_eq!(answered.len(), DEVICES, "devices that took `$set`");

    // A clean stop publishes `offline` for every device, none dropped by
    // the full store.
    probe.drain();
    gw.sigterm();
    let mut offline = std::collections::HashSet::new();
    let all_offline = probe
        .wait_for(Duration::from_secs(30), |m| {
            if m.topic.ends_with("/$state") && m.payload_str() == "offline" {
                offline.insert(m.topic.clone());
            }
            offline.len() == DEVICES
        })
        .await;
    assert!(
        all_offline.is_some(),
        "{} of {DEVICES} offline",
        offline.len()
    );
    assert!(!gw.log().contains("dropped"), "{}", gw.log());
    drop(gw);
}
