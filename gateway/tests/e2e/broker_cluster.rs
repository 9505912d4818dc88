//! Broker clusters (CONTRACT §13): `mqtt.client.server` as a list of the
//! servers of a cluster. A session connects to the first that answers,
//! moves to the next on a lost connection, keeps its store across the move
//! and shows the server in use as the `server` label of
//! `fieldgate_mqtt_connected`.
//!
//! Against a real cluster of nats-server nodes on loopback (the Debian
//! package; tests/run-tests.sh installs it): JetStream on two nodes that are
//! never stopped, MQTT on every node, and only an MQTT node without
//! JetStream is killed (see `support::nats` for why).

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::nats::{nats_binary, NatsCluster};
use support::{Gateway, MqttProbe};

const WAIT: Duration = Duration::from_secs(60);

/// A gateway of namespace `ns` on the cluster `servers` (in order), with
/// one counting device (a state every 100 ms), QoS 1 and a file store.
fn gateway_config(ns: &str, servers: &[String], metrics: u16) -> String {
    format!(
        r#"gateway:
  namespace: {ns}
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
mqtt:
  client:
    server: [{servers}]
    maxReconnectInterval: 2s
    connectTimeout: 5s
    store: {{ type: file, directoryPrefix: "{{dir}}/store" }}
  message:
    qos: 1
devices:
  - name: meter
    driver: dummy
    syncInterval: 100ms
    properties:
      - {{ name: n, type: uint32, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}
"#,
        servers = servers.join(", ")
    )
}

/// The counter values seen per namespace.
type Seen = BTreeMap<String, BTreeSet<u64>>;

/// Takes the probe's messages into `seen` until `done` holds (panics after
/// [`WAIT`] with what was seen).
async fn take_until(
    probe: &mut MqttProbe,
    seen: &mut Seen,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = probe.next(left).await else {
            panic!("timed out waiting for {what}; seen: {:?}", summary(seen));
        };
        let mut levels = m.topic.split('/');
        if let (Some("fieldgate"), Some(ns), Some("meter"), None) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        {
            if let Some(n) = m.json()["properties"]["n"].as_u64() {
                seen.entry(ns.to_owned()).or_default().insert(n);
            }
        }
    }
}

/// Per namespace: how many values, the highest, and the first missing one.
fn summary(seen: &Seen) -> Vec<(String, usize, u64, Option<u64>)> {
    seen.iter()
        .map(|(ns, v)| {
            let max = v.last().copied().unwrap_or(0);
            let gap = (0..=max).find(|n| !v.contains(n));
            (ns.clone(), v.len(), max, gap)
        })
        .collect()
}

fn highest(seen: &Seen, ns: &str) -> u64 {
    seen.get(ns).and_then(|v| v.last().copied()).unwrap_or(0)
}

/// The gateway's `fieldgate_mqtt_connected` line of session `fieldgate-<ns>`.
fn connected_line(metrics: u16, ns: &str) -> Option<String> {
    let (_, body) = support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics").ok()?;
    let session = format!("session=\"fieldgate-{ns}\"");
    body.lines()
        .find(|l| l.starts_with("fieldgate_mqtt_connected{") && l.contains(&session))
        .map(str::to_owned)
}

/// Waits until the gateway says it is connected to `url`.
async fn wait_connected_to(metrics: u16, ns: &str, url: &str, gw: &Gateway) {
    let want = format!("fieldgate_mqtt_connected{{server=\"{url}\",session=\"fieldgate-{ns}\"}} 1");
    let ok = support::wait_until_async(WAIT, || {
        connected_line(metrics, ns).as_deref() == Some(want.as_str())
    })
    .await;
    assert!(
        ok,
        "{ns}: not connected to {url}: {:?}\n{}",
        connected_line(metrics, ns),
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_move_to_another_node_with_nothing_lost() {
    let Some(binary) = nats_binary() else {
        eprintln!(
            "SKIPPED: nats-server is not installed (tests/run-tests.sh installs it; apt-get install nats-server)"
        );
        return;
    };
    // n0, n1: JetStream, never stopped; n2, n3: MQTT only. n2 is killed.
    let mut cluster = NatsCluster::start(&binary, &[true, true, false, false]);
    let urls: Vec<String> = (0..4).map(|i| cluster.mqtt_url(i)).collect();
    let url = |i: usize| urls[i].clone();
    // The subscriber is on a node no gateway starts on.
    let mut probe = MqttProbe::connect(cluster.mqtt_port(0)).await;
    probe.subscribe("fieldgate/+/meter", 1).await;

    let layout = [
        ("alpha", vec![url(2), url(3), url(1)]),
        ("beta", vec![url(1), url(2), url(3)]),
        ("gamma", vec![url(3), url(1), url(2)]),
    ];
    let ports = support::nats::free_ports(layout.len());
    let gateways: Vec<Gateway> = layout
        .iter()
        .zip(&ports)
        .map(|((ns, servers), port)| Gateway::start(&gateway_config(ns, servers, *port)))
        .collect();
    for ((ns, servers), (port, gw)) in layout.iter().zip(ports.iter().zip(&gateways)) {
        wait_connected_to(*port, ns, &servers[0], gw).await;
    }

    // Every device, published on three nodes, reaches the fourth.
    let mut seen = Seen::new();
    take_until(&mut probe, &mut seen, "every device", |s| {
        ["alpha", "beta", "gamma"]
            .iter()
            .all(|ns| highest(s, ns) >= 10)
    })
    .await;

    // Kill alpha's node: alpha moves to the next of its list, n3.
    let at_kill = highest(&seen, "alpha");
    cluster.kill(2);
    wait_connected_to(ports[0], "alpha", &url(3), &gateways[0]).await;
    assert!(
        gateways[0].wait_for_log("connection to the broker lost", WAIT),
        "{}",
        gateways[0].log()
    );
    take_until(&mut probe, &mut seen, "alpha's states through n3", |s| {
        highest(s, "alpha") >= at_kill + 30
            && highest(s, "beta") >= at_kill + 30
            && highest(s, "gamma") >= at_kill + 30
    })
    .await;

    // Nothing lost: every value from the first to the last, per device
    // (QoS 1 may deliver some twice; the set counts each once).
    for (ns, count, max, gap) in summary(&seen) {
        assert_eq!(
            gap,
            None,
            "{ns}: value {gap:?} of 0..={max} never arrived ({count} seen)\n{}",
            cluster.logs()
        );
    }
    // The others stayed where they were.
    wait_connected_to(ports[1], "beta", &url(1), &gateways[1]).await;
    wait_connected_to(ports[2], "gamma", &url(3), &gateways[2]).await;
    // One series per session: alpha's old server is gone from /metrics.
    let (_, body) = support::http_get(&format!("127.0.0.1:{}", ports[0]), "/metrics").unwrap();
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("fieldgate_mqtt_connected{"))
            .count(),
        1,
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_connects_to_the_first_server_that_answers() {
    // Not a NATS matter: a list whose first server is down (a closed
    // port) and second is a Mosquitto. The session skips the dead one at
    // once, without waiting for the backoff.
    let broker = support::Mosquitto::start();
    let dead = support::free_port();
    let metrics = support::free_port();
    let servers = [format!("tcp://127.0.0.1:{dead}"), broker.url()];
    let gw = Gateway::start(&gateway_config("solo", &servers, metrics));
    wait_connected_to(metrics, "solo", &servers[1], &gw).await;
    assert!(
        gw.log().contains(&format!("trying {}", servers[1])),
        "{}",
        gw.log()
    );
}
