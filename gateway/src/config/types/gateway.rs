//! `gateway:` and `broker:`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

/// `gateway:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GatewaySection {
    /// The `nn` topic segment; `[A-Za-z0-9][A-Za-z0-9_.-]*`.
    pub namespace: String,
    /// Where the outbox and other state live.
    pub state_directory: String,
    /// Where `…PemRef` keys (`{name, item}`) are read from:
    /// `<secretsDirectory>/<name>/<item>`, the layout of a mounted Kubernetes
    /// secret. Relative paths are relative to the config file.
    pub secrets_directory: String,
    /// The Prometheus / health listener.
    pub metrics: MetricsSection,
    /// Logging.
    pub log: LogSection,
    /// Ask the kernel whether the system clock is synchronised (NTP) before
    /// trusting it for timestamps; off for machines whose clock is kept by
    /// their host (many VMs never clear the kernel's flag). A clock earlier
    /// than the binary is distrusted either way.
    pub clock_check: bool,
    /// Hot reload.
    pub reload: ReloadSection,
    /// How often the retained `G/$health` document is published (also at
    /// once when the gateway's status changes). Default 60s; `0s` publishes
    /// only on a change.
    pub health_interval: HumanDuration,
}

/// `gateway.reload:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReloadSection {
    /// A config file written in place (not replaced by a rename) is read
    /// only once it has not changed for this long. Default 500ms.
    pub settle: HumanDuration,
    /// After a reload that changed devices, watch this long; if fewer of the
    /// kept and changed devices are online at the end than before, go back
    /// to the previous config (the file is left as it is). Default `0s` = off.
    pub probation: HumanDuration,
}

impl Default for ReloadSection {
    fn default() -> Self {
        Self {
            settle: HumanDuration(Duration::from_millis(500)),
            probation: HumanDuration(Duration::ZERO),
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            state_directory: "/var/lib/fieldgate".into(),
            secrets_directory: DEFAULT_SECRETS_DIRECTORY.into(),
            metrics: MetricsSection::default(),
            log: LogSection::default(),
            clock_check: true,
            reload: ReloadSection::default(),
            health_interval: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// The default `gateway.secretsDirectory`.
pub const DEFAULT_SECRETS_DIRECTORY: &str = "/etc/fieldgate/secrets";

/// `gateway.metrics:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `host:port` for /metrics, /healthz, /api/v1 and the status page; empty turns it off.
    pub listen: String,
    /// Let the status page and `POST /api/v1/devices/<name>/set` write
    /// writable properties (through the `$set` validation). Default: false.
    pub commands: bool,
    /// Bearer token for writes; required with `commands` when the listener
    /// is not on loopback (prefer `tokenFile`).
    pub token: Option<String>,
    /// File holding the token (its first line).
    pub token_file: Option<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9880".into(),
            commands: false,
            token: None,
            token_file: None,
        }
    }
}

/// `gateway.log:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogSection {
    /// Minimum level.
    pub level: LogLevel,
    /// Line format.
    pub format: LogFormat,
}

/// Log level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Problems that fieldgate works around.
    Warn,
    /// Failures.
    Error,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `broker:` the embedded MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerSection {
    /// `host:port` the broker listens on (MQTT 3.1.1).
    pub listen: String,
    /// `host:port` of its MQTT 5 listener, if any.
    #[serde(default)]
    pub listen_v5: Option<String>,
    /// Allow listening on an address other than loopback (the broker has
    /// no authentication).
    #[serde(default)]
    pub allow_remote: bool,
}
