//! The config file's schema as serde types (camelCase keys), one struct per
//! YAML mapping, one module per section. Defaults live here; cross-field
//! rules live in the loader (`config::load` and the modules it calls).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod device;
mod gateway;
mod mqtt;
mod values;

pub use device::*;
pub use gateway::*;
pub use mqtt::*;
pub use values::*;

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Identity, state directory, metrics and logging of this gateway.
    pub gateway: GatewaySection,
    /// Optional embedded MQTT broker for standalone use.
    pub broker: Option<BrokerSection>,
    /// MQTT defaults for every device.
    pub mqtt: MqttOptions,
    /// The devices to read.
    pub devices: Vec<DeviceConfig>,
    /// More `devices:` from other files: glob patterns relative to this
    /// file (one pattern or a list); each file is a mapping with only a
    /// `devices:` list. Watched for changes like this file.
    pub include: Option<IncludePatterns>,
}

/// `include:` — one glob pattern or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IncludePatterns {
    /// One pattern, e.g. `devices/*.yaml`.
    One(String),
    /// Several patterns.
    Many(Vec<String>),
}
