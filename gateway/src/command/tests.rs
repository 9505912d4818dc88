//! Unit tests of `$set` decoding, validation and result payloads.

use base64::Engine as _;
use fieldgate_drivers::{DataType, DriverError, ErrorKind, Value};
use serde_json::json;

use super::{
    parse_set, rejection_payload, result_payload, SetRejection, SetRequest, MAX_SET_PAYLOAD,
};
use crate::config::resolved::{DeviceSettings, PropertySemantics};
use crate::config::types::PayloadEncode;
use crate::state::tests::{device, entries, prop};
use crate::state::DeviceState;

/// A writable property.
fn w(name: &str, data_type: DataType) -> PropertySemantics {
    PropertySemantics {
        writable: true,
        ..prop(name, data_type)
    }
}

/// The test device:
/// 0 setpoint int16 ×0.1 [5, 30], 1 pump bool, 2 gear uint8 enum, 3 temperature
/// float32 read-only, 4 label string, 5 key bytes, 6 level float32, 7 counter
/// uint64, 8 small int8 ×0.1, 9 offset int16 +(-40) ×0.5, 10 ratio float64 ×1e-300.
fn boiler() -> DeviceSettings {
    device(vec![
        w("setpoint", DataType::Int16).with(|d| {
            d.scale = Some(0.1);
            d.min = Some(5.0);
            d.max = Some(30.0);
        }),
        w("pump", DataType::Bool),
        w("gear", DataType::Uint8).with(|d| {
            d.enum_entries = entries(&[
                (Value::Uint(0), "slow"),
                (Value::Uint(1), "middle"),
                (Value::Uint(2), "fast"),
            ]);
        }),
        prop("temperature", DataType::Float32),
        w("label", DataType::String),
        w("key", DataType::Bytes),
        w("level", DataType::Float32),
        w("counter", DataType::Uint64),
        w("small", DataType::Int8).with(|d| {
            d.scale = Some(0.1);
        }),
        w("offset", DataType::Int16).with(|d| {
            d.scale = Some(0.5);
            d.offset = Some(-40.0);
        }),
        w("ratio", DataType::Float64).with(|d| {
            d.scale = Some(1e-300);
        }),
    ])
}

fn set(payload: &str) -> Result<SetRequest, SetRejection> {
    parse_set(payload.as_bytes(), PayloadEncode::Raw, &boiler())
}

fn ok(payload: &str) -> SetRequest {
    match set(payload) {
        Ok(r) => r,
        Err(e) => panic!("{payload} rejected: {e:?}"),
    }
}

fn rejected(payload: &str) -> Vec<(String, String)> {
    match set(payload) {
        Ok(r) => panic!("{payload} accepted: {r:?}"),
        Err(e) => e.errors,
    }
}

/// The single error of a rejected payload, for property or `$payload` `key`.
fn error_of(payload: &str, key: &str) -> String {
    let errors = rejected(payload);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, key);
    errors[0].1.clone()
}

fn parse(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).expect("payload is JSON")
}

#[test]
fn valid_writes_keep_request_order_and_echo_id() {
    let r = ok(r#"{"pump": true, "$id": "abc", "setpoint": 21.5, "gear": "fast"}"#);
    assert_eq!(r.id, Some(json!("abc")));
    assert_eq!(
        r.writes,
        vec![
            (1, Value::Bool(true)),
            (0, Value::Int(215)),
            (2, Value::Uint(2))
        ]
    );
    let r = ok(r#"{"gear": "slow", "pump": false}"#);
    assert_eq!(r.id, None);
    assert_eq!(r.writes, vec![(2, Value::Uint(0)), (1, Value::Bool(false))]);
}

#[test]
fn any_scalar_id_is_echoed() {
    for id in [json!(7), json!(true), json!(null), json!("x")] {
        let payload = json!({"$id": id.clone(), "pump": true}).to_string();
        assert_eq!(ok(&payload).id, Some(id));
    }
    let e = rejected(r#"{"$id": [1], "pump": true}"#);
    assert_eq!(e[0].0, "$id");
    assert_eq!(
        e[0].1,
        "expected a string, number, boolean or null, got an array"
    );
}

#[test]
fn other_dollar_keys_are_errors() {
    assert_eq!(
        error_of(r#"{"$qos": 1, "pump": true}"#, "$qos"),
        "unknown control key; the only one allowed is \"$id\""
    );
}

#[test]
fn all_problems_are_reported_with_the_id() {
    let e = set(
        r#"{"$id": 9, "nope": 1, "temperature": 20, "pump": 1, "setpoint": 50, "label": "ok"}"#,
    )
    .expect_err("rejected");
    assert_eq!(e.id, Some(json!(9)));
    let keys: Vec<&str> = e.errors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["nope", "temperature", "pump", "setpoint"]);
}

#[test]
fn unknown_property_names_the_writable_ones() {
    assert_eq!(
        error_of(r#"{"nope": 1}"#, "nope"),
        "unknown property; writable properties: setpoint, pump, gear, label, key, level, counter, small, offset, ratio"
    );
    assert!(error_of(r#"{"setpont": 1}"#, "setpont").starts_with(
        "unknown property (did you mean \"setpoint\"?); writable properties: setpoint,"
    ));
    let read_only = device(vec![prop("t", DataType::Int16)]);
    let e = parse_set(br#"{"x": 1}"#, PayloadEncode::Raw, &read_only).expect_err("rejected");
    assert_eq!(
        e.errors,
        [(
            "x".to_owned(),
            "unknown property; this device has no writable properties".to_owned()
        )]
    );
}

#[test]
fn read_only_property() {
    assert_eq!(
        error_of(r#"{"temperature": 20}"#, "temperature"),
        "property is read-only"
    );
}

#[test]
fn json_types_must_match() {
    assert_eq!(
        error_of(r#"{"pump": 1}"#, "pump"),
        "expected true or false, got a number"
    );
    assert_eq!(
        error_of(r#"{"pump": "on"}"#, "pump"),
        "expected true or false, got a string"
    );
    assert_eq!(
        error_of(r#"{"setpoint": "21"}"#, "setpoint"),
        "expected a number, got a string"
    );
    assert_eq!(
        error_of(r#"{"counter": null}"#, "counter"),
        "expected a number, got null"
    );
    assert_eq!(
        error_of(r#"{"label": 5}"#, "label"),
        "expected a string, got a number"
    );
    assert_eq!(
        error_of(r#"{"key": [1]}"#, "key"),
        "expected a hex string of bytes, got an array"
    );
}

#[test]
fn strings_and_bytes() {
    let r = ok(r#"{"label": "hello", "key": "00aBff"}"#);
    assert_eq!(
        r.writes,
        vec![
            (4, Value::String("hello".to_owned())),
            (5, Value::Bytes(vec![0x00, 0xab, 0xff]))
        ]
    );
    assert_eq!(
        error_of(r#"{"key": "abc"}"#, "key"),
        "expected an even-length hex string, got 3 characters"
    );
    assert_eq!(
        error_of(r#"{"key": "0g"}"#, "key"),
        "expected a hex string, found 'g' at position 1"
    );
}

#[test]
fn enum_takes_labels_only() {
    assert_eq!(
        error_of(r#"{"gear": "turbo"}"#, "gear"),
        "unknown label \"turbo\"; allowed: \"slow\", \"middle\", \"fast\""
    );
    assert_eq!(
        error_of(r#"{"gear": 2}"#, "gear"),
        "expected one of the labels \"slow\", \"middle\", \"fast\", got a number"
    );
}

#[test]
fn min_and_max_in_published_units() {
    assert_eq!(ok(r#"{"setpoint": 5}"#).writes, vec![(0, Value::Int(50))]);
    assert_eq!(ok(r#"{"setpoint": 30}"#).writes, vec![(0, Value::Int(300))]);
    assert_eq!(
        error_of(r#"{"setpoint": 4.9}"#, "setpoint"),
        "4.9 is below the minimum 5"
    );
    assert_eq!(
        error_of(r#"{"setpoint": 30.5}"#, "setpoint"),
        "30.5 is above the maximum 30"
    );
}

#[test]
fn inverse_scaling_rounds_to_nearest() {
    assert_eq!(
        ok(r#"{"setpoint": 21.37}"#).writes,
        vec![(0, Value::Int(214))]
    );
    assert_eq!(
        ok(r#"{"setpoint": 22.35}"#).writes,
        vec![(0, Value::Int(224))]
    );
    // raw = (v - offset) / scale = (-45 + 40) / 0.5
    assert_eq!(ok(r#"{"offset": -45}"#).writes, vec![(9, Value::Int(-10))]);
    assert_eq!(
        ok(r#"{"small": -12.8}"#).writes,
        vec![(8, Value::Int(-128))]
    );
}

#[test]
fn scaled_value_must_fit_the_raw_type() {
    assert_eq!(
        error_of(r#"{"small": 300}"#, "small"),
        "300 does not fit int8 after scaling (raw 3000)"
    );
    assert_eq!(
        error_of(r#"{"small": -12.9}"#, "small"),
        "-12.9 does not fit int8 after scaling (raw -129)"
    );
}

#[test]
fn unscaled_integers_are_exact_and_range_checked() {
    assert_eq!(
        ok(r#"{"counter": 18446744073709551615}"#).writes,
        vec![(7, Value::Uint(u64::MAX))]
    );
    assert_eq!(ok(r#"{"counter": 3.0}"#).writes, vec![(7, Value::Uint(3))]);
    assert_eq!(
        error_of(r#"{"counter": -1}"#, "counter"),
        "-1 does not fit uint64"
    );
    assert_eq!(
        error_of(r#"{"counter": 1.5}"#, "counter"),
        "expected an integer for uint64, got 1.5"
    );
}

#[test]
fn floats_overflow_and_non_finite() {
    let r = ok(r#"{"level": 21.1}"#);
    assert_eq!(r.writes, vec![(6, Value::Float(f64::from(21.1f32)))]);
    assert_eq!(
        error_of(r#"{"level": 1e39}"#, "level"),
        "1e+39 does not fit float32"
    );
    assert_eq!(
        error_of(r#"{"ratio": 1e10}"#, "ratio"),
        "10000000000.0 is not finite after scaling"
    );
    let scaled_f32 = device(vec![w("tiny", DataType::Float32).with(|d| {
        d.scale = Some(1e-10);
    })]);
    let e = parse_set(br#"{"tiny": 1e30}"#, PayloadEncode::Raw, &scaled_f32).expect_err("overflow");
    assert_eq!(
        e.errors[0].1,
        "1e+30 does not fit float32 after scaling (raw 10000000000000000000000000000000000000000)"
    );
    // Numbers beyond f64 cannot even be parsed as JSON.
    let e = error_of(r#"{"level": 1e400}"#, "$payload");
    assert!(e.starts_with("not JSON: "), "{e}");
}

#[test]
fn bad_payloads() {
    let e = error_of("{not json", "$payload");
    assert!(e.starts_with("not JSON: "), "{e}");
    assert_eq!(
        error_of("[1, 2]", "$payload"),
        "expected a JSON object of property values, got an array"
    );
    assert_eq!(
        error_of("\"x\"", "$payload"),
        "expected a JSON object of property values, got a string"
    );
    assert_eq!(error_of("{}", "$payload"), "no properties to set");
    assert_eq!(
        error_of(r#"{"$id": 1}"#, "$payload"),
        "no properties to set"
    );
    assert_eq!(
        set(r#"{"$id": 1}"#).expect_err("rejected").id,
        Some(json!(1))
    );
}

/// A valid `{"label": "xxxx…"}` payload of exactly `len` bytes.
fn padded(len: usize) -> Vec<u8> {
    let overhead = r#"{"label":""}"#.len();
    format!(r#"{{"label":"{}"}}"#, "x".repeat(len - overhead)).into_bytes()
}

#[test]
fn size_limit_is_64_kib_inclusive() {
    let device = boiler();
    let exact = padded(MAX_SET_PAYLOAD);
    assert_eq!(exact.len(), 65536);
    assert!(parse_set(&exact, PayloadEncode::Raw, &device).is_ok());
    let over = padded(MAX_SET_PAYLOAD + 1);
    let e = parse_set(&over, PayloadEncode::Raw, &device).expect_err("too large");
    assert_eq!(
        e.errors,
        [(
            "$payload".to_owned(),
            "payload is too large: more than 65536 bytes".to_owned()
        )]
    );
}

#[test]
fn size_limit_counts_bytes_before_base64_decoding() {
    let device = boiler();
    let b64 = base64::engine::general_purpose::STANDARD;
    // 49152 JSON bytes encode to exactly 65536 base64 bytes.
    let fits = b64.encode(padded(49_152));
    assert_eq!(fits.len(), 65536);
    assert!(parse_set(fits.as_bytes(), PayloadEncode::Base64, &device).is_ok());
    let too_big = b64.encode(padded(49_153));
    assert!(too_big.len() > MAX_SET_PAYLOAD);
    let e = parse_set(too_big.as_bytes(), PayloadEncode::Base64, &device).expect_err("too large");
    assert!(e.errors[0].1.starts_with("payload is too large"), "{e:?}");
}

#[test]
fn base64_requests() {
    let device = boiler();
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.encode(r#"{"$id": "b", "pump": true}"#);
    let r = parse_set(
        format!("{payload}\n").as_bytes(),
        PayloadEncode::Base64,
        &device,
    )
    .expect("valid");
    assert_eq!(r.id, Some(json!("b")));
    assert_eq!(r.writes, vec![(1, Value::Bool(true))]);

    let e = parse_set(b"{\"pump\": true}", PayloadEncode::Base64, &device).expect_err("not base64");
    assert!(
        e.errors[0].1.starts_with("payload is not valid base64: "),
        "{e:?}"
    );
    // Padding is optional.
    let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(r#"{"pump":true}"#);
    assert!(!unpadded.ends_with('='));
    assert!(parse_set(unpadded.as_bytes(), PayloadEncode::Base64, &device).is_ok());
    // Raw mode does not decode.
    let e = parse_set(payload.as_bytes(), PayloadEncode::Raw, &device).expect_err("not JSON");
    assert!(e.errors[0].1.starts_with("not JSON: "), "{e:?}");
}

#[test]
fn result_payload_success() {
    let device = boiler();
    let r = ok(r#"{"$id": "r1", "gear": "middle", "setpoint": 21.37, "level": 21.1, "key": "0A"}"#);
    let payload = result_payload(&device, &r, r.writes.len(), None);
    let text = std::str::from_utf8(&payload).expect("UTF-8");
    assert!(text.starts_with(r#"{"$id":"r1","ok":true,"applied":{"gear":"middle","setpoint":21.4,"level":21.1,"key":"0a"}"#), "{text}");
    assert_eq!(
        parse(&payload),
        json!({"$id": "r1", "ok": true,
               "applied": {"gear": "middle", "setpoint": 21.4, "level": 21.1, "key": "0a"},
               "errors": {}})
    );
}

#[test]
fn result_payload_device_refusal_stops_the_writes() {
    let device = boiler();
    let r = ok(r#"{"pump": true, "setpoint": 20, "gear": "fast"}"#);
    let err = DriverError::new(ErrorKind::Exception, "illegal data value");
    let payload = result_payload(&device, &r, 1, Some((1, &err)));
    assert_eq!(
        parse(&payload),
        json!({"ok": false, "applied": {"pump": true}, "errors": {"setpoint": "illegal data value"}})
    );
    assert!(!std::str::from_utf8(&payload)
        .expect("UTF-8")
        .contains("$id"));
}

#[test]
fn result_payload_incomplete_without_a_reason() {
    let device = boiler();
    let r = ok(r#"{"pump": true, "gear": "fast"}"#);
    assert_eq!(
        parse(&result_payload(&device, &r, 1, None)),
        json!({"ok": false, "applied": {"pump": true},
               "errors": {"$payload": "only 1 of 2 writes reached the device"}})
    );
}

#[test]
fn rejection_payload_lists_every_error() {
    let e = set(r#"{"$id": 3, "pump": 1, "gear": "x"}"#).expect_err("rejected");
    let payload = rejection_payload(&e);
    let text = std::str::from_utf8(&payload).expect("UTF-8");
    assert!(
        text.starts_with(r#"{"$id":3,"ok":false,"applied":{},"errors":{"pump":"#),
        "{text}"
    );
    assert_eq!(
        parse(&payload),
        json!({"$id": 3, "ok": false, "applied": {}, "errors": {
            "pump": "expected true or false, got a number",
            "gear": "unknown label \"x\"; allowed: \"slow\", \"middle\", \"fast\""
        }})
    );
    let e = set("[]").expect_err("rejected");
    assert_eq!(
        parse(&rejection_payload(&e)),
        json!({"ok": false, "applied": {}, "errors": {
            "$payload": "expected a JSON object of property values, got an array"}})
    );
}

#[test]
fn thousands_of_unknown_keys_give_a_small_result_listing_the_writable_ones_once() {
    // Three-letter keys: 8 000 of them just fit in the 64 KiB a `$set` may have.
    let letters = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let key = |i: usize| -> String {
        [i / 2704, i / 52 % 52, i % 52]
            .iter()
            .map(|&d| letters[d] as char)
            .collect()
    };
    let keys: Vec<String> = (0..8000).map(|i| format!("\"{}\":0", key(i))).collect();
    let payload = format!("{{\"$id\":\"flood\",{}}}", keys.join(","));
    assert!(payload.len() <= MAX_SET_PAYLOAD);
    let e = set(&payload).expect_err("rejected");
    assert_eq!(e.errors.len(), 8000);
    let result = rejection_payload(&e);
    assert!(result.len() <= super::MAX_RESULT, "{} bytes", result.len());
    let v: serde_json::Value = serde_json::from_slice(&result).unwrap();
    assert_eq!(v["$id"], "flood");
    let errors = v["errors"].as_object().unwrap();
    assert_eq!(errors.len(), super::MAX_LISTED_ERRORS + 1, "{v}");
    assert_eq!(errors["$more"], 8000 - super::MAX_LISTED_ERRORS);
    let text = String::from_utf8_lossy(&result);
    assert_eq!(
        text.matches("writable properties: setpoint").count(),
        1,
        "{text}"
    );
    assert!(e.summary().len() < 1024, "{}", e.summary());
}

#[test]
fn a_huge_key_is_cut_in_the_result() {
    let payload = format!("{{\"{}\": 1}}", "x".repeat(60_000));
    let e = set(&payload).expect_err("rejected");
    let result = rejection_payload(&e);
    assert!(result.len() < 2048, "{} bytes", result.len());
}

/// A writable `setpoint` (int16) scaled by `SP_SF` (int16, read-only).
fn scaled_by_factor() -> DeviceSettings {
    device(vec![
        w("setpoint", DataType::Int16).with(|d| {
            d.scale_factor = Some(crate::config::resolved::ScaleFactorRef {
                name: "SP_SF".into(),
                index: 1,
            });
            d.max = Some(1000.0);
        }),
        prop("SP_SF", DataType::Int16),
    ])
}

/// The device's state after one poll reading `SP_SF` as `sf`.
fn state_with_factor(settings: &DeviceSettings, sf: Result<i64, &str>) -> DeviceState {
    let settings = std::sync::Arc::new(settings.clone());
    let mut state = DeviceState::new(&settings);
    let value = sf
        .map(Value::Int)
        .map_err(|e| DriverError::new(ErrorKind::Timeout, e));
    let readings = fieldgate_drivers::Readings {
        at: std::time::SystemTime::now(),
        cause: fieldgate_drivers::ReadCause::Poll,
        values: vec![(0, Ok(Value::Int(0))), (1, value)],
        duration: None,
    };
    state.apply(&readings, std::time::Instant::now());
    state
}

#[test]
fn set_with_scale_factor_applies_the_inverse_of_its_current_reading() {
    let device = scaled_by_factor();
    let state = state_with_factor(&device, Ok(-1));
    let r = super::parse_set_in(
        br#"{"setpoint": 23.5}"#,
        PayloadEncode::Raw,
        &device,
        &state,
    )
    .expect("valid");
    assert_eq!(r.writes, vec![(0, Value::Int(235))]);
    assert_eq!(r.exponents, vec![Some(-1)]);
    // The result reports the applied value in published units.
    assert_eq!(
        parse(&result_payload(&device, &r, 1, None))["applied"],
        json!({"setpoint": 23.5})
    );
    // Positive exponent: 1200 / 10^2 = 12 raw; a value between steps rounds.
    let state = state_with_factor(&device, Ok(2));
    let r = super::parse_set_in(
        br#"{"setpoint": 1249}"#,
        PayloadEncode::Raw,
        &device,
        &state,
    );
    assert!(r.is_err(), "max 1000 is in published units: {r:?}");
    let r = super::parse_set_in(br#"{"setpoint": 949}"#, PayloadEncode::Raw, &device, &state)
        .expect("valid");
    assert_eq!(r.writes, vec![(0, Value::Int(9))]);
    assert_eq!(
        parse(&result_payload(&device, &r, 1, None))["applied"],
        json!({"setpoint": 900.0})
    );
    // Past the raw type after the inverse.
    let state = state_with_factor(&device, Ok(-3));
    let e = super::parse_set_in(br#"{"setpoint": 40}"#, PayloadEncode::Raw, &device, &state)
        .expect_err("40000 does not fit int16");
    assert_eq!(
        e.errors,
        vec![(
            "setpoint".to_owned(),
            "40 does not fit int16 after scaling (raw 40000)".to_owned()
        )]
    );
}

#[test]
fn set_with_unknown_scale_factor_is_rejected_and_nothing_written() {
    let device = scaled_by_factor();
    let cases = [
        (
            state_with_factor(&device, Ok(-32768)),
            "cannot convert to the raw value: scale factor SP_SF is not implemented by the device (reads -32768, 0x8000)",
        ),
        (
            state_with_factor(&device, Err("timeout after 1s")),
            "cannot convert to the raw value: scale factor SP_SF unavailable: timeout after 1s",
        ),
        (
            DeviceState::new(&std::sync::Arc::new(device.clone())),
            "cannot convert to the raw value: scale factor SP_SF not read yet",
        ),
    ];
    for (state, want) in cases {
        let e = super::parse_set_in(br#"{"setpoint": 21}"#, PayloadEncode::Raw, &device, &state)
            .expect_err("rejected");
        assert_eq!(e.errors, vec![("setpoint".to_owned(), want.to_owned())]);
    }
    // Without a running device's readings (parse_set) too.
    let e = super::parse_set(br#"{"setpoint": 21}"#, PayloadEncode::Raw, &device)
        .expect_err("rejected");
    assert_eq!(
        e.errors[0].1,
        "cannot convert to the raw value: scale factor SP_SF not read yet"
    );
}
