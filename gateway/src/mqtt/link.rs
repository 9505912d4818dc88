//! The wire side of a session: one rumqttc client (MQTT 3.1.1 or 5) whose
//! event loop runs in its own task and reports a protocol-neutral stream of
//! [`NetEvent`]s. Reconnects happen only when the session grants a permit,
//! which names the server of the session's list to try, so the session owns
//! backoff, server selection and message replay.
//!
//! For `tcp`, `ssl`/`tls`/`tcps` and `unix` servers the connection to the
//! broker is made here (see [`transport`]) and rumqttc talks to it through a
//! private Unix socket: that is where MQTT 3.1's CONNECT is rewritten and
//! where `writeTimeout` and `pingTimeout` are enforced. `ws`/`wss` use
//! rumqttc's own WebSocket transport.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::transport::{self, Bridge, CutLimits, TransportError};
use super::{Inbound, OutMsg};
use crate::config::resolved::{Secret, ServerAddress, SessionSettings};

/// Incoming packets larger than this are refused by the client (the
/// bridge cuts PUBLISH packets above it; see [`CutLimits`]).
const MAX_INCOMING_PACKET: usize = 1024 * 1024;
/// Outgoing packets larger than this are refused by the client.
const MAX_OUTGOING_PACKET: usize = 4 * 1024 * 1024;
/// Most publishes the session keeps in flight on the connection.
pub(super) const WINDOW: usize = 64;
/// rumqttc's request channel: the window plus room for (un)subscribes,
/// birth/retained replays and the final disconnect.
const REQUEST_CHANNEL: usize = WINDOW * 4 + 64;

/// Where the bridge cuts what the broker sends: above the client's packet
/// limit, keeping one byte more than a command may have, so that a cut
/// command is still refused as too large.
const CUT_LIMITS: CutLimits = CutLimits {
    max_packet: MAX_INCOMING_PACKET,
    keep_payload: crate::command::MAX_SET_PAYLOAD + 1,
};

/// Why a connection attempt did not get as far as rumqttc's CONNECT.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// The server's transport could not be set up.
    #[error("{server}: {source}")]
    Setup {
        /// The server, as a URL.
        server: String,
        /// Why.
        source: TransportError,
    },
    /// The bridge could not reach the server.
    #[error(transparent)]
    Connect(#[from] transport::ConnectError),
}

/// A request the client did not take: its request channel is full, or its
/// event loop has ended (rumqttc's error carries only the request back).
#[derive(Debug, thiserror::Error)]
#[error("the MQTT client did not take the {0} request (its queue is full or it stopped)")]
pub(super) struct LinkError(&'static str);

/// What the connection reports.
#[derive(Debug)]
pub(super) enum NetEvent {
    /// CONNACK accepted.
    Connected {
        /// The broker resumed a stored session.
        session_present: bool,
        /// MQTT 5: the largest packet the broker accepts (CONNACK).
        max_packet_size: Option<u32>,
    },
    /// A message arrived on a subscribed topic.
    Message(Inbound),
    /// A publish was written to the socket with this packet id (0 = QoS 0).
    Written(u16),
    /// The broker confirmed this packet id (PUBACK / PUBCOMP).
    Acked(u16),
    /// The DISCONNECT was written (clean stop).
    Disconnected,
    /// The connection failed or was lost; waits for a permit to reconnect.
    Down(String),
    /// The broker refused something with a reason code (CONNACK, SUBACK,
    /// PUBACK/PUBREC with a failure code).
    Refused(ReasonCode),
}

/// A failure reason code the broker sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReasonCode {
    /// `connack`, `suback`, `puback` or `pubrec`.
    pub packet: &'static str,
    /// The reason, e.g. `NotAuthorized` or `BadUserNamePassword`.
    pub code: String,
}

/// The request side of the client, per protocol version.
#[derive(Clone)]
pub(super) enum LinkClient {
    /// MQTT 3.1.1
    V4(rumqttc::AsyncClient),
    /// MQTT 5
    V5(rumqttc::v5::AsyncClient),
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl LinkClient {
    /// Queues a publish without waiting.
    pub(super) fn try_publish(&self, msg: &OutMsg) -> Result<(), LinkError> {
        match self {
            LinkClient::V4(c) => c
                .try_publish(&*msg.topic, qos4(msg.qos), msg.retain, msg.payload.clone())
                .map_err(|_| LinkError("publish")),
            LinkClient::V5(c) => {
                let mut props = rumqttc::v5::mqttbytes::v5::PublishProperties::default();
                if let Some(corr) = &msg.correlation {
                    props.correlation_data = Some(corr.clone());
                }
                if let Some(p) = &msg.props {
                    props.content_type = p.content_type.clone();
                    props.user_properties = p.user_properties.clone();
                    props.message_expiry_interval = p.message_expiry;
                }
                c.try_publish_with_properties(
                    &*msg.topic,
                    qos5(msg.qos),
                    msg.retain,
                    msg.payload.clone(),
                    props,
                )
                .map_err(|_| LinkError("publish"))
            }
        }
    }

    /// Queues a subscription without waiting.
    pub(super) fn try_subscribe(
        &self,
        topics: &[Arc<str>],
        qos: u8,
        keeps_retained: &std::collections::HashSet<Arc<str>>,
    ) -> Result<(), LinkError> {
        if topics.is_empty() {
            return Ok(());
        }
        match self {
            LinkClient::V4(c) => c
                .try_subscribe_many(
                    topics
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.to_string(), qos4(qos))),
                )
                .map_err(|_| LinkError("subscribe")),
            LinkClient::V5(c) => c
                .try_subscribe_many(topics.iter().map(|t| {
                    let mut f = rumqttc::v5::mqttbytes::v5::Filter::new(t.to_string(), qos5(qos));
                    // Retain handling 2: a retained command is a replay,
                    // never a command to execute (CONTRACT §9). Topics that
                    // carry a kept state (a host's STATE) get it.
                    if !keeps_retained.contains(t) {
                        f.retain_forward_rule =
                            rumqttc::v5::mqttbytes::v5::RetainForwardRule::Never;
                    }
                    f
                }))
                .map_err(|_| LinkError("subscribe")),
        }
    }

    /// Queues an unsubscription without waiting.
    pub(super) fn try_unsubscribe(&self, topic: &str) -> Result<(), LinkError> {
        match self {
            LinkClient::V4(c) => c
                .try_unsubscribe(topic)
                .map_err(|_| LinkError("unsubscribe")),
            LinkClient::V5(c) => c
                .try_unsubscribe(topic)
                .map_err(|_| LinkError("unsubscribe")),
        }
    }

    /// Queues a DISCONNECT without waiting.
    pub(super) fn try_disconnect(&self) -> Result<(), LinkError> {
        match self {
            LinkClient::V4(c) => c.try_disconnect().map_err(|_| LinkError("disconnect")),
            LinkClient::V5(c) => c.try_disconnect().map_err(|_| LinkError("disconnect")),
        }
    }
}

/// rumqttc takes whole seconds; zero means "never", which we map to a year.
fn timeout_secs(d: Duration) -> u64 {
    if d.is_zero() {
        365 * 24 * 3600
    } else {
        d.as_secs().max(1)
    }
}

/// Keep-alive below one second (but not zero) is not allowed by the client.
fn keep_alive(d: Duration) -> Duration {
    if d.is_zero() {
        d
    } else {
        d.max(Duration::from_secs(1))
    }
}

/// A running connection: its client, event stream and reconnect permits.
pub(super) struct Link {
    /// Sends requests.
    pub client: LinkClient,
    /// Events from the connection task.
    pub events: mpsc::Receiver<NetEvent>,
    /// One permit = one connection attempt (the first, or a reconnect after
    /// a [`NetEvent::Down`]) to the server at this index of the session's
    /// list (see [`SessionSettings::server_at`]).
    pub permits: mpsc::Sender<usize>,
    /// The connection task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Where rumqttc connects for one server: the server's own URL
/// (WebSocket), or the bridge's socket.
#[derive(Clone)]
struct Endpoint {
    addr: String,
    port: u16,
    transport: rumqttc::Transport,
    bridged: bool,
}

impl Endpoint {
    /// The endpoint for the server at `index`.
    fn for_server(
        settings: &SessionSettings,
        index: usize,
        bridge: Option<&Bridge>,
    ) -> Result<Self, TransportError> {
        match settings.server_at(index) {
            ServerAddress::WebSocket { url, secure, .. } => {
                let port = url
                    .rsplit_once(':')
                    .and_then(|(_, r)| r.split('/').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(if *secure { 443 } else { 80 });
                let transport = if *secure {
                    rumqttc::Transport::Wss(rumqttc::TlsConfiguration::Rustls(
                        transport::tls_client_config(&settings.tls)?,
                    ))
                } else {
                    rumqttc::Transport::Ws
                };
                Ok(Endpoint {
                    addr: url.clone(),
                    port,
                    transport,
                    bridged: false,
                })
            }
            _ => match bridge {
                Some(b) => Ok(Endpoint {
                    addr: b.socket_path().to_string_lossy().into_owned(),
                    port: 0,
                    transport: rumqttc::Transport::Unix,
                    bridged: true,
                }),
                // Bridge::new failed for this session; `open` logged why.
                None => Err(TransportError::Tls(
                    "the connection to this server could not be set up".into(),
                )),
            },
        }
    }

    /// Whether rumqttc's options for `self` and `other` are the same.
    fn same_as(&self, other: &Endpoint) -> bool {
        self.addr == other.addr && self.port == other.port && self.bridged == other.bridged
    }

    /// rumqttc's one timeout for its connect and every flush. Bridged,
    /// flushes go to a local socket and `writeTimeout` is enforced by the
    /// bridge; natively (WebSocket) the larger of the two bounds both.
    fn net_timeout(&self, settings: &SessionSettings) -> u64 {
        if self.bridged {
            timeout_secs(settings.connect_timeout)
        } else {
            timeout_secs(settings.connect_timeout).max(timeout_secs(settings.write_timeout))
        }
    }
}

/// The WebSocket handshake's extra headers.
fn header_modifier(
    headers: Vec<(String, Secret)>,
) -> impl Fn(http::Request<()>) -> std::future::Ready<http::Request<()>> + Send + Sync + 'static {
    let headers = Arc::new(headers);
    move |mut req: http::Request<()>| {
        for (k, v) in headers.iter() {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k.as_bytes()),
                http::header::HeaderValue::from_str(v.expose()),
            ) {
                req.headers_mut().append(k, v);
            }
        }
        std::future::ready(req)
    }
}

/// MQTT 5 client options for `settings`, connecting to `ep`.
fn options_v5(settings: &SessionSettings, ep: &Endpoint) -> rumqttc::v5::MqttOptions {
    let mut opts =
        rumqttc::v5::MqttOptions::new(settings.client_id.clone(), ep.addr.clone(), ep.port);
    opts.set_transport(ep.transport.clone())
        .set_keep_alive(keep_alive(settings.keep_alive))
        .set_clean_start(settings.clean_session)
        .set_connection_timeout(ep.net_timeout(settings))
        .set_max_packet_size(Some(MAX_INCOMING_PACKET as u32))
        .set_outgoing_inflight_upper_limit((WINDOW * 2) as u16)
        .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            settings.will.topic.clone(),
            settings.will.payload.clone(),
            qos5(settings.will.qos),
            settings.will.retained,
            None,
        ));
    if !settings.http_headers.is_empty() {
        opts.set_request_modifier(header_modifier(settings.http_headers.clone()));
    }
    if !settings.clean_session {
        // Keep the session for as long as the broker allows.
        opts.set_session_expiry_interval(Some(u32::MAX));
    }
    if let Some(user) = &settings.username {
        opts.set_credentials(
            user.clone(),
            settings
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        );
    }
    opts
}

/// MQTT 3.1.1 client options for `settings`, connecting to `ep`. MQTT 3.1
/// is MQTT 3.1.1 on the wire except for CONNECT/CONNACK; the bridge
/// rewrites CONNECT (see [`transport`]).
fn options_v4(
    settings: &SessionSettings,
    ep: &Endpoint,
) -> (rumqttc::MqttOptions, rumqttc::NetworkOptions) {
    let mut opts = rumqttc::MqttOptions::new(settings.client_id.clone(), ep.addr.clone(), ep.port);
    opts.set_transport(ep.transport.clone())
        .set_keep_alive(keep_alive(settings.keep_alive))
        .set_clean_session(settings.clean_session)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_inflight((WINDOW * 2) as u16)
        .set_last_will(rumqttc::LastWill::new(
            settings.will.topic.clone(),
            settings.will.payload.clone(),
            qos4(settings.will.qos),
            settings.will.retained,
        ));
    if !settings.http_headers.is_empty() {
        opts.set_request_modifier(header_modifier(settings.http_headers.clone()));
    }
    if let Some(user) = &settings.username {
        opts.set_credentials(
            user.clone(),
            settings
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default(),
        );
    }
    let mut net = rumqttc::NetworkOptions::new();
    net.set_connection_timeout(ep.net_timeout(settings));
    (opts, net)
}

/// Creates the client for `settings` and starts its connection task; the
/// first connection attempt waits for the first permit.
pub(super) fn open(settings: &SessionSettings, will: Option<super::WillHook>) -> Link {
    let (events_tx, events) = mpsc::channel(1024);
    let (permits, permits_rx) = mpsc::channel(1);
    let bridge = if settings
        .servers()
        .all(|s| matches!(s, ServerAddress::WebSocket { .. }))
    {
        None
    } else {
        match Bridge::new(settings, CUT_LIMITS) {
            Ok(b) => Some(Box::new(b)),
            Err(e) => {
                // Cannot happen for a validated config; every attempt to a
                // bridged server reports it.
                tracing::error!(session = %settings.client_id, "cannot set up the transport: {e}");
                None
            }
        }
    };
    // The options of the first server; `drive` sets those of the server
    // of each attempt before it connects.
    let first = Endpoint::for_server(settings, 0, bridge.as_deref()).unwrap_or(Endpoint {
        addr: String::new(),
        port: 0,
        transport: rumqttc::Transport::Unix,
        bridged: true,
    });
    let (client, task) = if settings.protocol_version == 5 {
        let (client, eventloop) =
            rumqttc::v5::AsyncClient::new(options_v5(settings, &first), REQUEST_CHANNEL);
        let task = tokio::spawn(drive(
            eventloop,
            events_tx,
            permits_rx,
            bridge,
            settings.clone(),
            will.clone(),
        ));
        (LinkClient::V5(client), task)
    } else {
        let (opts, net) = options_v4(settings, &first);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, REQUEST_CHANNEL);
        eventloop.set_network_options(net);
        let task = tokio::spawn(drive(
            eventloop,
            events_tx,
            permits_rx,
            bridge,
            settings.clone(),
            will,
        ));
        (LinkClient::V4(client), task)
    };
    Link {
        client,
        events,
        permits,
        task,
    }
}

/// Words for a failed connection.
fn describe_v4(e: &rumqttc::ConnectionError, settings: &SessionSettings) -> String {
    use rumqttc::ConnectionError as E;
    match e {
        E::NetworkTimeout => format!(
            "no CONNACK within connectTimeout ({})",
            humantime::format_duration(settings.connect_timeout)
        ),
        E::ConnectionRefused(code) => format!("the broker refused the connection: {code:?}"),
        E::MqttState(rumqttc::StateError::AwaitPingResp) => {
            "no PINGRESP before the next keep-alive".to_string()
        }
        other => other.to_string(),
    }
}

/// Words for a failed MQTT 5 connection.
fn describe_v5(e: &rumqttc::v5::ConnectionError, settings: &SessionSettings) -> String {
    use rumqttc::v5::ConnectionError as E;
    match e {
        E::Timeout(_) => format!(
            "timed out: no CONNACK within connectTimeout ({}) or a write stalled",
            humantime::format_duration(settings.connect_timeout)
        ),
        E::ConnectionRefused(code) => format!("the broker refused the connection: {code:?}"),
        E::MqttState(rumqttc::v5::StateError::AwaitPingResp) => {
            "no PINGRESP before the next keep-alive".to_string()
        }
        other => other.to_string(),
    }
}

/// A connection failure as reported by either client version.
struct Failure {
    /// The CONNACK refusal code, when the broker refused the connection.
    refused: Option<String>,
    /// What went wrong, for the log and `/healthz`.
    description: String,
}

/// One rumqttc event loop (3.1.1 or 5), translated to [`NetEvent`]s.
trait EventSource: Send {
    /// Polls once and appends the translated events to `out`.
    fn poll_into(
        &mut self,
        out: &mut Vec<NetEvent>,
        settings: &SessionSettings,
    ) -> impl std::future::Future<Output = Result<(), Failure>> + Send;
    /// Drops rumqttc's own copies of unconfirmed and queued requests: the
    /// session replays from its outbox. With `drain_channel` also the
    /// requests queued in the channel since the failure.
    fn forget_pending(&mut self, drain_channel: bool);
    /// Sets the will payload of the next CONNECT.
    fn set_will_payload(&mut self, payload: Vec<u8>);
    /// Connects to `ep` from the next CONNECT on (another server).
    fn set_endpoint(&mut self, settings: &SessionSettings, ep: &Endpoint);
}

impl EventSource for rumqttc::EventLoop {
    async fn poll_into(
        &mut self,
        out: &mut Vec<NetEvent>,
        settings: &SessionSettings,
    ) -> Result<(), Failure> {
        use rumqttc::mqttbytes::v4::SubscribeReasonCode;
        use rumqttc::{Event, Outgoing, Packet};
        match self.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => out.push(NetEvent::Connected {
                session_present: ack.session_present,
                max_packet_size: None,
            }),
            Ok(Event::Incoming(Packet::Publish(p))) => out.push(NetEvent::Message(Inbound {
                topic: p.topic,
                payload: p.payload,
                response_topic: None,
                correlation: None,
                retain: p.retain,
            })),
            Ok(Event::Incoming(Packet::PubAck(a))) => out.push(NetEvent::Acked(a.pkid)),
            Ok(Event::Incoming(Packet::PubComp(a))) => out.push(NetEvent::Acked(a.pkid)),
            Ok(Event::Incoming(Packet::SubAck(a))) => out.extend(
                a.return_codes
                    .iter()
                    .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                    .map(|_| {
                        NetEvent::Refused(ReasonCode {
                            packet: "suback",
                            code: "Failure".into(),
                        })
                    }),
            ),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => out.push(NetEvent::Written(pkid)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => out.push(NetEvent::Disconnected),
            Ok(_) => {}
            Err(e) => {
                return Err(Failure {
                    refused: match &e {
                        rumqttc::ConnectionError::ConnectionRefused(code) => {
                            Some(format!("{code:?}"))
                        }
                        _ => None,
                    },
                    description: describe_v4(&e, settings),
                })
            }
        }
        Ok(())
    }

    fn forget_pending(&mut self, drain_channel: bool) {
        if drain_channel {
            self.clean();
        }
        self.pending.clear();
    }

    fn set_will_payload(&mut self, payload: Vec<u8>) {
        if let Some(mut w) = self.mqtt_options.last_will() {
            w.message = payload.into();
            self.mqtt_options.set_last_will(w);
        }
    }

    fn set_endpoint(&mut self, settings: &SessionSettings, ep: &Endpoint) {
        let (opts, net) = options_v4(settings, ep);
        self.mqtt_options = opts;
        self.network_options = net;
    }
}

impl EventSource for rumqttc::v5::EventLoop {
    async fn poll_into(
        &mut self,
        out: &mut Vec<NetEvent>,
        settings: &SessionSettings,
    ) -> Result<(), Failure> {
        use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, SubscribeReasonCode};
        use rumqttc::v5::Event;
        use rumqttc::Outgoing;
        match self.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => out.push(NetEvent::Connected {
                session_present: ack.session_present,
                max_packet_size: ack.properties.as_ref().and_then(|p| p.max_packet_size),
            }),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let (response_topic, correlation) = match p.properties {
                    Some(props) => (props.response_topic, props.correlation_data),
                    None => (None, None),
                };
                out.push(NetEvent::Message(Inbound {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    response_topic,
                    correlation,
                    retain: p.retain,
                }));
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                if !matches!(
                    a.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) {
                    out.push(NetEvent::Refused(ReasonCode {
                        packet: "puback",
                        code: format!("{:?}", a.reason),
                    }));
                }
                // A refusal is final too: the broker will not take it on a retry.
                out.push(NetEvent::Acked(a.pkid));
            }
            Ok(Event::Incoming(Packet::PubRec(a)))
                if !matches!(
                    a.reason,
                    PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                ) =>
            {
                out.push(NetEvent::Refused(ReasonCode {
                    packet: "pubrec",
                    code: format!("{:?}", a.reason),
                }));
                out.push(NetEvent::Acked(a.pkid));
            }
            Ok(Event::Incoming(Packet::PubComp(a))) => out.push(NetEvent::Acked(a.pkid)),
            Ok(Event::Incoming(Packet::SubAck(a))) => out.extend(
                a.return_codes
                    .iter()
                    .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    .map(|c| {
                        NetEvent::Refused(ReasonCode {
                            packet: "suback",
                            code: format!("{c:?}"),
                        })
                    }),
            ),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => out.push(NetEvent::Written(pkid)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => out.push(NetEvent::Disconnected),
            Ok(_) => {}
            Err(e) => {
                return Err(Failure {
                    refused: match &e {
                        rumqttc::v5::ConnectionError::ConnectionRefused(code) => {
                            Some(format!("{code:?}"))
                        }
                        _ => None,
                    },
                    description: describe_v5(&e, settings),
                })
            }
        }
        Ok(())
    }

    fn forget_pending(&mut self, drain_channel: bool) {
        if drain_channel {
            self.clean();
        }
        self.pending.clear();
    }

    fn set_will_payload(&mut self, payload: Vec<u8>) {
        if let Some(mut w) = self.options.last_will() {
            w.message = payload.into();
            self.options.set_last_will(w);
        }
    }

    fn set_endpoint(&mut self, settings: &SessionSettings, ep: &Endpoint) {
        self.options = options_v5(settings, ep);
    }
}

/// Drives an event loop of either version: for each permit, points the
/// client at the permit's server (the bridge's socket, or a WebSocket URL),
/// has the bridge dial it, polls and forwards events, and after a failure
/// waits for the session's next permit. One event buffer is reused for
/// every poll.
async fn drive<L: EventSource>(
    mut el: L,
    tx: mpsc::Sender<NetEvent>,
    mut permits: mpsc::Receiver<usize>,
    mut bridge: Option<Box<Bridge>>,
    settings: SessionSettings,
    will: Option<super::WillHook>,
) {
    let Some(mut index) = permits.recv().await else {
        return;
    };
    // The endpoint rumqttc's options point at (`None`: not set yet).
    let mut current: Option<Endpoint> = None;
    let mut evs: Vec<NetEvent> = Vec::with_capacity(4);
    loop {
        if let Err(e) = prepare(&mut el, &mut bridge, &settings, index, &mut current).await {
            if tx.send(NetEvent::Down(e.to_string())).await.is_err() {
                return;
            }
            match permits.recv().await {
                Some(next) => index = next,
                None => return,
            }
            continue;
        }
        // A dialect's will (Sparkplug's NDEATH) changes with every CONNECT.
        if let Some(hook) = &will {
            el.set_will_payload(hook.payload(true));
        }
        loop {
            evs.clear();
            let failed = match el.poll_into(&mut evs, &settings).await {
                Ok(()) => false,
                Err(failure) => {
                    // The session replays from its own outbox; drop rumqttc's copies.
                    el.forget_pending(false);
                    if let Some(code) = failure.refused {
                        evs.push(NetEvent::Refused(ReasonCode {
                            packet: "connack",
                            code,
                        }));
                    }
                    let reason = bridge
                        .as_ref()
                        .and_then(|b| b.take_error())
                        .map_or(failure.description, |e| e.to_string());
                    evs.push(NetEvent::Down(reason));
                    true
                }
            };
            for ev in evs.drain(..) {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            if failed {
                match permits.recv().await {
                    Some(next) => index = next,
                    None => return,
                }
                // Requests queued after the failure are replayed by the session too.
                el.forget_pending(true);
                break;
            }
        }
    }
}

/// Before a connection attempt to the server at `index`: points rumqttc at
/// it, warns about `insecureSkipVerify`, and when bridged resolves and
/// dials the server.
async fn prepare<L: EventSource>(
    el: &mut L,
    bridge: &mut Option<Box<Bridge>>,
    settings: &SessionSettings,
    index: usize,
    current: &mut Option<Endpoint>,
) -> Result<(), AttemptError> {
    let server = settings.server_at(index);
    let ep = Endpoint::for_server(settings, index, bridge.as_deref()).map_err(|source| {
        AttemptError::Setup {
            server: server.to_string(),
            source,
        }
    })?;
    if !current.as_ref().is_some_and(|c| c.same_as(&ep)) {
        el.set_endpoint(settings, &ep);
        *current = Some(ep.clone());
    }
    if server.is_tls() && settings.tls.insecure_skip_verify {
        tracing::warn!(
            session = %settings.client_id,
            server = %server,
            "INSECURE: tlsConfig.insecureSkipVerify is on: the broker's certificate is NOT verified; anyone on the path can impersonate the broker"
        );
    }
    match bridge {
        Some(b) if ep.bridged => Ok(b.connect(index).await?),
        _ => Ok(()),
    }
}
