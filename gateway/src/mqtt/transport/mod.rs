//! Connections to the broker for `tcp`, `ssl`/`tls`/`tcps` and `unix`
//! servers, and the bridge that hands them to rumqttc.
//!
//! rumqttc cannot be given a ready-made stream, but it can talk to a Unix
//! socket. Each [`Bridge`] owns a private socket (in a fresh 0700 directory);
//! before every connection attempt it resolves the server's host name (with
//! the resolver's own timeout and cache, outside `connectTimeout`: see
//! [`fieldgate_drivers::resolve`]), dials the broker itself (TCP, TLS with
//! rustls and the `ring` provider, or a Unix socket) within `connectTimeout`,
//! then relays rumqttc's connection to it (see [`relay`]). The relay
//! - rewrites the first CONNECT for MQTT 3.1 (protocol name `MQIsdp`,
//!   level 3; everything after CONNECT is the same on the wire),
//! - fails the connection when one write to the broker takes longer than
//!   `writeTimeout`,
//! - fails the connection when a PINGRESP does not follow a PINGREQ within
//!   `pingTimeout`,
//! - cuts PUBLISH packets larger than the caller's [`CutLimits`],
//! - remembers why it ended, so the session logs the real cause.
//!
//! This module knows the wire, not the application: its limits are passed in.

mod frame;
mod relay;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::resolved::{ServerAddress, SessionSettings};

pub(super) use frame::CutLimits;
pub use relay::{RelayError, V31Error};
pub(super) use tls::tls_client_config;

use relay::{relay, RelayOptions};

/// A byte stream to the broker.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
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

/// Why one connection attempt to the broker failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The server's host name did not resolve (in the resolver's own time).
    #[error(transparent)]
    Resolve(#[from] fieldgate_drivers::DriverError),
    /// The connection could not be made.
    #[error("{server}: {source}")]
    Dial {
        /// The server, as a URL.
        server: String,
        /// What the system said.
        source: Arc<io::Error>,
    },
    /// The TLS handshake failed.
    #[error("{server}: TLS handshake failed (server name `{name}`): {source}")]
    Handshake {
        /// The server, as a URL.
        server: String,
        /// The name its certificate was checked against.
        name: String,
        /// What went wrong.
        source: Arc<io::Error>,
    },
    /// No connection within `connectTimeout`.
    #[error("no connection within connectTimeout ({})", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The server at this index is not reached through the bridge.
    #[error("server {0} is a WebSocket server; it has no bridge")]
    NotBridged(usize),
    /// The bridge's socket could not be set up.
    #[error("{0}")]
    Setup(Arc<TransportError>),
    /// A lock of the bridge's state was poisoned by a panic.
    #[error("the bridge's state is poisoned")]
    Poisoned,
}

/// Where and how to dial one server.
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
    /// The target of `server`; `None` for a WebSocket server (rumqttc
    /// reaches it itself).
    fn new(
        server: &ServerAddress,
        settings: &SessionSettings,
    ) -> Result<Option<Self>, TransportError> {
        Ok(Some(match server {
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
            ServerAddress::WebSocket { .. } => return Ok(None),
        }))
    }

    /// The addresses of a TCP or TLS target, from the resolver (its own
    /// timeout and cache; a literal address needs no lookup).
    async fn resolve(&self) -> Result<Option<Arc<[SocketAddr]>>, ConnectError> {
        let (host, port) = match self {
            Target::Tcp(host, port) | Target::Tls(host, port, ..) => (host, port),
            Target::Unix(_) => return Ok(None),
        };
        let endpoint = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Some(fieldgate_drivers::resolve::resolve(&endpoint).await?))
    }

    /// Connects to `addrs` (and for TLS completes the handshake).
    async fn dial(&self, addrs: Option<&[SocketAddr]>) -> Result<Box<dyn Stream>, ConnectError> {
        let addrs = addrs.unwrap_or_default();
        match self {
            Target::Tcp(host, port) => {
                let s = TcpStream::connect(addrs)
                    .await
                    .map_err(|e| ConnectError::Dial {
                        server: format!("tcp://{host}:{port}"),
                        source: Arc::new(e),
                    })?;
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
            Target::Tls(host, port, connector, name) => {
                let server = format!("tls://{host}:{port}");
                let s = TcpStream::connect(addrs)
                    .await
                    .map_err(|e| ConnectError::Dial {
                        server: server.clone(),
                        source: Arc::new(e),
                    })?;
                let _ = s.set_nodelay(true);
                let s = connector.connect(name.clone(), s).await.map_err(|e| {
                    ConnectError::Handshake {
                        server,
                        name: name.to_str().into_owned(),
                        source: Arc::new(e),
                    }
                })?;
                Ok(Box::new(s))
            }
            Target::Unix(path) => {
                let s = UnixStream::connect(path)
                    .await
                    .map_err(|e| ConnectError::Dial {
                        server: format!("unix://{}", path.display()),
                        source: Arc::new(e),
                    })?;
                Ok(Box::new(s))
            }
        }
    }
}

/// A private Unix socket that rumqttc connects to, relayed to the broker:
/// to the server of a session's list chosen for each attempt.
pub(super) struct Bridge {
    /// One entry per server of the session (`None`: a WebSocket server).
    targets: Vec<Option<Target>>,
    connect_timeout: Duration,
    options: RelayOptions,
    dir: PathBuf,
    socket: PathBuf,
    /// The broker connection for rumqttc's next connect.
    armed: Arc<Mutex<Option<Box<dyn Stream>>>>,
    /// The accept loop, once started.
    acceptor: Option<tokio::task::JoinHandle<()>>,
    error: Arc<Mutex<Option<RelayError>>>,
    stop: CancellationToken,
    _guard: DropGuard,
}

impl Bridge {
    /// Prepares a bridge for the servers of `settings` (the socket is
    /// created on first use); `limits` bound what the broker may send.
    pub(super) fn new(
        settings: &SessionSettings,
        limits: CutLimits,
    ) -> Result<Self, TransportError> {
        let dir = std::env::temp_dir().join(format!(
            "fieldgate-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let socket = dir.join("mqtt.sock");
        let stop = CancellationToken::new();
        Ok(Bridge {
            targets: settings
                .servers()
                .map(|s| Target::new(s, settings))
                .collect::<Result<_, _>>()?,
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
                limits,
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
    pub(super) fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Resolves server `index`'s host name (in the resolver's own time),
    /// dials it within `connectTimeout` and arms the bridge with the
    /// connection, so rumqttc's next connect is relayed to it.
    pub(super) async fn connect(&mut self, index: usize) -> Result<(), ConnectError> {
        let Some(target) = self
            .targets
            .get(index % self.targets.len().max(1))
            .and_then(Option::as_ref)
        else {
            return Err(ConnectError::NotBridged(index));
        };
        if self.acceptor.as_ref().is_none_or(|a| a.is_finished()) {
            self.acceptor = Some(
                self.listen()
                    .map_err(|e| ConnectError::Setup(Arc::new(e)))?,
            );
        }
        self.take_error();
        let addrs = target.resolve().await?;
        let dial = target.dial(addrs.as_deref());
        let stream = if self.connect_timeout.is_zero() {
            dial.await?
        } else {
            tokio::time::timeout(self.connect_timeout, dial)
                .await
                .map_err(|_| ConnectError::Timeout(self.connect_timeout))??
        };
        match self.armed.lock() {
            Ok(mut slot) => {
                // A connection rumqttc never picked up is stale: replace it.
                *slot = Some(stream);
                Ok(())
            }
            Err(_) => Err(ConnectError::Poisoned),
        }
    }

    /// Why the last relayed connection ended, if it ended on our side.
    pub(super) fn take_error(&self) -> Option<RelayError> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    /// Creates the private directory and socket and starts accepting.
    fn listen(&self) -> Result<tokio::task::JoinHandle<()>, TransportError> {
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
    error: Arc<Mutex<Option<RelayError>>>,
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
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
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
