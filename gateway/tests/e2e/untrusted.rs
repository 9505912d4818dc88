//! Commands from outside are untrusted (CONTRACT §9), end to end with the
//! real binary and a real Mosquitto: no single MQTT message may stall,
//! replay or amplify. Retained commands are never executed (across a
//! gateway restart and a reconnect); a bad MQTT 5 response topic does not
//! break the session; a message over the broker's packet limit is dropped
//! and the rest flows; a broker that stops acknowledging is noticed
//! (`ackTimeout`); an 8 000-key `$set` gets a small result; a command
//! flood is rate limited. Each test failed on the code before §9.

use crate::support;

use crate::fault_rig;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fault_rig::{clock, metric, Proxy, Recorder, WAIT};
use serde_json::Value;
use support::{Gateway, Mosquitto, MqttProbe, MqttProbe5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NS: &str = "untrusted";
const FAN: &str = "fieldgate/untrusted/fan";

/// A gateway config: namespace `untrusted`, metrics on `metrics`, the
/// broker at `server`, `client` and `message` lines under `mqtt.client` /
/// `mqtt.message`, a fan, a clock `tick` and `extra` devices.
fn config(server: &str, metrics: u16, client: &str, message: &str, extra: &str) -> String {
    format!(
        "gateway:\n  namespace: {NS}\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: {server}\n    maxReconnectInterval: 1s\n{client}  message:\n    qos: 1\n{message}devices:\n  - {{ name: fan, driver: dummy, model: fan, syncInterval: 100ms }}\n{}{extra}",
        clock("tick")
    )
}

/// Waits until the fan's gear is `want`.
async fn gear_is(rec: &mut Recorder, want: &str) {
    rec.state_where("fan", &format!("gear {want}"), |s| {
        s["properties"]["gear"] == want
    })
    .await;
}

/// Waits until `cond` holds (checked every 50 ms), at most [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let ok = support::wait_until_async(WAIT, &mut cond).await;
    assert!(ok, "timed out after {WAIT:?} waiting for {what}");
}

/// `fieldgate_mqtt_commands_ignored_total{reason}` (0 when absent).
fn ignored(metrics: u16, reason: &str) -> f64 {
    metric(
        metrics,
        "fieldgate_mqtt_commands_ignored_total",
        &[&format!("reason=\"{reason}\"")],
    )
    .unwrap_or(0.0)
}

/// `fieldgate_mqtt_dropped_total{reason}` (0 when absent).
fn dropped(metrics: u16, reason: &str) -> f64 {
    metric(
        metrics,
        "fieldgate_mqtt_dropped_total",
        &[&format!("reason=\"{reason}\"")],
    )
    .unwrap_or(0.0)
}

/// Asserts that the fan's gear stays `want` in the next 10 states read
/// from `since` on. Older states may still arrive: QoS 1 sends again what
/// a cut connection had not acknowledged, so a state from before the last
/// command can come twice.
async fn gear_stays(rec: &mut Recorder, want: &str, since: SystemTime, log: impl Fn() -> String) {
    let mut seen = 0;
    while seen < 10 {
        let state = rec
            .state_where("fan", "a gear", |s| s["properties"]["gear"].is_string())
            .await;
        let read_at = state["timestamp"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok());
        if read_at.is_some_and(|t| t < since) {
            continue;
        }
        seen += 1;
        let g = state["properties"]["gear"].as_str().unwrap_or_default();
        assert_eq!(g, want, "a retained command was executed again\n{}", log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_command_is_not_executed_again_after_a_gateway_restart() {
    let broker = Mosquitto::start();
    let metrics = support::free_port();
    let yaml = config(&broker.url(), metrics, "", "", "");
    let mut gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.status("fan", "online").await;
    let probe = MqttProbe::connect(broker.port()).await;
    // Sent while subscribed: executed once, as sent.
    probe
        .publish(&format!("{FAN}/$set"), r#"{"gear":"fast"}"#, 1, true)
        .await;
    gear_is(&mut rec, "fast").await;
    probe
        .publish(&format!("{FAN}/$set"), r#"{"gear":"slow"}"#, 1, false)
        .await;
    gear_is(&mut rec, "slow").await;

    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "the gateway stops");
    let restarted = SystemTime::now();
    let gw = Gateway::start(&yaml);
    rec.status("fan", "online").await;
    // The broker replays the retained `{"gear":"fast"}` on the subscribe.
    until("the retained command counted", || {
        ignored(metrics, "retained") >= 1.0
    })
    .await;
    gear_stays(&mut rec, "slow", restarted, || gw.log()).await;
    let results = rec
        .seen
        .iter()
        .filter(|m| m.topic == format!("{FAN}/$set/result"))
        .count();
    assert_eq!(results, 2, "no result for a replayed command");
    let log = gw.log();
    assert_eq!(
        log.matches("retained command ignored").count(),
        1,
        "logged once: {log}"
    );
}

/// A retained `$set` and a reconnect of a gateway with a persistent
/// session that subscribes again (`resumeSubs: true`): MQTT 3.1.1 gets the
/// retained command again and ignores it; MQTT 5 subscribes with retain
/// handling 2, so the broker does not even send it.
async fn retained_across_a_reconnect(version: u8) {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", broker.port())).await;
    let metrics = support::free_port();
    let client = format!(
        "    protocolVersion: {version}\n    clientId: untrusted-{version}\n    cleanSession: false\n    resumeSubs: true\n"
    );
    let yaml = config(
        &format!("tcp://127.0.0.1:{}", proxy.port),
        metrics,
        &client,
        "",
        "",
    );
    let gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.status("fan", "online").await;
    let probe = MqttProbe::connect(broker.port()).await;
    probe
        .publish(&format!("{FAN}/$set"), r#"{"gear":"fast"}"#, 1, true)
        .await;
    gear_is(&mut rec, "fast").await;
    probe
        .publish(&format!("{FAN}/$set"), r#"{"gear":"slow"}"#, 1, false)
        .await;
    gear_is(&mut rec, "slow").await;

    let reconnects = |m| metric(m, "fieldgate_mqtt_reconnects_total", &[]).unwrap_or(0.0);
    let before = reconnects(metrics);
    let cut = SystemTime::now();
    proxy.cut();
    until("a reconnect", || reconnects(metrics) > before).await;
    if version == 5 {
        // Nothing was replayed; wait a while of states for a late one.
        gear_stays(&mut rec, "slow", cut, || gw.log()).await;
        assert_eq!(ignored(metrics, "retained"), 0.0, "{}", gw.log());
    } else {
        until("the retained command counted", || {
            ignored(metrics, "retained") >= 1.0
        })
        .await;
        gear_stays(&mut rec, "slow", cut, || gw.log()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_command_is_not_executed_again_after_a_reconnect_mqtt311() {
    retained_across_a_reconnect(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_command_is_not_even_sent_again_after_a_reconnect_mqtt5() {
    retained_across_a_reconnect(5).await;
}

/// Sends `$set` with `response_topic` through Mosquitto with MQTT 5 and
/// checks: the result is on `T/$set/result` with an error naming the
/// response topic, the command was applied, the session never reconnected
/// and the clock `tick` keeps publishing.
async fn bad_response_topic(response_topic: &str, message: &str, expect_in_error: &str) {
    let broker = Mosquitto::start();
    let metrics = support::free_port();
    let yaml = config(
        &broker.url(),
        metrics,
        "    protocolVersion: 5\n",
        message,
        "",
    );
    let gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.status("fan", "online").await;
    let probe = MqttProbe5::connect(broker.port()).await;
    probe
        .publish_with_response(
            &format!("{FAN}/$set"),
            r#"{"gear":"fast","$id":"r1"}"#,
            response_topic,
            b"c1".to_vec(),
        )
        .await;
    let result = rec
        .wait("the $set result", |m| {
            m.topic == format!("{FAN}/$set/result")
        })
        .await
        .json();
    assert_eq!(result["$id"], "r1", "{result}");
    assert_eq!(result["applied"]["gear"], "fast", "{result}");
    let why = result["errors"]["$payload"].as_str().unwrap_or_default();
    assert!(
        why.contains("response topic") && why.contains(expect_in_error),
        "{result}"
    );
    gear_is(&mut rec, "fast").await;
    // Other devices' data keeps flowing, on the same connection.
    rec.more_states("tick", 10).await;
    assert_eq!(
        metric(metrics, "fieldgate_mqtt_reconnects_total", &[]),
        Some(0.0),
        "{}",
        gw.log()
    );
    // And the next command with a good response topic is answered there.
    let mut replies = MqttProbe5::connect(broker.port()).await;
    replies.subscribe("replies/#", 1).await;
    probe
        .publish_with_response(
            &format!("{FAN}/$set"),
            r#"{"gear":"slow","$id":"r2"}"#,
            "replies/fan",
            b"c2".to_vec(),
        )
        .await;
    let expect_reply = message.is_empty();
    let reply = replies
        .wait_topic(Duration::from_secs(5), "replies/fan")
        .await;
    assert_eq!(reply.is_some(), expect_reply, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_response_topic_does_not_break_the_session() {
    bad_response_topic("", "", "empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_topics_outside_the_configured_filters_are_not_used() {
    bad_response_topic(
        "elsewhere/x",
        "    responseTopics: [\"answers/#\"]\n",
        "responseTopics",
    )
    .await;
}

/// Mosquitto with a 2 KiB packet limit (`max_packet_size`: the connection
/// ends on a larger packet; `message_size_limit`: larger payloads are
/// refused), and a device `big` whose one state is 3 KB. The big state is
/// dropped and counted (`too_large` when the limit is known before
/// sending: MQTT 5 CONNACK or `maxPacketSize`; `refused` after 3 tries
/// otherwise) and everything else flows.
async fn over_the_packet_limit(version: u8, client: &str, reason: &str) {
    let broker = Mosquitto::start_with("max_packet_size 2048\nmessage_size_limit 2000\n");
    let metrics = support::free_port();
    let big = format!(
        "  - name: big\n    driver: dummy\n    syncInterval: 100ms\n    publish: {{ onChange: true }}\n    properties:\n      - {{ name: blob, type: string, simulate: {{ constant: \"{}\" }} }}\n",
        "x".repeat(3000)
    );
    let yaml = config(
        &broker.url(),
        metrics,
        &format!("    protocolVersion: {version}\n{client}"),
        "",
        &big,
    );
    let gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.statuses(&[("fan", "online"), ("big", "online"), ("tick", "online")])
        .await;
    until("the big state dropped", || dropped(metrics, reason) >= 1.0).await;
    let mark = rec.mark();
    rec.more_states("tick", 20).await;
    // The reconnects replay what was not acknowledged: duplicates, no gaps.
    let mut ticks = rec.states_since(mark, "tick");
    let mut last = None;
    ticks.retain(|s| {
        let n = s["properties"]["n"].as_u64();
        let new = n > last;
        last = last.max(n);
        new
    });
    fault_rig::assert_counting("tick", &ticks);
    // Commands still work.
    let probe = MqttProbe::connect(broker.port()).await;
    probe
        .publish(&format!("{FAN}/$set"), r#"{"gear":"middle"}"#, 1, false)
        .await;
    gear_is(&mut rec, "middle").await;
    let log = gw.log();
    assert!(
        log.contains("fieldgate/untrusted/big") && log.contains("dropped the message"),
        "one log line names the topic: {log}"
    );
    assert!(
        !rec.seen
            .iter()
            .any(|m| m.topic == "fieldgate/untrusted/big"),
        "the broker never forwarded the big state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_broker_limit_is_dropped_after_three_tries_mqtt311() {
    over_the_packet_limit(4, "", "refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_configured_max_packet_size_is_dropped_before_sending() {
    over_the_packet_limit(4, "    maxPacketSize: 2KiB\n", "too_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_connack_maximum_packet_size_is_dropped_before_sending_mqtt5() {
    over_the_packet_limit(5, "", "too_large").await;
}

/// A TCP proxy that forwards everything, except that while `swallow` is
/// on it drops the PUBACK packets the broker sends (CONNACK, SUBACK,
/// PINGRESP and the rest still pass): a broker that stopped acknowledging
/// while its keep-alive works.
struct AckSwallower {
    port: u16,
    swallow: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AckSwallower {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let swallow = Arc::new(AtomicBool::new(false));
        let flag = swallow.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let flag = flag.clone();
                tokio::spawn(async move {
                    // Packet by packet: fixed header, remaining length, body.
                    loop {
                        let mut first = [0u8; 1];
                        if sr.read_exact(&mut first).await.is_err() {
                            break;
                        }
                        let mut header = vec![first[0]];
                        let mut len = 0usize;
                        for i in 0..4 {
                            let mut b = [0u8; 1];
                            if sr.read_exact(&mut b).await.is_err() {
                                return;
                            }
                            header.push(b[0]);
                            len |= usize::from(b[0] & 0x7f) << (7 * i);
                            if b[0] & 0x80 == 0 {
                                break;
                            }
                        }
                        let mut body = vec![0u8; len];
                        if sr.read_exact(&mut body).await.is_err() {
                            break;
                        }
                        if first[0] >> 4 == 4 && flag.load(Ordering::SeqCst) {
                            continue;
                        }
                        header.extend(body);
                        if cw.write_all(&header).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Self {
            port,
            swallow,
            task,
        }
    }
}

impl Drop for AckSwallower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_acknowledging_is_noticed_and_left() {
    let broker = Mosquitto::start();
    let proxy = AckSwallower::start(broker.port()).await;
    let metrics = support::free_port();
    let yaml = config(
        &format!("tcp://127.0.0.1:{}", proxy.port),
        metrics,
        "    ackTimeout: 2s\n    keepAlive: 1s\n",
        "",
        "",
    );
    let gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.status("tick", "online").await;
    let health = || support::http_get(&format!("127.0.0.1:{metrics}"), "/healthz").ok();
    until("healthy", || health().is_some_and(|(c, _)| c == 200)).await;
    let reconnects = || metric(metrics, "fieldgate_mqtt_reconnects_total", &[]).unwrap_or(0.0);

    proxy.swallow.store(true, Ordering::SeqCst);
    until("/healthz degraded naming ackTimeout", || {
        health().is_some_and(|(c, body)| c != 200 && body.contains("ackTimeout"))
    })
    .await;
    until("a reconnect forced by ackTimeout", || reconnects() >= 1.0).await;
    assert!(
        gw.log()
            .contains("no acknowledgement from the broker within ackTimeout (2s)"),
        "{}",
        gw.log()
    );

    // The broker acknowledges again: healthy, and everything flows.
    proxy.swallow.store(false, Ordering::SeqCst);
    until("healthy again", || health().is_some_and(|(c, _)| c == 200)).await;
    let mark = rec.mark();
    rec.more_states("tick", 10).await;
    assert!(rec.states_since(mark, "tick").len() >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8000_key_set_gets_a_result_of_at_most_64_kib() {
    let broker = Mosquitto::start();
    let metrics = support::free_port();
    let yaml = config(&broker.url(), metrics, "", "", "");
    let gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.status("fan", "online").await;
    // Three-letter keys: 8 000 of them fit in the 64 KiB a `$set` may have.
    let letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let keys: Vec<String> = (0..8000)
        .map(|i: usize| {
            let k: String = [i / 2704, i / 52 % 52, i % 52]
                .iter()
                .map(|&d| letters[d] as char)
                .collect();
            format!("\"{k}\":0")
        })
        .collect();
    let payload = format!("{{\"$id\":\"flood\",{}}}", keys.join(","));
    assert!(payload.len() <= 64 * 1024);
    let probe = MqttProbe::connect(broker.port()).await;
    probe
        .publish(&format!("{FAN}/$set"), payload, 1, false)
        .await;
    let m = rec
        .wait("the $set result", |m| {
            m.topic == format!("{FAN}/$set/result")
        })
        .await;
    assert!(m.payload.len() <= 64 * 1024, "{} bytes", m.payload.len());
    let result: Value = m.json();
    assert_eq!(result["$id"], "flood");
    assert_eq!(result["ok"], false);
    let errors = result["errors"].as_object().expect("errors");
    assert_eq!(errors.len(), 33, "32 errors and $more");
    assert_eq!(errors["$more"], 8000 - 32);
    assert_eq!(
        m.payload_str().matches("writable properties:").count(),
        1,
        "{}",
        m.payload_str()
    );
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("$set rejected"))
        .expect("a rejection log line");
    assert!(line.len() < 2048, "{} bytes: {line}", line.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flood_is_rate_limited_per_device() {
    let broker = Mosquitto::start();
    let metrics = support::free_port();
    let yaml = config(&broker.url(), metrics, "", "    commandRate: 10\n", "");
    let mut gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.status("fan", "online").await;
    let probe = MqttProbe::connect(broker.port()).await;
    let started = std::time::Instant::now();
    for i in 0..500 {
        let gear = ["slow", "middle", "fast"][i % 3];
        probe
            .publish(
                &format!("{FAN}/$set"),
                format!(r#"{{"gear":"{gear}"}}"#),
                0,
                false,
            )
            .await;
    }
    let sent_in = started.elapsed();
    until("rate-limited commands counted", || {
        ignored(metrics, "rate_limited") >= 1.0
    })
    .await;
    // Let every answer arrive, then count them.
    let mark = rec.mark();
    rec.more_states("tick", 20).await;
    let elapsed = started.elapsed().as_secs_f64();
    let results = rec
        .seen
        .iter()
        .filter(|m| m.topic == format!("{FAN}/$set/result"))
        .collect::<Vec<_>>();
    let limited = results
        .iter()
        .filter(|m| m.payload_str().contains("rate limited"))
        .count();
    let applied = results.len() - limited;
    // Burst 20, then 10 per second; "rate limited" answers at most 1/s.
    let bound = 20.0 + 10.0 * elapsed;
    assert!(
        (applied as f64) <= bound,
        "{applied} commands executed in {elapsed:.1}s (sent in {sent_in:?}), bound {bound:.0}"
    );
    assert!(limited >= 1, "the excess is answered");
    assert!(
        (limited as f64) <= 1.0 + elapsed,
        "{limited} rate-limited answers"
    );
    let counted = ignored(metrics, "rate_limited") + ignored(metrics, "inbox_full");
    assert!(
        counted + applied as f64 >= 500.0,
        "every command is executed or counted: {applied} + {counted}"
    );
    // The neighbour was never held up.
    fault_rig::assert_counting("tick", &rec.states_since(mark, "tick"));
    assert!(gw.is_running());
}

/// The embedded broker serves MQTT 5 on `broker.listenV5` (a client with
/// `protocolVersion: 5` and no `server` uses it), and it passes a wildcard
/// response topic on (it does not check them): the gateway does not use
/// it, answers on `T/$set/result`, and other devices' data keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_serves_mqtt5_and_a_wildcard_response_topic_is_not_used() {
    let (p4, p5, metrics) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let yaml = format!(
        "gateway:\n  namespace: {NS}\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nbroker:\n  listen: 127.0.0.1:{p4}\n  listenV5: 127.0.0.1:{p5}\nmqtt:\n  client:\n    protocolVersion: 5\n    maxReconnectInterval: 1s\n  message:\n    qos: 1\ndevices:\n  - {{ name: fan, driver: dummy, model: fan, syncInterval: 100ms }}\n{}",
        clock("tick")
    );
    let gw = Gateway::start(&yaml);
    assert!(support::wait_port_open(p5, WAIT), "{}", gw.log());
    let mut watcher = MqttProbe5::connect(p5).await;
    watcher.subscribe(&format!("fieldgate/{NS}/#"), 1).await;
    watcher
        .wait_for(WAIT, |m| {
            m.topic == format!("{FAN}/$state") && m.payload_str() == "online"
        })
        .await
        .unwrap_or_else(|| panic!("the fan is online over MQTT 5\n{}", gw.log()));
    let probe = MqttProbe5::connect(p5).await;
    probe
        .publish_with_response(
            &format!("{FAN}/$set"),
            r#"{"gear":"fast","$id":"w"}"#,
            "replies/#",
            b"c".to_vec(),
        )
        .await;
    let result = watcher
        .wait_topic(WAIT, &format!("{FAN}/$set/result"))
        .await
        .expect("a result on $set/result")
        .json();
    assert_eq!(result["applied"]["gear"], "fast", "{result}");
    assert!(
        result["errors"]["$payload"]
            .as_str()
            .is_some_and(|e| e.contains("wildcard")),
        "{result}"
    );
    // The neighbour keeps publishing, on the same connection.
    let tick = format!("fieldgate/{NS}/tick");
    for _ in 0..10 {
        watcher
            .wait_topic(WAIT, &tick)
            .await
            .unwrap_or_else(|| panic!("tick stalled\n{}", gw.log()));
    }
    assert_eq!(
        metric(metrics, "fieldgate_mqtt_reconnects_total", &[]),
        Some(0.0),
        "{}",
        gw.log()
    );
}

/// `check` refuses what §9 makes a config error: the embedded broker on a
/// non-loopback address without `allowRemote`, and MQTT 5 against the
/// embedded broker without `listenV5`.
#[test]
fn unsafe_or_impossible_broker_settings_are_config_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            "broker:\n  listen: 0.0.0.0:18830\ndevices: []\n",
            "allowRemote",
        ),
        (
            "broker:\n  listen: 127.0.0.1:18830\nmqtt:\n  client: { protocolVersion: 5 }\ndevices: []\n",
            "listenV5",
        ),
    ];
    for (yaml, expected) in cases {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let out = support::fieldgate(&["check", "-c", path.to_str().expect("utf-8 path")]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{yaml}: {text}");
        assert!(text.contains(expected), "{yaml}: {text}");
    }
    let ok = dir.path().join("ok.yaml");
    std::fs::write(
        &ok,
        "broker:\n  listen: 0.0.0.0:18830\n  allowRemote: true\ndevices: []\n",
    )
    .expect("write config");
    let out = support::fieldgate(&["check", "-c", ok.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{out:?}");
}

/// A Modbus device `name` on a server that accepts and never answers: each
/// read holds the driver for `timeout`.
fn frozen_device(name: &str, port: u16, timeout: &str) -> String {
    format!(
        "  - name: {name}\n    driver: modbus\n    syncInterval: 100ms\n    timeout: {timeout}\n    protocol: {{ tcp: {{ endpoint: \"127.0.0.1:{port}\" }}, unitId: 1 }}\n    properties:\n      - {{ name: r0, register: holding, address: 0, type: uint16, writable: true }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_while_the_driver_is_busy_is_counted_busy() {
    let frozen = fault_rig::FrozenServer::start("127.0.0.1:0").await;
    let broker = Mosquitto::start();
    let metrics = support::free_port();
    let yaml = config(
        &broker.url(),
        metrics,
        "",
        "",
        &frozen_device("stuck", frozen.port, "10s"),
    );
    let mut gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.more_states("tick", 3).await;
    until("the frozen server's connection", || frozen.accepted() >= 1).await;
    let probe = MqttProbe::connect(broker.port()).await;
    // The driver sits in a 10 s read: its command queue (16) fills, the
    // rest of 40 `$get`s are ignored as busy.
    for _ in 0..40 {
        probe
            .publish("fieldgate/untrusted/stuck/$get", "", 1, false)
            .await;
    }
    until("busy $get counted", || ignored(metrics, "busy") >= 20.0).await;
    assert!(ignored(metrics, "busy") <= 40.0);
    // The neighbour keeps its cadence.
    let mark = rec.mark();
    rec.more_states("tick", 10).await;
    fault_rig::assert_counting("tick", &rec.states_since(mark, "tick"));
    assert!(gw.is_running(), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_beyond_a_busy_devices_queue_are_refused_and_counted_inbox_full() {
    let frozen = fault_rig::FrozenServer::start("127.0.0.1:0").await;
    let broker = Mosquitto::start();
    let metrics = support::free_port();
    let yaml = config(
        &broker.url(),
        metrics,
        "",
        "",
        &frozen_device("stuck", frozen.port, "10s"),
    );
    let _gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.more_states("tick", 3).await;
    until("the frozen server's connection", || frozen.accepted() >= 1).await;
    let probe = MqttProbe::connect(broker.port()).await;
    // 90 writes (within the default burst of 100) to a device whose driver
    // hangs in a read: 64 wait, the rest are refused at once.
    for i in 0..90 {
        probe
            .publish(
                "fieldgate/untrusted/stuck/$set",
                format!(r#"{{"r0":{i}}}"#),
                1,
                false,
            )
            .await;
    }
    until("inbox_full counted", || {
        ignored(metrics, "inbox_full") >= 10.0
    })
    .await;
    let result = "fieldgate/untrusted/stuck/$set/result";
    let refused = rec
        .wait("a refusal", |m| {
            m.topic == result && m.payload_str().contains("too many commands waiting")
        })
        .await;
    assert!(
        refused.payload_str().contains("\"ok\":false"),
        "{refused:?}"
    );
    assert!(ignored(metrics, "inbox_full") <= 90.0 - 64.0);
}

/// A persistent session's broker delivers commands queued for a device the
/// new config no longer has: the session holds 256 of them (devices may
/// still be starting), drops the oldest beyond and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_for_no_device_are_held_then_counted_unrouted() {
    let broker = Mosquitto::start_with("max_queued_messages 1000\n");
    let metrics = support::free_port();
    let client = "    clientId: untrusted-unrouted\n    cleanSession: false\n";
    let extra = "  - { name: gone, driver: dummy, model: fan, syncInterval: 100ms }\n";
    let mut gw = Gateway::start(&config(&broker.url(), metrics, client, "", extra));
    let mut rec = Recorder::start(broker.port(), NS).await;
    rec.status("gone", "online").await;
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "the gateway stops");
    // Queued by the broker for the gateway's session while it is away.
    let probe = MqttProbe::connect(broker.port()).await;
    for i in 0..300 {
        probe
            .publish(
                "fieldgate/untrusted/gone/$set",
                format!(r#"{{"gear":"{}"}}"#, ["slow", "fast"][i % 2]),
                1,
                false,
            )
            .await;
    }
    let without = config(&broker.url(), metrics, client, "", "");
    let gw = Gateway::start(&without);
    until("unrouted commands counted", || {
        ignored(metrics, "unrouted") >= 44.0
    })
    .await;
    rec.more_states("tick", 5).await;
    assert_eq!(
        ignored(metrics, "unrouted"),
        44.0,
        "300 queued, 256 held: {}",
        gw.log()
    );
    assert!(
        gw.log().contains("no device claimed its topic"),
        "{}",
        gw.log()
    );
}
