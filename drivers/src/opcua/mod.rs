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
//! - `convert`: Variant ⇄ value conversion.
//! - `security`: client certificate (configured or generated once) and the
//!   server trust check.

pub mod browse;
pub mod convert;
mod dial;
pub mod security;

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken, Session, SessionPollResult};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, DataValue, EndpointDescription, MessageSecurityMode, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NodeId, NumericRange, ReadValueId, StatusCode,
    TimestampsToReturn, UserTokenType, VariantScalarTypeId, WriteValue,
};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::{
    Backoff, Connection, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError,
    ErrorKind, PropertyAddress, ReadCause, Readings, Value, WriteOutcome,
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

/// A live session and the task driving its event loop.
struct Connected {
    session: Arc<Session>,
    events: mpsc::Receiver<LoopEvent>,
    _driver: AbortOnDrop,
}

/// Stops the session's event-loop task when the session is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the session's event loop reports to the device task.
#[derive(Debug)]
enum LoopEvent {
    /// Something arrived from the server.
    Alive,
    /// The transport or session is gone.
    Lost(String),
}

fn io(msg: impl Into<String>) -> DriverError {
    DriverError::new(ErrorKind::Io, msg)
}

fn describe_status(code: StatusCode) -> String {
    let hint = match code {
        StatusCode::BadUserAccessDenied | StatusCode::BadIdentityTokenRejected => {
            " (wrong user name or password?)"
        }
        StatusCode::BadIdentityTokenInvalid => {
            " (the server does not accept this kind of identity)"
        }
        StatusCode::BadCertificateUntrusted | StatusCode::BadSecurityChecksFailed => {
            " (does the server trust the client certificate?)"
        }
        StatusCode::BadCertificateHostNameInvalid => {
            " (the endpoint host name is not in the server certificate)"
        }
        _ => "",
    };
    format!("{code}{hint}")
}

/// One connection attempt: discovery, endpoint selection, trust, session.
async fn connect(spec: &DeviceSpec, conn: &OpcUaConnection) -> Result<Connected, DriverError> {
    // The host name first, in the resolver's own time and not the device
    // timeout's: a dead name server marks only the devices behind a name.
    // The connections below find the answer in the resolver's cache.
    if let Ok(endpoint) = dial::endpoint_of(conn.endpoint.as_str()) {
        crate::resolve::resolve(&endpoint).await?;
    }
    let secure = conn.policy != Policy::None;
    let own = if secure || conn.certificate.is_some() {
        Some(security::client_certificate(conn).await?)
    } else {
        None
    };
    let mut builder = ClientBuilder::new()
        .application_name("fieldgate")
        .application_uri(security::APPLICATION_URI)
        .product_uri(security::APPLICATION_URI)
        .pki_dir(conn.state_dir.join("pki"))
        .create_sample_keypair(false)
        // Trust was decided by `security::check_server` against the
        // configured directory before the session is built.
        .trust_server_certs(true)
        .verify_server_certs(true)
        .session_retry_limit(0)
        .session_retry_initial(Duration::from_millis(100))
        .recreate_subscriptions(false)
        .request_timeout(spec.timeout)
        .publish_timeout(spec.timeout + spec.sync_interval.max(Duration::from_secs(1)) * 3)
        .keep_alive_interval(keep_alive_interval(spec))
        .max_failed_keep_alive_count(0)
        .session_name(format!("fieldgate {}", spec.name));
    if let Some((cert, key)) = &own {
        builder = builder.certificate_path(cert).private_key_path(key);
    }
    let client = builder
        .client()
        .map_err(|e| DriverError::new(ErrorKind::Unsupported, e.join("; ")))?;
    let endpoints = tokio::time::timeout(
        spec.timeout,
        client.get_server_endpoints_from_url(dial::ResolvingConnector::new(conn.endpoint.as_str())),
    )
    .await
    .map_err(|_| DriverError::timeout(spec.timeout))?
    .map_err(|e| {
        io(format!(
            "cannot get the endpoints of {}: {}",
            conn.endpoint,
            describe_status(e.status())
        ))
    })?;
    let mut endpoint = select_endpoint(&endpoints, conn)?;
    if secure {
        security::check_server(conn, &endpoint).await?;
    }
    // Connect to the configured address, not to whatever host name the
    // server advertises (often unresolvable from the gateway).
    endpoint.endpoint_url = conn.endpoint.as_str().into();
    let identity = identity_token(conn, &endpoint, own.as_ref())?;
    let (session, event_loop) = client
        .session_builder()
        .connect_to_endpoint_directly(endpoint)
        .map(|b| {
            b.user_identity_token(identity)
                .with_connector(dial::ResolvingSource)
                .build(client.certificate_store().clone())
        })
        .and_then(|built| built)
        .map_err(|e| {
            io(format!(
                "cannot start a session: {}",
                describe_status(e.status())
            ))
        })?;

    let (tx, mut rx) = mpsc::channel(64);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let driver = AbortOnDrop(tokio::spawn(async move {
        let stream = event_loop.enter();
        tokio::pin!(stream);
        let mut ready = Some(ready_tx);
        loop {
            let ev = match stream.next().await {
                None => LoopEvent::Lost("session closed".into()),
                Some(Err(code)) => LoopEvent::Lost(describe_status(code)),
                Some(Ok(SessionPollResult::Reconnected(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                    LoopEvent::Alive
                }
                Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                    LoopEvent::Lost(format!("connection lost: {}", describe_status(code)))
                }
                Some(Ok(SessionPollResult::ReconnectFailed(code))) => {
                    LoopEvent::Lost(describe_status(code))
                }
                Some(Ok(SessionPollResult::Transport(
                    opcua::client::transport::TransportPollResult::IncomingMessage,
                )))
                | Some(Ok(SessionPollResult::Subscription(
                    opcua::client::SubscriptionActivity::Publish,
                ))) => LoopEvent::Alive,
                Some(Ok(SessionPollResult::SessionActivity(
                    opcua::client::SessionActivity::KeepAliveSucceeded,
                ))) => LoopEvent::Alive,
                Some(Ok(_)) => continue,
            };
            let lost = matches!(ev, LoopEvent::Lost(_));
            if lost {
                if let (Some(r), LoopEvent::Lost(m)) = (ready.take(), &ev) {
                    let _ = r.send(Err(m.clone()));
                    return;
                }
            }
            // A full channel only drops liveness hints; a loss must get through.
            if lost {
                let _ = tx.send(ev).await;
                return;
            }
            let _ = tx.try_send(ev);
        }
    }));
    let ready = tokio::time::timeout(spec.timeout * 3 + Duration::from_secs(2), ready_rx).await;
    match ready {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(m))) => {
            return Err(io(format!("cannot connect to {}: {m}", conn.endpoint)));
        }
        Ok(Err(_)) => return Err(io(format!("cannot connect to {}", conn.endpoint))),
        Err(_) => {
            return Err(DriverError::timeout(
                spec.timeout * 3 + Duration::from_secs(2),
            ))
        }
    }
    // Drain anything queued before the hand-over.
    while let Ok(ev) = rx.try_recv() {
        if let LoopEvent::Lost(m) = ev {
            return Err(io(m));
        }
    }
    info!(device = %spec.name, endpoint = %conn.endpoint, policy = conn.policy.as_str(),
          mode = conn.security_mode.as_str(), "opcua: session open");
    Ok(Connected {
        session,
        events: rx,
        _driver: driver,
    })
}

fn keep_alive_interval(spec: &DeviceSpec) -> Duration {
    spec.sync_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
}

fn select_endpoint(
    endpoints: &[EndpointDescription],
    conn: &OpcUaConnection,
) -> Result<EndpointDescription, DriverError> {
    let uri = conn.policy.to_library().to_uri();
    let mode = conn.security_mode.to_library();
    endpoints
        .iter()
        .find(|e| e.security_policy_uri.as_ref() == uri && e.security_mode == mode)
        .cloned()
        .ok_or_else(|| {
            let offered: Vec<String> = endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{}/{:?}",
                        SecurityPolicy::from_uri(e.security_policy_uri.as_ref()),
                        e.security_mode
                    )
                })
                .collect();
            DriverError::new(
                ErrorKind::NotFound,
                format!(
                    "{} offers no endpoint with securityPolicy {} and securityMode {}; it offers: {}",
                    conn.endpoint,
                    conn.policy.as_str(),
                    conn.security_mode.as_str(),
                    offered.join(", ")
                ),
            )
        })
}

fn identity_token(
    conn: &OpcUaConnection,
    endpoint: &EndpointDescription,
    own: Option<&(PathBuf, PathBuf)>,
) -> Result<IdentityToken, DriverError> {
    let offers = |t: UserTokenType| {
        endpoint
            .user_identity_tokens
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|p| p.token_type == t)
    };
    match &conn.identity {
        Identity::UserName { user, password } => {
            Ok(IdentityToken::new_user_name(user.clone(), password.clone()))
        }
        Identity::Anonymous => {
            if !offers(UserTokenType::Anonymous) && offers(UserTokenType::Certificate) {
                if let Some((cert, key)) = own {
                    return IdentityToken::new_x509_path(cert, key).map_err(|e| {
                        DriverError::new(
                            ErrorKind::Io,
                            format!("cannot load the X.509 identity: {e}"),
                        )
                    });
                }
            }
            Ok(IdentityToken::Anonymous)
        }
    }
}

fn read_ids(nodes: &[Option<NodeId>]) -> (Vec<usize>, Vec<ReadValueId>) {
    let mut idx = Vec::new();
    let mut ids = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if let Some(n) = n {
            idx.push(i);
            ids.push(ReadValueId::from(n.clone()));
        }
    }
    (idx, ids)
}

/// The connected phase: initial read, subscription or poll timer, commands.
async fn run_connected(
    spec: &DeviceSpec,
    conn: &OpcUaConnection,
    nodes: &[Option<NodeId>],
    mut c: Connected,
    link: &mut DeviceLink,
) -> Exit {
    let mut types: Vec<Option<VariantScalarTypeId>> = vec![None; nodes.len()];
    let pending = Arc::new(Pending::default());
    let invalid: Vec<(usize, Result<Value, DriverError>)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.is_none())
        .map(|(i, _)| {
            (
                i,
                Err(DriverError::new(ErrorKind::Rejected, "invalid NodeId")),
            )
        })
        .collect();
    if link.events.send(DeviceEvent::Online).await.is_err() {
        return Exit::Cancelled;
    }
    if conn.mode == Mode::Subscribe {
        if let Err(e) = subscribe(spec, nodes, &c.session, &pending).await {
            return Exit::Lost(e);
        }
    }
    // The initial read: values appear at once, whatever the mode.
    match read_all(spec, nodes, &c.session, &mut types, ReadCause::Poll).await {
        Ok(mut r) => {
            r.values.extend(invalid.iter().cloned());
            if link.events.send(DeviceEvent::Readings(r)).await.is_err() {
                return Exit::Cancelled;
            }
        }
        Err(e) => return Exit::Lost(e),
    }
    let mut last_alive = Instant::now();
    let dead_after = keep_alive_interval(spec) * 3 + spec.timeout;
    let mut poll = tokio::time::interval(spec.sync_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let mut liveness = tokio::time::interval(Duration::from_millis(500).min(dead_after / 2));
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let exit = loop {
        tokio::select! {
            _ = link.cancel.cancelled() => break Exit::Cancelled,
            ev = c.events.recv() => match ev {
                Some(LoopEvent::Alive) => last_alive = Instant::now(),
                Some(LoopEvent::Lost(m)) => break Exit::Lost(io(format!("{}: {m}", conn.endpoint))),
                None => break Exit::Lost(io(format!("{}: session ended", conn.endpoint))),
            },
            _ = pending.notify.notified() => {
                let changed: Vec<(usize, DataValue)> = match pending.values.lock() {
                    Ok(mut g) => g.drain().collect(),
                    Err(_) => Vec::new(),
                };
                if changed.is_empty() {
                    continue;
                }
                last_alive = Instant::now();
                let mut values = Vec::with_capacity(changed.len());
                for (i, dv) in changed {
                    values.push((i, decode_one(spec, &mut types, i, &dv)));
                }
                values.sort_by_key(|(i, _)| *i);
                let r = Readings { at: SystemTime::now(), cause: ReadCause::Poll, values, duration: None };
                if link.events.send(DeviceEvent::Readings(r)).await.is_err() {
                    break Exit::Cancelled;
                }
            }
            _ = poll.tick(), if conn.mode == Mode::Poll => {
                match read_all(spec, nodes, &c.session, &mut types, ReadCause::Poll).await {
                    Ok(mut r) => {
                        last_alive = Instant::now();
                        r.values.extend(invalid.iter().cloned());
                        if link.events.send(DeviceEvent::Readings(r)).await.is_err() {
                            break Exit::Cancelled;
                        }
                    }
                    Err(e) => break Exit::Lost(e),
                }
            }
            _ = liveness.tick() => {
                if last_alive.elapsed() > dead_after {
                    break Exit::Lost(DriverError::new(
                        ErrorKind::Timeout,
                        format!("{}: no answer for {}", conn.endpoint,
                            humantime::format_duration(Duration::from_millis(dead_after.as_millis() as u64))),
                    ));
                }
            }
            cmd = link.commands.recv() => match cmd {
                None => break Exit::Cancelled,
                Some(DeviceCommand::ReadNow) => {
                    match read_all(spec, nodes, &c.session, &mut types, ReadCause::Forced).await {
                        Ok(mut r) => {
                            last_alive = Instant::now();
                            r.values.extend(invalid.iter().cloned());
                            if link.events.send(DeviceEvent::Readings(r)).await.is_err() {
                                break Exit::Cancelled;
                            }
                        }
                        Err(e) => break Exit::Lost(e),
                    }
                }
                Some(DeviceCommand::Write { writes, reply }) => {
                    let (outcome, lost) = write(spec, nodes, &c.session, &mut types, &writes).await;
                    let read = read_all(spec, nodes, &c.session, &mut types, ReadCause::Forced).await;
                    let _ = reply.send(outcome);
                    if let Some(e) = lost {
                        break Exit::Lost(e);
                    }
                    match read {
                        Ok(mut r) => {
                            last_alive = Instant::now();
                            r.values.extend(invalid.iter().cloned());
                            if link.events.send(DeviceEvent::Readings(r)).await.is_err() {
                                break Exit::Cancelled;
                            }
                        }
                        Err(e) => break Exit::Lost(e),
                    }
                }
            },
        }
    };
    if matches!(exit, Exit::Cancelled) {
        // Be polite on a clean stop; never wait long for it.
        let _ = tokio::time::timeout(Duration::from_secs(1), c.session.disconnect()).await;
    }
    debug!(device = %spec.name, "opcua: session closed");
    exit
}

fn decode_one(
    spec: &DeviceSpec,
    types: &mut [Option<VariantScalarTypeId>],
    i: usize,
    dv: &DataValue,
) -> Result<Value, DriverError> {
    let Some(p) = spec.properties.get(i) else {
        return Err(DriverError::new(ErrorKind::Decode, "unknown property"));
    };
    if let (Some(v), Some(slot)) = (&dv.value, types.get_mut(i)) {
        if let Some(t) = v.scalar_type_id() {
            *slot = Some(t);
        }
    }
    convert::decode(dv, p.data_type)
}

/// Nodes per Read request (see [`read_all`]).
const READ_CHUNK: usize = 500;

async fn read_all(
    spec: &DeviceSpec,
    nodes: &[Option<NodeId>],
    session: &Session,
    types: &mut [Option<VariantScalarTypeId>],
    cause: ReadCause,
) -> Result<Readings, DriverError> {
    let started = Instant::now();
    let (idx, ids) = read_ids(nodes);
    if ids.is_empty() {
        return Ok(Readings {
            at: SystemTime::now(),
            cause,
            values: Vec::new(),
            duration: Some(started.elapsed()),
        });
    }
    // Large devices: read in chunks, so no request exceeds the message size
    // and no response holds more values than the client decodes in one
    // array (1 000); one Read of 20 000 nodes failed with BadRequestTooLarge.
    let mut results = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(READ_CHUNK) {
        let part = tokio::time::timeout(
            spec.timeout + Duration::from_millis(100),
            session.read(chunk, TimestampsToReturn::Neither, 0.0),
        )
        .await
        .map_err(|_| DriverError::timeout(spec.timeout))?
        .map_err(|e| io(format!("Read failed: {}", describe_status(e.status()))))?;
        results.extend(part);
    }
    let mut values = Vec::with_capacity(idx.len());
    for (k, i) in idx.iter().enumerate() {
        let v = match results.get(k) {
            Some(dv) => decode_one(spec, types, *i, dv),
            None => Err(DriverError::new(
                ErrorKind::Decode,
                "the server returned fewer results than requested",
            )),
        };
        values.push((*i, v));
    }
    Ok(Readings {
        at: SystemTime::now(),
        cause,
        values,
        duration: Some(started.elapsed()),
    })
}

async fn subscribe(
    spec: &DeviceSpec,
    nodes: &[Option<NodeId>],
    session: &Session,
    pending: &Arc<Pending>,
) -> Result<(), DriverError> {
    let p = pending.clone();
    let callback = DataChangeCallback::new(move |dv, item| {
        let handle = item.client_handle() as usize;
        if handle == 0 {
            return;
        }
        if let Ok(mut g) = p.values.lock() {
            g.insert(handle - 1, dv);
        }
        p.notify.notify_one();
    });
    let interval = spec.sync_interval;
    // The server sends a keep-alive when nothing changed for this many intervals.
    let keep_alive_count = (5_000 / interval.as_millis().max(1)).clamp(1, 1000) as u32;
    // At most as many notifications per Publish response as the client
    // decodes in one array (its default limit): asking for 0 (no limit) let
    // a server send more when over a thousand items changed in one
    // publishing interval; the client then refused the message and dropped
    // the session, again at every reconnect.
    let max_notifications =
        u32::try_from(opcua::types::constants::MAX_ARRAY_LENGTH).unwrap_or(1000);
    let sub = tokio::time::timeout(
        spec.timeout + Duration::from_millis(100),
        session.create_subscription(
            interval,
            keep_alive_count * 4,
            keep_alive_count,
            max_notifications,
            0,
            true,
            callback,
        ),
    )
    .await
    .map_err(|_| DriverError::timeout(spec.timeout))?
    .map_err(|e| {
        io(format!(
            "CreateSubscription failed: {}",
            describe_status(e.status())
        ))
    })?;
    let items: Vec<MonitoredItemCreateRequest> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            n.as_ref().map(|n| {
                MonitoredItemCreateRequest::new(
                    n.clone().into(),
                    MonitoringMode::Reporting,
                    MonitoringParameters {
                        client_handle: i as u32 + 1,
                        sampling_interval: interval.as_secs_f64() * 1000.0,
                        queue_size: 1,
                        discard_oldest: true,
                        ..Default::default()
                    },
                )
            })
        })
        .collect();
    // Large devices: create the items in chunks so no request gets too big.
    for chunk in items.chunks(500) {
        let created = tokio::time::timeout(
            spec.timeout * 2,
            session.create_monitored_items(sub, TimestampsToReturn::Neither, chunk.to_vec()),
        )
        .await
        .map_err(|_| DriverError::timeout(spec.timeout * 2))?
        .map_err(|e| {
            io(format!(
                "CreateMonitoredItems failed: {}",
                describe_status(e.status())
            ))
        })?;
        for (req, res) in chunk.iter().zip(&created) {
            if !res.result.status_code.is_good() {
                let i = req.requested_parameters.client_handle as usize - 1;
                let name = spec.properties.get(i).map(|p| &*p.name).unwrap_or("?");
                // The initial Read reports the per-property error; just log here.
                warn!(device = %spec.name, property = name,
                      "opcua: monitored item refused: {}", res.result.status_code);
            }
        }
    }
    Ok(())
}

/// Writes in order, stopping at the first refusal. The second value is set
/// when the session itself failed (the caller reconnects).
async fn write(
    spec: &DeviceSpec,
    nodes: &[Option<NodeId>],
    session: &Session,
    types: &mut [Option<VariantScalarTypeId>],
    writes: &[(usize, Value)],
) -> (WriteOutcome, Option<DriverError>) {
    let mut outcome = WriteOutcome::default();
    for (k, (i, value)) in writes.iter().enumerate() {
        let (Some(Some(node)), Some(p)) = (nodes.get(*i), spec.properties.get(*i)) else {
            outcome.failed = Some((k, DriverError::new(ErrorKind::Rejected, "invalid NodeId")));
            return (outcome, None);
        };
        if types.get(*i).copied().flatten().is_none() {
            // Learn the node's type first, so the Variant matches it.
            if let Ok(Ok(r)) = tokio::time::timeout(
                spec.timeout,
                session.read(
                    &[ReadValueId::from(node.clone())],
                    TimestampsToReturn::Neither,
                    0.0,
                ),
            )
            .await
            {
                if let Some(t) = r
                    .first()
                    .and_then(|dv| dv.value.as_ref())
                    .and_then(|v| v.scalar_type_id())
                {
                    types[*i] = Some(t);
                }
            }
        }
        let target = types
            .get(*i)
            .copied()
            .flatten()
            .unwrap_or_else(|| convert::natural_type(p.data_type));
        let variant = match convert::value_to_variant(value, target) {
            Ok(v) => v,
            Err(e) => {
                outcome.failed = Some((k, e));
                return (outcome, None);
            }
        };
        let wv = WriteValue {
            node_id: node.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: NumericRange::None,
            value: DataValue::value_only(variant),
        };
        let res = tokio::time::timeout(
            spec.timeout + Duration::from_millis(100),
            session.write(&[wv]),
        )
        .await;
        match res {
            Err(_) => {
                let e = DriverError::timeout(spec.timeout);
                outcome.failed = Some((k, e.clone()));
                return (outcome, Some(e));
            }
            Ok(Err(e)) => {
                let e = io(format!("Write failed: {}", describe_status(e.status())));
                outcome.failed = Some((k, e.clone()));
                return (outcome, Some(e));
            }
            Ok(Ok(codes)) => {
                let code = codes
                    .first()
                    .copied()
                    .unwrap_or(StatusCode::BadUnexpectedError);
                if !code.is_good() {
                    outcome.failed = Some((k, convert::status_error(code)));
                    return (outcome, None);
                }
                outcome.applied += 1;
            }
        }
    }
    (outcome, None)
}
