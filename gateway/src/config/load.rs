//! Loading: YAML text → located tree → typed sections (subtree by subtree, so
//! independent mistakes are all reported) → validation → [`Resolved`].
//!
//! The sections are read by [`Loader`] methods in their own modules:
//! `gateway:` and `broker:` in [`super::gateway`], `mqtt:` in
//! [`super::message`] and [`super::client`], devices in [`super::devices`]
//! with each driver's part in [`super::drivers`].

use std::path::{Path, PathBuf};

use super::client::{assign_store_directories, placeholder_session, Sessions};
use super::ctx::{drop_consequential, enclosing_path, Ctx};
use super::devices::TopLevel;
use super::gateway::{gateway_key, Gateway};
use super::names::is_valid_name;
use super::resolved::*;
use super::reuse::Reuse;
use super::tree::{self, list, Kind, Node};
use super::types::*;
use super::{config_path, ConfigErrors};
use crate::northbound::homeassistant::config as ha_config;

// Kept at their old paths for callers outside `config`.
pub use super::client::parse_server;
pub use super::names::{check_topic, device_uid};
pub use super::read_password_file;

/// Parses, validates and resolves config text. `file_label` is used in
/// error lines; `base_dir` resolves relative `passwordFile`s.
pub fn load_str(text: &str, file_label: &str, base_dir: &Path) -> Result<Resolved, ConfigErrors> {
    let root = parse_text(text, file_label)?;
    resolve_tree(root, file_label, base_dir, Reuse::default())
}

/// [`load_str`] for text the caller no longer needs: it is freed as soon as
/// it is parsed, so a large file's text and resolved devices never coexist.
pub fn load_string(
    text: String,
    file_label: &str,
    base_dir: &Path,
    reuse: Reuse,
) -> Result<Resolved, ConfigErrors> {
    let root = parse_text(&text, file_label)?;
    drop(text);
    resolve_tree(root, file_label, base_dir, reuse)
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
fn resolve_tree(
    root: Node,
    file_label: &str,
    base_dir: &Path,
    mut reuse: Reuse,
) -> Result<Resolved, ConfigErrors> {
    let mut ctx = Ctx::new(file_label);
    // The devices are resolved one by one, each device's part of the tree
    // dropped once resolved: a large file never holds its whole tree and
    // all its resolved devices at once.
    let mut root = root;
    let mut devices = root.take("devices");
    // `include:` adds the devices of other files; `profile:` merges a
    // profile into each device that names one (both tag their nodes with
    // their file, so errors point into it).
    let mut taken = Vec::new();
    let mut sources = super::include::expand(
        &mut ctx,
        &mut root,
        &mut devices,
        base_dir,
        (&mut reuse, &mut taken),
    );
    let file_order: Vec<String> = sources
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let failed = super::profile::apply(&mut ctx, &mut devices, base_dir, &mut sources);
    let resolved = Loader {
        ctx: &mut ctx,
        base_dir,
        secrets_dir: config_path(base_dir, super::types::DEFAULT_SECRETS_DIRECTORY),
    }
    .run(
        &root,
        devices,
        Taken {
            files: taken,
            order: file_order,
        },
    )
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

/// Devices taken over from the running config (see [`Reuse`]), by
/// included file, and the order of the included files.
pub(super) struct Taken {
    /// (file label, its devices), in file order.
    pub(super) files: Vec<(String, Vec<std::sync::Arc<DeviceSettings>>)>,
    /// Every included file's label, in the order read.
    pub(super) order: Vec<String>,
}

/// Reads the sections of one config; its methods live with the section
/// they read.
pub(super) struct Loader<'c> {
    /// Where errors go.
    pub(super) ctx: &'c mut Ctx,
    /// The config file's directory: relative paths are resolved against it.
    pub(super) base_dir: &'c Path,
    /// `gateway.secretsDirectory` (for `…PemRef` keys), once the gateway section is read.
    pub(super) secrets_dir: PathBuf,
}

/// The keys of the config's root mapping.
const ROOT_KEYS: &[&str] = &["gateway", "broker", "mqtt", "devices", "include"];

impl Loader<'_> {
    /// Reads every section of `root` and the devices of `devices_node`.
    fn run(&mut self, root: &Node, devices_node: Option<Node>, taken: Taken) -> Option<Resolved> {
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
        let Gateway {
            section: gateway,
            metrics_listen,
            metrics_token,
        } = self.gateway_section(root);
        let broker = self.broker_section(root);

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
            if let (Err(e), Some(g)) = (check_topic(&gateway_topic), gateway_key(root, "namespace"))
            {
                self.ctx.val(
                    g,
                    "gateway",
                    &["namespace"],
                    format!("the gateway topic `<prefix>/<namespace>` is invalid: {e}"),
                );
            }
        }

        // Sessions: the gateway session first.
        let gw_session = self.resolve_session(
            &top.client,
            top_mqtt_node.and_then(|n| n.get("client")),
            "mqtt.client",
            &broker,
            format!("fieldgate-{ns}"),
            format!("{gateway_topic}/$will"),
        );
        let mut sessions = Sessions {
            keys: vec![top.client.clone()],
            list: vec![gw_session.unwrap_or_else(placeholder_session)],
        };
        let sparkplug_on = top.message.format == Some(MessageFormat::SparkplugB);
        if sparkplug_on {
            let sp = self.resolve_sparkplug(top_mqtt_node, &top, &ns, &gateway.state_directory);
            if let Some(sp) = &sp {
                // NDEATH is the will: QoS 1, not retained (its payload, with
                // the bdSeq of each CONNECT, is set by the edge node).
                sessions.list[0].will = WillSettings {
                    topic: crate::northbound::sparkplug::node_topic(sp, "NDEATH"),
                    // Stable across reloads; replaced at every CONNECT.
                    payload: Vec::new(),
                    qos: 1,
                    retained: false,
                };
            }
            sessions.list[0].sparkplug = sp;
            let ha = top_mqtt_node.and_then(|m| m.get("discovery")?.get("homeAssistant"));
            if let (Some(h), true) = (ha, home_assistant.is_some()) {
                self.ctx.val(
                    h,
                    "mqtt.discovery.homeAssistant",
                    &["enabled"],
                    ha_config::SPARKPLUG_CONFLICT,
                );
            }
        }
        let devices = self.resolve_devices(
            devices_node,
            &TopLevel {
                mqtt: &top,
                ns: &ns,
                broker: &broker,
                state_directory: &gateway.state_directory,
                sparkplug: sparkplug_on,
            },
            &mut sessions,
            taken,
        );
        let mut sessions = sessions.list;
        assign_store_directories(&mut sessions, &gateway.state_directory);
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
                reload_probation: gateway.reload.probation.get(),
                health_interval: gateway.health_interval.get(),
            },
            broker,
            gateway_topic,
            sessions,
            devices,
            sources: Default::default(),
            home_assistant,
        })
    }
}
