//! Devices: each device parsed, checked (the rules every driver shares;
//! the driver's own through [`drivers`]), given its topic and MQTT session,
//! and lowered to the driver's spec and the gateway's property semantics.

use std::collections::HashMap;
use std::sync::Arc;

use fieldgate_drivers::{DataType, DeviceSpec};

use super::client::{merge_client, placeholder_session, Sessions};
use super::drivers;
use super::load::{Loader, Taken};
use super::message::{merge_message, message_settings};
use super::names::{
    check_sparkplug_id, check_topic, device_uid, is_valid_name, MAX_CLIENT_ID, NAME_RULE,
};
use super::properties::{enum_raw, link_scale_factors, scale_factor_problem};
use super::resolved::*;
use super::tree::{join, list, Kind, Node};
use super::types::*;
use crate::northbound::homeassistant::config as ha_config;

/// One device as parsed, with the nodes needed to locate later errors.
pub(crate) struct ParsedDevice<'n> {
    /// Its index in its file's `devices:` list.
    pub(crate) index: usize,
    /// Its mapping.
    pub(crate) node: &'n Node,
    /// `devices[N]`.
    pub(crate) path: String,
    /// The device keys (its `protocol:` included).
    pub(crate) config: DeviceConfig,
    /// Per-device MQTT overrides and their node.
    pub(crate) mqtt: Option<(MqttOptions, &'n Node)>,
    /// Properties that parsed, with their node and path.
    pub(crate) props: Vec<(PropertyConfig, &'n Node, String)>,
}

/// Keys every property takes, whatever its driver.
const COMMON_PROPERTY: &[&str] = &[
    "name",
    "type",
    "writable",
    "scale",
    "offset",
    "scaleFactor",
    "enum",
    "min",
    "max",
    "deadband",
    "unit",
    "description",
    "homeAssistant",
];

/// The top-level settings every device is resolved against.
pub(super) struct TopLevel<'a> {
    /// The top-level `mqtt:` options.
    pub(super) mqtt: &'a MqttOptions,
    /// `gateway.namespace`.
    pub(super) ns: &'a str,
    /// The embedded broker, if any.
    pub(super) broker: &'a Option<BrokerSettings>,
    /// `gateway.stateDirectory`.
    pub(super) state_directory: &'a str,
    /// `mqtt.message.format: sparkplugB`.
    pub(super) sparkplug: bool,
}

impl Loader<'_> {
    /// Resolves every device of `devices_node`, each as soon as it is
    /// parsed: the parsed property configs of one device are dropped before
    /// the next is read, so a large file never holds them all at once.
    pub(super) fn resolve_devices(
        &mut self,
        devices_node: Option<Node>,
        top: &TopLevel<'_>,
        sessions: &mut Sessions,
        taken: Taken,
    ) -> Vec<Arc<DeviceSettings>> {
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
        // Devices taken over count as read first: a new device that repeats
        // one of their names or topics is the one in error.
        for (file, kept) in &taken.files {
            for (i, d) in kept.iter().enumerate() {
                seen.insert(d.name.clone(), (file.clone(), i));
                topics.insert(d.message.topic.clone(), d.name.clone());
            }
        }
        // Each device's file, to put taken-over devices in their place.
        let mut files = Vec::new();
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
                Some(c) => merge_client(c, &top.mqtt.client),
                None => top.mqtt.client.clone(),
            };
            let merged_msg = match &dev_msg {
                Some(m) => merge_message(m, &top.mqtt.message),
                None => top.mqtt.message.clone(),
            };
            let t = self.device_topic(&d, dev_msg.as_ref(), &merged_msg, top.ns, &mut topics);
            let session = self.device_session(&d, merged_client, &t, top, sessions);
            if top.sparkplug {
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
            let message = message_settings(&merged_msg, t);
            if let Some((spec, props)) = self.device_spec(&d, top.state_directory) {
                if !taken.files.is_empty() {
                    files.push(file);
                }
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
        if taken.files.is_empty() {
            return devices;
        }
        super::reuse::in_file_order(&self.ctx.file, devices, files, taken)
    }

    /// The device's topic T, checked, and unique among the devices.
    fn device_topic(
        &mut self,
        d: &ParsedDevice<'_>,
        dev_msg: Option<&MessageOptions>,
        merged_msg: &MessageOptions,
        ns: &str,
        topics: &mut HashMap<String, String>,
    ) -> String {
        let topic_opts = merged_msg.topic.clone().unwrap_or_default();
        let own_name = dev_msg
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
                TopicWith::Uid => format!("{prefix}/{}", device_uid(ns, &d.config.name)),
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
        t
    }

    /// The index of the device's session: a session with the same merged
    /// client options is shared, else a new one is resolved.
    fn device_session(
        &mut self,
        d: &ParsedDevice<'_>,
        merged_client: ClientOptions,
        t: &str,
        top: &TopLevel<'_>,
        sessions: &mut Sessions,
    ) -> usize {
        if let Some(i) = sessions.keys.iter().position(|k| *k == merged_client) {
            return i;
        }
        let client_node = d.mqtt.as_ref().and_then(|(_, n)| n.get("client"));
        let s = self.resolve_session(
            &merged_client,
            client_node,
            &format!("{}.mqtt.client", d.path),
            top.broker,
            format!("fieldgate-{}-{}", top.ns, d.config.name),
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
        if sessions.list.iter().any(|o| o.client_id == s.client_id) {
            let msg = format!(
                "client id `{}` is already used by another MQTT session; devices with different client options need different client ids",
                s.client_id
            );
            match client_node.filter(|c| c.get("clientId").is_some()) {
                Some(c) => self
                    .ctx
                    .val(c, &format!("{}.mqtt.client", d.path), &["clientId"], msg),
                None => self.ctx.val(d.node, &d.path, &["name"], msg),
            }
        }
        sessions.keys.push(merged_client);
        sessions.list.push(s);
        sessions.list.len() - 1
    }

    /// Parses device `index` of its file (its properties one by one, so
    /// each bad one is reported) and checks it; `None` when it cannot be used.
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
                            continue;
                        }
                        // An advertisement `field:` may leave out `name`
                        // and `type` (the format decides the type).
                        #[cfg(feature = "ble")]
                        let filled = drivers::ble_adverts::fill_defaults(p, node);
                        #[cfg(not(feature = "ble"))]
                        let filled: Option<Node> = None;
                        if let Some(c) = self
                            .ctx
                            .de::<PropertyConfig>(filled.as_ref().unwrap_or(p), &pp)
                        {
                            props.push((c, p, pp));
                        }
                    }
                }
                _ => {
                    self.ctx.at(
                        pn,
                        &join(&path, "properties"),
                        format!("expected a list of properties, found {}", pn.describe()),
                    );
                }
            }
        }
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

    /// Driver-independent checks of one device, and its driver's.
    fn check_device(&mut self, d: &ParsedDevice<'_>) {
        let drv = d.config.driver;
        let driver = drivers::of(drv);
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
            let allowed = driver.protocol_keys();
            if let Some(entries) = pn.entries() {
                for (k, _) in entries {
                    let key = k.text().unwrap_or_default();
                    let own = drivers::protocol_key_owners(&key);
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
            let allowed = driver.property_keys();
            if let Some(entries) = pn.entries() {
                for (k, _) in entries {
                    let key = k.text().unwrap_or_default();
                    if COMMON_PROPERTY.contains(&key.as_str()) || allowed.contains(&key.as_str()) {
                        continue;
                    }
                    let own = drivers::property_key_owners(&key);
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
                names.insert(p.name.clone(), j);
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
                for key in ["scale", "offset", "scaleFactor", "min", "max", "deadband"] {
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
            driver.check_property(ctx, d, p, pn, pp);
        }
        for (p, pn, pp) in &d.props {
            if let Some(problem) = scale_factor_problem(p, &d.props, &names) {
                ctx.val(pn, pp, &["scaleFactor"], problem);
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
        driver.check_device(ctx, self.base_dir, d);
    }

    /// Lowers one device to the driver's spec and the gateway's semantics.
    fn device_spec(
        &mut self,
        d: &ParsedDevice<'_>,
        state_directory: &str,
    ) -> Option<(DeviceSpec, Vec<PropertySemantics>)> {
        // Exactly sized: these live as long as the device runs.
        let mut specs = Vec::with_capacity(d.props.len());
        let mut sems = Vec::with_capacity(d.props.len());
        let connection = drivers::of(d.config.driver).build(
            self.base_dir,
            state_directory,
            d,
            &mut specs,
            &mut sems,
        )?;
        link_scale_factors(&d.props, &mut sems);
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
