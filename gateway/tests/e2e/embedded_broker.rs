//! The embedded broker (cargo feature `broker`): start-up, MQTT 3.1.1 and
//! MQTT 5 publish/subscribe with retained messages, and clear errors.
#![cfg(feature = "broker")]

use crate::support;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use fieldgate::broker::{self, BrokerError, BrokerOptions};
use support::{free_port, MqttProbe, MqttProbe5};

const T: Duration = Duration::from_secs(10);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn round_trip_with_retained_messages() {
    let port = free_port();
    let b = broker::start(addr(port)).expect("broker starts");
    assert!(b.is_running());
    assert_eq!(b.client_url(), format!("tcp://127.0.0.1:{port}"));

    let mut sub = MqttProbe::connect(port).await;
    sub.subscribe("fieldgate/demo/#", 1).await;
    let publisher = MqttProbe::connect(port).await;

    publisher
        .publish("fieldgate/demo/fan/$state", "online", 1, true)
        .await;
    publisher
        .publish("fieldgate/demo/fan", r#"{"name":"fan"}"#, 0, false)
        .await;
    let state = sub
        .wait_topic(T, "fieldgate/demo/fan/$state")
        .await
        .expect("state");
    assert_eq!(state.payload_str(), "online");
    let live = sub.wait_topic(T, "fieldgate/demo/fan").await.expect("live");
    assert_eq!(live.json()["name"], "fan");

    // A payload well above the 256 KiB the gateway may need.
    let big = vec![b'x'; 300 * 1024];
    publisher
        .publish("fieldgate/demo/big", big.clone(), 1, false)
        .await;
    let got = sub.wait_topic(T, "fieldgate/demo/big").await.expect("big");
    assert_eq!(got.payload.len(), big.len());

    // A late subscriber gets the retained `$state`, and only retained topics.
    let mut late = MqttProbe::connect(port).await;
    late.subscribe("fieldgate/demo/#", 1).await;
    let r = late.next(T).await.expect("retained message");
    assert_eq!(r.topic, "fieldgate/demo/fan/$state");
    assert_eq!(r.payload_str(), "online");
    assert!(r.retain);
    let more = late.collect_for(Duration::from_millis(300)).await;
    assert!(more.is_empty(), "only the retained message: {more:?}");

    // An empty retained message clears it.
    publisher
        .publish("fieldgate/demo/fan/$state", Vec::new(), 1, true)
        .await;
    sub.wait_for(T, |m| {
        m.topic == "fieldgate/demo/fan/$state" && m.payload.is_empty()
    })
    .await
    .expect("clearing message forwarded");
    let mut later = MqttProbe::connect(port).await;
    later.subscribe("fieldgate/demo/#", 1).await;
    let none = later.collect_for(Duration::from_millis(300)).await;
    assert!(none.is_empty(), "retained message cleared: {none:?}");
}

#[tokio::test]
async fn mqtt5_listener_carries_response_properties() {
    let (p4, p5) = (free_port(), free_port());
    let mut options = BrokerOptions::new(addr(p4));
    options.listen_v5 = Some(addr(p5));
    let b = broker::start_async(options).await.expect("broker starts");
    assert_eq!(b.listen_v5_addr(), Some(addr(p5)));

    let mut responder = MqttProbe5::connect(p5).await;
    responder.subscribe("dev/$set", 1).await;
    let requester = MqttProbe5::connect(p5).await;
    requester
        .publish_with_response("dev/$set", r#"{"on":true}"#, "reply/1", b"42".to_vec())
        .await;
    let m = responder.wait_topic(T, "dev/$set").await.expect("request");
    assert_eq!(m.response_topic.as_deref(), Some("reply/1"));
    assert_eq!(m.correlation_data.as_deref(), Some(&b"42"[..]));
}

#[test]
fn taken_port_is_a_clear_error() {
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let err = broker::start(taken).expect_err("port is taken");
    let text = err.to_string();
    assert!(text.contains(&taken.to_string()), "{text}");
    assert!(text.contains("cannot listen"), "{text}");
    assert!(matches!(
        err.downcast_ref::<BrokerError>(),
        Some(BrokerError::Bind { .. })
    ));
}

/// #17: when the embedded broker's thread dies, the daemon says so and exits
/// with an error code, so that systemd (`Restart=on-failure`) restarts it.
/// rumqttd 0.20 has no outside trigger (its accept loops carry on after
/// every error), so the thread is ended through the test hook of the cargo
/// feature `fault-injection` (src/broker/fault.rs): SIGUSR2, armed by
/// `FIELDGATE_FAULT_INJECTION=broker-thread`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_exits_with_an_error_when_the_broker_thread_dies() {
    if !cfg!(feature = "fault-injection") {
        eprintln!(
            "skipped: needs the cargo feature fault-injection (CI tests with --all-features)"
        );
        return;
    }
    let port = free_port();
    let config = format!(
        "gateway:\n  namespace: brokerdies\n  metrics: {{ listen: \"\" }}\n\
         broker:\n  listen: 127.0.0.1:{port}\n\
         devices:\n  - {{ name: fan, driver: dummy, model: fan, syncInterval: 200ms }}\n"
    );
    let mut gw = support::Gateway::start_with_env(
        &config,
        &[("FIELDGATE_FAULT_INJECTION", "broker-thread")],
    );
    gw.expect_panics();
    assert!(
        gw.wait_for_log("fault injection armed", T),
        "the hook is armed:\n{}",
        gw.log()
    );
    // The broker works: the fan's state arrives through it.
    let mut sub = MqttProbe::connect(port).await;
    sub.subscribe("fieldgate/brokerdies/fan", 1).await;
    assert!(
        sub.wait_topic(T, "fieldgate/brokerdies/fan")
            .await
            .is_some(),
        "the fan's state through the embedded broker:\n{}",
        gw.log()
    );
    assert!(gw.is_running());

    let kill = std::process::Command::new("kill")
        .args(["-USR2", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = gw.wait_exit(T).expect("the daemon exits");
    let log = gw.log();
    assert_eq!(
        status.code(),
        Some(1),
        "an error exit of its own, not a signal: {status:?}\n{log}"
    );
    assert!(
        log.contains(
            "the embedded MQTT broker stopped: stopping so that the service manager restarts fieldgate"
        ),
        "{log}"
    );
}
