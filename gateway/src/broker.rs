//! Embedded MQTT broker (rumqttd) for standalone use: the config's `broker:`
//! section. MQTT 3.1.1 on `listen`, optionally MQTT 5 on a second address
//! (rumqttd speaks one protocol version per listener), anonymous, no TLS.
//!
//! rumqttd has no shutdown: once started, the broker runs until the process
//! exits. [`start`] blocks for up to [`START_TIMEOUT`]; from async code use
//! [`start_async`].
//!
//! Known rumqttd 0.20 issue (rumqtt#1062, fix not released): when a client's
//! connection fails during its CONNECT (e.g. it raced the teardown of an
//! earlier connection that had sent DISCONNECT), a later reconnect with the
//! same client id panics inside rumqttd and poisons that listener, which then
//! refuses every new connection. The embedded broker is meant for demos and
//! standalone boxes; production sites should run Mosquitto or another broker.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[cfg(feature = "fault-injection")]
pub mod fault;
mod log_levels;
pub use log_levels::RoutineBrokerEvents;

/// How long [`start`] waits for the broker to answer an MQTT CONNECT.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest accepted publish payload by default (bytes).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Client id prefix of the readiness probe's MQTT connections.
const PROBE_CLIENT_ID: &str = "fieldgate-broker-readiness";

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Port 0 cannot be used: clients must know where to connect.
    #[error("embedded broker: {0}: port 0 is not allowed, choose a fixed port")]
    PortZero(SocketAddr),
    /// The MQTT 3.1.1 and MQTT 5 listeners were given the same address.
    #[error("embedded broker: MQTT 3.1.1 and MQTT 5 cannot share the listen address {0}")]
    SameAddress(SocketAddr),
    /// The address cannot be bound (taken by another process, not local, no permission).
    #[error("embedded broker: cannot listen on {addr}: {source} (is another MQTT broker running there?)")]
    Bind {
        /// The address that failed.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The broker thread could not be spawned.
    #[error("embedded broker: cannot start its thread: {0}")]
    Thread(std::io::Error),
    /// The broker stopped while starting up.
    #[error("embedded broker on {addr} stopped during start-up: {reason}")]
    Stopped {
        /// The listen address.
        addr: SocketAddr,
        /// What rumqttd reported.
        reason: String,
    },
    /// The broker did not answer an MQTT CONNECT in time.
    #[error(
        "embedded broker on {addr} did not accept MQTT connections within {timeout:?}: {last}"
    )]
    NotReady {
        /// The address probed.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
        /// The last probe failure.
        last: String,
    },
}

/// Settings of the embedded broker; [`BrokerOptions::new`] gives sensible limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerOptions {
    /// MQTT 3.1.1 (and 3.1) listener.
    pub listen: SocketAddr,
    /// Optional MQTT 5 listener (must differ from `listen`).
    pub listen_v5: Option<SocketAddr>,
    /// Largest publish payload in bytes.
    pub max_payload_size: usize,
    /// Most concurrent client connections.
    pub max_connections: usize,
    /// Most unacknowledged QoS 1/2 messages per connection.
    pub max_inflight: usize,
    /// Bytes of one commit-log segment per subscription filter.
    pub max_segment_size: usize,
    /// Segments kept per subscription filter (backlog for slow subscribers).
    pub max_segment_count: usize,
}

impl BrokerOptions {
    /// MQTT 3.1.1 on `listen` with the default limits: 1 MiB payloads, 1000
    /// connections, 100 in-flight messages, 8 × 2 MiB backlog per filter.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            listen_v5: None,
            max_payload_size: DEFAULT_MAX_PAYLOAD,
            max_connections: 1000,
            max_inflight: 100,
            max_segment_size: 2 * 1024 * 1024,
            max_segment_count: 8,
        }
    }

    /// The rumqttd config for these options.
    fn rumqttd_config(&self) -> Config {
        let connections = ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: self.max_payload_size,
            max_inflight_count: self.max_inflight,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = |name: &str, listen: SocketAddr| {
            HashMap::from([(
                name.to_owned(),
                ServerSettings {
                    name: name.to_owned(),
                    listen,
                    tls: None,
                    next_connection_delay_ms: 0,
                    connections: connections.clone(),
                },
            )])
        };
        Config {
            id: 0,
            router: RouterConfig {
                max_connections: self.max_connections,
                max_outgoing_packet_count: 200,
                // A segment must hold at least one full message.
                max_segment_size: self.max_segment_size.max(self.max_payload_size + 1024),
                max_segment_count: self.max_segment_count.max(1),
                ..RouterConfig::default()
            },
            v4: Some(server("mqtt-3.1.1", self.listen)),
            v5: self.listen_v5.map(|addr| server("mqtt-5", addr)),
            ..Config::default()
        }
    }
}

/// A running embedded broker. Dropping it does not stop the broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    listen: SocketAddr,
    listen_v5: Option<SocketAddr>,
    thread: JoinHandle<()>,
    /// Closed when the broker thread ends (returns or panics): its sender
    /// lives in the thread and is dropped with it.
    ended: tokio::sync::watch::Receiver<()>,
    /// Ends the broker thread on request (tests only).
    #[cfg(feature = "fault-injection")]
    fault: fault::Trigger,
}

impl EmbeddedBroker {
    /// The MQTT 3.1.1 listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The MQTT 5 listen address, if one was configured.
    pub fn listen_v5_addr(&self) -> Option<SocketAddr> {
        self.listen_v5
    }

    /// `tcp://host:port` for an MQTT client to reach the 3.1.1 listener
    /// (an unspecified listen address becomes loopback).
    pub fn client_url(&self) -> String {
        let addr = connectable(self.listen);
        match addr.ip() {
            IpAddr::V6(ip) => format!("tcp://[{ip}]:{}", addr.port()),
            IpAddr::V4(ip) => format!("tcp://{ip}:{}", addr.port()),
        }
    }

    /// False once the broker's listeners have all stopped.
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Resolves once the broker thread has ended, without polling.
    pub async fn ended(&self) {
        let mut ended = self.ended.clone();
        // Never sent to: `changed` returns (an error) when the sender is
        // dropped, i.e. when the thread ends.
        let _ = ended.changed().await;
    }

    /// Ends the broker thread on request (cargo feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub fn fault_trigger(&self) -> fault::Trigger {
        self.fault.clone()
    }
}

/// Starts the broker with MQTT 3.1.1 on `listen` and default limits; returns
/// once it answers MQTT connections (blocks up to [`START_TIMEOUT`]).
pub fn start(listen: SocketAddr) -> anyhow::Result<EmbeddedBroker> {
    Ok(start_with(BrokerOptions::new(listen))?)
}

/// [`start`] for async callers: runs the blocking start-up off the runtime.
pub async fn start_async(options: BrokerOptions) -> anyhow::Result<EmbeddedBroker> {
    Ok(tokio::task::spawn_blocking(move || start_with(options)).await??)
}

/// Starts the broker with `options`; returns once every listener answers an
/// MQTT CONNECT, or an error (address taken, broker stopped, not ready in time).
pub fn start_with(options: BrokerOptions) -> Result<EmbeddedBroker, BrokerError> {
    let listeners: Vec<(SocketAddr, u8)> = std::iter::once((options.listen, 4))
        .chain(options.listen_v5.map(|a| (a, 5)))
        .collect();
    for &(addr, _) in &listeners {
        if addr.port() == 0 {
            return Err(BrokerError::PortZero(addr));
        }
    }
    if options.listen_v5 == Some(options.listen) {
        return Err(BrokerError::SameAddress(options.listen));
    }
    // rumqttd binds inside its own threads and only logs a bind failure, so
    // find out here, with a clear error, whether the addresses are free.
    for &(addr, _) in &listeners {
        TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    }

    let config = options.rumqttd_config();
    let (done_tx, done_rx) = mpsc::channel::<String>();
    let (alive, ended) = tokio::sync::watch::channel(());
    #[cfg(feature = "fault-injection")]
    let (fault, fault_events) = fault::channel();
    #[cfg(feature = "fault-injection")]
    let trigger = fault.clone();
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let _alive = alive;
            let run = move || {
                let mut broker = Broker::new(config);
                let reason = match broker.start() {
                    Ok(()) => "its listener stopped (see the log for the reason)".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::error!(%reason, "embedded MQTT broker stopped");
                // The receiver is gone once start-up is over; nothing to tell then.
                let _ = done_tx.send(reason);
            };
            #[cfg(feature = "fault-injection")]
            fault::run(run, &trigger, fault_events);
            #[cfg(not(feature = "fault-injection"))]
            run();
        })
        .map_err(BrokerError::Thread)?;

    let deadline = Instant::now() + START_TIMEOUT;
    let mut attempt: u32 = 0;
    for &(addr, version) in &listeners {
        let target = connectable(addr);
        loop {
            match done_rx.try_recv() {
                Ok(reason) => {
                    return Err(BrokerError::Stopped {
                        addr: options.listen,
                        reason,
                    })
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(BrokerError::Stopped {
                        addr: options.listen,
                        reason: "the broker thread panicked".into(),
                    })
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            attempt += 1;
            // rumqttd 0.20 shares client ids across listeners and can wedge a
            // listener when an id is reused while its previous connection is
            // still being torn down (rumqtt#1062), so never reuse one.
            let client_id = format!("{PROBE_CLIENT_ID}-{}-{attempt}", std::process::id());
            match mqtt_handshake(
                target,
                version,
                &client_id,
                left.min(Duration::from_secs(1)),
            ) {
                Ok(()) => break,
                Err(e) if left.is_zero() => {
                    return Err(BrokerError::NotReady {
                        addr,
                        timeout: START_TIMEOUT,
                        last: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    tracing::info!(listen = %options.listen, listen_v5 = ?options.listen_v5, "embedded MQTT broker ready");
    Ok(EmbeddedBroker {
        listen: options.listen,
        listen_v5: options.listen_v5,
        thread,
        ended,
        #[cfg(feature = "fault-injection")]
        fault,
    })
}

/// The address a local client connects to for a listener on `addr`.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// One MQTT CONNECT / CONNACK exchange with protocol level `version`
/// (4 = 3.1.1, 5 = MQTT 5); Ok when the broker accepted it. The connection
/// is then closed without DISCONNECT: in rumqttd 0.20 a DISCONNECT makes the
/// router drop the connection id twice, which can kill a newer connection
/// that reused the id.
fn mqtt_handshake(
    addr: SocketAddr,
    version: u8,
    client_id: &str,
    timeout: Duration,
) -> std::io::Result<()> {
    let timeout = timeout.max(Duration::from_millis(50));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&connect_packet(version, client_id))?;
    // CONNACK: 0x20, remaining length (< 128 here), flags, return code, [v5 properties].
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let mut rest = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut rest)?;
    if head[0] != 0x20 || rest.len() < 2 || rest[1] != 0 {
        return Err(std::io::Error::other(format!(
            "unexpected CONNACK {head:02x?} {rest:02x?}"
        )));
    }
    // Close gracefully (FIN, then wait for the broker's close) so that the
    // broker logs a plain disconnect rather than a connection reset.
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    Ok(())
}

/// A CONNECT packet with a clean session, 10 s keep-alive and `client_id`
/// (shorter than 100 bytes).
fn connect_packet(version: u8, client_id: &str) -> Vec<u8> {
    let id = &client_id.as_bytes()[..client_id.len().min(100)];
    let mut body = vec![
        0x00, 0x04, b'M', b'Q', b'T', b'T', version, 0x02, 0x00, 0x0A,
    ];
    if version == 5 {
        body.push(0x00); // no properties
    }
    // The id is a short constant, far below u16::MAX.
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    // Remaining length < 128: a single length byte.
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_well_formed() {
        let p = connect_packet(4, PROBE_CLIENT_ID);
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(&p[2..9], &[0, 4, b'M', b'Q', b'T', b'T', 4]);
        let p5 = connect_packet(5, PROBE_CLIENT_ID);
        assert_eq!(p5[1] as usize, p5.len() - 2);
        assert_eq!(p5.len(), p.len() + 1);
    }

    #[test]
    fn unspecified_addresses_connect_via_loopback() {
        let a: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connectable(a), "127.0.0.1:1883".parse().unwrap());
        let b: SocketAddr = "[::]:1883".parse().unwrap();
        assert_eq!(connectable(b), "[::1]:1883".parse().unwrap());
    }

    #[test]
    fn port_zero_and_shared_address_are_rejected() {
        let zero = start_with(BrokerOptions::new("127.0.0.1:0".parse().unwrap()));
        assert!(matches!(zero, Err(BrokerError::PortZero(_))));
        let addr: SocketAddr = "127.0.0.1:18830".parse().unwrap();
        let mut same = BrokerOptions::new(addr);
        same.listen_v5 = Some(addr);
        assert!(matches!(start_with(same), Err(BrokerError::SameAddress(_))));
    }
}
