//! `set_payload`: bytes → the `$set` handling of devices built from a fixed
//! config: a raw (JSON) device and a base64 device with properties of every
//! type, scaling, bounds and enums, plus a device without writable
//! properties. Checks of `command::parse_set`: an accepted request only
//! writes writable properties with raw values of their type (enum keys for
//! enums) that publish back as the requested value (within the scaling's
//! rounding) and within `min`/`max`; a rejection names every problem once;
//! both result payloads are the documented JSON; base64 decoding gives the
//! same answer as the plain JSON. Then the same bytes go to the running
//! device actor (dummy driver, no broker) as `$get` and `$set`: the `$get`
//! is answered by no result, the `$set` by exactly the predicted
//! `$set/result` (and the same reply on an MQTT 5 response topic when that
//! topic is valid; an empty, wildcard or `$` response topic gets no reply
//! and an error naming it in the result). A retained `$set` (a replay by
//! the broker) is never answered nor executed.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use fieldgate::command::{self, SetRejection, SetRequest, MAX_SET_PAYLOAD};
use fieldgate::config::resolved::{DeviceSettings, PropertySemantics};
use fieldgate::config::types::PayloadEncode;
use fieldgate::device::{self, RunningDevice};
use fieldgate::mqtt::{Inbound, SessionHandle, SessionInput};
use fieldgate::telemetry::Metrics;
use fieldgate_drivers::{Buses, DataType, Value};
use serde_json::Map;
use tokio::sync::mpsc;

/// The properties of both writable devices.
const PROPERTIES: &str = r#"
      - { name: flag, type: bool, writable: true, simulate: { constant: false } }
      - { name: i8, type: int8, writable: true, min: -100, max: 100, simulate: { constant: 0 } }
      - { name: u8, type: uint8, writable: true, simulate: { constant: 0 } }
      - { name: i16, type: int16, writable: true, scale: 0.1, offset: -5, simulate: { constant: 0 } }
      - { name: u16, type: uint16, writable: true, enum: { 0: "off", 1: low, 2: high }, simulate: { constant: 0 } }
      - { name: i32, type: int32, writable: true, scale: 0.000001, simulate: { constant: 0 } }
      - { name: u32, type: uint32, writable: true, scale: 1000, offset: 7, min: 0, max: 1000000000, simulate: { constant: 0 } }
      - { name: i64, type: int64, writable: true, simulate: { constant: 0 } }
      - { name: u64, type: uint64, writable: true, simulate: { constant: 0 } }
      - { name: i64s, type: int64, writable: true, scale: -3.5, simulate: { constant: 0 } }
      - { name: f32, type: float32, writable: true, scale: 2.5, offset: 1, min: -1.0e30, max: 1.0e30, simulate: { constant: 0 } }
      - { name: f32p, type: float32, writable: true, simulate: { constant: 0 } }
      - { name: f64, type: float64, writable: true, simulate: { constant: 0 } }
      - { name: f64s, type: float64, writable: true, scale: 1.0e-300, offset: 1.0e10, simulate: { constant: 0 } }
      - { name: e16, type: int16, writable: true, scale: 10, enum: { -1: neg, 7: seven }, simulate: { constant: 7 } }
      - { name: text, type: string, writable: true, simulate: { constant: "" } }
      - { name: blob, type: bytes, writable: true, simulate: { constant: "00" } }
      - { name: mode, type: string, writable: true, enum: { a: Auto, m: Manual }, simulate: { constant: a } }
      - { name: onoff, type: bool, writable: true, enum: { true: "on", false: "off" }, simulate: { constant: true } }
      - { name: count, type: uint32, writable: true, simulate: { counter: { start: 0, step: 1 } } }
      - { name: ro, type: int32, simulate: { constant: 5 } }
"#;

/// The fixed config: `raw`, `b64` and `readonly`.
pub fn config_text() -> String {
    format!(
        r#"gateway: {{ namespace: fuzz, stateDirectory: /tmp/fieldgate-fuzz-state }}
mqtt: {{ client: {{ server: "tcp://127.0.0.1:1883" }}, message: {{ commandRate: 1.0e9 }} }}
devices:
  - name: raw
    driver: dummy
    syncInterval: 1h
    properties:{PROPERTIES}
  - name: b64
    driver: dummy
    syncInterval: 1h
    mqtt: {{ message: {{ payloadEncode: base64 }} }}
    properties:{PROPERTIES}
  - name: readonly
    driver: dummy
    syncInterval: 1h
    properties:
      - {{ name: ro, type: int32, simulate: {{ constant: 5 }} }}
"#
    )
}

/// The devices of the fixed config.
pub fn devices() -> &'static [Arc<DeviceSettings>] {
    static DEVICES: OnceLock<Vec<Arc<DeviceSettings>>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let resolved = fieldgate::config::load_str(
            &config_text(),
            "set_payload.yaml",
            std::path::Path::new("."),
        )
        .unwrap_or_else(|e| panic!("the fixed config is invalid:\n{e}"));
        resolved.devices
    })
}

/// The fuzz entry point: the first byte picks the device (bits 0–4),
/// whether an MQTT 5 response topic is given (bit 7) and which (bits 5–6:
/// valid, empty, wildcard, `$`-topic; without bit 7: bit 5 sends the
/// `$set` retained first), the rest is the payload.
pub fn run(data: &[u8]) {
    let Some((&choice, payload)) = data.split_first() else {
        return;
    };
    let all = devices();
    let index = usize::from(choice & 0x1f) % all.len();
    let device = &all[index];
    let encode = device.message.payload_encode;
    let outcome = command::parse_set(payload, encode, device);
    check_outcome(device, payload, &outcome);
    if encode == PayloadEncode::Raw {
        check_base64_agrees(device, payload, &outcome);
    }
    let expected = match &outcome {
        Ok(request) => command::result_payload(device, request, request.writes.len(), None),
        Err(rejection) => command::rejection_payload(rejection),
    };
    let reply_to =
        (choice & 0x80 != 0).then(|| Bytes::copy_from_slice(&payload[..payload.len().min(8)]));
    let kind = (choice >> 5) & 3;
    let response_topic = reply_to.as_ref().map(|_| match kind {
        0 => format!("{}/reply", device.message.topic),
        1 => String::new(),
        2 => format!("{}/+", device.message.topic),
        _ => "$SYS/reply".to_owned(),
    });
    if reply_to.is_none() && kind & 1 == 1 {
        // The payload arrives retained first: ignored. Then `{}` live,
        // whose result must be the first one.
        let empty: &[u8] = match encode {
            PayloadEncode::Raw => b"{}",
            PayloadEncode::Base64 => b"e30=",
        };
        let rejection = command::parse_set(empty, encode, device).expect_err("{} sets nothing");
        let expected = command::rejection_payload(&rejection);
        check_actor(index, empty, None, None, Some(payload), &expected);
        return;
    }
    check_actor(index, payload, reply_to, response_topic, None, &expected);
}

/// `expected` with the error a refused response topic adds (`$payload`,
/// unless the result already has one).
fn with_refusal(expected: &[u8], why: Option<String>) -> Vec<u8> {
    let Some(why) = why else {
        return expected.to_vec();
    };
    let mut obj = result_object(expected);
    if let Some(serde_json::Value::Object(errors)) = obj.get_mut("errors") {
        errors
            .entry("$payload")
            .or_insert(serde_json::Value::String(why));
    }
    serde_json::to_vec(&obj).expect("JSON")
}

/// The body of a payload: what `parse_set` parses as JSON.
fn json_body(payload: &[u8], encode: PayloadEncode) -> Option<Vec<u8>> {
    match encode {
        PayloadEncode::Raw => Some(payload.to_vec()),
        PayloadEncode::Base64 => base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        )
        .decode(payload.trim_ascii())
        .ok(),
    }
}

/// The result JSON object of a payload that reached a verdict.
fn result_object(bytes: &[u8]) -> Map<String, serde_json::Value> {
    match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(m)) => m,
        other => panic!(
            "a $set/result is not a JSON object: {other:?} from {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Checks the shape shared by every result: `$id` only when known, `ok`,
/// `applied` and `errors` always, nothing else.
fn check_result_shape(
    obj: &Map<String, serde_json::Value>,
    id: Option<&serde_json::Value>,
    ok: bool,
) {
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let want: &[&str] = if id.is_some() {
        &["$id", "ok", "applied", "errors"]
    } else {
        &["ok", "applied", "errors"]
    };
    assert_eq!(keys, want, "result keys");
    assert_eq!(obj.get("$id"), id, "$id echo");
    assert_eq!(obj["ok"], serde_json::Value::Bool(ok));
    assert!(obj["applied"].is_object() && obj["errors"].is_object());
}

fn check_outcome(
    device: &DeviceSettings,
    payload: &[u8],
    outcome: &Result<SetRequest, SetRejection>,
) {
    match outcome {
        Ok(request) => check_request(device, payload, request),
        Err(rejection) => {
            assert!(!rejection.errors.is_empty(), "a rejection without errors");
            let bytes = command::rejection_payload(rejection);
            assert!(
                bytes.len() <= command::MAX_RESULT,
                "result of {} bytes",
                bytes.len()
            );
            let obj = result_object(&bytes);
            let id = rejection.id.as_ref().filter(|_| obj.contains_key("$id"));
            check_result_shape(&obj, id, false);
            assert!(obj["applied"].as_object().is_some_and(Map::is_empty));
            let errors = obj["errors"].as_object().map_or(0, Map::len);
            let more = obj["errors"]["$more"].as_u64().unwrap_or(0) as usize;
            let listed = errors - usize::from(more > 0);
            assert!(
                listed <= command::MAX_LISTED_ERRORS,
                "{listed} errors listed"
            );
            // Keys are cut to 256 characters: long ones may merge.
            let long_keys = rejection
                .errors
                .iter()
                .any(|(k, _)| k.chars().count() > 256);
            if !long_keys {
                assert_eq!(
                    listed + more,
                    rejection.errors.len(),
                    "every problem is reported once or counted: {:?}",
                    rejection.errors
                );
            }
            if payload.len() > MAX_SET_PAYLOAD {
                assert_eq!(rejection.errors[0].0, "$payload");
            }
        }
    }
}

/// Whether `raw` is a value of `t`.
fn fits(t: DataType, raw: &Value) -> bool {
    match (t, raw) {
        (DataType::Bool, Value::Bool(_)) => true,
        (t, Value::Int(_) | Value::Uint(_)) if t.is_integer() => {
            let (lo, hi) = t.integer_range().unwrap_or_default();
            raw.as_i128().is_some_and(|v| (lo..=hi).contains(&v))
        }
        (DataType::Float32, Value::Float(f)) => f.is_finite() && f64::from(*f as f32) == *f,
        (DataType::Float64, Value::Float(f)) => f.is_finite(),
        (DataType::String, Value::String(_)) | (DataType::Bytes, Value::Bytes(_)) => true,
        _ => false,
    }
}

fn check_request(device: &DeviceSettings, payload: &[u8], request: &SetRequest) {
    assert!(
        !request.writes.is_empty(),
        "an accepted $set writes nothing"
    );
    assert!(payload.len() <= MAX_SET_PAYLOAD);
    for (index, raw) in &request.writes {
        let prop = device
            .properties
            .get(*index)
            .unwrap_or_else(|| panic!("write to property {index} of {}", device.properties.len()));
        assert!(prop.writable, "write to read-only {}", prop.name);
        assert!(
            fits(prop.data_type, raw),
            "{}: raw {raw:?} is not a {}",
            prop.name,
            prop.data_type
        );
        if !prop.enum_entries().is_empty() {
            assert!(
                prop.enum_entries().iter().any(|e| &e.raw == raw),
                "{}: raw {raw:?} is no enum key",
                prop.name
            );
        }
    }
    // Every write applied: the result names each property with its value.
    let obj = result_object(&command::result_payload(
        device,
        request,
        request.writes.len(),
        None,
    ));
    check_result_shape(&obj, request.id.as_ref(), true);
    assert!(obj["errors"].as_object().is_some_and(Map::is_empty));
    let applied = obj["applied"].as_object().cloned().unwrap_or_default();
    let body = json_body(payload, device.message.payload_encode).expect("decoded before");
    let asked: Map<String, serde_json::Value> =
        serde_json::from_slice(&body).expect("parsed before");
    for (index, _) in &request.writes {
        let prop = &device.properties[*index];
        let published = applied
            .get(&*prop.name)
            .unwrap_or_else(|| panic!("{} missing from applied {applied:?}", prop.name));
        check_published(prop, &asked[&*prop.name], published);
    }
    // A failed write: nothing after it, its error named.
    let err = fieldgate_drivers::DriverError::new(fieldgate_drivers::ErrorKind::Rejected, "no");
    let obj = result_object(&command::result_payload(
        device,
        request,
        0,
        Some((0, &err)),
    ));
    check_result_shape(&obj, request.id.as_ref(), false);
    assert!(obj["applied"].as_object().is_some_and(Map::is_empty));
}

/// The published value of a write is the requested one, up to the raw
/// type's resolution, and within the bounds.
fn check_published(
    prop: &PropertySemantics,
    asked: &serde_json::Value,
    published: &serde_json::Value,
) {
    let name = &*prop.name;
    if !prop.enum_entries().is_empty() || !prop.data_type.is_numeric() {
        match prop.data_type {
            DataType::Bytes => assert_eq!(
                published.as_str().map(str::to_lowercase),
                asked.as_str().map(str::to_lowercase),
                "{name}"
            ),
            DataType::String if prop.enum_entries().is_empty() => {
                let want = asked.as_str().unwrap_or_default();
                assert_eq!(
                    published.as_str(),
                    Some(want.trim_end_matches(['\0', ' '])),
                    "{name}"
                )
            }
            _ => assert_eq!(published, asked, "{name}"),
        }
        return;
    }
    let (Some(v), Some(p)) = (asked.as_f64(), published.as_f64()) else {
        panic!("{name}: asked {asked}, published {published}");
    };
    let scaled = prop.scale().is_some() || prop.offset().is_some();
    let scale = prop.scale().unwrap_or(1.0);
    let offset = prop.offset().unwrap_or(0.0);
    let tolerance = match (prop.data_type, scaled) {
        (t, false) if t.is_integer() => {
            // Unscaled integers are exact.
            match (asked.as_i64(), asked.as_u64()) {
                (Some(i), _) => assert_eq!(published.as_i64(), Some(i), "{name}"),
                (_, Some(u)) => assert_eq!(published.as_u64(), Some(u), "{name}"),
                _ => assert_eq!(p, v, "{name}"),
            }
            0.0
        }
        (DataType::Float32, false) => {
            // The nearest f32, published as its shortest decimal: within
            // an f32 rounding step of the request.
            assert_eq!(p as f32, v as f32, "{name}: asked {v}, published {p}");
            2.5e-7 * v.abs() + f64::from(f32::from_bits(1))
        }
        (_, false) => {
            assert_eq!(p, v, "{name}");
            0.0
        }
        (t, true) if t.is_integer() => {
            scale.abs() / 2.0 + 1e-9 * (v.abs() + offset.abs() + scale.abs())
        }
        (DataType::Float32, true) => {
            1e-6 * (v.abs() + offset.abs()) + 2.0 * f64::from(f32::from_bits(1)) * scale.abs()
        }
        (_, true) => 1e-9 * (v.abs() + offset.abs()),
    };
    assert!(
        (p - v).abs() <= tolerance,
        "{name}: asked {v}, published {p} (tolerance {tolerance})"
    );
    if let Some(min) = prop.min() {
        assert!(
            p >= min - tolerance,
            "{name}: published {p} below min {min}"
        );
    }
    if let Some(max) = prop.max() {
        assert!(
            p <= max + tolerance,
            "{name}: published {p} above max {max}"
        );
    }
}

/// Base64 of the same JSON gets the same verdict.
fn check_base64_agrees(
    device: &DeviceSettings,
    payload: &[u8],
    outcome: &Result<SetRequest, SetRejection>,
) {
    if payload.len() > MAX_SET_PAYLOAD / 4 * 3 {
        return;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
    let again = command::parse_set(encoded.as_bytes(), PayloadEncode::Base64, device);
    assert_eq!(&again, outcome, "base64 and plain JSON disagree");
}

/// A device actor run without a broker.
struct Driven {
    settings: Arc<DeviceSettings>,
    session: mpsc::Receiver<SessionInput>,
    inbox: fieldgate::mqtt::Inbox,
    _device: RunningDevice,
}

/// How long the actor may take to answer.
const ANSWER: Duration = Duration::from_secs(20);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn driven() -> &'static Mutex<Vec<Driven>> {
    static DRIVEN: OnceLock<Mutex<Vec<Driven>>> = OnceLock::new();
    DRIVEN.get_or_init(|| {
        let metrics = Metrics::new().expect("metrics");
        let buses = Buses::new();
        let all = devices()
            .iter()
            .map(|settings| {
                runtime().block_on(async {
                    let (handle, mut session) = SessionHandle::detached("fuzz", 1024);
                    let running =
                        device::spawn(settings.clone(), handle, buses.clone(), metrics.clone());
                    let set = format!("{}/$set", settings.message.topic);
                    let inbox = tokio::time::timeout(ANSWER, async {
                        loop {
                            match session.recv().await {
                                Some(SessionInput::Route { topic, to, .. }) if *topic == *set => {
                                    break to
                                }
                                Some(_) => {}
                                None => panic!("the device stopped"),
                            }
                        }
                    })
                    .await
                    .expect("the device routes its $set topic");
                    Driven {
                        settings: settings.clone(),
                        session,
                        inbox,
                        _device: running,
                    }
                })
            })
            .collect();
        Mutex::new(all)
    })
}

/// Sends the payload as `$get` and as `$set` (after `retained_first` as a
/// retained `$set`); the next result must be the `$set`'s, exactly
/// `expected` (encoded as the device encodes), and a reply comes on the
/// response topic only when it may be used.
fn check_actor(
    index: usize,
    payload: &[u8],
    correlation: Option<Bytes>,
    response_topic: Option<String>,
    retained_first: Option<&[u8]>,
    expected: &[u8],
) {
    let mut all = driven().lock().unwrap_or_else(|e| e.into_inner());
    let d = &mut all[index];
    let t = d.settings.message.topic.clone();
    let refusal = response_topic.as_deref().and_then(|topic| {
        command::reply::refuse_response_topic(topic, &d.settings.message.response_topics)
    });
    let expected = with_refusal(expected, refusal.clone());
    let expected = match d.settings.message.payload_encode {
        PayloadEncode::Raw => Bytes::from(expected),
        PayloadEncode::Base64 => {
            Bytes::from(base64::engine::general_purpose::STANDARD.encode(&expected))
        }
    };
    let reply_topic = response_topic.clone().filter(|_| refusal.is_none());
    runtime().block_on(async {
        let payload = Bytes::copy_from_slice(payload);
        let mut sends = vec![
            ("$get", None, false, payload.clone()),
            ("$set", response_topic, false, payload.clone()),
        ];
        if let Some(first) = retained_first {
            sends.insert(0, ("$set", None, true, Bytes::copy_from_slice(first)));
        }
        for (suffix, response_topic, retain, payload) in sends {
            let msg = Inbound {
                topic: format!("{t}/{suffix}"),
                payload,
                response_topic,
                correlation: correlation.clone(),
                retain,
            };
            d.inbox
                .send_async(Box::new(msg))
                .await
                .expect("the device takes commands");
        }
        let result_topic = format!("{t}/$set/result");
        let mut replied = false;
        tokio::time::timeout(ANSWER, async {
            loop {
                let Some(input) = d.session.recv().await else {
                    panic!("the device stopped");
                };
                let SessionInput::Publish(msg) = input else {
                    continue;
                };
                if Some(&*msg.topic) == reply_topic.as_deref() {
                    assert!(!replied, "two replies to one $set");
                    assert_eq!(msg.payload, expected, "reply payload");
                    assert_eq!(msg.correlation, correlation, "correlation data");
                    replied = true;
                } else if *msg.topic == *result_topic {
                    assert_eq!(
                        msg.payload,
                        expected,
                        "$set/result: got {:?}",
                        String::from_utf8_lossy(&msg.payload)
                    );
                    break;
                }
            }
        })
        .await
        .expect("no $set/result in time");
        assert_eq!(replied, reply_topic.is_some(), "MQTT 5 reply");
    });
}
