//! Micro-benchmark of `DeviceState::apply`: prints the cost per value for a
//! mixed 20-property device, publishing every poll (values changing) and
//! on-change (values steady, nothing published). Run with
//! `cargo bench -p fieldgate --bench state_apply`.

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use fieldgate::config::resolved::{
    DeviceSettings, EnumEntry, MessageSettings, PropertySemantics, PublishPolicy,
};
use fieldgate::config::types::{DriverKind, PayloadEncode};
use fieldgate::state::DeviceState;
use fieldgate_drivers::dummy::Generator;
use fieldgate_drivers::{
    Connection, DataType, DeviceSpec, PropertyAddress, PropertySpec, ReadCause, Readings, Value,
};

/// Properties per device.
const PROPS: usize = 20;
/// Polls per measurement.
const POLLS: u64 = 200_000;

/// A property of `data_type` named `p<i>`.
fn prop(i: usize, data_type: DataType) -> PropertySemantics {
    PropertySemantics::new(format!("p{i}"), data_type, false).with(|d| d.deadband = Some(0.5))
}

/// The semantics of property `i`: scaled int16, float32, plain uint16, bool, enum, float64.
fn semantics(i: usize) -> PropertySemantics {
    match i % 6 {
        0 => prop(i, DataType::Int16).with(|d| {
            d.scale = Some(0.1);
        }),
        1 => prop(i, DataType::Float32),
        2 => prop(i, DataType::Uint16),
        3 => prop(i, DataType::Bool),
        4 => prop(i, DataType::Uint8).with(|d| {
            d.enum_entries = (0..3u64)
                .map(|raw| EnumEntry {
                    raw: Value::Uint(raw),
                    label: format!("label{raw}"),
                })
                .collect();
        }),
        _ => prop(i, DataType::Float64),
    }
}

/// Raw value of property `i` at poll `n`.
fn raw(i: usize, n: u64) -> Value {
    match i % 6 {
        0 => Value::Int(200 + (n % 50) as i64),
        1 => Value::Float(f64::from(20.0f32 + (n % 100) as f32 * 0.1)),
        2 => Value::Uint(n % 1000),
        3 => Value::Bool(n.is_multiple_of(2)),
        4 => Value::Uint(n % 3),
        _ => Value::Float(1000.0 + (n % 997) as f64 * 0.25),
    }
}

/// A device with the benchmark's properties and `publish` policy.
fn device(publish: PublishPolicy) -> DeviceSettings {
    let properties: Vec<PropertySemantics> = (0..PROPS).map(semantics).collect();
    DeviceSettings {
        name: "bench".to_owned(),
        driver: DriverKind::Dummy,
        spec: DeviceSpec {
            name: "bench".to_owned(),
            sync_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            connection: Connection::Dummy,
            properties: properties
                .iter()
                .map(|p| PropertySpec {
                    name: p.name.clone(),
                    data_type: p.data_type,
                    writable: false,
                    address: PropertyAddress::Simulated(Generator::Constant(Value::Int(0))),
                })
                .collect(),
        },
        properties,
        publish,
        session: 0,
        message: MessageSettings {
            topic: "bench".to_owned(),
            payload_encode: PayloadEncode::Raw,
            qos: 0,
            retained: false,
            wait_timeout: Duration::ZERO,
            state_props: Default::default(),
            result_props: Default::default(),
            response_topics: Default::default(),
            command_rate: fieldgate::config::resolved::DEFAULT_COMMAND_RATE,
        },
    }
}

/// Runs `POLLS` polls; `vary` makes every value change on every poll.
/// Returns (ns per value, payloads published).
fn run(publish: PublishPolicy, vary: bool) -> (f64, u64) {
    let settings = device(publish);
    let mut state = DeviceState::new(&std::sync::Arc::new(settings));
    let mut readings = Readings {
        at: SystemTime::now(),
        cause: ReadCause::Poll,
        values: (0..PROPS).map(|i| (i, Ok(raw(i, 0)))).collect(),
        duration: None,
    };
    let now = Instant::now();
    let mut published = 0u64;
    let start = Instant::now();
    for n in 0..POLLS {
        if vary {
            for (i, slot) in readings.values.iter_mut() {
                slot.clone_from(&Ok(raw(*i, n)));
            }
        }
        if let Some(payload) = state.apply(black_box(&readings), now) {
            published += 1;
            black_box(payload);
        }
    }
    let elapsed = start.elapsed();
    let per_value = elapsed.as_nanos() as f64 / (POLLS as f64 * PROPS as f64);
    (per_value, published)
}

fn main() {
    let every_poll = PublishPolicy {
        on_change: false,
        heartbeat: Duration::ZERO,
    };
    let on_change = PublishPolicy {
        on_change: true,
        heartbeat: Duration::ZERO,
    };
    for (what, policy, vary) in [
        ("every poll, values changing", every_poll, true),
        ("every poll, values steady", every_poll, false),
        ("on change, values changing", on_change, true),
        ("on change, values steady", on_change, false),
    ] {
        let (ns, published) = run(policy, vary);
        println!(
            "{what:30} {ns:8.1} ns/value  ({published} of {POLLS} polls published, {PROPS} values each)"
        );
    }
}
