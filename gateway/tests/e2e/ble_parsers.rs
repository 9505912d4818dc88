//! fieldgate's BLE advertisement decoders against the Python parsers Home
//! Assistant uses: `bthome-ble` (BTHome v2, plain and encrypted), `atc-ble`
//! (pvvx and ATC1441 custom formats) and `ruuvitag-ble` (RuuviTag data
//! format 5), from PyPI in a venv cached under
//! /var/cache/fieldgate-test/ble-parsers (tests/ble-parsers/setup-venv.sh).
//! Python generates random advertisements of every object id and decodes
//! them; the Rust decoders decode the same bytes, and both must agree on
//! every field (names mapped, units converted where the two differ).
#![cfg(feature = "ble")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use fieldgate_drivers::ble::adverts::{decode, parse_bind_key, short_uuid, Advertisement, Format};
use fieldgate_drivers::Value;
use serde_json::Value as J;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python (created on first use; the script says when it installs).
fn python() -> String {
    let out = Command::new("sh")
        .arg(repo().join("tests/ble-parsers/setup-venv.sh"))
        .output()
        .expect("run tests/ble-parsers/setup-venv.sh");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "could not create the BLE parser venv (PyPI bthome-ble, atc-ble, ruuvitag-ble): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// fieldgate's name for a Home Assistant key (`temperature_2`, `dew_point`, …).
fn our_name(format: &str, key: &str, kind: &str, unit: Option<&str>) -> Option<String> {
    let (base, n) = match key.rsplit_once('_') {
        Some((b, n)) if n.parse::<u32>().is_ok() => (b, n.parse::<u32>().ok()),
        _ => (key, None),
    };
    let name = match (format, base, kind, unit) {
        ("ruuvi", "acceleration_x", ..) => "accelerationX",
        ("ruuvi", "acceleration_y", ..) => "accelerationY",
        ("ruuvi", "acceleration_z", ..) => "accelerationZ",
        ("ruuvi", "acceleration_total", ..) => "accelerationTotal",
        ("ruuvi", "movement_counter", ..) => "movementCounter",
        (_, "battery", "binary", _) => "batteryLow",
        (_, "power", "binary", _) => "powerOn",
        (_, "gas", "binary", _) => "gasDetected",
        (_, "moisture", "binary", _) => "moistureDetected",
        (_, "mass", _, Some("lb")) => "massLb",
        (_, "distance", _, Some("m")) => "distanceM",
        (_, "volume", _, Some("mL")) => "volumeMl",
        (_, "battery_charging", ..) => "batteryCharging",
        (_, "carbon_dioxide", ..) => "co2",
        (_, "carbon_monoxide", ..) => "carbonMonoxide",
        (_, "dew_point", ..) => "dewPoint",
        (_, "garage_door", ..) => "garageDoor",
        (_, "light_level", ..) => "lightLevel",
        (_, "packet_id", ..) => "packetId",
        (_, "rotational_speed", ..) => "rotationalSpeed",
        (_, "settings_revision", ..) => "settingsRevision",
        (_, "uv_index", ..) => "uvIndex",
        (_, "volatile_organic_compounds", ..) => "tvoc",
        (_, "volume_flow_rate", ..) => "flowRate",
        (_, "volume_storage", ..) => "volumeStorage",
        (_, b, ..) if !b.contains('_') => b,
        _ => return None,
    };
    Some(match n {
        None | Some(1) => name.to_string(),
        Some(n) => format!("{name}_{n}"),
    })
}

/// Whether our value `ours` equals Python's `theirs` for field `name`.
fn agrees(format: &str, name: &str, unit: Option<&str>, ours: &Value, theirs: &J) -> bool {
    let num = |v: &Value| v.as_f64();
    match (ours, theirs) {
        (Value::Bool(a), J::Bool(b)) => a == b,
        (Value::String(a), J::String(b)) => a == b,
        (Value::Bytes(a), J::String(b)) => {
            a.iter().map(|x| format!("{x:02x}")).collect::<String>() == *b
        }
        (v, J::Number(n)) => {
            let (Some(a), Some(b)) = (num(v), n.as_f64()) else {
                return false;
            };
            let (a, tolerance) = match (format, name, unit) {
                // Python reports millivolts and m/s² rounded to 0.01.
                ("ruuvi", "voltage", Some("mV")) => (a * 1000.0, 1e-6),
                ("ruuvi", n, _) if n.starts_with("acceleration") && n != "accelerationTotal" => {
                    ((a * 0.00980665 * 100.0).round() / 100.0, 1e-9)
                }
                ("ruuvi", "accelerationTotal", _) => (a * 0.00980665, 0.02),
                // Python rounds 0.005 °C and 0.0025 % steps to 0.01.
                ("ruuvi", "temperature" | "humidity", _) => (a, 0.0051),
                _ => (a, 1e-9 * b.abs().max(1.0)),
            };
            (a - b).abs() <= tolerance
        }
        _ => false,
    }
}

#[test]
fn decoders_agree_with_home_assistant_parsers() {
    let py = python();
    let out = Command::new(&py)
        .arg(repo().join("tests/ble-parsers/crosscheck.py"))
        // A fixed seed (reproducible); FIELDGATE_BLE_CROSSCHECK_SEED tries others.
        .arg(std::env::var("FIELDGATE_BLE_CROSSCHECK_SEED").unwrap_or_else(|_| "22".into()))
        .output()
        .expect("run crosscheck.py");
    assert!(
        out.status.success(),
        "crosscheck.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Vec<J> = serde_json::from_slice(&out.stdout).expect("crosscheck.py JSON");
    assert!(cases.len() > 400, "too few cases: {}", cases.len());
    let mut compared: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let format = case["format"].as_str().unwrap();
        let f = Format::parse(format).unwrap();
        let address = case["address"].as_str().unwrap();
        let mut adv = Advertisement::default();
        for (o, p) in adv.address.iter_mut().zip(address.split(':')) {
            *o = u8::from_str_radix(p, 16).unwrap();
        }
        if let Some(sd) = case["service_data"].as_object() {
            for (u, d) in sd {
                let short = u16::from_str_radix(u, 16).unwrap();
                adv.service_data
                    .insert(short_uuid(short), hex(d.as_str().unwrap()));
            }
        }
        if let Some(md) = case["manufacturer_data"].as_object() {
            for (id, d) in md {
                adv.manufacturer_data
                    .insert(id.parse().unwrap(), hex(d.as_str().unwrap()));
            }
        }
        let key = case["key"].as_str().map(|k| parse_bind_key(k).unwrap());
        let decoded = match decode(f, &adv, key.as_ref()) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{case}: ours failed: {e}"));
                continue;
            }
        };
        let theirs = case["fields"].as_object().unwrap();
        let mut matched = Vec::new();
        for (k, v) in theirs {
            let kind = v["kind"].as_str().unwrap();
            let k = k.split_once(':').map_or(k.as_str(), |(_, key)| key);
            let unit = v["unit"].as_str();
            let Some(name) = our_name(format, k, kind, unit) else {
                failures.push(format!("{format}: no mapping for Python key {k}"));
                continue;
            };
            match decoded.get(&name) {
                None => failures.push(format!(
                    "{format} {}: Python has {k}={}, ours has no {name}: {decoded:?}",
                    case["service_data"], v["value"]
                )),
                Some(ours) => {
                    if !agrees(format, &name, unit, ours, &v["value"]) {
                        failures.push(format!(
                            "{format} {} {}: {name}: ours {ours:?}, Python {}",
                            case["service_data"], case["manufacturer_data"], v["value"]
                        ));
                    }
                    *compared.entry(format!("{format}.{name}")).or_default() += 1;
                    matched.push(name.clone());
                }
            }
            // Dimmer steps travel as an event property in Python.
            if kind == "event" && k.starts_with("dimmer") {
                let steps_name = name_with_suffix("dimmerSteps", k);
                if decoded.get(&steps_name) != v["steps"].as_u64().map(Value::Uint).as_ref() {
                    failures.push(format!("{k}: steps differ: {decoded:?} vs {v}"));
                }
                matched.push(steps_name);
            }
        }
        // Nothing the other side does not know either (fields Home
        // Assistant does not expose are listed).
        for (name, value) in &decoded.fields {
            let extra_ok = matches!(
                (format, name.as_ref()),
                ("ruuvi", "txPower" | "measurementSequence")
            );
            if !matched.iter().any(|m| m == name) && !extra_ok {
                failures.push(format!(
                    "{format} {}: ours has {name}={value:?}, Python has nothing for it: {theirs:?}",
                    case["service_data"]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    // Every field of every format was compared at least once.
    for f in [Format::Bthome, Format::Pvvx, Format::Atc1441, Format::Ruuvi] {
        for info in f.fields() {
            let skipped = matches!(
                (f, info.name),
                (
                    Format::Bthome,
                    "command" | "deviceTypeId" | "firmwareVersion"
                ) | (Format::Ruuvi, "txPower" | "measurementSequence")
            );
            let key = format!("{}.{}", f.as_str(), info.name);
            let n = compared.get(&key).copied().unwrap_or(0)
                + compared
                    .iter()
                    .filter(|(k, _)| k.starts_with(&format!("{key}_")))
                    .map(|(_, n)| n)
                    .sum::<usize>();
            assert!(
                skipped || n > 0 || info.name == "dimmerSteps",
                "field {key} was never compared"
            );
        }
    }
    eprintln!("compared {} field values", compared.values().sum::<usize>());
}

fn name_with_suffix(base: &str, python_key: &str) -> String {
    match python_key.rsplit_once('_') {
        Some((_, n)) if n.parse::<u32>().is_ok_and(|n| n >= 2) => format!("{base}_{n}"),
        _ => base.to_string(),
    }
}
