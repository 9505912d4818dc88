//! `mqtt:` (top level, and per device as overrides): client, message,
//! Sparkplug B.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::*;

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
    /// `scheme://host:port`, or a list of them (a broker cluster, tried in
    /// order); scheme tcp | ssl | tls | tcps | ws | wss | unix.
    pub server: Option<ServerList>,
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

/// `server:` one broker URL, or a list of them: the servers of a broker
/// cluster, tried in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ServerList {
    /// A single server.
    One(String),
    /// The servers of a cluster.
    Many(Vec<String>),
}

impl ServerList {
    /// The URLs, in order.
    pub fn urls(&self) -> &[String] {
        match self {
            ServerList::One(s) => std::slice::from_ref(s),
            ServerList::Many(v) => v,
        }
    }
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
