//! The opcua driver: `protocol:` with the endpoint, security and identity,
//! and properties addressed by `nodeId`.

use std::path::Path;
#[cfg(feature = "opcua")]
use std::sync::Arc;

use fieldgate_drivers::{Connection, DeviceSpec, PropertyAddress, PropertySpec};

use super::DriverConfig;
use crate::config::ctx::Ctx;
use crate::config::devices::ParsedDevice;
#[cfg(feature = "opcua")]
use crate::config::properties::semantics;
use crate::config::resolved::PropertySemantics;
#[cfg(feature = "opcua")]
use crate::config::tree::join;
use crate::config::tree::Node;
use crate::config::types::*;
#[cfg(feature = "opcua")]
use crate::config::{config_path, read_password_file};

/// The opcua driver's config.
pub(super) struct Opcua;

/// Keys of an opcua `protocol:`.
const PROTOCOL_KEYS: &[&str] = &[
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
    "allowPlaintextPassword",
];
/// Keys of an opcua property besides the common ones.
const PROPERTY_KEYS: &[&str] = &["nodeId"];

impl DriverConfig for Opcua {
    fn protocol_keys(&self) -> &'static [&'static str] {
        PROTOCOL_KEYS
    }

    fn property_keys(&self) -> &'static [&'static str] {
        PROPERTY_KEYS
    }

    fn check_property(
        &self,
        ctx: &mut Ctx,
        _d: &ParsedDevice<'_>,
        p: &PropertyConfig,
        pn: &Node,
        pp: &str,
    ) {
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

    /// The endpoint, and the `protocol:` keys the parser leaves as strings.
    #[cfg_attr(not(feature = "opcua"), allow(unused_variables))]
    fn check_device(&self, ctx: &mut Ctx, base: &Path, d: &ParsedDevice<'_>) {
        let path = &d.path;
        let proto = d.config.protocol.clone().unwrap_or_default();
        if proto.endpoint.as_deref().is_none_or(str::is_empty) {
            ctx.key(
                d.node,
                path,
                &["protocol"],
                "an opcua device needs `protocol.endpoint` (e.g. opc.tcp://plc:4840)",
            );
        }
        #[cfg(feature = "opcua")]
        if let Some(pn) = d.node.get("protocol") {
            check_protocol(ctx, base, &proto, pn, &join(path, "protocol"));
        }
        #[cfg(not(feature = "opcua"))]
        ctx.val(
            d.node,
            path,
            &["driver"],
            format!(
                "driver `opcua` is not supported by this build yet; drivers available: {}",
                fieldgate_drivers::enabled_drivers().join(", ")
            ),
        );
    }

    #[cfg(feature = "opcua")]
    fn build(
        &self,
        base: &Path,
        state_directory: &str,
        d: &ParsedDevice<'_>,
        specs: &mut Vec<PropertySpec>,
        sems: &mut Vec<PropertySemantics>,
    ) -> Option<Connection> {
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
        Some(Connection::OpcUa(connection(
            base,
            &proto,
            state_directory,
        )?))
    }

    /// Not in this build: refused while validating.
    #[cfg(not(feature = "opcua"))]
    fn build(
        &self,
        _base: &Path,
        _state_directory: &str,
        _d: &ParsedDevice<'_>,
        _specs: &mut Vec<PropertySpec>,
        _sems: &mut Vec<PropertySemantics>,
    ) -> Option<Connection> {
        None
    }

    #[cfg(feature = "opcua")]
    fn report_connection(&self, out: &mut String, spec: &DeviceSpec) {
        use fieldgate_drivers::opcua::{Identity, Mode, Policy};
        use std::fmt::Write as _;
        let Connection::OpcUa(c) = &spec.connection else {
            return;
        };
        let _ = writeln!(
            out,
            "    connection: {}, securityPolicy {}, securityMode {}, mode {}",
            c.endpoint,
            c.policy.as_str(),
            c.security_mode.as_str(),
            match c.mode {
                Mode::Subscribe => "subscribe (publishing interval = syncInterval)",
                Mode::Poll => "poll (one Read per cycle)",
            }
        );
        let identity = match &c.identity {
            Identity::Anonymous => "anonymous".to_string(),
            Identity::UserName { user, .. } => {
                format!("user {user:?} (password set)")
            }
        };
        let cert = match &c.certificate {
            Some((cert, key)) => format!("{} / {}", cert.display(), key.display()),
            None if c.policy == Policy::None => "none (securityPolicy None)".to_string(),
            None => format!("generated on first use in {}", c.state_dir.display()),
        };
        let _ = writeln!(out, "    identity: {identity}; client certificate: {cert}");
        if matches!(c.identity, Identity::UserName { .. }) && c.policy == Policy::None {
            let _ = writeln!(
                out,
                "    warning: allowPlaintextPassword: the password is sent in plain text (securityPolicy None)"
            );
        }
        let _ = writeln!(
            out,
            "    trusted server certificates: {}",
            c.trusted_dir.display()
        );
    }

    #[cfg(not(feature = "opcua"))]
    fn report_connection(&self, _out: &mut String, _spec: &DeviceSpec) {}

    #[cfg(feature = "opcua")]
    fn report_address(&self, line: &mut String, address: &PropertyAddress) {
        use std::fmt::Write as _;
        if let PropertyAddress::OpcUa(a) = address {
            let _ = write!(line, ", node {}", a.node_id);
        }
    }

    #[cfg(not(feature = "opcua"))]
    fn report_address(&self, _line: &mut String, _address: &PropertyAddress) {}
}

/// Validates the OPC-UA `protocol` keys the parser leaves as strings.
#[cfg(feature = "opcua")]
fn check_protocol(ctx: &mut Ctx, base: &Path, proto: &ProtocolConfig, pn: &Node, ppath: &str) {
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
    if proto.username.is_some()
        && policy == Some(Policy::None)
        && proto.allow_plaintext_password != Some(true)
    {
        ctx.key(
            pn,
            ppath,
            &["username"],
            "with `securityPolicy: None` the user name and password travel in plain text: use a securityPolicy such as Basic256Sha256, or set `allowPlaintextPassword: true` on this device",
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
fn connection(
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
