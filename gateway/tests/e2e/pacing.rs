//! Paced device start (issue #20): `SessionHandle::pace_new_devices` waits on
//! the session's own readiness signal (connected, backlog), not on metrics.
//! Against a real Mosquitto started by the test: no broker, the wait gives
//! up; the broker appears, the wait ends once the session connected; a
//! burst queued in the session, the wait ends once it is down to the limit
//! and every message arrives.

use crate::support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldgate::mqtt::{OutMsg, SessionInput};
use fieldgate::telemetry::{Health, Metrics};
use support::{free_port, Mosquitto, MqttProbe};

const T: Duration = Duration::from_secs(30);

fn session_settings(port: u16) -> fieldgate::config::resolved::SessionSettings {
    let dir = std::env::temp_dir();
    let yaml = format!(
        "gateway:\n  namespace: pace\n  metrics: {{ listen: \"\" }}\n\
         mqtt:\n  client:\n    server: tcp://127.0.0.1:{port}\n    clientId: pace-test\n    \
         messageChannelDepth: 5000\n\
         devices: []\n"
    );
    let resolved = fieldgate::config::load_str(&yaml, "pace.yaml", &dir).expect("config loads");
    resolved.sessions.into_iter().next().expect("one session")
}

fn msg(i: usize) -> SessionInput {
    SessionInput::Publish(OutMsg {
        topic: "pace/burst".into(),
        payload: Bytes::from(format!("{i}")),
        qos: 1,
        retain: false,
        correlation: None,
        props: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_waits_for_the_session_not_for_metrics() {
    let port = free_port();
    let session = fieldgate::mqtt::spawn(
        session_settings(port),
        Metrics::new().expect("metrics"),
        Health::default(),
    );

    // No broker: the session never connects, the wait gives up at its deadline.
    let started = Instant::now();
    assert!(
        !session
            .pace_new_devices(10, Duration::from_millis(300))
            .await,
        "pacing must give up while the session is not connected"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The broker appears: the wait ends when the session has connected.
    let mut broker = Mosquitto::start_on(port);
    assert!(
        session.pace_new_devices(10, T).await,
        "pacing must end once the session connected"
    );

    // A burst queued at once: the wait ends when the session holds at most
    // the limit, and every message reaches a subscriber.
    let mut probe = MqttProbe::connect(port).await;
    probe.subscribe("pace/burst", 1).await;
    const BURST: usize = 2000;
    for i in 0..BURST {
        session.send(msg(i)).await;
    }
    assert!(
        session.pace_new_devices(10, T).await,
        "pacing must end once the burst is sent"
    );
    let mut got = 0;
    let deadline = Instant::now() + T;
    while got < BURST && Instant::now() < deadline {
        if probe.next(Duration::from_secs(5)).await.is_some() {
            got += 1;
        }
    }
    assert_eq!(got, BURST, "every message of the burst arrives");

    session.stop(Duration::from_secs(3)).await;
    broker.stop();
}
