//! One MQTT session task: connects with backoff and jitter (from start-up
//! on), publishes the birth message, restores subscriptions and retained
//! topics after every connect, and feeds the outbox to the connection in
//! order within a bounded in-flight window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fieldgate_drivers::Backoff;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::deadline::sleep_until_opt;

use super::link::{self, LinkClient, NetEvent, WINDOW};
use super::replay::{Plan, RetainedTopics};
use super::store::Store;
use super::{
    ConnEvent, Inbound, OutMsg, Readiness, SessionHandle, SessionHooks, SessionInput, StopMode,
    StopRequest,
};
use crate::config::resolved::{SessionSettings, StoreSettings};
use crate::telemetry::{Health, Metrics};

mod connection;
mod handover;
mod outflow;

/// First reconnect delay; doubles up to `maxReconnectInterval`.
const FIRST_RECONNECT: Duration = Duration::from_secs(1);
/// Subscriptions for commands use at least QoS 1 so commands are not lost
/// between broker and gateway.
const COMMAND_QOS: u8 = 1;
/// How long after start-up a full store may hold the devices back while the
/// first connection attempt lasts (a broker that does not answer must not
/// stall them until `connectTimeout`).
const FIRST_ATTEMPT_GRACE: Duration = Duration::from_secs(5);
/// Command topics per SUBSCRIBE packet.
const SUBSCRIBE_BATCH: usize = 64;
/// SUBSCRIBE packets handed to the client per turn of the session loop (the
/// request channel also carries the publish window).
const SUBSCRIBE_BATCHES_PER_TURN: usize = 4;
/// Retry delay for subscriptions that found the request channel full.
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(50);
/// Commands held for topics no device has claimed yet: a resumed session
/// delivers its queued commands right after CONNACK, possibly before the
/// devices have registered.
const UNROUTED_HELD: usize = 256;
/// How often the session does a message no connection survived before
/// it is dropped as refused (CONTRACT §9).
const MAX_TRIES: u8 = 3;
/// A connection that ends within this time of its CONNACK, with messages
/// handed out within this time unconfirmed, may have been ended by one of
/// them: the next connection sends one message at a time until those are
/// confirmed, so that the one that ends it is known (and tried at most
/// [`MAX_TRIES`] times).
const POISON_WINDOW: Duration = Duration::from_secs(5);
/// How often the store expires old messages and checks the disk floor.
const STORE_TICK: Duration = Duration::from_secs(1);
/// How often the age of the oldest unacknowledged message is checked.
const ACK_CHECK: Duration = Duration::from_secs(1);
/// Fixed header (type byte and up to 4 length bytes) plus the packet id:
/// added to a PUBLISH's topic, properties and payload for its size.
const PUBLISH_OVERHEAD: usize = 5 + 2 + 2;

/// Starts a session task for `settings`; it connects at once.
pub fn spawn(settings: SessionSettings, metrics: Metrics, health: Health) -> SessionHandle {
    start(settings, metrics, health, None, SessionHooks::default())
}

/// [`spawn`] with a dialect's hooks.
pub fn spawn_with(
    settings: SessionSettings,
    metrics: Metrics,
    health: Health,
    hooks: SessionHooks,
) -> SessionHandle {
    start(settings, metrics, health, None, hooks)
}

/// Starts a session that takes messages at once but connects only when its
/// predecessor's undelivered messages arrive on the returned sender (they
/// go in front of its own, in order).
pub fn spawn_successor(
    settings: SessionSettings,
    metrics: Metrics,
    health: Health,
) -> (SessionHandle, oneshot::Sender<Vec<OutMsg>>) {
    spawn_successor_with(settings, metrics, health, SessionHooks::default())
}

/// [`spawn_successor`] with a dialect's hooks.
pub fn spawn_successor_with(
    settings: SessionSettings,
    metrics: Metrics,
    health: Health,
    hooks: SessionHooks,
) -> (SessionHandle, oneshot::Sender<Vec<OutMsg>>) {
    let (tx, rx) = oneshot::channel();
    (start(settings, metrics, health, Some(rx), hooks), tx)
}

fn start(
    settings: SessionSettings,
    metrics: Metrics,
    health: Health,
    predecessor: Option<oneshot::Receiver<Vec<OutMsg>>>,
    hooks: SessionHooks,
) -> SessionHandle {
    let (tx, rx) = mpsc::channel(1024);
    let (stop_tx, stop_rx) = mpsc::channel(1);
    let client_id: Arc<str> = settings.client_id.as_str().into();
    let link = link::open(&settings, hooks.will.clone());
    let mut session = Session::new(settings, link.client.clone(), metrics, health);
    session.hooks = hooks;
    let readiness = Some(session.readiness.subscribe());
    let status = Arc::clone(&session.status);
    tokio::spawn(session.run(link, rx, stop_rx, predecessor));
    SessionHandle {
        client_id,
        tx,
        stop: stop_tx,
        readiness,
        status,
        dialect: Default::default(),
    }
}

/// The session's metric series, resolved once (they are touched for every
/// message written and acknowledged).
struct SessionMetrics {
    connected: prometheus::IntGauge,
    published: prometheus::IntCounter,
    reconnects: prometheus::IntCounter,
    dropped: prometheus::IntCounter,
    dropped_vec: prometheus::IntCounterVec,
    ignored: prometheus::IntCounterVec,
    replayed: prometheus::IntCounter,
    store_messages: prometheus::IntGauge,
    store_bytes: prometheus::IntGauge,
    store_oldest_age: prometheus::Gauge,
    ack_latency: prometheus::Histogram,
}

impl SessionMetrics {
    fn new(metrics: &Metrics, client_id: &str, server: &str) -> Self {
        let id = [client_id];
        Self {
            connected: metrics
                .mqtt_connected
                .with_label_values(&[client_id, server]),
            published: metrics.mqtt_published.with_label_values(&id),
            reconnects: metrics.mqtt_reconnects.with_label_values(&id),
            dropped: metrics
                .mqtt_dropped
                .with_label_values(&[client_id, super::drops::STORE_FULL]),
            dropped_vec: metrics.mqtt_dropped.clone(),
            ignored: metrics.mqtt_commands_ignored.clone(),
            replayed: metrics.mqtt_replayed.with_label_values(&id),
            store_messages: metrics.mqtt_store_messages.with_label_values(&id),
            store_bytes: metrics.mqtt_store_bytes.with_label_values(&id),
            store_oldest_age: metrics.mqtt_store_oldest_age.with_label_values(&id),
            ack_latency: metrics.mqtt_ack_latency.with_label_values(&id),
        }
    }
}

struct Session {
    settings: SessionSettings,
    client: LinkClient,
    metrics: Metrics,
    m: SessionMetrics,
    health: Health,
    outbox: Store,
    /// The store is a file store (the will is never persisted).
    outbox_is_file: bool,
    /// Birth (and the clean-stop will): sent before anything else.
    priority: VecDeque<OutMsg>,
    /// Retained topics and their replay after a connect.
    retained: RetainedTopics,
    /// Alternates replays and stored messages in the window (pacing).
    replay_turn: bool,
    /// A late predecessor's messages waiting for room in the store.
    late: VecDeque<OutMsg>,
    /// When the store's timer runs next (see [`Session::store_tick`]).
    store_tick_at: Option<Instant>,
    routes: HashMap<Arc<str>, super::Inbox>,
    /// Topics the broker's stored session holds subscriptions for
    /// (`cleanSession: false`).
    broker_subs: std::collections::HashSet<Arc<str>>,
    /// Routed command topics not yet handed to the client as SUBSCRIBE:
    /// sent in batches as the request channel has room, so that a thousand
    /// devices starting at once are all subscribed.
    pending_subs: std::collections::BTreeSet<Arc<str>>,
    /// When to try the pending subscriptions again after the request
    /// channel was full.
    subs_retry_at: Option<Instant>,
    /// Kinds of broker refusals already logged at WARN.
    refusals_logged: std::collections::HashSet<(&'static str, String)>,
    /// Messages that arrived before their route existed (bounded).
    unrouted: VecDeque<Inbound>,
    connected: bool,
    ever_connected: bool,
    /// While the first connection attempt lasts (at most
    /// [`FIRST_ATTEMPT_GRACE`] after start; `None` once it ended), a full
    /// store pushes back on the devices as while connected, so that a large
    /// gateway's start-up burst is not dropped in the milliseconds before
    /// CONNACK.
    first_attempt: Option<Instant>,
    backoff: Backoff,
    reconnect_at: Option<Instant>,
    dropped_reported: u64,
    /// MQTT 5: the broker's maximum packet size from the last CONNACK.
    broker_max_packet: Option<u32>,
    /// (device topic, reason) of ignored commands already logged.
    ignored_logged: std::collections::HashSet<(String, &'static str)>,
    /// When to check the oldest unacknowledged message's age next.
    ack_check_at: Option<Instant>,
    /// The oldest unacknowledged message outlived `ackTimeout`: `/healthz`
    /// is degraded until the broker acknowledges again.
    ack_stalled: bool,
    /// When the current connection was accepted.
    connected_at: Option<Instant>,
    /// One message at a time until the outbox has confirmed up to this id
    /// (after a connection that ended at once; see [`POISON_WINDOW`]).
    probing: Option<u64>,
    /// A northbound dialect's hooks.
    hooks: SessionHooks,
    /// Index in the server list of the server being tried or in use.
    server: usize,
    /// Failed attempts (and short-lived connections) since the round of
    /// the server list began: after a full round comes the backoff.
    round_tries: usize,
    /// What the session's handles show of its connection.
    status: Arc<super::SessionStatus>,
    /// Routed topics whose retained messages are delivered (see
    /// [`SessionInput::Route`]); on all others they are ignored.
    keeps_retained: std::collections::HashSet<Arc<str>>,
    /// Connected and backlog, for devices pacing their start.
    readiness: watch::Sender<Readiness>,
}

impl Session {
    fn new(
        settings: SessionSettings,
        client: LinkClient,
        metrics: Metrics,
        health: Health,
    ) -> Self {
        let backoff = Backoff::new(FIRST_RECONNECT, settings.max_reconnect_interval);
        let outbox = Store::new(&settings.store, settings.message_channel_depth);
        health.set_problem(
            &health_key(&settings.client_id),
            format!("MQTT session {} is connecting", settings.client_id),
        );
        let first_server = settings.server.to_string();
        let m = SessionMetrics::new(&metrics, &settings.client_id, &first_server);
        m.connected.set(0);
        let status = Arc::new(super::SessionStatus::new(&first_server));
        Self {
            settings,
            client,
            metrics,
            m,
            health,
            outbox_is_file: outbox.is_file(),
            outbox,
            priority: VecDeque::new(),
            retained: RetainedTopics::default(),
            replay_turn: false,
            late: VecDeque::new(),
            store_tick_at: None,
            routes: HashMap::new(),
            broker_subs: Default::default(),
            pending_subs: Default::default(),
            subs_retry_at: None,
            unrouted: VecDeque::new(),
            refusals_logged: Default::default(),
            connected: false,
            ever_connected: false,
            first_attempt: Some(Instant::now() + FIRST_ATTEMPT_GRACE),
            backoff,
            reconnect_at: None,
            dropped_reported: 0,
            broker_max_packet: None,
            ignored_logged: Default::default(),
            ack_check_at: None,
            ack_stalled: false,
            connected_at: None,
            probing: None,
            hooks: SessionHooks::default(),
            keeps_retained: Default::default(),
            readiness: watch::Sender::new(Readiness::default()),
            server: 0,
            round_tries: 0,
            status,
        }
    }

    fn id(&self) -> &str {
        &self.settings.client_id
    }

    /// True while new messages must wait instead of dropping the oldest:
    /// the store is full and the broker is reachable (or being reached for
    /// the first time). Messages are dropped only while it is unreachable.
    fn pushes_back(&self) -> bool {
        (self.connected
            || self
                .first_attempt
                .is_some_and(|until| Instant::now() < until))
            && self.outbox.is_full()
    }

    async fn run(
        mut self,
        mut link: link::Link,
        mut inputs: mpsc::Receiver<SessionInput>,
        mut stop: mpsc::Receiver<StopRequest>,
        mut predecessor: Option<oneshot::Receiver<Vec<OutMsg>>>,
    ) {
        if predecessor.is_none() {
            self.open_store(Vec::new()).await;
            let _ = link.permits.try_send(self.server);
        }
        let request = loop {
            let reconnect_at = self.reconnect_at;
            let subs_retry_at = self.subs_retry_at;
            let first_attempt_ends = self.first_attempt;
            let ack_check_at = self.ack_check_at;
            let store_tick_at = self.store_tick_at;
            tokio::select! {
                ev = link.events.recv() => match ev {
                    Some(ev) => self.on_net(ev, &link.permits).await,
                    None => break None,
                },
                // While connected a full store pushes back on the devices
                // instead of dropping: messages are dropped only while the
                // broker is unreachable (CONTRACT §4).
                input = inputs.recv(), if !self.pushes_back() => match input {
                    Some(input) => self.on_input(input).await,
                    None => break None,
                },
                request = stop.recv() => break request,
                older = recv_predecessor(&mut predecessor) => {
                    predecessor = None;
                    let older = older.unwrap_or_default();
                    if !older.is_empty() {
                        tracing::info!(session = %self.id(), "taking over {} undelivered message(s)", older.len());
                    }
                    self.open_store(older).await;
                    let _ = link.permits.try_send(self.server);
                }
                _ = sleep_until_opt(reconnect_at) => {
                    self.reconnect_at = None;
                    tracing::debug!(session = %self.id(), "reconnecting");
                    let _ = link.permits.try_send(self.server);
                }
                _ = sleep_until_opt(subs_retry_at) => self.subs_retry_at = None,
                _ = sleep_until_opt(store_tick_at) => self.store_tick(),
                _ = sleep_until_opt(first_attempt_ends) => self.first_attempt = None,
                _ = sleep_until_opt(ack_check_at) => {
                    self.ack_check_at = None;
                    if let Some(reason) = self.ack_overdue() {
                        // rumqttc cannot be told to drop a connection that
                        // is alive: end the link and open a fresh one.
                        link.task.abort();
                        link = link::open(&self.settings, self.hooks.will.clone());
                        self.client = link.client.clone();
                        self.on_net(NetEvent::Down(reason), &link.permits).await;
                    }
                }
            }
            if !self.late.is_empty() {
                self.take_late().await;
            }
            self.flush_subscriptions();
            self.feed();
            self.report_readiness(inputs.len());
        };
        let mode = request.as_ref().map_or(StopMode::Clean, |r| r.mode);
        self.shutdown(&mut link, &mut inputs, mode).await;
        link.task.abort();
        let held = self.outbox.len();
        // A hand-over the supervisor stopped waiting for: the successor is
        // running already. A file store keeps the messages on disk (the
        // successor reads them once this one has closed the directory);
        // a memory store passes them to the successor's input.
        let late =
            mode == StopMode::Handover && request.as_ref().is_some_and(|r| r.done.is_closed());
        let keep_on_disk = late && self.outbox_is_file && self.outbox.is_open_file();
        let store = std::mem::replace(&mut self.outbox, Store::new(&StoreSettings::Memory, 1));
        let mut left = store
            .close(mode == StopMode::Handover && !keep_on_disk)
            .await;
        left.extend(self.late.drain(..));
        if mode == StopMode::Clean && held > 0 {
            tracing::warn!(
                session = %self.id(),
                "stopping with {held} message(s) not delivered{}",
                if self.outbox_is_file { "; they stay in the file store for the next start" } else { " (broker unreachable)" }
            );
        }
        self.m.connected.set(0);
        self.status.set(None);
        self.health.clear(&health_key(&self.settings.client_id));
        if let Some(request) = request {
            if keep_on_disk {
                tracing::warn!(
                    session = %self.id(),
                    "reload hand-over timed out: {held} undelivered message(s) stay in the file store; the new session reads them now"
                );
                if let Some(next) = &request.successor {
                    let _ = next.send(SessionInput::Predecessor(left)).await;
                }
            } else if let Err(left) = request.done.send(left) {
                self.pass_late(left, request.successor).await;
            }
        }
    }

    async fn on_input(&mut self, input: SessionInput) {
        match input {
            SessionInput::Publish(msg) => self.store(msg).await,
            SessionInput::SetRetained(msg) => {
                self.retained.keep(&msg);
                self.store(msg).await;
            }
            SessionInput::SetRetainedRebuilt { msg, rebuild } => {
                self.retained.keep_rebuilt(&msg, rebuild);
                self.store(msg).await;
            }
            SessionInput::ClearRetained { topic, qos } => {
                self.retained.forget(&topic);
                self.store(OutMsg {
                    topic,
                    payload: Bytes::new(),
                    qos,
                    retain: true,
                    correlation: None,
                    props: None,
                })
                .await;
            }
            SessionInput::Route {
                topic,
                to,
                retained,
            } => {
                if retained {
                    self.keeps_retained.insert(topic.clone());
                } else {
                    self.keeps_retained.remove(&topic);
                }
                if !self.broker_subs.contains(&topic) {
                    self.pending_subs.insert(topic.clone());
                }
                self.routes.insert(topic.clone(), to);
                let held = std::mem::take(&mut self.unrouted);
                for msg in held {
                    if *msg.topic == *topic {
                        self.route(msg);
                    } else {
                        self.unrouted.push_back(msg);
                    }
                }
            }
            SessionInput::Reconnect => {
                // What came before is handed to the client first, so the
                // DISCONNECT follows it on the wire.
                self.feed();
                if self.connected {
                    tracing::info!(session = %self.id(), "disconnecting to connect again");
                    if let Err(e) = self.client.try_disconnect() {
                        tracing::warn!(session = %self.id(), "cannot disconnect: {e}");
                    }
                }
            }
            SessionInput::Predecessor(msgs) => {
                if self.outbox.needs_open() {
                    tracing::info!(session = %self.id(), "the old session closed the store directory: opening it");
                    self.open_store(Vec::new()).await;
                }
                if !msgs.is_empty() {
                    tracing::info!(session = %self.id(), "taking over {} undelivered message(s) late", msgs.len());
                    self.late.extend(msgs);
                    self.take_late().await;
                }
            }
            SessionInput::Unroute { topic } => {
                self.pending_subs.remove(&topic);
                self.keeps_retained.remove(&topic);
                if self.routes.remove(&topic).is_some() && self.connected {
                    match self.client.try_unsubscribe(&topic) {
                        Ok(()) => {
                            self.broker_subs.remove(&topic);
                        }
                        Err(e) => {
                            tracing::debug!(session = %self.id(), "unsubscribe {topic}: {e}")
                        }
                    }
                }
            }
        }
    }

    async fn store(&mut self, msg: OutMsg) {
        let dropped = self.outbox.push(msg, !self.connected).await;
        self.count_store_drops();
        if dropped > 0 {
            self.retained
                .note_dropped(self.outbox.take_dropped_retained());
        }
        self.count_dropped(dropped);
        self.update_store_gauges();
    }

    fn count_dropped(&mut self, dropped: u64) {
        if dropped > 0 {
            self.m.dropped.inc_by(dropped);
            let total = self.outbox.dropped();
            if self.dropped_reported == 0 || total >= self.dropped_reported * 2 {
                let bound = match &self.settings.store {
                    StoreSettings::Memory => {
                        format!("{} messages", self.settings.message_channel_depth)
                    }
                    StoreSettings::File { max_bytes, .. } => format!("{max_bytes} bytes"),
                };
                tracing::warn!(
                    session = %self.id(),
                    "store full ({bound}): dropped the oldest, {total} dropped so far"
                );
                self.dropped_reported = total;
            }
        }
    }

    /// Tells pacing devices (see [`SessionHandle::pace_new_devices`]) what
    /// changed: connected, and the messages held with `queued` inputs.
    fn report_readiness(&self, queued: usize) {
        let now = Readiness {
            connected: self.connected,
            backlog: self.outbox.len() + queued,
        };
        self.readiness.send_if_modified(|r| {
            let changed = *r != now;
            *r = now;
            changed
        });
    }

    fn update_store_gauges(&self) {
        self.m.store_messages.set(self.outbox.len() as i64);
        self.m.store_bytes.set(self.outbox.bytes() as i64);
        self.m
            .store_oldest_age
            .set(self.outbox.oldest_age().map_or(0.0, |d| d.as_secs_f64()));
    }

    fn route(&mut self, msg: Inbound) {
        if msg.retain && !self.keeps_retained.contains(msg.topic.as_str()) {
            // A stored command the broker replays on a subscribe: it was
            // executed (or not) when it was sent; never again.
            self.ignore_command(
                &msg.topic,
                super::drops::CMD_RETAINED,
                "retained command ignored: only commands sent while subscribed are executed; clear it with an empty retained message",
            );
            return;
        }
        match self.routes.get(msg.topic.as_str()) {
            Some(to) => {
                if let Err(e) = to.try_send(Box::new(msg)) {
                    let topic = match &e {
                        flume::TrySendError::Full(m) | flume::TrySendError::Disconnected(m) => {
                            m.topic.clone()
                        }
                    };
                    self.ignore_command(
                        &topic,
                        super::drops::CMD_INBOX_FULL,
                        "command dropped: the device is busy with earlier commands",
                    );
                }
            }
            None => {
                tracing::debug!(session = %self.id(), "holding message on unrouted topic {}", msg.topic);
                if self.unrouted.len() >= UNROUTED_HELD {
                    if let Some(old) = self.unrouted.pop_front() {
                        self.ignore_command(
                            &old.topic,
                            super::drops::CMD_UNROUTED,
                            "command dropped: no device claimed its topic",
                        );
                    }
                }
                self.unrouted.push_back(msg);
            }
        }
    }

    /// Counts a command not executed and logs it once per device and reason.
    fn ignore_command(&mut self, topic: &str, reason: &'static str, what: &str) {
        self.m
            .ignored
            .with_label_values(&[&self.settings.client_id, reason])
            .inc();
        let device = topic
            .strip_suffix("/$set")
            .or_else(|| topic.strip_suffix("/$get"))
            .unwrap_or(topic);
        if self.ignored_logged.len() < 4096
            && self.ignored_logged.insert((device.to_owned(), reason))
        {
            tracing::warn!(
                session = %self.id(),
                reason,
                "{what} ({topic}; further ones for this device are only counted in fieldgate_mqtt_commands_ignored_total)"
            );
        } else {
            tracing::debug!(session = %self.id(), reason, "{what} ({topic})");
        }
    }
}

/// The messages a request publishes (for a hand-over: the rest of the
/// request does not outlive the session).
fn to_publish(input: SessionInput) -> Vec<OutMsg> {
    match input {
        SessionInput::Publish(msg)
        | SessionInput::SetRetained(msg)
        | SessionInput::SetRetainedRebuilt { msg, .. } => vec![msg],
        SessionInput::ClearRetained { topic, qos } => vec![OutMsg {
            topic,
            payload: Bytes::new(),
            qos,
            retain: true,
            correlation: None,
            props: None,
        }],
        SessionInput::Predecessor(msgs) => msgs,
        SessionInput::Route { .. } | SessionInput::Unroute { .. } | SessionInput::Reconnect => {
            Vec::new()
        }
    }
}

fn health_key(client_id: &str) -> String {
    format!("mqtt:{client_id}")
}

/// `/healthz` key of a session whose broker stopped acknowledging.
fn ack_health_key(client_id: &str) -> String {
    format!("mqtt-ack:{client_id}")
}

/// A PUBLISH packet's size on the wire, at most a few bytes over: fixed
/// header, topic, packet id, MQTT 5 properties and payload.
fn packet_size(msg: &OutMsg) -> usize {
    let props = msg.correlation.as_ref().map_or(0, |c| 3 + c.len())
        + msg.props.as_ref().map_or(0, |p| {
            p.content_type.as_ref().map_or(0, |c| 3 + c.len())
                + p.message_expiry.map_or(0, |_| 5)
                + p.user_properties
                    .iter()
                    .map(|(k, v)| 5 + k.len() + v.len())
                    .sum::<usize>()
        });
    PUBLISH_OVERHEAD + msg.topic.len() + props + 4 + msg.payload.len()
}

async fn recv_predecessor(
    rx: &mut Option<oneshot::Receiver<Vec<OutMsg>>>,
) -> Result<Vec<OutMsg>, oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}
