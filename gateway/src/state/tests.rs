//! Unit tests of normalization, the payload shape and the publish policy,
//! plus the hand-built device settings the command tests share.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldgate_drivers::dummy::Generator;
use fieldgate_drivers::{
    Connection, DataType, DeviceSpec, DriverError, ErrorKind, PropertyAddress, PropertySpec,
    ReadCause, Readings, Value,
};
use serde_json::json;

use super::{meta_payload, DeviceState};
use crate::config::resolved::{
    DeviceSettings, EnumEntry, MessageSettings, PropertySemantics, PublishPolicy,
};
use crate::config::types::{DriverKind, PayloadEncode};

/// A property of `data_type` with no semantics beyond its name.
pub(crate) fn prop(name: &str, data_type: DataType) -> PropertySemantics {
    PropertySemantics::new(name, data_type, false)
}

/// Enum entries from `(raw, label)` pairs.
pub(crate) fn entries(pairs: &[(Value, &str)]) -> Box<[EnumEntry]> {
    pairs
        .iter()
        .map(|(raw, label)| EnumEntry {
            raw: raw.clone(),
            label: (*label).to_owned(),
        })
        .collect()
}

/// A simulated device named `boiler` with these properties and policy.
pub(crate) fn device_with(props: Vec<PropertySemantics>, publish: PublishPolicy) -> DeviceSettings {
    let spec_props = props
        .iter()
        .map(|p| PropertySpec {
            name: p.name.clone(),
            data_type: p.data_type,
            writable: p.writable,
            address: PropertyAddress::Simulated(Generator::Constant(Value::Int(0))),
        })
        .collect();
    DeviceSettings {
        name: "boiler".to_owned(),
        driver: DriverKind::Dummy,
        spec: DeviceSpec {
            name: "boiler".to_owned(),
            sync_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            connection: Connection::Dummy,
            properties: spec_props,
        },
        properties: props,
        publish,
        session: 0,
        message: MessageSettings {
            topic: "fieldgate/default/boiler".to_owned(),
            payload_encode: PayloadEncode::Raw,
            qos: 0,
            retained: false,
            wait_timeout: Duration::ZERO,
            state_props: Default::default(),
            result_props: Default::default(),
            response_topics: Default::default(),
            command_rate: crate::config::resolved::DEFAULT_COMMAND_RATE,
        },
    }
}

/// A device that publishes after every poll.
pub(crate) fn device(props: Vec<PropertySemantics>) -> DeviceSettings {
    device_with(
        props,
        PublishPolicy {
            on_change: false,
            heartbeat: Duration::ZERO,
        },
    )
}

/// 2026-11-21T10:00:00.123Z
fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_255_200_123)
}

/// Readings taken at [`at`].
fn readings(cause: ReadCause, values: Vec<(usize, Result<Value, DriverError>)>) -> Readings {
    Readings {
        at: at(),
        cause,
        values,
        duration: None,
    }
}

/// A poll of these values, all successful.
fn poll(values: Vec<(usize, Value)>) -> Readings {
    readings(
        ReadCause::Poll,
        values.into_iter().map(|(i, v)| (i, Ok(v))).collect(),
    )
}

/// Parses a payload.
fn parse(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).expect("payload is JSON")
}

/// The payload text.
fn text(payload: &[u8]) -> &str {
    std::str::from_utf8(payload).expect("payload is UTF-8")
}

/// Applies one poll of one property `p` to a fresh every-poll device.
fn single(p: PropertySemantics, raw: Value) -> serde_json::Value {
    let settings = device(vec![p]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let payload = state
        .apply(&poll(vec![(0, raw)]), Instant::now())
        .expect("every poll publishes");
    parse(&payload)
}

/// Published value of property `p` for `raw`.
fn published(p: PropertySemantics, raw: Value) -> serde_json::Value {
    let name = p.name.clone();
    single(p, raw)["properties"][&*name].clone()
}

fn scaled(
    name: &str,
    data_type: DataType,
    scale: Option<f64>,
    offset: Option<f64>,
) -> PropertySemantics {
    prop(name, data_type).with(|d| {
        d.scale = scale;
        d.offset = offset;
    })
}

#[test]
fn payload_shape_and_timestamp() {
    let settings = device(vec![
        prop("temperature", DataType::Float64),
        prop("pump", DataType::Bool),
    ]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let payload = state
        .apply(
            &poll(vec![(0, Value::Float(21.5)), (1, Value::Bool(true))]),
            Instant::now(),
        )
        .expect("published");
    assert_eq!(
        text(&payload),
        r#"{"name":"boiler","timestamp":"2026-11-21T10:00:00.123Z","properties":{"temperature":21.5,"pump":true}}"#
    );
}

#[test]
fn timestamp_out_of_formatter_range_is_clamped() {
    let settings = device(vec![prop("x", DataType::Bool)]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let mut r = poll(vec![(0, Value::Bool(false))]);
    r.at = UNIX_EPOCH - Duration::from_secs(10);
    let v = parse(&state.apply(&r, Instant::now()).expect("published"));
    assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000Z");
}

#[test]
fn property_order_follows_the_device_not_the_readings() {
    let settings = device(vec![
        prop("b", DataType::Int16),
        prop("a", DataType::Int16),
        prop("c", DataType::Int16),
    ]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let payload = state
        .apply(
            &poll(vec![
                (2, Value::Int(3)),
                (0, Value::Int(1)),
                (1, Value::Int(2)),
            ]),
            Instant::now(),
        )
        .expect("published");
    assert!(text(&payload).contains(r#""properties":{"b":1,"a":2,"c":3}"#));
}

#[test]
fn name_and_keys_are_escaped() {
    let mut settings = device(vec![prop("a\"b", DataType::Bool)]);
    settings.name = "we\\ird".to_owned();
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let v = parse(
        &state
            .apply(&poll(vec![(0, Value::Bool(true))]), Instant::now())
            .expect("published"),
    );
    assert_eq!(v["name"], "we\\ird");
    assert_eq!(v["properties"]["a\"b"], true);
}

#[test]
fn integers_without_scaling_stay_exact() {
    let settings = device(vec![
        prop("big", DataType::Uint64),
        prop("neg", DataType::Int64),
    ]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let payload = state
        .apply(
            &poll(vec![(0, Value::Uint(u64::MAX)), (1, Value::Int(i64::MIN))]),
            Instant::now(),
        )
        .expect("published");
    assert!(text(&payload)
        .contains(r#""properties":{"big":18446744073709551615,"neg":-9223372036854775808}"#));
}

#[test]
fn scale_and_offset_on_integers_publish_floats() {
    assert_eq!(
        published(
            scaled("t", DataType::Int16, Some(0.1), None),
            Value::Int(-123)
        ),
        json!(-12.3)
    );
    assert_eq!(
        published(
            scaled("t", DataType::Uint16, Some(0.1), None),
            Value::Uint(3)
        ),
        json!(0.3)
    );
    assert_eq!(
        published(
            scaled("t", DataType::Int16, None, Some(-40.0)),
            Value::Int(-5)
        ),
        json!(-45.0)
    );
    assert_eq!(
        published(
            scaled("t", DataType::Uint8, Some(2.0), Some(1.5)),
            Value::Uint(10)
        ),
        json!(21.5)
    );
    // A whole result is still a float.
    let v = single(
        scaled("t", DataType::Int16, Some(1.0), None),
        Value::Int(22),
    );
    assert!(v["properties"]["t"].is_f64());
}

#[test]
fn float32_uses_its_shortest_representation() {
    let settings = device(vec![
        prop("t", DataType::Float32),
        prop("d", DataType::Float64),
    ]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let payload = state
        .apply(
            &poll(vec![
                (0, Value::Float(f64::from(21.1f32))),
                (1, Value::Float(f64::from(21.1f32))),
            ]),
            Instant::now(),
        )
        .expect("published");
    assert!(text(&payload).contains(r#""t":21.1,"d":21.100000381469727"#));
    // Scaled float32: scaling starts from the shortest value.
    assert_eq!(
        published(
            scaled("t", DataType::Float32, Some(10.0), None),
            Value::Float(f64::from(0.1f32))
        ),
        json!(1.0)
    );
}

#[test]
fn enum_labels_and_unknown_raw_values() {
    let gear = prop("gear", DataType::Uint16).with(|d| {
        d.enum_entries = entries(&[
            (Value::Uint(0), "slow"),
            (Value::Uint(1), "middle"),
            (Value::Uint(2), "fast"),
        ]);
    });
    let settings = device(vec![gear]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let v = parse(
        &state
            .apply(&poll(vec![(0, Value::Uint(2))]), Instant::now())
            .expect("published"),
    );
    assert_eq!(v["properties"]["gear"], "fast");
    let v = parse(
        &state
            .apply(&poll(vec![(0, Value::Uint(7))]), Instant::now())
            .expect("published"),
    );
    assert_eq!(v["properties"]["gear"], 7);
    assert!(v.get("errors").is_none());
}

#[test]
fn bool_enum_labels() {
    let p = prop("power", DataType::Bool).with(|d| {
        d.enum_entries = entries(&[(Value::Bool(false), "off"), (Value::Bool(true), "on")]);
    });
    assert_eq!(published(p, Value::Bool(true)), json!("on"));
}

#[test]
fn strings_drop_trailing_nul_and_space() {
    assert_eq!(
        published(
            prop("serial", DataType::String),
            Value::String(" SN 42\0 \0\0".to_owned())
        ),
        json!(" SN 42")
    );
}

#[test]
fn bytes_are_lowercase_hex() {
    assert_eq!(
        published(
            prop("raw", DataType::Bytes),
            Value::Bytes(vec![0x00, 0xAB, 0x1f])
        ),
        json!("00ab1f")
    );
}

#[test]
fn non_finite_values_become_errors() {
    for raw in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let v = single(prop("t", DataType::Float64), Value::Float(raw));
        assert_eq!(v["properties"], json!({}));
        assert_eq!(v["errors"], json!({"t": "value is not finite"}));
    }
    // Overflow by scaling is not finite either.
    let v = single(
        scaled("t", DataType::Float64, Some(1e308), None),
        Value::Float(1e10),
    );
    assert_eq!(v["errors"], json!({"t": "value is not finite"}));
}

#[test]
fn errors_replace_values_and_partial_readings_merge() {
    let settings = device(vec![
        prop("temperature", DataType::Float64),
        prop("flow", DataType::Uint16),
        prop("never", DataType::Bool),
    ]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let now = Instant::now();
    let v = parse(
        &state
            .apply(
                &poll(vec![(0, Value::Float(21.5)), (1, Value::Uint(7))]),
                now,
            )
            .expect("published"),
    );
    assert_eq!(v["properties"], json!({"temperature": 21.5, "flow": 7}));
    assert!(v.get("errors").is_none());

    let timeout = DriverError::timeout(Duration::from_secs(1));
    let v = parse(
        &state
            .apply(&readings(ReadCause::Poll, vec![(1, Err(timeout))]), now)
            .expect("published"),
    );
    // No stale value; the never-read property is in neither map.
    assert_eq!(v["properties"], json!({"temperature": 21.5}));
    assert_eq!(v["errors"], json!({"flow": "timeout after 1s"}));

    let v = parse(
        &state
            .apply(&poll(vec![(1, Value::Uint(8))]), now)
            .expect("published"),
    );
    assert_eq!(v["properties"], json!({"temperature": 21.5, "flow": 8}));
    assert!(v.get("errors").is_none());
}

#[test]
fn out_of_range_indices_are_ignored() {
    let settings = device(vec![prop("a", DataType::Bool)]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let v = parse(
        &state
            .apply(
                &poll(vec![(5, Value::Bool(true)), (0, Value::Bool(false))]),
                Instant::now(),
            )
            .expect("published"),
    );
    assert_eq!(v["properties"], json!({"a": false}));
}

fn on_change(props: Vec<PropertySemantics>, heartbeat: Duration) -> DeviceState {
    DeviceState::new(&Arc::new(device_with(
        props,
        PublishPolicy {
            on_change: true,
            heartbeat,
        },
    )))
}

#[test]
fn every_poll_publishes_without_on_change() {
    let settings = device(vec![prop("a", DataType::Int32)]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    let now = Instant::now();
    for _ in 0..3 {
        assert!(state.apply(&poll(vec![(0, Value::Int(1))]), now).is_some());
    }
    assert_eq!(state.heartbeat_due(), None);
}

#[test]
fn on_change_publishes_first_and_changed_readings_only() {
    let mut state = on_change(vec![prop("a", DataType::Int32)], Duration::ZERO);
    let now = Instant::now();
    assert!(state.apply(&poll(vec![(0, Value::Int(1))]), now).is_some());
    assert!(state.apply(&poll(vec![(0, Value::Int(1))]), now).is_none());
    assert!(state.apply(&poll(vec![(0, Value::Int(2))]), now).is_some());
    assert!(state.apply(&poll(vec![(0, Value::Int(2))]), now).is_none());
}

#[test]
fn first_readings_publish_even_when_empty() {
    let mut state = on_change(vec![prop("a", DataType::Int32)], Duration::ZERO);
    let v = parse(
        &state
            .apply(&poll(Vec::new()), Instant::now())
            .expect("first publish"),
    );
    assert_eq!(v["properties"], json!({}));
}

#[test]
fn deadband_is_strictly_more_than() {
    let p = scaled("t", DataType::Int16, Some(0.1), None).with(|d| {
        d.deadband = Some(0.5);
    });
    let mut state = on_change(vec![p], Duration::ZERO);
    let now = Instant::now();
    assert!(state
        .apply(&poll(vec![(0, Value::Int(215))]), now)
        .is_some());
    // 22.0 - 21.5 = 0.5: not more than the deadband.
    assert!(state
        .apply(&poll(vec![(0, Value::Int(220))]), now)
        .is_none());
    // Drift is measured from the last published value (21.5), not the last read.
    assert!(state
        .apply(&poll(vec![(0, Value::Int(211))]), now)
        .is_none());
    let v = parse(
        &state
            .apply(&poll(vec![(0, Value::Int(221))]), now)
            .expect("0.6 is more than 0.5"),
    );
    assert_eq!(v["properties"]["t"], json!(22.1));
    assert!(state
        .apply(&poll(vec![(0, Value::Int(216))]), now)
        .is_none());
    assert!(state
        .apply(&poll(vec![(0, Value::Int(215))]), now)
        .is_some());
}

#[test]
fn deadband_applies_per_property_and_non_numbers_always_count() {
    let props = vec![
        prop("n", DataType::Uint32).with(|d| {
            d.deadband = Some(10.0);
        }),
        prop("s", DataType::String).with(|d| {
            d.deadband = Some(10.0);
        }),
    ];
    let mut state = on_change(props, Duration::ZERO);
    let now = Instant::now();
    let first = poll(vec![(0, Value::Uint(100)), (1, Value::String("a".into()))]);
    assert!(state.apply(&first, now).is_some());
    assert!(state
        .apply(&poll(vec![(0, Value::Uint(110))]), now)
        .is_none());
    assert!(state
        .apply(&poll(vec![(0, Value::Uint(111))]), now)
        .is_some());
    assert!(state
        .apply(&poll(vec![(1, Value::String("b".into()))]), now)
        .is_some());
}

#[test]
fn forced_readings_always_publish() {
    let mut state = on_change(vec![prop("a", DataType::Int32)], Duration::ZERO);
    let now = Instant::now();
    assert!(state.apply(&poll(vec![(0, Value::Int(1))]), now).is_some());
    let forced = readings(ReadCause::Forced, vec![(0, Ok(Value::Int(1)))]);
    assert!(state.apply(&forced, now).is_some());
}

#[test]
fn error_changes_publish() {
    let mut state = on_change(
        vec![prop("a", DataType::Int32), prop("b", DataType::Int32)],
        Duration::ZERO,
    );
    let now = Instant::now();
    let err = |m: &str| Err(DriverError::new(ErrorKind::Exception, m));
    assert!(state.apply(&poll(vec![(0, Value::Int(1))]), now).is_some());
    // A property appearing counts as a change.
    assert!(state.apply(&poll(vec![(1, Value::Int(1))]), now).is_some());
    // Value → error.
    let r = readings(ReadCause::Poll, vec![(1, err("illegal data address"))]);
    assert!(state.apply(&r, now).is_some());
    // Same error again: nothing new.
    assert!(state.apply(&r, now).is_none());
    // Another message.
    let r = readings(ReadCause::Poll, vec![(1, err("device busy"))]);
    let v = parse(&state.apply(&r, now).expect("message changed"));
    assert_eq!(v["errors"], json!({"b": "device busy"}));
    // Error → value.
    assert!(state.apply(&poll(vec![(1, Value::Int(1))]), now).is_some());
}

#[test]
fn heartbeat_due_and_publish_now() {
    let hb = Duration::from_secs(60);
    let mut state = on_change(vec![prop("a", DataType::Int32)], hb);
    let t0 = Instant::now();
    assert_eq!(state.heartbeat_due(), None, "nothing published yet");
    assert!(state.apply(&poll(vec![(0, Value::Int(1))]), t0).is_some());
    assert_eq!(state.heartbeat_due(), Some(t0 + hb));
    assert!(state
        .apply(
            &poll(vec![(0, Value::Int(1))]),
            t0 + Duration::from_secs(59)
        )
        .is_none());
    // An unchanged poll at the due time publishes.
    assert!(state
        .apply(&poll(vec![(0, Value::Int(1))]), t0 + hb)
        .is_some());
    assert_eq!(state.heartbeat_due(), Some(t0 + hb + hb));

    let t2 = t0 + Duration::from_secs(130);
    let v = parse(&state.publish_now(t2));
    assert_eq!(v["properties"], json!({"a": 1}));
    assert_eq!(v["timestamp"], "2026-11-21T10:00:00.123Z");
    assert_eq!(state.heartbeat_due(), Some(t2 + hb));
}

#[test]
fn no_heartbeat_when_zero() {
    let mut state = on_change(vec![prop("a", DataType::Int32)], Duration::ZERO);
    assert!(state
        .apply(&poll(vec![(0, Value::Int(1))]), Instant::now())
        .is_some());
    assert_eq!(state.heartbeat_due(), None);
}

#[test]
fn meta_payload_shape() {
    let mut settings = device(vec![
        PropertySemantics {
            writable: true,
            ..prop("setpoint", DataType::Int16)
        }
        .with(|d| {
            d.scale = Some(0.1);
            d.offset = Some(-5.0);
            d.min = Some(10.0);
            d.max = Some(30.0);
            d.unit = Some("°C".into());
            d.description = Some("target temperature".into());
        }),
        PropertySemantics {
            writable: true,
            ..prop("gear", DataType::Uint8)
        }
        .with(|d| {
            d.enum_entries = entries(&[(Value::Uint(0), "slow"), (Value::Uint(2), "fast")]);
        }),
        prop("pump", DataType::Bool),
    ]);
    settings.driver = DriverKind::Modbus;
    let payload = meta_payload(&settings);
    assert_eq!(
        parse(&payload),
        json!({
            "name": "boiler",
            "driver": "modbus",
            "properties": {
                "setpoint": {
                    "type": "int16", "unit": "°C", "writable": true,
                    "description": "target temperature",
                    "min": 10.0, "max": 30.0, "scale": 0.1, "offset": -5.0
                },
                "gear": {"type": "uint8", "writable": true, "enum": {"0": "slow", "2": "fast"}},
                "pump": {"type": "bool", "writable": false}
            }
        })
    );
    // Properties keep the device order.
    let t = text(&payload);
    let (s, g, p) = (
        t.find("\"setpoint\""),
        t.find("\"gear\""),
        t.find("\"pump\""),
    );
    assert!(s < g && g < p, "{t}");
}

mod scale_factor;
