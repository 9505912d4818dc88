//! A name server that never answers (issue 18, item 3), for the broker URL
//! and OPC-UA endpoints: host names are resolved with the resolver's own
//! timeout (outside `connectTimeout` and the device timeout), and a failing
//! resolver marks only what needs it. A session with a cluster list moves
//! on to a server given by address.
//!
//! The gateway alone gets a resolv.conf naming a "name server" that swallows
//! every query: its own mount namespace (`unshare --mount`, as root) with
//! the file bound over /etc/resolv.conf. The machine's resolver config is
//! never touched. Skipped, with a message, when not run as root.
#![cfg(feature = "opcua")]

use crate::support;

use std::time::Duration;

use support::{Gateway, MqttProbe};

const WAIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_server_that_never_answers_marks_only_the_broker_and_endpoint_behind_a_name() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root for a mount namespace and a socket on port 53");
        return;
    }
    let swallower = std::net::UdpSocket::bind("127.0.0.3:53").expect("bind 127.0.0.3:53");
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.3\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let bind = format!(
        "mount --bind '{}' /etc/resolv.conf && exec \"$@\"",
        resolv.display()
    );

    let broker = support::Mosquitto::start();
    let port = broker.port();
    let mut probe = MqttProbe::connect(port).await;
    probe.subscribe("fieldgate/dns/#", 1).await;
    let metrics = support::free_port();
    let config = format!(
        r#"gateway:
  namespace: dns
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
mqtt:
  client:
    # The name does not resolve; the address does.
    server: [tcp://broker.fieldgate-test:{port}, tcp://127.0.0.1:{port}]
    connectTimeout: 2s
    maxReconnectInterval: 2s
devices:
  - name: clock
    driver: dummy
    syncInterval: 100ms
    properties:
      - {{ name: n, type: uint32, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}
  - name: plc
    driver: opcua
    timeout: 2s
    protocol: {{ endpoint: "opc.tcp://plc.fieldgate-test:4840/" }}
    properties:
      - {{ name: x, nodeId: "ns=2;s=X", type: int32 }}
  - name: remote
    driver: dummy
    syncInterval: 100ms
    mqtt: {{ client: {{ server: "tcp://remote.fieldgate-test:{port}", clientId: dns-remote }} }}
    properties:
      - {{ name: n, type: uint32, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}
"#
    );
    let gw = Gateway::start_wrapped(
        &config,
        &["unshare", "--mount", "--", "sh", "-c", &bind, "sh"],
    );

    // The session gave the name the resolver's own time (5 s, not the
    // 2 s connectTimeout), then connected to the address.
    let up = format!(
        "fieldgate_mqtt_connected{{server=\"tcp://127.0.0.1:{port}\",session=\"fieldgate-dns\"}} 1"
    );
    let connected = support::wait_until_async(WAIT, || {
        support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics")
            .is_ok_and(|(_, body)| body.lines().any(|l| l == up))
    })
    .await;
    assert!(
        connected,
        "not connected through the address:\n{}",
        gw.log()
    );
    assert!(
        gw.wait_for_log(
            &format!("cannot resolve broker.fieldgate-test:{port}: no answer from the name server within 5s"),
            WAIT
        ),
        "{}",
        gw.log()
    );
    // The device behind a named endpoint is offline with the resolver's
    // reason; the simulator on the same session keeps publishing.
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/dns/plc/$state" && m.payload_str() == "offline"
        })
        .await
        .expect("plc offline");
    assert!(
        gw.wait_for_log("cannot resolve plc.fieldgate-test:4840", WAIT),
        "{}",
        gw.log()
    );
    let mut last = 0;
    while last < 30 {
        let m = probe
            .wait_for(WAIT, |m| m.topic == "fieldgate/dns/clock")
            .await
            .expect("clock states keep coming");
        last = m.json()["properties"]["n"].as_u64().unwrap_or(0);
    }
    // The session whose only server is a name stays down, for that reason.
    assert!(
        gw.wait_for_log("cannot resolve remote.fieldgate-test", WAIT),
        "{}",
        gw.log()
    );
    assert!(
        probe
            .collect_for(Duration::from_millis(500))
            .await
            .iter()
            .all(|m| !m.topic.starts_with("fieldgate/dns/remote")),
        "remote published without a broker"
    );
    // Lookups in flight stay bounded: no thread piles up per attempt.
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let threads: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(threads <= 24, "{threads} threads");
    drop(swallower);
}
