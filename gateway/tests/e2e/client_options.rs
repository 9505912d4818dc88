//! End-to-end tests of the real effect of four MQTT options (issue #19),
//! each against a Mosquitto started by the test and observed on the wire
//! (Mosquitto's `log_type all` protocol log) or by a subscriber:
//!
//! - `autoReconnect: false`: the first connection is retried, a lost one is not;
//! - `qos: 2`: state messages travel as QoS 2 with the full PUBREC/PUBREL/PUBCOMP flow;
//! - a non-default will: custom topic, base64 payload, QoS 0 and 2, not retained;
//! - `waitTimeout`: while the session takes no more messages, a device drops
//!   (and counts) what it cannot hand over in time.

use crate::support;

use std::time::Duration;

use support::{free_port, http_get, send_signal, wait_until_async, Gateway, Mosquitto, MqttProbe};

const T: Duration = Duration::from_secs(30);

/// Mosquitto logging every packet (`Received PUBLISH from … (d0, q2, …)`).
const WIRE_LOG: &str = "log_type all\nlog_dest stderr\n";

/// One simulated fan publishing every 200 ms; `client` and `message` are the
/// bodies of `mqtt.client` and `mqtt.message` (indented by four spaces).
fn config(client: &str, message: &str, metrics: &str) -> String {
    format!(
        "gateway:\n  namespace: test\n  stateDirectory: \"{{dir}}/state\"\n  metrics: {{ listen: \"{metrics}\" }}\n\
         mqtt:\n  client:\n{client}\n  message:\n{message}\n\
         devices:\n  - {{ name: fan, driver: dummy, model: fan, syncInterval: 200ms }}\n"
    )
}

/// Lines of `log` that mention `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// `family{labels…} value` from /metrics, summed over matching series.
fn metric(port: u16, family: &str) -> f64 {
    let (status, body) = http_get(&format!("127.0.0.1:{port}"), "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_reconnect_false_retries_the_first_connection_but_not_a_lost_one() {
    let port = free_port();
    let client = |id: &str, auto: bool| {
        format!(
            "    server: tcp://127.0.0.1:{port}\n    clientId: {id}\n    autoReconnect: {auto}\n    maxReconnectInterval: 1s"
        )
    };
    // Both gateways start before the broker: the first connection is
    // retried whatever autoReconnect says.
    let off = Gateway::start(&config(&client("gw-off", false), "    qos: 1", ""));
    let on = Gateway::start(&config(&client("gw-on", true), "    qos: 1", ""));
    assert!(
        off.wait_for_log("cannot connect to the broker", T),
        "{}",
        off.log()
    );
    let mut broker = Mosquitto::start_on(port);
    for gw in [&off, &on] {
        assert!(
            gw.wait_for_log("connected to the broker", T),
            "the first connection was not retried:\n{}",
            gw.log()
        );
    }

    // The connection is lost: the broker crashes and comes back.
    broker.stop();
    assert!(
        off.wait_for_log("autoReconnect is off: not reconnecting", T),
        "{}",
        off.log()
    );
    broker.restart();
    let mut probe = MqttProbe::connect(port).await;
    probe.subscribe("fieldgate/test/fan", 1).await;
    // The autoReconnect: true gateway comes back (backoff ≤ 1 s) and
    // publishes ten more states; by then the other one, had it retried
    // with the same backoff, would have been back for seconds.
    for _ in 0..10 {
        probe
            .wait_for(T, |m| m.topic == "fieldgate/test/fan")
            .await
            .expect("gw-on reconnected and publishes");
    }
    let log = broker.log();
    assert!(
        lines_with(&log, "as gw-on").len() >= 2,
        "gw-on connected to the restarted broker:\n{log}"
    );
    assert_eq!(
        lines_with(&log, "as gw-off").len(),
        1,
        "gw-off reconnected to the restarted broker despite autoReconnect: false:\n{log}"
    );
    assert_eq!(
        off.log().matches("connected to the broker").count(),
        1,
        "{}",
        off.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_on_the_wire() {
    let broker = Mosquitto::start_with(WIRE_LOG);
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/fan", 2).await;
    let _gw = Gateway::start(&config(
        &format!("    server: {}\n    clientId: gw-qos2", broker.url()),
        "    qos: 2",
        "",
    ));
    let m = probe
        .wait_for(T, |m| m.topic == "fieldgate/test/fan")
        .await
        .expect("a state message");
    assert_eq!(m.qos, 2, "delivered to a QoS 2 subscriber with QoS 2");
    // Mosquitto saw the gateway's PUBLISH at QoS 2 and the whole exchange:
    // it sent PUBREC, the gateway answered PUBREL, it sent PUBCOMP.
    let done = wait_until_async(T, || {
        let log = broker.log();
        !lines_with(&log, "Received PUBREL from gw-qos2").is_empty()
            && !lines_with(&log, "Sending PUBCOMP to gw-qos2").is_empty()
    })
    .await;
    let log = broker.log();
    assert!(done, "no PUBREL/PUBCOMP with gw-qos2:\n{log}");
    let publishes = lines_with(&log, "Received PUBLISH from gw-qos2");
    let states: Vec<&&str> = publishes
        .iter()
        .filter(|l| l.contains("'fieldgate/test/fan'"))
        .collect();
    assert!(!states.is_empty(), "{log}");
    assert!(
        states.iter().all(|l| l.contains(", q2,")),
        "state PUBLISHes not at QoS 2:\n{}",
        publishes.join("\n")
    );
    assert!(
        !lines_with(&log, "Sending PUBREC to gw-qos2").is_empty(),
        "{log}"
    );
}

/// A gateway with `will` as its `mqtt.client.will` mapping, on `broker`.
fn will_gateway(broker: &Mosquitto, id: &str, qos: u8) -> Gateway {
    Gateway::start(&config(
        &format!(
            "    server: {}\n    clientId: {id}\n    will: {{ topic: plant/{id}/lastwill, payloadEncode: base64, payloadContent: \"Z29uZQ==\", qos: {qos}, retained: false }}",
            broker.url()
        ),
        "    qos: 1",
        "",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_will_base64_qos_0_and_2_not_retained() {
    let broker = Mosquitto::start_with(WIRE_LOG);
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("plant/+/lastwill", 2).await;
    for (id, qos) in [("gw-will0", 0u8), ("gw-will2", 2u8)] {
        let topic = format!("plant/{id}/lastwill");
        let mut gw = will_gateway(&broker, id, qos);
        // After the connect the will topic says `online`, with the will's
        // QoS and retain flag.
        let online = probe
            .wait_for(T, |m| m.topic == topic)
            .await
            .expect("online on the will topic");
        assert_eq!(online.payload_str(), "online");
        assert!(!online.retain, "retained: false");
        assert_eq!(online.qos, qos, "online at the will's QoS");
        // The CONNECT carried the will: decoded payload (4 bytes: `gone`),
        // not retained, at its QoS.
        let log = broker.log();
        assert!(
            log.contains(&format!("Will message specified (4 bytes) (r0, q{qos})")),
            "the will in {id}'s CONNECT:\n{log}"
        );
        // A crash: the broker publishes the will.
        gw.kill9();
        let will = probe
            .wait_for(T, |m| m.topic == topic)
            .await
            .expect("the will after a crash");
        assert_eq!(will.payload, b"gone", "the base64 payload, decoded");
        assert!(!will.retain);
        assert_eq!(will.qos, qos);
    }
    // Not retained: a new subscriber gets nothing on the will topics.
    let mut late = MqttProbe::connect(broker.port()).await;
    late.subscribe("plant/#", 2).await;
    // The probe's own marker, published after the subscription: anything
    // retained would have arrived before it.
    late.publish("plant/marker", "m", 1, false).await;
    let first = late.next(T).await.expect("the marker");
    assert_eq!(
        first.topic, "plant/marker",
        "a retained will arrived: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_timeout_drops_and_counts_what_the_session_cannot_take() {
    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/d0", 1).await;
    let metrics = free_port();
    // A small store (at most 5 unacknowledged QoS 1 messages) and ten
    // devices publishing every 10 ms, so that the session's input queue
    // (1024 messages) fills within seconds once the store is full.
    let mut yaml = config(
        &format!(
            "    server: {}\n    clientId: gw-wait\n    messageChannelDepth: 5\n    keepAlive: 1m\n    pingTimeout: 1m",
            broker.url()
        ),
        "    qos: 1\n    waitTimeout: 300ms",
        &format!("127.0.0.1:{metrics}"),
    );
    let devices = yaml.find("devices:\n").expect("devices");
    yaml.truncate(devices);
    yaml.push_str("devices:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "  - {{ name: d{i}, driver: dummy, syncInterval: 10ms, properties: [{{ name: n, type: uint32, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}] }}\n"
        ));
    }
    let gw = Gateway::start(&yaml);
    probe
        .wait_for(T, |m| m.topic == "fieldgate/test/d0")
        .await
        .expect("a state message");
    assert_eq!(metric(metrics, "fieldgate_mqtt_dropped_total"), 0.0);

    // The broker freezes: the TCP connection stays up, nothing is
    // acknowledged. The store fills; while connected a full store pushes
    // back instead of dropping, so the device waits up to waitTimeout,
    // then drops the message and counts it.
    let pid = broker.pid().expect("mosquitto runs");
    send_signal(pid, "STOP");
    let dropped = wait_until_async(T, || {
        gw.log()
            .contains("publish not accepted within waitTimeout (300ms); dropped")
    })
    .await;
    send_signal(pid, "CONT");
    assert!(dropped, "no waitTimeout drop:\n{}", gw.log());
    assert!(
        wait_until_async(T, || metric(metrics, "fieldgate_mqtt_dropped_total") >= 1.0).await,
        "drops not counted in fieldgate_mqtt_dropped_total"
    );
    // The session stayed connected all along (a freeze, not a disconnect),
    // and delivery resumes once the broker answers again.
    assert!(
        !gw.log().contains("connection to the broker lost"),
        "{}",
        gw.log()
    );
    probe.drain();
    probe
        .wait_for(T, |m| m.topic == "fieldgate/test/d0")
        .await
        .expect("states flow again after the broker thaws");
}
