//! The config file's schema as serde types (camelCase keys), one struct per
//! YAML mapping. Defaults live here; cross-field rules live in `validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use fieldgate_drivers::DataType;

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
}

/// `gateway.reload:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReloadSection {
    /// A config file written in place (not replaced by a rename) is read
    /// only once it has not changed for this long. Default 500ms.
    pub settle: HumanDuration,
}

impl Default for ReloadSection {
    fn default() -> Self {
        Self {
            settle: HumanDuration(Duration::from_millis(500)),
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

/// `mqtt:` (top level, and per device as overrides).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MqttOptions {
    /// Connection options.
    pub client: ClientOptions,
    /// Topic and message options.
    pub message: MessageOptions,
    /// Discovery for consumers (top level only): Home Assistant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<crate::northbound::homeassistant::config::DiscoveryOptions>,
    /// Sparkplug B identity (top level only; with `message.format: sparkplugB`).
    pub sparkplug: Option<SparkplugOptions>,
}

/// `mqtt.sparkplug:` the Sparkplug B edge node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SparkplugOptions {
    /// Group id (required with `format: sparkplugB`).
    pub group_id: Option<String>,
    /// Edge node id; default the namespace.
    pub edge_node_id: Option<String>,
    /// Primary host id: birth only while its STATE says online; "" = none.
    pub primary_host_id: Option<String>,
}

/// `mqtt.message.format:` the northbound dialect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MessageFormat {
    /// fieldgate topics and JSON payloads.
    #[default]
    #[serde(rename = "fieldgate")]
    Fieldgate,
    /// Sparkplug B 3.0.
    #[serde(rename = "sparkplugB")]
    SparkplugB,
}

/// `mqtt.client:` every key optional so per-device overrides can be merged
/// over the top level; effective defaults are applied when resolving.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClientOptions {
    /// `scheme://host:port`; scheme tcp | ssl | tls | tcps | ws | wss | unix.
    pub server: Option<String>,
    /// 3 = MQTT 3.1, 4 = MQTT 3.1.1, 5 = MQTT 5.
    pub protocol_version: Option<u8>,
    /// Default `fieldgate-<namespace>`.
    pub client_id: Option<String>,
    /// Last will.
    pub will: Option<WillOptions>,
    /// Username and password.
    pub basic_auth: Option<BasicAuth>,
    /// TLS settings.
    pub tls_config: Option<TlsOptions>,
    /// Start a clean session on connect.
    pub clean_session: Option<bool>,
    /// Where messages wait while the broker is unreachable.
    pub store: Option<StoreOptions>,
    /// Resume stored subscriptions on connect (only with `cleanSession: false`).
    pub resume_subs: Option<bool>,
    /// How long a connection attempt may take.
    #[serde(alias = "connectionTime")]
    pub connect_timeout: Option<HumanDuration>,
    /// Keep-alive interval.
    pub keep_alive: Option<HumanDuration>,
    /// How long to wait for a PINGRESP.
    pub ping_timeout: Option<HumanDuration>,
    /// Keep messages in order within each QoS level.
    pub order: Option<bool>,
    /// How long one publish may take on the wire.
    pub write_timeout: Option<HumanDuration>,
    /// Reconnect automatically.
    pub auto_reconnect: Option<bool>,
    /// Reconnect backoff ceiling (starts at 1 s, doubles).
    pub max_reconnect_interval: Option<HumanDuration>,
    /// Messages held in memory while offline.
    pub message_channel_depth: Option<u32>,
    /// Extra HTTP headers for ws / wss.
    pub http_headers: Option<BTreeMap<String, HeaderValues>>,
    /// The oldest unacknowledged message older than this forces a
    /// reconnect; default `60s`, `0s` = never.
    pub ack_timeout: Option<HumanDuration>,
    /// Largest packet the broker takes (for MQTT 3.1/3.1.1, which cannot
    /// say); larger messages are dropped before sending. MQTT 5 uses the
    /// broker's CONNACK maximum packet size when it is smaller.
    pub max_packet_size: Option<ByteSize>,
}

/// An HTTP header's value(s): one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum HeaderValues {
    /// A single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

/// `will:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WillOptions {
    /// Will topic; default `G/$will` (or `T/$will` for a device's own session).
    pub topic: Option<WillTopic>,
    /// raw | base64 (`payloadContent` written in base64, sent decoded).
    pub payload_encode: Option<PayloadEncode>,
    /// Default `offline`.
    pub payload_content: Option<String>,
    /// Default 1.
    pub qos: Option<u8>,
    /// Default true.
    pub retained: Option<bool>,
}

/// The will topic: a string, or the reference design's `{name: …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WillTopic {
    /// `topic: a/b`
    Plain(String),
    /// `topic: { name: a/b }`
    Named {
        /// The topic.
        name: String,
    },
}

impl WillTopic {
    /// The topic string either way.
    pub fn as_str(&self) -> &str {
        match self {
            WillTopic::Plain(s) | WillTopic::Named { name: s } => s,
        }
    }
}

/// `basicAuth:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BasicAuth {
    /// User name.
    pub name: Option<String>,
    /// Password (prefer `passwordFile`).
    #[serde(alias = "passsword")]
    pub password: Option<String>,
    /// File whose first line is the password.
    pub password_file: Option<String>,
}

/// `tlsConfig:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsOptions {
    /// CA certificate, PEM text.
    pub ca_file_pem: Option<String>,
    /// CA certificate, PEM file.
    pub ca_file: Option<String>,
    /// Client certificate, PEM text.
    pub cert_file_pem: Option<String>,
    /// Client certificate, PEM file.
    pub cert_file: Option<String>,
    /// Client key, PEM text.
    pub key_file_pem: Option<String>,
    /// Client key, PEM file.
    pub key_file: Option<String>,
    /// CA certificate, PEM read from a secret: `<secretsDirectory>/<name>/<item>`.
    pub ca_file_pem_ref: Option<SecretRef>,
    /// Client certificate, PEM read from a secret.
    pub cert_file_pem_ref: Option<SecretRef>,
    /// Client key, PEM read from a secret.
    pub key_file_pem_ref: Option<SecretRef>,
    /// Name to verify the server certificate against (SNI).
    pub server_name: Option<String>,
    /// Do not verify the server certificate (dangerous).
    pub insecure_skip_verify: Option<bool>,
}

/// A reference to one item of a secret (the reference design's
/// `DeviceLinkReferenceRelationship`): the file `<secretsDirectory>/<name>/<item>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// The secret: a directory under `gateway.secretsDirectory`.
    pub name: String,
    /// The item: a file in that directory.
    pub item: String,
}

/// `store:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StoreOptions {
    /// memory | file
    #[serde(rename = "type")]
    pub kind: Option<StoreKind>,
    /// File store directory; default `<stateDirectory>/mqtt`.
    #[serde(alias = "direcotryPrefix")]
    pub directory_prefix: Option<String>,
    /// File store size bound, e.g. `64MiB`.
    pub max_bytes: Option<ByteSize>,
    /// File store: messages older than this are dropped (`reason="expired"`); default none.
    pub max_age: Option<HumanDuration>,
    /// File store: free disk space it never takes, e.g. `64MiB` (the default).
    pub min_free_bytes: Option<ByteSize>,
}

/// Store kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In memory, `messageChannelDepth` messages.
    #[default]
    Memory,
    /// On disk, `maxBytes`.
    File,
}

/// `mqtt.message:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MessageOptions {
    /// fieldgate (default) | sparkplugB; top level only.
    pub format: Option<MessageFormat>,
    /// Topic naming.
    pub topic: Option<TopicOptions>,
    /// raw | base64
    pub payload_encode: Option<PayloadEncode>,
    /// 0 | 1 | 2
    pub qos: Option<u8>,
    /// Retain state messages.
    pub retained: Option<bool>,
    /// How long to wait for a publish to complete; 0 = forever.
    pub wait_timeout: Option<HumanDuration>,
    /// MQTT 5 content type of state and `$set/result` messages; default
    /// `application/json` (none with `payloadEncode: base64`); "" = none.
    pub content_type: Option<String>,
    /// MQTT 5 user properties added to every state message.
    pub user_properties: Option<BTreeMap<String, String>>,
    /// MQTT 5 message expiry interval of state messages (whole seconds); 0s = none.
    pub message_expiry_interval: Option<HumanDuration>,
    /// Which MQTT 5 response topics of `$set` are used: `any` (default),
    /// `none`, or a list of topic filters.
    pub response_topics: Option<ResponseTopics>,
    /// Commands per second a device takes (token bucket, burst twice
    /// this); default 50.
    pub command_rate: Option<f64>,
}

/// `mqtt.message.responseTopics:` a keyword or a list of topic filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ResponseTopics {
    /// `any` or `none`.
    Keyword(ResponseTopicsKeyword),
    /// Only response topics matching one of these filters.
    Filters(Vec<String>),
}

/// `any` | `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseTopicsKeyword {
    /// Every valid response topic.
    Any,
    /// None: results go to `T/$set/result` only.
    None,
}

/// `mqtt.message.topic:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TopicOptions {
    /// Static topic (per device only).
    pub name: Option<String>,
    /// Prefix of dynamic topics; default `fieldgate`.
    pub prefix: Option<String>,
    /// nn | uid
    pub with: Option<TopicWith>,
}

/// Dynamic topic mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TopicWith {
    /// `<prefix>/<namespace>/<device>`
    #[default]
    Nn,
    /// `<prefix>/<uuidv5>`
    Uid,
}

/// Payload encoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncode {
    /// As is.
    #[default]
    Raw,
    /// Base64 out, base64-decoded in.
    Base64,
}

/// Which driver reads a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// The built-in simulator.
    Dummy,
    /// Modbus TCP / RTU / RTU over TCP.
    Modbus,
    /// OPC-UA client.
    Opcua,
    /// Bluetooth LE GATT.
    Ble,
}

impl DriverKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Dummy => "dummy",
            DriverKind::Modbus => "modbus",
            DriverKind::Opcua => "opcua",
            DriverKind::Ble => "ble",
        }
    }
}

/// Built-in simulated device models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DummyModel {
    /// The living-room fan.
    Fan,
}

/// One entry of `devices:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceConfig {
    /// Unique name; `[A-Za-z0-9][A-Za-z0-9_.-]*`.
    pub name: String,
    /// Which driver reads it.
    pub driver: DriverKind,
    /// A device profile whose keys this device starts from: a built-in
    /// profile name (`fieldgate profiles`), a file in
    /// /etc/fieldgate/profiles/NAME.yaml, or a path relative to this file.
    #[serde(default)]
    pub profile: Option<String>,
    /// dummy only: a built-in model instead of `properties`.
    #[serde(default)]
    pub model: Option<DummyModel>,
    /// Poll period (OPC-UA subscriptions: publishing interval). Default 1s.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: HumanDuration,
    /// Per-request timeout. Default 1s.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// When to publish.
    #[serde(default)]
    pub publish: PublishOptions,
    /// Per-device MQTT overrides merged over the top-level `mqtt`.
    #[serde(default)]
    pub mqtt: Option<MqttOptions>,
    /// Driver-specific connection settings.
    #[serde(default)]
    pub protocol: Option<ProtocolConfig>,
    /// The device's properties.
    #[serde(default)]
    pub properties: Vec<PropertyConfig>,
}

fn default_sync_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// `publish:`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PublishOptions {
    /// Publish only on change (beyond deadband), error change or heartbeat.
    pub on_change: bool,
    /// With `onChange`: publish at least this often; 0s = never.
    pub heartbeat: HumanDuration,
}

/// `protocol:` — the union of every driver's keys; `validate` checks that
/// only the device's driver's keys are used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProtocolConfig {
    // --- modbus ---
    /// Modbus TCP.
    pub tcp: Option<EndpointConfig>,
    /// Modbus RTU over a serial line.
    pub rtu: Option<RtuConfig>,
    /// Modbus RTU framing over TCP.
    pub rtu_over_tcp: Option<EndpointConfig>,
    /// Modbus unit id (default 1).
    pub unit_id: Option<u8>,
    /// Default byte order: ABCD | BADC | CDAB | DCBA (modbus) or little | big (ble).
    pub byte_order: Option<ByteOrderName>,
    /// Read planner: most registers per request (default 125).
    pub max_registers_per_read: Option<u16>,
    /// Read planner: largest gap merged (default 10).
    pub max_gap: Option<u16>,
    // --- opcua ---
    /// opc.tcp://host:port
    pub endpoint: Option<String>,
    /// None | Basic256Sha256 | Aes128Sha256RsaOaep | Aes256Sha256RsaPss
    pub security_policy: Option<String>,
    /// None | Sign | SignAndEncrypt
    pub security_mode: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password (prefer `passwordFile`).
    pub password: Option<String>,
    /// File whose first line is the password.
    pub password_file: Option<String>,
    /// Client certificate (DER).
    pub certificate: Option<String>,
    /// Client private key (PEM).
    pub private_key: Option<String>,
    /// Directory of trusted server certificates.
    pub trusted_server_certificates: Option<String>,
    /// subscribe | poll
    pub mode: Option<String>,
    // --- ble ---
    /// Peripheral MAC address.
    pub address: Option<String>,
    /// Peripheral advertised name.
    pub name: Option<String>,
    /// Adapter, e.g. hci0.
    pub adapter: Option<String>,
    /// How long to scan for the peripheral.
    pub scan_timeout: Option<HumanDuration>,
    /// BLE `mode: advertisement`: bthome | pvvx | atc1441 | ruuvi | raw
    pub format: Option<AdvertFormatName>,
    /// BLE advertisements: BTHome v2 bind key (32 hex digits).
    pub bind_key: Option<String>,
    /// BLE advertisements: offline when nothing was heard for this long (default 5m).
    pub stale_after: Option<HumanDuration>,
}

/// BLE advertisement formats (`protocol.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdvertFormatName {
    /// BTHome v2 (plain or encrypted).
    Bthome,
    /// pvvx custom format (LYWSD03MMC firmware).
    Pvvx,
    /// ATC1441 custom format (LYWSD03MMC firmware).
    Atc1441,
    /// RuuviTag data format 5.
    Ruuvi,
    /// Fields defined by `source`, `byteOffset`, `type`.
    Raw,
}

/// Where a raw advertisement property reads its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AdvertSourceName {
    /// Manufacturer data of `companyId`.
    ManufacturerData,
    /// Service data of `serviceUuid`.
    ServiceData,
}

/// `{ endpoint: host:port }`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointConfig {
    /// `host:port`
    pub endpoint: String,
}

/// `rtu:`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RtuConfig {
    /// Serial device path.
    pub port: String,
    /// Default 9600.
    #[serde(default = "default_baud")]
    pub baud_rate: u32,
    /// Default 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// none | even | odd; default none.
    #[serde(default)]
    pub parity: ParityName,
    /// 1 or 2; default 1.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// Serial parity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParityName {
    /// No parity.
    #[default]
    None,
    /// Even.
    Even,
    /// Odd.
    Odd,
}

/// Byte orders: Modbus word orders and BLE endianness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ByteOrderName {
    /// Big-endian (Modbus default).
    #[serde(rename = "ABCD")]
    Abcd,
    /// Byte-swapped words.
    #[serde(rename = "BADC")]
    Badc,
    /// Word-swapped.
    #[serde(rename = "CDAB")]
    Cdab,
    /// Little-endian.
    #[serde(rename = "DCBA")]
    Dcba,
    /// BLE little-endian.
    #[serde(rename = "little")]
    Little,
    /// BLE big-endian.
    #[serde(rename = "big")]
    Big,
}

/// One entry of `properties:` — common keys plus every driver's addressing
/// keys; `validate` checks that only the device's driver's keys are used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = name_and_type_or_field)]
pub struct PropertyConfig {
    /// Unique within the device; must not start with `$`.
    pub name: String,
    /// Raw type on the device.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Per-property byte order override.
    #[serde(default)]
    pub byte_order: Option<ByteOrderName>,
    /// Accepts `$set`.
    #[serde(default)]
    pub writable: bool,
    /// published = raw × scale + offset
    #[serde(default)]
    pub scale: Option<f64>,
    /// published = raw × scale + offset
    #[serde(default)]
    pub offset: Option<f64>,
    /// raw value → label
    #[serde(default, rename = "enum")]
    pub enum_labels: Option<BTreeMap<EnumKey, String>>,
    /// Lowest value accepted by `$set` (published units).
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value accepted by `$set` (published units).
    #[serde(default)]
    pub max: Option<f64>,
    /// With `publish.onChange`: smallest change that counts.
    #[serde(default)]
    pub deadband: Option<f64>,
    /// Unit, published in `$meta`.
    #[serde(default)]
    pub unit: Option<String>,
    /// Description, published in `$meta`.
    #[serde(default)]
    pub description: Option<String>,
    /// Refinements of the Home Assistant entity (with `mqtt.discovery.homeAssistant`).
    #[serde(default)]
    pub home_assistant: Option<crate::northbound::homeassistant::config::PropertyOverrides>,
    // --- dummy ---
    /// Simulated value generator.
    #[serde(default)]
    pub simulate: Option<SimulateConfig>,
    // --- modbus ---
    /// coil | discreteInput | input | holding
    #[serde(default)]
    pub register: Option<RegisterName>,
    /// 0-based address.
    #[serde(default)]
    pub address: Option<u16>,
    /// A single bit of a register, 0 = least significant.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Registers for string/bytes.
    #[serde(default)]
    pub quantity: Option<u16>,
    /// int8/uint8: which byte of the register (high | low; default low).
    #[serde(default)]
    pub byte: Option<ByteName>,
    // --- opcua ---
    /// e.g. `ns=2;s=Line1.Speed`
    #[serde(default)]
    pub node_id: Option<String>,
    // --- ble ---
    /// GATT service UUID (optional, disambiguates).
    #[serde(default)]
    pub service: Option<String>,
    /// GATT characteristic UUID.
    #[serde(default)]
    pub characteristic: Option<String>,
    /// read | notify | write | readWrite
    #[serde(default)]
    pub access: Option<BleAccess>,
    /// Offset of the value in the characteristic's (or advertisement data's) bytes.
    #[serde(default)]
    pub byte_offset: Option<u16>,
    /// BLE advertisements: the decoded field this property publishes (e.g. `temperature`, `rssi`).
    #[serde(default)]
    pub field: Option<String>,
    /// BLE advertisements, raw: manufacturerData | serviceData
    #[serde(default)]
    pub source: Option<AdvertSourceName>,
    /// BLE advertisements, raw: company id of the manufacturer data (e.g. 0x0499).
    #[serde(default)]
    pub company_id: Option<u16>,
    /// BLE advertisements, raw: service UUID of the service data (e.g. "181a").
    #[serde(default)]
    pub service_uuid: Option<String>,
}

/// A property needs `name` and `type`, except a BLE advertisement property
/// with `field:`, whose name defaults to the field and whose type the
/// format decides.
fn name_and_type_or_field(schema: &mut schemars::Schema) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(serde_json::Value::Array(req)) = obj.get_mut("required") {
        req.retain(|k| k != "name" && k != "type");
        if req.is_empty() {
            obj.remove("required");
        }
    }
    obj.insert(
        "anyOf".into(),
        serde_json::json!([{ "required": ["name", "type"] }, { "required": ["field"] }]),
    );
}

/// Modbus data table names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RegisterName {
    /// Coils.
    Coil,
    /// Discrete inputs.
    DiscreteInput,
    /// Input registers.
    Input,
    /// Holding registers.
    Holding,
}

/// Which byte of a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ByteName {
    /// High byte.
    High,
    /// Low byte.
    Low,
}

/// BLE characteristic access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BleAccess {
    /// Polled reads.
    Read,
    /// Notifications.
    Notify,
    /// Writes only.
    Write,
    /// Reads and writes.
    ReadWrite,
}

/// `simulate:` one generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SimulateConfig {
    /// A fixed value.
    Constant(ScalarValue),
    /// `start`, `start+step`, … one step per read.
    Counter {
        /// First value (default 0).
        #[serde(default)]
        start: f64,
        /// Increment (default 1).
        #[serde(default = "one")]
        step: f64,
    },
    /// Uniform random in `[min, max]`.
    Random {
        /// Lowest.
        min: f64,
        /// Highest.
        max: f64,
    },
    /// Sine wave between `min` and `max`.
    Sine {
        /// Lowest.
        min: f64,
        /// Highest.
        max: f64,
        /// Period.
        period: HumanDuration,
    },
}

fn one() -> f64 {
    1.0
}

/// A YAML scalar (constant generators).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ScalarValue {
    /// true/false
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Text.
    String(String),
}

/// A raw value that an `enum` label maps from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum EnumKey {
    /// A number (most devices).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A string (string properties).
    Str(String),
}

impl<'de> Deserialize<'de> for EnumKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EnumKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer, boolean or string raw value")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EnumKey, E> {
                Ok(EnumKey::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EnumKey, E> {
                i64::try_from(v)
                    .map(EnumKey::Int)
                    .map_err(|_| E::custom("enum key too large"))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EnumKey, E> {
                Ok(EnumKey::Bool(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnumKey, E> {
                Ok(v.parse::<i64>()
                    .map(EnumKey::Int)
                    .unwrap_or_else(|_| EnumKey::Str(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for EnumKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnumKey::Int(i) => write!(f, "{i}"),
            EnumKey::Bool(b) => write!(f, "{b}"),
            EnumKey::Str(s) => f.write_str(s),
        }
    }
}

/// A duration written like `500ms`, `30s`, `10m`, `1h30m`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(Self(Duration::ZERO));
        }
        humantime::parse_duration(t)
            .map(Self)
            .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 500ms, 30s, 10m"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^\\s*(0|([0-9]+\\s*(ns|us|µs|ms|s|sec|m|min|h|hr|d)\\s*)+)\\s*$",
            "description": "A duration such as 500ms, 30s, 10m or 1h30m"
        })
    }
}

/// A size written like `64MiB`, `512KiB`, `1GB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 64MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Self)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 64MiB")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^\\s*[0-9]+\\s*(B|KB|kB|KiB|MB|MiB|GB|GiB)?\\s*$"}
            ],
            "description": "A size in bytes, such as 64MiB"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().get(),
            Duration::from_millis(500)
        );
        assert_eq!("0s".parse::<HumanDuration>().unwrap().get(), Duration::ZERO);
        assert_eq!(
            "10m".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(600)
        );
        assert!("ten".parse::<HumanDuration>().is_err());
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("5 parsecs".parse::<ByteSize>().is_err());
    }
}
