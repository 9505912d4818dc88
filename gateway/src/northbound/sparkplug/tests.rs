//! Unit tests: property → metric mapping, DCMD values, seq, and the
//! `mqtt.sparkplug` config rules.

use std::path::Path;

use fieldgate_drivers::{DataType as Raw, Value};

use super::metric::{birth_metric, command_json, datatype, value};
use super::proto::payload::{metric::Value as V, Metric};
use super::proto::DataType;
use crate::config::resolved::{EnumEntry, PropertySemantics, StoreSettings};
use crate::state::Published;

fn prop(t: Raw) -> PropertySemantics {
    PropertySemantics::new("p", t, true)
}

#[test]
fn datatype_follows_the_type_after_scaling() {
    let cases = [
        (Raw::Bool, DataType::Boolean),
        (Raw::Int8, DataType::Int8),
        (Raw::Int16, DataType::Int16),
        (Raw::Int32, DataType::Int32),
        (Raw::Int64, DataType::Int64),
        (Raw::Uint8, DataType::UInt8),
        (Raw::Uint16, DataType::UInt16),
        (Raw::Uint32, DataType::UInt32),
        (Raw::Uint64, DataType::UInt64),
        (Raw::Float32, DataType::Float),
        (Raw::Float64, DataType::Double),
        (Raw::String, DataType::String),
        (Raw::Bytes, DataType::Bytes),
    ];
    for (raw, dt) in cases {
        assert_eq!(datatype(&prop(raw)), dt, "{raw:?}");
    }
    // A scaled (or offset) integer or float is a Double.
    let scaled = prop(Raw::Int16).with(|d| d.scale = Some(0.1));
    assert_eq!(datatype(&scaled), DataType::Double);
    let offset = prop(Raw::Uint32).with(|d| d.offset = Some(-40.0));
    assert_eq!(datatype(&offset), DataType::Double);
    let f = prop(Raw::Float32).with(|d| d.scale = Some(2.0));
    assert_eq!(datatype(&f), DataType::Double);
    // So is an integer with a `scaleFactor` (2301 × 10^-1 = 230.1).
    let factor = prop(Raw::Uint16).with(|d| {
        d.scale_factor = Some(crate::config::resolved::ScaleFactorRef {
            name: "V_SF".into(),
            index: 1,
        })
    });
    assert_eq!(datatype(&factor), DataType::Double);
    // An enum is a String carrying the label.
    let e = prop(Raw::Uint16).with(|d| {
        d.enum_entries = vec![EnumEntry {
            raw: Value::Uint(0),
            label: "off".into(),
        }]
        .into()
    });
    assert_eq!(datatype(&e), DataType::String);
    assert_eq!(
        value(DataType::String, &Published::Label(0), &e),
        Some(V::StringValue("off".into()))
    );
}

#[test]
fn values_use_the_sparkplug_encodings() {
    let p = prop(Raw::Int16);
    // Signed types up to 32 bits: two's complement of their own width.
    assert_eq!(
        value(DataType::Int8, &Published::Int(-1), &p),
        Some(V::IntValue(255))
    );
    assert_eq!(
        value(DataType::Int16, &Published::Int(-3), &p),
        Some(V::IntValue(65533))
    );
    assert_eq!(
        value(DataType::Int32, &Published::Int(-1), &p),
        Some(V::IntValue(u32::MAX))
    );
    assert_eq!(
        value(DataType::Int64, &Published::Int(-2), &p),
        Some(V::LongValue(u64::MAX - 1))
    );
    assert_eq!(
        value(DataType::UInt64, &Published::Uint(u64::MAX), &p),
        Some(V::LongValue(u64::MAX))
    );
    assert_eq!(
        value(DataType::Double, &Published::Float(21.5), &p),
        Some(V::DoubleValue(21.5))
    );
    assert_eq!(
        value(DataType::Float, &Published::Float(0.25), &p),
        Some(V::FloatValue(0.25))
    );
    assert_eq!(
        value(DataType::Bytes, &Published::Text("00ff".into()), &p),
        Some(V::BytesValue(vec![0, 255]))
    );
    // Out of range for the datatype: no value (published as null).
    assert_eq!(value(DataType::Int8, &Published::Int(300), &p), None);
    assert_eq!(value(DataType::UInt16, &Published::Int(-1), &p), None);
}

#[test]
fn birth_metric_carries_name_alias_and_properties() {
    let p = PropertySemantics::new("setpoint", Raw::Int16, true).with(|d| {
        d.scale = Some(0.1);
        d.min = Some(5.0);
        d.unit = Some("°C".into());
        d.description = Some("boiler".into());
    });
    let m = birth_metric(42, &p, Some(&Published::Float(21.5)), 1000);
    assert_eq!(m.name.as_deref(), Some("setpoint"));
    assert_eq!(m.alias, Some(42));
    assert_eq!(m.datatype, Some(DataType::Double as u32));
    assert_eq!(m.value, Some(V::DoubleValue(21.5)));
    assert_eq!(m.timestamp, Some(1000));
    let props = m.properties.unwrap();
    assert_eq!(props.keys, ["engUnit", "description", "writable", "min"]);
    // No value yet: an explicit null.
    let m = birth_metric(1, &p, None, 1000);
    assert_eq!(m.is_null, Some(true));
    assert_eq!(m.value, None);
}

#[test]
fn dcmd_values_become_set_json() {
    let metric = |dt: DataType, v: V| Metric {
        datatype: Some(dt as u32),
        value: Some(v),
        ..Default::default()
    };
    let cases = [
        (
            metric(DataType::Int16, V::IntValue(65533)),
            serde_json::json!(-3),
        ),
        (
            metric(DataType::Int8, V::IntValue(255)),
            serde_json::json!(-1),
        ),
        (
            metric(DataType::UInt32, V::IntValue(7)),
            serde_json::json!(7),
        ),
        (
            metric(DataType::Int64, V::LongValue(u64::MAX)),
            serde_json::json!(-1),
        ),
        (
            metric(DataType::Double, V::DoubleValue(23.4)),
            serde_json::json!(23.4),
        ),
        (
            metric(DataType::String, V::StringValue("eco".into())),
            serde_json::json!("eco"),
        ),
        (
            metric(DataType::Boolean, V::BooleanValue(true)),
            serde_json::json!(true),
        ),
        (
            metric(DataType::Bytes, V::BytesValue(vec![1, 2])),
            serde_json::json!("0102"),
        ),
    ];
    for (m, want) in cases {
        assert_eq!(command_json(&m).unwrap(), want);
    }
    let null = Metric {
        is_null: Some(true),
        ..Default::default()
    };
    assert!(command_json(&null).is_err());
    let nan = metric(DataType::Double, V::DoubleValue(f64::NAN));
    assert!(command_json(&nan).is_err());
}

#[test]
fn seq_runs_0_to_255_then_0() {
    let mut seq = 0u8;
    let got: Vec<u64> = (0..258).map(|_| super::node::next_seq(&mut seq)).collect();
    assert_eq!(got[0], 0);
    assert_eq!(got[1], 1);
    assert_eq!(got[255], 255);
    assert_eq!(got[256], 0);
    assert_eq!(got[257], 1);
}

fn load(yaml: &str) -> Result<crate::config::resolved::Resolved, Vec<String>> {
    crate::config::load_str(yaml, "c.yaml", Path::new("/nonexistent"))
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

const FAN: &str = "devices:\n  - { name: fan, driver: dummy, model: fan }\n";

#[test]
fn config_resolves_the_edge_node() {
    let r = load(&format!(
        "gateway: {{ namespace: plant-a, stateDirectory: /var/lib/fg }}\nmqtt:\n  message: {{ format: sparkplugB }}\n  sparkplug: {{ groupId: g1 }}\n{FAN}"
    ))
    .unwrap();
    let s = &r.sessions[0];
    let sp = s.sparkplug.as_ref().unwrap();
    assert_eq!(sp.group_id, "g1");
    assert_eq!(sp.edge_node_id, "plant-a", "default: the namespace");
    assert_eq!(sp.primary_host_id, None);
    assert_eq!(
        sp.bdseq_file,
        Path::new("/var/lib/fg/sparkplug/g1-plant-a.bdseq")
    );
    assert_eq!(s.will.topic, "spBv1.0/g1/NDEATH/plant-a");
    assert_eq!((s.will.qos, s.will.retained), (1, false));
    // Without the format, fieldgate topics.
    let r = load(&format!("mqtt:\n  sparkplug: {{ groupId: g1 }}\n{FAN}")).unwrap();
    assert!(r.sessions[0].sparkplug.is_none());
}

#[test]
fn config_errors_are_located() {
    let e = load(&format!(
        "mqtt:\n  message: {{ format: sparkplugB }}\n{FAN}"
    ))
    .unwrap_err();
    assert!(
        e.iter()
            .any(|l| l.starts_with("c.yaml:2:22: mqtt.message.format:") && l.contains("groupId")),
        "{e:?}"
    );
    let e = load(&format!(
        "mqtt:\n  message: {{ format: sparkplugB }}\n  sparkplug: {{ groupId: a.b, edgeNodeId: \"x y\", primaryHostId: \"h#\" }}\n{FAN}"
    ))
    .unwrap_err();
    for (path, bad) in [
        ("mqtt.sparkplug.groupId", "`.`"),
        ("mqtt.sparkplug.edgeNodeId", "` `"),
        ("mqtt.sparkplug.primaryHostId", "`#`"),
    ] {
        assert!(
            e.iter()
                .any(|l| l.starts_with("c.yaml:3:") && l.contains(path) && l.contains(bad)),
            "{path}: {e:?}"
        );
    }
    // The namespace default, a device name, a device's own session, a
    // per-device format or sparkplug section, Home Assistant discovery.
    let e = load(
        "gateway: { namespace: plant.a }\nmqtt:\n  message: { format: sparkplugB }\n  sparkplug: { groupId: g }\n  discovery: { homeAssistant: { enabled: true } }\ndevices:\n  - { name: fan.1, driver: dummy, model: fan }\n  - { name: fan2, driver: dummy, model: fan, mqtt: { client: { clientId: other }, message: { format: fieldgate } } }\n",
    )
    .unwrap_err();
    for needle in [
        "mqtt.sparkplug: `plant.a` cannot be a Sparkplug edge node id",
        "c.yaml:5:", "mqtt.discovery.homeAssistant.enabled: Home Assistant discovery needs the fieldgate JSON topics",
        "devices[0].name: `fan.1` cannot be a Sparkplug device id",
        "devices[1].mqtt: with `mqtt.message.format: sparkplugB`",
        "devices[1].mqtt.message.format:",
    ] {
        assert!(e.iter().any(|l| l.contains(needle)), "{needle}: {e:?}");
    }

    // A file store is the node's history (its directory and bound); the
    // session itself keeps only what is in flight, in memory.
    let r = load(&format!(
        "mqtt:\n  message: {{ format: sparkplugB }}\n  sparkplug: {{ groupId: g }}\n  client: {{ store: {{ type: file }} }}\n{FAN}"
    ))
    .unwrap();
    let mut s = r.sessions[0].clone();
    let sp = s.sparkplug.clone().unwrap();
    assert!(matches!(s.store, StoreSettings::File { .. }));
    let (_, parts) = super::prepare(&mut s, &sp);
    assert_eq!(s.store, StoreSettings::Memory);
    assert!(matches!(
        parts.history,
        super::history::History::File { .. }
    ));
    // Discovery off beside Sparkplug is fine.
    load(&format!(
        "mqtt:\n  message: {{ format: sparkplugB }}\n  sparkplug: {{ groupId: g }}\n  discovery: {{ homeAssistant: {{ enabled: false }} }}\n{FAN}"
    ))
    .unwrap();
}
