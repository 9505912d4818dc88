//! End-to-end tests of BLE advertisement devices (`mode: advertisement`): the
//! real `fieldgate` binary scans passively through BlueZ (a stand-in on a
//! private `dbus-daemon`) where advertisements arrive as `ManufacturerData` /
//! `ServiceData` property changes on `org.bluez.Device1`; states are observed
//! over a Mosquitto started by the test.
#![cfg(feature = "ble")]

use crate::support;
use fieldgate_testkit::bluez as bluez_standin;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bluez_standin::{sig_uuid, Bluez, CharDef, DbusDaemon, DeviceDef, ServiceDef};
use fieldgate_drivers::ble::adverts::{bthome, parse_bind_key, pvvx};
use serde_json::{json, Value};
use support::{Gateway, Message, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "231d39c1d7cc1ab1aee224cd096db932";

fn adv_device(address: &str) -> DeviceDef {
    DeviceDef {
        address: address.into(),
        name: None,
        services: vec![],
    }
}

fn mac(address: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (o, p) in out.iter_mut().zip(address.split(':')) {
        *o = u8::from_str_radix(p, 16).unwrap();
    }
    out
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
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

struct Rig {
    bluez: Arc<Bluez>,
    probe: MqttProbe,
    gateway: Gateway,
    _mosquitto: Mosquitto,
    _bus: DbusDaemon,
}

async fn rig(devices: Vec<DeviceDef>, yaml_devices: &str) -> Rig {
    let bus = DbusDaemon::start();
    let bluez = Arc::new(Bluez::start(bus.address(), devices));
    let mosquitto = Mosquitto::start();
    let probe = MqttProbe::connect(mosquitto.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let gateway = Gateway::start_with_env(
        &config(mosquitto.port(), yaml_devices),
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address())],
    );
    let r = Rig {
        bluez,
        probe,
        gateway,
        _mosquitto: mosquitto,
        _bus: bus,
    };
    // Advertisements reach the bus only while someone scans LE.
    r.bluez.wait("the passive scan", WAIT, |b| {
        b.discovery_filters()
            .iter()
            .any(|(f, on)| *on && f.transport == "le" && f.duplicate_data)
    });
    r
}

impl Rig {
    async fn state_where(&mut self, device: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let topic = format!("fieldgate/test/{device}");
        match self
            .probe
            .wait_for(WAIT, |m: &Message| m.topic == topic && pred(&m.json()))
            .await
        {
            Some(m) => m.json(),
            None => panic!(
                "no matching state of {device}; gateway log:\n{}",
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

const BTHOME: &str = "3C:2E:F5:00:00:01";
const SECRET: &str = "54:48:E6:8F:80:A5";
const PVVX: &str = "A4:C1:38:8E:3C:7D";
const ATC: &str = "A4:C1:38:8E:3C:7E";
const RUUVI: &str = "CB:B8:33:4C:88:4F";
const RAW: &str = "C4:7C:8D:6A:00:02";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_publishes_its_fields() {
    let yaml = format!(
        r#"  - name: bthome
    driver: ble
    protocol: {{ address: "{BTHOME}", mode: advertisement, format: bthome }}
    properties:
      - field: temperature
      - field: humidity
      - field: battery
      - field: button
      - field: rssi
  - name: secret
    driver: ble
    protocol: {{ address: "{SECRET}", mode: advertisement, format: bthome, bindKey: {KEY} }}
    properties: [ {{ field: temperature }}, {{ field: humidity }} ]
  - name: pvvx
    driver: ble
    protocol: {{ address: "{PVVX}", mode: advertisement, format: pvvx }}
  - name: atc
    driver: ble
    protocol: {{ address: "{ATC}", mode: advertisement, format: atc1441 }}
    properties:
      - {{ field: temperature, name: temperatureF, scale: 1.8, offset: 32, unit: "°F" }}
      - field: humidity
  - name: ruuvi
    driver: ble
    protocol: {{ address: "{RUUVI}", mode: advertisement, format: ruuvi }}
  - name: raw
    driver: ble
    protocol: {{ address: "{RAW}", mode: advertisement, format: raw }}
    properties:
      - {{ name: level, source: manufacturerData, companyId: 0x0059, byteOffset: 2, type: uint16 }}
      - {{ name: flags, source: serviceData, serviceUuid: "feaa", type: uint8, byteOrder: big }}
"#
    );
    let devices = [BTHOME, SECRET, PVVX, ATC, RUUVI, RAW]
        .into_iter()
        .map(adv_device)
        .collect();
    let mut r = rig(devices, &yaml).await;

    // $meta: units from the format, no `$advertisement` slot.
    let meta = r
        .probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/pvvx/$meta")
        .await
        .expect("$meta")
        .json();
    assert_eq!(
        meta["properties"]["temperature"]["unit"],
        json!("°C"),
        "{meta}"
    );
    assert_eq!(
        meta["properties"]["battery"]["type"],
        json!("uint8"),
        "{meta}"
    );
    assert!(meta["properties"].get("$advertisement").is_none(), "{meta}");

    // BTHome v2, plain: packet id 1, battery 97 %, 25.06 °C, 50.55 %, a press.
    r.bluez.advertise(
        BTHOME,
        None,
        Some((
            "fcd2",
            &hex("4000020161 02CA09 03BF13 3A01".replace(' ', "").as_str()),
        )),
        -70,
    );
    let s = r
        .state_where("bthome", |s| s["properties"]["button"] == json!("press"))
        .await;
    assert_eq!(
        s["properties"],
        json!({"temperature": 25.06, "humidity": 50.55, "battery": 97, "button": "press", "rssi": -70}),
        "{s}"
    );

    // BTHome v2, encrypted with the bind key (the specification's example).
    r.bluez.advertise(
        SECRET,
        None,
        Some(("fcd2", &hex("41e445f3c9962b332211006c7c4519"))),
        -60,
    );
    let s = r
        .state_where("secret", |s| s["properties"]["humidity"].is_number())
        .await;
    assert_eq!(
        s["properties"],
        json!({"temperature": 25.06, "humidity": 50.55}),
        "{s}"
    );
    assert!(s.get("errors").is_none(), "{s}");

    // pvvx: every field of the format, without a properties list.
    r.bluez.advertise(
        PVVX,
        None,
        Some(("181a", &pvvx::encode(&mac(PVVX), 2168, 5940, 2950, 86, 1))),
        -55,
    );
    let s = r
        .state_where("pvvx", |s| s["properties"]["battery"] == json!(86))
        .await;
    assert_eq!(
        s["properties"],
        json!({"temperature": 21.68, "humidity": 59.4, "voltage": 2.95, "battery": 86}),
        "{s}"
    );

    // ATC1441 (big-endian, 13 bytes), renamed and scaled to °F.
    let mut atc = mac(ATC).to_vec();
    atc.extend_from_slice(&hex("00e632640b67aa"));
    r.bluez.advertise(ATC, None, Some(("181a", &atc)), -50);
    let s = r
        .state_where("atc", |s| s["properties"]["humidity"] == json!(50.0))
        .await;
    assert_eq!(s["properties"]["temperatureF"], json!(73.4), "{s}");

    // RuuviTag data format 5: the specification's valid vector.
    r.bluez.advertise(
        RUUVI,
        Some((
            0x0499,
            &hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
        )),
        None,
        -65,
    );
    let s = r
        .state_where("ruuvi", |s| s["properties"]["pressure"].is_number())
        .await;
    assert_eq!(
        s["properties"],
        json!({"temperature": 24.3, "humidity": 53.49, "pressure": 1000.44,
               "accelerationX": 4, "accelerationY": -4, "accelerationZ": 1036, "accelerationTotal": 1036.02,
               "voltage": 2.977, "txPower": 4, "movementCounter": 66, "measurementSequence": 205}),
        "{s}"
    );

    // raw: one value from manufacturer data, one from service data.
    r.bluez
        .advertise(RAW, Some((0x0059, &[9, 9, 0x34, 0x12])), None, -40);
    r.state_where("raw", |s| s["properties"]["level"] == json!(0x1234))
        .await;
    r.bluez.advertise(RAW, None, Some(("feaa", &[7])), -40);
    let s = r
        .state_where("raw", |s| s["properties"]["flags"] == json!(7))
        .await;
    assert_eq!(s["properties"]["level"], json!(0x1234), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_packet_id_is_published_once_and_wrong_key_errs_on_that_device_only() {
    let yaml = format!(
        r#"  - name: plain
    driver: ble
    protocol: {{ address: "{BTHOME}", mode: advertisement, format: bthome }}
    properties: [ {{ field: packetId }}, {{ field: temperature }} ]
  - name: secret
    driver: ble
    protocol: {{ address: "{SECRET}", mode: advertisement, format: bthome, bindKey: {KEY} }}
    properties: [ {{ field: temperature }} ]
  - name: wrongkey
    driver: ble
    protocol: {{ address: "{RUUVI}", mode: advertisement, format: bthome, bindKey: 00112233445566778899aabbccddeeff }}
    properties: [ {{ field: temperature }} ]
"#
    );
    let mut r = rig(
        vec![adv_device(BTHOME), adv_device(SECRET), adv_device(RUUVI)],
        &yaml,
    )
    .await;
    // A first packet, published before the ones the test counts: the
    // device is then attached to the scan (advertisements that arrive
    // before that are not queued for it; only its latest data is).
    r.bluez
        .advertise(BTHOME, None, Some(("fcd2", &hex("40000602CA09"))), -60);
    r.state_where("plain", |s| s["properties"]["packetId"] == json!(6))
        .await;
    // Packet id 7 three times (a sensor repeats each packet), then id 8.
    for _ in 0..3 {
        r.bluez
            .advertise(BTHOME, None, Some(("fcd2", &hex("40000702CA09"))), -60);
    }
    r.bluez
        .advertise(BTHOME, None, Some(("fcd2", &hex("40000802CB09"))), -60);
    let mut states: Vec<Value> = Vec::new();
    let found = r
        .probe
        .wait_for(WAIT, |m| {
            if m.topic == "fieldgate/test/plain" {
                states.push(m.json());
            }
            m.topic == "fieldgate/test/plain" && m.json()["properties"]["packetId"] == json!(8)
        })
        .await;
    assert!(
        found.is_some(),
        "no state with packet id 8; log:\n{}",
        r.gateway.log()
    );
    let ids: Vec<&Value> = states
        .iter()
        .map(|s| &s["properties"]["packetId"])
        .collect();
    assert_eq!(ids, vec![&json!(7), &json!(8)], "states: {states:?}");

    // The same kind of encrypted packet, from a device whose key is right and
    // from one configured with a wrong key.
    let key = parse_bind_key(KEY).unwrap();
    let good = bthome::encrypt(&key, &mac(SECRET), 0x41, 5, &hex("02CA09"));
    r.bluez.advertise(SECRET, None, Some(("fcd2", &good)), -60);
    let s = r
        .state_where("secret", |s| s["properties"]["temperature"].is_number())
        .await;
    assert_eq!(s["properties"]["temperature"], json!(25.06));
    assert!(s.get("errors").is_none(), "{s}");
    let other = bthome::encrypt(&key, &mac(RUUVI), 0x41, 5, &hex("02CA09"));
    r.bluez.advertise(RUUVI, None, Some(("fcd2", &other)), -60);
    r.status("wrongkey", "online").await;
    let s = r
        .state_where("wrongkey", |s| s.get("errors").is_some())
        .await;
    let e = s["errors"]["$advertisement"].as_str().unwrap_or_default();
    assert!(e.contains("wrong bindKey"), "{s}");
    assert_eq!(
        s["properties"],
        json!({}),
        "no values from an undecryptable packet: {s}"
    );
    // The other devices carry no error.
    let next = bthome::encrypt(&key, &mac(SECRET), 0x41, 6, &hex("02CB09"));
    r.bluez.advertise(SECRET, None, Some(("fcd2", &next)), -60);
    let s = r
        .state_where("secret", |s| s["properties"]["temperature"] == json!(25.07))
        .await;
    assert!(s.get("errors").is_none(), "{s}");
    r.bluez
        .advertise(BTHOME, None, Some(("fcd2", &hex("40000902CC09"))), -60);
    let s = r
        .state_where("plain", |s| s["properties"]["packetId"] == json!(9))
        .await;
    assert!(s.get("errors").is_none(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_profiles_give_ready_advertisement_devices() {
    // `fieldgate profiles` lists the BLE profiles beside the Modbus ones.
    let out = support::fieldgate(&["profiles"]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    for name in [
        "bthome-v2",
        "lywsd03mmc-pvvx",
        "lywsd03mmc-atc1441",
        "ruuvi-tag",
    ] {
        assert!(list.contains(name), "{name} not listed:\n{list}");
    }

    // A device is its profile plus its address (and key).
    let yaml = format!(
        r#"  - {{ name: bthome, profile: bthome-v2, protocol: {{ address: "{BTHOME}" }} }}
  - {{ name: secret, profile: bthome-v2, protocol: {{ address: "{SECRET}", bindKey: {KEY} }} }}
  - {{ name: pvvx, profile: lywsd03mmc-pvvx, protocol: {{ address: "{PVVX}" }} }}
  - {{ name: atc, profile: lywsd03mmc-atc1441, protocol: {{ address: "{ATC}" }} }}
  - {{ name: ruuvi, profile: ruuvi-tag, protocol: {{ address: "{RUUVI}" }} }}
"#
    );
    let devices = [BTHOME, SECRET, PVVX, ATC, RUUVI]
        .into_iter()
        .map(adv_device)
        .collect();
    let mut r = rig(devices, &yaml).await;
    // Units come with the profile's format.
    let meta = r
        .probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/ruuvi/$meta")
        .await
        .expect("$meta")
        .json();
    assert_eq!(
        meta["properties"]["temperature"]["unit"],
        json!("°C"),
        "{meta}"
    );

    // The same vectors as above, read through the profiles.
    r.bluez.advertise(
        BTHOME,
        None,
        Some(("fcd2", &hex("400002016102CA0903BF133A01"))),
        -70,
    );
    let s = r
        .state_where("bthome", |s| s["properties"]["button"] == json!("press"))
        .await;
    for (field, want) in [
        ("temperature", json!(25.06)),
        ("humidity", json!(50.55)),
        ("battery", json!(97)),
    ] {
        assert_eq!(s["properties"][field], want, "{field}: {s}");
    }
    r.bluez.advertise(
        SECRET,
        None,
        Some(("fcd2", &hex("41e445f3c9962b332211006c7c4519"))),
        -60,
    );
    let s = r
        .state_where("secret", |s| s["properties"]["humidity"].is_number())
        .await;
    assert_eq!(s["properties"]["temperature"], json!(25.06), "{s}");
    assert_eq!(s["properties"]["humidity"], json!(50.55), "{s}");

    r.bluez.advertise(
        PVVX,
        None,
        Some(("181a", &pvvx::encode(&mac(PVVX), 2168, 5940, 2950, 86, 1))),
        -55,
    );
    let s = r
        .state_where("pvvx", |s| s["properties"]["battery"] == json!(86))
        .await;
    assert_eq!(
        s["properties"],
        json!({"temperature": 21.68, "humidity": 59.4, "voltage": 2.95, "battery": 86}),
        "{s}"
    );

    let mut atc = mac(ATC).to_vec();
    atc.extend_from_slice(&hex("00e632640b67aa"));
    r.bluez.advertise(ATC, None, Some(("181a", &atc)), -50);
    let s = r
        .state_where("atc", |s| s["properties"]["humidity"] == json!(50.0))
        .await;
    for (field, want) in [
        ("temperature", json!(23.0)),
        ("battery", json!(100)),
        ("voltage", json!(2.919)),
    ] {
        assert_eq!(s["properties"][field], want, "{field}: {s}");
    }

    r.bluez.advertise(
        RUUVI,
        Some((
            0x0499,
            &hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
        )),
        None,
        -65,
    );
    let s = r
        .state_where("ruuvi", |s| s["properties"]["pressure"].is_number())
        .await;
    assert_eq!(
        s["properties"],
        json!({"temperature": 24.3, "humidity": 53.49, "pressure": 1000.44,
               "accelerationX": 4, "accelerationY": -4, "accelerationZ": 1036, "accelerationTotal": 1036.02,
               "voltage": 2.977, "txPower": 4, "movementCounter": 66, "measurementSequence": 205}),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_after_goes_offline_and_back_online() {
    let yaml = format!(
        r#"  - name: pvvx
    driver: ble
    protocol: {{ address: "{PVVX}", mode: advertisement, format: pvvx, staleAfter: 1s }}
"#
    );
    let mut r = rig(vec![adv_device(PVVX)], &yaml).await;
    r.bluez.advertise(
        PVVX,
        None,
        Some(("181a", &pvvx::encode(&mac(PVVX), 2000, 5000, 3000, 90, 1))),
        -55,
    );
    r.status("pvvx", "online").await;
    // Silence for longer than staleAfter.
    r.status("pvvx", "offline").await;
    r.bluez.advertise(
        PVVX,
        None,
        Some(("181a", &pvvx::encode(&mac(PVVX), 2100, 5000, 3000, 90, 2))),
        -55,
    );
    r.status("pvvx", "online").await;
    r.state_where("pvvx", |s| s["properties"]["temperature"] == json!(21.0))
        .await;
}

const LAMP: &str = "C4:7C:8D:6A:00:01";

fn lamp() -> DeviceDef {
    DeviceDef {
        address: LAMP.into(),
        name: None,
        services: vec![ServiceDef {
            uuid: sig_uuid(0xff00),
            chars: vec![CharDef {
                uuid: sig_uuid(0xff01),
                flags: vec!["read", "write"],
                value: vec![10],
            }],
        }],
    }
}

/// 50 advertising devices at one advertisement per second each on the
/// adapter a GATT device is connected through: every advertiser's readings
/// arrive, and the GATT device keeps polling and takes a `$set`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_advertisers_at_1hz_beside_a_connected_gatt_device() {
    const N: usize = 50;
    let addresses: Vec<String> = (0..N).map(|i| format!("A4:C1:38:00:01:{i:02X}")).collect();
    let mut yaml = String::from(
        r#"  - name: lamp
    driver: ble
    syncInterval: 200ms
    timeout: 2s
    protocol: { address: "C4:7C:8D:6A:00:01", scanTimeout: 10s }
    properties:
      - { name: brightness, characteristic: "ff01", access: readWrite, type: uint8 }
"#,
    );
    for (i, a) in addresses.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{ name: t{i}, driver: ble, protocol: {{ address: \"{a}\", mode: advertisement, format: pvvx, staleAfter: 30s }} }}\n"
        ));
    }
    let mut devices: Vec<DeviceDef> = addresses.iter().map(|a| adv_device(a)).collect();
    devices.push(lamp());
    let mut r = rig(devices, &yaml).await;
    r.state_where("lamp", |s| s["properties"]["brightness"] == json!(10))
        .await;

    // Each device advertises once a second; its temperature encodes its
    // index and the round: (i × 100 + round) / 100 °C.
    let stop = Arc::new(AtomicBool::new(false));
    let advertiser = {
        let (bluez, stop, addresses) = (r.bluez.clone(), stop.clone(), addresses.clone());
        std::thread::spawn(move || {
            let mut round: u16 = 0;
            while !stop.load(Ordering::Relaxed) && round < 600 {
                round += 1;
                let start = std::time::Instant::now();
                for (i, a) in addresses.iter().enumerate() {
                    let t = (i as i16) * 100 + round as i16;
                    let data = pvvx::encode(&mac(a), t, 5000, 3000, 90, round as u8);
                    bluez.advertise(a, None, Some(("181a", &data)), -60);
                }
                if let Some(rest) = Duration::from_secs(1).checked_sub(start.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        })
    };
    // Every advertiser publishes at least 3 distinct readings; the lamp keeps
    // publishing throughout.
    let mut seen: HashMap<String, Vec<f64>> = HashMap::new();
    let mut lamp_states = 0usize;
    let done = r
        .probe
        .wait_for(Duration::from_secs(120), |m| {
            if m.topic == "fieldgate/test/lamp" {
                lamp_states += 1;
            } else if let Some(dev) = m.topic.strip_prefix("fieldgate/test/t") {
                if !dev.contains('/') {
                    if let Some(t) = m.json()["properties"]["temperature"].as_f64() {
                        let v = seen.entry(dev.to_string()).or_default();
                        if !v.contains(&t) {
                            v.push(t);
                        }
                    }
                }
            }
            seen.len() == N && seen.values().all(|v| v.len() >= 3)
        })
        .await;
    assert!(
        done.is_some(),
        "not every advertiser published 3 readings: {} devices, fewest {:?}; log:\n{}",
        seen.len(),
        seen.values().map(Vec::len).min(),
        r.gateway.log()
    );
    for (dev, temps) in &seen {
        let i: f64 = dev.parse().unwrap();
        assert!(
            temps.iter().all(|t| (t - i).abs() < 6.0),
            "t{dev} got another device's readings: {temps:?}"
        );
    }
    assert!(
        lamp_states >= 5,
        "the GATT device stalled: {lamp_states} states"
    );

    // The GATT device still takes a write while the advertisements flow.
    r.probe
        .publish(
            "fieldgate/test/lamp/$set",
            r#"{"brightness": 42}"#,
            1,
            false,
        )
        .await;
    r.state_where("lamp", |s| s["properties"]["brightness"] == json!(42))
        .await;
    assert_eq!(r.bluez.writes(&sig_uuid(0xff01)), vec![vec![42u8]]);
    assert_eq!(
        r.bluez.connects(LAMP),
        1,
        "the GATT connection was never dropped"
    );
    stop.store(true, Ordering::Relaxed);
    advertiser.join().unwrap();
}

/// `fieldgate discover ble` lists what advertises nearby with decoded values
/// and prints YAML that `fieldgate check` accepts; it only listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_ble_lists_decodes_and_prints_yaml() {
    let bus = DbusDaemon::start();
    let other = "11:22:33:44:55:66";
    let bluez = Arc::new(Bluez::start(
        bus.address(),
        vec![
            DeviceDef {
                address: PVVX.into(),
                name: Some("ATC_8E3C7D".into()),
                services: vec![],
            },
            adv_device(RUUVI),
            adv_device(SECRET),
            adv_device(other),
        ],
    ));
    let child = std::process::Command::new(support::fieldgate_binary())
        .args(["discover", "ble", "--duration", "3s"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start fieldgate discover ble");
    bluez.wait("discovery", WAIT, |b| b.discovering());
    let key = parse_bind_key(KEY).unwrap();
    let (b, stop) = (bluez.clone(), Arc::new(AtomicBool::new(false)));
    let advertiser = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                b.advertise(
                    PVVX,
                    None,
                    Some((
                        "181a",
                        &pvvx::encode(&mac(PVVX), 2168, 5940, 2950, 86, n as u8),
                    )),
                    -55,
                );
                b.advertise(
                    RUUVI,
                    Some((
                        0x0499,
                        &hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
                    )),
                    None,
                    -71,
                );
                let sealed = bthome::encrypt(&key, &mac(SECRET), 0x41, n, &hex("02CA09"));
                b.advertise(SECRET, None, Some(("fcd2", &sealed)), -80);
                b.advertise(other, Some((0x0059, &[1, 2, 3])), None, -90);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("discover output");
    stop.store(true, Ordering::Relaxed);
    advertiser.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "# A4:C1:38:8E:3C:7D  name \"ATC_8E3C7D\"  RSSI -55 dBm",
        "#   pvvx: temperature=21.68 °C, humidity=59.4 %, voltage=2.95 V, battery=86 %",
        "#   ruuvi: temperature=24.3 °C",
        "#   bthome: advertisement is encrypted; set protocol.bindKey",
        "#   no known format (manufacturer data 0x0059: 010203); read it with format: raw",
        "  - name: atc_8e3c7d",
        "      format: pvvx",
        "      format: ruuvi",
        "      bindKey: \"\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Nothing was connected or written.
    assert!(
        !bluez
            .calls()
            .iter()
            .any(|c| c.ends_with(".Connect") || c.ends_with("WriteValue")),
        "{:?}",
        bluez.calls()
    );
    // The printed YAML is a valid config (with a bind key filled in).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("found.yaml");
    std::fs::write(
        &path,
        text.replace("bindKey: \"\"", &format!("bindKey: {KEY}")),
    )
    .unwrap();
    let check = support::fieldgate(&["check", "-c", path.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&check.stderr)
    );
}
