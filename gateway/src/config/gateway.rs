//! The `gateway:` section (namespace, metrics and status page, directories)
//! and the embedded `broker:`.

use std::net::SocketAddr;

use super::load::Loader;
use super::names::{is_valid_name, NAME_RULE};
use super::resolved::*;
use super::tree::Node;
use super::types::*;
use super::{config_path, read_password_file};

/// `gateway:` as read, with the metrics address and token resolved.
pub(super) struct Gateway {
    /// The section with its defaults.
    pub(super) section: GatewaySection,
    /// `gateway.metrics.listen`, `None` when off or invalid.
    pub(super) metrics_listen: Option<SocketAddr>,
    /// The status page's write token.
    pub(super) metrics_token: Option<Secret>,
}

/// The `gateway` mapping of `root` when it holds `key`: errors about the
/// key's value point at it.
pub(super) fn gateway_key<'n>(root: &'n Node, key: &str) -> Option<&'n Node> {
    root.get("gateway").and_then(|g| g.entry(&[key]).map(|_| g))
}

impl Loader<'_> {
    /// Reads and checks `gateway:`; sets the secrets directory.
    pub(super) fn gateway_section(&mut self, root: &Node) -> Gateway {
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
        Gateway {
            section: gateway,
            metrics_listen,
            metrics_token,
        }
    }

    /// Reads and checks `broker:` (the embedded broker), `None` when absent.
    pub(super) fn broker_section(&mut self, root: &Node) -> Option<BrokerSettings> {
        match root.get("broker") {
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
        }
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
}
