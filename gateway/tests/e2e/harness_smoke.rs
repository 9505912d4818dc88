//! Smoke tests of the end-to-end harness itself: Mosquitto start/restart,
//! the MQTT 3.1.1 and MQTT 5 probes, the CLI runner and process plumbing.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use support::{fieldgate, Gateway, Mosquitto, MqttProbe, MqttProbe5};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn mosquitto_pubsub_retained_and_restart() {
    let mut broker = Mosquitto::start();
    let mut sub = MqttProbe::connect(broker.port()).await;
    sub.subscribe("smoke/#", 1).await;
    let publisher = MqttProbe::connect(broker.port()).await;

    publisher.publish("smoke/a", "hello", 1, true).await;
    let live = sub.wait_topic(T, "smoke/a").await.expect("live message");
    assert_eq!(live.payload_str(), "hello");
    assert_eq!(live.qos, 1);
    assert!(!live.retain, "a live delivery is not flagged retained");

    // A late subscriber gets the retained message, flagged retained.
    let mut late = MqttProbe::connect(broker.port()).await;
    late.subscribe("smoke/#", 0).await;
    let retained = late.next(T).await.expect("retained message");
    assert_eq!(retained.topic, "smoke/a");
    assert!(retained.retain);
    assert_eq!(retained.payload_str(), "hello");

    // JSON payloads parse.
    publisher
        .publish("smoke/json", r#"{"x": 1}"#, 0, false)
        .await;
    let j = sub.wait_topic(T, "smoke/json").await.expect("json message");
    assert_eq!(j.json()["x"], 1);
    assert!(sub.collect_for(Duration::from_millis(200)).await.is_empty());

    // After a restart on the same port the probes reconnect and resubscribe.
    let (sub_before, pub_before) = (sub.state().connects, publisher.state().connects);
    broker.restart();
    sub.wait_reconnected(sub_before, Duration::from_secs(20))
        .await;
    publisher
        .wait_reconnected(pub_before, Duration::from_secs(20))
        .await;
    publisher.publish("smoke/b", "again", 1, false).await;
    let again = sub.wait_topic(T, "smoke/b").await.expect("after restart");
    assert_eq!(again.payload_str(), "again");

    // Stopped: the port is closed.
    broker.stop();
    assert!(!support::port_open(broker.port()));
}

#[tokio::test]
async fn mqtt5_response_topic_round_trip() {
    let broker = Mosquitto::start();
    let mut responder = MqttProbe5::connect(broker.port()).await;
    responder.subscribe("smoke5/req", 1).await;
    let mut requester = MqttProbe5::connect(broker.port()).await;
    requester.subscribe("smoke5/resp/#", 1).await;

    requester
        .publish_with_response("smoke5/req", "ping", "smoke5/resp/1", b"corr-1".to_vec())
        .await;
    let req = responder
        .wait_topic(T, "smoke5/req")
        .await
        .expect("request");
    assert_eq!(req.payload_str(), "ping");
    assert_eq!(req.response_topic.as_deref(), Some("smoke5/resp/1"));
    assert_eq!(req.correlation_data.as_deref(), Some(&b"corr-1"[..]));

    let reply_to = req.response_topic.clone().unwrap_or_default();
    responder.publish(&reply_to, "pong", 1, false).await;
    let resp = requester
        .wait_topic(T, "smoke5/resp/1")
        .await
        .expect("response");
    assert_eq!(resp.payload_str(), "pong");
    assert_eq!(resp.correlation_data, None);
}

#[test]
fn cli_version_names_the_drivers() {
    let out = fieldgate(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains("dummy"), "{text}");
}

#[test]
fn gateway_with_invalid_config_exits_and_logs() {
    let mut gw = Gateway::start("devices: [ {name: \"{dir}\", driver: nonsense} ]\n");
    assert!(gw.config_path().starts_with(gw.dir()));
    let written = std::fs::read_to_string(gw.config_path()).expect("config written");
    assert!(
        written.contains(&gw.dir().display().to_string()),
        "{{dir}} expanded"
    );
    let status = gw.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    assert!(!gw.is_running());
    assert!(!gw.log().is_empty(), "the daemon's output is captured");
}

#[test]
fn http_get_reads_status_and_body() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).expect("read request");
            assert!(n > 0, "request ended early");
            req.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8_lossy(&req).into_owned();
        s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}")
            .expect("write");
        req
    });
    let (status, body) = support::http_get(&addr, "/healthz").expect("get");
    assert_eq!(status, 503);
    assert_eq!(body, "{}");
    let req = server.join().expect("server thread");
    assert!(req.starts_with("GET /healthz HTTP/1.0\r\n"), "{req}");
}
