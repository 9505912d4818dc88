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

/// A property `name` of `data_type` scaled by the power of ten property
/// `index` (named `sf`) reads.
pub(crate) fn factored(
    name: &str,
    data_type: DataType,
    sf: &str,
    index: usize,
) -> PropertySemantics {
    prop(name, data_type).with(|d| {
        d.scale_factor = Some(crate::config::resolved::ScaleFactorRef {
            name: sf.into(),
            index,
        });
    })
}

/// SunSpec inverter 103 in small: `PhVphA` (uint16) scaled by `V_SF`
/// (int16), `W` (int16) by `W_SF`, with the scale factors before and after
/// their values.
fn inverter(publish: PublishPolicy) -> DeviceState {
    DeviceState::new(&Arc::new(device_with(
        vec![
            factored("PhVphA", DataType::Uint16, "V_SF", 1),
            prop("V_SF", DataType::Int16),
            prop("W_SF", DataType::Int16),
            factored("W", DataType::Int16, "W_SF", 2),
        ],
        publish,
    )))
}

fn every_poll() -> PublishPolicy {
    PublishPolicy {
        on_change: false,
        heartbeat: Duration::ZERO,
    }
}

/// Applies `values` (all read) and returns the published state.
fn apply_poll(state: &mut DeviceState, values: Vec<(usize, Value)>) -> serde_json::Value {
    parse(
        &state
            .apply(&poll(values), Instant::now())
            .expect("every poll publishes"),
    )
}

#[test]
fn scale_factor_read_in_the_same_poll_scales_the_value() {
    let mut state = inverter(every_poll());
    let v = apply_poll(
        &mut state,
        vec![
            (0, Value::Uint(2301)),
            (1, Value::Int(-1)),
            (2, Value::Int(0)),
            (3, Value::Int(8500)),
        ],
    );
    assert_eq!(
        v["properties"],
        json!({"PhVphA": 230.1, "V_SF": -1, "W_SF": 0, "W": 8500.0})
    );
    assert!(v.get("errors").is_none(), "{v}");
    // A scaled integer is a float even with exponent 0 (one type for consumers).
    let t = text(&state.publish_now(Instant::now())).to_owned();
    assert!(t.contains("\"W\":8500.0"), "{t}");
    // Positive exponents multiply; the value follows a new scale factor at once.
    let v = apply_poll(
        &mut state,
        vec![
            (0, Value::Uint(2301)),
            (1, Value::Int(-2)),
            (2, Value::Int(2)),
            (3, Value::Int(-85)),
        ],
    );
    assert_eq!(v["properties"]["PhVphA"], json!(23.01));
    assert_eq!(v["properties"]["W"], json!(-8500.0));
}

#[test]
fn unusable_scale_factors_make_the_value_an_error_with_the_reason() {
    let mut state = inverter(every_poll());
    let v = apply_poll(
        &mut state,
        vec![
            (0, Value::Uint(2301)),
            (1, Value::Int(-32768)),
            (2, Value::Int(11)),
            (3, Value::Int(8500)),
        ],
    );
    // No stale or unscaled value: absent from `properties`, named in `errors`.
    assert_eq!(v["properties"], json!({"V_SF": -32768, "W_SF": 11}));
    assert_eq!(
        v["errors"],
        json!({
            "PhVphA": "scale factor V_SF is not implemented by the device (reads -32768, 0x8000)",
            "W": "scale factor W_SF reads 11, outside -10..=10"
        })
    );
    // A failed read of the scale factor.
    let failed = readings(
        ReadCause::Poll,
        vec![
            (0, Ok(Value::Uint(2301))),
            (
                1,
                Err(DriverError::new(ErrorKind::Timeout, "timeout after 1s")),
            ),
            (2, Ok(Value::Int(0))),
            (3, Ok(Value::Int(8500))),
        ],
    );
    let v = parse(&state.apply(&failed, Instant::now()).expect("publishes"));
    assert_eq!(
        v["errors"],
        json!({"PhVphA": "scale factor V_SF unavailable: timeout after 1s", "V_SF": "timeout after 1s"})
    );
    assert_eq!(v["properties"], json!({"W_SF": 0, "W": 8500.0}));
    // The value's own failure wins over its scale factor's.
    let own = readings(
        ReadCause::Poll,
        vec![
            (
                0,
                Err(DriverError::new(ErrorKind::Exception, "illegal address")),
            ),
            (1, Ok(Value::Int(-1))),
        ],
    );
    let v = parse(&state.apply(&own, Instant::now()).expect("publishes"));
    assert_eq!(v["errors"], json!({"PhVphA": "illegal address"}));
    // And both recover with the next good poll.
    let v = apply_poll(
        &mut state,
        vec![(0, Value::Uint(2301)), (1, Value::Int(-1))],
    );
    assert_eq!(v["properties"]["PhVphA"], json!(230.1));
    assert!(v.get("errors").is_none(), "{v}");
}

#[test]
fn unsigned_scale_factor_not_implemented_is_its_largest_value() {
    let mut state = DeviceState::new(&Arc::new(device(vec![
        factored("a", DataType::Uint32, "a_sf", 1),
        prop("a_sf", DataType::Uint16),
    ])));
    let v = apply_poll(
        &mut state,
        vec![(0, Value::Uint(7)), (1, Value::Uint(0xFFFF))],
    );
    assert_eq!(
        v["errors"]["a"],
        json!("scale factor a_sf is not implemented by the device (reads 65535, 0xffff)")
    );
    let v = apply_poll(&mut state, vec![(0, Value::Uint(7)), (1, Value::Uint(3))]);
    assert_eq!(v["properties"]["a"], json!(7000.0));
}

#[test]
fn scale_factor_read_in_other_readings_uses_its_latest_value() {
    // A subscription (or another poll) delivers value and scale factor apart.
    let mut state = inverter(every_poll());
    let v = apply_poll(&mut state, vec![(0, Value::Uint(2301))]);
    assert_eq!(
        v["errors"],
        json!({"PhVphA": "scale factor V_SF not read yet"})
    );
    // The scale factor arrives alone: the kept raw value is scaled with it.
    let v = apply_poll(&mut state, vec![(1, Value::Int(-1))]);
    assert_eq!(v["properties"]["PhVphA"], json!(230.1));
    assert!(v.get("errors").is_none(), "{v}");
    // A new value alone uses the scale factor last read.
    let v = apply_poll(&mut state, vec![(0, Value::Uint(2310))]);
    assert_eq!(v["properties"]["PhVphA"], json!(231.0));
    // A changed scale factor alone rescales the value.
    let v = apply_poll(&mut state, vec![(1, Value::Int(-2))]);
    assert_eq!(v["properties"]["PhVphA"], json!(23.1));
    // Status page values agree.
    let current = state.current();
    assert_eq!(current[0], Some(Ok(json!(23.1))));
}

#[test]
fn deadband_applies_to_the_scaled_value() {
    let mut state = DeviceState::new(&Arc::new(device_with(
        vec![
            factored("PhVphA", DataType::Uint16, "V_SF", 1).with(|d| d.deadband = Some(0.5)),
            prop("V_SF", DataType::Int16),
        ],
        PublishPolicy {
            on_change: true,
            heartbeat: Duration::ZERO,
        },
    )));
    let now = Instant::now();
    let sf = |raw: u64, e: i64| poll(vec![(0, Value::Uint(raw)), (1, Value::Int(e))]);
    assert!(state.apply(&sf(2301, -1), now).is_some());
    // 230.4 - 230.1 = 0.3 V: within the band (the raw change of 3 is not).
    assert!(state.apply(&sf(2304, -1), now).is_none());
    assert!(state.apply(&sf(2306, -1), now).is_none());
    // 230.7 - 230.1 = 0.6 V: beyond it.
    let v = parse(&state.apply(&sf(2307, -1), now).expect("publishes"));
    assert_eq!(v["properties"]["PhVphA"], json!(230.7));
    // Raw unchanged, scale factor changed: the scaled value moved.
    let v = parse(&state.apply(&sf(2307, -2), now).expect("publishes"));
    assert_eq!(v["properties"]["PhVphA"], json!(23.07));
    // Raw and scale factor both changed, scaled value the same: nothing new
    // to publish (V_SF itself changed, though, and publishes).
    let v = parse(&state.apply(&sf(23070, -3), now).expect("V_SF changed"));
    assert_eq!(v["properties"]["PhVphA"], json!(23.07));
    assert!(state.apply(&sf(23070, -3), now).is_none());
    // Scale factor lost: an error change publishes.
    let v = parse(&state.apply(&sf(23070, -32768), now).expect("publishes"));
    assert!(v["errors"]["PhVphA"].is_string(), "{v}");
}

#[test]
fn scale_factor_applies_with_scale_and_offset_and_shows_in_meta() {
    let settings = device(vec![
        factored("t", DataType::Int16, "t_sf", 1).with(|d| {
            d.scale = Some(2.0);
            d.offset = Some(-40.0);
        }),
        prop("t_sf", DataType::Int8),
    ]);
    let mut state = DeviceState::new(&Arc::new(settings.clone()));
    // 415 × 2 × 10^-1 - 40 = 43
    let v = apply_poll(&mut state, vec![(0, Value::Int(415)), (1, Value::Int(-1))]);
    assert_eq!(v["properties"]["t"], json!(43.0));
    // An int8 scale factor's "not implemented" is -128 (0x80).
    let v = apply_poll(
        &mut state,
        vec![(0, Value::Int(415)), (1, Value::Int(-128))],
    );
    assert_eq!(
        v["errors"]["t"],
        json!("scale factor t_sf is not implemented by the device (reads -128, 0x80)")
    );
    let meta = parse(&meta_payload(&settings));
    assert_eq!(
        meta["properties"]["t"],
        json!({"type": "int16", "writable": false, "scale": 2.0, "offset": -40.0, "scaleFactor": "t_sf"})
    );
}
