//! Loader tests: error format and positions, every validation rule, and
//! resolution defaults.

use std::path::Path;
use std::time::Duration;

use fieldgate_drivers::dummy::Generator;
use fieldgate_drivers::{Connection, DataType, PropertyAddress, Value};

use super::resolved::{Resolved, Secret, ServerAddress};
use super::{load_str, ConfigError};

fn load(yaml: &str) -> Result<Resolved, Vec<ConfigError>> {
    load_str(yaml, "c.yaml", Path::new("/nonexistent")).map_err(|e| e.0)
}

/// Every error line of a broken config.
fn errs(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok(_) => panic!("config unexpectedly valid:\n{yaml}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

/// Asserts one error line starts with `prefix` and contains `needle`.
fn has(errs: &[String], prefix: &str, needle: &str) {
    assert!(
        errs.iter().any(|e| (e.starts_with(prefix)
            || (!prefix.starts_with("c.yaml") && e.contains(prefix)))
            && e.contains(needle)),
        "no error `{prefix}…{needle}…` in:\n{}",
        errs.join("\n")
    );
}

fn ok(yaml: &str) -> Resolved {
    match load(yaml) {
        Ok(r) => r,
        Err(e) => panic!(
            "unexpected errors:\n{}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

const FAN: &str = "devices:\n  - name: fan\n    driver: dummy\n    model: fan\n";

mod docs;
mod drivers;
mod long_lists;
mod mqtt;
mod reuse;

#[test]
fn empty_config_gets_defaults_and_gateway_session() {
    let r = ok("");
    assert_eq!(r.gateway.namespace, "default");
    assert_eq!(r.gateway.state_directory, Path::new("/var/lib/fieldgate"));
    assert_eq!(
        r.gateway.metrics_listen,
        Some("127.0.0.1:9880".parse().unwrap())
    );
    assert_eq!(r.gateway_topic, "fieldgate/default");
    assert_eq!(r.sessions.len(), 1);
    let s = &r.sessions[0];
    assert_eq!(s.client_id, "fieldgate-default");
    assert_eq!(
        s.server,
        ServerAddress::Tcp {
            host: "127.0.0.1".into(),
            port: 1883
        }
    );
    assert_eq!(s.protocol_version, 4);
    assert_eq!(s.will.topic, "fieldgate/default/$will");
    assert_eq!(s.will.payload, b"offline");
    assert_eq!((s.will.qos, s.will.retained), (1, true));
    assert_eq!(s.connect_timeout, Duration::from_secs(30));
    assert_eq!(s.keep_alive, Duration::from_secs(30));
    assert_eq!(s.max_reconnect_interval, Duration::from_secs(600));
    assert_eq!(s.message_channel_depth, 100);
    assert!(s.clean_session && s.auto_reconnect);
    assert!(r.devices.is_empty());
}

#[test]
fn fan_model_expands() {
    let r = ok(FAN);
    let d = &r.devices[0];
    assert_eq!(d.message.topic, "fieldgate/default/fan");
    assert_eq!(d.session, 0);
    assert_eq!(d.spec.connection, Connection::Dummy);
    assert_eq!(d.spec.sync_interval, Duration::from_secs(1));
    assert_eq!(d.spec.timeout, Duration::from_secs(1));
    let p = &d.spec.properties;
    assert_eq!(p.len(), 3);
    assert_eq!(
        (&*p[0].name, p[0].data_type, p[0].writable),
        ("on", DataType::Bool, true)
    );
    assert_eq!(p[0].address, PropertyAddress::Simulated(Generator::FanOn));
    assert_eq!(
        (&*p[1].name, p[1].data_type, p[1].writable),
        ("gear", DataType::Uint8, true)
    );
    assert_eq!(
        p[2].address,
        PropertyAddress::Simulated(Generator::FanSpeed)
    );
    assert!(!p[2].writable);
    let e = d.properties[1].enum_entries();
    assert_eq!(e[2].raw, Value::Uint(2));
    assert_eq!(e[2].label, "fast");
    assert_eq!((d.message.qos, d.message.retained), (0, false));
}

#[test]
fn broker_sets_default_server_and_uid_topics() {
    let r = ok(&format!(
        "gateway: {{namespace: plant-a}}\nbroker: {{listen: 127.0.0.1:11883}}\nmqtt: {{message: {{topic: {{prefix: pre, with: uid}}}}}}\n{FAN}"
    ));
    assert_eq!(
        r.sessions[0].server,
        ServerAddress::Tcp {
            host: "127.0.0.1".into(),
            port: 11883
        }
    );
    let uid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"fieldgate://plant-a/fan");
    assert_eq!(r.devices[0].message.topic, format!("pre/{uid}"));
    assert_eq!(r.gateway_topic, "pre/plant-a");
}

#[test]
fn device_overrides_make_own_session() {
    let r = ok("mqtt:\n  client: {server: 'tcp://broker', keepAlive: 10s}\n  message: {qos: 1}\ndevices:\n  - {name: a, driver: dummy, model: fan}\n  - {name: b, driver: dummy, model: fan, mqtt: {client: {keepAlive: 20s}, message: {retained: true}}}\n  - {name: c, driver: dummy, model: fan, mqtt: {client: {keepAlive: 20s}}}\n  - {name: d, driver: dummy, model: fan, mqtt: {client: {keepAlive: 10s}}}\n");
    assert_eq!(r.sessions.len(), 2);
    assert_eq!(r.devices[0].session, 0);
    assert_eq!(r.devices[1].session, 1);
    assert_eq!(r.devices[2].session, 1);
    assert_eq!(
        r.devices[3].session, 0,
        "equal merged options share the gateway session"
    );
    let s = &r.sessions[1];
    assert_eq!(s.client_id, "fieldgate-default-b");
    assert_eq!(s.will.topic, "fieldgate/default/b/$will");
    assert_eq!(s.keep_alive, Duration::from_secs(20));
    assert_eq!(
        s.server,
        ServerAddress::Tcp {
            host: "broker".into(),
            port: 1883
        }
    );
    assert_eq!(
        (r.devices[1].message.qos, r.devices[1].message.retained),
        (1, true)
    );
}

#[test]
fn will_base64_and_aliases() {
    let r = ok("mqtt:\n  client:\n    will: {topic: {name: a/b}, payloadEncode: base64, payloadContent: aGk=}\n    connectionTime: 5s\n    basicAuth: {name: u, passsword: p}\n");
    let s = &r.sessions[0];
    assert_eq!(s.will.topic, "a/b");
    assert_eq!(s.will.payload, b"hi");
    assert_eq!(s.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.password.as_ref().map(Secret::expose), Some("p"));
    let e = errs("mqtt:\n  client:\n    will: {payloadEncode: base64, payloadContent: '!!!'}\n");
    has(
        &e,
        "c.yaml:3:51: mqtt.client.will.payloadContent: ",
        "base64",
    );
}

#[test]
fn password_file_first_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\r\nsecond\n").unwrap();
    let r = load_str(
        "mqtt: {client: {basicAuth: {name: u, passwordFile: pw}}}\n",
        "c.yaml",
        dir.path(),
    )
    .unwrap();
    assert_eq!(
        r.sessions[0].password.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    let e = errs("mqtt:\n  client:\n    basicAuth: {passwordFile: missing.txt}\n");
    has(
        &e,
        "c.yaml:3:31: mqtt.client.basicAuth.passwordFile: ",
        "cannot read password file",
    );
}

#[test]
fn yaml_syntax_error_position_and_enclosing_path() {
    let e = errs("gateway:\n  namespace: x\ndevices:\n  - name: a\n    properties: [1, 2\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("c.yaml:"), "{e:?}");
    assert!(e[0].contains("YAML syntax error"), "{e:?}");
    let e = errs("gateway:\n  namespace: x\n  metrics: {listen: a\n");
    assert!(e[0].contains("YAML syntax error"), "{e:?}");
}

#[test]
fn unknown_key_did_you_mean_and_allowed() {
    let e = errs("gateway:\n  namespce: x\n");
    assert_eq!(
        e,
        vec!["c.yaml:2:3: gateway.namespce: unknown key `namespce` (did you mean `namespace`?); allowed keys: `namespace`, `stateDirectory`, `secretsDirectory`, `metrics`, `log`, `clockCheck`, `reload`, `healthInterval`"]
    );
    let e = errs("gatway: {}\n");
    has(&e, "c.yaml:1:1: gatway: ", "did you mean `gateway`?");
    let e =
        errs("devices:\n  - name: a\n    driver: dummy\n    model: fan\n    sync_interval: 2s\n");
    has(
        &e,
        "c.yaml:5:5: devices[0].sync_interval: ",
        "did you mean `syncInterval`?",
    );
}

#[test]
fn wrong_type_points_at_value() {
    let e = errs("mqtt:\n  message:\n    qos: high\n");
    has(&e, "c.yaml:3:10: mqtt.message.qos: ", "expected u8");
    let e = errs("devices:\n  - name: a\n    driver: modbus\n    protocol: {tcp: {endpoint: 'h:502'}}\n    properties:\n      - {name: x, register: holding, address: 1, type: float33}\n");
    has(
        &e,
        "c.yaml:6:56: devices[0].properties[0].type: ",
        "unknown value `float33` (did you mean `float32`?)",
    );
}

#[test]
fn bad_duration() {
    let e =
        errs("devices:\n  - name: a\n    driver: dummy\n    model: fan\n    syncInterval: fast\n");
    assert_eq!(e.len(), 1, "{e:?}");
    has(
        &e,
        "c.yaml:5:19: devices[0].syncInterval: ",
        "not a duration",
    );
}

#[test]
fn duplicate_device_points_at_second() {
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    model: fan\n  - name: a\n    driver: dummy\n    model: fan\n");
    assert_eq!(
        e,
        vec!["c.yaml:5:11: devices[1].name: duplicate device name `a`: already used by devices[0]; device names must be unique"]
    );
}

#[test]
fn topic_clash_names_topic_and_second_device() {
    let e = errs("devices:\n  - {name: a, driver: dummy, model: fan}\n  - name: b\n    driver: dummy\n    model: fan\n    mqtt: {message: {topic: {name: fieldgate/default/a}}}\n");
    assert_eq!(e.len(), 1, "{e:?}");
    has(
        &e,
        "c.yaml:6:36: devices[1].mqtt.message.topic.name: ",
        "topic `fieldgate/default/a` is already used by device `a`",
    );
}

#[test]
fn bad_topic_chars() {
    for (t, why) in [
        ("a/+/b", "wildcard"),
        ("a/#", "wildcard"),
        ("/a", "start with `/`"),
        ("$a", "start with `$`"),
        ("a//b", "empty level"),
        ("a/", "empty level"),
    ] {
        let e = errs(&format!("devices:\n  - name: x\n    driver: dummy\n    model: fan\n    mqtt:\n      message:\n        topic: {{name: '{t}'}}\n"));
        has(&e, "c.yaml:7:23: devices[0].mqtt.message.topic.name: ", why);
    }
    let e = errs("mqtt:\n  message:\n    topic: {prefix: 'a+'}\n");
    has(&e, "c.yaml:3:21: mqtt.message.topic.prefix: ", "wildcard");
    let e = errs("mqtt:\n  message:\n    topic: {name: x}\n");
    has(
        &e,
        "c.yaml:3:13: mqtt.message.topic.name: ",
        "only per device",
    );
}

#[test]
fn several_errors_at_once() {
    let e = errs("gateway:\n  namespace: 'bad ns'\n  metrics: {listen: nope}\nmqtt:\n  client: {protocolVersion: 7, keepAlive: x}\n  message: {qos: 9}\ndevices:\n  - {name: -bad, driver: dummy, model: fan}\n  - {name: ok, driver: dummy}\n");
    has(&e, "c.yaml:2:14: gateway.namespace: ", "invalid namespace");
    has(
        &e,
        "c.yaml:3:21: gateway.metrics.listen: ",
        "not a socket address",
    );
    has(
        &e,
        "c.yaml:5:29: mqtt.client.protocolVersion: ",
        "not an MQTT version",
    );
    has(&e, "c.yaml:5:43: mqtt.client.keepAlive: ", "not a duration");
    has(&e, "c.yaml:6:18: mqtt.message.qos: ", "allowed: 0, 1, 2");
    has(&e, "c.yaml:8:12: devices[0].name: ", "invalid device name");
    has(
        &e,
        "c.yaml:9:16: devices[1].driver: ",
        "needs `model: fan` or a list of `properties`",
    );
    assert_eq!(e.len(), 7, "{}", e.join("\n"));
}

#[test]
fn names_rules() {
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    properties:\n      - {name: x, type: int8, simulate: {constant: 1}}\n      - {name: x, type: int8, simulate: {constant: 1}}\n      - {name: $y, type: int8, simulate: {constant: 1}}\n");
    has(
        &e,
        "c.yaml:6:16: devices[0].properties[1].name: ",
        "duplicate property name `x`",
    );
    has(
        &e,
        "c.yaml:7:16: devices[0].properties[2].name: ",
        "must not start with `$`",
    );
}

#[test]
fn misc_value_rules() {
    let e = errs("mqtt:\n  client: {messageChannelDepth: 0, keepAlive: 500ms, will: {qos: 3}}\n");
    has(&e, "mqtt.client.messageChannelDepth: ", "at least 1");
    has(&e, "mqtt.client.keepAlive: ", "at least 1s");
    has(&e, "mqtt.client.will.qos: ", "allowed: 0, 1, 2");
    ok("gateway: {metrics: {listen: ''}}\n");
    assert_eq!(
        ok("gateway: {metrics: {listen: ''}}\n")
            .gateway
            .metrics_listen,
        None
    );
    let e = errs("broker: {listen: nowhere}\n");
    has(&e, "c.yaml:1:18: broker.listen: ", "not a socket address");
    let e = errs("devices: {a: 1}\n");
    has(&e, "c.yaml:1:10: devices: ", "expected a list of devices");
    let e = errs("- a\n- b\n");
    has(&e, "c.yaml:1:1: : ", "must be a mapping");
}

#[test]
fn error_display_format() {
    let e = ConfigError {
        file: "f.yaml".into(),
        line: 3,
        column: 7,
        key_path: "devices[0].name".into(),
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "f.yaml:3:7: devices[0].name: bad");
}

#[test]
fn line_breaks_from_the_file_stay_inside_one_error_line() {
    // Found by fuzzing (config): quoted values and keys with line breaks
    // split an error over several lines.
    let e = errs("gateway:\n  namespace: \"a\\r\\nb\"\n  \"x\\ny\": 1\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().all(|l| !l.contains(['\n', '\r'])), "{e:?}");
    has(&e, "c.yaml:2:14: gateway.namespace:", "`a\\r\\nb`");
    has(&e, "c.yaml:3:3: gateway.x\\ny:", "unknown key `x\\ny`");
}

#[test]
fn a_long_client_id_gives_a_store_directory_name_a_file_system_takes() {
    // Found by fuzzing (topics): the default client id of a long namespace
    // became a store directory name over the 255-byte file name limit.
    use super::resolved::StoreSettings;
    let ns = "n".repeat(300);
    let dir_of = |r: &Resolved| match &r.sessions[0].store {
        StoreSettings::File { directory, .. } => directory.clone(),
        StoreSettings::Memory => panic!("a file store"),
    };
    let r = ok(&format!(
        "gateway: {{namespace: {ns}, stateDirectory: /s}}\nmqtt:\n  client:\n    store: {{type: file}}\n"
    ));
    let dir = dir_of(&r);
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(name.len() <= 255, "{} bytes", name.len());
    assert!(name.starts_with(&format!("fieldgate-{}", &ns[..190])));
    assert_eq!(dir.parent(), Some(Path::new("/s/mqtt")));
    // Ids sharing the first 200 characters still get their own directory.
    let other = ok(&format!(
        "gateway: {{namespace: {ns}x, stateDirectory: /s}}\nmqtt:\n  client:\n    store: {{type: file}}\n"
    ));
    assert_ne!(dir_of(&other), dir);
}

#[test]
fn a_namespace_making_the_gateway_topic_too_long_is_refused() {
    // Found by fuzzing (topics): prefix and namespace were each within
    // bounds, G = <prefix>/<namespace> was not (over MQTT's 65535 bytes).
    let prefix = "p".repeat(50_000);
    let ns = "n".repeat(50_000);
    let e = errs(&format!(
        "gateway: {{namespace: {ns}}}\nmqtt: {{message: {{topic: {{prefix: {prefix}, with: uid}}}}}}\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    has(&e, "c.yaml:1:22: gateway.namespace: ", "the gateway topic");
    has(&e, "c.yaml:1:22: gateway.namespace: ", "too long");
}

#[test]
fn a_default_client_id_over_the_mqtt_limit_is_refused() {
    // Found by fuzzing (topics): a device with its own session and a long
    // name (topic by uid, so the topic stays short) got a default client id
    // `fieldgate-<namespace>-<device>` over MQTT's 65535 bytes.
    let name = "d".repeat(70_000);
    let e = errs(&format!(
        "mqtt: {{message: {{topic: {{with: uid}}}}}}\ndevices:\n  - name: {name}\n    driver: dummy\n    model: fan\n    mqtt: {{client: {{keepAlive: 31s}}}}\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    has(&e, "c.yaml:3:11: devices[0].name: ", "default client id");
    // With a client id of its own it is fine.
    ok(&format!(
        "mqtt: {{message: {{topic: {{with: uid}}}}}}\ndevices:\n  - name: {name}\n    driver: dummy\n    model: fan\n    mqtt: {{client: {{keepAlive: 31s, clientId: d}}}}\n"
    ));
}

#[test]
fn secrets_never_show_in_debug_or_display_of_the_resolved_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n";
    std::fs::write(dir.path().join("client.key"), key).unwrap();
    std::fs::write(
        dir.path().join("client.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let yaml = "gateway:\n  metrics: {listen: '127.0.0.1:9880', token: metrics-token-0123456789, commands: true}\nmqtt:\n  client:\n    server: wss://broker.test/mqtt\n    basicAuth: {name: user, password: hunter2-password}\n    httpHeaders: {Authorization: 'Bearer header-token-xyz'}\n    tlsConfig: {certFile: client.crt, keyFile: client.key}\ndevices:\n  - name: plc\n    driver: opcua\n    protocol: {endpoint: 'opc.tcp://127.0.0.1:4840', username: op, password: opcua-password-42, securityPolicy: Basic256Sha256, securityMode: SignAndEncrypt}\n    properties:\n      - {name: t, nodeId: 'ns=2;s=T', type: float64}\n";
    let r = load_str(yaml, "c.yaml", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    // The secrets were read ...
    let s = &r.sessions[0];
    assert_eq!(
        s.password.as_ref().map(Secret::expose),
        Some("hunter2-password")
    );
    assert_eq!(s.http_headers[0].1.expose(), "Bearer header-token-xyz");
    assert!(s
        .tls
        .key_pem
        .as_ref()
        .is_some_and(|k| k.expose().contains("TOPSECRET")));
    // ... and no formatting of the whole config shows any of them.
    let shown = format!("{r:?}\n{r:#?}\n{}", s.password.as_ref().unwrap());
    for secret in [
        "hunter2-password",
        "header-token-xyz",
        "TOPSECRETKEYMATERIAL",
        "metrics-token-0123456789",
        "opcua-password-42",
    ] {
        assert!(
            !shown.contains(secret),
            "{secret} shows in the resolved config's Debug output"
        );
    }
    assert!(shown.contains("Secret(..)"));
}
