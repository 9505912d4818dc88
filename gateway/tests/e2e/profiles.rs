//! Device profiles and includes: every built-in profile against a
//! tokio-modbus server loaded with the vendor's register layout and example
//! values (the published values must come out), the merge rules, errors
//! located in the profile (or included) file naming the device, `include:`
//! globs, duplicate names across files, hot reload of included files, and
//! the `fieldgate profiles` / `check` output.

use crate::modbus_server;
use crate::support;

use std::path::Path;
use std::time::Duration;

use modbus_server::{tcp_server, Server, Storage};
use serde_json::{json, Value};
use support::{Gateway, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(20);

fn config(broker: u16, devices: &str) -> String {
    format!(
        "gateway:\n  namespace: test\n  stateDirectory: \"{{dir}}/state\"\n  metrics: {{ listen: \"\" }}\nmqtt:\n  client:\n    server: tcp://127.0.0.1:{broker}\n    maxReconnectInterval: 2s\ndevices:\n{devices}"
    )
}

fn f32_regs(v: f32) -> [u16; 2] {
    let b = v.to_be_bytes();
    [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ]
}

/// Runs a gateway with one device using `profile` on a server holding
/// `storage`, and returns the first state in which every property read.
async fn published(
    profile: &str,
    storage: Storage,
) -> (Value, Server, Gateway, MqttProbe, Mosquitto) {
    let server = tcp_server(storage, "127.0.0.1:0").await;
    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let gw = Gateway::start(&config(
        broker.port(),
        &format!(
            "  - name: dev\n    profile: {profile}\n    syncInterval: 200ms\n    protocol: {{ tcp: {{ endpoint: \"{}\" }}, unitId: 1 }}\n",
            server.addr
        ),
    ));
    let state = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/dev" && m.json().get("errors").is_none()
        })
        .await
        .unwrap_or_else(|| panic!("no good state for {profile}:\n{}", gw.log()))
        .json();
    (state, server, gw, probe, broker)
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64()
        .is_some_and(|x| (x - want).abs() < 1e-3 * want.abs().max(1.0))
}

fn assert_values(state: &Value, want: &[(&str, f64)]) {
    let p = &state["properties"];
    for (name, v) in want {
        assert!(
            close(&p[*name], *v),
            "{name}: want {v}, got {} in {state}",
            p[*name]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eastron_sdm120_publishes_the_documented_values() {
    // Every 3X register of the map answers (0.0 where not set).
    let values = [
        (0x00, 230.2f32), // the document's example: 43 66 33 34
        (0x06, 5.25),
        (0x0C, 1150.5),
        (0x12, 1208.0),
        (0x18, -368.4),
        (0x1E, 0.952),
        (0x24, 17.8),
        (0x46, 49.98),
        (0x48, 1234.5),
        (0x4A, 12.25),
        (0x4C, 321.0),
        (0x4E, 3.5),
        (0x156, 1246.75),
        (0x158, 324.5),
    ];
    let storage = Storage::with(|t| {
        for a in 0..0x160u16 {
            t.input.insert(a, 0);
        }
        for (a, v) in values {
            let [h, l] = f32_regs(v);
            t.input.extend([(a, h), (a + 1, l)]);
        }
        // The document's own bytes for 230.2 V.
        t.input.extend([(0, 0x4366), (1, 0x3334)]);
    });
    let (state, server, ..) = published("eastron-sdm120", storage).await;
    assert_values(
        &state,
        &[
            ("voltage", 230.2),
            ("current", 5.25),
            ("activePower", 1150.5),
            ("apparentPower", 1208.0),
            ("reactivePower", -368.4),
            ("powerFactor", 0.952),
            ("phaseAngle", 17.8),
            ("frequency", 49.98),
            ("importActiveEnergy", 1234.5),
            ("exportActiveEnergy", 12.25),
            ("importReactiveEnergy", 321.0),
            ("exportReactiveEnergy", 3.5),
            ("totalActiveEnergy", 1246.75),
            ("totalReactiveEnergy", 324.5),
        ],
    );
    assert_eq!(state["properties"].as_object().unwrap().len(), 14);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eastron_sdm630_publishes_the_documented_values() {
    let values: &[(u16, &str, f32)] = &[
        (0x00, "voltageL1", 231.1),
        (0x02, "voltageL2", 229.8),
        (0x04, "voltageL3", 230.4),
        (0x06, "currentL1", 10.5),
        (0x08, "currentL2", 9.75),
        (0x0A, "currentL3", 11.0),
        (0x0C, "activePowerL1", 2300.0),
        (0x0E, "activePowerL2", 2150.0),
        (0x10, "activePowerL3", 2480.0),
        (0x1E, "powerFactorL1", 0.95),
        (0x2A, "averageVoltage", 230.43),
        (0x30, "sumCurrent", 31.25),
        (0x34, "totalActivePower", 6930.0),
        (0x3E, "totalPowerFactor", 0.94),
        (0x46, "frequency", 50.01),
        (0x48, "importActiveEnergy", 98765.5),
        (0x4A, "exportActiveEnergy", 12.5),
        (0xC8, "voltageL1L2", 399.6),
        (0xE0, "neutralCurrent", 0.8),
        (0x156, "totalActiveEnergy", 98778.0),
    ];
    let storage = Storage::with(|t| {
        for a in 0..0x160u16 {
            t.input.insert(a, 0);
        }
        for (a, _, v) in values {
            let [h, l] = f32_regs(*v);
            t.input.extend([(*a, h), (a + 1, l)]);
        }
    });
    let (state, server, ..) = published("eastron-sdm630", storage).await;
    let want: Vec<(&str, f64)> = values.iter().map(|(_, n, v)| (*n, *v as f64)).collect();
    assert_values(&state, &want);
    assert_eq!(state["properties"].as_object().unwrap().len(), 36);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abb_b23_publishes_the_documented_values() {
    let storage = Storage::with(|t| {
        for a in (0x5000..0x5008u16).chain(0x5B00..0x5B3Cu16) {
            t.holding.insert(a, 0);
        }
        // Active import 12345.67 kWh = 1234567 × 0.01 (uint64, 4 registers).
        t.holding
            .extend([(0x5000, 0), (0x5001, 0), (0x5002, 0x0012), (0x5003, 0xD687)]);
        t.holding
            .extend([(0x5004, 0), (0x5005, 0), (0x5006, 0), (0x5007, 1050)]);
        t.holding.extend([(0x5B00, 0), (0x5B01, 2301)]); // 230.1 V
        t.holding.extend([(0x5B02, 0), (0x5B03, 2298)]);
        t.holding.extend([(0x5B04, 0), (0x5B05, 2310)]);
        t.holding.extend([(0x5B0C, 0), (0x5B0D, 523)]); // 5.23 A
        let p = (-120_050i32) as u32; // -1200.50 W
        t.holding
            .extend([(0x5B14, (p >> 16) as u16), (0x5B15, p as u16)]);
        t.holding.insert(0x5B2C, 5002); // 50.02 Hz
        t.holding.insert(0x5B3A, (-950i16) as u16); // PF -0.950
    });
    let (state, server, ..) = published("abb-b23", storage).await;
    assert_values(
        &state,
        &[
            ("importActiveEnergy", 12345.67),
            ("exportActiveEnergy", 10.5),
            ("voltageL1", 230.1),
            ("voltageL2", 229.8),
            ("voltageL3", 231.0),
            ("currentL1", 5.23),
            ("totalActivePower", -1200.5),
            ("frequency", 50.02),
            ("totalPowerFactor", -0.95),
        ],
    );
    server.stop().await;
}

/// Registers of `s` as a SunSpec string of `n` registers (NUL padded).
fn sunspec_string(s: &str, n: usize) -> Vec<u16> {
    let mut b = s.as_bytes().to_vec();
    b.resize(n * 2, 0);
    b.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

/// A SunSpec device at base 40000: common model 1 and inverter model 103
/// with example values and their scale factors.
fn sunspec_storage() -> Storage {
    Storage::with(|t| {
        for a in 40000..40122u16 {
            t.holding.insert(a, 0);
        }
        t.holding
            .extend([(40000, 0x5375), (40001, 0x6E53), (40002, 1), (40003, 65)]);
        for (base, text, n) in [
            (40004u16, "SunSpecTest", 16),
            (40020, "Inverter 3P", 16),
            (40044, "1.2.3", 8),
            (40052, "SN-0042", 16),
        ] {
            for (i, r) in sunspec_string(text, n).into_iter().enumerate() {
                t.holding.insert(base + i as u16, r);
            }
        }
        t.holding.insert(40068, 1);
        t.holding.extend([(40070, 103), (40071, 50)]);
        t.holding
            .extend([(40072, 1234), (40073, 411), (40074, 412), (40075, 411)]);
        t.holding.insert(40076, (-2i16) as u16); // A_SF: 12.34 A
        t.holding.extend([(40080, 2301), (40083, (-1i16) as u16)]); // 230.1 V
        t.holding.extend([(40084, 8500), (40085, 0)]); // 8500 W
        t.holding.extend([(40086, 5001), (40087, (-2i16) as u16)]); // 50.01 Hz
        t.holding
            .extend([(40094, 0x0001), (40095, 0x86A0), (40096, 0)]); // 100000 Wh
        t.holding.extend([(40099, 3805), (40100, (-1i16) as u16)]); // 380.5 V DC
        t.holding.extend([(40103, 415), (40107, (-1i16) as u16)]); // 41.5 °C
        t.holding.insert(40108, 4); // MPPT
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sunspec_common_and_inverter_103_publish_the_model_values() {
    let storage = sunspec_storage();
    let (state, server, _gw, mut probe, _broker) =
        published("sunspec-inverter-103", storage.clone()).await;
    let p = &state["properties"];
    assert_eq!(p["SunSpecId"], json!(0x5375_6E53u32));
    assert_eq!(p["CommonID"], json!(1));
    assert_eq!(p["CommonL"], json!(65));
    assert_eq!(p["Mn"], json!("SunSpecTest"));
    assert_eq!(p["Md"], json!("Inverter 3P"));
    assert_eq!(p["Vr"], json!("1.2.3"));
    assert_eq!(p["SN"], json!("SN-0042"));
    assert_eq!(p["ID"], json!(103));
    assert_eq!(p["L"], json!(50));
    assert_eq!(p["St"], json!("MPPT"));
    // Measurements are published scaled by their `*_SF` (read in the same
    // poll), in the unit `$meta` gives; the scale factors as read.
    assert_eq!(p["A"], json!(12.34));
    assert_eq!(p["AphA"], json!(4.11));
    assert_eq!(p["AphB"], json!(4.12));
    assert_eq!(p["A_SF"], json!(-2));
    assert_eq!(p["PhVphA"], json!(230.1));
    assert_eq!(p["PhVphB"], json!(0.0));
    assert_eq!(p["V_SF"], json!(-1));
    assert_eq!(p["W"], json!(8500.0));
    assert_eq!(p["Hz"], json!(50.01));
    assert_eq!(p["Hz_SF"], json!(-2));
    assert_eq!(p["WH"], json!(100000.0));
    assert_eq!(p["DCV"], json!(380.5));
    assert_eq!(p["TmpCab"], json!(41.5));
    probe.subscribe("fieldgate/test/dev/$meta", 1).await;
    let meta = probe
        .wait_topic(WAIT, "fieldgate/test/dev/$meta")
        .await
        .expect("retained $meta")
        .json();
    assert_eq!(
        meta["properties"]["PhVphA"],
        json!({"type": "uint16", "unit": "V", "writable": false,
               "description": "Phase voltage AN", "scaleFactor": "V_SF"})
    );
    // The inverter reports V_SF as not implemented (0x8000): its voltages
    // become errors with the reason, never 2301 "V"; the rest is untouched.
    storage.0.lock().unwrap().holding.insert(40083, 0x8000);
    let broken = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/dev" && m.json()["errors"].get("PhVphA").is_some()
        })
        .await
        .expect("PhVphA in errors")
        .json();
    assert_eq!(
        broken["errors"]["PhVphA"],
        json!("scale factor V_SF is not implemented by the device (reads -32768, 0x8000)")
    );
    assert!(broken["properties"].get("PhVphA").is_none(), "{broken}");
    assert!(broken["properties"].get("PPVphAB").is_none(), "{broken}");
    assert_eq!(broken["properties"]["V_SF"], json!(-32768));
    assert_eq!(broken["properties"]["A"], json!(12.34));
    // A new scale factor applies from the poll that reads it.
    storage
        .0
        .lock()
        .unwrap()
        .holding
        .insert(40083, (-2i16) as u16);
    let fixed = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/dev" && m.json()["properties"]["PhVphA"] == json!(23.01)
        })
        .await;
    assert!(fixed.is_some_and(|m| m.json().get("errors").is_none()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sunspec_writable_scaled_control_takes_set_in_published_units() {
    // A model-123-like power limit added to the profile: WMaxLimPct in %
    // with its own scale factor, writable.
    let storage = sunspec_storage();
    storage
        .0
        .lock()
        .unwrap()
        .holding
        .extend([(40200, 1000), (40201, (-1i16) as u16)]);
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let gw = Gateway::start(&config(
        broker.port(),
        &format!(
            "  - name: dev\n    profile: sunspec-inverter-103\n    syncInterval: 200ms\n    protocol: {{ tcp: {{ endpoint: \"{}\" }}, unitId: 1 }}\n    properties:\n      - {{ name: WMaxLimPct, register: holding, address: 40200, type: uint16, scaleFactor: WMaxLimPct_SF, writable: true, unit: \"%\" }}\n      - {{ name: WMaxLimPct_SF, register: holding, address: 40201, type: int16 }}\n",
            server.addr
        ),
    ));
    let state = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/dev" && m.json().get("errors").is_none()
        })
        .await
        .unwrap_or_else(|| panic!("no good state:\n{}", gw.log()))
        .json();
    assert_eq!(state["properties"]["WMaxLimPct"], json!(100.0));
    // 55.5 % with WMaxLimPct_SF = -1 is raw 555.
    probe
        .publish(
            "fieldgate/test/dev/$set",
            r#"{"$id": "limit", "WMaxLimPct": 55.5}"#,
            1,
            false,
        )
        .await;
    let result = probe
        .wait_topic(WAIT, "fieldgate/test/dev/$set/result")
        .await
        .expect("$set result")
        .json();
    assert_eq!(
        result,
        json!({"$id": "limit", "ok": true, "applied": {"WMaxLimPct": 55.5}, "errors": {}})
    );
    assert_eq!(storage.0.lock().unwrap().holding.get(&40200), Some(&555));
    let back = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/dev" && m.json()["properties"]["WMaxLimPct"] == json!(55.5)
        })
        .await;
    assert!(back.is_some(), "read back as 55.5");
    // While the scale factor is unusable the write is refused, nothing written.
    storage.0.lock().unwrap().holding.insert(40201, 0x8000);
    probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/dev" && m.json()["errors"].get("WMaxLimPct").is_some()
        })
        .await
        .expect("WMaxLimPct in errors");
    probe
        .publish("fieldgate/test/dev/$set", r#"{"WMaxLimPct": 60}"#, 1, false)
        .await;
    let refused = probe
        .wait_topic(WAIT, "fieldgate/test/dev/$set/result")
        .await
        .expect("$set result")
        .json();
    assert_eq!(
        refused,
        json!({"ok": false, "applied": {}, "errors": {"WMaxLimPct":
            "cannot convert to the raw value: scale factor WMaxLimPct_SF is not implemented by the device (reads -32768, 0x8000)"}})
    );
    assert_eq!(storage.0.lock().unwrap().holding.get(&40200), Some(&555));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xy_md02_publishes_the_documented_examples() {
    let storage = Storage::with(|t| {
        t.input.extend([(1, 0x0131), (2, 0x0222)]); // the document: 30.5 °C, 54.6 %RH
        t.holding
            .extend([(0x101, 1), (0x102, 9600), (0x103, 0), (0x104, 0)]);
    });
    let (state, server, _gw, mut probe, _broker) = published("xy-md02", storage.clone()).await;
    assert_values(
        &state,
        &[
            ("temperature", 30.5),
            ("humidity", 54.6),
            ("deviceAddress", 1.0),
            ("baudRate", 9600.0),
            ("temperatureCorrection", 0.0),
        ],
    );
    // The document's negative example: 0xFF33 = -20.5 °C.
    storage.0.lock().unwrap().input.insert(1, 0xFF33);
    let cold = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/dev" && close(&m.json()["properties"]["temperature"], -20.5)
        })
        .await;
    assert!(cold.is_some());
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Merge rules and located errors (through the library's loader).

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn device_keys_override_the_profile_and_properties_merge_by_name() {
    use fieldgate_drivers::modbus::ByteOrder;
    use fieldgate_drivers::{Connection, PropertyAddress};
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "profiles/pump.yaml",
        "driver: modbus\nsyncInterval: 5s\nprotocol: { byteOrder: CDAB, maxRegistersPerRead: 20 }\nproperties:\n  - { name: speed, register: holding, address: 0, type: float32, unit: rpm }\n  - { name: hours, register: holding, address: 2, type: uint32 }\n",
    );
    let main = write(
        dir.path(),
        "config.yaml",
        "devices:\n  - name: p1\n    profile: profiles/pump.yaml\n    syncInterval: 2s\n    protocol: { tcp: { endpoint: \"127.0.0.1:1502\" }, unitId: 7, byteOrder: ABCD }\n    properties:\n      - { name: hours, register: holding, address: 10, type: uint16 }\n      - { name: alarm, register: coil, address: 0, type: bool }\n",
    );
    let r = fieldgate::config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    let d = &r.devices[0];
    assert_eq!(d.spec.sync_interval, Duration::from_secs(2));
    let Connection::Modbus(c) = &d.spec.connection else {
        panic!("not modbus")
    };
    assert_eq!(c.unit_id, 7);
    // protocol merged key by key: the device's byteOrder, the profile's limit.
    assert_eq!(c.max_registers_per_read, 20);
    let names: Vec<&str> = d.spec.properties.iter().map(|p| &*p.name).collect();
    assert_eq!(names, ["speed", "hours", "alarm"]);
    let addr = |i: usize| match &d.spec.properties[i].address {
        PropertyAddress::Modbus(a) => a.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(addr(0).byte_order, ByteOrder::Abcd);
    assert_eq!(addr(1).address, 10);
    assert_eq!(
        r.sources.profile_of("p1").map(|p| p.0),
        Some("profiles/pump.yaml")
    );
}

#[test]
fn errors_inside_a_profile_point_into_it_and_name_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "meter.yaml",
        "driver: modbus\nproperties:\n  - { name: v, register: input, address: 0, type: flaot32 }\n",
    );
    let main = write(
        dir.path(),
        "config.yaml",
        "devices:\n  - name: m1\n    profile: meter.yaml\n    protocol: { tcp: { endpoint: \"127.0.0.1:1502\" } }\n  - name: m2\n    profile: eastron-sdm63\n    protocol: { tcp: { endpoint: \"127.0.0.1:1502\" } }\n",
    );
    let errors = fieldgate::config::load(&main).unwrap_err().0;
    let in_profile = errors
        .iter()
        .find(|e| e.file == profile.display().to_string())
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert_eq!(
        (in_profile.line, in_profile.column),
        (3, 51),
        "{in_profile}"
    );
    assert_eq!(in_profile.key_path, "devices[0].properties[0].type");
    assert!(
        in_profile.message.contains("did you mean `float32`"),
        "{in_profile}"
    );
    assert!(
        in_profile.message.contains("used by device `m1`"),
        "{in_profile}"
    );
    // An unknown profile name is an error at the device's `profile:`.
    let unknown = errors
        .iter()
        .find(|e| e.file == main.display().to_string())
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert_eq!((unknown.line, unknown.column), (6, 14), "{unknown}");
    assert_eq!(unknown.key_path, "devices[1].profile");
    assert!(
        unknown.message.contains("did you mean `eastron-sdm630`"),
        "{unknown}"
    );

    // A profile may not name the device, nor another profile.
    write(
        dir.path(),
        "meter.yaml",
        "name: x\nprofile: y\ndriver: modbus\n",
    );
    let errors = fieldgate::config::load(&main).unwrap_err().0;
    let lines: Vec<(usize, &str)> = errors
        .iter()
        .filter(|e| e.file == profile.display().to_string())
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    assert!(
        errors.iter().any(|e| e.key_path == "devices[0].name"),
        "{errors:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 1 && m.contains("must not set `name`")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 2 && m.contains("do not nest")),
        "{lines:?}"
    );
}

#[test]
fn a_local_profile_overrides_the_built_in_one_and_check_shows_the_effective_device() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("profiles");
    write(
        &local,
        "xy-md02.yaml",
        "# my own XY-MD02\ndriver: modbus\nproperties:\n  - { name: t, register: input, address: 1, type: int16, scale: 0.01 }\n",
    );
    let main = write(
        dir.path(),
        "config.yaml",
        "devices:\n  - name: th\n    profile: xy-md02\n    protocol: { tcp: { endpoint: \"127.0.0.1:1502\" } }\n  - name: meter\n    profile: eastron-sdm120\n    protocol: { tcp: { endpoint: \"127.0.0.1:1502\" } }\n    properties:\n      - { name: voltage, register: input, address: 0, type: float32, deadband: 0.5 }\n",
    );
    let out = std::process::Command::new(support::fieldgate_binary())
        .args(["check", "-c", main.to_str().unwrap()])
        .env("FIELDGATE_PROFILE_DIR", &local)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "profile: xy-md02 ({}/xy-md02.yaml)",
            local.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("      t: int16, read-only, scale 0.01"),
        "{text}"
    );
    assert!(
        text.contains("profile: eastron-sdm120 (builtin:eastron-sdm120.yaml)"),
        "{text}"
    );
    assert!(
        text.contains("      voltage: float32, read-only, deadband 0.5, Input 0 Abcd"),
        "{text}"
    );
    assert!(
        text.contains(
            "      totalReactiveEnergy: float32, read-only, unit \"kvarh\", Input 344 Abcd"
        ),
        "{text}"
    );

    // `fieldgate profiles` lists the local one first, then the built-ins.
    let out = std::process::Command::new(support::fieldgate_binary())
        .args(["profiles"])
        .env("FIELDGATE_PROFILE_DIR", &local)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    let first = list.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("xy-md02") && first.contains("my own XY-MD02"),
        "{list}"
    );
    for name in [
        "abb-b23",
        "eastron-sdm120",
        "eastron-sdm630",
        "sunspec-inverter-103",
    ] {
        assert!(
            list.lines()
                .any(|l| l.starts_with(name) && l.contains("built-in")),
            "{list}"
        );
    }
}

#[test]
fn profiles_show_prints_a_profile_with_its_source() {
    for b in fieldgate::config::profile::BUILTIN {
        let out = support::fieldgate(&["profiles", "show", b.name]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Source:"),
            "{} names no source document",
            b.name
        );
        assert!(text.contains(b.text), "{}", b.name);
    }
    let out = support::fieldgate(&["profiles", "show", "no-such"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("built-in profiles:"));
}

// ---------------------------------------------------------------------------
// Includes.

#[test]
fn include_globs_are_relative_to_the_main_file_and_duplicates_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("etc");
    write(&sub, "devices/a.yaml", "devices:\n  - { name: a1, driver: dummy, model: fan }\n  - { name: a2, driver: dummy, model: fan }\n");
    write(
        &sub,
        "devices/b.yaml",
        "devices:\n  - { name: b1, driver: dummy, model: fan }\n",
    );
    write(&sub, "devices/skip.txt", "not yaml: [\n");
    let main = write(
        &sub,
        "config.yaml",
        "include: [ devices/*.yaml ]\ndevices:\n  - { name: m1, driver: dummy, model: fan }\n",
    );
    // Loaded from another working directory: the glob is the file's.
    let r = fieldgate::config::load(&main).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = r.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["m1", "a1", "a2", "b1"]);
    assert_eq!(r.sources.files.len(), 2);

    // A duplicate across files: located in the second file, naming the first.
    let b = write(&sub, "devices/b.yaml", "devices:\n  - { name: b1, driver: dummy, model: fan }\n  - { name: a2, driver: dummy, model: fan }\n");
    let errors = fieldgate::config::load(&main).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.file, b.display().to_string());
    assert_eq!(
        (e.line, e.column, e.key_path.as_str()),
        (3, 13, "devices[1].name")
    );
    assert!(
        e.message.contains(&format!(
            "devices[1] in {}",
            sub.join("devices/a.yaml").display()
        )),
        "{e}"
    );

    // An included file holds only devices; its errors point into it.
    write(
        &sub,
        "devices/b.yaml",
        "mqtt: {}\ndevices:\n  - { name: b1, driver: dummy, model: fna }\n",
    );
    let errors = fieldgate::config::load(&main).unwrap_err().0;
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{}:1:1: mqtt:", b.display()))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{}:3:39: devices[0].model:", b.display()))),
        "{lines:?}"
    );
}

async fn state_of(probe: &mut MqttProbe, device: &str, want: Value, gw: &Gateway) {
    let t = format!("fieldgate/test/{device}");
    let got = probe
        .wait_for(WAIT, |m| {
            m.topic == t && m.json()["properties"]["v"] == want
        })
        .await;
    assert!(
        got.is_some(),
        "{device} never published v = {want}:\n{}",
        gw.log()
    );
}

fn constant(name: &str, v: i64) -> String {
    format!(
        "devices:\n  - name: {name}\n    driver: dummy\n    syncInterval: 200ms\n    properties:\n      - {{ name: v, type: int32, simulate: {{ constant: {v} }} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn included_files_hot_reload_and_new_matches_are_picked_up() {
    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/#", 1).await;
    let main = config(
        broker.port(),
        "  - { name: main-1, driver: dummy, syncInterval: 200ms, properties: [ { name: v, type: int32, simulate: { constant: 0 } } ] }\ninclude: conf.d/*.yaml\n",
    );
    let gw = Gateway::start(&main);
    state_of(&mut probe, "main-1", json!(0), &gw).await;

    // The directory appears with a file: picked up at the next reload.
    write(gw.dir(), "conf.d/a.yaml", &constant("inc-1", 1));
    gw.sighup();
    state_of(&mut probe, "inc-1", json!(1), &gw).await;

    // An edit of the included file (saved by rename) reloads by itself.
    let tmp = write(gw.dir(), "conf.d/.a.yaml.swp", &constant("inc-1", 2));
    std::fs::rename(tmp, gw.dir().join("conf.d/a.yaml")).unwrap();
    state_of(&mut probe, "inc-1", json!(2), &gw).await;

    // A new file matching the glob is picked up too.
    write(gw.dir(), "conf.d/b.yaml", &constant("inc-2", 3));
    state_of(&mut probe, "inc-2", json!(3), &gw).await;

    // A duplicate name across files is refused: the old config keeps running
    // and the log names both files.
    write(gw.dir(), "conf.d/c.yaml", &constant("inc-1", 4));
    assert!(
        gw.wait_for_log("already used by devices[0] in", WAIT),
        "{}",
        gw.log()
    );
    assert!(
        gw.log()
            .contains("conf.d/c.yaml:2:11: devices[0].name: duplicate device name `inc-1`"),
        "{}",
        gw.log()
    );

    // Removing the file that stopped matching removes its device.
    std::fs::remove_file(gw.dir().join("conf.d/c.yaml")).unwrap();
    std::fs::remove_file(gw.dir().join("conf.d/b.yaml")).unwrap();
    let gone = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/inc-2/$state" && m.payload_str() == "offline"
        })
        .await;
    assert!(gone.is_some(), "{}", gw.log());
    state_of(&mut probe, "inc-1", json!(2), &gw).await;
}
