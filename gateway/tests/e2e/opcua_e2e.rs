//! End-to-end: the `fieldgate` binary against an async-opcua server in the
//! test process, observed through a Mosquitto started by the test.
#![cfg(feature = "opcua")]

use crate::opcua_server;

use crate::support;

use std::path::Path;
use std::time::Duration;

use opcua::types::Variant;
use opcua_server::{OpcUaServer, Options, PASSWORD, USER};
use serde_json::{json, Value};
use support::{Gateway, Mosquitto, MqttProbe};

/// Generous: the secure handshakes do RSA in a debug build on a busy machine.
const WAIT: Duration = Duration::from_secs(30);

fn config(mqtt_port: u16, metrics: &str, devices: &str) -> String {
    format!(
        r#"gateway:
  namespace: test
  stateDirectory: "{{dir}}/state"
  metrics: {{ listen: "{metrics}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{mqtt_port}
devices:
{devices}
"#
    )
}

/// One device on `server` with the scalar variables and the counter.
fn device(name: &str, server: &OpcUaServer, sync: &str, protocol_extra: &str) -> String {
    let props: Vec<String> = [
        ("Bool", "bool"),
        ("Int32", "int32"),
        ("UInt64", "uint64"),
        ("Double", "float64"),
        ("String", "string"),
        ("ByteString", "bytes"),
        ("DateTime", "string"),
        ("Counter", "uint32"),
        ("Broken", "int32"),
    ]
    .iter()
    .map(|(n, t)| {
        format!(
            "      - {{ name: {n}, nodeId: \"{}\", type: {t}, writable: true }}",
            server.node(n)
        )
    })
    .collect();
    format!(
        r#"  - name: {name}
    driver: opcua
    syncInterval: {sync}
    timeout: 5s
    protocol:
      endpoint: "{url}"
{protocol_extra}
    properties:
{props}
"#,
        url = server.url,
        props = props.join("\n")
    )
}

async fn state_with(
    probe: &mut MqttProbe,
    topic: &str,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let m = probe
        .wait_for(WAIT, |m| m.topic == topic && pred(&m.json()))
        .await
        .unwrap_or_else(|| panic!("no matching state on {topic}"));
    m.json()
}

fn counter(v: &Value) -> Option<u64> {
    v["properties"]["Counter"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_publishes_every_type_and_set_writes_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let gw = Gateway::start(&config(
        broker.port(),
        "",
        &device("plc", &server, "200ms", "      mode: subscribe"),
    ));
    let first = state_with(&mut probe, "fieldgate/test/plc", |v| {
        v["properties"].get("Bool").is_some()
    })
    .await;
    let p = &first["properties"];
    assert_eq!(p["Bool"], json!(true));
    assert_eq!(p["Int32"], json!(-320000));
    assert_eq!(p["UInt64"], json!(18_000_000_000_000_000_000u64));
    assert_eq!(p["Double"], json!(2.25));
    assert_eq!(p["String"], json!("hello"));
    assert_eq!(p["ByteString"], json!("dead"));
    assert_eq!(p["DateTime"], json!("2024-05-06T07:08:09Z"));
    assert!(
        first["errors"]["Broken"]
            .as_str()
            .is_some_and(|e| e.contains("BadSensorFailure")),
        "{first}"
    );
    // Data changes keep coming.
    let c0 = counter(&first).expect("counter");
    state_with(&mut probe, "fieldgate/test/plc", |v| {
        counter(v).is_some_and(|c| c > c0 + 2)
    })
    .await;

    probe
        .publish(
            "fieldgate/test/plc/$set",
            r#"{"Int32": 55, "Double": -1.25, "$id": "w1"}"#,
            1,
            false,
        )
        .await;
    let result = probe
        .wait_topic(WAIT, "fieldgate/test/plc/$set/result")
        .await
        .expect("$set result");
    let r = result.json();
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(server.value("Int32"), Some(Variant::Int32(55)));
    assert_eq!(server.value("Double"), Some(Variant::Double(-1.25)));
    state_with(&mut probe, "fieldgate/test/plc", |v| {
        v["properties"]["Int32"] == json!(55)
    })
    .await;
    drop(gw);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let gw = Gateway::start(&config(
        broker.port(),
        "",
        &device("plc", &server, "200ms", "      mode: poll"),
    ));
    let first = state_with(&mut probe, "fieldgate/test/plc", |v| counter(v).is_some()).await;
    let c0 = counter(&first).unwrap();
    state_with(&mut probe, "fieldgate/test/plc", |v| {
        counter(v).is_some_and(|c| c > c0)
    })
    .await;

    let options = server.stop().await;
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/plc/$state" && m.payload_str() == "offline"
        })
        .await
        .expect("offline while the server is down");
    let server = OpcUaServer::start(options).await;
    server.set("Int32", Variant::Int32(4711));
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/plc/$state" && m.payload_str() == "online"
        })
        .await
        .expect("online again");
    state_with(&mut probe, "fieldgate/test/plc", |v| {
        v["properties"]["Int32"] == json!(4711)
    })
    .await;
    assert!(gw.log().contains("opcua"), "{}", gw.log());
    drop(gw);
    server.stop().await;
}

fn secure(password_file: &Path, trusted: &Path) -> String {
    format!(
        r#"      securityPolicy: Basic256Sha256
      securityMode: SignAndEncrypt
      username: {USER}
      passwordFile: "{}"
      trustedServerCertificates: "{}""#,
        password_file.display(),
        trusted.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_endpoint_with_password_untrusted_server_and_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let trusted = dir.path().join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::copy(server.certificate(), trusted.join("plc.der")).unwrap();
    let empty = dir.path().join("nobody");
    std::fs::create_dir_all(&empty).unwrap();
    let good_pass = dir.path().join("good.pass");
    std::fs::write(&good_pass, format!("{PASSWORD}\r\n")).unwrap();
    let bad_pass = dir.path().join("bad.pass");
    std::fs::write(&bad_pass, "wrong\n").unwrap();

    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let metrics = support::free_port();
    let devices = [
        device("good", &server, "300ms", &secure(&good_pass, &trusted)),
        device("badpass", &server, "300ms", &secure(&bad_pass, &trusted)),
        device("untrusted", &server, "300ms", &secure(&good_pass, &empty)),
    ]
    .concat();
    let gw = Gateway::start(&config(
        broker.port(),
        &format!("127.0.0.1:{metrics}"),
        &devices,
    ));
    let first = state_with(&mut probe, "fieldgate/test/good", |v| counter(v).is_some()).await;
    assert_eq!(first["properties"]["String"], json!("hello"));
    probe
        .publish("fieldgate/test/good/$set", r#"{"Int32": 12}"#, 1, false)
        .await;
    let r = probe
        .wait_topic(WAIT, "fieldgate/test/good/$set/result")
        .await
        .expect("$set result");
    assert_eq!(r.json()["ok"], json!(true), "{}", r.json());
    assert_eq!(server.value("Int32"), Some(Variant::Int32(12)));

    let log_has = |needle: &str| {
        let needle = needle.to_string();
        let gw = &gw;
        async move { support::wait_until_async(WAIT, || gw.log().contains(&needle)).await }
    };
    assert!(log_has("wrong user name or password").await, "{}", gw.log());
    let rejected = gw.dir().join("state/opcua/rejected");
    assert!(
        log_has(&format!("is not trusted; copy {}", rejected.display())).await,
        "{}",
        gw.log()
    );
    assert!(log_has(&format!("into {}", empty.display())).await);
    for d in ["badpass", "untrusted"] {
        let topic = format!("fieldgate/test/{d}/$state");
        let mut fresh = MqttProbe::connect(broker.port()).await;
        fresh.subscribe(&topic, 1).await;
        let m = fresh
            .wait_for(WAIT, |m| m.topic == topic)
            .await
            .expect("retained $state");
        assert_eq!(m.payload_str(), "offline", "{d}");
    }
    let body = support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics")
        .expect("metrics")
        .1;
    assert!(
        body.contains("fieldgate_device_up{device=\"badpass\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("fieldgate_device_up{device=\"good\"} 1"),
        "{body}"
    );
    assert!(body.contains("opcua"), "drivers in build info: {body}");
    drop(gw);
    server.stop().await;
}

#[test]
fn check_accepts_the_example_and_locates_bad_node_ids() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = support::fieldgate(&[
        "check",
        "-c",
        root.join("configs/opcua.yaml").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("securityPolicy Basic256Sha256"), "{stdout}");
    assert!(stdout.contains("node ns=2;s=Line1.Speed"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "devices:\n  - name: o\n    driver: opcua\n    protocol: {endpoint: 'opc.tcp://plc:4840', securityPolicy: Basic256, mode: push}\n    properties: [{name: s, nodeId: 'ns=x;q=1', type: float64}]\n",
    )
    .unwrap();
    let out = support::fieldgate(&["check", "-c", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("devices[0].protocol.securityPolicy: unknown securityPolicy `Basic256`"),
        "{err}"
    );
    assert!(
        err.contains("devices[0].protocol.mode: unknown mode `push`"),
        "{err}"
    );
    assert!(
        err.contains(":5:")
            && err.contains("devices[0].properties[0].nodeId: `ns=x;q=1` is not a valid NodeId"),
        "{err}"
    );
}
