//! The example configs in `configs/` match the config schema's types
//! (every key known, every value of the right type).

use std::path::PathBuf;

use fieldgate::config::types::{ConfigFile, DriverKind};

fn example(name: &str) -> ConfigFile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn demo_config_parses() {
    let c = example("demo.yaml");
    assert_eq!(c.gateway.namespace, "demo");
    assert_eq!(c.gateway.state_directory, "/tmp/fieldgate-demo");
    assert_eq!(c.gateway.metrics.listen, "127.0.0.1:9880");
    assert_eq!(
        c.broker.as_ref().map(|b| b.listen.as_str()),
        Some("127.0.0.1:11883")
    );
    assert_eq!(
        c.mqtt.client.server, None,
        "the demo uses the embedded broker"
    );
    let names: Vec<&str> = c.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["living-room-fan", "sensors"]);
    assert!(c.devices.iter().all(|d| d.driver == DriverKind::Dummy));
    let setpoint = c.devices[1]
        .properties
        .iter()
        .find(|p| p.name == "setpoint")
        .expect("setpoint property");
    assert!(setpoint.writable);
    assert_eq!((setpoint.min, setpoint.max), (Some(5.0), Some(30.0)));
    assert!(c.devices[1].properties.iter().all(|p| p.simulate.is_some()));
}

#[test]
fn reference_config_parses() {
    let c = example("reference.yaml");
    assert_eq!(c.gateway.namespace, "plant-a");
    assert_eq!(c.mqtt.client.protocol_version, Some(4));
    assert_eq!(c.mqtt.client.message_channel_depth, Some(100));
    let drivers: Vec<DriverKind> = c.devices.iter().map(|d| d.driver).collect();
    assert_eq!(
        drivers,
        [DriverKind::Dummy, DriverKind::Dummy, DriverKind::Modbus]
    );
    let boiler = &c.devices[2];
    assert_eq!(boiler.properties.len(), 7);
    let gear = boiler
        .properties
        .iter()
        .find(|p| p.name == "gear")
        .expect("gear property");
    assert_eq!(gear.enum_labels.as_ref().map(|e| e.len()), Some(3));
}
