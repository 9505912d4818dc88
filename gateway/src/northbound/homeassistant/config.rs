//! The Home Assistant keys of the config: `mqtt.discovery.homeAssistant`
//! and a property's `homeAssistant:` overrides, with their checks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use fieldgate_drivers::DataType;

/// `mqtt.discovery:` (top level only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DiscoveryOptions {
    /// Home Assistant MQTT discovery.
    pub home_assistant: Option<HomeAssistantOptions>,
}

/// `mqtt.discovery.homeAssistant:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HomeAssistantOptions {
    /// Publish discovery configs (default false).
    pub enabled: bool,
    /// Discovery prefix; default `homeassistant`.
    pub prefix: String,
    /// Where Home Assistant announces itself (`online` = publish every config again);
    /// default `homeassistant/status`.
    pub status_topic: String,
}

impl Default for HomeAssistantOptions {
    fn default() -> Self {
        Self {
            enabled: false,
            prefix: "homeassistant".into(),
            status_topic: "homeassistant/status".into(),
        }
    }
}

/// Why discovery and `format: sparkplugB` cannot be on together (a config
/// error at `mqtt.discovery.homeAssistant.enabled`).
pub(crate) const SPARKPLUG_CONFLICT: &str = "Home Assistant discovery needs the fieldgate JSON topics: Home Assistant cannot decode Sparkplug B (protobuf) payloads, and with `mqtt.message.format: sparkplugB` no device publishes JSON. Choose one per gateway: `homeAssistant.enabled: false` for a Sparkplug host, or `mqtt.message.format: fieldgate` for Home Assistant (see docs/home-assistant.md, \"Sparkplug B\")";

/// Home Assistant discovery, resolved (present only when enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistantSettings {
    /// Discovery prefix.
    pub prefix: String,
    /// Home Assistant's birth/status topic.
    pub status_topic: String,
}

/// A property's `homeAssistant:` refinements of the derived entity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PropertyOverrides {
    /// Home Assistant device class, e.g. `temperature`, `power`, `door`.
    pub device_class: Option<String>,
    /// `measurement` | `total` | `total_increasing` (sensors only).
    pub state_class: Option<StateClass>,
    /// Icon, e.g. `mdi:fan`.
    pub icon: Option<String>,
    /// `config` | `diagnostic`.
    pub entity_category: Option<EntityCategory>,
    /// false: the entity is created disabled.
    pub enabled: Option<bool>,
    /// Entity component instead of the derived one.
    pub component: Option<Component>,
}

/// A Home Assistant sensor's state class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateClass {
    /// A value measured now.
    Measurement,
    /// A total that may go up and down.
    Total,
    /// A total that only grows (a reset starts a new cycle).
    TotalIncreasing,
}

impl StateClass {
    /// Home Assistant's name.
    pub fn as_str(self) -> &'static str {
        match self {
            StateClass::Measurement => "measurement",
            StateClass::Total => "total",
            StateClass::TotalIncreasing => "total_increasing",
        }
    }
}

/// A Home Assistant entity category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntityCategory {
    /// A setting of the device.
    Config,
    /// A diagnostic reading.
    Diagnostic,
}

impl EntityCategory {
    /// Home Assistant's name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityCategory::Config => "config",
            EntityCategory::Diagnostic => "diagnostic",
        }
    }
}

/// The Home Assistant MQTT components a property can become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Read-only value.
    Sensor,
    /// Read-only on/off.
    BinarySensor,
    /// Writable on/off.
    Switch,
    /// Writable number.
    Number,
    /// Writable choice of labels.
    Select,
    /// Writable text.
    Text,
}

impl Component {
    /// Home Assistant's name (the discovery topic's component level).
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
            Component::Switch => "switch",
            Component::Number => "number",
            Component::Select => "select",
            Component::Text => "text",
        }
    }
}

/// Why `component` does not fit a property (`None` when it fits): every
/// property can be a `sensor`; the others need the matching type, and the
/// writable ones a writable property.
pub(crate) fn component_misfit(
    component: Component,
    data_type: DataType,
    writable: bool,
    has_enum: bool,
) -> Option<String> {
    let needs_write = |what: &str| {
        (!writable).then(|| {
            format!("`{what}` sends commands: the property must be `writable: true` (use `sensor` or `binary_sensor` for a read-only one)")
        })
    };
    match component {
        Component::Sensor => None,
        Component::BinarySensor => (data_type != DataType::Bool)
            .then(|| format!("`binary_sensor` needs a `bool` property, not `{data_type}`")),
        Component::Switch => {
            if data_type != DataType::Bool {
                Some(format!(
                    "`switch` needs a `bool` property, not `{data_type}`"
                ))
            } else {
                needs_write("switch")
            }
        }
        Component::Number => {
            if !data_type.is_numeric() || has_enum {
                Some(format!(
                    "`number` needs a numeric property without `enum`, not `{data_type}`{}",
                    if has_enum {
                        " with `enum` (use `select`)"
                    } else {
                        ""
                    }
                ))
            } else {
                needs_write("number")
            }
        }
        Component::Select => {
            if !has_enum {
                Some("`select` needs a property with `enum` labels".into())
            } else {
                needs_write("select")
            }
        }
        Component::Text => {
            if data_type != DataType::String {
                Some(format!(
                    "`text` needs a `string` property, not `{data_type}`"
                ))
            } else {
                needs_write("text")
            }
        }
    }
}

/// What is wrong with a `deviceClass` (`None` when fine): Home Assistant's
/// device classes are lower-case words joined by `_`.
pub(crate) fn device_class_problem(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    (!ok).then(|| format!("`{s}` is not a Home Assistant device class: use its lower-case name, e.g. `temperature`, `power`, `door`"))
}

/// What is wrong with an `icon` (`None` when fine): `<set>:<name>`, e.g. `mdi:fan`.
pub(crate) fn icon_problem(s: &str) -> Option<String> {
    let ok = s.split_once(':').is_some_and(|(set, name)| {
        !set.is_empty()
            && !name.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b))
    });
    (!ok).then(|| format!("`{s}` is not an icon: write `<set>:<name>`, e.g. `mdi:fan`"))
}

/// What is wrong with a discovery prefix or status topic (`None` when fine).
pub(crate) fn topic_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    crate::config::load::check_topic(s)
        .err()
        .map(|e| e.to_string())
}
