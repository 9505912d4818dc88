//! Generated gateway configs for the benchmark scenarios.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The namespace of every generated config (topics `fieldgate/bench/<device>`).
pub(crate) const NAMESPACE: &str = "bench";

/// The topic prefix of every generated config.
pub(crate) const PREFIX: &str = "fieldgate";

/// `devices` simulated devices with `properties` properties each, polled every
/// `interval`, alternating `counter` (uint32) and `sine` (float64)
/// generators, publishing to the broker on 127.0.0.1:`broker_port`.
pub(crate) fn dummy_config(
    devices: usize,
    properties: usize,
    interval: Duration,
    broker_port: u16,
    state_directory: &Path,
) -> String {
    let interval = humantime::format_duration(interval).to_string();
    let mut y: Vec<String> = header(
        &format!("{devices} dummy devices x {properties} properties every {interval}"),
        broker_port,
        state_directory,
    );
    for d in 0..devices {
        y.extend(dummy_device(&format!("dev-{d:05}"), properties, &interval));
    }
    y.push(String::new());
    y.join("\n")
}

/// The YAML lines of one simulated device (a `devices:` list item).
pub(crate) fn dummy_device(name: &str, properties: usize, interval: &str) -> Vec<String> {
    let mut y = vec![
        format!("  - name: {name}"),
        "    driver: dummy".into(),
        format!("    syncInterval: {interval}"),
        "    properties:".into(),
    ];
    for p in 0..properties {
        y.push(if p % 2 == 0 {
            format!(
                "      - {{ name: p{p:04}, type: uint32, simulate: {{ counter: {{ start: {p}, step: 1 }} }} }}"
            )
        } else {
            format!(
                "      - {{ name: p{p:04}, type: float64, simulate: {{ sine: {{ min: 0, max: 100, period: 60s }} }} }}"
            )
        });
    }
    y
}

/// [`dummy_config`] plus the simulated devices `extra`, appended last.
pub(crate) fn dummy_config_with(
    devices: usize,
    properties: usize,
    interval: Duration,
    broker_port: u16,
    state_directory: &Path,
    extra: &[String],
) -> String {
    let mut y = dummy_config(devices, properties, interval, broker_port, state_directory);
    let interval = humantime::format_duration(interval).to_string();
    for name in extra {
        y.push_str(&dummy_device(name, properties, &interval).join("\n"));
        y.push('\n');
    }
    y
}

/// One Modbus TCP device per endpoint with `registers` uint16 holding
/// registers (addresses 0..registers) each, polled every `interval`;
/// `max_registers_per_read` (default 125) limits the read planner.
pub(crate) fn modbus_config(
    endpoints: &[SocketAddr],
    registers: u16,
    interval: Duration,
    max_registers_per_read: Option<u16>,
    broker_port: u16,
    state_directory: &Path,
) -> String {
    modbus_config_with(
        endpoints,
        registers,
        interval,
        max_registers_per_read,
        false,
        broker_port,
        state_directory,
    )
}

/// [`modbus_config`] with every register `writable: true` (for `$set`).
pub(crate) fn modbus_writable_config(
    endpoints: &[SocketAddr],
    registers: u16,
    interval: Duration,
    broker_port: u16,
    state_directory: &Path,
) -> String {
    modbus_config_with(
        endpoints,
        registers,
        interval,
        None,
        true,
        broker_port,
        state_directory,
    )
}

fn modbus_config_with(
    endpoints: &[SocketAddr],
    registers: u16,
    interval: Duration,
    max_registers_per_read: Option<u16>,
    writable: bool,
    broker_port: u16,
    state_directory: &Path,
) -> String {
    let writable = if writable { ", writable: true" } else { "" };
    let interval = humantime::format_duration(interval).to_string();
    let devices = endpoints.len();
    let mut y: Vec<String> = header(
        &format!("{devices} Modbus TCP devices x {registers} holding registers every {interval}"),
        broker_port,
        state_directory,
    );
    for (d, endpoint) in endpoints.iter().enumerate() {
        y.push(format!("  - name: dev-{d:05}"));
        y.push("    driver: modbus".into());
        y.push(format!("    syncInterval: {interval}"));
        y.push("    timeout: 1s".into());
        y.push("    protocol:".into());
        y.push(format!("      tcp: {{ endpoint: \"{endpoint}\" }}"));
        if let Some(m) = max_registers_per_read {
            y.push(format!("      maxRegistersPerRead: {m}"));
        }
        y.push("    properties:".into());
        for r in 0..registers {
            y.push(format!(
                "      - {{ name: r{r:03}, register: holding, address: {r}, type: uint16{writable} }}"
            ));
        }
    }
    y.push(String::new());
    y.join("\n")
}

/// One OPC-UA device reading `node_ids` (all Int32) from `endpoint`, with
/// `syncInterval` = `interval` (publishing interval, or poll period with
/// `mode: poll`), publishing to the broker on 127.0.0.1:`broker_port`.
pub(crate) fn opcua_config(
    endpoint: &str,
    node_ids: &[String],
    mode: &str,
    interval: Duration,
    broker_port: u16,
    state_directory: &Path,
) -> String {
    let interval = humantime::format_duration(interval).to_string();
    let mut y: Vec<String> = header(
        &format!(
            "one OPC-UA device, {} nodes, mode {mode}, every {interval}",
            node_ids.len()
        ),
        broker_port,
        state_directory,
    );
    y.push("  - name: plc".into());
    y.push("    driver: opcua".into());
    y.push(format!("    syncInterval: {interval}"));
    y.push("    timeout: 10s".into());
    y.push("    protocol:".into());
    y.push(format!("      endpoint: \"{endpoint}\""));
    y.push(format!("      mode: {mode}"));
    y.push("    properties:".into());
    for (i, id) in node_ids.iter().enumerate() {
        y.push(format!(
            "      - {{ name: n{i:05}, nodeId: \"{id}\", type: int32 }}"
        ));
    }
    y.push(String::new());
    y.join("\n")
}

/// A generated config speaking Sparkplug B (group `bench`, edge node = the
/// namespace) instead of fieldgate's topics.
pub(crate) fn as_sparkplug(yaml: &str) -> String {
    yaml.replacen("  message:\n", "  message:\n    format: sparkplugB\n", 1)
        .replacen(
            "\ndevices:\n",
            "\n  sparkplug: { groupId: bench }\ndevices:\n",
            1,
        )
}

/// The `gateway:` and `mqtt:` sections of every generated config, up to `devices:`.
pub(crate) fn header(what: &str, broker_port: u16, state_directory: &Path) -> Vec<String> {
    vec![
        format!("# Generated by fieldgate-bench: {what}."),
        "gateway:".into(),
        format!("  namespace: {NAMESPACE}"),
        format!("  stateDirectory: \"{}\"", state_directory.display()),
        "  metrics: { listen: \"\" }".into(),
        "  log: { level: warn, format: text }".into(),
        "mqtt:".into(),
        "  client:".into(),
        format!("    server: tcp://127.0.0.1:{broker_port}"),
        "    messageChannelDepth: 10000".into(),
        "  message:".into(),
        format!("    topic: {{ prefix: {PREFIX}, with: nn }}"),
        "    qos: 0".into(),
        "devices:".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modbus_config_has_every_device_and_register() {
        let eps: Vec<SocketAddr> = vec![
            "127.0.0.1:15020".parse().unwrap(),
            "127.0.0.1:15021".parse().unwrap(),
        ];
        let y = modbus_config(
            &eps,
            3,
            Duration::from_secs(1),
            Some(1),
            18830,
            Path::new("/tmp/s"),
        );
        assert_eq!(y.matches("driver: modbus").count(), 2);
        assert_eq!(y.matches("register: holding").count(), 6);
        assert!(y.contains("tcp: { endpoint: \"127.0.0.1:15021\" }"));
        assert!(y.contains("name: r002, register: holding, address: 2, type: uint16"));
        assert!(y.contains("maxRegistersPerRead: 1"));
        assert!(y.contains("server: tcp://127.0.0.1:18830"));
        assert!(
            !modbus_config(&eps, 3, Duration::from_secs(1), None, 1, Path::new("/s"))
                .contains("maxRegistersPerRead")
        );
        assert!(!y.contains("writable"));
        let w = modbus_writable_config(&eps, 2, Duration::from_secs(1), 1, Path::new("/s"));
        assert_eq!(w.matches("writable: true").count(), 4);
        assert!(
            w.contains("name: r001, register: holding, address: 1, type: uint16, writable: true }")
        );
    }

    #[test]
    fn config_has_every_device_and_property() {
        let y = dummy_config(3, 4, Duration::from_millis(500), 18830, Path::new("/tmp/s"));
        assert_eq!(y.matches("  - name: dev-").count(), 3);
        assert_eq!(y.matches("simulate:").count(), 12);
        assert_eq!(y.matches("counter:").count(), 6);
        assert_eq!(y.matches("sine:").count(), 6);
        assert!(y.contains("syncInterval: 500ms"));
        assert!(y.contains("server: tcp://127.0.0.1:18830"));
        assert!(y.contains("stateDirectory: \"/tmp/s\""));
        assert!(y.contains("name: dev-00002"));
        assert!(y.contains("name: p0003"));
    }

    #[test]
    fn extra_devices_come_last() {
        let extra = ["added-001".to_string()];
        let y = dummy_config_with(2, 2, Duration::from_secs(1), 1, Path::new("/s"), &extra);
        assert_eq!(y.matches("  - name: ").count(), 3);
        let last = y.rfind("  - name: ").expect("a device");
        assert!(y[last..].starts_with("  - name: added-001\n"));
        assert!(y.ends_with("}\n"));
    }

    #[test]
    fn opcua_config_has_every_node() {
        let ids: Vec<String> = (0..3).map(|i| format!("ns=2;s=Load.{i}")).collect();
        let y = opcua_config(
            "opc.tcp://h:1/",
            &ids,
            "poll",
            Duration::from_secs(1),
            18830,
            Path::new("/tmp/s"),
        );
        assert_eq!(y.matches("nodeId:").count(), 3);
        assert!(y.contains("mode: poll"));
        assert!(y.contains("syncInterval: 1s"));
        assert!(y.contains("name: n00002, nodeId: \"ns=2;s=Load.2\""));
    }
}
