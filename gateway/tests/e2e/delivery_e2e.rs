//! End-to-end delivery guarantees (CONTRACT §4): a 1 000 msg/s QoS 1 stream
//! of counters through broker outages, a `kill -9` of the gateway, a full
//! store and a damaged store file, observed by a persistent subscriber on a
//! real Mosquitto with persistence.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::counters::{assert_gap_free, counter_devices, receive_until, Streams, SECOND_RUN};
use support::{Gateway, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(20);
/// Devices × interval of the full-rate stream: 20 × 20 ms = 1 000 msg/s.
const DEVICES: usize = 20;
const INTERVAL: &str = "20ms";

/// A persistent broker (its session store survives `stop_graceful`) that
/// queues without limit for offline persistent subscribers.
fn persistent_broker(state: &Path) -> Mosquitto {
    // Mosquitto started as root runs as the `mosquitto` user: it must be
    // able to write its database into the (root-owned) temp dir.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o777))
        .expect("open up the broker's state dir");
    Mosquitto::start_with(&format!(
        "persistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_queued_bytes 0\nautosave_interval 3600\n",
        state.display()
    ))
}

/// A gateway config: `devices` counters polled every `interval`, QoS 1,
/// not retained, published on every read; `store` goes under `mqtt.client`.
fn config(
    port: u16,
    metrics: u16,
    store: &str,
    devices: usize,
    interval: &str,
    start: u64,
) -> String {
    let mut yaml = format!(
        r#"gateway:
  namespace: e2e
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{port}
    clientId: e2e-gateway
    maxReconnectInterval: 1s
{store}
  message: {{ qos: 1, retained: false }}
devices:
"#
    );
    yaml.push_str(&counter_devices(devices, interval, start));
    yaml
}

/// The value of `family{session="e2e-gateway"}` in /metrics.
fn metric(port: u16, family: &str) -> Option<f64> {
    let (_, body) = support::http_get(&format!("127.0.0.1:{port}"), "/metrics").ok()?;
    body.lines()
        .find(|l| l.starts_with(family) && l.contains("e2e-gateway"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Receives during `dur` (the outage length is a scenario parameter).
async fn receive_for(probe: &mut MqttProbe, streams: &mut Streams, dur: Duration) {
    for m in probe.collect_for(dur).await {
        streams.add(&m);
    }
}

/// Waits until the gateway's backlog is gone: no more in the store than
/// live traffic keeps in flight (the session's window is 64).
async fn wait_store_drained(metrics: u16, timeout: Duration) {
    let ok = support::wait_until_async(timeout, || {
        metric(metrics, "fieldgate_mqtt_store_messages").is_some_and(|n| n < 64.0)
    })
    .await;
    assert!(
        ok,
        "store not drained: {:?} messages",
        metric(metrics, "fieldgate_mqtt_store_messages")
    );
}

async fn subscriber(port: u16, id: &str) -> MqttProbe {
    let probe = MqttProbe::connect_persistent(port, id).await;
    probe.subscribe("fieldgate/e2e/+", 1).await;
    probe
}

fn names() -> Vec<String> {
    (0..DEVICES).map(|i| format!("d{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_of_30s_loses_nothing_and_keeps_order() {
    let state = tempfile::tempdir().unwrap();
    let mut broker = persistent_broker(state.path());
    let mut probe = subscriber(broker.port(), "e2e-sub-outage").await;
    let metrics = support::free_port();
    // Memory store sized for the outage: 30 s × 1 000 msg/s plus margin.
    let gw = Gateway::start(&config(
        broker.port(),
        metrics,
        "    messageChannelDepth: 100000",
        DEVICES,
        INTERVAL,
        0,
    ));
    let mut streams = Streams::new("e2e");
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        s.by_device.len() == DEVICES
    })
    .await;

    broker.stop_graceful();
    assert!(
        !broker.log().contains("Error saving"),
        "the broker must keep the subscriber's session:\n{}",
        broker.log()
    );
    receive_for(&mut probe, &mut streams, Duration::from_secs(30)).await;
    let held = metric(metrics, "fieldgate_mqtt_store_messages").unwrap_or(0.0);
    assert!(
        held > 5_000.0,
        "only {held} messages stored during the outage"
    );
    let age = metric(metrics, "fieldgate_mqtt_store_oldest_age_seconds").unwrap_or(0.0);
    assert!(age >= 20.0, "oldest message age {age}s after a 30 s outage");
    broker.restart();

    wait_store_drained(metrics, Duration::from_secs(60)).await;
    let replayed = metric(metrics, "fieldgate_mqtt_replayed_total").unwrap_or(0.0);
    assert!(replayed >= held, "replayed {replayed} < held {held}");
    // Everything the gateway had is now on its way; take it all in.
    let last: BTreeMap<String, u64> = names()
        .into_iter()
        .map(|d| {
            (
                d.clone(),
                streams
                    .by_device
                    .get(&d)
                    .and_then(|v| v.iter().map(|(n, _)| *n).max())
                    .unwrap_or(0),
            )
        })
        .collect();
    receive_until(&mut probe, &mut streams, Duration::from_secs(60), |s| {
        last.iter().all(|(d, before)| {
            s.firsts(d, false)
                .last()
                .is_some_and(|n| *n >= before + held as u64 / DEVICES as u64)
        })
    })
    .await;
    assert_eq!(
        metric(metrics, "fieldgate_mqtt_dropped_total").unwrap_or(0.0),
        0.0
    );
    let broker_log = broker.log();
    for d in names() {
        let got = streams.firsts(&d, false);
        if got.windows(2).any(|w| w[1] != w[0] + 1) {
            panic!(
                "{d}: gap in {:?}\nbroker log:\n{broker_log}",
                &got[..got.len().min(400)]
            );
        }
    }
    let acks = support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        acks.contains("fieldgate_mqtt_ack_latency_seconds_count{session=\"e2e-gateway\"}"),
        "ack latency histogram missing"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_survives_kill_9_during_the_outage() {
    let state = tempfile::tempdir().unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = format!(
        "    store: {{ type: file, directoryPrefix: {}/q }}",
        store_dir.path().display()
    );
    let mut broker = persistent_broker(state.path());
    let mut probe = subscriber(broker.port(), "e2e-sub-kill").await;
    let metrics = support::free_port();
    let mut first = Gateway::start(&config(
        broker.port(),
        metrics,
        &store,
        DEVICES,
        INTERVAL,
        0,
    ));
    let mut streams = Streams::new("e2e");
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        s.by_device.len() == DEVICES
    })
    .await;

    broker.stop_graceful();
    receive_for(&mut probe, &mut streams, Duration::from_secs(15)).await;
    let held = metric(metrics, "fieldgate_mqtt_store_messages").unwrap_or(0.0);
    first.kill9();
    assert!(
        held > 3_000.0,
        "only {held} messages stored before the kill"
    );
    let mode = std::fs::metadata(store_dir.path().join("q")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );

    // The second run counts from SECOND_RUN so both runs stay checkable.
    let metrics2 = support::free_port();
    let second = Gateway::start(&config(
        broker.port(),
        metrics2,
        &store,
        DEVICES,
        INTERVAL,
        SECOND_RUN,
    ));
    assert!(
        second.wait_for_log("recovered", WAIT),
        "no recovery logged:\n{}",
        second.log()
    );
    receive_for(&mut probe, &mut streams, Duration::from_secs(15)).await;
    broker.restart();

    wait_store_drained(metrics2, Duration::from_secs(60)).await;
    // The first run's messages: gap-free from its first to the last one
    // written before the kill, the stored ones all delivered.
    let before_outage: usize = names().iter().map(|d| streams.firsts(d, false).len()).sum();
    receive_until(&mut probe, &mut streams, Duration::from_secs(60), |s| {
        names().iter().all(|d| s.firsts(d, true).len() > 10)
    })
    .await;
    let mut first_total = 0;
    for d in names() {
        let run1 = streams.firsts(&d, false);
        assert_gap_free(&d, &run1);
        assert_eq!(run1[0], 0, "{d}: first run's first message");
        first_total += run1.len();
        assert_gap_free(&d, &streams.firsts(&d, true));
    }
    // Less at most what was in flight when the broker went away (the
    // subscriber may have had those before the outage).
    assert!(
        (first_total - before_outage) as f64 >= held - 128.0,
        "{} of the first run's messages arrived after the restart, {held} were stored",
        first_total - before_outage
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_file_store_drops_the_oldest_and_counts() {
    let state = tempfile::tempdir().unwrap();
    let mut broker = persistent_broker(state.path());
    let mut probe = subscriber(broker.port(), "e2e-sub-full").await;
    broker.stop_graceful();
    let metrics = support::free_port();
    let gw = Gateway::start(&config(
        broker.port(),
        metrics,
        "    store: { type: file, directoryPrefix: '{dir}/q', maxBytes: 64KiB }",
        4,
        "10ms",
        0,
    ));
    let dropped = support::wait_until_async(WAIT, || {
        metric(metrics, "fieldgate_mqtt_dropped_total").is_some_and(|d| d >= 200.0)
    })
    .await;
    assert!(dropped, "nothing dropped:\n{}", gw.log());
    assert!(gw.log().contains("store full"), "{}", gw.log());
    let on_disk: u64 = std::fs::read_dir(gw.dir().join("q"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 64 << 10, "{on_disk} bytes on disk");
    broker.restart();
    wait_store_drained(metrics, WAIT).await;
    let mut streams = Streams::new("e2e");
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        s.by_device.len() == 4 && s.by_device.values().all(|v| v.len() > 20)
    })
    .await;
    for d in ["d0", "d1", "d2", "d3"] {
        let got = streams.firsts(d, false);
        assert!(
            got[0] > 0,
            "{d}: the oldest should have been dropped: {got:?}"
        );
        // What was kept is the newest part, gap-free up to live traffic.
        assert_gap_free(d, &got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_file_is_recovered_up_to_the_damage() {
    let store_dir = tempfile::tempdir().unwrap();
    let dir = store_dir.path().join("q");
    let store = format!(
        "    store: {{ type: file, directoryPrefix: {} }}",
        dir.display()
    );
    // First run: no broker, messages pile up on disk; clean stop keeps them.
    let nowhere = support::free_port();
    let metrics = support::free_port();
    let mut first = Gateway::start(&config(nowhere, metrics, &store, 2, "20ms", 0));
    let stored = support::wait_until_async(WAIT, || {
        metric(metrics, "fieldgate_mqtt_store_messages").is_some_and(|n| n >= 200.0)
    })
    .await;
    assert!(stored, "nothing stored:\n{}", first.log());
    let held = metric(metrics, "fieldgate_mqtt_store_messages").unwrap_or(0.0) as usize;
    first.sigterm();
    assert!(first.wait_exit(WAIT).is_some());
    // Flip one byte in the middle of the largest segment.
    let seg: PathBuf = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xFF;
    std::fs::write(&seg, &data).unwrap();

    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/e2e/+", 1).await;
    let second = Gateway::start(&config(
        broker.port(),
        support::free_port(),
        &store,
        2,
        "20ms",
        SECOND_RUN,
    ));
    let mut streams = Streams::new("e2e");
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        ["d0", "d1"].iter().all(|d| s.firsts(d, true).len() > 5)
    })
    .await;
    let log = second.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("dropped the remaining")),
        "no damage warning:\n{log}"
    );
    let mut recovered = 0;
    for d in ["d0", "d1"] {
        let run1 = streams.firsts(d, false);
        assert_gap_free(d, &run1);
        assert_eq!(run1[0], 0, "{d}: recovery starts at the oldest");
        recovered += run1.len();
        assert_gap_free(d, &streams.firsts(d, true));
    }
    assert!(recovered > 10, "only {recovered} recovered");
    assert!(
        recovered < held,
        "{recovered} of {held} recovered: more than was before the damage"
    );
}
