//! One running device: one task that polls the device's driver and runs the
//! actor that turns driver events into published state (`T`, `T/$state`,
//! `T/$meta`) and `$set` / `$get` commands into driver commands, one command
//! at a time, in order.
//!
//! Driver and actor share a task (rather than one task each) because a
//! gateway runs thousands of devices: a task, its waker traffic and the
//! channel between two tasks cost kilobytes per device.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use fieldgate_drivers::{
    Buses, CommandSender, DeviceCommand, DeviceEvent, DeviceLink, DriverError, ErrorKind, Readings,
    WriteOutcome,
};
use futures_util::FutureExt as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::deadline::sleep_until_opt;
use tokio_util::sync::CancellationToken;

use crate::command::{self, SetRequest};
use crate::config::resolved::DeviceSettings;
use crate::config::types::PayloadEncode;
use crate::mqtt::{Inbound, Inbox, OutMsg, PayloadBuilder, SessionHandle, SessionInput};
use crate::northbound::sparkplug::node::NodeInput;
use crate::northbound::{sparkplug::NodeHandle, Dialect};
use crate::state::{self, DeviceState};
use crate::telemetry::{DeviceSeries, Metrics, SetResult};

/// Driver events buffered between the driver and the actor.
const EVENT_QUEUE: usize = 64;
/// Commands buffered between the actor and the driver.
const COMMAND_QUEUE: usize = 16;
/// `$set`/`$get` messages buffered per device; more are refused.
const INBOX: usize = 64;
/// How long a driver may take to finish a write before the command fails.
const WRITE_DEADLINE_FLOOR: Duration = Duration::from_secs(5);
/// How long a stopping driver gets to finish.
const DRIVER_STOP_GRACE: Duration = Duration::from_secs(1);

/// Requests to a running device task.
enum Control {
    /// Publish through another MQTT session from now on.
    MoveTo(SessionHandle),
    /// Stop; with `clear`, also clear the retained topics and routes.
    Stop {
        /// Clear the retained topics (the device is gone or renamed).
        clear: bool,
    },
    /// Report the current state (the status page, `/api/v1`).
    Snapshot(oneshot::Sender<Snapshot>),
    /// A `$set` from the status page (plain JSON, as on `T/$set`); the
    /// result (plain JSON) goes back to `reply` as well as to `T/$set/result`.
    Set {
        /// The `$set` payload.
        payload: Bytes,
        /// Where the result goes.
        reply: oneshot::Sender<Vec<u8>>,
    },
}

/// What a running device reports about itself on request (read-only).
#[derive(Debug)]
pub struct Snapshot {
    /// `None` until the driver said whether it reaches the device.
    pub online: Option<bool>,
    /// Why the device is offline (while it is).
    pub offline_reason: Option<String>,
    /// When the latest readings were taken.
    pub last_reading: Option<std::time::SystemTime>,
    /// Each property's value (JSON) or error, in device order.
    pub values: Vec<state::CurrentValue>,
}

/// Why a running device gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// Its request queue is full (it is busy, e.g. waiting for its session).
    Busy,
    /// It has stopped.
    Stopped,
    /// It did not answer in time.
    Timeout,
}

/// A cheap handle to ask a running device for its state or hand it a
/// `$set` (the status page); holds no state of its own.
#[derive(Clone)]
pub struct DeviceProbe {
    /// The settings it runs with.
    pub settings: Arc<DeviceSettings>,
    control: flume::Sender<Control>,
}

impl DeviceProbe {
    /// Asks the device task for a [`Snapshot`] without waiting for room in
    /// its queue; the answer arrives on the returned receiver.
    pub fn request_snapshot(&self) -> Result<oneshot::Receiver<Snapshot>, Unanswered> {
        let (tx, rx) = oneshot::channel();
        self.control
            .try_send(Control::Snapshot(tx))
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => Unanswered::Busy,
                flume::TrySendError::Disconnected(_) => Unanswered::Stopped,
            })?;
        Ok(rx)
    }

    /// Hands a `$set` payload (plain JSON) to the device, through the same
    /// validation and queue as `T/$set`, and waits up to `wait` for its
    /// result payload (plain JSON).
    pub async fn set(&self, payload: Bytes, wait: Duration) -> Result<Vec<u8>, Unanswered> {
        let (reply, rx) = oneshot::channel();
        let sent = tokio::time::timeout(
            wait,
            self.control.send_async(Control::Set { payload, reply }),
        )
        .await;
        match sent {
            Err(_) => return Err(Unanswered::Busy),
            Ok(Err(_)) => return Err(Unanswered::Stopped),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout(wait, rx).await {
            Err(_) => Err(Unanswered::Timeout),
            Ok(Err(_)) => Err(Unanswered::Stopped),
            Ok(Ok(result)) => Ok(result),
        }
    }
}

/// Control requests that may wait for a device task: moves are rare (a
/// reload), a stop is the last.
const CONTROL_QUEUE: usize = 4;

/// A device task and how to stop it.
pub struct RunningDevice {
    /// The settings it runs with.
    pub settings: Arc<DeviceSettings>,
    control: flume::Sender<Control>,
    task: JoinHandle<()>,
}

impl RunningDevice {
    /// A handle for the status page to ask this device about itself.
    pub fn probe(&self) -> DeviceProbe {
        DeviceProbe {
            settings: Arc::clone(&self.settings),
            control: self.control.clone(),
        }
    }

    /// The same running device, described by equivalent `settings` (a
    /// reload that changed nothing it uses, e.g. a session's index).
    pub fn with_settings(mut self, settings: Arc<DeviceSettings>) -> Self {
        self.settings = settings;
        self
    }

    /// Moves the device to another MQTT session without restarting its
    /// driver: it re-subscribes its command topics and re-publishes its
    /// retained topics there.
    pub async fn move_to(&self, session: SessionHandle) {
        if self
            .control
            .send_async(Control::MoveTo(session))
            .await
            .is_err()
        {
            tracing::warn!(device = %self.settings.name, "device task has ended; not moved");
        }
    }

    /// Stops the device: `offline` on `T/$state`; with `clear` also clears
    /// its retained `T`, `T/$meta` and `T/$state` and its subscriptions.
    pub async fn stop(self, clear: bool) {
        // A task that has already ended has nothing left to stop.
        let _ = self.control.send_async(Control::Stop { clear }).await;
        if let Err(e) = self.task.await {
            tracing::error!(device = %self.settings.name, "device task failed: {e}");
        }
    }
}

/// Topics of one device, built once.
struct Topics {
    state: Arc<str>,
    set: Arc<str>,
    get: Arc<str>,
    result: Arc<str>,
    status: Arc<str>,
    meta: Arc<str>,
}

impl Topics {
    fn new(t: &str) -> Self {
        Self {
            state: t.into(),
            set: format!("{t}/$set").into(),
            get: format!("{t}/$get").into(),
            result: format!("{t}/$set/result").into(),
            status: format!("{t}/$state").into(),
            meta: format!("{t}/$meta").into(),
        }
    }
}

/// Metric handles of one device, resolved once.
struct DeviceMetrics {
    metrics: Metrics,
    series: Arc<DeviceSeries>,
}

/// Starts the driver and the actor of one device.
pub fn spawn(
    settings: Arc<DeviceSettings>,
    session: SessionHandle,
    buses: Buses,
    metrics: Metrics,
) -> RunningDevice {
    // One channel for moves and the stop: smaller than a watch channel, a
    // cancellation token and a flag per device.
    let (control, control_rx) = flume::bounded(CONTROL_QUEUE);
    // Boxed: as a value the actor would be stored twice in the task's future
    // (argument and local).
    let actor = Box::new(Actor::new(settings.clone(), session, metrics));
    let task = tokio::spawn(actor.run(buses, control_rx));
    RunningDevice {
        settings,
        control,
        task,
    }
}

/// A `$set` waiting for its turn or for the driver's answer.
struct PendingSet {
    request: SetRequest,
    reply_to: Option<(String, Option<Bytes>)>,
    /// The status page waiting for the result (plain JSON).
    http: Option<oneshot::Sender<Vec<u8>>>,
    /// Why the command's response topic is not used (said in the result).
    reply_note: Option<String>,
}

/// A device's command rate limit and when it last answered "rate
/// limited"; made on the first command (most devices never get one).
struct CommandLimit {
    rate: command::rate::RateLimit,
    refused_at: Option<Instant>,
}

/// A `$set` handed to the driver, waiting for its outcome.
struct InFlight {
    pending: PendingSet,
    outcome: oneshot::Receiver<WriteOutcome>,
    deadline: Instant,
}

struct Actor {
    settings: Arc<DeviceSettings>,
    topics: Topics,
    session: SessionHandle,
    state: DeviceState,
    m: DeviceMetrics,
    online: Option<bool>,
    /// Why the device is offline, while it is (for the status page).
    offline_reason: Option<Box<str>>,
    limit: Option<Box<CommandLimit>>,
    /// Sparkplug B: the session's edge node and this device's DCMD topic
    /// (`None`: fieldgate topics).
    sparkplug: Option<Box<(NodeHandle, Arc<str>)>>,
}

/// The edge node and DCMD topic of `name` when `session` speaks Sparkplug B.
fn sparkplug_of(session: &SessionHandle, name: &str) -> Option<Box<(NodeHandle, Arc<str>)>> {
    match &session.dialect {
        Dialect::Fieldgate => None,
        Dialect::Sparkplug(node) => {
            let dcmd = node.dcmd_topic(name).into();
            Some(Box::new((node.clone(), dcmd)))
        }
    }
}

impl Actor {
    fn new(settings: Arc<DeviceSettings>, session: SessionHandle, metrics: Metrics) -> Self {
        let m = DeviceMetrics {
            series: metrics.devices.series(&settings.name),
            metrics,
        };
        m.series.set_up(false);
        Self {
            sparkplug: sparkplug_of(&session, &settings.name),
            topics: Topics::new(&settings.message.topic),
            state: DeviceState::new(&settings),
            settings,
            session,
            m,
            online: None,
            offline_reason: None,
            limit: None,
        }
    }

    fn name(&self) -> &str {
        &self.settings.name
    }

    async fn run(mut self: Box<Self>, buses: Buses, control: flume::Receiver<Control>) {
        let (events_tx, mut events) = fieldgate_drivers::event_channel(EVENT_QUEUE);
        let (commands, commands_rx) = fieldgate_drivers::command_channel(COMMAND_QUEUE);
        let (inbox_tx, inbox) = flume::bounded::<Box<Inbound>>(INBOX);
        // A stream: it stays registered between rounds of the loop below
        // instead of registering anew in each.
        let mut inbox = inbox.into_stream();
        let mut control = control.into_stream();
        let mut clear_retained = false;
        let driver_cancel = CancellationToken::new();
        let spec = self.settings.spec.clone();
        let link = DeviceLink {
            events: events_tx,
            commands: commands_rx,
            cancel: driver_cancel.clone(),
        };
        // The driver runs inside this task. A panic in it is caught here so
        // that it ends only this device's driver, as a task of its own would.
        let mut driver =
            std::panic::AssertUnwindSafe(fieldgate_drivers::run_device(spec, link, &buses))
                .catch_unwind();
        let mut driver_running = true;

        // `$meta` is built when published, not kept: ~50 bytes per property
        // for the device's whole life otherwise.
        let meta = {
            let settings = self.settings.clone();
            PayloadBuilder::new(move || Bytes::from(state::meta_payload(&settings)))
        };
        Box::pin(self.announce(&meta, &inbox_tx)).await;

        let mut queue: VecDeque<PendingSet> = VecDeque::new();
        let mut in_flight: Option<Box<InFlight>> = None;
        loop {
            let heartbeat = self.state.heartbeat_due().map(Instant::from_std);
            let write_deadline = in_flight.as_ref().map(|f| f.deadline);
            // One timer for both deadlines: each timer future is part of
            // every device task's state.
            let wake_at = match (heartbeat, write_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Biased: a write's outcome is handled before the driver's
            // read-back (drivers reply first), so `$set/result` always
            // precedes the state it caused.
            tokio::select! {
                biased;
                request = futures_util::StreamExt::next(&mut control) => match request {
                    Some(Control::MoveTo(session)) => {
                        if let Some(sp) = self.sparkplug.take() {
                            sp.0.send(NodeInput::Detach { name: self.settings.name.clone() }).await;
                        }
                        self.sparkplug = sparkplug_of(&session, &self.settings.name);
                        self.session = session;
                        tracing::info!(device = %self.name(), session = %self.session.client_id, "moved to another MQTT session");
                        Box::pin(self.announce(&meta, &inbox_tx)).await;
                    }
                    Some(Control::Stop { clear }) => {
                        clear_retained = clear;
                        break;
                    }
                    Some(Control::Snapshot(reply)) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Some(Control::Set { payload, reply }) => {
                        let msg = Inbound {
                            topic: self.topics.set.to_string(),
                            payload,
                            response_topic: None,
                            correlation: None,
                            retain: false,
                        };
                        Box::pin(self.on_inbound(msg, Some(reply), &commands, &mut queue)).await;
                    }
                    // Its owner is gone without a word: stop as on a stop.
                    None => break,
                },
                outcome = recv_outcome(&mut in_flight) => {
                    if let Some(done) = in_flight.take() {
                        let outcome = outcome.unwrap_or_else(|_| WriteOutcome {
                            applied: 0,
                            failed: Some((0, DriverError::new(ErrorKind::Io, "the driver stopped before writing"))),
                        });
                        Box::pin(self.finish_set(done.pending, outcome)).await;
                    }
                },
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => {
                        tracing::error!(device = %self.name(), "driver task ended unexpectedly");
                        break;
                    }
                },
                msg = futures_util::StreamExt::next(&mut inbox) => if let Some(msg) = msg {
                    Box::pin(self.on_inbound(*msg, None, &commands, &mut queue)).await;
                },
                _ = sleep_until_opt(wake_at) => {
                    let now = Instant::now();
                    if write_deadline.is_some_and(|d| d <= now) {
                        if let Some(late) = in_flight.take() {
                            let err = DriverError::new(ErrorKind::Timeout, "the device did not complete the write in time");
                            let failed = WriteOutcome { applied: 0, failed: Some((0, err)) };
                            Box::pin(self.finish_set(late.pending, failed)).await;
                        }
                    }
                    if heartbeat.is_some_and(|h| h <= now) {
                        let payload = self.state.publish_now(std::time::Instant::now());
                        self.publish_state(payload).await;
                    }
                },
                ended = &mut driver, if driver_running => {
                    // Its event sender is gone with it: the events branch
                    // reports the end once the last event is handled.
                    driver_running = false;
                    if ended.is_err() {
                        tracing::error!(device = %self.name(), "the driver panicked");
                    }
                },
            }
            if in_flight.is_none() {
                if let Some(pending) = queue.pop_front() {
                    in_flight = Box::pin(self.start_set(pending, &commands)).await;
                }
            }
        }

        driver_cancel.cancel();
        if driver_running
            && tokio::time::timeout(DRIVER_STOP_GRACE, &mut driver)
                .await
                .is_err()
        {
            tracing::warn!(device = %self.name(), "driver did not stop in time; dropping it");
        }
        drop(driver);
        self.m.series.set_up(false);
        if let Some(sp) = &self.sparkplug {
            sp.0.send(NodeInput::Detach {
                name: self.settings.name.clone(),
            })
            .await;
            if clear_retained {
                self.m.metrics.remove_device(&self.settings.name);
            }
            return;
        }
        self.retain(self.topics.status.clone(), Bytes::from_static(b"offline"))
            .await;
        if clear_retained {
            for topic in [&self.topics.set, &self.topics.get] {
                self.session
                    .send(SessionInput::Unroute {
                        topic: topic.clone(),
                    })
                    .await;
            }
            let qos = self.settings.message.qos;
            for topic in [&self.topics.state, &self.topics.meta, &self.topics.status] {
                self.session
                    .send(SessionInput::ClearRetained {
                        topic: topic.clone(),
                        qos,
                    })
                    .await;
            }
            self.m.metrics.remove_device(&self.settings.name);
        }
    }

    /// Registers the command topics with the current session and publishes
    /// the retained `$meta` (and `$state`, once known) there.
    async fn announce(&self, meta: &PayloadBuilder, inbox: &Inbox) {
        if let Some(sp) = &self.sparkplug {
            sp.0.send(NodeInput::Attach {
                settings: self.settings.clone(),
                inbox: inbox.clone(),
            })
            .await;
            if let Some(online) = self.online {
                sp.0.send(NodeInput::Online {
                    name: self.settings.name.clone(),
                    online,
                })
                .await;
                if online {
                    self.publish_state(Vec::new()).await;
                }
            }
            return;
        }
        let msg = self.retained_msg(self.topics.meta.clone(), meta.build());
        self.publish(SessionInput::SetRetainedRebuilt {
            msg,
            rebuild: meta.clone(),
        })
        .await;
        if let Some(online) = self.online {
            let payload: &'static [u8] = if online { b"online" } else { b"offline" };
            self.retain(self.topics.status.clone(), Bytes::from_static(payload))
                .await;
        }
        for topic in [&self.topics.set, &self.topics.get] {
            self.session
                .send(SessionInput::Route {
                    topic: topic.clone(),
                    to: inbox.clone(),
                    retained: false,
                })
                .await;
        }
    }

    async fn on_event(&mut self, ev: DeviceEvent) {
        match ev {
            DeviceEvent::Readings(r) => self.on_readings(&r).await,
            DeviceEvent::Online => self.set_online(true, None).await,
            DeviceEvent::Offline(e) => self.set_online(false, Some(e)).await,
        }
    }

    async fn on_readings(&mut self, r: &Readings) {
        self.m.series.count_read();
        if let Some(d) = r.duration {
            self.m.series.observe_poll(d);
        }
        for (_, v) in &r.values {
            if let Err(e) = v {
                self.m.series.count_error(e.kind);
            }
        }
        if let Some(payload) = self.state.apply(r, std::time::Instant::now()) {
            self.publish_state(payload).await;
        }
    }

    /// The current state, for the status page.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            online: self.online,
            offline_reason: self.offline_reason.as_deref().map(str::to_owned),
            last_reading: self.state.last_reading(),
            values: self.state.current(),
        }
    }

    async fn set_online(&mut self, online: bool, reason: Option<DriverError>) {
        if !online {
            if let Some(e) = &reason {
                if self.offline_reason.as_deref() != Some(e.message.as_str()) {
                    self.offline_reason = Some(e.message.as_str().into());
                }
            }
        } else {
            self.offline_reason = None;
        }
        if self.online == Some(online) {
            return;
        }
        self.online = Some(online);
        self.m.series.set_up(online);
        if let Some(e) = reason {
            self.m.series.count_error(e.kind);
            tracing::warn!(device = %self.name(), "offline: {e}");
        } else {
            tracing::info!(device = %self.name(), "online");
        }
        if let Some(sp) = &self.sparkplug {
            sp.0.send(NodeInput::Online {
                name: self.settings.name.clone(),
                online,
            })
            .await;
            return;
        }
        let payload: &'static [u8] = if online { b"online" } else { b"offline" };
        self.retain(self.topics.status.clone(), Bytes::from_static(payload))
            .await;
    }

    fn encode(&self, json: Vec<u8>) -> Bytes {
        match self.settings.message.payload_encode {
            PayloadEncode::Raw => Bytes::from(json),
            PayloadEncode::Base64 => {
                Bytes::from(base64::engine::general_purpose::STANDARD.encode(json))
            }
        }
    }

    async fn publish_state(&self, json: Vec<u8>) {
        if let Some(sp) = &self.sparkplug {
            let (at, values) = self.state.snapshot();
            sp.0.send(NodeInput::Data {
                name: self.settings.name.clone(),
                at,
                values,
            })
            .await;
            return;
        }
        let msg = OutMsg {
            topic: self.topics.state.clone(),
            payload: self.encode(json),
            qos: self.settings.message.qos,
            retain: self.settings.message.retained,
            correlation: None,
            props: Some(self.settings.message.state_props.clone()),
        };
        self.publish(SessionInput::Publish(msg)).await;
    }

    /// Hands a message to the session within `waitTimeout`; a message the
    /// session cannot take in time is dropped and counted.
    async fn publish(&self, input: SessionInput) {
        // Usually the session has room: take it without the waiting future,
        // which would otherwise be part of every device task's state.
        let Err(input) = self.session.try_send(input) else {
            return;
        };
        let wait = self.settings.message.wait_timeout;
        if !Box::pin(self.session.send_within(input, wait)).await {
            tracing::warn!(
                device = %self.name(),
                "publish not accepted within waitTimeout ({}); dropped",
                humantime::format_duration(wait)
            );
            self.m
                .metrics
                .mqtt_dropped
                .with_label_values(&[&self.session.client_id, crate::mqtt::drops::WAIT_TIMEOUT])
                .inc();
        }
    }

    async fn retain(&self, topic: Arc<str>, payload: Bytes) {
        let msg = self.retained_msg(topic, payload);
        self.publish(SessionInput::SetRetained(msg)).await;
    }

    /// A retained message of this device (`T/$meta`, `T/$state`).
    fn retained_msg(&self, topic: Arc<str>, payload: Bytes) -> OutMsg {
        OutMsg {
            topic,
            payload,
            qos: self.settings.message.qos,
            retain: true,
            correlation: None,
            props: None,
        }
    }

    /// A `$set` or `$get` from the session (`http: None`) or a `$set` from
    /// the status page (`http`: where its result goes; its payload is plain
    /// JSON whatever the device's `payloadEncode`).
    async fn on_inbound(
        &mut self,
        msg: Inbound,
        http: Option<oneshot::Sender<Vec<u8>>>,
        commands: &CommandSender,
        queue: &mut VecDeque<PendingSet>,
    ) {
        if msg.retain {
            // The session filters these; a retained command is a replay by
            // the broker, never a command to execute (CONTRACT §9).
            self.count_ignored(crate::mqtt::drops::CMD_RETAINED);
            return;
        }
        // The status page's own commands are not rate limited.
        if http.is_none() && !self.within_rate(*msg.topic == *self.topics.set).await {
            return;
        }
        if *msg.topic == *self.topics.get {
            if commands.try_send(DeviceCommand::ReadNow).is_err() {
                tracing::debug!(device = %self.name(), "$get ignored: the driver is busy");
                self.count_ignored(crate::mqtt::drops::CMD_BUSY);
            }
            return;
        }
        if self
            .sparkplug
            .as_ref()
            .is_some_and(|sp| *sp.1 != *msg.topic)
        {
            return;
        }
        let mut reply_note = None;
        let reply_to = match msg.response_topic.clone() {
            Some(topic) => {
                match command::reply::refuse_response_topic(
                    &topic,
                    &self.settings.message.response_topics,
                ) {
                    None => Some((topic, msg.correlation.clone())),
                    Some(why) => {
                        tracing::debug!(device = %self.name(), "{why}");
                        reply_note = Some(why);
                        None
                    }
                }
            }
            None => None,
        };
        let encoding = match http {
            Some(_) => PayloadEncode::Raw,
            None => self.settings.message.payload_encode,
        };
        match command::parse_set_in(&msg.payload, encoding, &self.settings, &self.state) {
            Ok(request) => {
                if queue.len() >= INBOX {
                    let rejection = command::SetRejection {
                        id: request.id,
                        errors: vec![(
                            "$payload".into(),
                            "too many commands waiting for this device".into(),
                        )],
                    };
                    self.count_set(SetResult::Rejected);
                    self.count_ignored(crate::mqtt::drops::CMD_INBOX_FULL);
                    let payload = with_note(command::rejection_payload(&rejection), reply_note);
                    self.send_result(payload, reply_to, http).await;
                    return;
                }
                queue.push_back(PendingSet {
                    request,
                    reply_to,
                    http,
                    reply_note,
                });
            }
            Err(rejection) => {
                self.count_set(SetResult::Rejected);
                tracing::info!(
                    device = %self.name(),
                    "$set rejected: {}",
                    rejection.summary()
                );
                let payload = with_note(command::rejection_payload(&rejection), reply_note);
                self.send_result(payload, reply_to, http).await;
            }
        }
    }

    async fn start_set(
        &mut self,
        pending: PendingSet,
        commands: &CommandSender,
    ) -> Option<Box<InFlight>> {
        let (reply, rx) = oneshot::channel();
        let cmd = DeviceCommand::Write {
            writes: pending.request.writes.clone(),
            reply,
        };
        match commands.try_send(cmd) {
            Ok(()) => {
                let budget = (self.settings.spec.timeout
                    * (pending.request.writes.len() as u32 + 2))
                    .max(WRITE_DEADLINE_FLOOR);
                Some(Box::new(InFlight {
                    pending,
                    outcome: rx,
                    deadline: Instant::now() + budget,
                }))
            }
            Err(_) => {
                let err = DriverError::new(ErrorKind::Rejected, "the driver is busy; try again");
                self.finish_set(
                    pending,
                    WriteOutcome {
                        applied: 0,
                        failed: Some((0, err)),
                    },
                )
                .await;
                None
            }
        }
    }

    async fn finish_set(&mut self, pending: PendingSet, outcome: WriteOutcome) {
        let failed = outcome.failed.as_ref().map(|(i, e)| (*i, e));
        self.count_set(if failed.is_some() {
            SetResult::Failed
        } else {
            SetResult::Ok
        });
        if let Some((i, e)) = failed {
            tracing::warn!(device = %self.name(), "$set write {i} refused: {e}");
        }
        let payload =
            command::result_payload(&self.settings, &pending.request, outcome.applied, failed);
        let payload = with_note(payload, pending.reply_note);
        self.send_result(payload, pending.reply_to, pending.http)
            .await;
    }

    /// Counts a command not executed (`fieldgate_mqtt_commands_ignored_total`).
    fn count_ignored(&self, reason: &str) {
        self.m
            .metrics
            .mqtt_commands_ignored
            .with_label_values(&[&self.session.client_id, reason])
            .inc();
    }

    /// Applies `mqtt.message.commandRate`: false when this command is over
    /// the rate; it is counted, and a `$set` gets a "rate limited" result
    /// at most once per second.
    async fn within_rate(&mut self, is_set: bool) -> bool {
        let rate = self.settings.message.command_rate;
        let limit = self.limit.get_or_insert_with(|| {
            Box::new(CommandLimit {
                rate: command::rate::RateLimit::new(rate),
                refused_at: None,
            })
        });
        if limit.rate.take() {
            return true;
        }
        let now = Instant::now();
        let answer = is_set
            && limit
                .refused_at
                .is_none_or(|at| now.duration_since(at) >= command::rate::REFUSAL_INTERVAL);
        let first = limit.refused_at.is_none();
        if answer {
            limit.refused_at = Some(now);
        }
        self.count_ignored(crate::mqtt::drops::CMD_RATE_LIMITED);
        if first {
            tracing::warn!(
                device = %self.name(),
                "commands arrive faster than mqtt.message.commandRate ({rate}/s): the excess is ignored and counted in fieldgate_mqtt_commands_ignored_total{{reason=\"rate_limited\"}}"
            );
        }
        if answer {
            let rejection = command::SetRejection {
                id: None,
                errors: vec![(
                    "$payload".into(),
                    format!("rate limited: more than {rate} commands per second; command ignored"),
                )],
            };
            self.send_result(command::rejection_payload(&rejection), None, None)
                .await;
        }
        false
    }

    fn count_set(&self, result: SetResult) {
        self.m.series.count_set(result);
    }

    async fn send_result(
        &self,
        json: Vec<u8>,
        reply_to: Option<(String, Option<Bytes>)>,
        http: Option<oneshot::Sender<Vec<u8>>>,
    ) {
        if let Some(http) = http {
            // The page may have given up waiting: nothing to do then.
            let _ = http.send(json.clone());
        }
        if self.sparkplug.is_some() {
            // Sparkplug has no result topic: the outcome is logged (and
            // counted by the caller); the read-back follows as DDATA.
            let ok = serde_json::from_slice::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v.get("ok").and_then(serde_json::Value::as_bool))
                .unwrap_or(false);
            let text = String::from_utf8_lossy(&json);
            if ok {
                tracing::info!(device = %self.name(), "Sparkplug DCMD applied: {text}");
            } else {
                tracing::warn!(device = %self.name(), "Sparkplug DCMD refused: {text}");
            }
            return;
        }
        let payload = self.encode(json);
        let qos = self.settings.message.qos;
        if let Some((topic, correlation)) = reply_to {
            self.publish(SessionInput::Publish(OutMsg {
                topic: topic.into(),
                payload: payload.clone(),
                qos,
                retain: false,
                correlation,
                props: Some(self.settings.message.result_props.clone()),
            }))
            .await;
        }
        self.publish(SessionInput::Publish(OutMsg {
            topic: self.topics.result.clone(),
            payload,
            qos,
            retain: false,
            correlation: None,
            props: Some(self.settings.message.result_props.clone()),
        }))
        .await;
    }
}

/// Adds `note` (why the response topic was not used) to a result's
/// `errors` as `$payload`, unless it already has one.
fn with_note(result: Vec<u8>, note: Option<String>) -> Vec<u8> {
    let Some(note) = note else {
        return result;
    };
    let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_slice(&result) else {
        return result;
    };
    if let Some(serde_json::Value::Object(errors)) = doc.get_mut("errors") {
        errors
            .entry("$payload")
            .or_insert(serde_json::Value::String(note));
    }
    serde_json::to_vec(&doc).unwrap_or(result)
}

async fn recv_outcome(
    in_flight: &mut Option<Box<InFlight>>,
) -> Result<WriteOutcome, oneshot::error::RecvError> {
    match in_flight {
        Some(f) => (&mut f.outcome).await,
        None => std::future::pending().await,
    }
}
