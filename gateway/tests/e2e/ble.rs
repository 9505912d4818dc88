//! End-to-end tests of the BLE driver: the real `fieldgate` binary talks
//! through btleplug to a BlueZ stand-in on a private `dbus-daemon`
//! (`DBUS_SYSTEM_BUS_ADDRESS`), observed over a Mosquitto started by the test.
#![cfg(feature = "ble")]

use crate::support;
use fieldgate_testkit::bluez as bluez_standin;

use std::time::Duration;

use bluez_standin::{sig_uuid, Bluez, CharDef, DbusDaemon, DeviceDef, ServiceDef};
use serde_json::{json, Value};
use support::{Gateway, Message, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(20);

const THERMO: &str = "A4:C1:38:00:11:22";
const LAMP: &str = "C4:7C:8D:6A:00:01";
const THERMO_SERVICE: &str = "ebe0ccb0-7a0a-4b0c-8a1a-6ff2997da3a6";
const THERMO_CHAR: &str = "ebe0ccc1-7a0a-4b0c-8a1a-6ff2997da3a6";

fn thermometer() -> DeviceDef {
    DeviceDef {
        address: THERMO.into(),
        name: Some("LYWSD03MMC".into()),
        services: vec![
            ServiceDef {
                uuid: THERMO_SERVICE.into(),
                // int16 LE temperature × 0.01, then uint8 humidity.
                chars: vec![CharDef {
                    uuid: THERMO_CHAR.into(),
                    flags: vec!["read", "notify"],
                    value: vec![0x2c, 0x09, 0x37],
                }],
            },
            ServiceDef {
                uuid: sig_uuid(0x180f),
                chars: vec![CharDef {
                    uuid: sig_uuid(0x2a19),
                    flags: vec!["read"],
                    value: vec![87],
                }],
            },
        ],
    }
}

fn lamp() -> DeviceDef {
    DeviceDef {
        address: LAMP.into(),
        name: None,
        services: vec![ServiceDef {
            uuid: sig_uuid(0xff00),
            chars: vec![
                CharDef {
                    uuid: sig_uuid(0xff01),
                    flags: vec!["read", "write"],
                    value: vec![10],
                },
                CharDef {
                    uuid: sig_uuid(0xff02),
                    flags: vec!["read"],
                    value: b"lamp-1\0\0".to_vec(),
                },
            ],
        }],
    }
}

const THERMO_YAML: &str = r#"  - name: thermo
    driver: ble
    syncInterval: 500ms
    timeout: 2s
    protocol: { name: LYWSD03MMC, adapter: hci0, scanTimeout: 10s }
    properties:
      - { name: temperature, service: ebe0ccb0-7a0a-4b0c-8a1a-6ff2997da3a6, characteristic: ebe0ccc1-7a0a-4b0c-8a1a-6ff2997da3a6,
          access: notify, type: int16, byteOrder: little, scale: 0.01 }
      - { name: humidity, characteristic: ebe0ccc1-7a0a-4b0c-8a1a-6ff2997da3a6, access: notify, type: uint8, byteOffset: 2 }
      - { name: battery, service: "180f", characteristic: "0x2A19", access: read, type: uint8 }
"#;

fn lamp_yaml(scan_timeout: &str) -> String {
    format!(
        r#"  - name: lamp
    driver: ble
    syncInterval: 200ms
    timeout: 2s
    protocol: {{ address: "c4:7c:8d:6a:00:01", scanTimeout: {scan_timeout} }}
    properties:
      - {{ name: brightness, characteristic: "ff01", access: readWrite, type: uint8, max: 100 }}
      - {{ name: label, characteristic: "0000ff02-0000-1000-8000-00805f9b34fb", access: read, type: string }}
"#
    )
}

fn config(port: u16, devices: &str) -> String {
    format!(
        r#"gateway:
  namespace: test
  metrics: {{ listen: "" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{port}
    maxReconnectInterval: 2s
devices:
{devices}"#
    )
}

/// Everything one test runs: bus, stand-in, broker, probe, gateway.
struct Rig {
    bluez: Bluez,
    probe: MqttProbe,
    gateway: Gateway,
    _mosquitto: Mosquitto,
    _bus: DbusDaemon,
}

async fn rig(devices: Vec<DeviceDef>, yaml_devices: &str) -> Rig {
    let bus = DbusDaemon::start();
    let bluez = Bluez::start(bus.address(), devices);
    let mosquitto = Mosquitto::start();
    let probe = MqttProbe::connect(mosquitto.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let gateway = Gateway::start_with_env(
        &config(mosquitto.port(), yaml_devices),
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address())],
    );
    Rig {
        bluez,
        probe,
        gateway,
        _mosquitto: mosquitto,
        _bus: bus,
    }
}

impl Rig {
    /// The first state of `device` whose properties satisfy `pred`.
    async fn state_where(&mut self, device: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let topic = format!("fieldgate/test/{device}");
        let found = self
            .probe
            .wait_for(WAIT, |m: &Message| {
                m.topic == topic && pred(&m.json()["properties"])
            })
            .await;
        match found {
            Some(m) => m.json(),
            None => panic!(
                "no matching state of {device}; stand-in calls: {:?}\ngateway log:\n{}",
                self.bluez.calls(),
                self.gateway.log()
            ),
        }
    }

    async fn status(&mut self, device: &str, want: &str) {
        let topic = format!("fieldgate/test/{device}/$state");
        let found = self
            .probe
            .wait_for(WAIT, |m: &Message| {
                m.topic == topic && m.payload_str() == want
            })
            .await;
        assert!(
            found.is_some(),
            "{device} never went {want}; gateway log:\n{}",
            self.gateway.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn found_by_name_and_address_read_notify_and_write() {
    let yaml = format!("{THERMO_YAML}{}", lamp_yaml("10s"));
    let mut r = rig(vec![thermometer(), lamp()], &yaml).await;

    // Found by name: the notify characteristic is read once on connect, the
    // battery is polled.
    let s = r.state_where("thermo", |p| p["battery"] == json!(87)).await;
    assert_eq!(s["properties"]["temperature"], json!(23.48), "{s}");
    assert_eq!(s["properties"]["humidity"], json!(55), "{s}");
    // Found by address (given in lower case).
    let s = r
        .state_where("lamp", |p| p["brightness"] == json!(10))
        .await;
    assert_eq!(s["properties"]["label"], json!("lamp-1"), "{s}");

    // Notifications stream over the open connection.
    r.bluez
        .wait("notifications on", WAIT, |b| b.notifying(THERMO_CHAR));
    for (raw, temperature, humidity) in [
        ([0x10u8, 0x0a, 0x3c], 25.76, 60),
        ([0x11, 0x0a, 0x3d], 25.77, 61),
        ([0x18, 0xfc, 0x3e], -10.0, 62),
    ] {
        r.bluez.set_value(THERMO, THERMO_CHAR, &raw);
        let s = r
            .state_where("thermo", |p| p["humidity"] == json!(humidity))
            .await;
        assert_eq!(s["properties"]["temperature"], json!(temperature), "{s}");
    }
    assert_eq!(r.bluez.connects(THERMO), 1, "one connection, kept open");

    // A $set write reaches the characteristic, then reads back.
    r.probe
        .publish(
            "fieldgate/test/lamp/$set",
            r#"{"brightness": 42, "$id": "w1"}"#,
            1,
            false,
        )
        .await;
    let res = r
        .probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/lamp/$set/result")
        .await
        .expect("$set/result");
    assert_eq!(
        res.json()["applied"],
        json!({"brightness": 42}),
        "{}",
        res.payload_str()
    );
    assert_eq!(res.json()["errors"], json!({}));
    assert_eq!(
        r.bluez.writes(&bluez_standin::sig_uuid(0xff01)),
        vec![vec![42u8]]
    );
    r.state_where("lamp", |p| p["brightness"] == json!(42))
        .await;

    // A read-only property refuses $set before reaching the device.
    r.probe
        .publish("fieldgate/test/lamp/$set", r#"{"label": "x"}"#, 1, false)
        .await;
    let res = r
        .probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/lamp/$set/result")
        .await
        .expect("$set/result");
    assert!(
        res.json()["errors"]["label"].is_string(),
        "{}",
        res.payload_str()
    );
    assert_eq!(r.bluez.writes(&bluez_standin::sig_uuid(0xff02)).len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_disappearing_goes_offline_and_resumes() {
    let mut r = rig(vec![lamp()], &lamp_yaml("1s")).await;
    r.status("lamp", "online").await;
    r.state_where("lamp", |p| p["brightness"] == json!(10))
        .await;

    r.bluez.set_present(LAMP, false);
    r.status("lamp", "offline").await;
    // While it is away the driver scans and reports it missing.
    assert!(
        r.gateway.wait_for_log(
            "address C4:7C:8D:6A:00:01 not found after 1s scan on hci0",
            WAIT
        ),
        "{}",
        r.gateway.log()
    );

    r.bluez
        .set_value(LAMP, &bluez_standin::sig_uuid(0xff01), &[77]);
    r.bluez.set_present(LAMP, true);
    r.status("lamp", "online").await;
    r.state_where("lamp", |p| p["brightness"] == json!(77))
        .await;
    assert!(r.bluez.connects(LAMP) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_loss_goes_offline_and_recovers() {
    let mut r = rig(vec![lamp()], &lamp_yaml("1s")).await;
    r.status("lamp", "online").await;
    r.state_where("lamp", |p| p["brightness"] == json!(10))
        .await;

    // hci0 vanishes without a disconnect signal: the next poll notices.
    r.bluez.unplug_adapter();
    r.status("lamp", "offline").await;
    assert!(
        r.gateway
            .wait_for_log("no Bluetooth adapter (BlueZ lists none)", WAIT),
        "{}",
        r.gateway.log()
    );
    assert!(r.gateway.is_running());

    r.bluez
        .set_value(LAMP, &bluez_standin::sig_uuid(0xff01), &[55]);
    r.bluez.plug_adapter();
    r.status("lamp", "online").await;
    r.state_where("lamp", |p| p["brightness"] == json!(55))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_found_is_reported_and_others_are_unaffected() {
    let ghost = r#"  - name: ghost
    driver: ble
    protocol: { address: "11:22:33:44:55:66", scanTimeout: 1s }
    properties:
      - { name: level, characteristic: "2a19", type: uint8 }
"#;
    let yaml = format!("{ghost}{}", lamp_yaml("10s"));
    let mut r = rig(vec![lamp()], &yaml).await;
    r.status("ghost", "offline").await;
    assert!(
        r.gateway.wait_for_log(
            "address 11:22:33:44:55:66 not found after 1s scan on hci0",
            WAIT
        ),
        "{}",
        r.gateway.log()
    );
    // The lamp keeps being polled meanwhile.
    r.bluez
        .set_value(LAMP, &bluez_standin::sig_uuid(0xff01), &[33]);
    r.state_where("lamp", |p| p["brightness"] == json!(33))
        .await;
    assert!(r.gateway.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_system_bus_fails_cleanly() {
    let mosquitto = Mosquitto::start();
    let mut probe = MqttProbe::connect(mosquitto.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let devices = format!(
        "{}  - {{ name: sim, driver: dummy, syncInterval: 200ms, properties: [ {{ name: n, type: uint32, simulate: {{ counter: {{ start: 0, step: 1 }} }} }} ] }}\n",
        lamp_yaml("1s")
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = format!("unix:path={}/no-bus", dir.path().display());
    let mut gateway = Gateway::start_with_env(
        &config(mosquitto.port(), &devices),
        &[("DBUS_SYSTEM_BUS_ADDRESS", &missing)],
    );
    let off = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/lamp/$state" && m.payload_str() == "offline"
        })
        .await;
    assert!(off.is_some(), "{}", gateway.log());
    assert!(
        gateway.wait_for_log("D-Bus system bus unavailable", WAIT),
        "{}",
        gateway.log()
    );
    // The simulator keeps publishing and the daemon keeps running.
    let sim = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/sim" && m.json()["properties"]["n"].as_u64() >= Some(3)
        })
        .await;
    assert!(sim.is_some(), "{}", gateway.log());
    assert!(gateway.is_running());
    gateway.sigterm();
    assert!(gateway.wait_exit(WAIT).is_some_and(|s| s.success()));
}

#[test]
fn check_reports_ble_mistakes_with_locations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"devices:
  - name: t
    driver: ble
    protocol: { address: "A4:C1:38:00:11", scanTimeout: 0s }
    properties:
      - { name: a, characteristic: "2a1", type: uint8 }
      - { name: b, service: "battery", characteristic: "2a19", type: uint8, access: notify, writable: true }
"#,
    )
    .expect("write config");
    let file = path.display().to_string();
    let out = support::fieldgate(&["check", "-c", &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for expected in [
        format!("{file}:4:26: devices[0].protocol.address: `A4:C1:38:00:11` is not a Bluetooth address"),
        format!("{file}:4:57: devices[0].protocol.scanTimeout: scanTimeout must be greater than 0s"),
        format!("{file}:6:36: devices[0].properties[0].characteristic: `2a1` is not a GATT UUID"),
        format!("{file}:7:29: devices[0].properties[1].service: `battery` is not a GATT UUID"),
        format!("{file}:7:103: devices[0].properties[1].writable: a ble property with access `read` or `notify` cannot be writable"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }

    let ok = dir.path().join("ok.yaml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/ble.yaml"),
        &ok,
    )
    .expect("copy configs/ble.yaml");
    let out = support::fieldgate(&["check", "-c", &ok.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("connection: ble name \"LYWSD03MMC\" on hci0, scanTimeout 30s"),
        "{text}"
    );
}
