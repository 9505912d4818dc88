//! Loader tests: error format and positions, every validation rule, and
//! resolution defaults.

use std::path::Path;
use std::time::Duration;

use fieldgate_drivers::dummy::Generator;
use fieldgate_drivers::{Connection, DataType, PropertyAddress, Value};

use super::resolved::{Resolved, ServerAddress};
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
    assert_eq!(s.password.as_deref(), Some("p"));
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
    assert_eq!(r.sessions[0].password.as_deref(), Some("s3cret"));
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
        vec!["c.yaml:2:3: gateway.namespce: unknown key `namespce` (did you mean `namespace`?); allowed keys: `namespace`, `stateDirectory`, `secretsDirectory`, `metrics`, `log`, `clockCheck`, `reload`"]
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
fn not_supported_yet_is_an_error() {
    // Defaults written out are fine.
    ok("mqtt:\n  client: {pingTimeout: 10s, writeTimeout: 30s, order: true, resumeSubs: false, store: {type: memory}}\n");
    let opcua = "devices:\n  - name: o\n    driver: opcua\n    protocol: {endpoint: 'opc.tcp://plc:4840'}\n    properties: [{name: s, nodeId: 'ns=2;s=S', type: float64}]\n";
    #[cfg(not(feature = "opcua"))]
    {
        let e = errs(opcua);
        assert_eq!(
            e,
            vec![format!(
                "c.yaml:3:13: devices[0].driver: driver `opcua` is not supported by this build yet; drivers available: {}",
                fieldgate_drivers::enabled_drivers().join(", ")
            )]
        );
    }
    #[cfg(feature = "opcua")]
    ok(opcua);
    let e = errs("devices:\n  - name: o\n    driver: ble\n    protocol: {address: 'A4:C1', endpoint: x}\n    properties: [{name: s, characteristic: abc, type: int16, register: coil}]\n");
    #[cfg(not(feature = "ble"))]
    has(
        &e,
        "c.yaml:3:13: devices[0].driver: ",
        "not supported by this build yet",
    );
    #[cfg(feature = "ble")]
    {
        has(
            &e,
            "c.yaml:4:25: devices[0].protocol.address: ",
            "is not a Bluetooth address",
        );
        has(
            &e,
            "c.yaml:5:44: devices[0].properties[0].characteristic: ",
            "is not a GATT UUID",
        );
    }
    has(
        &e,
        "c.yaml:4:34: devices[0].protocol.endpoint: ",
        "belongs to the opcua driver",
    );
    has(
        &e,
        "c.yaml:5:62: devices[0].properties[0].register: ",
        "belongs to the modbus driver",
    );
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
fn numeric_only_keys_and_enum_keys() {
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    properties:\n      - {name: s, type: string, scale: 2, deadband: 1, simulate: {constant: x}}\n      - {name: e, type: uint8, enum: {0: a, 300: b, -1: c}, simulate: {constant: 0}}\n      - {name: b, type: bool, enum: {true: on, 2: x}, simulate: {constant: true}}\n");
    has(
        &e,
        "c.yaml:5:33: devices[0].properties[0].scale: ",
        "only to numeric types",
    );
    has(
        &e,
        "c.yaml:5:43: devices[0].properties[0].deadband: ",
        "only to numeric types",
    );
    has(
        &e,
        "c.yaml:6:45: devices[0].properties[1].enum.300: ",
        "out of range for `uint8`",
    );
    has(
        &e,
        "c.yaml:6:53: devices[0].properties[1].enum.-1: ",
        "out of range",
    );
    has(
        &e,
        "c.yaml:7:48: devices[0].properties[2].enum.2: ",
        "does not fit",
    );
    assert_eq!(e.len(), 5, "{}", e.join("\n"));
}

#[test]
fn dummy_rules() {
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    model: fan\n    properties: []\n");
    has(
        &e,
        "c.yaml:5:5: devices[0].properties: ",
        "either `model` or `properties`",
    );
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    properties:\n      - {name: x, type: int8}\n      - {name: y, type: int8, simulate: {constant: 200}}\n      - {name: z, type: string, simulate: {counter: {}}}\n      - {name: w, type: float32, simulate: {sine: {min: 5, max: 1, period: 0s}}}\n");
    has(
        &e,
        "c.yaml:5:9: devices[0].properties[0]: ",
        "needs `simulate`",
    );
    has(
        &e,
        "c.yaml:6:52: devices[0].properties[1].simulate.constant: ",
        "out of range for `int8`",
    );
    has(
        &e,
        "c.yaml:7:44: devices[0].properties[2].simulate.counter: ",
        "generates numbers",
    );
    has(
        &e,
        "devices[0].properties[3].simulate.sine.max: ",
        "below min",
    );
    has(
        &e,
        "devices[0].properties[3].simulate.sine.period: ",
        "greater than 0s",
    );
    let e = errs("devices:\n  - name: a\n    driver: modbus\n    model: fan\n    protocol: {tcp: {endpoint: 'h:502'}}\n    properties: [{name: x, register: coil, address: 0, type: bool, simulate: {constant: true}}]\n");
    has(&e, "c.yaml:4:5: devices[0].model: ", "dummy driver");
    has(
        &e,
        "devices[0].properties[0].simulate: ",
        "belongs to the dummy driver",
    );
    let r = ok("devices:\n  - name: a\n    driver: dummy\n    properties:\n      - {name: c, type: uint32, simulate: {counter: {start: 5, step: 2}}}\n      - {name: k, type: float32, writable: true, simulate: {constant: 21}}\n      - {name: s, type: string, simulate: {constant: hello}}\n");
    assert_eq!(
        r.devices[0].spec.properties[0].address,
        PropertyAddress::Simulated(Generator::Counter {
            start: 5.0,
            step: 2.0
        })
    );
    assert_eq!(
        r.devices[0].spec.properties[1].address,
        PropertyAddress::Simulated(Generator::Constant(Value::Float(21.0)))
    );
    assert_eq!(
        r.devices[0].spec.properties[2].address,
        PropertyAddress::Simulated(Generator::Constant(Value::String("hello".into())))
    );
}

#[cfg(feature = "modbus")]
#[test]
fn modbus_rules() {
    let head = "devices:\n  - name: m\n    driver: modbus\n    protocol: {tcp: {endpoint: 'h:502'}}\n    properties:\n";
    let cases = [
        (
            "{name: a, register: coil, address: 0, type: int16}",
            "c.yaml:6:53: devices[0].properties[0].type: ",
            "single bit",
        ),
        (
            "{name: a, register: holding, address: 0, type: bool, bit: 16}",
            "c.yaml:6:67: devices[0].properties[0].bit: ",
            "0..=15",
        ),
        (
            "{name: a, register: coil, address: 0, type: bool, bit: 1}",
            "c.yaml:6:59: devices[0].properties[0].bit: ",
            "only to input and holding",
        ),
        (
            "{name: a, register: holding, address: 0, type: int16, bit: 1}",
            "c.yaml:6:63: devices[0].properties[0].bit: ",
            "needs `type: bool`",
        ),
        (
            "{name: a, register: holding, address: 0, type: string}",
            "c.yaml:6:9: devices[0].properties[0]: ",
            "needs `quantity`",
        ),
        (
            "{name: a, register: holding, address: 0, type: int32, quantity: 2}",
            "c.yaml:6:63: devices[0].properties[0].quantity: ",
            "only to `string` and `bytes`",
        ),
        (
            "{name: a, register: holding, address: 0, type: int32, byteOrder: little}",
            "c.yaml:6:74: devices[0].properties[0].byteOrder: ",
            "ABCD",
        ),
        (
            "{name: a, register: input, address: 0, type: int16, writable: true}",
            "c.yaml:6:71: devices[0].properties[0].writable: ",
            "read-only",
        ),
        (
            "{name: a, register: discreteInput, address: 0, type: bool, writable: true}",
            "devices[0].properties[0].writable: ",
            "read-only",
        ),
        (
            "{name: a, register: holding, address: 65534, type: int64}",
            "c.yaml:6:47: devices[0].properties[0].address: ",
            "past 65535",
        ),
        (
            "{name: a, address: 0, type: int16}",
            "c.yaml:6:9: devices[0].properties[0]: ",
            "needs `register`",
        ),
        (
            "{name: a, register: holding, type: int16}",
            "c.yaml:6:9: devices[0].properties[0]: ",
            "needs `address`",
        ),
        (
            "{name: a, register: holding, address: 0, type: int16, nodeId: x}",
            "c.yaml:6:63: devices[0].properties[0].nodeId: ",
            "belongs to the opcua driver; a modbus property takes",
        ),
        (
            "{name: a, register: hold, address: 0, type: int16}",
            "c.yaml:6:29: devices[0].properties[0].register: ",
            "did you mean `holding`?",
        ),
    ];
    for (p, prefix, needle) in cases {
        let e = errs(&format!("{head}      - {p}\n"));
        has(&e, prefix, needle);
    }
    // An invalid `register` is reported once, not also as missing.
    let e = errs(&format!(
        "{head}      - {{name: a, register: hold, address: 0, type: int16}}\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    let e = errs("devices:\n  - name: m\n    driver: modbus\n    protocol: {tcp: {endpoint: 'h:502'}, rtu: {port: /dev/x}, maxRegistersPerRead: 126, byteOrder: big}\n    properties: [{name: a, register: coil, address: 0, type: bool}]\n");
    has(
        &e,
        "c.yaml:4:42: devices[0].protocol.rtu: ",
        "exactly one of",
    );
    has(
        &e,
        "c.yaml:4:84: devices[0].protocol.maxRegistersPerRead: ",
        "1..=125",
    );
    has(&e, "c.yaml:4:100: devices[0].protocol.byteOrder: ", "ABCD");
    let e = errs("devices:\n  - name: m\n    driver: modbus\n    properties: [{name: a, register: coil, address: 0, type: bool}]\n");
    has(&e, "c.yaml:3:5: devices[0].driver: ", "needs `protocol`");

    use fieldgate_drivers::modbus::*;
    let r = ok("devices:\n  - name: m\n    driver: modbus\n    protocol: {rtu: {port: /dev/ttyUSB0}, byteOrder: CDAB}\n    properties:\n      - {name: a, register: holding, address: 3, type: float32}\n      - {name: b, register: holding, address: 5, type: float32, byteOrder: DCBA}\n      - {name: c, register: holding, address: 7, type: uint8, byte: high}\n      - {name: d, register: input, address: 8, type: int8}\n");
    let Connection::Modbus(c) = &r.devices[0].spec.connection else {
        panic!()
    };
    assert_eq!(c.unit_id, 1);
    assert_eq!(c.max_registers_per_read, 125);
    assert_eq!(c.max_gap, 10);
    assert_eq!(
        c.transport,
        Transport::Rtu(SerialSettings {
            port: "/dev/ttyUSB0".into(),
            baud_rate: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1
        })
    );
    let addr = |i: usize| match &r.devices[0].spec.properties[i].address {
        PropertyAddress::Modbus(a) => a.clone(),
        _ => panic!(),
    };
    assert_eq!(addr(0).byte_order, ByteOrder::Cdab);
    assert_eq!(addr(1).byte_order, ByteOrder::Dcba);
    assert_eq!(addr(2).byte, ByteSelect::High);
    assert_eq!(addr(3).byte, ByteSelect::Low);
    assert_eq!(addr(3).kind, RegisterKind::Input);
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
fn mqtt_transports_and_options_resolve() {
    use crate::config::resolved::ServerAddress;
    let cases = [
        (
            "tcp://h",
            ServerAddress::Tcp {
                host: "h".into(),
                port: 1883,
            },
        ),
        (
            "ssl://h",
            ServerAddress::Tls {
                host: "h".into(),
                port: 8883,
            },
        ),
        (
            "tcps://h:1",
            ServerAddress::Tls {
                host: "h".into(),
                port: 1,
            },
        ),
        (
            "ws://h/mqtt",
            ServerAddress::WebSocket {
                url: "ws://h:80/mqtt".into(),
                host: "h".into(),
                secure: false,
            },
        ),
        (
            "wss://[::1]:9",
            ServerAddress::WebSocket {
                url: "wss://[::1]:9/".into(),
                host: "::1".into(),
                secure: true,
            },
        ),
        (
            "unix:///run/m.sock",
            ServerAddress::Unix {
                path: "/run/m.sock".into(),
            },
        ),
    ];
    for (url, want) in cases {
        assert_eq!(crate::config::load::parse_server(url), Ok(want), "{url}");
    }
    assert!(crate::config::load::parse_server("unix://").is_err());
    assert!(crate::config::load::parse_server("quic://h").is_err());
    // Credentials in the URL are refused without repeating them.
    for url in ["tcp://bob:s3cret@h:1883", "wss://bob:s3cret@h/mqtt"] {
        let e = crate::config::load::parse_server(url).unwrap_err();
        assert!(e.contains("basicAuth") && !e.contains("s3cret"), "{e}");
    }
    ok("mqtt:\n  client: {server: 'wss://h', protocolVersion: 5, resumeSubs: true, order: false, pingTimeout: 2s, writeTimeout: 1s, httpHeaders: {X-A: b, X-B: [c, d]}, tlsConfig: {insecureSkipVerify: true}}\n  message: {contentType: text/json, userProperties: {a: b}, messageExpiryInterval: 1m}\n");
    ok("mqtt:\n  client: {protocolVersion: 3, clientId: short}\n");
}

#[test]
fn mqtt_option_errors_are_located() {
    let e = errs(
        "mqtt:\n  client:\n    protocolVersion: 3\n    clientId: a-client-id-longer-than-23\n",
    );
    has(
        &e,
        "c.yaml:4:15: mqtt.client.clientId: ",
        "at most 23 characters",
    );
    let e = errs("mqtt:\n  client:\n    server: ws://h\n    protocolVersion: 3\n    clientId: x\n");
    has(
        &e,
        "c.yaml:4:22: mqtt.client.protocolVersion: ",
        "not over ws/wss",
    );
    let e = errs("mqtt:\n  client:\n    tlsConfig:\n      caFile: /nonexistent/ca.pem\n");
    has(
        &e,
        "c.yaml:4:15: mqtt.client.tlsConfig.caFile: ",
        "cannot read",
    );
    let e = errs("mqtt:\n  client:\n    tlsConfig:\n      caFilePem: not a pem\n");
    has(&e, "mqtt.client.tlsConfig.caFilePem: ", "PEM certificates");
    let e = errs("mqtt:\n  client:\n    tlsConfig:\n      certFilePem: x\n");
    has(&e, "mqtt.client.tlsConfig.certFilePem: ", "keyFile");
    let e = errs("mqtt:\n  client:\n    httpHeaders: {'bad header': x}\n");
    has(
        &e,
        "c.yaml:3:19: mqtt.client.httpHeaders.bad header: ",
        "not a valid HTTP header",
    );
    let e = errs("mqtt:\n  message:\n    messageExpiryInterval: 500ms\n");
    has(&e, "mqtt.message.messageExpiryInterval: ", "whole seconds");
    let e = errs("mqtt:\n  client:\n    server: 'quic://h'\n");
    has(
        &e,
        "mqtt.client.server: ",
        "allowed: tcp, ssl, tls, tcps, ws, wss, unix",
    );
}

#[cfg(feature = "ble")]
#[test]
fn ble_is_lowered_with_defaults() {
    use fieldgate_drivers::ble::{Access, BleConnection, Endian, Target};
    let r = ok("devices:\n  - name: t\n    driver: ble\n    protocol: {name: LYWSD03MMC, byteOrder: big}\n    properties:\n      - {name: a, service: '0x180F', characteristic: '2a19', type: uint8}\n      - {name: b, characteristic: ebe0ccc1-7a0a-4b0c-8a1a-6ff2997da3a6, type: int16, byteOrder: little, byteOffset: 2, writable: true}\n      - {name: c, characteristic: '2a00', access: notify, type: string}\n");
    let d = &r.devices[0];
    assert_eq!(
        d.spec.connection,
        Connection::Ble(BleConnection {
            adapter: None,
            target: Target::Name("LYWSD03MMC".into()),
            scan_timeout: std::time::Duration::from_secs(30),
        })
    );
    let addr = |i: usize| match &d.spec.properties[i].address {
        PropertyAddress::Ble(a) => a.clone(),
        other => panic!("{other:?}"),
    };
    let a = addr(0);
    assert_eq!(
        a.service.map(|u| u.to_string()),
        Some("0000180f-0000-1000-8000-00805f9b34fb".to_string())
    );
    assert_eq!(
        (a.access, a.byte_order, a.byte_offset),
        (Access::Read, Endian::Big, 0)
    );
    let b = addr(1);
    assert_eq!(
        (b.access, b.byte_order, b.byte_offset),
        (Access::ReadWrite, Endian::Little, 2)
    );
    assert!(d.spec.properties[1].writable && d.properties[1].writable);
    assert_eq!(addr(2).access, Access::Notify);
    assert!(!d.spec.properties[2].writable);
    let e = errs("devices:\n  - name: t\n    driver: ble\n    protocol: {address: 'A4:C1:38:00:11:22', name: x}\n    properties: [{name: a, characteristic: '2a19', type: uint8}]\n");
    has(&e, "c.yaml:4:46: devices[0].protocol.name: ", "not both");
}

#[test]
fn file_store_options_resolve_with_defaults() {
    use super::resolved::StoreSettings;
    let r = ok("gateway: {stateDirectory: /var/lib/fg}\nmqtt:\n  client:\n    clientId: 'gw/1'\n    store: {type: file}\n");
    assert_eq!(
        r.sessions[0].store,
        StoreSettings::File {
            directory: "/var/lib/fg/mqtt/gw_1".into(),
            max_bytes: 64 << 20,
            max_age: None,
            min_free_bytes: 64 << 20,
        }
    );
    let r = ok("mqtt:\n  client:\n    store: {type: file, direcotryPrefix: /data/q, maxBytes: 1MiB, maxAge: 2h, minFreeBytes: 1MiB}\n");
    assert_eq!(
        r.sessions[0].store,
        StoreSettings::File {
            directory: "/data/q".into(),
            max_bytes: 1 << 20,
            max_age: Some(std::time::Duration::from_secs(7200)),
            min_free_bytes: 1 << 20,
        }
    );
    // Two sessions inheriting one directory get a subdirectory each.
    let r = ok("mqtt:\n  client:\n    clientId: a\n    store: {type: file, directoryPrefix: /q}\ndevices:\n  - name: d\n    driver: dummy\n    model: fan\n    mqtt: {client: {clientId: b}}\n");
    let dirs: Vec<_> = r
        .sessions
        .iter()
        .map(|s| match &s.store {
            StoreSettings::File { directory, .. } => directory.display().to_string(),
            StoreSettings::Memory => String::new(),
        })
        .collect();
    assert_eq!(dirs, ["/q/a", "/q/b"]);
    let e = errs("mqtt:\n  client:\n    store: {type: file, maxBytes: 1KiB}\n");
    has(&e, "c.yaml:3:", "mqtt.client.store.maxBytes: ");
    assert!(e[0].contains("at least 64KiB"), "{e:?}");
}

#[cfg(feature = "opcua")]
#[test]
fn opcua_devices_lower_to_connections_and_node_addresses() {
    use fieldgate_drivers::opcua::{Identity, Mode, Policy, SecurityMode};
    let r = ok("gateway: {stateDirectory: /var/lib/fg}\ndevices:\n  - name: o\n    driver: opcua\n    protocol: {endpoint: 'opc.tcp://plc:4840', securityPolicy: Basic256Sha256, username: op, password: pw, trustedServerCertificates: /etc/fg/trusted, mode: poll}\n    properties: [{name: s, nodeId: 'ns=2;s=Line1.Speed', type: float64}]\n");
    let d = &r.devices[0];
    let Connection::OpcUa(c) = &d.spec.connection else {
        panic!("not opcua: {:?}", d.spec.connection)
    };
    assert_eq!(c.endpoint, "opc.tcp://plc:4840");
    assert_eq!(c.policy, Policy::Basic256Sha256);
    // A policy without a mode means the strongest mode.
    assert_eq!(c.security_mode, SecurityMode::SignAndEncrypt);
    assert_eq!(c.mode, Mode::Poll);
    assert_eq!(
        c.identity,
        Identity::UserName {
            user: "op".into(),
            password: "pw".into()
        }
    );
    assert_eq!(c.trusted_dir, Path::new("/etc/fg/trusted"));
    assert_eq!(c.state_dir, Path::new("/var/lib/fg/opcua"));
    assert!(c.certificate.is_none());
    let PropertyAddress::OpcUa(a) = &d.spec.properties[0].address else {
        panic!("not an opcua address")
    };
    assert_eq!(a.node_id, "ns=2;s=Line1.Speed");

    let e = errs("devices:\n  - name: o\n    driver: opcua\n    protocol: {endpoint: 'http://plc', securityPolicy: None, securityMode: Sign, password: x, certificate: c.der}\n    properties: [{name: s, nodeId: 'ns=2;x=1', type: float64}]\n");
    has(
        &e,
        "c.yaml:4:26: devices[0].protocol.endpoint: ",
        "is not an OPC-UA endpoint",
    );
    has(
        &e,
        "devices[0].protocol.securityMode: ",
        "needs a securityPolicy other than None",
    );
    has(
        &e,
        "devices[0].protocol.password: ",
        "a password needs `username`",
    );
    has(
        &e,
        "devices[0].protocol.certificate: ",
        "needs `privateKey` too",
    );
    has(
        &e,
        "c.yaml:5:",
        "devices[0].properties[0].nodeId: `ns=2;x=1` is not a valid NodeId",
    );
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
