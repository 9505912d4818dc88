//! Pure mapping: a device property → one Home Assistant MQTT discovery
//! config (component, topic, payload), as CONTRACT §10 describes it.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use fieldgate_drivers::DataType;

use super::config::{Component, PropertyOverrides};
use crate::config::resolved::PropertySemantics;

/// What an entity needs to know of its device and session.
#[derive(Debug, Clone)]
pub(crate) struct DeviceContext<'a> {
    /// Discovery prefix.
    pub prefix: &'a str,
    /// The gateway's namespace.
    pub namespace: &'a str,
    /// Device name.
    pub device: &'a str,
    /// `model` of the HA device: the driver (and the simulator's model).
    pub model: &'a str,
    /// The device topic T.
    pub topic: &'a str,
    /// QoS of the device's messages.
    pub qos: u8,
    /// The state payload and `$set` are base64 (`payloadEncode: base64`).
    pub base64: bool,
    /// The device's session's will topic.
    pub will_topic: &'a str,
    /// The will's payload (what the will topic says when the session is gone).
    pub will_payload: &'a str,
}

/// One discovery config: where it goes and what it says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EntityConfig {
    /// The entity's component.
    pub component: Component,
    /// `<prefix>/<component>/<node_id>/<object_id>/config`.
    pub topic: String,
    /// The JSON config.
    pub payload: Value,
}

/// The component §10 derives for a property, before overrides.
pub(crate) fn derived_component(p: &PropertySemantics) -> Component {
    let has_enum = !p.enum_entries().is_empty();
    match (p.data_type, p.writable) {
        _ if has_enum && p.writable => Component::Select,
        _ if has_enum => Component::Sensor,
        (DataType::Bool, true) => Component::Switch,
        (DataType::Bool, false) => Component::BinarySensor,
        (t, true) if t.is_numeric() => Component::Number,
        _ => Component::Sensor,
    }
}

/// A discovery topic level (node id or object id): Home Assistant takes
/// only `[A-Za-z0-9_-]`. Other characters become `_`, and a name that had
/// any gets a short hash of the original so that `a.b` and `a_b` differ.
pub(crate) fn topic_id(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == raw {
        clean
    } else {
        // FNV-1a: stable across builds and platforms.
        let mut h: u32 = 0x811c_9dc5;
        for b in raw.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        format!("{clean}_{h:08x}")
    }
}

/// The HA device identifier of the gateway itself.
pub(crate) fn gateway_identifier(namespace: &str) -> String {
    format!("fieldgate_{namespace}")
}

/// The HA device identifier of a fieldgate device.
pub(crate) fn device_identifier(namespace: &str, device: &str) -> String {
    format!("fieldgate_{namespace}_{device}")
}

/// The config topic of an entity.
pub(crate) fn config_topic(
    prefix: &str,
    component: Component,
    namespace: &str,
    object: &str,
) -> String {
    format!(
        "{prefix}/{}/{}/{}/config",
        component.as_str(),
        topic_id(&gateway_identifier(namespace)),
        topic_id(object)
    )
}

/// `origin` of every config: who publishes it.
pub(crate) fn origin() -> Value {
    json!({
        "name": "fieldgate",
        "sw_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The `device` block of a fieldgate device's entities.
pub(crate) fn device_block(ctx: &DeviceContext<'_>) -> Value {
    json!({
        "identifiers": [device_identifier(ctx.namespace, ctx.device)],
        "name": ctx.device,
        "manufacturer": "fieldgate",
        "model": ctx.model,
        "via_device": gateway_identifier(ctx.namespace),
    })
}

/// A string as a Jinja string literal (JSON's escapes are Jinja's too).
fn literal(s: &str) -> String {
    Value::from(s).to_string()
}

/// The state template: reads the property from `value_json.properties`;
/// when the property is absent (not read, or in `errors`) it renders
/// `fallback`, which each component leaves its state unchanged on.
fn value_template(ctx: &DeviceContext<'_>, name: &str, present: &str, fallback: &str) -> String {
    let decode = if ctx.base64 {
        "{% set value_json = value | base64_decode | from_json %}"
    } else {
        ""
    };
    format!(
        "{decode}{{% set p = value_json.get('properties', {{}}) %}}{{% if {k} in p %}}{present}{{% else %}}{fallback}{{% endif %}}",
        k = literal(name)
    )
}

/// A `$set` payload as the session sends it (base64 when the device's messages are).
fn set_payload(ctx: &DeviceContext<'_>, name: &str, value: Value) -> String {
    let mut m = Map::new();
    m.insert(name.to_owned(), value);
    let json = Value::Object(m).to_string();
    if ctx.base64 {
        base64::engine::general_purpose::STANDARD.encode(json)
    } else {
        json
    }
}

/// A `command_template` that sends `{"<p>": value}` to `T/$set`.
fn command_template(ctx: &DeviceContext<'_>, name: &str, value: &str) -> String {
    let encode = if ctx.base64 { " | base64_encode" } else { "" };
    format!("{{{{ {{{}: {value}}} | tojson{encode} }}}}", literal(name))
}

/// The lowest and highest value a numeric property can publish (its raw
/// type's range through scale and offset), for a `number` without `min`/`max`.
fn published_range(p: &PropertySemantics) -> (f64, f64) {
    let (lo, hi) = match p.data_type.integer_range() {
        Some((lo, hi)) => (lo as f64, hi as f64),
        None if p.data_type == DataType::Float32 => (f64::from(f32::MIN), f64::from(f32::MAX)),
        None => (-1e15, 1e15),
    };
    // A `scaleFactor` is read at run time: allow for all of SunSpec's range.
    let factor = match p.scale_factor() {
        Some(_) => 10f64.powi(*crate::state::SCALE_FACTOR_RANGE.end()),
        None => 1.0,
    };
    let scale = p.scale().unwrap_or(1.0) * factor;
    let offset = p.offset().unwrap_or(0.0);
    let (a, b) = (lo * scale + offset, hi * scale + offset);
    (a.min(b), a.max(b))
}

/// A number as JSON (integral values without `.0`).
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// The fallback of a text sensor or an enum sensor: the entity's own state
/// again (`None` = unknown while it has none), since an empty text would be
/// taken as the value.
const KEEP_OR_NONE: &str =
    "{{ this.state if this.state not in ('unknown', 'unavailable') else 'None' }}";
/// The fallback of a `text` entity: its own state again (empty while it has none).
const KEEP_TEXT: &str = "{{ this.state if this.state not in ('unknown', 'unavailable') else '' }}";

/// The discovery config of property `p` of a device.
pub(crate) fn property_entity(
    ctx: &DeviceContext<'_>,
    p: &PropertySemantics,
    overrides: Option<&PropertyOverrides>,
) -> EntityConfig {
    let name: &str = &p.name;
    let component = overrides
        .and_then(|o| o.component)
        .unwrap_or_else(|| derived_component(p));
    let numeric = p.data_type.is_numeric() && p.enum_entries().is_empty();
    let labels: Vec<&str> = p.enum_entries().iter().map(|e| e.label.as_str()).collect();
    let raw = format!("p[{}]", literal(name));
    let set_topic = format!("{}/$set", ctx.topic);

    let mut c = Map::new();
    c.insert("name".into(), name.into());
    c.insert(
        "unique_id".into(),
        format!("{}_{name}", device_identifier(ctx.namespace, ctx.device)).into(),
    );
    c.insert("state_topic".into(), ctx.topic.into());
    c.insert("qos".into(), ctx.qos.into());
    c.insert(
        "availability".into(),
        json!([
            {"topic": format!("{}/$state", ctx.topic), "payload_available": "online", "payload_not_available": "offline"},
            {"topic": ctx.will_topic, "payload_available": "online", "payload_not_available": ctx.will_payload},
        ]),
    );
    c.insert("availability_mode".into(), "all".into());
    c.insert("device".into(), device_block(ctx));
    c.insert("origin".into(), origin());

    let template = |present: &str, fallback: &str| value_template(ctx, name, present, fallback);
    let on_off = format!("{{{{ 'ON' if {raw} else 'OFF' }}}}");
    let plain = format!("{{{{ {raw} }}}}");
    match component {
        Component::BinarySensor => {
            c.insert("value_template".into(), template(&on_off, "").into());
            c.insert("payload_on".into(), "ON".into());
            c.insert("payload_off".into(), "OFF".into());
        }
        Component::Switch => {
            c.insert("value_template".into(), template(&on_off, "").into());
            c.insert("state_on".into(), "ON".into());
            c.insert("state_off".into(), "OFF".into());
            c.insert("command_topic".into(), set_topic.into());
            c.insert(
                "payload_on".into(),
                set_payload(ctx, name, true.into()).into(),
            );
            c.insert(
                "payload_off".into(),
                set_payload(ctx, name, false.into()).into(),
            );
        }
        Component::Number => {
            // A number ignores an empty state.
            c.insert("value_template".into(), template(&plain, "").into());
            c.insert("command_topic".into(), set_topic.into());
            c.insert(
                "command_template".into(),
                command_template(ctx, name, "value").into(),
            );
            let (lo, hi) = published_range(p);
            c.insert("min".into(), num(p.min().unwrap_or(lo)));
            c.insert("max".into(), num(p.max().unwrap_or(hi)));
            let step = match p.scale() {
                // Its step depends on the scale factor's reading.
                _ if p.scale_factor().is_some() => 0.001,
                Some(s) => s.abs(),
                None if p.data_type.is_integer() => 1.0,
                None => 0.001,
            };
            c.insert("step".into(), num(step));
            c.insert("mode".into(), "box".into());
            if let Some(u) = p.unit() {
                c.insert("unit_of_measurement".into(), u.into());
            }
        }
        Component::Select => {
            c.insert("value_template".into(), template(&plain, "").into());
            c.insert("command_topic".into(), set_topic.into());
            c.insert(
                "command_template".into(),
                command_template(ctx, name, "value").into(),
            );
            c.insert("options".into(), labels.clone().into());
        }
        Component::Text => {
            c.insert("value_template".into(), template(&plain, KEEP_TEXT).into());
            c.insert("command_topic".into(), set_topic.into());
            c.insert(
                "command_template".into(),
                command_template(ctx, name, "value").into(),
            );
        }
        Component::Sensor => {
            if numeric {
                // A numeric sensor ignores an empty state.
                c.insert("value_template".into(), template(&plain, "").into());
                c.insert("state_class".into(), "measurement".into());
                if let Some(u) = p.unit() {
                    c.insert("unit_of_measurement".into(), u.into());
                }
            } else if !labels.is_empty() {
                c.insert(
                    "value_template".into(),
                    template(&plain, KEEP_OR_NONE).into(),
                );
                c.insert("device_class".into(), "enum".into());
                c.insert("options".into(), labels.clone().into());
            } else {
                c.insert(
                    "value_template".into(),
                    template(&plain, KEEP_OR_NONE).into(),
                );
            }
        }
    }
    if let Some(o) = overrides {
        if let Some(dc) = &o.device_class {
            c.insert("device_class".into(), dc.as_str().into());
        }
        if let Some(sc) = o.state_class {
            c.insert("state_class".into(), sc.as_str().into());
        }
        if let Some(icon) = &o.icon {
            c.insert("icon".into(), icon.as_str().into());
        }
        if let Some(cat) = o.entity_category {
            c.insert("entity_category".into(), cat.as_str().into());
        }
        if let Some(enabled) = o.enabled {
            c.insert("enabled_by_default".into(), enabled.into());
        }
    }
    EntityConfig {
        component,
        topic: config_topic(
            ctx.prefix,
            component,
            ctx.namespace,
            &format!("{}_{name}", ctx.device),
        ),
        payload: Value::Object(c),
    }
}
