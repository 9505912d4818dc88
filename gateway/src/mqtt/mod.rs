//! Northbound MQTT: sessions (one per distinct client options), the in-order
//! outbox, `$set`/`$get` routing to devices, birth/will and retained topics.

pub mod drops;
pub mod filestore;
mod link;
pub mod outbox;
mod replay;
mod session;
pub mod store;
mod transport;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use session::{spawn, spawn_successor, spawn_successor_with, spawn_with};
pub use transport::{ConnectError, RelayError, TransportError, V31Error};

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutMsg {
    /// Topic.
    pub topic: Arc<str>,
    /// Payload (already encoded per `payloadEncode`).
    pub payload: Bytes,
    /// QoS 0..=2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 correlation data of a reply.
    pub correlation: Option<Bytes>,
    /// MQTT 5 publish properties (ignored by MQTT 3.1 / 3.1.1 sessions).
    pub props: Option<Arc<MessageProps>>,
}

/// MQTT 5 publish properties configured under `mqtt.message`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MessageProps {
    /// Content type, e.g. `application/json`.
    pub content_type: Option<String>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// Message expiry interval in seconds.
    pub message_expiry: Option<u32>,
}

/// A message that arrived on a routed topic (`T/$set`, `T/$get`).
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// Topic it arrived on.
    pub topic: String,
    /// Raw payload.
    pub payload: Bytes,
    /// MQTT 5 response topic.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data.
    pub correlation: Option<Bytes>,
    /// The retain flag: the broker replayed a stored message (on a
    /// subscribe), it was not sent now.
    pub retain: bool,
}

/// Requests to a running session.
#[derive(Debug)]
pub enum SessionInput {
    /// Publish in order through the outbox.
    Publish(OutMsg),
    /// Publish a retained message and re-publish it after every reconnect
    /// (so a broker that lost its retained store gets it back).
    SetRetained(OutMsg),
    /// Like `SetRetained`, but the session keeps `rebuild` instead of the
    /// payload and builds the payload again for each replay: for a large
    /// retained payload that is cheap to build (a device's `$meta`), which
    /// a gateway would otherwise hold once per device for its whole life.
    SetRetainedRebuilt {
        /// The message to publish now.
        msg: OutMsg,
        /// Builds its payload again for a replay.
        rebuild: PayloadBuilder,
    },
    /// Forget a retained topic and clear it on the broker (empty retained
    /// message with this QoS).
    ClearRetained {
        /// The topic to clear.
        topic: Arc<str>,
        /// QoS of the clearing message.
        qos: u8,
    },
    /// Deliver messages arriving on `topic` to `to` (subscribes).
    Route {
        /// Exact topic.
        topic: Arc<str>,
        /// The device's inbox.
        to: Inbox,
        /// Deliver retained messages too: the topic carries a state the
        /// broker keeps (a host's STATE, a consumer's birth). Commands leave
        /// it false: a retained command is a replay, never executed.
        retained: bool,
    },
    /// Stop delivering `topic` (unsubscribes).
    Unroute {
        /// Exact topic.
        topic: Arc<str>,
    },
    /// End the connection with DISCONNECT (no will) once what is queued
    /// before this request has been handed to it, then connect again as
    /// after any loss (a dialect's rule, e.g. Sparkplug's primary host
    /// going offline).
    Reconnect,
    /// A predecessor whose reload hand-over timed out has ended since: its
    /// undelivered messages (memory store; they go after what is queued),
    /// or, empty, word that it closed its file store (a store that could
    /// not open the shared directory meanwhile opens it now and reads them).
    Predecessor(Vec<OutMsg>),
}

/// Builds a retained message's payload on demand (see
/// [`SessionInput::SetRetainedRebuilt`]).
#[derive(Clone)]
pub struct PayloadBuilder(Arc<dyn Fn() -> Bytes + Send + Sync>);

impl PayloadBuilder {
    /// A builder that calls `build` for each payload.
    pub fn new(build: impl Fn() -> Bytes + Send + Sync + 'static) -> Self {
        Self(Arc::new(build))
    }

    /// Builds the payload.
    pub fn build(&self) -> Bytes {
        (self.0)()
    }
}

impl std::fmt::Debug for PayloadBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadBuilder")
    }
}

/// What a northbound dialect asks of its session (the session itself knows
/// no dialect): a will payload computed per connection, no `online` birth
/// message, and word of every connect and loss.
#[derive(Clone, Default)]
pub struct SessionHooks {
    /// Computes the will payload: with `true` before every connection
    /// attempt (the payload that CONNECT carries), with `false` for the
    /// clean-stop will of the current connection.
    pub will: Option<WillHook>,
    /// Publish no `online` on the will topic after a connect.
    pub no_birth: bool,
    /// Told of every connect and every loss. On a connect the session
    /// first hands back what its store still held (instead of replaying
    /// it): the dialect re-sends it in its own terms.
    pub connection: Option<flume::Sender<ConnEvent>>,
}

/// Computes a will payload (see [`SessionHooks::will`]).
#[derive(Clone)]
pub struct WillHook(Arc<dyn Fn(bool) -> Vec<u8> + Send + Sync>);

impl WillHook {
    /// A hook calling `f`.
    pub fn new(f: impl Fn(bool) -> Vec<u8> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The payload for a new connection (`true`) or the current one.
    pub fn payload(&self, new_connection: bool) -> Vec<u8> {
        (self.0)(new_connection)
    }
}

/// A session's connection changes, for [`SessionHooks::connection`].
#[derive(Debug)]
pub enum ConnEvent {
    /// Connected; `returned` is what the store held, oldest first.
    Up {
        /// Undelivered messages taken out of the store.
        returned: Vec<OutMsg>,
    },
    /// The connection is lost.
    Down,
}

/// A device's inbox for `$set`/`$get` messages: a small flume channel (see
/// [`fieldgate_drivers::EventSender`]), messages boxed.
pub type Inbox = flume::Sender<Box<Inbound>>;

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Publish the will payload, flush, disconnect: the gateway is stopping.
    Clean,
    /// Disconnect quietly and hand the undelivered messages to a successor
    /// session (client options changed on reload).
    Handover,
}

/// A stop request and where the undelivered messages go.
#[derive(Debug)]
pub struct StopRequest {
    mode: StopMode,
    done: oneshot::Sender<Vec<OutMsg>>,
    /// Where a hand-over that comes too late for `done` goes.
    successor: Option<mpsc::Sender<SessionInput>>,
}

/// A running session: send it [`SessionInput`]s; stop it with [`SessionHandle::stop`].
#[derive(Clone)]
pub struct SessionHandle {
    /// The session's client id.
    pub client_id: Arc<str>,
    tx: mpsc::Sender<SessionInput>,
    stop: mpsc::Sender<StopRequest>,
    readiness: Option<watch::Receiver<Readiness>>,
    status: Arc<SessionStatus>,
    /// The northbound dialect that publishes through this session (the
    /// session never looks at it; devices do).
    pub dialect: crate::northbound::Dialect,
}

/// How long a batch of new devices runs before its session's readiness is
/// looked at (see [`SessionHandle::pace_new_devices`]).
const BATCH_SETTLE: std::time::Duration = std::time::Duration::from_millis(1);

/// What a session reports to the devices starting on it (see
/// [`SessionHandle::pace_new_devices`]): whether it is connected, and how
/// many messages it holds (stored, or still queued for it). The session
/// sends a new value at the end of each turn of its loop when it changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Readiness {
    connected: bool,
    backlog: usize,
}

/// A session's connection as others may read it (`G/$health`, the status
/// API): whether it is connected, and to which server of its list.
#[derive(Debug)]
pub struct SessionStatus {
    connected: std::sync::atomic::AtomicBool,
    server: std::sync::Mutex<Arc<str>>,
}

impl SessionStatus {
    /// Not connected; `server` is the first server of the session's list.
    fn new(server: &str) -> Self {
        Self {
            connected: false.into(),
            server: std::sync::Mutex::new(server.into()),
        }
    }

    /// True while the session is connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The server (URL) the session is connected to; while it is not
    /// connected, the one it was last connected to (before the first
    /// connection: the first server of its list).
    pub fn current_server(&self) -> Arc<str> {
        self.server
            .lock()
            .map(|s| Arc::clone(&s))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    /// Records a connection to `server` (`Some`) or its loss (`None`).
    fn set(&self, server: Option<&str>) {
        if let Some(server) = server {
            if let Ok(mut s) = self.server.lock() {
                if **s != *server {
                    *s = server.into();
                }
            }
        }
        self.connected
            .store(server.is_some(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl SessionHandle {
    /// A handle with no MQTT session behind it: its requests arrive on the
    /// returned receiver (queue of `depth`). Drives a device without a
    /// broker (the `set_payload` fuzz target); a stop returns at once.
    #[doc(hidden)]
    pub fn detached(client_id: &str, depth: usize) -> (Self, mpsc::Receiver<SessionInput>) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let (stop, _) = mpsc::channel(1);
        let handle = Self {
            client_id: client_id.into(),
            tx,
            stop,
            readiness: None,
            status: Arc::new(SessionStatus::new("")),
            dialect: Default::default(),
        };
        (handle, rx)
    }

    /// Paces a burst of new devices: lets their tasks run a moment
    /// ([`BATCH_SETTLE`]), then waits until
    /// the session says it is connected and holds at most `limit` messages
    /// (stored, or queued for it) — at most `deadline` in all. Devices then
    /// start no faster than the broker takes their first messages, instead
    /// of queueing all of them at the same moment. Returns false when it
    /// gave up (the session is down, stopped or too slow: pacing further
    /// only delays).
    pub async fn pace_new_devices(&self, limit: usize, deadline: std::time::Duration) -> bool {
        let Some(readiness) = &self.readiness else {
            return true;
        };
        let mut readiness = readiness.clone();
        // The batch just started gets a moment to queue its first messages
        // (else the session's last report, from before them, lets the next
        // batch start at once and the burst is back).
        tokio::time::sleep(BATCH_SETTLE).await;
        // What the devices queued since the session's last report counts too.
        let queued = || self.tx.max_capacity() - self.tx.capacity();
        let ready = readiness.wait_for(|r| r.connected && r.backlog.max(queued()) <= limit);
        let paced = matches!(tokio::time::timeout(deadline, ready).await, Ok(Ok(_)));
        paced
    }

    /// True while the session is connected to a broker.
    pub fn is_connected(&self) -> bool {
        self.status.is_connected()
    }

    /// The server (URL) of the session's list it is connected to; while not
    /// connected, the one it was last connected to (see
    /// [`SessionStatus::current_server`]). For `G/$health`.
    pub fn current_server(&self) -> Arc<str> {
        self.status.current_server()
    }

    /// The session's connection status, shared (it follows the session).
    pub fn status(&self) -> Arc<SessionStatus> {
        Arc::clone(&self.status)
    }

    /// Sends a request; waits only if the session's input queue is full.
    pub async fn send(&self, input: SessionInput) {
        if self.tx.send(input).await.is_err() {
            tracing::debug!(session = %self.client_id, "session already stopped");
        }
    }

    /// Queues a request if the session's input queue has room now; gives it
    /// back when the queue is full or the session has stopped.
    pub fn try_send(&self, input: SessionInput) -> Result<(), SessionInput> {
        self.tx.try_send(input).map_err(|e| match e {
            mpsc::error::TrySendError::Full(input) | mpsc::error::TrySendError::Closed(input) => {
                input
            }
        })
    }

    /// Sends a request, waiting at most `wait` for room in the session's
    /// input queue (`waitTimeout`; zero waits as long as it takes). Returns
    /// false when the request was dropped.
    pub async fn send_within(&self, input: SessionInput, wait: std::time::Duration) -> bool {
        if wait.is_zero() {
            return self.tx.send(input).await.is_ok();
        }
        matches!(
            tokio::time::timeout(wait, self.tx.send(input)).await,
            Ok(Ok(()))
        )
    }

    /// Publishes the clean-stop will payload, flushes what the outbox holds
    /// while connected (bounded by `deadline`), disconnects and ends the task.
    pub async fn stop(self, deadline: std::time::Duration) {
        self.end(StopMode::Clean, deadline, None).await;
    }

    /// Ends the session quietly and returns what it had not delivered yet,
    /// oldest first, for `successor`. `None` when it did not finish within
    /// `deadline`: nothing is lost then, the session goes on ending and
    /// passes its messages to `successor` later (memory store), or leaves
    /// them in its file store and tells `successor` to read them.
    pub async fn hand_over(
        self,
        deadline: std::time::Duration,
        successor: &SessionHandle,
    ) -> Option<Vec<OutMsg>> {
        self.end(StopMode::Handover, deadline, Some(successor.tx.clone()))
            .await
    }

    async fn end(
        self,
        mode: StopMode,
        deadline: std::time::Duration,
        successor: Option<mpsc::Sender<SessionInput>>,
    ) -> Option<Vec<OutMsg>> {
        let (done, done_rx) = oneshot::channel();
        let request = StopRequest {
            mode,
            done,
            successor,
        };
        if self.stop.send(request).await.is_err() {
            // Already ended (or detached): nothing left to hand over.
            return Some(Vec::new());
        }
        match tokio::time::timeout(deadline, done_rx).await {
            Ok(Ok(left)) => Some(left),
            Ok(Err(_)) => Some(Vec::new()),
            Err(_) => None,
        }
    }
}
