//! One running device: one task that polls the device's driver and runs the
//! actor that turns driver events into published state (`T`, `T/$state`,
//! `T/$meta`) and `$set` / `$get` commands into driver commands, one command
//! at a time, in order.
//!
//! Driver and actor share a task (rather than one task each) because a
//! gateway runs thousands of devices: a task, its waker traffic and the
//! channel between two tasks cost kilobytes per device.

mod actor;
mod commands;
mod publish;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fieldgate_drivers::{Buses, WriteOutcome};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::command::{self, SetRequest};
use crate::config::resolved::DeviceSettings;
use crate::mqtt::SessionHandle;
use crate::northbound::{sparkplug::NodeHandle, Dialect};
use crate::state::{self, DeviceState};
use crate::telemetry::{DeviceSeries, Metrics};

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
