//! Connections to the broker for `tcp`, `ssl`/`tls`/`tcps` and `unix`
//! servers, and the bridge that hands them to rumqttc.
//!
//! rumqttc cannot be given a ready-made stream, but it can talk to a Unix
//! socket. Each [`Bridge`] owns a private socket (in a fresh 0700 directory);
//! before every connection attempt it dials the broker itself (TCP, TLS with
//! rustls and the `ring` provider, or a Unix socket) within `connectTimeout`,
//! then relays rumqttc's connection to it. The relay
//! - rewrites the first CONNECT for MQTT 3.1 (protocol name `MQIsdp`,
//!   level 3; everything after CONNECT is the same on the wire),
//! - fails the connection when one write to the broker takes longer than
//!   `writeTimeout`,
//! - fails the connection when a PINGRESP does not follow a PINGREQ within
//!   `pingTimeout`,
//! - remembers why it ended, so the session logs the real cause.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::resolved::{ServerAddress, SessionSettings, TlsSettings};

/// A byte stream to the broker.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why a transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS options do not make a usable configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The private socket directory could not be created.
    #[error("cannot create the bridge socket directory {0}: {1}")]
    SocketDir(PathBuf, io::Error),
}

impl From<TransportError> for String {
    fn from(e: TransportError) -> String {
        e.to_string()
    }
}

/// The rustls client configuration for `tls` (one crypto provider: ring).
pub fn tls_client_config(tls: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| TransportError::Tls(format!("CA: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| TransportError::Tls(format!("CA: {e}")))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A broken system certificate only loses itself.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TransportError::Tls(
                        "no CA given (caFile/caFilePem) and no system CA certificates found".into(),
                    ));
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.cert_pem, &tls.key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TransportError::Tls(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| TransportError::Tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TransportError::Tls(format!("client certificate/key: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `insecureSkipVerify`: accepts any certificate (signatures of the
/// handshake are still checked, so the connection is at least consistent).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Where and how to dial.
#[derive(Clone)]
enum Target {
    Tcp(String, u16),
    Tls(
        String,
        u16,
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    ),
    Unix(PathBuf),
}

impl Target {
    fn new(settings: &SessionSettings) -> Result<Self, TransportError> {
        Ok(match &settings.server {
            ServerAddress::Tcp { host, port } => Target::Tcp(host.clone(), *port),
            ServerAddress::Tls { host, port } => {
                let config = tls_client_config(&settings.tls)?;
                let name = settings.tls.server_name.as_deref().unwrap_or(host);
                let name =
                    rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| {
                        TransportError::Tls(format!("`{name}` is not a valid server name: {e}"))
                    })?;
                Target::Tls(host.clone(), *port, config.into(), name)
            }
            ServerAddress::Unix { path } => Target::Unix(path.clone()),
            ServerAddress::WebSocket { url, .. } => {
                return Err(TransportError::Tls(format!(
                    "{url} is a WebSocket server; it has no bridge"
                )))
            }
        })
    }

    /// Connects (and for TLS completes the handshake).
    async fn dial(&self) -> Result<Box<dyn Stream>, String> {
        match self {
            Target::Tcp(host, port) => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("tcp://{host}:{port}: {e}"))?;
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
            Target::Tls(host, port, connector, name) => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("tls://{host}:{port}: {e}"))?;
                let _ = s.set_nodelay(true);
                let s = connector.connect(name.clone(), s).await.map_err(|e| {
                    format!(
                        "tls://{host}:{port}: TLS handshake failed (server name `{}`): {e}",
                        name.to_str()
                    )
                })?;
                Ok(Box::new(s))
            }
            Target::Unix(path) => {
                let s = UnixStream::connect(path)
                    .await
                    .map_err(|e| format!("unix://{}: {e}", path.display()))?;
                Ok(Box::new(s))
            }
        }
    }
}

/// Timing and protocol options of the relay.
#[derive(Clone, Copy)]
struct RelayOptions {
    mqtt31: bool,
    mqtt5: bool,
    write_timeout: Duration,
    ping_timeout: Duration,
}

/// A private Unix socket that rumqttc connects to, relayed to the broker.
pub struct Bridge {
    target: Target,
    connect_timeout: Duration,
    options: RelayOptions,
    dir: PathBuf,
    socket: PathBuf,
    /// The broker connection for rumqttc's next connect.
    armed: Arc<Mutex<Option<Box<dyn Stream>>>>,
    /// The accept loop, once started.
    acceptor: Option<tokio::task::JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    _guard: DropGuard,
}

impl Bridge {
    /// Prepares a bridge for `settings` (the socket is created on first use).
    pub fn new(settings: &SessionSettings) -> Result<Self, TransportError> {
        let dir = std::env::temp_dir().join(format!(
            "fieldgate-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let socket = dir.join("mqtt.sock");
        let stop = CancellationToken::new();
        Ok(Bridge {
            target: Target::new(settings)?,
            connect_timeout: settings.connect_timeout,
            options: RelayOptions {
                mqtt31: settings.protocol_version == 3,
                mqtt5: settings.protocol_version == 5,
                write_timeout: settings.write_timeout,
                ping_timeout: if settings.keep_alive.is_zero() {
                    Duration::ZERO
                } else {
                    settings.ping_timeout
                },
            },
            dir,
            socket,
            armed: Arc::new(Mutex::new(None)),
            acceptor: None,
            error: Arc::new(Mutex::new(None)),
            _guard: stop.clone().drop_guard(),
            stop,
        })
    }

    /// The socket rumqttc connects to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Dials the broker within `connectTimeout` and arms the bridge with the
    /// connection, so rumqttc's next connect is relayed to it.
    pub async fn connect(&mut self) -> Result<(), String> {
        if self.acceptor.as_ref().is_none_or(|a| a.is_finished()) {
            self.acceptor = Some(self.listen()?);
        }
        self.take_error();
        let stream = if self.connect_timeout.is_zero() {
            self.target.dial().await?
        } else {
            tokio::time::timeout(self.connect_timeout, self.target.dial())
                .await
                .map_err(|_| {
                    format!(
                        "no connection within connectTimeout ({})",
                        humantime::format_duration(self.connect_timeout)
                    )
                })??
        };
        match self.armed.lock() {
            Ok(mut slot) => {
                // A connection rumqttc never picked up is stale: replace it.
                *slot = Some(stream);
                Ok(())
            }
            Err(_) => Err("the bridge's state is poisoned".into()),
        }
    }

    /// Why the last relayed connection ended, if it ended on our side.
    pub fn take_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    /// Creates the private directory and socket and starts accepting.
    fn listen(&self) -> Result<tokio::task::JoinHandle<()>, String> {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| TransportError::SocketDir(self.dir.clone(), e))?;
        let listener = UnixListener::bind(&self.socket)
            .map_err(|e| TransportError::SocketDir(self.socket.clone(), e))?;
        Ok(tokio::spawn(accept_loop(
            listener,
            self.armed.clone(),
            self.options,
            self.error.clone(),
            self.stop.clone(),
            self.dir.clone(),
        )))
    }
}

/// Pairs each armed broker connection with rumqttc's next connection.
async fn accept_loop(
    listener: UnixListener,
    armed: Arc<Mutex<Option<Box<dyn Stream>>>>,
    options: RelayOptions,
    error: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    dir: PathBuf,
) {
    loop {
        let local = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("bridge socket {}: {e}", dir.display());
                    continue;
                }
            },
        };
        let Some(upstream) = armed.lock().ok().and_then(|mut a| a.take()) else {
            // Only rumqttc knows the socket, and it connects only after we
            // armed the bridge; anything else is turned away.
            tracing::debug!(
                "bridge {}: connection without a broker connection",
                dir.display()
            );
            continue;
        };
        let error = error.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = relay(local, upstream, options, &error) => {}
            }
        });
    }
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finds packet boundaries in an MQTT byte stream and reports each
/// packet's type as soon as its fixed header is complete.
#[derive(Default)]
struct Framer {
    state: FrameState,
}

#[derive(Default, Clone, Copy)]
enum FrameState {
    #[default]
    Header,
    Length {
        kind: u8,
        shift: u32,
        value: usize,
    },
    Body(usize),
}

impl Framer {
    fn feed(&mut self, data: &[u8], mut on_packet: impl FnMut(u8)) {
        let mut i = 0;
        while i < data.len() {
            self.state = match self.state {
                FrameState::Header => {
                    let kind = data[i] >> 4;
                    i += 1;
                    FrameState::Length {
                        kind,
                        shift: 0,
                        value: 0,
                    }
                }
                FrameState::Length { kind, shift, value } => {
                    let b = data[i];
                    i += 1;
                    let value = value | (usize::from(b & 0x7f) << shift);
                    if b & 0x80 != 0 && shift < 21 {
                        FrameState::Length {
                            kind,
                            shift: shift + 7,
                            value,
                        }
                    } else {
                        on_packet(kind);
                        if value == 0 {
                            FrameState::Header
                        } else {
                            FrameState::Body(value)
                        }
                    }
                }
                FrameState::Body(n) => {
                    let take = n.min(data.len() - i);
                    i += take;
                    if take == n {
                        FrameState::Header
                    } else {
                        FrameState::Body(n - take)
                    }
                }
            };
        }
    }
}

const PUBLISH: u8 = 3;
/// The payload a cut PUBLISH keeps: one byte more than a command may have,
/// so that it is still refused as too large.
const CUT_PAYLOAD: usize = crate::command::MAX_SET_PAYLOAD + 1;
/// Largest variable header (topic, packet id, properties) a PUBLISH may
/// have to be cut; one with a larger header is passed on whole.
const CUT_MAX_HEADER: usize = 128 * 1024;

/// Passes the broker's byte stream on, except that a PUBLISH larger than
/// the client accepts ([`super::link::MAX_INCOMING_PACKET`]) is cut down to
/// its topic, packet id, properties and the first [`CUT_PAYLOAD`] bytes of
/// its payload. The client would otherwise fail the whole connection on it,
/// and a broker that keeps the session sends the same message again after
/// every reconnect: one oversized command would cut the gateway off for
/// good. Cut, it reaches the device as a command that is too large, which
/// gets an error result, and is acknowledged like any other.
struct Cutter {
    mqtt5: bool,
    state: CutState,
}

enum CutState {
    /// Collecting a fixed header (type byte and 1–4 remaining-length
    /// bytes): the bytes so far and how many there are. Held inline, as
    /// every packet from the broker passes through here.
    Head([u8; 5], usize),
    /// Passing `n` more bytes of the current packet.
    Pass(usize),
    /// Collecting the start of an oversized PUBLISH: its first byte, its
    /// remaining length and the bytes so far.
    Capture(u8, usize, Vec<u8>),
    /// Dropping `n` more bytes of a cut PUBLISH.
    Skip(usize),
}

impl CutState {
    /// At the start of a packet.
    const NEXT_PACKET: CutState = CutState::Head([0; 5], 0);
}

impl Cutter {
    fn new(mqtt5: bool) -> Self {
        Self {
            mqtt5,
            state: CutState::NEXT_PACKET,
        }
    }

    /// Appends what goes on for `data` to `out`.
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        while !data.is_empty() {
            let state = std::mem::replace(&mut self.state, CutState::Pass(0));
            self.state = match state {
                CutState::Head(mut head, mut n) => {
                    // `fixed_header` ends the header at its fifth byte at
                    // the latest, so `n` is at most 4 here.
                    head[n] = data[0];
                    n += 1;
                    data = &data[1..];
                    match fixed_header(&head[..n]) {
                        None => CutState::Head(head, n),
                        Some(len)
                            if head[0] >> 4 == PUBLISH
                                && len > super::link::MAX_INCOMING_PACKET =>
                        {
                            CutState::Capture(head[0], len, Vec::new())
                        }
                        Some(len) => {
                            out.extend_from_slice(&head[..n]);
                            if len == 0 {
                                CutState::NEXT_PACKET
                            } else {
                                CutState::Pass(len)
                            }
                        }
                    }
                }
                CutState::Pass(n) => {
                    let take = n.min(data.len());
                    out.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if take == n {
                        CutState::NEXT_PACKET
                    } else {
                        CutState::Pass(n - take)
                    }
                }
                CutState::Skip(n) => {
                    let take = n.min(data.len());
                    data = &data[take..];
                    if take == n {
                        CutState::NEXT_PACKET
                    } else {
                        CutState::Skip(n - take)
                    }
                }
                CutState::Capture(first, len, mut body) => {
                    let want = CUT_MAX_HEADER + CUT_PAYLOAD;
                    let take = (want - body.len()).min(data.len()).min(len - body.len());
                    body.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    let header = publish_header_len(&body, (first >> 1) & 3, self.mqtt5);
                    let complete = body.len() >= want || body.len() >= len;
                    match header {
                        Some(h) if h <= CUT_MAX_HEADER && body.len() >= h + CUT_PAYLOAD => {
                            let consumed = body.len();
                            body.truncate(h + CUT_PAYLOAD);
                            tracing::warn!(
                                "the broker sent a message of {len} bytes, more than a command may have; \
                                 passing it on cut to {} bytes so that it is refused",
                                body.len()
                            );
                            out.push(first);
                            put_length(out, body.len());
                            out.extend_from_slice(&body);
                            CutState::Skip(len - consumed)
                        }
                        Some(h) if h <= CUT_MAX_HEADER && !complete => {
                            CutState::Capture(first, len, body)
                        }
                        None if !complete => CutState::Capture(first, len, body),
                        _ => {
                            // Not a PUBLISH we can cut (or malformed): on
                            // whole, for the client to refuse as before.
                            out.push(first);
                            put_length(out, len);
                            out.extend_from_slice(&body);
                            if body.len() == len {
                                CutState::NEXT_PACKET
                            } else {
                                CutState::Pass(len - body.len())
                            }
                        }
                    }
                }
            };
        }
    }
}

/// The remaining length of a complete fixed header in `head` (type byte
/// plus 1–4 length bytes), `None` while incomplete. A fifth length byte
/// with its continuation bit set is malformed; it is read as complete so
/// the client sees it and refuses the connection.
fn fixed_header(head: &[u8]) -> Option<usize> {
    let bytes = head.get(1..)?;
    let last = *bytes.last()?;
    if last & 0x80 != 0 && bytes.len() < 4 {
        return None;
    }
    Some(
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| usize::from(b & 0x7f) << (7 * i))
            .sum(),
    )
}

/// Appends an MQTT variable byte integer.
fn put_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// The length of a PUBLISH's variable header at the start of `body` (topic,
/// packet id when `qos` > 0, and MQTT 5 properties), `None` while more
/// bytes are needed.
fn publish_header_len(body: &[u8], qos: u8, mqtt5: bool) -> Option<usize> {
    let topic = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic + if qos > 0 { 2 } else { 0 };
    if mqtt5 {
        let mut props = 0usize;
        for i in 0..4 {
            let b = *body.get(at + i)?;
            props |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                at += i + 1 + props;
                return (body.len() >= at).then_some(at);
            }
        }
        // A malformed length: let the client judge the packet.
        return Some(usize::MAX);
    }
    (body.len() >= at).then_some(at)
}

const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;

/// Rewrites an MQTT 3.1.1 CONNECT at the start of `buf` into an MQTT 3.1
/// CONNECT. `Ok(None)`: more bytes are needed.
fn connect_to_v31(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != 0x10 {
        return Err("the first packet is not a CONNECT".into());
    }
    let mut len = 0usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err("malformed CONNECT length".into());
        }
    }
    let total = i + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[i..total];
    if body.get(..7) != Some(&[0, 4, b'M', b'Q', b'T', b'T', 4][..]) {
        return Err("the CONNECT is not MQTT 3.1.1".into());
    }
    let mut out = Vec::with_capacity(total + 3);
    out.push(0x10);
    let mut rest = len + 2;
    loop {
        let mut b = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            b |= 0x80;
        }
        out.push(b);
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3]);
    out.extend_from_slice(&body[7..]);
    Ok(Some((out, total)))
}

/// Writes all of `data` to the broker within `limit` (zero = no limit).
async fn write_upstream<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    data: &[u8],
    limit: Duration,
) -> Result<(), String> {
    let write = async {
        w.write_all(data).await?;
        w.flush().await
    };
    if limit.is_zero() {
        return write
            .await
            .map_err(|e| format!("write to the broker failed: {e}"));
    }
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r.map_err(|e| format!("write to the broker failed: {e}")),
        Err(_) => Err(format!(
            "a write to the broker took longer than writeTimeout ({})",
            humantime::format_duration(limit)
        )),
    }
}

/// Relays rumqttc's connection (`local`) to the broker (`upstream`) until
/// either side ends. `Err` says why, when the cause is on the broker's side;
/// it is also stored in `error` before the sockets close, so rumqttc's
/// driver finds it when it sees the connection end.
async fn relay(
    local: UnixStream,
    upstream: Box<dyn Stream>,
    options: RelayOptions,
    error: &Mutex<Option<String>>,
) -> Result<(), String> {
    let (mut lr, mut lw) = local.into_split();
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let (ping_tx, mut ping_rx) = watch::channel::<Option<Instant>>(None);
    // The futures below only borrow the sockets, which close when this
    // function returns, after the outcome has been recorded.
    let (lr, lw, ur, uw) = (&mut lr, &mut lw, &mut ur, &mut uw);
    let ping_tx = &ping_tx;

    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut framer = Framer::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut connect_done = !options.mqtt31;
        loop {
            let n = lr.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                // rumqttc closed its side: a normal end.
                let _ = uw.shutdown().await;
                return Ok(());
            }
            let data = &buf[..n];
            let mut ping = false;
            framer.feed(data, |kind| ping |= kind == PINGREQ);
            if ping && !options.ping_timeout.is_zero() {
                ping_tx.send_if_modified(|d| {
                    if d.is_none() {
                        *d = Some(Instant::now() + options.ping_timeout);
                        true
                    } else {
                        false
                    }
                });
            }
            if connect_done {
                write_upstream(uw, data, options.write_timeout).await?;
                continue;
            }
            pending.extend_from_slice(data);
            if let Some((connect, used)) = connect_to_v31(&pending)? {
                write_upstream(uw, &connect, options.write_timeout).await?;
                write_upstream(uw, &pending[used..], options.write_timeout).await?;
                pending = Vec::new();
                connect_done = true;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut framer = Framer::default();
        let mut cutter = Cutter::new(options.mqtt5);
        let mut out = Vec::with_capacity(buf.len());
        loop {
            let n = ur
                .read(&mut buf)
                .await
                .map_err(|e| format!("connection to the broker lost: {e}"))?;
            if n == 0 {
                return Err("the broker closed the connection".to_string());
            }
            let mut pong = false;
            framer.feed(&buf[..n], |kind| pong |= kind == PINGRESP);
            if pong {
                ping_tx.send_replace(None);
            }
            out.clear();
            cutter.feed(&buf[..n], &mut out);
            if lw.write_all(&out).await.is_err() {
                return Ok(());
            }
        }
    };
    let ping_watch = async {
        loop {
            let deadline = *ping_rx.borrow_and_update();
            match deadline {
                None => {
                    if ping_rx.changed().await.is_err() {
                        return std::future::pending::<Result<(), String>>().await;
                    }
                }
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            return Err(format!(
                                "no PINGRESP within pingTimeout ({})",
                                humantime::format_duration(options.ping_timeout)
                            ));
                        }
                        r = ping_rx.changed() => if r.is_err() {
                            return std::future::pending().await;
                        },
                    }
                }
            }
        }
    };
    let outcome = tokio::select! {
        r = up => r,
        r = down => r,
        r = ping_watch => r,
    };
    if let Err(reason) = &outcome {
        if let Ok(mut e) = error.lock() {
            *e = Some(reason.clone());
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_connect_to_mqtt31() {
        // CONNECT, MQTT 3.1.1, clean session, keep-alive 30, client id "ab".
        let v311 = [
            0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 2, b'a', b'b', 0xC0, 0,
        ];
        let (out, used) = connect_to_v31(&v311).unwrap().unwrap();
        assert_eq!(used, 16);
        assert_eq!(
            out,
            vec![
                0x10, 16, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 30, 0, 2, b'a',
                b'b'
            ]
        );
        assert_eq!(connect_to_v31(&v311[..10]).unwrap(), None);
        assert!(connect_to_v31(&[0x30, 0]).is_err());
    }

    /// A PUBLISH (QoS 1, packet id 7) to `topic` with `payload`.
    fn publish(topic: &str, payload: &[u8], mqtt5: bool) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&7u16.to_be_bytes());
        if mqtt5 {
            body.extend_from_slice(&[3, 0x01, 0x01, 0x03]); // 3 bytes of properties
        }
        body.extend_from_slice(payload);
        let mut p = vec![0x32];
        put_length(&mut p, body.len());
        p.extend(body);
        p
    }

    fn cut_in_pieces(stream: &[u8], piece: usize, mqtt5: bool) -> Vec<u8> {
        let mut c = Cutter::new(mqtt5);
        let mut out = Vec::new();
        for chunk in stream.chunks(piece) {
            c.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn an_oversized_publish_is_cut_and_the_rest_passes_unchanged() {
        for mqtt5 in [false, true] {
            let small = publish("a/$set", b"{}", mqtt5);
            let big = publish("a/$set", &vec![b'x'; 2 << 20], mqtt5);
            let mut stream = small.clone();
            stream.extend(&big);
            stream.extend([0xD0, 0]); // PINGRESP
            stream.extend(&small);
            let mut want = small.clone();
            let header = 2 + 6 + 2 + if mqtt5 { 4 } else { 0 };
            want.extend(publish("a/$set", &vec![b'x'; CUT_PAYLOAD], mqtt5));
            want.extend([0xD0, 0]);
            want.extend(&small);
            assert_eq!(
                want.len(),
                2 * small.len() + 2 + 1 + 3 + header + CUT_PAYLOAD
            );
            for piece in [1, 3, 1000, 16 * 1024, stream.len()] {
                let out = cut_in_pieces(&stream, piece, mqtt5);
                assert!(out == want, "mqtt5 {mqtt5}, pieces of {piece}");
            }
        }
    }

    #[test]
    fn packets_the_client_accepts_pass_unchanged() {
        let mut stream = publish(
            "t",
            &vec![1u8; super::super::link::MAX_INCOMING_PACKET - 20],
            false,
        );
        stream.extend([0x20, 2, 0, 0]); // CONNACK
        stream.extend(publish("t", b"", false));
        for piece in [1, 7, 16 * 1024] {
            assert!(
                cut_in_pieces(&stream, piece, false) == stream,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn framer_finds_packets_split_anywhere() {
        // PUBLISH (len 200, two-byte length), PINGREQ, PINGRESP.
        let mut stream = vec![0x30, 0xC8, 0x01];
        stream.extend(std::iter::repeat_n(7u8, 200));
        stream.extend([0xC0, 0, 0xD0, 0]);
        for split in 0..stream.len() {
            let mut f = Framer::default();
            let mut kinds = Vec::new();
            f.feed(&stream[..split], |k| kinds.push(k));
            f.feed(&stream[split..], |k| kinds.push(k));
            assert_eq!(kinds, vec![3, PINGREQ, PINGRESP], "split at {split}");
        }
    }

    #[tokio::test]
    async fn a_stalled_write_to_the_broker_fails_the_relay() {
        let (local, mut client) = UnixStream::pair().unwrap();
        // The "broker" never reads: its buffer of 1 KiB fills up.
        let (upstream, _broker) = tokio::io::duplex(1024);
        let options = RelayOptions {
            mqtt31: false,
            mqtt5: false,
            write_timeout: Duration::from_millis(200),
            ping_timeout: Duration::ZERO,
        };
        let relay = tokio::spawn(async move {
            relay(local, Box::new(upstream), options, &Mutex::new(None)).await
        });
        // A PUBLISH far larger than the broker's buffer.
        let mut publish = vec![0x30, 0x80, 0x80, 0x01];
        publish.extend(std::iter::repeat_n(0u8, 16 * 1024));
        client.write_all(&publish).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the relay ends")
            .unwrap();
        let err = outcome.expect_err("a stalled write is an error");
        assert!(err.contains("writeTimeout (200ms)"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_pingresp_fails_the_relay() {
        let (local, mut client) = UnixStream::pair().unwrap();
        let (upstream, _broker) = tokio::io::duplex(1024);
        let options = RelayOptions {
            mqtt31: false,
            mqtt5: false,
            write_timeout: Duration::ZERO,
            ping_timeout: Duration::from_millis(100),
        };
        let relay = tokio::spawn(async move {
            relay(local, Box::new(upstream), options, &Mutex::new(None)).await
        });
        client.write_all(&[0xC0, 0]).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the relay ends")
            .unwrap()
            .expect_err("no PINGRESP is an error");
        assert!(err.contains("pingTimeout (100ms)"), "{err}");
    }
}
