//! The wire side of a session: one rumqttc client (MQTT 3.1.1 or 5) whose
//! event loop runs in its own task and reports a protocol-neutral stream of
//! [`NetEvent`]s. Reconnects happen only when the session grants a permit,
//! so the session owns backoff and message replay.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Inbound, OutMsg};
use crate::config::resolved::{ServerAddress, SessionSettings};

/// Incoming packets larger than this are refused by the client.
const MAX_INCOMING_PACKET: usize = 1024 * 1024;
/// Outgoing packets larger than this are refused by the client.
const MAX_OUTGOING_PACKET: usize = 4 * 1024 * 1024;
/// Most publishes the session keeps in flight on the connection.
pub const WINDOW: usize = 64;
/// rumqttc's request channel: the window plus room for (un)subscribes,
/// birth/retained replays and the final disconnect.
const REQUEST_CHANNEL: usize = WINDOW * 4 + 64;

/// What the connection reports.
#[derive(Debug)]
pub enum NetEvent {
    /// CONNACK accepted.
    Connected {
        /// The broker resumed a stored session.
        session_present: bool,
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
}

/// The request side of the client, per protocol version.
#[derive(Clone)]
pub enum LinkClient {
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
    pub fn try_publish(&self, msg: &OutMsg) -> Result<(), String> {
        match self {
            LinkClient::V4(c) => c
                .try_publish(&*msg.topic, qos4(msg.qos), msg.retain, msg.payload.clone())
                .map_err(|e| e.to_string()),
            LinkClient::V5(c) => {
                let mut props = rumqttc::v5::mqttbytes::v5::PublishProperties::default();
                if let Some(corr) = &msg.correlation {
                    props.correlation_data = Some(corr.clone());
                }
                c.try_publish_with_properties(
                    &*msg.topic,
                    qos5(msg.qos),
                    msg.retain,
                    msg.payload.clone(),
                    props,
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a subscription without waiting.
    pub fn try_subscribe(&self, topics: &[String], qos: u8) -> Result<(), String> {
        if topics.is_empty() {
            return Ok(());
        }
        match self {
            LinkClient::V4(c) => c
                .try_subscribe_many(
                    topics
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), qos4(qos))),
                )
                .map_err(|e| e.to_string()),
            LinkClient::V5(c) => c
                .try_subscribe_many(
                    topics
                        .iter()
                        .map(|t| rumqttc::v5::mqttbytes::v5::Filter::new(t.clone(), qos5(qos))),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues an unsubscription without waiting.
    pub fn try_unsubscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            LinkClient::V4(c) => c.try_unsubscribe(topic).map_err(|e| e.to_string()),
            LinkClient::V5(c) => c.try_unsubscribe(topic).map_err(|e| e.to_string()),
        }
    }

    /// Queues a DISCONNECT without waiting.
    pub fn try_disconnect(&self) -> Result<(), String> {
        match self {
            LinkClient::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            LinkClient::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
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
pub struct Link {
    /// Sends requests.
    pub client: LinkClient,
    /// Events from the connection task.
    pub events: mpsc::Receiver<NetEvent>,
    /// One permit = one reconnect attempt after a [`NetEvent::Down`].
    pub permits: mpsc::Sender<()>,
    /// The connection task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Creates the client for `settings` and starts its connection task; the
/// first connection attempt waits for the first permit.
pub fn open(settings: &SessionSettings) -> Link {
    let ServerAddress::Tcp { host, port } = &settings.server;
    let (events_tx, events) = mpsc::channel(1024);
    let (permits, permits_rx) = mpsc::channel(1);
    let will_qos = settings.will.qos;
    let (client, task) = if settings.protocol_version == 5 {
        let mut opts =
            rumqttc::v5::MqttOptions::new(settings.client_id.clone(), host.clone(), *port);
        opts.set_keep_alive(keep_alive(settings.keep_alive))
            .set_clean_start(settings.clean_session)
            .set_connection_timeout(timeout_secs(settings.connect_timeout))
            .set_max_packet_size(Some(MAX_INCOMING_PACKET as u32))
            .set_outgoing_inflight_upper_limit((WINDOW * 2) as u16)
            .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                settings.will.topic.clone(),
                settings.will.payload.clone(),
                qos5(will_qos),
                settings.will.retained,
                None,
            ));
        if !settings.clean_session {
            // Keep the session for as long as the broker allows.
            opts.set_session_expiry_interval(Some(u32::MAX));
        }
        if let Some(user) = &settings.username {
            opts.set_credentials(user.clone(), settings.password.clone().unwrap_or_default());
        }
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, REQUEST_CHANNEL);
        let task = tokio::spawn(drive_v5(eventloop, events_tx, permits_rx));
        (LinkClient::V5(client), task)
    } else {
        let mut opts = rumqttc::MqttOptions::new(settings.client_id.clone(), host.clone(), *port);
        opts.set_keep_alive(keep_alive(settings.keep_alive))
            .set_clean_session(settings.clean_session)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
            .set_inflight((WINDOW * 2) as u16)
            .set_last_will(rumqttc::LastWill::new(
                settings.will.topic.clone(),
                settings.will.payload.clone(),
                qos4(will_qos),
                settings.will.retained,
            ));
        if let Some(user) = &settings.username {
            opts.set_credentials(user.clone(), settings.password.clone().unwrap_or_default());
        }
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, REQUEST_CHANNEL);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_connection_timeout(timeout_secs(settings.connect_timeout));
        eventloop.set_network_options(net);
        let task = tokio::spawn(drive_v4(eventloop, events_tx, permits_rx));
        (LinkClient::V4(client), task)
    };
    Link {
        client,
        events,
        permits,
        task,
    }
}

/// Drives an MQTT 3.1.1 event loop, translating its events.
async fn drive_v4(
    mut el: rumqttc::EventLoop,
    tx: mpsc::Sender<NetEvent>,
    mut permits: mpsc::Receiver<()>,
) {
    use rumqttc::{Event, Outgoing, Packet};
    if permits.recv().await.is_none() {
        return;
    }
    loop {
        let ev = match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Some(NetEvent::Connected {
                session_present: ack.session_present,
            }),
            Ok(Event::Incoming(Packet::Publish(p))) => Some(NetEvent::Message(Inbound {
                topic: p.topic,
                payload: p.payload,
                response_topic: None,
                correlation: None,
            })),
            Ok(Event::Incoming(Packet::PubAck(a))) => Some(NetEvent::Acked(a.pkid)),
            Ok(Event::Incoming(Packet::PubComp(a))) => Some(NetEvent::Acked(a.pkid)),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Some(NetEvent::Written(pkid)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Some(NetEvent::Disconnected),
            Ok(_) => None,
            Err(e) => {
                // The session replays from its own outbox; drop rumqttc's copies.
                el.pending.clear();
                if tx.send(NetEvent::Down(e.to_string())).await.is_err() {
                    return;
                }
                if permits.recv().await.is_none() {
                    return;
                }
                // Requests queued after the failure are replayed by the session too.
                el.clean();
                el.pending.clear();
                None
            }
        };
        if let Some(ev) = ev {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// Drives an MQTT 5 event loop, translating its events.
async fn drive_v5(
    mut el: rumqttc::v5::EventLoop,
    tx: mpsc::Sender<NetEvent>,
    mut permits: mpsc::Receiver<()>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    use rumqttc::Outgoing;
    if permits.recv().await.is_none() {
        return;
    }
    loop {
        let ev = match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Some(NetEvent::Connected {
                session_present: ack.session_present,
            }),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let (response_topic, correlation) = match p.properties {
                    Some(props) => (props.response_topic, props.correlation_data),
                    None => (None, None),
                };
                Some(NetEvent::Message(Inbound {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    response_topic,
                    correlation,
                }))
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => Some(NetEvent::Acked(a.pkid)),
            Ok(Event::Incoming(Packet::PubComp(a))) => Some(NetEvent::Acked(a.pkid)),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Some(NetEvent::Written(pkid)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Some(NetEvent::Disconnected),
            Ok(_) => None,
            Err(e) => {
                el.pending.clear();
                if tx.send(NetEvent::Down(e.to_string())).await.is_err() {
                    return;
                }
                if permits.recv().await.is_none() {
                    return;
                }
                el.clean();
                el.pending.clear();
                None
            }
        };
        if let Some(ev) = ev {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}
