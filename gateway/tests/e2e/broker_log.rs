//! Log hygiene of the embedded broker (issue #19): clients connecting and
//! disconnecting — cleanly, abruptly, or by closing before CONNECT — leave no
//! ERROR line in the gateway's log (rumqttd reports them at ERROR; fieldgate
//! shows them at DEBUG), while a real error, a client that does not speak
//! MQTT, still logs as ERROR.
#![cfg(feature = "broker")]

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{free_port, Gateway, MqttProbe};

const T: Duration = Duration::from_secs(30);
/// What the demoted events say (see `fieldgate::broker::RoutineBrokerEvents`).
const ROUTINE: &str = "(routine; rumqttd logs it as an error)";

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

fn run(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("run {cmd:?}: {e} (mosquitto-clients installed? run tests/run-tests.sh)")
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnects_log_no_error_and_real_errors_stay() {
    let port = free_port();
    let config = format!(
        "gateway:\n  namespace: test\n  stateDirectory: \"{{dir}}/state\"\n  metrics: {{ listen: \"\" }}\n\
         broker:\n  listen: 127.0.0.1:{port}\n\
         devices:\n  - {{ name: fan, driver: dummy, model: fan, syncInterval: 200ms }}\n"
    );
    // rumqttd=debug: the demoted events are visible, so the test can wait
    // for them instead of sleeping; the default level hides them.
    let gw = Gateway::start_with_env(&config, &[("RUST_LOG", "info,rumqttd=debug")]);
    assert!(
        gw.wait_for_log("connected to the broker", T),
        "gateway never connected to its embedded broker:\n{}",
        gw.log()
    );
    let p = port.to_string();

    // A publisher: CONNECT, PUBLISH, DISCONNECT.
    run(Command::new("mosquitto_pub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "test/hello",
        "-m",
        "hi",
    ]));
    // A subscriber that leaves after one message (DISCONNECT).
    run(Command::new("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        "fieldgate/#",
        "-C",
        "1",
        "-W",
        "20",
    ]));
    // A subscriber killed without DISCONNECT: its socket just closes.
    let mut killed = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &p, "-t", "fieldgate/#", "-v"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let mut first = [0u8; 1];
    killed
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("the killed subscriber received something first");
    killed.kill().expect("kill mosquitto_sub");
    let _ = killed.wait();
    // A library client with a clean DISCONNECT.
    let probe = MqttProbe::connect(port).await;
    probe.disconnect().await;
    // A TCP health check: connect, close before CONNECT.
    drop(TcpStream::connect(("127.0.0.1", port)).expect("tcp connect"));

    let log = || gw.log();
    assert!(
        support::wait_until_async(T, || log().matches(ROUTINE).count() >= 3).await,
        "rumqttd's routine disconnect events never showed at DEBUG:\n{}",
        log()
    );
    let text = log();
    assert!(
        error_lines(&text).is_empty(),
        "ordinary disconnects logged ERROR:\n{}",
        error_lines(&text).join("\n")
    );
    for line in text.lines().filter(|l| l.contains(ROUTINE)) {
        assert!(line.contains("DEBUG"), "demoted event not at DEBUG: {line}");
    }

    // A real error: the first packet is not CONNECT (a PUBACK). rumqttd
    // refuses the client and says so at ERROR; fieldgate keeps that.
    let mut bad = TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
    bad.write_all(&[0x40, 0x02, 0x00, 0x01]).expect("write");
    assert!(
        support::wait_until_async(T, || error_lines(&log())
            .iter()
            .any(|l| l.contains("Error while handling MQTT connect packet")))
        .await,
        "a client that does not speak MQTT no longer logs an ERROR:\n{}",
        log()
    );
    drop(bad);
    let text = log();
    let errors = error_lines(&text);
    assert!(
        errors
            .iter()
            .all(|l| l.contains("Error while handling MQTT connect packet")
                && l.contains("NotConnectPacket")),
        "unexpected ERROR lines:\n{}",
        errors.join("\n")
    );
}
