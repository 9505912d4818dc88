//! Loading: YAML text → located tree → typed sections (subtree by subtree, so
//! independent mistakes are all reported) → validation → [`Resolved`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::de::DeserializeOwned;

use fieldgate_drivers::dummy::Generator;
use fieldgate_drivers::{Connection, DataType, DeviceSpec, PropertyAddress, PropertySpec, Value};

use super::resolved::*;
use super::tree::{self, from_node, join, list, Kind, Node};
use super::types::*;
use super::{ConfigError, ConfigErrors};
use crate::northbound::homeassistant::config::{self as ha_config, DiscoveryOptions};

#[cfg(feature = "ble")]
pub(crate) mod ble_adverts;

/// `s` with control characters (line breaks, tabs, terminal escapes) written
/// as escapes: keys and values quoted from the file must not break an error
/// out of its one `FILE:LINE:COLUMN: KEY.PATH: message` line.
fn one_line(s: &str) -> String {
    if !s.contains(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Collects located errors for one file.
pub(crate) struct Ctx {
    pub(crate) file: String,
    /// Files besides the main one (included files, profiles): a node tagged
    /// with number N (see [`super::sources`]) is in `files[N - 1]`.
    pub(crate) files: Vec<super::sources::SourceFile>,
    /// The device being loaded: errors inside a profile name it.
    pub(crate) device: Option<String>,
    pub(crate) errors: Vec<ConfigError>,
}

impl Ctx {
    pub(crate) fn new(file: &str) -> Self {
        Ctx {
            file: file.to_string(),
            files: Vec::new(),
            device: None,
            errors: Vec::new(),
        }
    }

    /// An error at `node`, key path `path`.
    pub(crate) fn at(&mut self, node: &Node, path: &str, msg: impl Into<String>) {
        let (line, column) = node.pos();
        self.at_pos(line, column, path, msg);
    }

    /// The label of the file node `node` was read from.
    pub(crate) fn file_of(&self, node: &Node) -> &str {
        let (id, _) = super::sources::split(node.line as usize);
        match id.checked_sub(1).and_then(|i| self.files.get(i)) {
            Some(f) => &f.label,
            None => &self.file,
        }
    }

    pub(crate) fn at_pos(
        &mut self,
        line: usize,
        column: usize,
        path: &str,
        msg: impl Into<String>,
    ) {
        let (id, line) = super::sources::split(line);
        let mut message = msg.into();
        let file = match id.checked_sub(1).and_then(|i| self.files.get(i)) {
            Some(f) => {
                if let Some(p) = &f.profile {
                    match &self.device {
                        Some(d) => {
                            message.push_str(&format!(" (in profile `{p}`, used by device `{d}`)"))
                        }
                        None => message.push_str(&format!(" (in profile `{p}`)")),
                    }
                }
                f.label.clone()
            }
            None => self.file.clone(),
        };
        self.errors.push(ConfigError {
            file,
            line: line.max(1),
            column: column.max(1),
            key_path: one_line(path),
            message: one_line(&message),
        });
    }

    /// An error at the key `keys[..]` (any alias) of mapping `map` (falls back
    /// to the mapping itself when the key is absent).
    fn key(&mut self, map: &Node, path: &str, keys: &[&str], msg: impl Into<String>) {
        match map.entry(keys) {
            Some((k, _)) => {
                let p = join(path, &k.text().unwrap_or_default());
                self.at(k, &p, msg)
            }
            None => self.at(map, path, msg),
        }
    }

    /// An error at the value of `keys[..]` of mapping `map`.
    fn val(&mut self, map: &Node, path: &str, keys: &[&str], msg: impl Into<String>) {
        match map.entry(keys) {
            Some((k, v)) => {
                let p = join(path, &k.text().unwrap_or_default());
                self.at(v, &p, msg)
            }
            None => self.at(map, path, msg),
        }
    }

    /// Deserializes `T` from `node`. On an error inside one entry of the
    /// mapping, reports it, drops that entry and tries again, so every bad
    /// entry is reported once. `None` when the mapping as a whole is invalid
    /// (wrong kind, missing required key).
    fn de<T: DeserializeOwned>(&mut self, node: &Node, path: &str) -> Option<T> {
        let mut cur = node.clone();
        let mut removed: Vec<String> = Vec::new();
        loop {
            match from_node::<T>(&cur, path) {
                Ok(v) => return Some(v),
                Err(e) => {
                    let consequence = removed
                        .iter()
                        .any(|k| e.message == format!("missing required key `{k}`"));
                    if consequence {
                        return None;
                    }
                    let (line, column, epath) = e.at.clone().unwrap_or_else(|| {
                        let (line, column) = cur.pos();
                        (line, column, path.to_string())
                    });
                    self.at_pos(line, column, &epath, e.message.clone());
                    let rest = if path.is_empty() {
                        Some(epath.as_str())
                    } else {
                        epath.strip_prefix(path).and_then(|r| r.strip_prefix('.'))
                    };
                    let rest = rest.filter(|r| !r.is_empty())?;
                    let key = rest.split(['.', '[']).next().unwrap_or(rest).to_string();
                    cur.entry(&[key.as_str()])?;
                    cur = cur.without(&[key.as_str()]);
                    removed.push(key);
                }
            }
        }
    }

    /// Reports every key of mapping `node` not in `allowed`.
    fn only_keys(&mut self, node: &Node, path: &str, allowed: &[&str]) -> bool {
        let mut ok = true;
        if let Some(entries) = node.entries() {
            for (k, _) in entries {
                let name = k.text().unwrap_or_default();
                if !allowed.contains(&name.as_str()) {
                    ok = false;
                    self.at(
                        k,
                        &join(path, &name),
                        tree::unknown_key_message(&name, allowed),
                    );
                }
            }
        }
        ok
    }
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a topic (or topic prefix) against the topic rules.
pub fn check_topic(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("a topic must not be empty".into());
    }
    if t.contains('+') || t.contains('#') {
        return Err(format!(
            "topic `{t}` contains a wildcard (`+` or `#`); topics here are plain names"
        ));
    }
    if t.contains('\0') {
        return Err(format!(
            "topic `{}` contains a NUL character",
            t.escape_debug()
        ));
    }
    if t.starts_with('/') {
        return Err(format!("topic `{t}` must not start with `/`"));
    }
    if t.starts_with('$') {
        return Err(format!(
            "topic `{t}` must not start with `$` (reserved for broker topics)"
        ));
    }
    if t.split('/').any(str::is_empty) {
        return Err(format!(
            "topic `{t}` has an empty level (`//` or a trailing `/`)"
        ));
    }
    if t.len() > 60_000 {
        return Err("topic is too long".into());
    }
    Ok(())
}

/// Longest MQTT client id (a UTF-8 string with a 16-bit length).
const MAX_CLIENT_ID: usize = 65_535;

const NAME_RULE: &str = "use letters, digits, `_`, `.` and `-`, starting with a letter or digit";

/// The path of the mapping that encloses (line, column), from indentation:
/// YAML syntax errors come before a tree exists.
pub(crate) fn enclosing_path(text: &str, line: usize, column: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || lines.is_empty() {
        return String::new();
    }
    let last = (line - 1).min(lines.len() - 1);
    let mut limit = column.saturating_sub(1);
    let mut segs: Vec<String> = Vec::new();
    let key_of = |s: &str| -> Option<String> {
        let s = s.trim_start();
        let s = s.strip_prefix("- ").unwrap_or(s);
        let end = s.find(':')?;
        let k = s[..end].trim().trim_matches(|c| c == '"' || c == '\'');
        let rest = &s[end + 1..];
        if k.is_empty() || k.contains(' ') || !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        Some(k.to_string())
    };
    for i in (0..=last).rev() {
        let l = lines[i];
        let content = l.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let ind = l.len() - content.len();
        if i == last && ind >= limit {
            continue;
        }
        let dash = content.starts_with("- ") || content == "-";
        let key_ind = if dash { ind + 2 } else { ind };
        if let Some(k) = key_of(content) {
            if key_ind < limit {
                segs.push(k);
                limit = key_ind;
            }
        }
        if dash && ind < limit {
            // Count earlier items at this indentation under the same parent.
            let mut n = 0;
            for l2 in lines[..i].iter().rev() {
                let c2 = l2.trim_start();
                if c2.is_empty() || c2.starts_with('#') {
                    continue;
                }
                let ind2 = l2.len() - c2.len();
                if ind2 < ind {
                    break;
                }
                if ind2 == ind && (c2.starts_with("- ") || c2 == "-") {
                    n += 1;
                }
            }
            segs.push(format!("[{n}]"));
            limit = ind;
        }
        if limit == 0 {
            break;
        }
    }
    let mut out = String::new();
    for s in segs.iter().rev() {
        if s.starts_with('[') {
            out.push_str(s);
        } else {
            out = join(&out, s);
        }
    }
    out
}

/// Parses, validates and resolves config text. `file_label` is used in
/// error lines; `base_dir` resolves relative `passwordFile`s.
pub fn load_str(text: &str, file_label: &str, base_dir: &Path) -> Result<Resolved, ConfigErrors> {
    let root = parse_text(text, file_label)?;
    resolve_tree(root, file_label, base_dir)
}

/// [`load_str`] for text the caller no longer needs: it is freed as soon as
/// it is parsed, so a large file's text and resolved devices never coexist.
pub fn load_string(
    text: String,
    file_label: &str,
    base_dir: &Path,
) -> Result<Resolved, ConfigErrors> {
    let root = parse_text(&text, file_label)?;
    drop(text);
    resolve_tree(root, file_label, base_dir)
}

/// The located YAML tree of `text`, or its syntax error.
fn parse_text(text: &str, file_label: &str) -> Result<Node, ConfigErrors> {
    tree::parse(text).map_err(|e| {
        let mut ctx = Ctx::new(file_label);
        let path = enclosing_path(text, e.line, e.column);
        ctx.at_pos(
            e.line,
            e.column,
            &path,
            format!("YAML syntax error: {}", e.message),
        );
        ConfigErrors(ctx.errors)
    })
}

/// Validates and resolves a parsed config.
fn resolve_tree(root: Node, file_label: &str, base_dir: &Path) -> Result<Resolved, ConfigErrors> {
    let mut ctx = Ctx::new(file_label);
    // The devices are resolved one by one, each device's part of the tree
    // dropped once resolved: a large file never holds its whole tree and
    // all its resolved devices at once.
    let mut root = root;
    let mut devices = root.take("devices");
    // `include:` adds the devices of other files; `profile:` merges a
    // profile into each device that names one (both tag their nodes with
    // their file, so errors point into it).
    let mut sources = super::include::expand(&mut ctx, &mut root, &mut devices, base_dir);
    let failed = super::profile::apply(&mut ctx, &mut devices, base_dir, &mut sources);
    let resolved = Loader {
        ctx: &mut ctx,
        base_dir,
        secrets_dir: config_path(base_dir, super::types::DEFAULT_SECRETS_DIRECTORY),
    }
    .run(&root, devices)
    .map(|mut r| {
        r.sources = sources;
        r
    });
    drop(root);
    ctx.device = None;
    super::profile::drop_consequential(&mut ctx.errors, &failed);
    let main = ctx.file.clone();
    ctx.errors.sort_by(|a, b| {
        (a.file != main, &a.file, a.line, a.column).cmp(&(
            b.file != main,
            &b.file,
            b.line,
            b.column,
        ))
    });
    ctx.errors.dedup();
    drop_consequential(&mut ctx.errors);
    match resolved {
        Some(r) if ctx.errors.is_empty() => Ok(r),
        _ => {
            if ctx.errors.is_empty() {
                ctx.at_pos(1, 1, "", "invalid configuration");
            }
            Err(ConfigErrors(ctx.errors))
        }
    }
}

/// Drops "needs `k`" errors at path P when `P.k` itself already has an
/// error (the key was given but invalid, so it was set aside).
fn drop_consequential(errors: &mut Vec<ConfigError>) {
    let paths: Vec<String> = errors.iter().map(|e| e.key_path.clone()).collect();
    errors.retain(|e| {
        let Some(i) = e.message.find("needs `") else {
            return true;
        };
        let rest = &e.message[i + 7..];
        let key = rest.split(['`', ':', ' ']).next().unwrap_or("");
        if key.is_empty() {
            return true;
        }
        let want = join(&e.key_path, key);
        !paths.iter().any(|p| {
            p == &want || p.starts_with(&format!("{want}.")) || p.starts_with(&format!("{want}["))
        })
    });
}

struct Loader<'c> {
    ctx: &'c mut Ctx,
    base_dir: &'c Path,
    /// `gateway.secretsDirectory` (for `…PemRef` keys), once the gateway section is read.
    secrets_dir: std::path::PathBuf,
}

/// One device as parsed, with the nodes needed to locate later errors.
struct ParsedDevice<'n> {
    index: usize,
    node: &'n Node,
    path: String,
    config: DeviceConfig,
    /// Per-device MQTT overrides and their node.
    mqtt: Option<(MqttOptions, &'n Node)>,
    /// Properties that parsed, with their node and path.
    props: Vec<(PropertyConfig, &'n Node, String)>,
}

const ROOT_KEYS: &[&str] = &["gateway", "broker", "mqtt", "devices", "include"];
const MQTT_KEYS: &[&str] = &["client", "message", "discovery", "sparkplug"];
const MODBUS_PROTOCOL: &[&str] = &[
    "tcp",
    "rtu",
    "rtuOverTcp",
    "unitId",
    "byteOrder",
    "maxRegistersPerRead",
    "maxGap",
];
const OPCUA_PROTOCOL: &[&str] = &[
    "endpoint",
    "securityPolicy",
    "securityMode",
    "username",
    "password",
    "passwordFile",
    "certificate",
    "privateKey",
    "trustedServerCertificates",
    "mode",
];
const BLE_PROTOCOL: &[&str] = &[
    "address",
    "name",
    "adapter",
    "scanTimeout",
    "byteOrder",
    "mode",
    "format",
    "bindKey",
    "staleAfter",
];
const COMMON_PROPERTY: &[&str] = &[
    "name",
    "type",
    "writable",
    "scale",
    "offset",
    "enum",
    "min",
    "max",
    "deadband",
    "unit",
    "description",
    "homeAssistant",
];
const DUMMY_PROPERTY: &[&str] = &["simulate"];
const MODBUS_PROPERTY: &[&str] = &[
    "register",
    "address",
    "bit",
    "quantity",
    "byte",
    "byteOrder",
];
const OPCUA_PROPERTY: &[&str] = &["nodeId"];
const BLE_PROPERTY: &[&str] = &[
    "service",
    "characteristic",
    "access",
    "byteOffset",
    "byteOrder",
    "field",
    "source",
    "companyId",
    "serviceUuid",
];

fn driver_protocol_keys(d: DriverKind) -> &'static [&'static str] {
    match d {
        DriverKind::Dummy => &[],
        DriverKind::Modbus => MODBUS_PROTOCOL,
        DriverKind::Opcua => OPCUA_PROTOCOL,
        DriverKind::Ble => BLE_PROTOCOL,
    }
}

fn driver_property_keys(d: DriverKind) -> &'static [&'static str] {
    match d {
        DriverKind::Dummy => DUMMY_PROPERTY,
        DriverKind::Modbus => MODBUS_PROPERTY,
        DriverKind::Opcua => OPCUA_PROPERTY,
        DriverKind::Ble => BLE_PROPERTY,
    }
}

/// Which drivers a key belongs to, for messages.
fn owners(key: &str, table: fn(DriverKind) -> &'static [&'static str]) -> Vec<&'static str> {
    [
        DriverKind::Dummy,
        DriverKind::Modbus,
        DriverKind::Opcua,
        DriverKind::Ble,
    ]
    .into_iter()
    .filter(|d| table(*d).contains(&key))
    .map(|d| d.as_str())
    .collect()
}

impl Loader<'_> {
    fn run(&mut self, root: &Node, devices_node: Option<Node>) -> Option<Resolved> {
        let empty = Node::synthetic(Kind::Map(Box::new([])));
        let root = match &root.kind {
            Kind::Null => &empty,
            Kind::Map(_) => root,
            _ => {
                self.ctx.at(
                    root,
                    "",
                    format!(
                        "the config must be a mapping with keys {}, found {}",
                        list(ROOT_KEYS),
                        root.describe()
                    ),
                );
                return None;
            }
        };
        self.ctx.only_keys(root, "", ROOT_KEYS);

        // gateway
        let gateway = match root.get("gateway") {
            Some(n) if !n.is_null() => self.ctx.de::<GatewaySection>(n, "gateway"),
            _ => Some(GatewaySection::default()),
        }
        .unwrap_or_default();
        let gw_node = root.get("gateway");
        let gw_map = |key: &str| gw_node.and_then(|g| g.entry(&[key]).map(|_| g));
        if !is_valid_name(&gateway.namespace) {
            if let Some(g) = gw_map("namespace") {
                self.ctx.val(
                    g,
                    "gateway",
                    &["namespace"],
                    format!("invalid namespace `{}`; {NAME_RULE}", gateway.namespace),
                );
            }
        }
        let metrics_listen = if gateway.metrics.listen.is_empty() {
            None
        } else {
            match gateway.metrics.listen.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    if let Some(m) = gw_node.and_then(|g| g.get("metrics")) {
                        self.ctx.val(
                            m,
                            "gateway.metrics",
                            &["listen"],
                            format!(
                                "`{}` is not a socket address; write e.g. 127.0.0.1:9880, or \"\" to turn metrics off",
                                gateway.metrics.listen
                            ),
                        );
                    }
                    None
                }
            }
        };
        let metrics_token = self.metrics_token(gw_node, &gateway, metrics_listen);
        if gateway.state_directory.is_empty() {
            if let Some(g) = gw_map("stateDirectory") {
                self.ctx
                    .val(g, "gateway", &["stateDirectory"], "must not be empty");
            }
        }
        if gateway.secrets_directory.is_empty() {
            if let Some(g) = gw_map("secretsDirectory") {
                self.ctx
                    .val(g, "gateway", &["secretsDirectory"], "must not be empty");
            }
        } else {
            self.secrets_dir = config_path(self.base_dir, &gateway.secrets_directory);
        }

        // broker
        let broker = match root.get("broker") {
            Some(n) if !n.is_null() => {
                let b = self.ctx.de::<BrokerSection>(n, "broker");
                b.and_then(|b| {
                    let mut addr = |key: &str, text: &str| match text.parse::<SocketAddr>() {
                        Ok(a) if !a.ip().is_loopback() && !b.allow_remote => {
                            self.ctx.val(
                                n,
                                "broker",
                                &[key],
                                format!(
                                    "`{text}` is not a loopback address: the embedded broker has no authentication; set `allowRemote: true` to serve other hosts"
                                ),
                            );
                            None
                        }
                        Ok(a) => Some(a),
                        Err(_) => {
                            self.ctx.val(
                                n,
                                "broker",
                                &[key],
                                format!(
                                    "`{text}` is not a socket address; write e.g. 127.0.0.1:11883"
                                ),
                            );
                            None
                        }
                    };
                    let listen = addr("listen", &b.listen);
                    let listen_v5 = match &b.listen_v5 {
                        Some(v5) => Some(addr("listenV5", v5)?),
                        None => None,
                    };
                    Some(BrokerSettings {
                        listen: listen?,
                        listen_v5,
                    })
                })
            }
            _ => None,
        };

        // top-level mqtt
        let top_mqtt_node = root.get("mqtt");
        let top = match top_mqtt_node {
            Some(n) => self.mqtt_section(n, "mqtt", true),
            None => MqttOptions::default(),
        };

        let home_assistant = top
            .discovery
            .as_ref()
            .and_then(|d| d.home_assistant.as_ref())
            .filter(|h| h.enabled)
            .map(|h| ha_config::HomeAssistantSettings {
                prefix: h.prefix.clone(),
                status_topic: h.status_topic.clone(),
            });
        let ns = gateway.namespace.clone();
        let top_prefix = top
            .message
            .topic
            .as_ref()
            .and_then(|t| t.prefix.clone())
            .unwrap_or_else(|| "fieldgate".into());
        let gateway_topic = format!("{top_prefix}/{ns}");
        // The prefix and the namespace are checked on their own; together
        // they may still make G too long.
        if is_valid_name(&ns) && check_topic(&top_prefix).is_ok() {
            if let (Err(e), Some(g)) = (check_topic(&gateway_topic), gw_map("namespace")) {
                self.ctx.val(
                    g,
                    "gateway",
                    &["namespace"],
                    format!("the gateway topic `<prefix>/<namespace>` is invalid: {e}"),
                );
            }
        }

        // Sessions: the gateway session first.
        let mut session_keys: Vec<ClientOptions> = vec![top.client.clone()];
        let mut sessions: Vec<SessionSettings> = Vec::new();
        let gw_session = self.resolve_session(
            &top.client,
            top_mqtt_node.and_then(|n| n.get("client")),
            "mqtt.client",
            &broker,
            format!("fieldgate-{ns}"),
            format!("{gateway_topic}/$will"),
        );
        sessions.push(gw_session.unwrap_or_else(placeholder_session));
        let sparkplug_on = top.message.format == Some(MessageFormat::SparkplugB);
        if sparkplug_on {
            let sp = self.resolve_sparkplug(top_mqtt_node, &top, &ns, &gateway.state_directory);
            if let Some(sp) = &sp {
                // NDEATH is the will: QoS 1, not retained (its payload, with
                // the bdSeq of each CONNECT, is set by the edge node).
                sessions[0].will = WillSettings {
                    topic: crate::northbound::sparkplug::node_topic(sp, "NDEATH"),
                    // Stable across reloads; replaced at every CONNECT.
                    payload: Vec::new(),
                    qos: 1,
                    retained: false,
                };
            }
            sessions[0].sparkplug = sp;
        }

        // Devices, each resolved as soon as it is parsed: the parsed property
        // configs of one device are dropped before the next is read, so a
        // large file never holds them all at once.
        let device_nodes: Vec<Node> = match devices_node {
            None => Vec::new(),
            Some(dn) => match dn.kind {
                Kind::Null => Vec::new(),
                Kind::Seq(items) => items.into_vec(),
                _ => {
                    self.ctx.at(
                        &dn,
                        "devices",
                        format!("expected a list of devices, found {}", dn.describe()),
                    );
                    Vec::new()
                }
            },
        };
        let mut seen: HashMap<String, (String, usize)> = HashMap::new();
        let mut devices = Vec::with_capacity(device_nodes.len());
        let mut topics: HashMap<String, String> = HashMap::new();
        // Included files count their devices from 0 each.
        let mut per_file: HashMap<String, usize> = HashMap::new();
        for node in device_nodes.into_iter() {
            let file = self.ctx.file_of(&node).to_string();
            let i = {
                let n = per_file.entry(file.clone()).or_default();
                *n += 1;
                *n - 1
            };
            self.ctx.device = node.get("name").and_then(Node::text);
            let Some(d) = self.parse_device(i, &node) else {
                continue;
            };
            // Duplicate device names (second occurrence).
            if let Some((first_file, first)) = seen.get(&d.config.name) {
                let other = if *first_file == file {
                    format!("devices[{first}]")
                } else {
                    format!("devices[{first}] in {first_file}")
                };
                self.ctx.val(
                    d.node,
                    &d.path,
                    &["name"],
                    format!(
                        "duplicate device name `{}`: already used by {other}; device names must be unique",
                        d.config.name
                    ),
                );
            } else {
                seen.insert(d.config.name.clone(), (file.clone(), d.index));
            }
            let dev_client = d.mqtt.as_ref().map(|(m, _)| m.client.clone());
            let dev_msg = d.mqtt.as_ref().map(|(m, _)| m.message.clone());
            let merged_client = match &dev_client {
                Some(c) => merge_client(c, &top.client),
                None => top.client.clone(),
            };
            let merged_msg = match &dev_msg {
                Some(m) => merge_message(m, &top.message),
                None => top.message.clone(),
            };
            // Topic T.
            let topic_opts = merged_msg.topic.clone().unwrap_or_default();
            let own_name = dev_msg
                .as_ref()
                .and_then(|m| m.topic.as_ref())
                .and_then(|t| t.name.clone())
                .filter(|n| !n.is_empty());
            let prefix = topic_opts
                .prefix
                .clone()
                .unwrap_or_else(|| "fieldgate".into());
            let t = match &own_name {
                Some(n) => n.clone(),
                None => match topic_opts.with.unwrap_or_default() {
                    TopicWith::Nn => format!("{prefix}/{ns}/{}", d.config.name),
                    TopicWith::Uid => format!("{prefix}/{}", device_uid(&ns, &d.config.name)),
                },
            };
            let topic_loc = d
                .mqtt
                .as_ref()
                .and_then(|(_, n)| n.get("message"))
                .and_then(|m| m.get("topic"))
                .filter(|t| t.get("name").is_some() && own_name.is_some());
            if own_name.is_none() {
                if let Err(e) = check_topic(&t) {
                    self.ctx.val(
                        d.node,
                        &d.path,
                        &["name"],
                        format!("the device topic is invalid: {e}"),
                    );
                }
            }
            if let Some(other) = topics.get(&t).filter(|o| **o != d.config.name) {
                let msg = format!(
                    "topic `{t}` is already used by device `{other}`; every device needs its own topic"
                );
                match topic_loc {
                    Some(tn) => {
                        let p = format!("{}.mqtt.message.topic", d.path);
                        self.ctx.val(tn, &p, &["name"], msg)
                    }
                    None => self.ctx.val(d.node, &d.path, &["name"], msg),
                }
            } else {
                topics
                    .entry(t.clone())
                    .or_insert_with(|| d.config.name.clone());
            }

            // Session.
            let session = match session_keys.iter().position(|k| *k == merged_client) {
                Some(i) => i,
                None => {
                    let client_node = d.mqtt.as_ref().and_then(|(_, n)| n.get("client"));
                    let s = self.resolve_session(
                        &merged_client,
                        client_node,
                        &format!("{}.mqtt.client", d.path),
                        &broker,
                        format!("fieldgate-{ns}-{}", d.config.name),
                        format!("{t}/$will"),
                    );
                    let s = s.unwrap_or_else(placeholder_session);
                    // A configured client id is checked on its own; the
                    // default one grows with the names.
                    if s.client_id.len() > MAX_CLIENT_ID {
                        self.ctx.val(
                            d.node,
                            &d.path,
                            &["name"],
                            format!(
                                "the default client id `fieldgate-<namespace>-<device>` of this device's own MQTT session would be {} bytes, more than MQTT's {MAX_CLIENT_ID}: set a shorter `mqtt.client.clientId`",
                                s.client_id.len()
                            ),
                        );
                    }
                    if let Some(j) = sessions.iter().position(|o| o.client_id == s.client_id) {
                        let _ = j;
                        let msg = format!(
                            "client id `{}` is already used by another MQTT session; devices with different client options need different client ids",
                            s.client_id
                        );
                        match client_node.filter(|c| c.get("clientId").is_some()) {
                            Some(c) => self.ctx.val(
                                c,
                                &format!("{}.mqtt.client", d.path),
                                &["clientId"],
                                msg,
                            ),
                            None => self.ctx.val(d.node, &d.path, &["name"], msg),
                        }
                    }
                    session_keys.push(merged_client.clone());
                    sessions.push(s);
                    sessions.len() - 1
                }
            };

            if sparkplug_on {
                if session != 0 {
                    self.ctx.key(
                        d.node,
                        &d.path,
                        &["mqtt"],
                        "with `mqtt.message.format: sparkplugB` every device publishes through the gateway's one edge node: a device cannot have MQTT client options of its own",
                    );
                }
                if let Err(e) = check_sparkplug_id(&d.config.name, "device id") {
                    self.ctx.val(d.node, &d.path, &["name"], e);
                }
            }
            let (state_props, result_props) = message_props(&merged_msg);
            let message = MessageSettings {
                topic: t,
                payload_encode: merged_msg.payload_encode.unwrap_or_default(),
                qos: merged_msg.qos.unwrap_or(0),
                retained: merged_msg.retained.unwrap_or(false),
                wait_timeout: merged_msg
                    .wait_timeout
                    .map(|d| d.0)
                    .unwrap_or(Duration::ZERO),
                state_props,
                result_props,
                response_topics: crate::config::resolved::ResponseTopicPolicy::from_options(
                    merged_msg.response_topics.as_ref(),
                ),
                command_rate: merged_msg
                    .command_rate
                    .unwrap_or(crate::config::resolved::DEFAULT_COMMAND_RATE),
            };
            if let Some((spec, props)) = self.device_spec(&d, &gateway.state_directory) {
                devices.push(Arc::new(DeviceSettings {
                    name: d.config.name.clone(),
                    driver: d.config.driver,
                    spec,
                    properties: props,
                    publish: PublishPolicy {
                        on_change: d.config.publish.on_change,
                        heartbeat: d.config.publish.heartbeat.0,
                    },
                    session,
                    message,
                }));
            }
        }

        // File store directories: the default per client id; a directory
        // that several sessions would share (an inherited `directoryPrefix`)
        // gets one subdirectory per client id.
        let mut uses: HashMap<std::path::PathBuf, usize> = HashMap::new();
        for s in &mut sessions {
            if let StoreSettings::File { directory, .. } = &mut s.store {
                if directory.as_os_str().is_empty() {
                    *directory = Path::new(&gateway.state_directory)
                        .join("mqtt")
                        .join(store_dir_name(&s.client_id));
                }
                *uses.entry(directory.clone()).or_default() += 1;
            }
        }
        for s in &mut sessions {
            if let StoreSettings::File { directory, .. } = &mut s.store {
                if uses.get(directory.as_path()).is_some_and(|n| *n > 1) {
                    *directory = directory.join(store_dir_name(&s.client_id));
                }
            }
        }
        Some(Resolved {
            gateway: GatewaySettings {
                namespace: ns,
                state_directory: gateway.state_directory.clone().into(),
                metrics_listen,
                metrics_commands: gateway.metrics.commands,
                metrics_token,
                log_level: gateway.log.level,
                log_format: gateway.log.format,
                clock_check: gateway.clock_check,
                reload_settle: gateway.reload.settle.get(),
            },
            broker,
            gateway_topic,
            sessions,
            devices,
            sources: Default::default(),
            home_assistant,
        })
    }

    /// `gateway.metrics.token` / `tokenFile`: the write token, read and
    /// checked; with `commands: true` on an address other than loopback one
    /// is required.
    fn metrics_token(
        &mut self,
        gw_node: Option<&Node>,
        gateway: &GatewaySection,
        listen: Option<SocketAddr>,
    ) -> Option<Secret> {
        let m = &gateway.metrics;
        let node = gw_node.and_then(|g| g.get("metrics"));
        let file = m.token_file.as_deref().filter(|f| !f.is_empty());
        let token = match (m.token.as_deref(), file) {
            (Some(_), Some(_)) => {
                if let Some(n) = node {
                    self.ctx.key(
                        n,
                        "gateway.metrics",
                        &["tokenFile"],
                        "give either `token` or `tokenFile`, not both",
                    );
                }
                None
            }
            (Some(t), None) => Some(t.to_owned()),
            (None, Some(f)) => match read_password_file(self.base_dir, f) {
                Ok(t) => Some(t),
                Err(e) => {
                    if let Some(n) = node {
                        self.ctx.val(n, "gateway.metrics", &["tokenFile"], e);
                    }
                    None
                }
            },
            (None, None) => None,
        };
        if token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            if let Some(n) = node {
                let key = if file.is_some() { "tokenFile" } else { "token" };
                self.ctx.val(
                    n,
                    "gateway.metrics",
                    &[key],
                    "the token is empty; give at least 16 characters, e.g. from `openssl rand -hex 16`",
                );
            }
            return None;
        }
        let remote = listen.is_some_and(|a| !a.ip().is_loopback());
        if m.commands && remote && m.token.is_none() && file.is_none() {
            if let (Some(n), Some(addr)) = (node, listen) {
                self.ctx.val(
                    n,
                    "gateway.metrics",
                    &["commands"],
                    format!(
                        "writes from the status page on {addr} (not loopback) need `gateway.metrics.token` or `tokenFile`"
                    ),
                );
            }
        }
        token.map(Secret)
    }

    /// `mqtt:` (top level or per device): client and message, each validated.
    fn mqtt_section(&mut self, n: &Node, path: &str, top: bool) -> MqttOptions {
        let mut out = MqttOptions::default();
        match &n.kind {
            Kind::Null => return out,
            Kind::Map(_) => {}
            _ => {
                self.ctx.at(
                    n,
                    path,
                    format!(
                        "expected a mapping with keys `client`, `message`, found {}",
                        n.describe()
                    ),
                );
                return out;
            }
        }
        self.ctx.only_keys(n, path, MQTT_KEYS);
        if let Some(c) = n.get("client").filter(|c| !c.is_null()) {
            let p = join(path, "client");
            if let Some(opts) = self.ctx.de::<ClientOptions>(c, &p) {
                self.check_client(c, &p, &opts);
                out.client = opts;
            }
        }
        if let Some(m) = n.get("message").filter(|m| !m.is_null()) {
            let p = join(path, "message");
            if let Some(opts) = self.ctx.de::<MessageOptions>(m, &p) {
                self.check_message(m, &p, &opts, top);
                if !top && opts.format.is_some() {
                    self.ctx.key(
                        m,
                        &p,
                        &["format"],
                        "`format` is chosen for the whole gateway: set it under the top-level `mqtt.message`",
                    );
                }
                out.message = opts;
            }
        }
        if let Some(dn) = n.get("discovery").filter(|d| !d.is_null()) {
            let p = join(path, "discovery");
            if !top {
                self.ctx.key(
                    n,
                    path,
                    &["discovery"],
                    "`discovery` is a gateway-wide setting: set it under the top-level `mqtt:`",
                );
            } else if let Some(opts) = self.ctx.de::<DiscoveryOptions>(dn, &p) {
                if let (Some(ha), Some(hn)) = (&opts.home_assistant, dn.get("homeAssistant")) {
                    let hp = join(&p, "homeAssistant");
                    for (key, value) in [("prefix", &ha.prefix), ("statusTopic", &ha.status_topic)]
                    {
                        if let Some(problem) = ha_config::topic_problem(value) {
                            self.ctx.val(hn, &hp, &[key], problem);
                        }
                    }
                }
                out.discovery = Some(opts);
            }
        }
        if let Some(sn) = n.get("sparkplug").filter(|x| !x.is_null()) {
            if top {
                out.sparkplug = self
                    .ctx
                    .de::<SparkplugOptions>(sn, &join(path, "sparkplug"));
            } else {
                self.ctx.key(
                    n,
                    path,
                    &["sparkplug"],
                    "`sparkplug` is set for the whole gateway: move it to the top-level `mqtt`",
                );
            }
        }
        out
    }

    fn check_client(&mut self, n: &Node, path: &str, c: &ClientOptions) {
        let ctx = &mut *self.ctx;
        if let Some(s) = &c.server {
            if let Err(e) = parse_server(s) {
                ctx.val(n, path, &["server"], e);
            }
        }
        let server = c.server.as_deref().and_then(|s| parse_server(s).ok());
        match c.protocol_version {
            None | Some(4) | Some(5) => {}
            Some(3) => {
                if matches!(server, Some(ServerAddress::WebSocket { .. })) {
                    ctx.val(
                        n,
                        path,
                        &["protocolVersion"],
                        "protocolVersion 3 (MQTT 3.1) works over tcp, ssl/tls/tcps and unix servers, not over ws/wss; use 4 or 5",
                    );
                }
                if let Some(id) = c.client_id.as_deref().filter(|id| !id.is_empty()) {
                    if id.len() > 23 {
                        ctx.val(
                            n,
                            path,
                            &["clientId"],
                            format!("MQTT 3.1 (protocolVersion 3) allows client ids of at most 23 characters; `{id}` has {}", id.len()),
                        );
                    }
                }
            }
            Some(v) => ctx.val(
                n,
                path,
                &["protocolVersion"],
                format!("protocolVersion {v} is not an MQTT version; allowed: 3 (MQTT 3.1), 4 (MQTT 3.1.1), 5 (MQTT 5)"),
            ),
        }
        if let Some(id) = &c.client_id {
            if id.len() > MAX_CLIENT_ID || id.contains('\0') {
                ctx.val(
                    n,
                    path,
                    &["clientId"],
                    "client id is too long or contains NUL",
                );
            }
        }
        if let Some(w) = &c.will {
            let wn = n.get("will").unwrap_or(n);
            let wp = join(path, "will");
            if let Some(t) = &w.topic {
                let t = t.as_str();
                if !t.is_empty() {
                    if let Err(e) = check_topic(t) {
                        let tn = wn.get("topic").unwrap_or(wn);
                        let target = tn.get("name").unwrap_or(tn);
                        let p = if tn.get("name").is_some() {
                            join(&join(&wp, "topic"), "name")
                        } else {
                            join(&wp, "topic")
                        };
                        ctx.at(target, &p, e);
                    }
                }
            }
            if let Some(q) = w.qos {
                if q > 2 {
                    ctx.val(
                        wn,
                        &wp,
                        &["qos"],
                        format!("qos {q} is out of range; allowed: 0, 1, 2"),
                    );
                }
            }
            if w.payload_encode == Some(PayloadEncode::Base64) {
                let content = w
                    .payload_content
                    .clone()
                    .unwrap_or_else(|| "offline".into());
                if base64::engine::general_purpose::STANDARD
                    .decode(content.trim())
                    .is_err()
                {
                    ctx.val(
                        wn,
                        &wp,
                        &["payloadContent"],
                        "with `payloadEncode: base64`, `payloadContent` must be base64 text (e.g. b2ZmbGluZQ== for `offline`)",
                    );
                }
            }
        }
        if let Some(a) = &c.basic_auth {
            let an = n.get("basicAuth").unwrap_or(n);
            let ap = join(path, "basicAuth");
            if a.password.is_some() && a.password_file.as_deref().is_some_and(|f| !f.is_empty()) {
                ctx.key(
                    an,
                    &ap,
                    &["passwordFile"],
                    "give either `password` or `passwordFile`, not both",
                );
            }
            if let Some(f) = a.password_file.as_deref().filter(|f| !f.is_empty()) {
                if let Err(e) = read_password_file(self.base_dir, f) {
                    ctx.val(an, &ap, &["passwordFile"], e);
                }
            }
        }
        if let (Some(t), Some(tn)) = (&c.tls_config, n.get("tlsConfig")) {
            check_tls(
                ctx,
                self.base_dir,
                &self.secrets_dir,
                tn,
                &join(path, "tlsConfig"),
                t,
            );
            if t.server_name.as_deref().is_some_and(|s| !s.is_empty())
                && matches!(server, Some(ServerAddress::WebSocket { .. }))
            {
                ctx.key(
                    tn,
                    &join(path, "tlsConfig"),
                    &["serverName"],
                    "`serverName` works with ssl/tls/tcps servers; a wss server is verified against the host of its URL",
                );
            }
        }
        if let Some(s) = &c.store {
            let sn = n.get("store").unwrap_or(n);
            let sp = join(path, "store");
            if s.max_bytes.is_some_and(|b| b.0 < MIN_STORE_BYTES) {
                ctx.val(sn, &sp, &["maxBytes"], "must be at least 64KiB");
            }
            if s.directory_prefix.as_deref() == Some("") {
                ctx.val(
                    sn,
                    &sp,
                    &["directoryPrefix", "direcotryPrefix"],
                    "must not be empty",
                );
            }
        }
        if let Some(h) = &c.http_headers {
            for (name, values) in h {
                let bad_value = match values {
                    HeaderValues::One(v) => !header_value_ok(v),
                    HeaderValues::Many(vs) => vs.iter().any(|v| !header_value_ok(v)),
                };
                if !header_name_ok(name) || bad_value {
                    let hn = n.get("httpHeaders").unwrap_or(n);
                    ctx.key(
                        hn,
                        &join(path, "httpHeaders"),
                        &[name.as_str()],
                        format!("`{name}` is not a valid HTTP header (name: letters, digits and !#$%&'*+-.^_`|~; values: visible ASCII and spaces)"),
                    );
                }
            }
        }
        if let Some(k) = c.keep_alive {
            if !k.0.is_zero() && k.0 < Duration::from_secs(1) {
                ctx.val(
                    n,
                    path,
                    &["keepAlive"],
                    "keepAlive must be 0s (off) or at least 1s",
                );
            } else if k.0 > Duration::from_secs(65_535) {
                ctx.val(n, path, &["keepAlive"], "keepAlive must be at most 65535s");
            }
        }
        if let Some(m) = c.max_reconnect_interval {
            if m.0 < Duration::from_secs(1) {
                ctx.val(
                    n,
                    path,
                    &["maxReconnectInterval"],
                    "maxReconnectInterval must be at least 1s (the backoff starts at 1s)",
                );
            }
        }
        if c.message_channel_depth == Some(0) {
            ctx.val(
                n,
                path,
                &["messageChannelDepth"],
                "messageChannelDepth must be at least 1",
            );
        }
    }

    fn check_message(&mut self, n: &Node, path: &str, m: &MessageOptions, top: bool) {
        let ctx = &mut *self.ctx;
        if let Some(e) = m.message_expiry_interval {
            if e.0.as_secs() > u64::from(u32::MAX) {
                ctx.val(
                    n,
                    path,
                    &["messageExpiryInterval"],
                    "messageExpiryInterval must be at most 4294967295s (MQTT 5 limit)",
                );
            } else if !e.0.is_zero() && e.0 < Duration::from_secs(1) {
                ctx.val(
                    n,
                    path,
                    &["messageExpiryInterval"],
                    "messageExpiryInterval counts whole seconds: use 0s (none) or at least 1s",
                );
            }
        }
        if let Some(c) = &m.content_type {
            if c.contains('\0') || c.len() > 65_535 {
                ctx.val(
                    n,
                    path,
                    &["contentType"],
                    "contentType must be a UTF-8 string without NUL, at most 65535 bytes",
                );
            }
        }
        if let Some(u) = &m.user_properties {
            if u.iter().any(|(k, v)| {
                k.contains('\0') || v.contains('\0') || k.len() > 65_535 || v.len() > 65_535
            }) {
                ctx.key(n, path, &["userProperties"], "userProperties keys and values must be strings without NUL, at most 65535 bytes each");
            }
        }
        if let Some(q) = m.qos {
            if q > 2 {
                ctx.val(
                    n,
                    path,
                    &["qos"],
                    format!("qos {q} is out of range; allowed: 0, 1, 2"),
                );
            }
        }
        if let (Some(t), Some(tn)) = (&m.topic, n.get("topic")) {
            let tp = join(path, "topic");
            if let Some(name) = &t.name {
                if top {
                    ctx.key(
                        tn,
                        &tp,
                        &["name"],
                        "a static topic `name` is allowed only per device (devices[N].mqtt.message.topic.name); at the top level use `prefix` and `with`",
                    );
                } else if let Err(e) = check_topic(name) {
                    ctx.val(tn, &tp, &["name"], e);
                }
            }
            if let Some(p) = &t.prefix {
                if let Err(e) = check_topic(p) {
                    ctx.val(tn, &tp, &["prefix"], format!("invalid prefix: {e}"));
                }
            }
        }
    }

    fn parse_device<'n>(&mut self, index: usize, node: &'n Node) -> Option<ParsedDevice<'n>> {
        let path = format!("devices[{index}]");
        if node.entries().is_none() {
            self.ctx.at(
                node,
                &path,
                format!(
                    "expected a device mapping (name, driver, …), found {}",
                    node.describe()
                ),
            );
            return None;
        }
        // Properties one by one.
        let mut props = Vec::with_capacity(
            node.get("properties")
                .and_then(Node::items)
                .map_or(0, <[Node]>::len),
        );
        let mut props_ok = true;
        if let Some(pn) = node.get("properties") {
            match &pn.kind {
                Kind::Null => {}
                Kind::Seq(items) => {
                    for (j, p) in items.iter().enumerate() {
                        let pp = format!("{path}.properties[{j}]");
                        if p.entries().is_none() {
                            self.ctx.at(
                                p,
                                &pp,
                                format!(
                                    "expected a property mapping (name, type, …), found {}",
                                    p.describe()
                                ),
                            );
                            props_ok = false;
                            continue;
                        }
                        // An advertisement `field:` may leave out `name`
                        // and `type` (the format decides the type).
                        #[cfg(feature = "ble")]
                        let filled = ble_adverts::fill_defaults(p, node);
                        #[cfg(not(feature = "ble"))]
                        let filled: Option<Node> = None;
                        match self
                            .ctx
                            .de::<PropertyConfig>(filled.as_ref().unwrap_or(p), &pp)
                        {
                            Some(c) => props.push((c, p, pp)),
                            None => props_ok = false,
                        }
                    }
                }
                _ => {
                    self.ctx.at(
                        pn,
                        &join(&path, "properties"),
                        format!("expected a list of properties, found {}", pn.describe()),
                    );
                    props_ok = false;
                }
            }
        }
        let _ = props_ok;
        let mqtt = node
            .get("mqtt")
            .map(|m| (self.mqtt_section(m, &join(&path, "mqtt"), false), m));
        let protocol = match node.get("protocol") {
            Some(pn) if !pn.is_null() => {
                match self.ctx.de::<ProtocolConfig>(pn, &join(&path, "protocol")) {
                    Some(p) => Some(p),
                    None => return None,
                }
            }
            _ => None,
        };
        let mut config = self
            .ctx
            .de::<DeviceConfig>(&node.without(&["properties", "mqtt", "protocol"]), &path)?;
        config.protocol = protocol;
        if !is_valid_name(&config.name) {
            self.ctx.val(
                node,
                &path,
                &["name"],
                format!("invalid device name `{}`; {NAME_RULE}", config.name),
            );
        }
        let d = ParsedDevice {
            index,
            node,
            path,
            config,
            mqtt,
            props,
        };
        self.check_device(&d);
        Some(d)
    }

    /// Driver-independent and driver-specific checks of one device.
    fn check_device(&mut self, d: &ParsedDevice<'_>) {
        let drv = d.config.driver;
        let path = &d.path;
        let ctx = &mut *self.ctx;
        // Driver-specific device keys.
        if d.config.model.is_some() && drv != DriverKind::Dummy {
            ctx.key(
                d.node,
                path,
                &["model"],
                format!(
                    "`model` belongs to the dummy driver; a {} device does not take it",
                    drv.as_str()
                ),
            );
        }
        if let Some(pn) = d.node.get("protocol") {
            let allowed = driver_protocol_keys(drv);
            if let Some(entries) = pn.entries() {
                for (k, _) in entries {
                    let key = k.text().unwrap_or_default();
                    let own = owners(&key, driver_protocol_keys);
                    if !allowed.contains(&key.as_str()) && !own.is_empty() {
                        let msg = if allowed.is_empty() {
                            format!("`protocol.{key}` belongs to the {} driver; a {} device takes no protocol keys", own.join("/"), drv.as_str())
                        } else {
                            format!(
                                "`protocol.{key}` belongs to the {} driver; a {} device takes {}",
                                own.join("/"),
                                drv.as_str(),
                                list(allowed)
                            )
                        };
                        ctx.at(k, &join(&join(path, "protocol"), &key), msg);
                    }
                }
            }
        }
        // Properties: driver keys, names, common rules.
        let mut names: HashMap<String, usize> = HashMap::new();
        for (j, (p, pn, pp)) in d.props.iter().enumerate() {
            let _ = j;
            let allowed = driver_property_keys(drv);
            if let Some(entries) = pn.entries() {
                for (k, _) in entries {
                    let key = k.text().unwrap_or_default();
                    if COMMON_PROPERTY.contains(&key.as_str()) || allowed.contains(&key.as_str()) {
                        continue;
                    }
                    let own = owners(&key, driver_property_keys);
                    if own.is_empty() {
                        continue;
                    }
                    ctx.at(
                        k,
                        &join(pp, &key),
                        format!(
                            "`{key}` belongs to the {} driver; a {} property takes {}",
                            own.join("/"),
                            drv.as_str(),
                            list(&[COMMON_PROPERTY, allowed].concat())
                        ),
                    );
                }
            }
            if p.name.starts_with('$') {
                ctx.val(
                    pn,
                    pp,
                    &["name"],
                    format!("property name `{}` must not start with `$`", p.name),
                );
            } else if p.name.is_empty() {
                ctx.val(pn, pp, &["name"], "property name must not be empty");
            }
            if let Some(first) = names.get(&p.name) {
                ctx.val(
                    pn,
                    pp,
                    &["name"],
                    format!("duplicate property name `{}`: already used by properties[{first}] of this device", p.name),
                );
            } else {
                names.insert(p.name.clone(), d.props[..j].len());
            }
            if let (Some(o), Some(hn)) = (&p.home_assistant, pn.get("homeAssistant")) {
                let hp = join(pp, "homeAssistant");
                let has_enum = p.enum_labels.as_ref().is_some_and(|e| !e.is_empty());
                if let Some(c) = o.component {
                    if let Some(problem) =
                        ha_config::component_misfit(c, p.data_type, p.writable, has_enum)
                    {
                        ctx.val(hn, &hp, &["component"], problem);
                    }
                }
                if let Some(problem) = o
                    .device_class
                    .as_deref()
                    .and_then(ha_config::device_class_problem)
                {
                    ctx.val(hn, &hp, &["deviceClass"], problem);
                }
                if let Some(problem) = o.icon.as_deref().and_then(ha_config::icon_problem) {
                    ctx.val(hn, &hp, &["icon"], problem);
                }
                let sensor = o
                    .component
                    .is_none_or(|c| c == ha_config::Component::Sensor);
                if o.state_class.is_some()
                    && !(sensor
                        && p.data_type.is_numeric()
                        && !has_enum
                        && (o.component.is_some() || !p.writable))
                {
                    ctx.val(
                        hn,
                        &hp,
                        &["stateClass"],
                        "`stateClass` applies to numeric sensors only (a read-only numeric property without `enum`, or one with `component: sensor`)",
                    );
                }
            }
            let t = p.data_type;
            if !t.is_numeric() {
                for key in ["scale", "offset", "min", "max", "deadband"] {
                    if pn.get(key).is_some_and(|v| !v.is_null()) {
                        ctx.key(
                            pn,
                            pp,
                            &[key],
                            format!("`{key}` applies only to numeric types (int*, uint*, float*), not `{t}`"),
                        );
                    }
                }
            } else {
                if p.scale == Some(0.0) {
                    ctx.val(
                        pn,
                        pp,
                        &["scale"],
                        "scale must not be 0 (writes divide by it)",
                    );
                }
                for (key, v) in [
                    ("scale", p.scale),
                    ("offset", p.offset),
                    ("min", p.min),
                    ("max", p.max),
                    ("deadband", p.deadband),
                ] {
                    if v.is_some_and(|x| !x.is_finite()) {
                        ctx.val(pn, pp, &[key], format!("`{key}` must be a finite number"));
                    }
                }
                if let (Some(lo), Some(hi)) = (p.min, p.max) {
                    if lo > hi {
                        ctx.val(pn, pp, &["max"], format!("max ({hi}) is below min ({lo})"));
                    }
                }
                if p.deadband.is_some_and(|x| x < 0.0) {
                    ctx.val(pn, pp, &["deadband"], "deadband must not be negative");
                }
            }
            if let Some(en) = pn.get("enum") {
                let ep = join(pp, "enum");
                if t == DataType::Bytes {
                    ctx.key(
                        pn,
                        pp,
                        &["enum"],
                        "`enum` is not allowed on `bytes` properties",
                    );
                } else if let Some(entries) = en.entries() {
                    for (k, _) in entries {
                        if let Err(e) = enum_raw(t, k) {
                            ctx.at(k, &join(&ep, &k.text().unwrap_or_default()), e);
                        }
                    }
                }
            }
            if let Some(bo) = p.byte_order {
                check_byte_order(ctx, drv, pn, pp, bo);
            }
            match drv {
                DriverKind::Dummy => check_dummy_property(ctx, p, pn, pp),
                DriverKind::Modbus => check_modbus_property(ctx, p, pn, pp),
                DriverKind::Opcua => {
                    if p.node_id.as_deref().is_none_or(str::is_empty) {
                        ctx.at(
                            pn,
                            pp,
                            "an opcua property needs `nodeId` (e.g. \"ns=2;s=Line1.Speed\")",
                        );
                    }
                    #[cfg(feature = "opcua")]
                    if let Some(id) = p.node_id.as_deref().filter(|s| !s.is_empty()) {
                        if let Err(m) = fieldgate_drivers::opcua::check_node_id(id) {
                            ctx.val(pn, pp, &["nodeId"], m);
                        }
                    }
                }
                #[cfg(feature = "ble")]
                DriverKind::Ble if ble_adverts::is_advert(d.config.protocol.as_ref()) => {
                    ble_adverts::check_property(
                        ctx,
                        d.config
                            .protocol
                            .as_ref()
                            .unwrap_or(&ProtocolConfig::default()),
                        p,
                        pn,
                        pp,
                    );
                }
                DriverKind::Ble => {
                    #[cfg(feature = "ble")]
                    ble_adverts::check_gatt_property(ctx, pn, pp);
                    if p.characteristic.as_deref().is_none_or(str::is_empty) {
                        ctx.at(
                            pn,
                            pp,
                            "a ble property needs `characteristic` (a GATT UUID)",
                        );
                    }
                    #[cfg(feature = "ble")]
                    check_ble_property(ctx, p, pn, pp);
                }
            }
        }
        if d.config.sync_interval.0.is_zero() {
            ctx.val(
                d.node,
                path,
                &["syncInterval"],
                "syncInterval must be greater than 0s",
            );
        }
        if d.config.timeout.0.is_zero() {
            ctx.val(
                d.node,
                path,
                &["timeout"],
                "timeout must be greater than 0s",
            );
        }
        let proto = d.config.protocol.clone().unwrap_or_default();
        let pnode = d.node.get("protocol");
        let ppath = join(path, "protocol");
        match drv {
            DriverKind::Dummy => {
                let has_props = d.node.get("properties").is_some_and(|p| !p.is_null());
                match (d.config.model.is_some(), has_props) {
                    (true, true) => ctx.key(
                        d.node,
                        path,
                        &["properties"],
                        "a dummy device takes either `model` or `properties`, not both",
                    ),
                    (false, false) => ctx.key(
                        d.node,
                        path,
                        &["driver"],
                        "a dummy device needs `model: fan` or a list of `properties` with `simulate`",
                    ),
                    _ => {}
                }
            }
            DriverKind::Modbus => {
                let given: Vec<&str> = [
                    ("tcp", proto.tcp.is_some()),
                    ("rtu", proto.rtu.is_some()),
                    ("rtuOverTcp", proto.rtu_over_tcp.is_some()),
                ]
                .into_iter()
                .filter(|(_, b)| *b)
                .map(|(k, _)| k)
                .collect();
                match (given.len(), pnode) {
                    (1, _) => {}
                    (0, Some(pn)) => ctx.key(d.node, path, &["protocol"], {
                        let _ = pn;
                        "a modbus device needs exactly one of `tcp`, `rtu`, `rtuOverTcp` under `protocol`"
                    }),
                    (0, None) => ctx.key(
                        d.node,
                        path,
                        &["driver"],
                        "a modbus device needs `protocol` with exactly one of `tcp`, `rtu`, `rtuOverTcp`",
                    ),
                    (_, Some(pn)) => ctx.key(
                        pn,
                        &ppath,
                        &[given[1]],
                        format!("give exactly one of `tcp`, `rtu`, `rtuOverTcp`, not {}", list(&given)),
                    ),
                    _ => {}
                }
                if let Some(pn) = pnode {
                    for (k, e) in [("tcp", &proto.tcp), ("rtuOverTcp", &proto.rtu_over_tcp)] {
                        if let Some(e) = e {
                            if let Err(m) = check_endpoint(&e.endpoint) {
                                if let Some(en) = pn.get(k) {
                                    ctx.val(en, &join(&ppath, k), &["endpoint"], m);
                                }
                            }
                        }
                    }
                    if let (Some(r), Some(rn)) = (&proto.rtu, pn.get("rtu")) {
                        let rp = join(&ppath, "rtu");
                        if r.port.is_empty() {
                            ctx.val(
                                rn,
                                &rp,
                                &["port"],
                                "port must not be empty (e.g. /dev/ttyUSB0)",
                            );
                        }
                        if r.baud_rate == 0 {
                            ctx.val(rn, &rp, &["baudRate"], "baudRate must be greater than 0");
                        }
                        if !(5..=8).contains(&r.data_bits) {
                            ctx.val(
                                rn,
                                &rp,
                                &["dataBits"],
                                format!(
                                    "dataBits {} is out of range; allowed: 5, 6, 7, 8",
                                    r.data_bits
                                ),
                            );
                        }
                        if !(1..=2).contains(&r.stop_bits) {
                            ctx.val(
                                rn,
                                &rp,
                                &["stopBits"],
                                format!("stopBits {} is out of range; allowed: 1, 2", r.stop_bits),
                            );
                        }
                    }
                    if let Some(m) = proto.max_registers_per_read {
                        if !(1..=125).contains(&m) {
                            ctx.val(
                                pn,
                                &ppath,
                                &["maxRegistersPerRead"],
                                format!(
                                    "maxRegistersPerRead {m} is out of range; allowed: 1..=125"
                                ),
                            );
                        }
                    }
                    if let Some(bo) = proto.byte_order {
                        check_byte_order(ctx, drv, pn, &ppath, bo);
                    }
                }
                if d.props.is_empty() && d.node.get("properties").is_none() {
                    ctx.key(
                        d.node,
                        path,
                        &["name"],
                        "a modbus device needs `properties`",
                    );
                }
            }
            DriverKind::Opcua | DriverKind::Ble => {
                if drv == DriverKind::Opcua && proto.endpoint.as_deref().is_none_or(str::is_empty) {
                    ctx.key(
                        d.node,
                        path,
                        &["protocol"],
                        "an opcua device needs `protocol.endpoint` (e.g. opc.tcp://plc:4840)",
                    );
                }
                #[cfg(feature = "ble")]
                if drv == DriverKind::Ble {
                    check_ble_protocol(ctx, &proto, d.node, path, pnode, &ppath);
                    if let Some(pn) = pnode {
                        ble_adverts::check_protocol(ctx, &proto, pn, &ppath);
                    }
                    if ble_adverts::is_advert(d.config.protocol.as_ref()) {
                        ble_adverts::check_device(ctx, d);
                    }
                    return;
                }
                #[cfg(feature = "opcua")]
                if drv == DriverKind::Opcua {
                    if let Some(pn) = pnode {
                        check_opcua_protocol(ctx, self.base_dir, &proto, pn, &ppath);
                    }
                }
                if drv == DriverKind::Ble {
                    if proto.address.is_none() && proto.name.is_none() {
                        ctx.key(
                            d.node,
                            path,
                            &["protocol"],
                            "a ble device needs `protocol.address` or `protocol.name`",
                        );
                    }
                    if let (Some(bo), Some(pn)) = (proto.byte_order, pnode) {
                        check_byte_order(ctx, drv, pn, &ppath, bo);
                    }
                }
                if drv == DriverKind::Ble || cfg!(not(feature = "opcua")) {
                    ctx.val(
                        d.node,
                        path,
                        &["driver"],
                        format!(
                            "driver `{}` is not supported by this build yet; drivers available: {}",
                            drv.as_str(),
                            fieldgate_drivers::enabled_drivers().join(", ")
                        ),
                    );
                }
            }
        }
        #[cfg(not(feature = "modbus"))]
        if drv == DriverKind::Modbus {
            ctx.val(
                d.node,
                path,
                &["driver"],
                "driver `modbus` is not enabled in this build (feature `modbus`)",
            );
        }
    }

    /// `mqtt.sparkplug` with `format: sparkplugB`: ids checked (Sparkplug
    /// and NATS-safe), the edge node id defaulting to the namespace.
    fn resolve_sparkplug(
        &mut self,
        mqtt: Option<&Node>,
        top: &MqttOptions,
        ns: &str,
        state_directory: &str,
    ) -> Option<SparkplugSettings> {
        let mqtt = mqtt?;
        let sp_node = mqtt.get("sparkplug").filter(|n| !n.is_null());
        let opts = top.sparkplug.clone().unwrap_or_default();
        let group = opts.group_id.clone().filter(|g| !g.is_empty());
        let mut ok = true;
        let Some(group) = group else {
            let msg = "Sparkplug B needs a group id: set `mqtt.sparkplug.groupId` (e.g. `sparkplug: { groupId: plant-a }`)";
            match sp_node {
                Some(n) => self.ctx.at(n, "mqtt.sparkplug", msg),
                None => match mqtt.get("message") {
                    Some(m) => self.ctx.val(m, "mqtt.message", &["format"], msg),
                    None => self.ctx.at(mqtt, "mqtt", msg),
                },
            }
            return None;
        };
        for (key, value, what) in [
            ("groupId", Some(group.as_str()), "group id"),
            ("edgeNodeId", opts.edge_node_id.as_deref(), "edge node id"),
            (
                "primaryHostId",
                opts.primary_host_id.as_deref().filter(|h| !h.is_empty()),
                "primary host id",
            ),
        ] {
            if let (Some(v), Some(n)) = (value, sp_node) {
                if let Err(e) = check_sparkplug_id(v, what) {
                    self.ctx.val(n, "mqtt.sparkplug", &[key], e);
                    ok = false;
                }
            }
        }
        let edge = opts
            .edge_node_id
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| ns.to_owned());
        if opts.edge_node_id.as_deref().is_none_or(str::is_empty) {
            if let Err(e) = check_sparkplug_id(&edge, "edge node id") {
                let msg = format!("{e} (the edge node id defaults to the namespace: set `mqtt.sparkplug.edgeNodeId`)");
                match sp_node {
                    Some(n) => self.ctx.at(n, "mqtt.sparkplug", msg),
                    None => self.ctx.at(mqtt, "mqtt", msg),
                }
                ok = false;
            }
        }
        if matches!(
            top.client.store.as_ref().and_then(|s| s.kind),
            Some(StoreKind::File)
        ) {
            if let Some(c) = mqtt.get("client") {
                self.ctx.val(
                    c,
                    "mqtt.client",
                    &["store"],
                    "with Sparkplug B the outage buffer is the edge node's own (in memory, `messageChannelDepth` messages): use `store: { type: memory }`",
                );
                ok = false;
            }
        }
        ok.then(|| SparkplugSettings {
            bdseq_file: Path::new(state_directory)
                .join("sparkplug")
                .join(format!("{group}-{edge}.bdseq")),
            group_id: group,
            edge_node_id: edge,
            primary_host_id: opts.primary_host_id.clone().filter(|h| !h.is_empty()),
        })
    }

    /// Resolves one session from merged configured options.
    fn resolve_session(
        &mut self,
        c: &ClientOptions,
        node: Option<&Node>,
        path: &str,
        broker: &Option<BrokerSettings>,
        default_id: String,
        default_will: String,
    ) -> Option<SessionSettings> {
        let server = match &c.server {
            Some(s) => parse_server(s).ok()?,
            None => match broker {
                Some(b) => {
                    // MQTT 5 goes to the broker's MQTT 5 listener.
                    let listen = if c.protocol_version == Some(5) {
                        match b.listen_v5 {
                            Some(v5) => v5,
                            None => {
                                let msg = "protocolVersion 5 with the embedded broker needs `broker.listenV5` (its MQTT 5 listener); `broker.listen` serves MQTT 3.1.1 only";
                                match node {
                                    Some(n) => self.ctx.key(n, path, &["protocolVersion"], msg),
                                    None => self.ctx.at_pos(1, 1, path, msg),
                                }
                                return None;
                            }
                        }
                    } else {
                        b.listen
                    };
                    ServerAddress::Tcp {
                        // A broker listening on every address is reached locally.
                        host: match listen.ip() {
                            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".into(),
                            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "::1".into(),
                            ip => ip.to_string(),
                        },
                        port: listen.port(),
                    }
                }
                None => ServerAddress::Tcp {
                    host: "127.0.0.1".into(),
                    port: 1883,
                },
            },
        };
        let w = c.will.clone().unwrap_or_default();
        let will_topic = w
            .topic
            .as_ref()
            .map(|t| t.as_str().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or(default_will);
        let content = w
            .payload_content
            .clone()
            .unwrap_or_else(|| "offline".into());
        let payload = match w.payload_encode.unwrap_or_default() {
            PayloadEncode::Raw => content.into_bytes(),
            PayloadEncode::Base64 => base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .ok()?,
        };
        let auth = c.basic_auth.clone().unwrap_or_default();
        let password = match auth.password_file.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => match read_password_file(self.base_dir, f) {
                Ok(p) => Some(p),
                Err(e) => {
                    // Reported by check_client for the node that set it; a
                    // merged (inherited) file is reported here.
                    if node.and_then(|n| n.get("basicAuth")).is_none() {
                        let _ = (path, e);
                    }
                    None
                }
            },
            None => auth.password.clone(),
        };
        let client_id = c
            .client_id
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or(default_id);
        if c.protocol_version == Some(3)
            && client_id.len() > 23
            && c.client_id.as_deref().is_none_or(str::is_empty)
        {
            let msg = format!(
                "MQTT 3.1 (protocolVersion 3) allows client ids of at most 23 characters; the default `{client_id}` is longer: set a shorter `clientId`"
            );
            match node {
                Some(n) => self.ctx.key(n, path, &["protocolVersion"], msg),
                None => self.ctx.at_pos(1, 1, path, msg),
            }
        }
        Some(SessionSettings {
            client_id,
            server,
            protocol_version: c.protocol_version.unwrap_or(4),
            tls: resolve_tls(self.base_dir, &self.secrets_dir, c.tls_config.as_ref()),
            http_headers: c
                .http_headers
                .iter()
                .flatten()
                .flat_map(|(k, v)| match v {
                    HeaderValues::One(v) => vec![(k.clone(), v.clone())],
                    HeaderValues::Many(vs) => vs.iter().map(|v| (k.clone(), v.clone())).collect(),
                })
                .collect(),
            will: WillSettings {
                topic: will_topic,
                payload,
                qos: w.qos.unwrap_or(1),
                retained: w.retained.unwrap_or(true),
            },
            username: auth.name.clone().filter(|s| !s.is_empty()),
            password,
            clean_session: c.clean_session.unwrap_or(true),
            store: match c.store.as_ref() {
                Some(s) if s.kind == Some(StoreKind::File) => StoreSettings::File {
                    // Empty: `<stateDirectory>/mqtt/<client id>`, filled in
                    // once the state directory is known.
                    directory: s.directory_prefix.clone().unwrap_or_default().into(),
                    max_bytes: s.max_bytes.map_or(DEFAULT_STORE_MAX_BYTES, |b| b.0),
                    max_age: s.max_age.map(|d| d.0).filter(|d| !d.is_zero()),
                    min_free_bytes: s
                        .min_free_bytes
                        .map_or(crate::config::resolved::DEFAULT_STORE_MIN_FREE_BYTES, |b| {
                            b.0
                        }),
                },
                _ => StoreSettings::Memory,
            },
            connect_timeout: c
                .connect_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            keep_alive: c.keep_alive.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
            ping_timeout: c
                .ping_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(10)),
            write_timeout: c
                .write_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            resume_subs: c.resume_subs.unwrap_or(false),
            order: c.order.unwrap_or(true),
            auto_reconnect: c.auto_reconnect.unwrap_or(true),
            max_reconnect_interval: c
                .max_reconnect_interval
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(600)),
            message_channel_depth: c.message_channel_depth.unwrap_or(100).max(1) as usize,
            ack_timeout: c
                .ack_timeout
                .map(|d| d.0)
                .unwrap_or(crate::config::resolved::DEFAULT_ACK_TIMEOUT),
            max_packet_size: c
                .max_packet_size
                .map(|b| u32::try_from(b.0).unwrap_or(u32::MAX)),
            sparkplug: None,
        })
    }

    /// Lowers one device to the driver's spec and the gateway's semantics.
    fn device_spec(
        &mut self,
        d: &ParsedDevice<'_>,
        state_directory: &str,
    ) -> Option<(DeviceSpec, Vec<PropertySemantics>)> {
        let _ = state_directory;
        // Exactly sized: these live as long as the device runs.
        let mut specs = Vec::with_capacity(d.props.len());
        let mut sems = Vec::with_capacity(d.props.len());
        let connection = match d.config.driver {
            DriverKind::Dummy => {
                if d.config.model == Some(DummyModel::Fan) {
                    for (name, t, w, g) in [
                        ("on", DataType::Bool, true, Generator::FanOn),
                        ("gear", DataType::Uint8, true, Generator::FanGear),
                        ("rotatingSpeed", DataType::Int32, false, Generator::FanSpeed),
                    ] {
                        let name_shared: Arc<str> = name.into();
                        specs.push(PropertySpec {
                            name: Arc::clone(&name_shared),
                            data_type: t,
                            writable: w,
                            address: PropertyAddress::Simulated(g),
                        });
                        let s = PropertySemantics::new(name_shared, t, w);
                        sems.push(if name == "gear" {
                            s.with(|d| {
                                d.enum_entries = ["slow", "middle", "fast"]
                                    .iter()
                                    .enumerate()
                                    .map(|(i, l)| EnumEntry {
                                        raw: Value::Uint(i as u64),
                                        label: (*l).into(),
                                    })
                                    .collect();
                            })
                        } else {
                            s
                        });
                    }
                } else {
                    for (p, pn, _) in &d.props {
                        let g = generator(p, pn)?;
                        let name: Arc<str> = p.name.as_str().into();
                        specs.push(PropertySpec {
                            name: Arc::clone(&name),
                            data_type: p.data_type,
                            writable: p.writable,
                            address: PropertyAddress::Simulated(g),
                        });
                        sems.push(semantics(p, pn, name)?);
                    }
                }
                Connection::Dummy
            }
            #[cfg(feature = "modbus")]
            DriverKind::Modbus => {
                use fieldgate_drivers::modbus as mb;
                let proto = d.config.protocol.clone().unwrap_or_default();
                let transport = if let Some(t) = &proto.tcp {
                    mb::Transport::Tcp {
                        endpoint: t.endpoint.clone(),
                    }
                } else if let Some(t) = &proto.rtu_over_tcp {
                    mb::Transport::RtuOverTcp {
                        endpoint: t.endpoint.clone(),
                    }
                } else if let Some(r) = &proto.rtu {
                    mb::Transport::Rtu(mb::SerialSettings {
                        port: r.port.clone(),
                        baud_rate: r.baud_rate,
                        data_bits: r.data_bits,
                        parity: match r.parity {
                            ParityName::None => mb::Parity::None,
                            ParityName::Even => mb::Parity::Even,
                            ParityName::Odd => mb::Parity::Odd,
                        },
                        stop_bits: r.stop_bits,
                    })
                } else {
                    return None;
                };
                let dev_order = proto
                    .byte_order
                    .and_then(modbus_order)
                    .unwrap_or(mb::ByteOrder::Abcd);
                for (p, pn, _) in &d.props {
                    let kind = match p.register? {
                        RegisterName::Coil => mb::RegisterKind::Coil,
                        RegisterName::DiscreteInput => mb::RegisterKind::DiscreteInput,
                        RegisterName::Input => mb::RegisterKind::Input,
                        RegisterName::Holding => mb::RegisterKind::Holding,
                    };
                    let name: Arc<str> = p.name.as_str().into();
                    specs.push(PropertySpec {
                        name: Arc::clone(&name),
                        data_type: p.data_type,
                        writable: p.writable,
                        address: PropertyAddress::Modbus(mb::RegisterAddress {
                            kind,
                            address: p.address?,
                            bit: p.bit,
                            quantity: p.quantity,
                            byte_order: p.byte_order.and_then(modbus_order).unwrap_or(dev_order),
                            byte: match p.byte {
                                Some(ByteName::High) => mb::ByteSelect::High,
                                _ => mb::ByteSelect::Low,
                            },
                        }),
                    });
                    sems.push(semantics(p, pn, name)?);
                }
                Connection::Modbus(mb::ModbusConnection {
                    transport,
                    unit_id: proto.unit_id.unwrap_or(1),
                    max_registers_per_read: proto.max_registers_per_read.unwrap_or(125),
                    max_gap: proto.max_gap.unwrap_or(10),
                })
            }
            #[cfg(feature = "ble")]
            DriverKind::Ble if ble_adverts::is_advert(d.config.protocol.as_ref()) => {
                ble_adverts::build(d, &mut specs, &mut sems)?
            }
            #[cfg(feature = "ble")]
            DriverKind::Ble => {
                use fieldgate_drivers::ble as b;
                let proto = d.config.protocol.clone().unwrap_or_default();
                let target = match (&proto.address, &proto.name) {
                    (Some(a), _) => b::Target::Address(b::parse_address(a).ok()?),
                    (None, Some(n)) => b::Target::Name(n.clone()),
                    (None, None) => return None,
                };
                let dev_order = proto
                    .byte_order
                    .and_then(ble_order)
                    .unwrap_or(b::Endian::Little);
                for (p, pn, _) in &d.props {
                    let access = ble_access(p);
                    let name: Arc<str> = p.name.as_str().into();
                    specs.push(PropertySpec {
                        name: Arc::clone(&name),
                        data_type: p.data_type,
                        writable: access.writable(),
                        address: PropertyAddress::Ble(b::CharacteristicAddress {
                            service: match &p.service {
                                Some(s) => Some(b::parse_uuid(s).ok()?),
                                None => None,
                            },
                            characteristic: b::parse_uuid(p.characteristic.as_deref()?).ok()?,
                            access,
                            byte_order: p.byte_order.and_then(ble_order).unwrap_or(dev_order),
                            byte_offset: usize::from(p.byte_offset.unwrap_or(0)),
                        }),
                    });
                    let mut sem = semantics(p, pn, name)?;
                    sem.writable = access.writable();
                    sems.push(sem);
                }
                Connection::Ble(b::BleConnection {
                    adapter: proto.adapter.clone(),
                    target,
                    scan_timeout: proto
                        .scan_timeout
                        .map(|t| t.0)
                        .unwrap_or(Duration::from_secs(30)),
                })
            }
            #[cfg(feature = "opcua")]
            DriverKind::Opcua => {
                let proto = d.config.protocol.clone().unwrap_or_default();
                for (p, pn, _) in &d.props {
                    let name: Arc<str> = p.name.as_str().into();
                    specs.push(PropertySpec {
                        name: Arc::clone(&name),
                        data_type: p.data_type,
                        writable: p.writable,
                        address: PropertyAddress::OpcUa(fieldgate_drivers::opcua::NodeAddress {
                            node_id: p.node_id.clone()?,
                        }),
                    });
                    sems.push(semantics(p, pn, name)?);
                }
                Connection::OpcUa(opcua_connection(self.base_dir, &proto, state_directory)?)
            }
            // Drivers compiled out of this build were rejected while validating.
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        specs.shrink_to_fit();
        sems.shrink_to_fit();
        Some((
            DeviceSpec {
                name: d.config.name.clone(),
                sync_interval: d.config.sync_interval.0,
                timeout: d.config.timeout.0,
                connection,
                properties: specs.into(),
            },
            sems,
        ))
    }
}

/// Longest store directory name taken from a client id as is.
const STORE_DIR_NAME_MAX: usize = 200;

/// A client id as one safe path component (`/`, `..` and the like
/// become `_`); a longer id than a file name allows is cut to
/// [`STORE_DIR_NAME_MAX`] and made unique with the id's UUIDv5.
fn store_dir_name(client_id: &str) -> String {
    let name: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '.') {
        format!("_{name}")
    } else if name.len() > STORE_DIR_NAME_MAX {
        // Only ASCII is left, so any byte index is a character boundary.
        let uid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, client_id.as_bytes());
        format!("{}-{}", &name[..STORE_DIR_NAME_MAX], uid.simple())
    } else {
        name
    }
}

fn placeholder_session() -> SessionSettings {
    SessionSettings {
        client_id: String::new(),
        server: ServerAddress::Tcp {
            host: "127.0.0.1".into(),
            port: 1883,
        },
        protocol_version: 4,
        tls: TlsSettings::default(),
        http_headers: Vec::new(),
        will: WillSettings {
            topic: String::new(),
            payload: Vec::new(),
            qos: 1,
            retained: true,
        },
        username: None,
        password: None,
        clean_session: true,
        store: StoreSettings::Memory,
        connect_timeout: Duration::from_secs(30),
        keep_alive: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(30),
        resume_subs: false,
        order: true,
        auto_reconnect: true,
        max_reconnect_interval: Duration::from_secs(600),
        message_channel_depth: 100,
        ack_timeout: crate::config::resolved::DEFAULT_ACK_TIMEOUT,
        max_packet_size: None,
        sparkplug: None,
    }
}

/// A Sparkplug id (group, edge node, device, host): letters, digits, `_`
/// and `-`. Sparkplug forbids `+`, `/` and `#`; `.`, `*`, `>` and white
/// space are not allowed either, as hosts that bridge to NATS cannot carry them.
pub(crate) fn check_sparkplug_id(id: &str, what: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("the Sparkplug {what} must not be empty"));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        None => Ok(()),
        Some(c) => Err(format!(
            "`{id}` cannot be a Sparkplug {what}: `{c}` is not allowed; use letters, digits, `_` and `-` (Sparkplug forbids `+`, `/`, `#`; `.`, `*`, `>` and spaces break NATS-based hosts)"
        )),
    }
}

/// An HTTP header name is a token (RFC 9110).
fn header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP header value: visible ASCII, spaces and tabs.
fn header_value_ok(v: &str) -> bool {
    v.bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

/// PEM text given inline (`…Pem`), as a file (relative to the config file)
/// or as a secret reference (`…PemRef`, under `secrets`).
fn pem_source(
    base: &Path,
    secrets: &Path,
    inline: Option<&str>,
    file: Option<&str>,
    reference: Option<&SecretRef>,
) -> Result<Option<String>, String> {
    if let Some(t) = inline.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.to_string()));
    }
    if let Some(r) = reference {
        return super::secrets::read(secrets, r).map(Some);
    }
    let Some(f) = file.filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    let p = Path::new(f);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    super::read_limited(&full, super::MAX_PEM_FILE_BYTES)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other))
        .map(Some)
        .map_err(|e| format!("cannot read `{}`: {e}", full.display()))
}

/// Validates `tlsConfig`: one source per item, readable files, parseable PEM,
/// certificate and key together.
#[allow(clippy::type_complexity)]
fn check_tls(ctx: &mut Ctx, base: &Path, secrets: &Path, tn: &Node, tp: &str, t: &TlsOptions) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let items: [(
        &str,
        &str,
        &str,
        &Option<String>,
        &Option<String>,
        &Option<SecretRef>,
    ); 3] = [
        (
            "caFilePem",
            "caFile",
            "caFilePemRef",
            &t.ca_file_pem,
            &t.ca_file,
            &t.ca_file_pem_ref,
        ),
        (
            "certFilePem",
            "certFile",
            "certFilePemRef",
            &t.cert_file_pem,
            &t.cert_file,
            &t.cert_file_pem_ref,
        ),
        (
            "keyFilePem",
            "keyFile",
            "keyFilePemRef",
            &t.key_file_pem,
            &t.key_file,
            &t.key_file_pem_ref,
        ),
    ];
    let mut present = [false; 3];
    for (i, (pem_key, file_key, ref_key, inline, file, reference)) in items.iter().enumerate() {
        let has_inline = inline.as_deref().is_some_and(|s| !s.trim().is_empty());
        let has_file = file.as_deref().is_some_and(|s| !s.is_empty());
        let given: Vec<&str> = [
            (has_inline, *pem_key),
            (has_file, *file_key),
            (reference.is_some(), *ref_key),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect();
        // Given, even if unusable (reported below): not "missing".
        present[i] = !given.is_empty();
        if given.len() > 1 {
            ctx.key(
                tn,
                tp,
                &given[1..],
                format!(
                    "give one of `{pem_key}`, `{file_key}` and `{ref_key}`, not {}",
                    given
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
            continue;
        }
        if let Some(r) = reference {
            if let Err((field, msg)) = super::secrets::check_ref(r) {
                match tn.get(ref_key) {
                    Some(rn) => ctx.val(rn, &join(tp, ref_key), &[field], msg),
                    None => ctx.val(tn, tp, &[ref_key], msg),
                }
                continue;
            }
        }
        let key = if has_inline {
            *pem_key
        } else if reference.is_some() {
            *ref_key
        } else {
            *file_key
        };
        match pem_source(
            base,
            secrets,
            inline.as_deref(),
            file.as_deref(),
            reference.as_ref(),
        ) {
            Err(e) => ctx.val(tn, tp, &[key], e),
            Ok(None) => {}
            Ok(Some(text)) => {
                let ok = if i == 2 {
                    PrivateKeyDer::from_pem_slice(text.as_bytes()).is_ok()
                } else {
                    CertificateDer::pem_slice_iter(text.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .is_ok_and(|v| !v.is_empty())
                };
                if !ok {
                    let what = if i == 2 {
                        "a PEM private key (PKCS#8, PKCS#1 or SEC1)"
                    } else {
                        "one or more PEM certificates"
                    };
                    ctx.val(tn, tp, &[key], format!("`{key}` must hold {what}"));
                }
            }
        }
    }
    if present[1] != present[2] {
        let missing = if present[1] { "keyFile" } else { "certFile" };
        let given = if present[1] {
            &["certFilePem", "certFile", "certFilePemRef"]
        } else {
            &["keyFilePem", "keyFile", "keyFilePemRef"]
        };
        ctx.key(
            tn,
            tp,
            given,
            format!("mutual TLS needs both a client certificate and its key: `{missing}` (or `{missing}Pem`, `{missing}PemRef`) is missing"),
        );
    }
    if let Some(name) = t.server_name.as_deref().filter(|s| !s.is_empty()) {
        if rustls_pki_types::ServerName::try_from(name).is_err() {
            ctx.val(
                tn,
                tp,
                &["serverName"],
                format!("`{name}` is not a DNS name or IP address"),
            );
        }
    }
}

/// The resolved TLS settings (errors were reported by [`check_tls`]).
fn resolve_tls(base: &Path, secrets: &Path, t: Option<&TlsOptions>) -> TlsSettings {
    let Some(t) = t else {
        return TlsSettings::default();
    };
    let pem = |inline: &Option<String>, file: &Option<String>, reference: &Option<SecretRef>| {
        pem_source(
            base,
            secrets,
            inline.as_deref(),
            file.as_deref(),
            reference.as_ref(),
        )
        .ok()
        .flatten()
    };
    TlsSettings {
        ca_pem: pem(&t.ca_file_pem, &t.ca_file, &t.ca_file_pem_ref),
        cert_pem: pem(&t.cert_file_pem, &t.cert_file, &t.cert_file_pem_ref),
        key_pem: pem(&t.key_file_pem, &t.key_file, &t.key_file_pem_ref),
        server_name: t.server_name.clone().filter(|s| !s.is_empty()),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    }
}

#[cfg(feature = "modbus")]
fn modbus_order(b: ByteOrderName) -> Option<fieldgate_drivers::modbus::ByteOrder> {
    use fieldgate_drivers::modbus::ByteOrder as B;
    Some(match b {
        ByteOrderName::Abcd => B::Abcd,
        ByteOrderName::Badc => B::Badc,
        ByteOrderName::Cdab => B::Cdab,
        ByteOrderName::Dcba => B::Dcba,
        _ => return None,
    })
}

#[cfg(feature = "ble")]
fn ble_order(b: ByteOrderName) -> Option<fieldgate_drivers::ble::Endian> {
    use fieldgate_drivers::ble::Endian;
    match b {
        ByteOrderName::Little => Some(Endian::Little),
        ByteOrderName::Big => Some(Endian::Big),
        _ => None,
    }
}

/// A ble property's access: as given, else `readWrite` when `writable`,
/// else `read`.
#[cfg(feature = "ble")]
fn ble_access(p: &PropertyConfig) -> fieldgate_drivers::ble::Access {
    use fieldgate_drivers::ble::Access;
    match p.access {
        Some(BleAccess::Read) => Access::Read,
        Some(BleAccess::Notify) => Access::Notify,
        Some(BleAccess::Write) => Access::Write,
        Some(BleAccess::ReadWrite) => Access::ReadWrite,
        None if p.writable => Access::ReadWrite,
        None => Access::Read,
    }
}

/// The ble keys of one property: UUIDs, and `writable` agreeing with `access`.
#[cfg(feature = "ble")]
fn check_ble_property(ctx: &mut Ctx, p: &PropertyConfig, pn: &Node, pp: &str) {
    use fieldgate_drivers::ble::parse_uuid;
    for (key, v) in [
        ("service", &p.service),
        ("characteristic", &p.characteristic),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            if let Err(m) = parse_uuid(v) {
                ctx.val(pn, pp, &[key], m);
            }
        }
    }
    if p.writable && matches!(p.access, Some(BleAccess::Read | BleAccess::Notify)) {
        ctx.val(
            pn,
            pp,
            &["writable"],
            "a ble property with access `read` or `notify` cannot be writable; use access `write` or `readWrite`",
        );
    }
}

/// The ble `protocol:` keys: one of address/name, adapter, scanTimeout.
#[cfg(feature = "ble")]
fn check_ble_protocol(
    ctx: &mut Ctx,
    proto: &ProtocolConfig,
    dnode: &Node,
    path: &str,
    pnode: Option<&Node>,
    ppath: &str,
) {
    let Some(pn) = pnode else {
        ctx.key(
            dnode,
            path,
            &["driver"],
            "a ble device needs `protocol` with `address` or `name`",
        );
        return;
    };
    match (&proto.address, &proto.name) {
        (None, None) => ctx.key(
            dnode,
            path,
            &["protocol"],
            "a ble device needs `protocol.address` or `protocol.name`",
        ),
        (Some(_), Some(_)) => ctx.key(pn, ppath, &["name"], "give `address` or `name`, not both"),
        (Some(a), None) => {
            if let Err(m) = fieldgate_drivers::ble::parse_address(a) {
                ctx.val(pn, ppath, &["address"], m);
            }
        }
        (None, Some(n)) => {
            if n.is_empty() {
                ctx.val(pn, ppath, &["name"], "name must not be empty");
            }
        }
    }
    if proto.adapter.as_deref() == Some("") {
        ctx.val(
            pn,
            ppath,
            &["adapter"],
            "adapter must not be empty (e.g. hci0; leave it out for the first adapter)",
        );
    }
    if proto.scan_timeout.is_some_and(|t| t.0.is_zero()) {
        ctx.val(
            pn,
            ppath,
            &["scanTimeout"],
            "scanTimeout must be greater than 0s",
        );
    }
    if let Some(bo) = proto.byte_order {
        check_byte_order(ctx, DriverKind::Ble, pn, ppath, bo);
    }
}

fn check_byte_order(ctx: &mut Ctx, drv: DriverKind, n: &Node, path: &str, bo: ByteOrderName) {
    let modbus = matches!(
        bo,
        ByteOrderName::Abcd | ByteOrderName::Badc | ByteOrderName::Cdab | ByteOrderName::Dcba
    );
    match drv {
        DriverKind::Modbus if !modbus => ctx.val(
            n,
            path,
            &["byteOrder"],
            "a modbus byteOrder is one of `ABCD`, `BADC`, `CDAB`, `DCBA`",
        ),
        DriverKind::Ble if modbus => ctx.val(
            n,
            path,
            &["byteOrder"],
            "a ble byteOrder is `little` or `big`",
        ),
        _ => {}
    }
}

fn check_endpoint(e: &str) -> Result<(), String> {
    let ok = e
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(format!("`{e}` is not `host:port` (e.g. 192.168.1.10:502)"))
    }
}

/// Parses `scheme://host[:port]` (or `host[:port]`, meaning tcp),
/// `ws[s]://host[:port][/path]` and `unix:///path/to/socket`.
pub fn parse_server(s: &str) -> Result<ServerAddress, String> {
    let (scheme, rest) = match s.split_once("://") {
        Some((sc, r)) => (sc.to_ascii_lowercase(), r),
        None => ("tcp".to_string(), s),
    };
    let default_port = match scheme.as_str() {
        "tcp" | "mqtt" => 1883,
        "ssl" | "tls" | "tcps" | "mqtts" => 8883,
        "ws" => 80,
        "wss" => 443,
        "unix" => {
            if rest.is_empty() || rest.contains('\0') {
                return Err(format!(
                    "server `{s}` has no socket path; write e.g. unix:///run/mosquitto/mqtt.sock"
                ));
            }
            return Ok(ServerAddress::Unix {
                path: PathBuf::from(rest),
            });
        }
        other => {
            return Err(format!(
                "unknown server scheme `{other}`; allowed: tcp, ssl, tls, tcps, ws, wss, unix"
            ))
        }
    };
    let (authority, url_path) = match rest.find('/') {
        Some(i) if scheme == "ws" || scheme == "wss" => (&rest[..i], &rest[i..]),
        _ => (rest.trim_end_matches('/'), ""),
    };
    if authority.is_empty() {
        return Err(format!(
            "server `{s}` has no host; write e.g. tcp://127.0.0.1:1883"
        ));
    }
    if let Some((_, host)) = authority.rsplit_once('@') {
        // Not echoed: the part before `@` is likely a password.
        return Err(format!(
            "server `{scheme}://…@{host}`: a user name or password in the URL is not supported \
             (it would show in logs and `check`); use basicAuth"
        ));
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        // [v6]:port
        let (h, p) = r
            .split_once(']')
            .ok_or_else(|| format!("server `{s}`: unclosed `[`"))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            Some(_) => (authority.to_string(), None),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("server `{s}`: `{p}` is not a port (1..65535)"))?,
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "server `{s}` has no valid host; write e.g. tcp://127.0.0.1:1883"
        ));
    }
    Ok(match scheme.as_str() {
        "ws" | "wss" => {
            let h = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let path = if url_path.is_empty() { "/" } else { url_path };
            ServerAddress::WebSocket {
                url: format!("{scheme}://{h}:{port}{path}"),
                host,
                secure: scheme == "wss",
            }
        }
        "tcp" | "mqtt" => ServerAddress::Tcp { host, port },
        _ => ServerAddress::Tls { host, port },
    })
}

/// Resolves a configured path against the config file's directory.
#[cfg(feature = "opcua")]
fn config_path(base: &Path, f: &str) -> std::path::PathBuf {
    let p = Path::new(f);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&full).unwrap_or(full)
}

/// Validates the OPC-UA `protocol` keys the parser leaves as strings.
#[cfg(feature = "opcua")]
fn check_opcua_protocol(
    ctx: &mut Ctx,
    base: &Path,
    proto: &ProtocolConfig,
    pn: &Node,
    ppath: &str,
) {
    use fieldgate_drivers::opcua::{Policy, SecurityMode};
    if let Some(e) = proto.endpoint.as_deref().filter(|e| !e.is_empty()) {
        if !e.starts_with("opc.tcp://") || e.len() <= "opc.tcp://".len() {
            ctx.val(
                pn,
                ppath,
                &["endpoint"],
                format!("`{e}` is not an OPC-UA endpoint; write e.g. opc.tcp://plc:4840"),
            );
        }
    }
    let policy = match proto.security_policy.as_deref() {
        None => Some(Policy::None),
        Some(s) => {
            let p = Policy::parse(s);
            if p.is_none() {
                ctx.val(pn, ppath, &["securityPolicy"], format!("unknown securityPolicy `{s}`; allowed: None, Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss"));
            }
            p
        }
    };
    let mode = match proto.security_mode.as_deref() {
        None => None,
        Some(s) => {
            let m = SecurityMode::parse(s);
            if m.is_none() {
                ctx.val(
                    pn,
                    ppath,
                    &["securityMode"],
                    format!("unknown securityMode `{s}`; allowed: None, Sign, SignAndEncrypt"),
                );
            }
            m
        }
    };
    match (policy, mode) {
        (Some(Policy::None), Some(m)) if m != SecurityMode::None => ctx.val(
            pn,
            ppath,
            &["securityMode"],
            format!(
                "securityMode {} needs a securityPolicy other than None",
                m.as_str()
            ),
        ),
        (Some(p), Some(SecurityMode::None)) if p != Policy::None => ctx.val(
            pn,
            ppath,
            &["securityMode"],
            format!(
                "securityPolicy {} needs securityMode Sign or SignAndEncrypt",
                p.as_str()
            ),
        ),
        _ => {}
    }
    if let Some(m) = proto.mode.as_deref() {
        if m != "subscribe" && m != "poll" {
            ctx.val(
                pn,
                ppath,
                &["mode"],
                format!("unknown mode `{m}`; allowed: subscribe, poll"),
            );
        }
    }
    if proto.password.is_some()
        && proto
            .password_file
            .as_deref()
            .is_some_and(|f| !f.is_empty())
    {
        ctx.key(
            pn,
            ppath,
            &["passwordFile"],
            "give either `password` or `passwordFile`, not both",
        );
    }
    if let Some(f) = proto.password_file.as_deref().filter(|f| !f.is_empty()) {
        if let Err(e) = read_password_file(base, f) {
            ctx.val(pn, ppath, &["passwordFile"], e);
        }
    }
    if proto.username.is_none() && (proto.password.is_some() || proto.password_file.is_some()) {
        ctx.key(
            pn,
            ppath,
            &["password", "passwordFile"],
            "a password needs `username`",
        );
    }
    match (&proto.certificate, &proto.private_key) {
        (Some(_), None) => ctx.key(
            pn,
            ppath,
            &["certificate"],
            "`certificate` needs `privateKey` too",
        ),
        (None, Some(_)) => ctx.key(
            pn,
            ppath,
            &["privateKey"],
            "`privateKey` needs `certificate` too",
        ),
        (Some(c), Some(k)) => {
            for (key, f) in [("certificate", c), ("privateKey", k)] {
                let full = config_path(base, f);
                if let Err(e) = std::fs::metadata(&full) {
                    ctx.val(
                        pn,
                        ppath,
                        &[key],
                        format!("cannot read {}: {e}", full.display()),
                    );
                }
            }
        }
        (None, None) => {}
    }
}

/// Lowers the OPC-UA `protocol` keys (already validated).
#[cfg(feature = "opcua")]
fn opcua_connection(
    base: &Path,
    proto: &ProtocolConfig,
    state_directory: &str,
) -> Option<fieldgate_drivers::opcua::OpcUaConnection> {
    use fieldgate_drivers::opcua::{Identity, Mode, OpcUaConnection, Policy, SecurityMode};
    let policy = match proto.security_policy.as_deref() {
        None => Policy::None,
        Some(s) => Policy::parse(s)?,
    };
    let security_mode = match proto.security_mode.as_deref() {
        None if policy == Policy::None => SecurityMode::None,
        None => SecurityMode::SignAndEncrypt,
        Some(s) => SecurityMode::parse(s)?,
    };
    let identity = match &proto.username {
        Some(user) => {
            let password = match proto.password_file.as_deref().filter(|f| !f.is_empty()) {
                Some(f) => read_password_file(base, f).ok()?,
                None => proto.password.clone().unwrap_or_default(),
            };
            Identity::UserName {
                user: user.clone(),
                password,
            }
        }
        None => Identity::Anonymous,
    };
    let state_dir = config_path(base, state_directory).join("opcua");
    Some(OpcUaConnection {
        endpoint: proto.endpoint.clone()?,
        policy,
        security_mode,
        identity,
        certificate: match (&proto.certificate, &proto.private_key) {
            (Some(c), Some(k)) => Some((config_path(base, c), config_path(base, k))),
            _ => None,
        },
        trusted_dir: match proto.trusted_server_certificates.as_deref() {
            Some(t) if !t.is_empty() => config_path(base, t),
            _ => state_dir.join("trusted"),
        },
        state_dir,
        mode: match proto.mode.as_deref() {
            Some("poll") => Mode::Poll,
            _ => Mode::Subscribe,
        },
    })
}

/// The first line of a password file, without its line ending.
pub fn read_password_file(base: &Path, f: &str) -> Result<String, String> {
    let p = Path::new(f);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let read = super::read_limited(&full, super::MAX_PASSWORD_FILE_BYTES)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other));
    match read {
        Ok(s) => Ok(s
            .split('\n')
            .next()
            .unwrap_or("")
            .trim_end_matches('\r')
            .to_string()),
        Err(e) => Err(format!(
            "cannot read password file `{}`: {e}",
            full.display()
        )),
    }
}

/// UUIDv5 (URL namespace) of `fieldgate://<ns>/<device>`.
pub fn device_uid(ns: &str, device: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("fieldgate://{ns}/{device}").as_bytes(),
    )
    .to_string()
}

fn merge_client(d: &ClientOptions, t: &ClientOptions) -> ClientOptions {
    fn m<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
        a.clone().or_else(|| b.clone())
    }
    ClientOptions {
        server: m(&d.server, &t.server),
        protocol_version: m(&d.protocol_version, &t.protocol_version),
        client_id: m(&d.client_id, &t.client_id),
        will: match (&d.will, &t.will) {
            (Some(a), Some(b)) => Some(WillOptions {
                topic: m(&a.topic, &b.topic),
                payload_encode: m(&a.payload_encode, &b.payload_encode),
                payload_content: m(&a.payload_content, &b.payload_content),
                qos: m(&a.qos, &b.qos),
                retained: m(&a.retained, &b.retained),
            }),
            (a, b) => m(a, b),
        },
        basic_auth: match (&d.basic_auth, &t.basic_auth) {
            (Some(a), Some(b)) => Some(BasicAuth {
                name: m(&a.name, &b.name),
                password: m(&a.password, &b.password),
                password_file: m(&a.password_file, &b.password_file),
            }),
            (a, b) => m(a, b),
        },
        tls_config: m(&d.tls_config, &t.tls_config),
        clean_session: m(&d.clean_session, &t.clean_session),
        store: match (&d.store, &t.store) {
            (Some(a), Some(b)) => Some(StoreOptions {
                kind: m(&a.kind, &b.kind),
                directory_prefix: m(&a.directory_prefix, &b.directory_prefix),
                max_bytes: m(&a.max_bytes, &b.max_bytes),
                max_age: m(&a.max_age, &b.max_age),
                min_free_bytes: m(&a.min_free_bytes, &b.min_free_bytes),
            }),
            (a, b) => m(a, b),
        },
        resume_subs: m(&d.resume_subs, &t.resume_subs),
        connect_timeout: m(&d.connect_timeout, &t.connect_timeout),
        keep_alive: m(&d.keep_alive, &t.keep_alive),
        ping_timeout: m(&d.ping_timeout, &t.ping_timeout),
        order: m(&d.order, &t.order),
        write_timeout: m(&d.write_timeout, &t.write_timeout),
        auto_reconnect: m(&d.auto_reconnect, &t.auto_reconnect),
        max_reconnect_interval: m(&d.max_reconnect_interval, &t.max_reconnect_interval),
        message_channel_depth: m(&d.message_channel_depth, &t.message_channel_depth),
        http_headers: m(&d.http_headers, &t.http_headers),
        ack_timeout: m(&d.ack_timeout, &t.ack_timeout),
        max_packet_size: m(&d.max_packet_size, &t.max_packet_size),
    }
}

fn merge_message(d: &MessageOptions, t: &MessageOptions) -> MessageOptions {
    fn m<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
        a.clone().or_else(|| b.clone())
    }
    MessageOptions {
        topic: match (&d.topic, &t.topic) {
            (Some(a), Some(b)) => Some(TopicOptions {
                name: a.name.clone(),
                prefix: m(&a.prefix, &b.prefix),
                with: m(&a.with, &b.with),
            }),
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => Some(TopicOptions {
                name: None,
                ..b.clone()
            }),
            (None, None) => None,
        },
        format: m(&d.format, &t.format),
        payload_encode: m(&d.payload_encode, &t.payload_encode),
        qos: m(&d.qos, &t.qos),
        retained: m(&d.retained, &t.retained),
        wait_timeout: m(&d.wait_timeout, &t.wait_timeout),
        content_type: m(&d.content_type, &t.content_type),
        user_properties: m(&d.user_properties, &t.user_properties),
        message_expiry_interval: m(&d.message_expiry_interval, &t.message_expiry_interval),
        response_topics: m(&d.response_topics, &t.response_topics),
        command_rate: m(&d.command_rate, &t.command_rate),
    }
}

/// The MQTT 5 properties of state and `$set/result` messages.
fn message_props(
    m: &MessageOptions,
) -> (
    std::sync::Arc<crate::mqtt::MessageProps>,
    std::sync::Arc<crate::mqtt::MessageProps>,
) {
    let content_type = match (&m.content_type, m.payload_encode.unwrap_or_default()) {
        (Some(c), _) => Some(c.clone()).filter(|c| !c.is_empty()),
        (None, PayloadEncode::Raw) => Some("application/json".to_string()),
        (None, PayloadEncode::Base64) => None,
    };
    let expiry = m
        .message_expiry_interval
        .map(|d| d.0.as_secs())
        .filter(|s| *s > 0)
        .map(|s| u32::try_from(s).unwrap_or(u32::MAX));
    let state = crate::mqtt::MessageProps {
        content_type: content_type.clone(),
        user_properties: m
            .user_properties
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        message_expiry: expiry,
    };
    let result = crate::mqtt::MessageProps {
        content_type,
        ..Default::default()
    };
    (std::sync::Arc::new(state), std::sync::Arc::new(result))
}

/// The raw value an enum key node stands for, for type `t`.
fn enum_raw(t: DataType, k: &Node) -> Result<Value, String> {
    let bad = || {
        format!(
            "enum key {} does not fit the property's type `{t}`",
            k.describe()
        )
    };
    match (&k.kind, t) {
        (Kind::Bool(b), DataType::Bool) => Ok(Value::Bool(*b)),
        (Kind::Str(s), DataType::Bool) if &**s == "true" || &**s == "false" => {
            Ok(Value::Bool(&**s == "true"))
        }
        (Kind::Int(i), t) if t.is_integer() => Value::integer_of(t, i.get()).ok_or_else(|| {
            let (lo, hi) = t.integer_range().unwrap_or_default();
            format!("enum key `{i}` is out of range for `{t}` ({lo}..={hi})")
        }),
        (Kind::Str(s), t) if t.is_integer() => match s.trim().parse::<i128>() {
            Ok(i) => Value::integer_of(t, i).ok_or_else(bad),
            Err(_) => Err(bad()),
        },
        (Kind::Int(i), t) if t.is_float() => Ok(Value::Float(i.get() as f64)),
        (Kind::Float(f), t) if t.is_float() => Ok(Value::Float(*f)),
        (_, DataType::String) => Ok(Value::String(k.text().ok_or_else(bad)?)),
        _ => Err(bad()),
    }
}

/// The gateway's view of property `p`, named by the `name` its driver spec
/// holds (one allocation per name, shared by driver and gateway).
fn semantics(p: &PropertyConfig, pn: &Node, name: Arc<str>) -> Option<PropertySemantics> {
    let mut entries = Vec::new();
    if let Some(en) = pn.get("enum").and_then(|e| e.entries()) {
        entries.reserve_exact(en.len());
        for (k, v) in en {
            entries.push(EnumEntry {
                raw: enum_raw(p.data_type, k).ok()?,
                label: v.text().unwrap_or_default(),
            });
        }
    }
    Some(
        PropertySemantics::new(name, p.data_type, p.writable).with(|d| {
            d.scale = p.scale;
            d.offset = p.offset;
            d.min = p.min;
            d.max = p.max;
            d.deadband = p.deadband;
            d.unit = p.unit.as_deref().map(Box::from);
            d.description = p.description.as_deref().map(Box::from);
            d.home_assistant = p.home_assistant.clone().map(Box::new);
            d.enum_entries = entries.into_boxed_slice();
        }),
    )
}

fn constant_value(t: DataType, v: &Node) -> Result<Value, String> {
    let bad = || {
        format!(
            "constant {} does not fit the property's type `{t}`",
            v.describe()
        )
    };
    match (&v.kind, t) {
        (Kind::Bool(b), DataType::Bool) => Ok(Value::Bool(*b)),
        (Kind::Int(i), t) if t.is_integer() => Value::integer_of(t, i.get()).ok_or_else(|| {
            let (lo, hi) = t.integer_range().unwrap_or_default();
            format!("constant `{i}` is out of range for `{t}` ({lo}..={hi})")
        }),
        (Kind::Float(f), t) if t.is_integer() && f.fract() == 0.0 => {
            Value::integer_of(t, *f as i128).ok_or_else(bad)
        }
        (Kind::Int(i), t) if t.is_float() => Ok(Value::Float(i.get() as f64)),
        (Kind::Float(f), t) if t.is_float() => Ok(Value::Float(*f)),
        (Kind::Str(s), DataType::String) => Ok(Value::String(s.to_string())),
        (Kind::Str(s), DataType::Bytes) => decode_hex(s)
            .map(Value::Bytes)
            .ok_or_else(|| format!("constant `{s}` is not hex bytes (e.g. \"01ff\")")),
        _ => Err(bad()),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn generator(p: &PropertyConfig, pn: &Node) -> Option<Generator> {
    Some(match p.simulate.as_ref()? {
        SimulateConfig::Constant(_) => {
            let v = pn.get("simulate")?.get("constant")?;
            Generator::Constant(constant_value(p.data_type, v).ok()?)
        }
        SimulateConfig::Counter { start, step } => Generator::Counter {
            start: *start,
            step: *step,
        },
        SimulateConfig::Random { min, max } => Generator::Random {
            min: *min,
            max: *max,
        },
        SimulateConfig::Sine { min, max, period } => Generator::Sine {
            min: *min,
            max: *max,
            period: period.0,
        },
    })
}

fn check_dummy_property(ctx: &mut Ctx, p: &PropertyConfig, pn: &Node, pp: &str) {
    let Some(sim) = &p.simulate else {
        ctx.at(
            pn,
            pp,
            "a dummy property needs `simulate` with one of `constant`, `counter`, `random`, `sine`",
        );
        return;
    };
    let sn = pn.get("simulate").unwrap_or(pn);
    let sp = join(pp, "simulate");
    let t = p.data_type;
    match sim {
        SimulateConfig::Constant(_) => {
            if let Some(v) = sn.get("constant") {
                if let Err(e) = constant_value(t, v) {
                    ctx.at(v, &join(&sp, "constant"), e);
                }
            }
        }
        other => {
            let (key, lo_hi, period) = match other {
                SimulateConfig::Counter { .. } => ("counter", None, None),
                SimulateConfig::Random { min, max } => ("random", Some((*min, *max)), None),
                SimulateConfig::Sine { min, max, period } => {
                    ("sine", Some((*min, *max)), Some(period.0))
                }
                SimulateConfig::Constant(_) => unreachable!(),
            };
            let gn = sn.get(key).unwrap_or(sn);
            let gp = join(&sp, key);
            if !t.is_numeric() {
                ctx.key(
                    sn,
                    &sp,
                    &[key],
                    format!("`{key}` generates numbers; a `{t}` property needs `constant`"),
                );
            }
            if let Some((lo, hi)) = lo_hi {
                if lo > hi {
                    ctx.val(gn, &gp, &["max"], format!("max ({hi}) is below min ({lo})"));
                }
            }
            if period.is_some_and(|p| p.is_zero()) {
                ctx.val(gn, &gp, &["period"], "period must be greater than 0s");
            }
        }
    }
}

fn check_modbus_property(ctx: &mut Ctx, p: &PropertyConfig, pn: &Node, pp: &str) {
    let t = p.data_type;
    let Some(reg) = p.register else {
        ctx.at(
            pn,
            pp,
            "a modbus property needs `register` (coil | discreteInput | input | holding)",
        );
        if p.address.is_none() {
            ctx.at(pn, pp, "a modbus property needs `address` (0-based)");
        }
        return;
    };
    let Some(addr) = p.address else {
        ctx.at(pn, pp, "a modbus property needs `address` (0-based)");
        return;
    };
    let bit_reg = matches!(reg, RegisterName::Coil | RegisterName::DiscreteInput);
    if bit_reg && t != DataType::Bool {
        ctx.val(
            pn,
            pp,
            &["type"],
            format!(
                "{} holds a single bit; its type must be `bool`, not `{t}`",
                a_reg(reg)
            ),
        );
    }
    if let Some(b) = p.bit {
        if bit_reg {
            ctx.key(
                pn,
                pp,
                &["bit"],
                format!(
                    "`bit` applies only to input and holding registers, not {}",
                    a_reg(reg)
                ),
            );
        } else if t != DataType::Bool {
            ctx.key(
                pn,
                pp,
                &["bit"],
                format!("`bit` needs `type: bool`, not `{t}`"),
            );
        } else if b > 15 {
            ctx.val(
                pn,
                pp,
                &["bit"],
                format!("bit {b} is out of range; allowed: 0..=15"),
            );
        }
    }
    let var = matches!(t, DataType::String | DataType::Bytes);
    match (var, p.quantity) {
        (true, None) => ctx.at(
            pn,
            pp,
            format!("a `{t}` property needs `quantity` (number of registers)"),
        ),
        (true, Some(0)) => ctx.val(pn, pp, &["quantity"], "quantity must be at least 1"),
        (true, Some(_)) if bit_reg => {}
        (false, Some(_)) => ctx.key(
            pn,
            pp,
            &["quantity"],
            format!("`quantity` applies only to `string` and `bytes`; `{t}` has a fixed size"),
        ),
        _ => {}
    }
    if p.byte.is_some() && (bit_reg || !matches!(t, DataType::Int8 | DataType::Uint8)) {
        ctx.key(
            pn,
            pp,
            &["byte"],
            "`byte` applies only to int8/uint8 in input or holding registers",
        );
    }
    if p.byte_order.is_some() && (bit_reg || t.fixed_size().is_some_and(|s| s < 4)) {
        ctx.key(
            pn,
            pp,
            &["byteOrder"],
            format!("`byteOrder` applies only to 32/64-bit values, string and bytes, not `{t}`"),
        );
    }
    if p.writable && matches!(reg, RegisterName::DiscreteInput | RegisterName::Input) {
        ctx.val(
            pn,
            pp,
            &["writable"],
            format!(
                "{} is read-only; only coils and holding registers are writable",
                a_reg(reg)
            ),
        );
    }
    let size: u32 = if bit_reg || p.bit.is_some() {
        1
    } else {
        match t.fixed_size() {
            Some(n) => (n as u32).div_ceil(2),
            None => p.quantity.unwrap_or(1).max(1) as u32,
        }
    };
    if addr as u32 + size - 1 > 65_535 {
        ctx.val(
            pn,
            pp,
            &["address"],
            format!("address {addr} + {size} registers runs past 65535"),
        );
    }
}

fn a_reg(r: RegisterName) -> &'static str {
    match r {
        RegisterName::Coil => "a coil",
        RegisterName::DiscreteInput => "a discrete input",
        RegisterName::Input => "an input register",
        RegisterName::Holding => "a holding register",
    }
}
