//! The daemon under a service manager: `sd_notify` messages on a unix
//! datagram socket the test binds (READY=1, WATCHDOG=1, STOPPING=1), and
//! journald-style log lines when stderr is the `JOURNAL_STREAM`.

use crate::support;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Gateway, Mosquitto, MqttProbe};
use tokio::net::UnixDatagram;

const WAIT: Duration = Duration::from_secs(10);

fn config(mqtt_port: u16, metrics_port: u16) -> String {
    format!(
        r#"gateway:
  namespace: sd
  metrics: {{ listen: "127.0.0.1:{metrics_port}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{mqtt_port}
    maxReconnectInterval: 2s
devices:
  - name: fan
    driver: dummy
    model: fan
    syncInterval: 200ms
"#
    )
}

/// Receives notifications until one contains `needle`; every datagram seen
/// (the matching one last), or `None` on timeout.
async fn recv_until(sock: &UnixDatagram, needle: &str, timeout: Duration) -> Option<Vec<String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let hit = msg.lines().any(|l| l == needle);
        seen.push(msg);
        if hit {
            return Some(seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let broker = Mosquitto::start();
    let probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/sd/fan", 0).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    let metrics_port = support::free_port();
    let mut gw = Gateway::start_with_env(
        &config(broker.port(), metrics_port),
        &[
            (
                "NOTIFY_SOCKET",
                sock_path.to_str().expect("utf-8 temp path"),
            ),
            // Pings every 100 ms (a third of the timeout).
            ("WATCHDOG_USEC", "300000"),
        ],
    );

    let before_ready = recv_until(&sock, "READY=1", WAIT)
        .await
        .unwrap_or_else(|| panic!("no READY=1 within {WAIT:?}\n{}", gw.log()));
    assert!(
        before_ready.iter().all(|m| !m.contains("WATCHDOG=1")),
        "watchdog pings before READY=1: {before_ready:?}"
    );
    let ready = before_ready.last().expect("the READY=1 datagram");
    assert!(ready.contains("STATUS=running 1 devices"), "{ready:?}");
    // Ready means started: the metrics listener answers and the device publishes.
    let (status, _) = support::http_get(&format!("127.0.0.1:{metrics_port}"), "/healthz")
        .expect("/healthz answers once READY=1 was sent");
    assert!(status == 200 || status == 503, "/healthz status {status}");
    let mut probe = probe;
    assert!(
        probe.wait_topic(WAIT, "fieldgate/sd/fan").await.is_some(),
        "no state published after READY=1"
    );

    // Watchdog pings keep coming while the daemon is healthy.
    let start = Instant::now();
    for i in 0..3 {
        assert!(
            recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5))
                .await
                .is_some(),
            "watchdog ping {i} missing after {:?}",
            start.elapsed()
        );
    }

    // A broker outage is not a watchdog failure.
    let mut broker = broker;
    broker.stop();
    for i in 0..3 {
        assert!(
            recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5))
                .await
                .is_some(),
            "watchdog ping {i} missing during the broker outage"
        );
    }

    gw.sigterm();
    assert!(
        recv_until(&sock, "STOPPING=1", WAIT).await.is_some(),
        "no STOPPING=1 after SIGTERM\n{}",
        gw.log()
    );
    let status = gw.wait_exit(WAIT).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", gw.log());
}

#[test]
fn journal_stream_gets_priority_prefixes_and_no_timestamps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("config.yaml");
    // No broker on this port: the session logs connection warnings.
    let closed_port = support::free_port();
    std::fs::write(&cfg, config(closed_port, support::free_port())).expect("write config");
    let log_path = dir.path().join("journal.log");
    let log = std::fs::File::create(&log_path).expect("create log");
    let meta = log.metadata().expect("log metadata");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = Command::new(support::fieldgate_binary())
        .args(["run", "-c"])
        .arg(&cfg)
        .env("JOURNAL_STREAM", &stream)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start fieldgate");
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let warned = support::wait_until(WAIT, || read().lines().any(|l| l.starts_with("<4>")));
    support::send_signal(child.id(), "TERM");
    let exited = support::wait_until(WAIT, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    let text = read();
    assert!(warned, "no <4> warning line:\n{text}");
    assert!(exited, "did not exit after SIGTERM:\n{text}");
    let starting = text
        .lines()
        .find(|l| l.contains("fieldgate starting"))
        .unwrap_or_else(|| panic!("no start line:\n{text}"));
    assert!(starting.starts_with("<6>"), "{starting:?}");
    for line in text.lines().filter(|l| l.starts_with('<')) {
        let rest = &line[3..];
        assert!(
            !rest.starts_with(|c: char| c.is_ascii_digit()),
            "timestamp in a journal line: {line:?}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "ANSI escape in a journal line: {line:?}"
        );
    }
}

/// The packaged `/etc/fieldgate/config.yaml` is valid and needs no hardware:
/// only simulated devices, the local broker, metrics on loopback, the state in
/// the unit's StateDirectory.
#[test]
fn packaged_default_config_is_valid_and_hardware_free() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/default.yaml");
    let out = support::fieldgate(&["check", "-c", path.to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("stateDirectory /var/lib/fieldgate"),
        "{stdout}"
    );
    assert!(stdout.contains("server tcp://127.0.0.1:1883"), "{stdout}");
    assert!(
        stdout.contains("metrics http://127.0.0.1:9880/metrics"),
        "{stdout}"
    );
    let drivers: Vec<&str> = stdout
        .lines()
        .filter_map(|l| {
            l.split_once("(driver ")
                .map(|(_, d)| d.trim_end_matches(')'))
        })
        .collect();
    assert!(!drivers.is_empty(), "{stdout}");
    assert!(drivers.iter().all(|d| *d == "dummy"), "{drivers:?}");
}
