//! The effective configuration after defaults, per-device overrides and
//! validation: what the running gateway consumes. Every value here is checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fieldgate_drivers::{DataType, DeviceSpec};

use super::types::{DriverKind, LogFormat, LogLevel, PayloadEncode};

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// `gateway:` after defaults.
    pub gateway: GatewaySettings,
    /// The embedded broker, when configured.
    pub broker: Option<BrokerSettings>,
    /// Gateway topic G = `<top-level prefix>/<namespace>`.
    pub gateway_topic: String,
    /// MQTT sessions, deduplicated by client options.
    pub sessions: Vec<SessionSettings>,
    /// Devices, in file order (shared with the running devices, not copied).
    pub devices: Vec<Arc<DeviceSettings>>,
    /// The files (included, profiles) this config was assembled from.
    pub sources: super::sources::Sources,
    /// Home Assistant discovery, when enabled.
    pub home_assistant: Option<crate::northbound::homeassistant::HomeAssistantSettings>,
}

/// `gateway:` after defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySettings {
    /// The `nn` topic segment.
    pub namespace: String,
    /// State directory.
    pub state_directory: PathBuf,
    /// Metrics listener; `None` = off.
    pub metrics_listen: Option<SocketAddr>,
    /// Writes from the status page and `/api/v1` allowed.
    pub metrics_commands: bool,
    /// Bearer token those writes need, if any.
    pub metrics_token: Option<Secret>,
    /// Log level.
    pub log_level: LogLevel,
    /// Log format.
    pub log_format: LogFormat,
    /// `clockCheck`: ask the kernel whether the clock is synchronised.
    pub clock_check: bool,
    /// `reload.settle`: how long a file written in place must stay unchanged.
    pub reload_settle: std::time::Duration,
    /// `reload.probation`: how long a reload is watched; zero = off.
    pub reload_probation: std::time::Duration,
    /// `healthInterval`: how often `G/$health` is published; zero = on change only.
    pub health_interval: std::time::Duration,
}

/// A secret string (a token, a password, a private key, a header value)
/// that never shows in `Debug` or `Display` output: logs, panics and
/// `{:?}` of the resolved config print `Secret(..)` instead.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself, for the one place that must send or use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The embedded broker.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerSettings {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where it serves MQTT 5, if anywhere.
    pub listen_v5: Option<SocketAddr>,
}

/// How to reach the broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddress {
    /// Plain TCP.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port (default 1883).
        port: u16,
    },
    /// TLS over TCP (`ssl`, `tls`, `tcps`, `mqtts`).
    Tls {
        /// Host name or address.
        host: String,
        /// Port (default 8883).
        port: u16,
    },
    /// MQTT over WebSocket (`ws`) or secure WebSocket (`wss`).
    WebSocket {
        /// Full URL with an explicit port, e.g. `ws://host:80/mqtt`.
        url: String,
        /// Host name or address (for TLS verification).
        host: String,
        /// `wss`: TLS under the WebSocket.
        secure: bool,
    },
    /// A Unix domain socket.
    Unix {
        /// Socket path.
        path: PathBuf,
    },
}

impl ServerAddress {
    /// True when the transport uses TLS.
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            ServerAddress::Tls { .. } | ServerAddress::WebSocket { secure: true, .. }
        )
    }
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            ServerAddress::Tls { host, port } => write!(f, "tls://{host}:{port}"),
            ServerAddress::WebSocket { url, .. } => f.write_str(url),
            ServerAddress::Unix { path } => write!(f, "unix://{}", path.display()),
        }
    }
}

/// TLS material and options, resolved (PEM files already read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// CA certificates (PEM) to trust; `None` = the system's roots.
    pub ca_pem: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub cert_pem: Option<String>,
    /// Client private key (PEM) for mutual TLS.
    pub key_pem: Option<Secret>,
    /// Name for SNI and certificate verification; default: the server host.
    pub server_name: Option<String>,
    /// Accept any server certificate (logged loudly at every connect).
    pub insecure_skip_verify: bool,
}

/// The will message, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WillSettings {
    /// Will topic.
    pub topic: String,
    /// Decoded payload bytes.
    pub payload: Vec<u8>,
    /// QoS 0..=2.
    pub qos: u8,
    /// Retain flag.
    pub retained: bool,
}

/// Effective client options of one MQTT session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionSettings {
    /// Session key: the MQTT client id (metric label `session`).
    pub client_id: String,
    /// Broker address (the first of a cluster list).
    pub server: ServerAddress,
    /// The other servers of a cluster list (`server: [a, b, c]`), tried in
    /// order after `server`; empty for a single server.
    pub fallback_servers: Vec<ServerAddress>,
    /// 3 = MQTT 3.1, 4 = MQTT 3.1.1, 5 = MQTT 5.
    pub protocol_version: u8,
    /// TLS options (used by `ssl`/`tls`/`tcps`/`wss` servers).
    pub tls: TlsSettings,
    /// Extra HTTP headers of the WebSocket handshake (`ws`/`wss`).
    /// (Values redacted in `Debug`: they often carry a bearer token.)
    pub http_headers: Vec<(String, Secret)>,
    /// Will, birth (`online`) and clean-stop message topic and payload.
    pub will: WillSettings,
    /// User name, if any.
    pub username: Option<String>,
    /// Password (from `password` or `passwordFile`), if any.
    pub password: Option<Secret>,
    /// Clean session flag.
    pub clean_session: bool,
    /// Where undelivered messages are kept.
    pub store: StoreSettings,
    /// Connection attempt timeout; zero = none.
    pub connect_timeout: Duration,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// PINGRESP timeout; zero = wait until the next keep-alive.
    pub ping_timeout: Duration,
    /// A socket write taking longer fails the connection; zero = none.
    pub write_timeout: Duration,
    /// With a resumed session, subscribe again to every command topic.
    pub resume_subs: bool,
    /// `order` as configured (see docs/mqtt.md: ordering is always kept per device).
    pub order: bool,
    /// Reconnect automatically.
    pub auto_reconnect: bool,
    /// Reconnect backoff ceiling.
    pub max_reconnect_interval: Duration,
    /// Messages held in memory while offline.
    pub message_channel_depth: usize,
    /// The oldest unacknowledged message older than this forces a
    /// reconnect; zero = never.
    pub ack_timeout: Duration,
    /// `maxPacketSize`: the largest packet the broker takes, if configured.
    pub max_packet_size: Option<u32>,
    /// Sparkplug B edge node of this session (`mqtt.message.format:
    /// sparkplugB`); `None`: fieldgate topics.
    pub sparkplug: Option<SparkplugSettings>,
}

impl SessionSettings {
    /// Every server of the session, in the order they are tried.
    pub fn servers(&self) -> impl Iterator<Item = &ServerAddress> {
        std::iter::once(&self.server).chain(&self.fallback_servers)
    }

    /// How many servers the session has (at least one).
    pub fn server_count(&self) -> usize {
        1 + self.fallback_servers.len()
    }

    /// The server at `index` (taken modulo the count: rounds wrap around).
    pub fn server_at(&self, index: usize) -> &ServerAddress {
        match index % self.server_count() {
            0 => &self.server,
            i => &self.fallback_servers[i - 1],
        }
    }
}

/// `mqtt.sparkplug`, resolved: the edge node one session speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SparkplugSettings {
    /// Group id (topic level 2).
    pub group_id: String,
    /// Edge node id (topic level 4); default the namespace.
    pub edge_node_id: String,
    /// Primary host whose `spBv1.0/STATE/<id>` gates the births.
    pub primary_host_id: Option<String>,
    /// Where the last `bdSeq` is kept.
    pub bdseq_file: PathBuf,
}

/// Default `mqtt.client.ackTimeout`.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `mqtt.message.commandRate` (commands per second per device).
pub const DEFAULT_COMMAND_RATE: f64 = 50.0;

/// The session's store, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreSettings {
    /// In memory: `messageChannelDepth` messages.
    Memory,
    /// On disk.
    File {
        /// The store directory (`directoryPrefix`, default
        /// `<stateDirectory>/mqtt/<client id>`).
        directory: PathBuf,
        /// Size bound of the files.
        max_bytes: u64,
        /// Messages older than this are dropped; `None` = never.
        max_age: Option<Duration>,
        /// Free disk space the store never takes (it drops its oldest).
        min_free_bytes: u64,
    },
}

/// Default `store.maxBytes`: 64 MiB.
pub const DEFAULT_STORE_MAX_BYTES: u64 = 64 << 20;
/// Default `store.minFreeBytes`: 64 MiB.
pub const DEFAULT_STORE_MIN_FREE_BYTES: u64 = 64 << 20;
/// Smallest accepted `store.maxBytes`: 64 KiB.
pub const MIN_STORE_BYTES: u64 = 64 << 10;

/// Effective message options of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageSettings {
    /// The device topic T.
    pub topic: String,
    /// raw | base64
    pub payload_encode: PayloadEncode,
    /// QoS of state, `$state`, `$meta`, `$set/result`.
    pub qos: u8,
    /// Retain flag of state messages.
    pub retained: bool,
    /// Publish completion timeout; zero = none.
    pub wait_timeout: Duration,
    /// MQTT 5 properties of state messages.
    pub state_props: std::sync::Arc<crate::mqtt::MessageProps>,
    /// MQTT 5 properties of `$set/result` messages (content type only).
    pub result_props: std::sync::Arc<crate::mqtt::MessageProps>,
    /// Which MQTT 5 response topics are used.
    pub response_topics: ResponseTopicPolicy,
    /// Commands per second (token bucket, burst twice this).
    pub command_rate: f64,
}

/// `mqtt.message.responseTopics`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResponseTopicPolicy {
    /// Every valid response topic.
    #[default]
    Any,
    /// None: results go to `T/$set/result` only.
    None,
    /// Only response topics matching one of these filters.
    Filters(Vec<String>),
}

impl ResponseTopicPolicy {
    /// The policy for the configured option (absent = `any`).
    pub fn from_options(o: Option<&crate::config::types::ResponseTopics>) -> Self {
        use crate::config::types::{ResponseTopics, ResponseTopicsKeyword};
        match o {
            None | Some(ResponseTopics::Keyword(ResponseTopicsKeyword::Any)) => Self::Any,
            Some(ResponseTopics::Keyword(ResponseTopicsKeyword::None)) => Self::None,
            Some(ResponseTopics::Filters(f)) => Self::Filters(f.clone()),
        }
    }
}

/// When a device publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishPolicy {
    /// Only on change / error change / heartbeat.
    pub on_change: bool,
    /// Heartbeat with `on_change`; zero = never.
    pub heartbeat: Duration,
}

/// One enum entry: raw value and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct EnumEntry {
    /// The raw value, as the driver reports it (same type as the property).
    pub raw: fieldgate_drivers::Value,
    /// The published label.
    pub label: String,
}

/// The gateway's view of one property: its meaning (scaling, enum, bounds).
/// The optional parts share one box: most properties have none of them, and
/// a gateway holds tens of thousands of properties.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertySemantics {
    /// Name (the same allocation as the driver's [`fieldgate_drivers::PropertySpec::name`]).
    pub name: Arc<str>,
    /// Raw type.
    pub data_type: DataType,
    /// Accepts `$set`.
    pub writable: bool,
    /// Scaling, enum, bounds, deadband, unit and description; `None` when
    /// the property has none of them.
    pub details: Option<Box<PropertyDetails>>,
}

/// The optional parts of a property's meaning.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PropertyDetails {
    /// Multiplier (published = raw × scale + offset).
    pub scale: Option<f64>,
    /// Addend.
    pub offset: Option<f64>,
    /// `scaleFactor`: the property whose reading is the power of ten the
    /// value is multiplied by as well.
    pub scale_factor: Option<ScaleFactorRef>,
    /// Raw → label map (empty: no enum).
    pub enum_entries: Box<[EnumEntry]>,
    /// Lower `$set` bound in published units.
    pub min: Option<f64>,
    /// Upper `$set` bound in published units.
    pub max: Option<f64>,
    /// On-change deadband in published units.
    pub deadband: Option<f64>,
    /// Unit for `$meta`.
    pub unit: Option<Box<str>>,
    /// Description for `$meta`.
    pub description: Option<Box<str>>,
    /// `homeAssistant:` refinements of the property's entity.
    pub home_assistant: Option<Box<crate::northbound::homeassistant::config::PropertyOverrides>>,
}

/// The property a `scaleFactor` names.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleFactorRef {
    /// Its name (shared with its own semantics).
    pub name: Arc<str>,
    /// Its index in the device's properties.
    pub index: usize,
}

impl PropertySemantics {
    /// A property with no scaling, enum, bounds, deadband, unit or description.
    pub fn new(name: impl Into<Arc<str>>, data_type: DataType, writable: bool) -> Self {
        Self {
            name: name.into(),
            data_type,
            writable,
            details: None,
        }
    }

    /// The same property with its details changed by `edit` (kept unboxed
    /// when they end up empty).
    pub fn with(mut self, edit: impl FnOnce(&mut PropertyDetails)) -> Self {
        let mut details = self.details.take().unwrap_or_default();
        edit(&mut details);
        if *details != PropertyDetails::default() {
            self.details = Some(details);
        }
        self
    }

    /// Multiplier (published = raw × scale + offset).
    pub fn scale(&self) -> Option<f64> {
        self.details.as_ref().and_then(|d| d.scale)
    }

    /// Addend.
    pub fn offset(&self) -> Option<f64> {
        self.details.as_ref().and_then(|d| d.offset)
    }

    /// The property whose reading is a further power-of-ten exponent.
    pub fn scale_factor(&self) -> Option<&ScaleFactorRef> {
        self.details.as_ref().and_then(|d| d.scale_factor.as_ref())
    }

    /// Whether the published value is scaled (`scale`, `offset` or
    /// `scaleFactor`): an integer then publishes as a float.
    pub fn is_scaled(&self) -> bool {
        self.details
            .as_ref()
            .is_some_and(|d| d.scale.is_some() || d.offset.is_some() || d.scale_factor.is_some())
    }

    /// Raw → label map (empty: no enum).
    pub fn enum_entries(&self) -> &[EnumEntry] {
        self.details.as_ref().map_or(&[], |d| &d.enum_entries)
    }

    /// Lower `$set` bound in published units.
    pub fn min(&self) -> Option<f64> {
        self.details.as_ref().and_then(|d| d.min)
    }

    /// Upper `$set` bound in published units.
    pub fn max(&self) -> Option<f64> {
        self.details.as_ref().and_then(|d| d.max)
    }

    /// On-change deadband in published units.
    pub fn deadband(&self) -> Option<f64> {
        self.details.as_ref().and_then(|d| d.deadband)
    }

    /// Unit for `$meta`.
    pub fn unit(&self) -> Option<&str> {
        self.details.as_ref().and_then(|d| d.unit.as_deref())
    }

    /// Description for `$meta`.
    pub fn description(&self) -> Option<&str> {
        self.details.as_ref().and_then(|d| d.description.as_deref())
    }
}

/// One device, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSettings {
    /// Device name.
    pub name: String,
    /// Driver.
    pub driver: DriverKind,
    /// What the driver runs (name, intervals, connection, raw properties).
    pub spec: DeviceSpec,
    /// Property semantics, same order as `spec.properties`.
    pub properties: Vec<PropertySemantics>,
    /// Publish policy.
    pub publish: PublishPolicy,
    /// Index into [`Resolved::sessions`].
    pub session: usize,
    /// Message options and topic.
    pub message: MessageSettings,
}
