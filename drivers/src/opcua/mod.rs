//! OPC-UA driver (async-opcua client): subscriptions or polling, security,
//! server-certificate trust, writes.
//!
//! One session per device. A connection attempt first asks the endpoint for
//! its endpoints (GetEndpoints), picks the one matching `securityPolicy` and
//! `securityMode`, checks the server certificate against the trusted
//! directory, then opens the session. The library's own reconnect logic is
//! off: on any loss the session is dropped, the device goes `Offline`, and a
//! new session (with a new subscription and monitored items) is built after a
//! backoff with jitter.
//!
//! - `connection`: opening a session (discovery, endpoint, trust, identity).
//! - `connected`: the connected phase (reads, change notifications, commands).
//! - `subscription`: the subscription and its monitored items.
//! - `writes`: writes to nodes.
//! - `convert`: Variant ⇄ value conversion.
//! - `security`: client certificate (configured or generated once) and the
//!   server trust check.

pub mod browse;
mod connected;
mod connection;
pub mod convert;
mod dial;
pub mod security;
mod subscription;
mod writes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::types::{DataValue, MessageSecurityMode, NodeId};
use tokio::sync::Notify;
use tracing::warn;

use connected::run_connected;
use connection::connect;

use crate::{
    Backoff, Connection, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError,
    PropertyAddress, WriteOutcome,
};

/// `securityPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// No security.
    None,
    /// Basic256Sha256.
    Basic256Sha256,
    /// Aes128_Sha256_RsaOaep.
    Aes128Sha256RsaOaep,
    /// Aes256_Sha256_RsaPss.
    Aes256Sha256RsaPss,
}

impl Policy {
    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "None" => Policy::None,
            "Basic256Sha256" => Policy::Basic256Sha256,
            "Aes128Sha256RsaOaep" => Policy::Aes128Sha256RsaOaep,
            "Aes256Sha256RsaPss" => Policy::Aes256Sha256RsaPss,
            _ => return None,
        })
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::None => "None",
            Policy::Basic256Sha256 => "Basic256Sha256",
            Policy::Aes128Sha256RsaOaep => "Aes128Sha256RsaOaep",
            Policy::Aes256Sha256RsaPss => "Aes256Sha256RsaPss",
        }
    }

    fn to_library(self) -> SecurityPolicy {
        match self {
            Policy::None => SecurityPolicy::None,
            Policy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
            Policy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
            Policy::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
        }
    }
}

/// `securityMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityMode {
    /// Neither signed nor encrypted.
    None,
    /// Signed messages.
    Sign,
    /// Signed and encrypted messages.
    SignAndEncrypt,
}

impl SecurityMode {
    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "None" => SecurityMode::None,
            "Sign" => SecurityMode::Sign,
            "SignAndEncrypt" => SecurityMode::SignAndEncrypt,
            _ => return None,
        })
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityMode::None => "None",
            SecurityMode::Sign => "Sign",
            SecurityMode::SignAndEncrypt => "SignAndEncrypt",
        }
    }

    fn to_library(self) -> MessageSecurityMode {
        match self {
            SecurityMode::None => MessageSecurityMode::None,
            SecurityMode::Sign => MessageSecurityMode::Sign,
            SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        }
    }
}

/// `mode`: how values are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One subscription with a monitored item per property (default).
    Subscribe,
    /// One Read request for all nodes per `syncInterval`.
    Poll,
}

/// Who the session authenticates as.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// No user (or, when the endpoint refuses anonymous users and a client
    /// certificate is configured, that certificate as an X.509 identity).
    Anonymous,
    /// User name and password.
    UserName {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("Anonymous"),
            Identity::UserName { user, .. } => write!(f, "UserName({user:?}, ***)"),
        }
    }
}

/// How to reach one OPC-UA server.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcUaConnection {
    /// `opc.tcp://host:port[/path]`
    pub endpoint: String,
    /// Security policy of the endpoint to use.
    pub policy: Policy,
    /// Message security mode of the endpoint to use.
    pub security_mode: SecurityMode,
    /// User identity.
    pub identity: Identity,
    /// Client certificate (DER or PEM) and private key (PEM); generated into
    /// `state_dir` when absent and security needs one.
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// Directory of trusted server certificates (DER or PEM, any file name).
    pub trusted_dir: PathBuf,
    /// `<stateDirectory>/opcua`: generated client certificate, rejected
    /// server certificates and the library's own PKI directory.
    pub state_dir: PathBuf,
    /// Subscribe or poll.
    pub mode: Mode,
}

/// Where a property lives on the server.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAddress {
    /// NodeId in the standard string form, e.g. `ns=2;s=Line1.Speed`.
    pub node_id: String,
}

/// Checks the syntax of a NodeId string (`ns=2;s=…`, `i=85`, `ns=1;g=…`, `ns=1;b=…`).
pub fn check_node_id(s: &str) -> Result<(), String> {
    NodeId::from_str(s).map(|_| ()).map_err(|_| {
        format!(
            "`{s}` is not a valid NodeId; write e.g. \"ns=2;s=Line1.Speed\", \"ns=3;i=1001\" or \"i=2258\""
        )
    })
}

/// Why a connected session ended.
enum Exit {
    Cancelled,
    Lost(DriverError),
}

/// Latest data changes per property index, filled by the subscription
/// callback and drained by the device task: bounded by the property count,
/// and the newest value always wins.
#[derive(Default)]
struct Pending {
    values: Mutex<HashMap<usize, DataValue>>,
    notify: Notify,
}

/// Runs one OPC-UA device until cancelled.
pub async fn run(spec: DeviceSpec, mut link: DeviceLink) {
    let Connection::OpcUa(conn) = &spec.connection else {
        return;
    };
    let conn = conn.clone();
    let nodes: Vec<Option<NodeId>> = spec
        .properties
        .iter()
        .map(|p| match &p.address {
            PropertyAddress::OpcUa(a) => NodeId::from_str(&a.node_id).ok(),
            #[allow(unreachable_patterns)]
            _ => None,
        })
        .collect();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut last_reason: Option<String> = None;
    loop {
        let attempt = tokio::select! {
            _ = link.cancel.cancelled() => return,
            r = connect(&spec, &conn) => r,
        };
        let reason = match attempt {
            Ok(connected) => {
                backoff.reset();
                last_reason = None;
                match run_connected(&spec, &conn, &nodes, connected, &mut link).await {
                    Exit::Cancelled => return,
                    Exit::Lost(e) => e,
                }
            }
            Err(e) => e,
        };
        if last_reason.as_deref() != Some(reason.message.as_str()) {
            warn!(device = %spec.name, "opcua: {}", reason.message);
            last_reason = Some(reason.message.clone());
        }
        if link
            .events
            .send(DeviceEvent::Offline(reason.clone()))
            .await
            .is_err()
        {
            return;
        }
        let delay = backoff.next_delay();
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = link.cancel.cancelled() => return,
                _ = tokio::time::sleep_until(until) => break,
                cmd = link.commands.recv() => match cmd {
                    None => return,
                    Some(DeviceCommand::ReadNow) => {}
                    Some(DeviceCommand::Write { writes, reply }) => {
                        let _ = reply.send(WriteOutcome {
                            applied: 0,
                            failed: (!writes.is_empty()).then(|| (0, reason.clone())),
                        });
                    }
                },
            }
        }
    }
}
