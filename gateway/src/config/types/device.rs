//! `devices:`: a device, its `protocol:` (every driver's keys, checked
//! per driver by `config::drivers`) and its properties.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use fieldgate_drivers::DataType;

use super::*;

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
    /// Allow `username`/`password` over `securityPolicy: None`, where the
    /// password travels in plain text (opcua only; `check` warns).
    pub allow_plaintext_password: Option<bool>,
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
    /// Name of an integer property of this device read in the same cycle
    /// (SunSpec `*_SF`): published = raw × scale × 10^(its reading) + offset
    #[serde(default)]
    pub scale_factor: Option<String>,
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
