//! The mapping property → entity config, the gateway's entities, and the
//! config keys with their located errors.

use std::path::Path;

use serde_json::{json, Value};

use super::config::Component;
use super::entity::{self, DeviceContext};
use super::gateway::{self, GatewayContext};
use crate::config::resolved::{DeviceSettings, Resolved};
use crate::config::{load_str, ConfigError};

fn load(yaml: &str) -> Result<Resolved, Vec<ConfigError>> {
    load_str(yaml, "c.yaml", Path::new("/nonexistent")).map_err(|e| e.0)
}

fn ok(yaml: &str) -> Resolved {
    load(yaml).unwrap_or_else(|e| {
        panic!(
            "unexpected errors:\n{}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn errs(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok(_) => panic!("config unexpectedly valid:\n{yaml}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

const DEVICE: &str = r#"
gateway: { namespace: plant-a }
mqtt:
  discovery: { homeAssistant: { enabled: true } }
devices:
  - name: boiler
    driver: dummy
    properties:
      - { name: alarm, type: bool, simulate: { constant: false } }
      - { name: pump, type: bool, writable: true, simulate: { constant: false } }
      - { name: temperature, type: float32, unit: "°C", simulate: { constant: 20.5 } }
      - { name: setpoint, type: int16, scale: 0.5, min: 5, max: 30, unit: "°C", writable: true, simulate: { constant: 40 } }
      - { name: count, type: uint16, writable: true, simulate: { constant: 1 } }
      - { name: ratio, type: float64, writable: true, simulate: { constant: 0.5 } }
      - { name: gear, type: uint8, enum: { 0: slow, 1: fast }, writable: true, simulate: { constant: 0 } }
      - { name: mode, type: uint8, enum: { 0: auto, 1: manual }, simulate: { constant: 0 } }
      - { name: serial, type: string, simulate: { constant: "A1" } }
      - { name: blob, type: bytes, simulate: { constant: "0a0b" } }
"#;

fn ctx(d: &DeviceSettings) -> DeviceContext<'_> {
    DeviceContext {
        prefix: "homeassistant",
        namespace: "plant-a",
        device: &d.name,
        model: d.driver.as_str(),
        topic: &d.message.topic,
        qos: d.message.qos,
        base64: false,
        will_topic: "fieldgate/plant-a/$will",
        will_payload: "offline",
    }
}

/// The entity of property `name` of the first device.
fn entity_of(r: &Resolved, name: &str) -> entity::EntityConfig {
    let d = &r.devices[0];
    let p = d
        .properties
        .iter()
        .find(|p| &*p.name == name)
        .expect("property in the test config");
    let o = p.details.as_ref().and_then(|x| x.home_assistant.as_deref());
    entity::property_entity(&ctx(d), p, o)
}

#[test]
fn components_follow_the_contract_table() {
    let r = ok(DEVICE);
    let want = [
        ("alarm", Component::BinarySensor),
        ("pump", Component::Switch),
        ("temperature", Component::Sensor),
        ("setpoint", Component::Number),
        ("count", Component::Number),
        ("ratio", Component::Number),
        ("gear", Component::Select),
        ("mode", Component::Sensor),
        ("serial", Component::Sensor),
        ("blob", Component::Sensor),
    ];
    for (name, component) in want {
        let e = entity_of(&r, name);
        assert_eq!(e.component, component, "{name}");
        assert_eq!(
            e.topic,
            format!(
                "homeassistant/{}/fieldgate_plant-a/boiler_{name}/config",
                component.as_str()
            )
        );
        assert_eq!(
            e.payload["unique_id"],
            format!("fieldgate_plant-a_boiler_{name}")
        );
        assert_eq!(e.payload["state_topic"], "fieldgate/plant-a/boiler");
        assert_eq!(e.payload["availability_mode"], "all");
        assert_eq!(
            e.payload["availability"],
            json!([
                {"topic": "fieldgate/plant-a/boiler/$state", "payload_available": "online", "payload_not_available": "offline"},
                {"topic": "fieldgate/plant-a/$will", "payload_available": "online", "payload_not_available": "offline"},
            ])
        );
        assert_eq!(
            e.payload["device"],
            json!({
                "identifiers": ["fieldgate_plant-a_boiler"],
                "name": "boiler",
                "manufacturer": "fieldgate",
                "model": "dummy",
                "via_device": "fieldgate_plant-a",
            })
        );
    }
}

#[test]
fn read_only_number_is_a_measurement_sensor_with_unit() {
    let e = entity_of(&ok(DEVICE), "temperature");
    assert_eq!(e.payload["unit_of_measurement"], "°C");
    assert_eq!(e.payload["state_class"], "measurement");
    assert!(e.payload.get("command_topic").is_none());
}

#[test]
fn writable_number_box_bounds_and_step() {
    let r = ok(DEVICE);
    let e = entity_of(&r, "setpoint");
    let p = &e.payload;
    assert_eq!(
        (&p["min"], &p["max"], &p["step"], &p["mode"]),
        (&json!(5), &json!(30), &json!(0.5), &json!("box"))
    );
    assert_eq!(p["unit_of_measurement"], "°C");
    assert_eq!(p["command_topic"], "fieldgate/plant-a/boiler/$set");
    assert_eq!(
        p["command_template"],
        r#"{{ {"setpoint": value} | tojson }}"#
    );
    // Without min/max: the published range of the raw type; integer step 1.
    let c = entity_of(&r, "count").payload;
    assert_eq!(
        (&c["min"], &c["max"], &c["step"]),
        (&json!(0), &json!(65535), &json!(1))
    );
    // Floats step by 0.001.
    assert_eq!(entity_of(&r, "ratio").payload["step"], json!(0.001));
}

#[test]
fn scale_factor_number_steps_finely_over_the_scaled_range() {
    let r = ok(r#"
mqtt:
  discovery: { homeAssistant: { enabled: true } }
devices:
  - name: inverter
    driver: dummy
    properties:
      - { name: WMaxLimPct, type: uint16, scaleFactor: WMaxLimPct_SF, unit: "%", writable: true, simulate: { constant: 1000 } }
      - { name: WMaxLimPct_SF, type: int16, simulate: { constant: -1 } }
      - { name: PhVphA, type: uint16, scaleFactor: V_SF, unit: V, simulate: { constant: 2301 } }
      - { name: V_SF, type: int16, simulate: { constant: -1 } }
"#);
    // The step depends on the scale factor's reading: not 1 as for a plain
    // integer, and the range allows for any SunSpec exponent.
    let n = entity_of(&r, "WMaxLimPct").payload;
    assert_eq!(n["step"], json!(0.001));
    assert_eq!(
        (&n["min"], &n["max"]),
        (&json!(0), &json!(655_350_000_000_000u64))
    );
    // Read-only: a measurement sensor with the unit of the scaled value.
    let s = entity_of(&r, "PhVphA");
    assert_eq!(s.component, Component::Sensor);
    assert_eq!(s.payload["unit_of_measurement"], "V");
    assert_eq!(s.payload["state_class"], "measurement");
}

#[test]
fn switch_commands_are_set_objects() {
    let p = entity_of(&ok(DEVICE), "pump").payload;
    assert_eq!(p["command_topic"], "fieldgate/plant-a/boiler/$set");
    let on: Value =
        serde_json::from_str(p["payload_on"].as_str().unwrap_or_default()).unwrap_or_default();
    let off: Value =
        serde_json::from_str(p["payload_off"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!((on, off), (json!({"pump": true}), json!({"pump": false})));
    assert_eq!(
        (&p["state_on"], &p["state_off"]),
        (&json!("ON"), &json!("OFF"))
    );
}

#[test]
fn enums_give_options() {
    let r = ok(DEVICE);
    let sel = entity_of(&r, "gear").payload;
    assert_eq!(sel["options"], json!(["slow", "fast"]));
    assert_eq!(sel["command_template"], r#"{{ {"gear": value} | tojson }}"#);
    let sen = entity_of(&r, "mode").payload;
    assert_eq!(sen["device_class"], "enum");
    assert_eq!(sen["options"], json!(["auto", "manual"]));
    assert!(sen.get("state_class").is_none());
}

#[test]
fn value_template_reads_properties_and_keeps_state_when_absent() {
    let r = ok(DEVICE);
    let t = entity_of(&r, "temperature").payload["value_template"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        t,
        r#"{% set p = value_json.get('properties', {}) %}{% if "temperature" in p %}{{ p["temperature"] }}{% else %}{% endif %}"#
    );
    let b = entity_of(&r, "alarm").payload["value_template"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        b.contains(r#"{{ 'ON' if p["alarm"] else 'OFF' }}{% else %}{% endif %}"#),
        "{b}"
    );
    let s = entity_of(&r, "serial").payload["value_template"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(s.contains("{% else %}{{ this.state if this.state not in ('unknown', 'unavailable') else 'None' }}"), "{s}");
}

#[test]
fn odd_names_are_escaped_in_templates_and_topics() {
    let r = ok(r#"
mqtt: { discovery: { homeAssistant: { enabled: true } } }
devices:
  - name: dev.1
    driver: dummy
    properties:
      - { name: 'say "hi" {{x}}', type: float64, writable: true, simulate: { constant: 1 } }
"#);
    let d = &r.devices[0];
    let mut c = ctx(d);
    c.namespace = "default";
    let e = entity::property_entity(&c, &d.properties[0], None);
    let id = e.topic.split('/').nth(3).unwrap_or_default().to_owned();
    assert!(id.starts_with("dev_1_say__hi_"), "{id}");
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    assert_eq!(
        e.payload["command_template"],
        r#"{{ {"say \"hi\" {{x}}": value} | tojson }}"#
    );
    // Different originals never share a topic id.
    assert_ne!(entity::topic_id("a.b"), entity::topic_id("a_b"));
    assert_eq!(entity::topic_id("a_b"), "a_b");
}

#[test]
fn base64_devices_decode_state_and_encode_commands() {
    let r = ok(DEVICE);
    let d = &r.devices[0];
    let mut c = ctx(d);
    c.base64 = true;
    let sw = d.properties.iter().find(|p| &*p.name == "pump");
    let e = entity::property_entity(&c, sw.expect("pump"), None);
    assert!(e.payload["value_template"]
        .as_str()
        .unwrap_or_default()
        .starts_with("{% set value_json = value | base64_decode | from_json %}"));
    // {"pump":true} in base64
    assert_eq!(e.payload["payload_on"], "eyJwdW1wIjp0cnVlfQ==");
    let num = d.properties.iter().find(|p| &*p.name == "setpoint");
    let n = entity::property_entity(&c, num.expect("setpoint"), None);
    assert_eq!(
        n.payload["command_template"],
        r#"{{ {"setpoint": value} | tojson | base64_encode }}"#
    );
}

#[test]
fn overrides_refine_the_entity() {
    let r = ok(r#"
mqtt: { discovery: { homeAssistant: { enabled: true } } }
devices:
  - name: m
    driver: dummy
    properties:
      - name: energy
        type: float64
        unit: kWh
        simulate: { constant: 1 }
        homeAssistant: { deviceClass: energy, stateClass: total_increasing, icon: "mdi:flash", entityCategory: diagnostic, enabled: false }
      - name: level
        type: uint16
        writable: true
        simulate: { constant: 1 }
        homeAssistant: { component: sensor }
"#);
    let e = entity_of(&r, "energy").payload;
    assert_eq!(e["device_class"], "energy");
    assert_eq!(e["state_class"], "total_increasing");
    assert_eq!(e["icon"], "mdi:flash");
    assert_eq!(e["entity_category"], "diagnostic");
    assert_eq!(e["enabled_by_default"], false);
    let l = entity_of(&r, "level");
    assert_eq!(l.component, Component::Sensor);
    assert!(l.topic.starts_with("homeassistant/sensor/"));
    assert!(l.payload.get("command_topic").is_none());
}

#[test]
fn config_keys_defaults_and_errors() {
    let r = ok(DEVICE);
    let ha = r.home_assistant.expect("enabled");
    assert_eq!(
        (ha.prefix.as_str(), ha.status_topic.as_str()),
        ("homeassistant", "homeassistant/status")
    );
    // Off by default, and off when `enabled: false`.
    assert!(ok("devices: []").home_assistant.is_none());
    assert!(ok("mqtt: { discovery: { homeAssistant: { prefix: ha } } }")
        .home_assistant
        .is_none());
    let e = errs(
        "mqtt:\n  discovery:\n    homeAssistant: { enabled: true, prefix: 'a/#', statusTop: x }\n",
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("c.yaml:3:")
                && l.contains("mqtt.discovery.homeAssistant.statusTop")),
        "{e:?}"
    );
    let e = errs("mqtt:\n  discovery:\n    homeAssistant: { enabled: true, prefix: 'a/#' }\n");
    assert!(
        e.iter().any(|l| l.starts_with("c.yaml:3:")
            && l.contains("mqtt.discovery.homeAssistant.prefix")
            && l.contains("wildcard")),
        "{e:?}"
    );
    // Per device: refused, located.
    let e = errs("devices:\n  - name: a\n    driver: dummy\n    mqtt: { discovery: {} }\n    properties: []\n");
    assert!(
        e.iter().any(|l| l.starts_with("c.yaml:4:")
            && l.contains("devices[0].mqtt.discovery")
            && l.contains("top-level")),
        "{e:?}"
    );
}

#[test]
fn property_override_errors_are_located() {
    let e = errs(
        r#"devices:
  - name: a
    driver: dummy
    properties:
      - { name: x, type: float64, simulate: { constant: 1 }, homeAssistant: { component: switch } }
      - { name: y, type: bool, writable: true, simulate: { constant: true }, homeAssistant: { deviceClass: "Door Sensor", icon: fan } }
      - { name: z, type: string, simulate: { constant: "s" }, homeAssistant: { stateClass: measurement, colour: red } }
      - { name: w, type: bool, simulate: { constant: true }, homeAssistant: { component: select } }
"#,
    );
    let has = |prefix: &str, key: &str, needle: &str| {
        assert!(
            e.iter()
                .any(|l| l.starts_with(prefix) && l.contains(key) && l.contains(needle)),
            "no `{prefix}…{key}…{needle}` in {e:#?}"
        )
    };
    has(
        "c.yaml:5:",
        "devices[0].properties[0].homeAssistant.component",
        "needs a `bool` property",
    );
    has(
        "c.yaml:6:",
        "devices[0].properties[1].homeAssistant.deviceClass",
        "not a Home Assistant device class",
    );
    has(
        "c.yaml:6:",
        "devices[0].properties[1].homeAssistant.icon",
        "mdi:fan",
    );
    has(
        "c.yaml:7:",
        "devices[0].properties[2].homeAssistant.colour",
        "",
    );
    has(
        "c.yaml:8:",
        "devices[0].properties[3].homeAssistant.component",
        "enum",
    );
    let e2 = errs(
        "devices:\n  - name: a\n    driver: dummy\n    properties:\n      - { name: z, type: string, simulate: { constant: s }, homeAssistant: { stateClass: measurement } }\n",
    );
    assert!(
        e2.iter().any(|l| l.starts_with("c.yaml:5:")
            && l.contains("homeAssistant.stateClass")
            && l.contains("numeric sensors")),
        "{e2:?}"
    );
    let e3 = errs(
        "devices:\n  - name: a\n    driver: dummy\n    properties:\n      - { name: z, type: float32, simulate: { constant: 1 }, homeAssistant: { component: number } }\n",
    );
    assert!(
        e3.iter()
            .any(|l| l.contains("homeAssistant.component") && l.contains("writable: true")),
        "{e3:?}"
    );
}

#[test]
fn gateway_entities_and_health() {
    let ctx = GatewayContext {
        prefix: "homeassistant",
        namespace: "plant-a",
        gateway_topic: "fieldgate/plant-a",
        will_topic: "fieldgate/plant-a/$will",
        will_payload: "offline",
    };
    let es = gateway::gateway_entities(&ctx);
    let topics: Vec<&str> = es.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "homeassistant/binary_sensor/fieldgate_plant-a/_gateway_connectivity/config",
            "homeassistant/sensor/fieldgate_plant-a/_gateway_devices_online/config",
            "homeassistant/sensor/fieldgate_plant-a/_gateway_store_backlog/config",
        ]
    );
    let conn = &es[0].payload;
    assert_eq!(conn["device_class"], "connectivity");
    assert_eq!(conn["state_topic"], "fieldgate/plant-a/$will");
    assert_eq!(
        (&conn["payload_on"], &conn["payload_off"]),
        (&json!("online"), &json!("offline"))
    );
    for e in &es {
        assert_eq!(e.payload["entity_category"], "diagnostic");
        assert_eq!(
            e.payload["device"]["identifiers"],
            json!(["fieldgate_plant-a"])
        );
    }
    assert_eq!(es[1].payload["state_topic"], "fieldgate/plant-a/$health");
}

mod running {
    //! The discovery task against a detached session: what it publishes,
    //! clears and publishes again.

    use std::collections::HashMap;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::super::Discovery;
    use super::ok;
    use crate::mqtt::{Inbound, SessionHandle, SessionInput};

    const TWO_PROPS: &str = r#"
gateway: { namespace: t }
mqtt: { discovery: { homeAssistant: { enabled: true, prefix: ha, statusTopic: ha/status } } }
devices:
  - name: d
    driver: dummy
    properties:
      - { name: a, type: float64, simulate: { constant: 1 } }
      - { name: b, type: bool, writable: true, simulate: { constant: true } }
"#;

    /// Everything the task sent within a short quiet period.
    async fn drain(rx: &mut mpsc::Receiver<SessionInput>) -> Vec<SessionInput> {
        let mut out = Vec::new();
        while let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            out.push(i);
        }
        out
    }

    fn published(inputs: &[SessionInput]) -> Vec<String> {
        let mut v: Vec<String> = inputs
            .iter()
            .filter_map(|i| match i {
                SessionInput::SetRetainedRebuilt { msg, rebuild } => {
                    assert!(msg.retain && msg.qos == 1, "{msg:?}");
                    assert_eq!(msg.payload, rebuild.build());
                    Some(msg.topic.to_string())
                }
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn cleared(inputs: &[SessionInput]) -> Vec<String> {
        let mut v: Vec<String> = inputs
            .iter()
            .filter_map(|i| match i {
                SessionInput::ClearRetained { topic, .. } => Some(topic.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn publishes_clears_and_answers_the_birth() {
        let (handle, mut rx) = SessionHandle::detached("fieldgate-t", 1024);
        let first = ok(TWO_PROPS);
        let sessions: HashMap<_, _> = [(first.sessions[0].clone(), handle.clone())].into();
        let mut disc = Discovery::default();

        disc.apply(&first, &sessions).await;
        let got = drain(&mut rx).await;
        let gateway = [
            "ha/binary_sensor/fieldgate_t/_gateway_connectivity/config",
            "ha/sensor/fieldgate_t/_gateway_devices_online/config",
            "ha/sensor/fieldgate_t/_gateway_store_backlog/config",
        ];
        let mut all: Vec<String> = gateway.iter().map(|s| s.to_string()).collect();
        all.extend([
            "ha/sensor/fieldgate_t/d_a/config".into(),
            "ha/switch/fieldgate_t/d_b/config".into(),
        ]);
        all.sort();
        assert_eq!(published(&got), all);
        let inbox = got
            .iter()
            .find_map(|i| match i {
                SessionInput::Route { topic, to, .. } if &**topic == "ha/status" => {
                    Some(to.clone())
                }
                _ => None,
            })
            .expect("status topic routed");

        // The same config again publishes nothing new.
        disc.apply(&first, &sessions).await;
        assert!(published(&drain(&mut rx).await).is_empty());

        // Home Assistant's birth: every config again; other payloads: nothing.
        inbox
            .send(Box::new(Inbound {
                topic: "ha/status".into(),
                payload: "offline".into(),
                response_topic: None,
                correlation: None,
                retain: false,
            }))
            .expect("inbox");
        assert!(published(&drain(&mut rx).await).is_empty());
        inbox
            .send(Box::new(Inbound {
                topic: "ha/status".into(),
                payload: "online".into(),
                response_topic: None,
                correlation: None,
                retain: false,
            }))
            .expect("inbox");
        assert_eq!(published(&drain(&mut rx).await), all);

        // A property removed: its entity's config is cleared; a changed one is published.
        let second = ok(&TWO_PROPS
            .replace(
                "      - { name: a, type: float64, simulate: { constant: 1 } }\n",
                "",
            )
            .replace("writable: true", "writable: false"));
        disc.apply(&second, &sessions).await;
        let got = drain(&mut rx).await;
        assert_eq!(
            cleared(&got),
            [
                "ha/sensor/fieldgate_t/d_a/config",
                "ha/switch/fieldgate_t/d_b/config"
            ]
        );
        assert_eq!(published(&got), ["ha/binary_sensor/fieldgate_t/d_b/config"]);

        // A device removed: all its configs are cleared.
        let third = ok(
            "gateway: { namespace: t }\nmqtt: { discovery: { homeAssistant: { enabled: true, prefix: ha, statusTopic: ha/status } } }\ndevices: []\n",
        );
        disc.apply(&third, &sessions).await;
        assert_eq!(
            cleared(&drain(&mut rx).await),
            ["ha/binary_sensor/fieldgate_t/d_b/config"]
        );

        // Discovery turned off: everything goes, the status topic too.
        let off = ok("gateway: { namespace: t }\ndevices: []\n");
        disc.apply(&off, &sessions).await;
        let got = drain(&mut rx).await;
        assert_eq!(cleared(&got), gateway);
        assert!(got
            .iter()
            .any(|i| matches!(i, SessionInput::Unroute { topic } if &**topic == "ha/status")));
    }
}

mod refresh {
    //! Announced devices are asked for their state a moment later.

    use std::collections::HashMap;
    use std::time::Duration;

    use super::super::Discovery;
    use super::ok;
    use crate::mqtt::{SessionHandle, SessionInput};

    #[tokio::test]
    async fn announced_devices_get_a_state_request() {
        let (handle, mut rx) = SessionHandle::detached("fieldgate-t", 1024);
        let r = ok(r#"
gateway: { namespace: t }
mqtt: { discovery: { homeAssistant: { enabled: true } } }
devices:
  - { name: d, driver: dummy, properties: [ { name: a, type: bool, simulate: { constant: true } } ] }
"#);
        let sessions: HashMap<_, _> = [(r.sessions[0].clone(), handle)].into();
        let mut disc = Discovery::default();
        disc.apply(&r, &sessions).await;
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(i) = rx.recv().await {
                if let SessionInput::Publish(m) = i {
                    if &*m.topic == "fieldgate/t/d/$get" {
                        return Some(m);
                    }
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("a $get for the announced device");
        assert!(!got.retain);
    }
}
