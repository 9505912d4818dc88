//! The core end-to-end scenarios (state, `$set` with its result, birth and
//! will) against other brokers than Mosquitto: the embedded broker of a
//! second fieldgate process, and NATS's MQTT listener (when the Debian
//! package `nats-server` is installed; run-tests.sh installs it).

use crate::support;

use std::time::Duration;

use support::{Gateway, MqttProbe};

const WAIT: Duration = Duration::from_secs(15);

/// The gateway under test: namespace `test`, the fan, QoS 1, `port`.
fn gateway_config(port: u16) -> String {
    format!(
        r#"gateway:
  namespace: test
  metrics: {{ listen: "" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{port}
    maxReconnectInterval: 2s
  message:
    qos: 1
devices:
  - name: fan
    driver: dummy
    model: fan
    syncInterval: 200ms
"#
    )
}

/// State, `$set` → result and read-back, birth, and the will after `kill -9`.
async fn state_set_and_will(port: u16) {
    let mut probe = MqttProbe::connect(port).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let mut gw = Gateway::start(&gateway_config(port));

    let birth = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/$will")
        .await
        .expect("birth message");
    assert_eq!(birth.payload_str(), "online");
    let state = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/fan")
        .await
        .expect("state")
        .json();
    assert_eq!(state["name"], "fan");
    assert_eq!(state["properties"]["gear"], "slow");

    probe
        .publish(
            "fieldgate/test/fan/$set",
            r#"{"gear":"fast","$id":"b1"}"#,
            1,
            false,
        )
        .await;
    let result = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/fan/$set/result")
        .await
        .expect("result")
        .json();
    assert_eq!(result["$id"], "b1");
    assert_eq!(result["ok"], true, "{result}");
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/fan" && m.json()["properties"]["gear"] == "fast"
        })
        .await
        .expect("state follows the $set");

    gw.kill9();
    let will = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/$will" && m.payload_str() == "offline"
        })
        .await;
    assert!(will.is_some(), "the broker delivers the will after kill -9");
}

#[cfg(feature = "broker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_scenarios_on_the_embedded_broker() {
    let port = support::free_port();
    // A fieldgate that only hosts the embedded broker.
    let host = Gateway::start(&format!(
        r#"gateway:
  namespace: host
  metrics: {{ listen: "" }}
broker:
  listen: 127.0.0.1:{port}
devices: []
"#
    ));
    assert!(
        support::wait_port_open(port, WAIT),
        "embedded broker: {}",
        host.log()
    );
    state_set_and_will(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_scenarios_on_nats_mqtt() {
    let Some(binary) = support::nats::nats_binary() else {
        eprintln!("nats-server is not installed (tests/run-tests.sh installs it); skipped");
        return;
    };
    let port = support::free_port();
    let _nats = support::nats::NatsCluster::single(&binary, port);
    state_set_and_will(port).await;
}
