//! The `mqtt:` section (top level or per device): its keys, `mqtt.message`
//! (checks, inheritance, MQTT 5 properties), `discovery` and Sparkplug B.

use std::path::Path;
use std::time::Duration;

use super::load::Loader;
use super::names::{check_sparkplug_id, check_topic, check_topic_filter};
use super::resolved::*;
use super::tree::{join, Kind, Node};
use super::types::*;
use crate::northbound::homeassistant::config::{self as ha_config, DiscoveryOptions};

/// The keys of an `mqtt:` mapping.
const MQTT_KEYS: &[&str] = &["client", "message", "discovery", "sparkplug"];

impl Loader<'_> {
    /// `mqtt:` (top level or per device): client and message, each validated.
    pub(super) fn mqtt_section(&mut self, n: &Node, path: &str, top: bool) -> MqttOptions {
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

    /// Checks one `mqtt.message` mapping as given (before inheritance).
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
        if let (Some(ResponseTopics::Filters(filters)), Some(rn)) =
            (&m.response_topics, n.get("responseTopics"))
        {
            let rp = join(path, "responseTopics");
            for (i, f) in filters.iter().enumerate() {
                if let Err(e) = check_topic_filter(f) {
                    let at = rn.items().and_then(|items| items.get(i)).unwrap_or(rn);
                    ctx.at(at, &format!("{rp}[{i}]"), e);
                }
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

    /// `mqtt.sparkplug` with `format: sparkplugB`: ids checked (Sparkplug
    /// and NATS-safe), the edge node id defaulting to the namespace.
    pub(super) fn resolve_sparkplug(
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
        ok.then(|| SparkplugSettings {
            bdseq_file: Path::new(state_directory)
                .join("sparkplug")
                .join(format!("{group}-{edge}.bdseq")),
            group_id: group,
            edge_node_id: edge,
            primary_host_id: opts.primary_host_id.clone().filter(|h| !h.is_empty()),
        })
    }
}

/// A device's message options `d` over the top level's `t`, key by key.
pub(super) fn merge_message(d: &MessageOptions, t: &MessageOptions) -> MessageOptions {
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

/// The message settings of a device with topic `t` and merged options `m`.
pub(super) fn message_settings(m: &MessageOptions, t: String) -> MessageSettings {
    let (state_props, result_props) = message_props(m);
    MessageSettings {
        topic: t,
        payload_encode: m.payload_encode.unwrap_or_default(),
        qos: m.qos.unwrap_or(0),
        retained: m.retained.unwrap_or(false),
        wait_timeout: m.wait_timeout.map(|d| d.0).unwrap_or(Duration::ZERO),
        state_props,
        result_props,
        response_topics: ResponseTopicPolicy::from_options(m.response_topics.as_ref()),
        command_rate: m.command_rate.unwrap_or(DEFAULT_COMMAND_RATE),
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
