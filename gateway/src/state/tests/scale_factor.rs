//! `scaleFactor`: values scaled by a power of ten read from another
//! property (SunSpec), with every way that exponent can be unusable.

use super::*;

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
