//! The gateway's own Home Assistant device and its diagnostic entities:
//! connectivity (from the session's will topic), devices online and store
//! backlog (from the retained `G/$health` of [`crate::health`]).

use serde_json::{json, Map, Value};

use super::config::Component;
use super::entity::{config_topic, gateway_identifier, origin, EntityConfig};

/// What the gateway's entities need to know.
#[derive(Debug, Clone)]
pub(crate) struct GatewayContext<'a> {
    /// Discovery prefix.
    pub prefix: &'a str,
    /// The gateway's namespace.
    pub namespace: &'a str,
    /// The gateway topic G.
    pub gateway_topic: &'a str,
    /// The gateway session's will topic.
    pub will_topic: &'a str,
    /// Its will payload.
    pub will_payload: &'a str,
}

/// The topic of the health document the diagnostic sensors read
/// (published by [`crate::health`] whether discovery is on or not).
pub(crate) fn health_topic(gateway_topic: &str) -> String {
    crate::health::topic(gateway_topic)
}

/// The `device` block of the gateway's own entities.
pub(crate) fn gateway_device(namespace: &str) -> Value {
    json!({
        "identifiers": [gateway_identifier(namespace)],
        "name": format!("fieldgate {namespace}"),
        "manufacturer": "fieldgate",
        "model": "gateway",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The discovery configs of the gateway's diagnostic entities.
pub(crate) fn gateway_entities(ctx: &GatewayContext<'_>) -> Vec<EntityConfig> {
    let common = |name: &str, object: &str| {
        let mut c = Map::new();
        c.insert("name".into(), name.into());
        c.insert(
            "unique_id".into(),
            format!("{}_{object}", gateway_identifier(ctx.namespace)).into(),
        );
        c.insert("entity_category".into(), "diagnostic".into());
        c.insert("device".into(), gateway_device(ctx.namespace));
        c.insert("origin".into(), origin());
        c.insert("qos".into(), 1.into());
        c
    };
    let availability = json!([{
        "topic": ctx.will_topic,
        "payload_available": "online",
        "payload_not_available": ctx.will_payload,
    }]);
    let health = health_topic(ctx.gateway_topic);

    let mut connectivity = common("Connectivity", "connectivity");
    connectivity.insert("device_class".into(), "connectivity".into());
    connectivity.insert("state_topic".into(), ctx.will_topic.into());
    connectivity.insert("payload_on".into(), "online".into());
    connectivity.insert("payload_off".into(), ctx.will_payload.into());

    let mut online = common("Devices online", "devices_online");
    online.insert("state_topic".into(), health.clone().into());
    online.insert(
        "value_template".into(),
        "{{ value_json.devices.online }}".into(),
    );
    online.insert("json_attributes_topic".into(), health.clone().into());
    online.insert(
        "json_attributes_template".into(),
        "{{ value_json.devices | tojson }}".into(),
    );
    online.insert("state_class".into(), "measurement".into());
    online.insert("icon".into(), "mdi:lan-connect".into());
    online.insert("availability".into(), availability.clone());

    let mut backlog = common("Store backlog", "store_backlog");
    backlog.insert("state_topic".into(), health.clone().into());
    backlog.insert(
        "value_template".into(),
        "{{ value_json.sessions.values() | sum(attribute='storeMessages') }}".into(),
    );
    backlog.insert("json_attributes_topic".into(), health.into());
    backlog.insert(
        "json_attributes_template".into(),
        "{{ value_json.sessions | tojson }}".into(),
    );
    backlog.insert("unit_of_measurement".into(), "messages".into());
    backlog.insert("state_class".into(), "measurement".into());
    backlog.insert("icon".into(), "mdi:tray-full".into());
    backlog.insert("availability".into(), availability);

    [
        (
            Component::BinarySensor,
            "_gateway_connectivity",
            connectivity,
        ),
        (Component::Sensor, "_gateway_devices_online", online),
        (Component::Sensor, "_gateway_store_backlog", backlog),
    ]
    .into_iter()
    .map(|(component, object, c)| EntityConfig {
        component,
        topic: config_topic(ctx.prefix, component, ctx.namespace, object),
        payload: Value::Object(c),
    })
    .collect()
}
