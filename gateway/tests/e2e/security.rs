//! Security properties, end to end with the real binary: secrets never
//! reach logs, `check` output, `/metrics` or `/healthz`; TLS verifies the
//! broker by default; `/metrics` listens on loopback by default; oversized
//! input is refused without harm; device and property names cannot inject
//! topics or JSON; `$set` reaches only writable properties; the store and
//! the bridge socket are private. The systemd sandbox is checked by the
//! packaging tests (`tests/package-test.sh`, `gateway/tests/e2e/systemd.rs`).

use crate::modbus_server;
use crate::support;

use crate::fault_rig;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use fault_rig::{healthz, metric, Recorder, WAIT};
use serde_json::{json, Value};
use support::{Gateway, Mosquitto, MqttProbe};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `fieldgate check -c path`: (exit code, stdout + stderr).
fn check(path: &Path) -> (i32, String) {
    let out = support::fieldgate(&["check", "-c", &path.display().to_string()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const PASS_MAIN: &str = "Pw-main-7f3a91c2";
const PASS_FILE: &str = "Pw-file-0b5e44d8";
const PASS_WRONG: &str = "Pw-wrong-c61d2e90";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_passwords_stay_out_of_logs_check_metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let passwd = dir.path().join("passwd");
    let passwd_s = passwd.display().to_string();
    run(Command::new("mosquitto_passwd").args(["-b", "-c", &passwd_s, "fg-main", PASS_MAIN]));
    run(Command::new("mosquitto_passwd").args(["-b", &passwd_s, "fg-file", PASS_FILE]));
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let broker = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {passwd_s}\n"
    ));
    let pass_file = dir.path().join("fg-file.pass");
    std::fs::write(&pass_file, format!("{PASS_FILE}\n")).unwrap();

    let metrics = support::free_port();
    let port = broker.port();
    let fan = |name: &str, client: &str| {
        format!(
            "  - name: {name}\n    driver: dummy\n    model: fan\n    syncInterval: 200ms\n    mqtt: {{ client: {client} }}\n"
        )
    };
    let yaml = format!(
        r#"gateway:
  namespace: sec
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{port}
    maxReconnectInterval: 1s
    basicAuth: {{ name: fg-main, password: "{PASS_MAIN}" }}
devices:
{}{}{}"#,
        fan("main", "{}"),
        fan(
            "file",
            &format!(
                "{{ clientId: fg-file, basicAuth: {{ name: fg-file, passwordFile: \"{}\" }} }}",
                pass_file.display()
            )
        ),
        fan(
            "wrong",
            &format!("{{ clientId: fg-wrong, basicAuth: {{ name: fg-main, password: \"{PASS_WRONG}\" }} }}")
        ),
    );
    // The most verbose log there is: every library at trace.
    let gw = Gateway::start_with_env(&yaml, &[("RUST_LOG", "trace")]);
    let mut probe = MqttProbe::connect_with_login(port, "fg-main", PASS_MAIN).await;
    probe.subscribe("fieldgate/sec/+", 1).await;
    for device in ["main", "file"] {
        let t = format!("fieldgate/sec/{device}");
        assert!(
            probe.wait_topic(WAIT, &t).await.is_some(),
            "no state from {device}:\n{}",
            gw.log()
        );
    }
    // The wrong password is refused and reported — without itself.
    let refused = support::wait_until_async(WAIT, || {
        metric(metrics, "fieldgate_mqtt_reason_codes_total", &["fg-wrong"]).is_some()
    })
    .await;
    assert!(refused, "refusal not counted:\n{}", gw.log());
    assert_eq!(healthz(metrics), Some(503));

    let (_, health) =
        support::http_get(&format!("127.0.0.1:{metrics}"), "/healthz").expect("healthz");
    let (_, metrics_text) =
        support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics").expect("metrics");
    let (code, checked) = check(gw.config_path());
    assert_eq!(code, 0, "{checked}");
    let log = gw.log();
    assert!(log.lines().count() > 50, "a trace log: {log}");
    for (what, text) in [
        ("log", &log),
        ("check", &checked),
        ("/metrics", &metrics_text),
        ("/healthz", &health),
    ] {
        for secret in [PASS_MAIN, PASS_FILE, PASS_WRONG] {
            assert!(
                !text.contains(secret),
                "{what} shows a password ({secret}):\n{text}"
            );
        }
    }
    assert!(
        checked.contains("password"),
        "check says one is set: {checked}"
    );
}

#[test]
fn private_keys_and_credentials_in_urls_stay_out_of_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=fieldgate",
        ])
        .current_dir(d));
    let key = std::fs::read_to_string(d.join("key.pem")).unwrap();
    let cert = std::fs::read_to_string(d.join("cert.pem")).unwrap();
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    };
    let yaml = format!(
        "mqtt:\n  client:\n    server: ssl://127.0.0.1:8883\n    tlsConfig:\n      caFile: cert.pem\n      certFilePem: |\n{}      keyFilePem: |\n{}devices:\n  - {{ name: a, driver: dummy, model: fan }}\n",
        indent(&cert),
        indent(&key)
    );
    let config = d.join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    let key_body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    for line in key_body {
        assert!(!out.contains(line), "check shows the private key:\n{out}");
    }
    assert!(!out.contains("PRIVATE KEY"), "{out}");

    // user:password@ in the server URL is refused, without repeating it.
    std::fs::write(
        &config,
        format!("mqtt:\n  client:\n    server: tcp://bob:{PASS_MAIN}@127.0.0.1:1883\ndevices:\n  - {{ name: a, driver: dummy, model: fan }}\n"),
    )
    .unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains("basicAuth") && !out.contains(PASS_MAIN),
        "{out}"
    );
}

/// A private CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by
/// it (`server.pem`, `server.key`) in `dir`, readable by the `mosquitto`
/// user.
fn private_ca(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let openssl = |args: &[&str]| {
        run(Command::new("openssl").args(args).current_dir(dir));
    };
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    ]);
    openssl(&ca);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&req);
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_broker_by_default() {
    let pki = tempfile::tempdir().unwrap();
    private_ca(pki.path());
    let tls_port = support::free_port();
    let broker = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
        pki.path().display()
    ));
    let mut rec = Recorder::start(broker.port(), "sec").await;
    let metrics = support::free_port();
    let yaml = |tls: &str| {
        format!(
            "gateway:\n  namespace: sec\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: ssl://127.0.0.1:{tls_port}\n    maxReconnectInterval: 1s\n{tls}devices:\n  - {{ name: fan, driver: dummy, model: fan, syncInterval: 100ms }}\n"
        )
    };
    // No tlsConfig: the system's CAs, which do not know this one.
    let mut gw = Gateway::start(&yaml(""));
    let refused = gw.wait_for_log("certificate", WAIT);
    assert!(refused, "no certificate error:\n{}", gw.log());
    let (code, health) =
        support::http_get(&format!("127.0.0.1:{metrics}"), "/healthz").expect("healthz");
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("certificate"), "{health}");
    assert!(
        !broker
            .log()
            .contains("New client connected from 127.0.0.1 as fieldgate-sec"),
        "the gateway got through:\n{}",
        broker.log()
    );
    gw.kill9();

    // The same broker with its CA configured: connects, so the refusal
    // above was the verification.
    let _gw = Gateway::start(&yaml(&format!(
        "    tlsConfig: {{ caFile: \"{}/ca.pem\" }}\n",
        pki.path().display()
    )));
    rec.state_where("fan", "a state over TLS", |_| true).await;
}

#[test]
fn metrics_listen_on_loopback_by_default() {
    let resolved = fieldgate::config::load_str(
        "devices:\n  - { name: a, driver: dummy, model: fan }\n",
        "default.yaml",
        Path::new("."),
    )
    .expect("a minimal config loads");
    let addr = resolved
        .gateway
        .metrics_listen
        .expect("metrics on by default");
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(addr.to_string(), "127.0.0.1:9880");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "devices:\n  - { name: a, driver: dummy, model: fan }\n",
    )
    .unwrap();
    let (code, out) = check(&config);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("metrics http://127.0.0.1:9880/metrics"),
        "{out}"
    );
}

#[test]
fn inputs_larger_than_their_limit_are_refused_without_reading_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let device = "devices:\n  - { name: a, driver: dummy, model: fan }\n";
    // Each would fill the memory if read whole.
    let cases = [
        ("the config itself", "/dev/zero".to_string(), "larger than"),
        (
            "a password file",
            format!("mqtt:\n  client:\n    basicAuth: {{ name: u, passwordFile: /dev/zero }}\n{device}"),
            "passwordFile: cannot read password file `/dev/zero`: larger than",
        ),
        (
            "a CA file",
            format!("mqtt:\n  client:\n    server: ssl://127.0.0.1:8883\n    tlsConfig: {{ caFile: /dev/zero }}\n{device}"),
            "caFile: cannot read `/dev/zero`: larger than",
        ),
    ];
    for (what, config, expected) in cases {
        let path = if config.starts_with('/') {
            std::path::PathBuf::from(config)
        } else {
            let p = d.join("config.yaml");
            std::fs::write(&p, config).unwrap();
            p
        };
        let (code, out) = check(&path);
        assert_eq!(code, 78, "{what}: {out}");
        assert!(out.contains(expected), "{what}: {out}");
    }
}

/// Sends a 2 MiB `$set` (beyond the 1 MiB the client accepts in one
/// packet) to a gateway with a persistent session on MQTT `version`: the
/// broker keeps what the gateway has not acknowledged (commands are QoS 1)
/// and sends it again after every reconnect. Returns the result for it, if
/// one came, after checking that the session stayed up and commands work.
async fn oversized_command(version: u8) -> Option<Value> {
    let broker = Mosquitto::start();
    let metrics = support::free_port();
    let yaml = format!(
        "gateway:\n  namespace: sec\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: tcp://127.0.0.1:{}\n    protocolVersion: {version}\n    clientId: fg-big\n    cleanSession: false\n    maxReconnectInterval: 1s\n  message: {{ qos: 1 }}\ndevices:\n  - {{ name: fan, driver: dummy, model: fan, syncInterval: 100ms }}\n",
        broker.port()
    );
    let mut gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), "sec").await;
    rec.status("fan", "online").await;
    let probe = MqttProbe::connect(broker.port()).await;
    let big = format!(r#"{{"on": true, "pad": "{}"}}"#, "x".repeat(2 << 20));
    probe.publish("fieldgate/sec/fan/$set", big, 1, false).await;
    probe
        .publish(
            "fieldgate/sec/fan/$set",
            r#"{"on": true, "$id": "small"}"#,
            1,
            false,
        )
        .await;
    let mut big_result = None;
    loop {
        let r = rec
            .wait("a $set result", |m| {
                m.topic == "fieldgate/sec/fan/$set/result"
            })
            .await
            .json();
        if r["$id"] == "small" {
            assert_eq!(r["ok"], true, "{r}");
            break;
        }
        big_result = Some(r);
    }
    // The session stayed up and the fan keeps publishing.
    rec.more_states("fan", 5).await;
    assert_eq!(
        metric(metrics, "fieldgate_mqtt_reconnects_total", &["fg-big"]),
        Some(0.0),
        "{}",
        gw.log()
    );
    assert!(gw.is_running());
    big_result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_gets_an_error_and_does_not_break_the_session() {
    // MQTT 3.1.1 cannot tell the broker a size limit: the bridge cuts the
    // message so that it reaches the device as a command that is too large.
    let result = oversized_command(4).await.expect("an error result");
    assert_eq!(result["ok"], false, "{result}");
    assert!(
        result["errors"]["$payload"]
            .as_str()
            .is_some_and(|e| e.contains("too large")),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_on_mqtt5_is_dropped_by_the_broker() {
    // MQTT 5: the gateway's CONNECT announces its maximum packet size, and
    // the broker drops larger messages for it (no result comes).
    let result = oversized_command(5).await;
    assert!(result.is_none(), "{result:?}");
}

#[test]
fn device_names_and_topics_cannot_inject_topic_levels_or_wildcards() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let cases = [
        ("a device name with /", "devices:\n  - { name: \"a/b\", driver: dummy, model: fan }\n"),
        ("a device name with +", "devices:\n  - { name: \"a+\", driver: dummy, model: fan }\n"),
        ("a device name #", "devices:\n  - { name: \"#\", driver: dummy, model: fan }\n"),
        ("a device name with $", "devices:\n  - { name: \"$SYS\", driver: dummy, model: fan }\n"),
        ("a device name with NUL", "devices:\n  - { name: \"a\\0b\", driver: dummy, model: fan }\n"),
        ("a namespace with /", "gateway: { namespace: \"x/y\" }\ndevices:\n  - { name: a, driver: dummy, model: fan }\n"),
        ("a namespace #", "gateway: { namespace: \"#\" }\ndevices:\n  - { name: a, driver: dummy, model: fan }\n"),
        ("a prefix with +", "mqtt: { message: { topic: { prefix: \"a/+\" } } }\ndevices:\n  - { name: a, driver: dummy, model: fan }\n"),
        ("a static topic with #", "devices:\n  - { name: a, driver: dummy, model: fan, mqtt: { message: { topic: { name: \"plant/#\" } } } }\n"),
        ("a static topic under $SYS", "devices:\n  - { name: a, driver: dummy, model: fan, mqtt: { message: { topic: { name: \"$SYS/x\" } } } }\n"),
        ("a static topic with an empty level", "devices:\n  - { name: a, driver: dummy, model: fan, mqtt: { message: { topic: { name: \"a//b\" } } } }\n"),
        ("a will topic with +", "mqtt: { client: { will: { topic: \"a/+/b\" } } }\ndevices:\n  - { name: a, driver: dummy, model: fan }\n"),
    ];
    for (what, yaml) in cases {
        std::fs::write(&config, yaml).unwrap();
        let (code, out) = check(&config);
        assert_eq!(code, 78, "{what} was accepted:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_names_with_quotes_and_slashes_stay_json_keys() {
    let broker = Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "sec").await;
    let name = r#"t","evil":"1/#\u0000"#;
    let yaml = format!(
        "gateway: {{ namespace: sec, metrics: {{ listen: \"\" }} }}\nmqtt: {{ client: {{ server: \"tcp://127.0.0.1:{}\" }} }}\ndevices:\n  - name: dev\n    driver: dummy\n    syncInterval: 100ms\n    properties:\n      - {{ name: '{name}', type: int32, simulate: {{ constant: 5 }} }}\n",
        broker.port()
    );
    let _gw = Gateway::start(&yaml);
    let state = rec.state_where("dev", "a state", |_| true).await;
    assert_eq!(state["properties"], json!({ name: 5 }), "{state}");
    assert!(state.get("evil").is_none());
    let meta = rec
        .seen_or_wait("$meta", |m| m.topic == "fieldgate/sec/dev/$meta")
        .await
        .json();
    let props: Vec<&String> = meta["properties"].as_object().unwrap().keys().collect();
    assert_eq!(props, vec![name], "{meta}");
    // Only the device's own topics (and the gateway's will and health) exist.
    for m in &rec.seen {
        assert!(
            (m.topic.starts_with("fieldgate/sec/dev")
                || m.topic == "fieldgate/sec/$will"
                || m.topic == "fieldgate/sec/$health")
                && !m.topic.contains("evil"),
            "{}",
            m.topic
        );
    }
}

/// Sends `$set` to the device `plc` and returns its result.
async fn set(probe: &MqttProbe, rec: &mut Recorder, payload: &Value) -> Value {
    probe
        .publish("fieldgate/sec/plc/$set", payload.to_string(), 1, false)
        .await;
    rec.wait("a $set result", |m| {
        m.topic == "fieldgate/sec/plc/$set/result"
    })
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_reaches_only_writable_properties_on_the_device() {
    let storage = modbus_server::Storage::with(|t| {
        t.holding.insert(0, 10);
        t.holding.insert(1, 20);
    });
    let server = modbus_server::tcp_server(storage.clone(), "127.0.0.1:0").await;
    let broker = Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "sec").await;
    let yaml = format!(
        r#"gateway: {{ namespace: sec, metrics: {{ listen: "" }} }}
mqtt: {{ client: {{ server: "tcp://127.0.0.1:{}" }} }}
devices:
  - name: plc
    driver: modbus
    syncInterval: 100ms
    protocol: {{ tcp: {{ endpoint: "{}" }}, unitId: 1 }}
    properties:
      - {{ name: limit, register: holding, address: 0, type: uint16 }}
      - {{ name: setpoint, register: holding, address: 1, type: uint16, writable: true }}
"#,
        broker.port(),
        server.addr
    );
    let _gw = Gateway::start(&yaml);
    rec.state_where("plc", "both values", |v| {
        v["properties"] == json!({"limit": 10, "setpoint": 20})
    })
    .await;
    let probe = MqttProbe::connect(broker.port()).await;
    for payload in [
        json!({"limit": 99}),
        json!({"setpoint": 21, "limit": 99}),
        json!({"$limit": 99}),
        json!({"limit ": 99}),
    ] {
        let r = set(&probe, &mut rec, &payload).await;
        assert_eq!(r["ok"], false, "{payload}: {r}");
        assert_eq!(r["applied"], json!({}), "{payload}: {r}");
    }
    // Nothing reached the device's registers.
    assert_eq!(storage.holding(0), Some(10));
    assert_eq!(storage.holding(1), Some(20));
    // The writable one is written.
    let r = set(&probe, &mut rec, &json!({"setpoint": 21})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(storage.holding(1), Some(21));
    assert_eq!(storage.holding(0), Some(10));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_and_the_broker_socket_are_private() {
    // Nothing listens: messages go to the file store.
    let nowhere = support::free_port();
    let metrics = support::free_port();
    let yaml = format!(
        "gateway:\n  namespace: sec\n  stateDirectory: \"{{dir}}/state\"\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: tcp://127.0.0.1:{nowhere}\n    clientId: fg-private\n    store: {{ type: file }}\n  message: {{ qos: 1 }}\ndevices:\n  - {{ name: fan, driver: dummy, model: fan, syncInterval: 50ms }}\n"
    );
    let gw = Gateway::start(&yaml);
    let stored = support::wait_until_async(WAIT, || {
        metric(metrics, "fieldgate_mqtt_store_messages", &["fg-private"]).is_some_and(|n| n >= 5.0)
    })
    .await;
    assert!(stored, "nothing stored:\n{}", gw.log());
    // <stateDirectory>/mqtt/<client id>
    let store = gw.dir().join("state/mqtt/fg-private");
    assert_eq!(mode(&store), 0o700, "{}", store.display());
    let files: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let segments = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "seg"))
        .count();
    assert!(segments > 0, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // The private socket rumqttc talks to the broker connection through.
    let prefix = format!("fieldgate-{}-", gw.pid());
    let bridges: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert!(!bridges.is_empty(), "no bridge directory");
    for b in bridges {
        assert_eq!(mode(&b), 0o700, "{}", b.display());
    }
}

#[cfg(feature = "opcua")]
use crate::opcua_server;

#[cfg(feature = "opcua")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_password_and_generated_key_are_kept_private() {
    use opcua_server::{OpcUaServer, Options, PASSWORD, USER};
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let trusted = dir.path().join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::copy(server.certificate(), trusted.join("plc.der")).unwrap();
    let pass = dir.path().join("opcua.pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).unwrap();
    let broker = Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "sec").await;
    let yaml = format!(
        r#"gateway:
  namespace: sec
  stateDirectory: "{{dir}}/state"
  metrics: {{ listen: "" }}
mqtt: {{ client: {{ server: "tcp://127.0.0.1:{}" }} }}
devices:
  - name: plc
    driver: opcua
    syncInterval: 300ms
    timeout: 10s
    protocol:
      endpoint: "{}"
      securityPolicy: Basic256Sha256
      securityMode: SignAndEncrypt
      username: {USER}
      passwordFile: "{}"
      trustedServerCertificates: "{}"
      mode: poll
    properties:
      - {{ name: n, nodeId: "{}", type: int32 }}
"#,
        broker.port(),
        server.url,
        pass.display(),
        trusted.display(),
        server.node("Int32"),
    );
    let gw = Gateway::start_with_env(&yaml, &[("RUST_LOG", "trace")]);
    rec.state_where("plc", "a value", |v| v["properties"]["n"].is_i64())
        .await;
    let log = gw.log();
    assert!(
        !log.contains(PASSWORD),
        "the log shows the password:\n{log}"
    );
    let (_, checked) = check(gw.config_path());
    assert!(!checked.contains(PASSWORD), "{checked}");
    let state = gw.dir().join("state/opcua");
    assert_eq!(mode(&state.join("private")), 0o700);
    assert_eq!(mode(&state.join("private/private.pem")), 0o600);
    server.stop().await;
}
