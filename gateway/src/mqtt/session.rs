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

    /// After a hand-over timed out: passes the undelivered messages to the
    /// successor's input; counts them dropped (`reason="handover"`) only
    /// when it is gone too.
    async fn pass_late(&self, left: Vec<OutMsg>, successor: Option<mpsc::Sender<SessionInput>>) {
        let n = left.len();
        let lost = match successor {
            Some(next) => match next.send(SessionInput::Predecessor(left)).await {
                Ok(()) => 0,
                Err(_) => n,
            },
            None => n,
        };
        if lost > 0 {
            self.count_drop(super::drops::HANDOVER, lost as u64);
            tracing::error!(
                session = %self.id(),
                "reload hand-over timed out and the new session is gone: dropped {lost} undelivered message(s)"
            );
        } else {
            tracing::warn!(
                session = %self.id(),
                "reload hand-over timed out: passed {n} undelivered message(s) to the new session late (they follow its newer ones)"
            );
        }
    }

    /// Moves a late predecessor's messages into the store as it has room:
    /// while connected a full store waits for the broker, as for devices;
    /// while not, the oldest are dropped as for any outage.
    async fn take_late(&mut self) {
        while !self.late.is_empty() && !self.pushes_back() {
            if let Some(msg) = self.late.pop_front() {
                let dropped = self.outbox.push(msg, true).await;
                self.count_store_drops();
                if dropped > 0 {
                    self.retained
                        .note_dropped(self.outbox.take_dropped_retained());
                }
                self.count_dropped(dropped);
            }
        }
        self.update_store_gauges();
    }

    /// Opens the store (a file store recovers from disk) with a
    /// predecessor's undelivered messages in front of what is queued.
    async fn open_store(&mut self, older: Vec<OutMsg>) {
        match self.outbox.open(older).await {
            Ok(opened) => {
                if opened.recovered > 0 {
                    tracing::info!(
                        session = %self.id(),
                        "store: recovered {} undelivered message(s) from disk",
                        opened.recovered
                    );
                }
                self.count_dropped(opened.dropped);
                self.count_store_drops();
                self.retained
                    .note_dropped(self.outbox.take_dropped_retained());
                if self.outbox.needs_ticks() {
                    self.store_tick_at = Some(Instant::now() + STORE_TICK);
                }
                if opened.damaged > 0 {
                    self.count_drop(super::drops::STORE_DAMAGED, opened.damaged as u64);
                }
            }
            Err(e) => tracing::error!(
                session = %self.id(),
                "cannot open the file store ({e}); keeping messages in memory only"
            ),
        }
        self.update_store_gauges();
    }

    /// Clean stop: the will payload on the will topic, flush while
    /// connected, then DISCONNECT. Handover: DISCONNECT at once. The caller
    /// bounds the time; the store is closed afterwards.
    async fn shutdown(
        &mut self,
        link: &mut link::Link,
        inputs: &mut mpsc::Receiver<SessionInput>,
        mode: StopMode,
    ) {
        // Take what devices sent last (their `offline` states), letting the
        // connection drain a full store first rather than dropping.
        loop {
            while self.connected && self.outbox.is_full() {
                self.feed();
                match link.events.recv().await {
                    Some(ev) => self.on_net(ev, &link.permits).await,
                    None => break,
                }
            }
            match inputs.try_recv() {
                // A hand-over drops nothing: what the full store cannot
                // take (the connection was lost) goes to the successor
                // after what the store holds.
                Ok(input) if mode == StopMode::Handover && self.outbox.is_full() => {
                    self.late.extend(to_publish(input));
                }
                Ok(input) => self.on_input(input).await,
                Err(_) => break,
            }
        }
        if mode == StopMode::Handover {
            self.disconnect(link).await;
            return;
        }
        let will = &self.settings.will;
        let payload = match &self.hooks.will {
            Some(hook) => hook.payload(false),
            None => will.payload.clone(),
        };
        let will = OutMsg {
            topic: will.topic.as_str().into(),
            payload: Bytes::from(payload),
            qos: will.qos,
            retain: will.retained,
            correlation: None,
            props: None,
        };
        if !self.outbox_is_file {
            self.outbox.push(will, !self.connected).await;
        } else if self.connected {
            // Never persisted: replayed after the next start's birth
            // message it would claim the gateway is offline.
            self.priority.push_back(will);
        }
        self.feed();
        while self.connected && !(self.outbox.is_empty() && self.priority.is_empty()) {
            match link.events.recv().await {
                Some(NetEvent::Down(reason)) => {
                    tracing::warn!(session = %self.id(), "connection lost while stopping: {reason}");
                    break;
                }
                Some(ev) => self.on_net(ev, &link.permits).await,
                None => break,
            }
            self.feed();
        }
        self.disconnect(link).await;
    }

    /// Sends DISCONNECT when connected and waits briefly for it to be written.
    async fn disconnect(&mut self, link: &mut link::Link) {
        if self.connected && self.client.try_disconnect().is_ok() {
            let flushed = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(ev) = link.events.recv().await {
                    if matches!(ev, NetEvent::Disconnected | NetEvent::Down(_)) {
                        break;
                    }
                }
            })
            .await;
            if flushed.is_err() {
                tracing::debug!(session = %self.id(), "no DISCONNECT confirmation");
            }
        }
        self.connected = false;
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

    async fn on_net(&mut self, ev: NetEvent, permits: &mpsc::Sender<usize>) {
        match ev {
            NetEvent::Connected {
                session_present,
                max_packet_size,
            } => {
                self.broker_max_packet = max_packet_size;
                self.on_connected(session_present);
                self.return_to_dialect().await;
            }
            NetEvent::Message(msg) => self.route(msg),
            NetEvent::Written(pkid) => {
                self.m.published.inc();
                self.outbox.on_written(pkid);
                self.update_store_gauges();
            }
            NetEvent::Acked(pkid) => {
                if let Some(latency) = self.outbox.on_acked(pkid) {
                    self.m.ack_latency.observe(latency.as_secs_f64());
                }
                if self
                    .probing
                    .is_some_and(|upto| self.outbox.confirmed_through(upto))
                {
                    self.probing = None;
                }
                if self.ack_stalled {
                    self.ack_stalled = false;
                    self.health.clear(&ack_health_key(&self.settings.client_id));
                    tracing::info!(session = %self.id(), "the broker acknowledges messages again");
                }
                self.update_store_gauges();
            }
            NetEvent::Disconnected => {}
            NetEvent::Refused(r) => {
                // Warn once per kind of refusal (a refused state topic would
                // otherwise log at every poll); the metric counts them all.
                if self.refusals_logged.insert((r.packet, r.code.clone())) {
                    tracing::warn!(
                        session = %self.id(),
                        packet = r.packet,
                        code = %r.code,
                        "the broker refused: {} reason code {} (further ones are counted in fieldgate_mqtt_reason_codes_total)",
                        r.packet.to_uppercase(),
                        r.code
                    );
                } else {
                    tracing::debug!(session = %self.id(), "the broker refused: {} reason code {}", r.packet, r.code);
                }
                self.metrics
                    .mqtt_reason_codes
                    .with_label_values(&[&self.settings.client_id, r.packet, &r.code])
                    .inc();
                if matches!(r.packet, "puback" | "pubrec") {
                    // Final: the message leaves the store with its Acked.
                    self.count_drop(super::drops::REFUSED, 1);
                }
            }
            NetEvent::Down(reason) => {
                self.first_attempt = None;
                let was_connected = self.connected;
                let lasted = self.connected_at.map(|at| at.elapsed());
                self.connected = false;
                self.ack_check_at = None;
                self.rewind_after_loss();
                self.priority.clear();
                self.retained.on_down();
                self.m.connected.set(0);
                self.status.set(None);
                if let Some(to) = &self.hooks.connection {
                    let _ = to.send(ConnEvent::Down);
                }
                let tried = self.settings.server_at(self.server).to_string();
                self.health.set_problem(
                    &health_key(&self.settings.client_id),
                    format!(
                        "MQTT session {} is not connected: {reason}",
                        self.settings.client_id
                    ),
                );
                if was_connected {
                    tracing::warn!(session = %self.id(), server = %tried, "connection to the broker lost: {reason}");
                }
                if was_connected && !self.settings.auto_reconnect {
                    tracing::error!(
                        session = %self.id(),
                        "autoReconnect is off: not reconnecting"
                    );
                    return;
                }
                let delay = self.next_server(lasted);
                if !was_connected {
                    let next = if delay.is_zero() {
                        format!("trying {}", self.settings.server_at(self.server))
                    } else {
                        format!("retrying in {:.1}s", delay.as_secs_f64())
                    };
                    tracing::warn!(
                        session = %self.id(),
                        server = %tried,
                        "cannot connect to the broker: {reason}; {next}"
                    );
                }
                if delay.is_zero() {
                    let _ = permits.try_send(self.server);
                } else {
                    self.reconnect_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    fn on_connected(&mut self, session_present: bool) {
        let id = self.settings.client_id.clone();
        let reconnect = self.ever_connected;
        if reconnect {
            self.m.reconnects.inc();
        }
        let server = self.settings.server_at(self.server).to_string();
        tracing::info!(session = %id, server = %server, session_present, "connected to the broker");
        self.connected = true;
        self.ever_connected = true;
        self.first_attempt = None;
        self.backoff.reset();
        self.label_connected(&server);
        self.m.connected.set(1);
        self.status.set(Some(&server));
        self.connected_at = Some(Instant::now());
        if !self.settings.ack_timeout.is_zero() {
            self.ack_check_at = Some(Instant::now() + ACK_CHECK);
        }
        self.health.clear(&health_key(&id));
        self.restore_subscriptions(session_present);
        let will = &self.settings.will;
        if !self.hooks.no_birth {
            self.priority.push_back(OutMsg {
                topic: will.topic.as_str().into(),
                payload: Bytes::from_static(b"online"),
                qos: will.qos,
                retain: will.retained,
                correlation: None,
                props: None,
            });
        }
        self.plan_replay(session_present, reconnect);
    }

    /// After a connect: which retained topics to publish again (see
    /// [`super::replay`]). A resumed session on the same broker gets only
    /// those the store dropped; what changed while disconnected is queued
    /// in the store. A clean session (or another broker) may have lost its
    /// retained store: it gets every topic, paced by [`Session::feed`].
    fn plan_replay(&mut self, session_present: bool, reconnect: bool) {
        self.retained
            .note_dropped(self.outbox.take_dropped_retained());
        let server = self.settings.server_at(self.server).to_string();
        match self.retained.plan(&server, session_present, reconnect) {
            Plan::Nothing => {}
            Plan::Changed(n) => tracing::info!(
                session = %self.id(),
                "re-publishing {n} retained topic(s) whose latest message the store dropped"
            ),
            Plan::All(n) => tracing::info!(
                session = %self.id(),
                session_present,
                "re-publishing all {n} retained topic(s): the broker may have lost them"
            ),
        }
    }

    /// After a failed attempt or a lost connection (`lasted`: how long it
    /// was up): moves to the next server of the list and says how long to
    /// wait before trying it — nothing while the round of the list lasts,
    /// the backoff's delay (with jitter) after a full round of failures. A
    /// connection that lasted begins a new round; one that ended at once
    /// counts as a failed try.
    fn next_server(&mut self, lasted: Option<Duration>) -> Duration {
        if lasted.is_some_and(|d| d >= POISON_WINDOW) {
            self.round_tries = 0;
        }
        let servers = self.settings.server_count();
        self.server = (self.server + 1) % servers;
        self.round_tries += 1;
        if self.round_tries >= servers {
            self.round_tries = 0;
            self.backoff.next_delay()
        } else {
            Duration::ZERO
        }
    }

    /// Points the session's `fieldgate_mqtt_connected` series at `server`
    /// (the one it connected to): one series per session, labelled with the
    /// server in use; the series of other servers (an earlier connection, a
    /// predecessor's list) are removed.
    fn label_connected(&mut self, server: &str) {
        let id = self.settings.client_id.as_str();
        use prometheus::core::Collector as _;
        for family in self.metrics.mqtt_connected.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                };
                if let (Some(session), Some(other)) = (label("session"), label("server")) {
                    if session == id && other != server {
                        let _ = self
                            .metrics
                            .mqtt_connected
                            .remove_label_values(&[id, &other]);
                    }
                }
            }
        }
        self.m.connected = self.metrics.mqtt_connected.with_label_values(&[id, server]);
    }

    /// With a dialect that wants word of connects: hands it what the store
    /// holds (it re-sends that in its own terms), then says connected.
    async fn return_to_dialect(&mut self) {
        let Some(to) = self.hooks.connection.clone() else {
            return;
        };
        let returned = if self.outbox.is_empty() {
            Vec::new()
        } else {
            let fresh = Store::new(&self.settings.store, self.settings.message_channel_depth);
            let store = std::mem::replace(&mut self.outbox, fresh);
            let left = store.close(true).await;
            self.open_store(Vec::new()).await;
            left
        };
        let _ = to.send(ConnEvent::Up { returned });
    }

    /// After a connect: without a stored session, subscribe to every
    /// command topic. With a resumed session (`cleanSession: false`) the
    /// broker still has them: subscribe only to topics added meanwhile and
    /// drop those removed meanwhile, or, with `resumeSubs: true`, subscribe
    /// to all of them again.
    fn restore_subscriptions(&mut self, session_present: bool) {
        if !session_present {
            self.broker_subs.clear();
        }
        let resume_all = !session_present || self.settings.resume_subs;
        self.pending_subs = self
            .routes
            .keys()
            .filter(|t| resume_all || !self.broker_subs.contains(*t))
            .cloned()
            .collect();
        self.flush_subscriptions();
        let stale: Vec<Arc<str>> = self
            .broker_subs
            .iter()
            .filter(|t| !self.routes.contains_key(*t))
            .cloned()
            .collect();
        for t in stale {
            if self.client.try_unsubscribe(&t).is_ok() {
                self.broker_subs.remove(&t);
            }
        }
    }

    /// Hands pending command-topic subscriptions to the client, up to
    /// [`SUBSCRIBE_BATCH`] topics per SUBSCRIBE, while its request channel
    /// takes them; the rest are retried shortly (and after every event).
    fn flush_subscriptions(&mut self) {
        if !self.connected || self.pending_subs.is_empty() {
            return;
        }
        for _ in 0..SUBSCRIBE_BATCHES_PER_TURN {
            let batch: Vec<Arc<str>> = self
                .pending_subs
                .iter()
                .take(SUBSCRIBE_BATCH)
                .cloned()
                .collect();
            if batch.is_empty() {
                return;
            }
            match self
                .client
                .try_subscribe(&batch, COMMAND_QOS, &self.keeps_retained)
            {
                Ok(()) => {
                    for t in batch {
                        self.pending_subs.remove(&t);
                        self.broker_subs.insert(t);
                    }
                }
                Err(e) => {
                    tracing::debug!(
                        session = %self.id(),
                        "{} subscription(s) wait for room in the request channel: {e}",
                        self.pending_subs.len()
                    );
                    break;
                }
            }
        }
        if !self.pending_subs.is_empty() {
            self.subs_retry_at = Some(Instant::now() + SUBSCRIBE_RETRY);
        }
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

    /// Counts what the store dropped for its age (`maxAge`) or the disk
    /// floor (`minFreeBytes`), and marks dropped retained topics.
    fn count_store_drops(&mut self) {
        let drops = self.outbox.take_drops();
        if drops == Default::default() {
            return;
        }
        self.count_drop(super::drops::EXPIRED, drops.expired);
        self.count_drop(super::drops::DISK_FLOOR, drops.disk_floor);
        self.retained
            .note_dropped(self.outbox.take_dropped_retained());
        if drops.expired > 0 {
            tracing::debug!(session = %self.id(), "store: dropped {} message(s) older than maxAge", drops.expired);
        }
    }

    /// The store's timer: `maxAge` expiry and the disk floor.
    fn store_tick(&mut self) {
        self.outbox.tick();
        self.count_store_drops();
        self.update_store_gauges();
        self.store_tick_at = self
            .outbox
            .needs_ticks()
            .then(|| Instant::now() + STORE_TICK);
    }

    /// Counts `n` messages dropped for `reason`.
    fn count_drop(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.m
                .dropped_vec
                .with_label_values(&[&self.settings.client_id, reason])
                .inc_by(n);
        }
    }

    /// The largest packet the broker takes: its CONNACK maximum (MQTT 5)
    /// or the configured `maxPacketSize`, whichever is smaller.
    fn packet_limit(&self) -> Option<usize> {
        match (self.broker_max_packet, self.settings.max_packet_size) {
            (Some(a), Some(b)) => Some(a.min(b) as usize),
            (a, b) => a.or(b).map(|n| n as usize),
        }
    }

    /// When the oldest unacknowledged message was handed out longer than
    /// `ackTimeout` ago: marks `/healthz` degraded and says why the
    /// connection is dropped. Otherwise schedules the next check.
    fn ack_overdue(&mut self) -> Option<String> {
        if !self.connected || self.settings.ack_timeout.is_zero() {
            return None;
        }
        let limit = self.settings.ack_timeout;
        let overdue = self
            .outbox
            .oldest_unconfirmed_since()
            .is_some_and(|at| at.elapsed() > limit);
        if !overdue {
            self.ack_check_at = Some(Instant::now() + ACK_CHECK);
            return None;
        }
        let reason = format!(
            "no acknowledgement from the broker within ackTimeout ({}); reconnecting",
            humantime::format_duration(limit)
        );
        tracing::warn!(session = %self.id(), "{reason}");
        self.ack_stalled = true;
        self.health.set_problem(
            &ack_health_key(&self.settings.client_id),
            format!("MQTT session {}: {reason}", self.settings.client_id),
        );
        Some(reason)
    }

    /// The connection was lost: unconfirmed messages go back to the queue.
    /// A connection that ended at once may have been ended by one of them
    /// (a broker closes the connection on a packet it refuses): the next
    /// sends one at a time; a message alone in flight when a connection
    /// ends gets a try, and after [`MAX_TRIES`] it is dropped as refused.
    fn rewind_after_loss(&mut self) {
        let quick = self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() < POISON_WINDOW);
        let suspects = if quick {
            self.outbox.recent_unconfirmed(POISON_WINDOW)
        } else {
            Vec::new()
        };
        let was_probing = self.probing.is_some();
        self.outbox.rewind();
        if let ([id], true) = (suspects.as_slice(), was_probing) {
            if let Some((topic, size)) = self.outbox.blame(*id, MAX_TRIES) {
                self.count_drop(super::drops::REFUSED, 1);
                // A retained topic would come back with every replay.
                self.retained.forget(&topic);
                tracing::warn!(
                    session = %self.id(),
                    "dropped the message on {topic} ({size} bytes of payload): the connection ended each of the {MAX_TRIES} times it was sent (refused by the broker?)"
                );
                self.update_store_gauges();
            }
        }
        if let Some(&last) = suspects.iter().max() {
            self.probing = Some(self.probing.map_or(last, |p| p.max(last)));
        }
    }

    /// Counts and logs a message dropped for being larger than `limit`.
    fn too_large(&mut self, msg: Option<&OutMsg>, limit: Option<usize>) {
        let Some(msg) = msg else { return };
        self.count_drop(super::drops::TOO_LARGE, 1);
        tracing::warn!(
            session = %self.id(),
            "dropped the message on {} ({} bytes of payload): larger than the broker's maximum packet size ({} bytes)",
            msg.topic,
            msg.payload.len(),
            limit.unwrap_or_default()
        );
    }

    /// Hands queued messages to the connection, keeping at most [`WINDOW`]
    /// in flight: the birth first, then retained replays and stored
    /// messages taking turns (a replay of every retained topic is paced by
    /// the window and never holds up live data for long).
    fn feed(&mut self) {
        if !self.connected {
            return;
        }
        let mut replayed = 0;
        let limit = self.packet_limit();
        let window = if self.probing.is_some() { 1 } else { WINDOW };
        while self.outbox.in_flight() < window {
            if let Some(msg) = self.priority.front() {
                if limit.is_some_and(|l| packet_size(msg) > l) {
                    let msg = self.priority.pop_front();
                    self.too_large(msg.as_ref(), limit);
                    continue;
                }
                if self.client.try_publish(msg).is_err() {
                    break;
                }
                self.priority.pop_front();
                self.outbox.note_transient();
                continue;
            }
            let stored = self.outbox.peek_queued().is_some();
            if self.retained.pending() > 0 && (self.replay_turn || !stored) {
                self.replay_turn = false;
                let Some(msg) = self.retained.next() else {
                    continue;
                };
                if limit.is_some_and(|l| packet_size(&msg) > l) {
                    self.too_large(Some(&msg), limit);
                    continue;
                }
                if self.client.try_publish(&msg).is_err() {
                    self.retained.unsent(&msg);
                    break;
                }
                self.outbox.note_transient();
                continue;
            }
            self.replay_turn = true;
            let Some(msg) = self.outbox.peek_queued() else {
                break;
            };
            if limit.is_some_and(|l| packet_size(msg) > l) {
                let msg = msg.clone();
                self.outbox.drop_queued();
                self.too_large(Some(&msg), limit);
                self.update_store_gauges();
                continue;
            }
            if self.client.try_publish(msg).is_err() {
                break;
            }
            if self.outbox.mark_handed() {
                replayed += 1;
            }
        }
        if replayed > 0 {
            self.m.replayed.inc_by(replayed);
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
