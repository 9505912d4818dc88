//! The device task's loop: driver events, control requests, queued commands and heartbeats; the device's online state.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use fieldgate_drivers::{
    Buses, DeviceEvent, DeviceLink, DriverError, ErrorKind, Readings, WriteOutcome,
};
use futures_util::FutureExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::resolved::DeviceSettings;
use crate::deadline::sleep_until_opt;
use crate::mqtt::{Inbound, Inbox, PayloadBuilder, SessionHandle, SessionInput};
use crate::northbound::sparkplug::node::NodeInput;
use crate::state::{self, DeviceState};
use crate::telemetry::Metrics;

use super::commands::recv_outcome;
use super::{
    sparkplug_of, Actor, Control, DeviceMetrics, InFlight, PendingSet, Snapshot, Topics,
    COMMAND_QUEUE, DRIVER_STOP_GRACE, EVENT_QUEUE, INBOX,
};

impl Actor {
    pub(super) fn new(
        settings: Arc<DeviceSettings>,
        session: SessionHandle,
        metrics: Metrics,
    ) -> Self {
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

    pub(super) fn name(&self) -> &str {
        &self.settings.name
    }

    pub(super) async fn run(mut self: Box<Self>, buses: Buses, control: flume::Receiver<Control>) {
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
    pub(super) async fn announce(&self, meta: &PayloadBuilder, inbox: &Inbox) {
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

    pub(super) async fn on_event(&mut self, ev: DeviceEvent) {
        match ev {
            DeviceEvent::Readings(r) => self.on_readings(&r).await,
            DeviceEvent::Online => self.set_online(true, None).await,
            DeviceEvent::Offline(e) => self.set_online(false, Some(e)).await,
        }
    }

    pub(super) async fn on_readings(&mut self, r: &Readings) {
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
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            online: self.online,
            offline_reason: self.offline_reason.as_deref().map(str::to_owned),
            last_reading: self.state.last_reading(),
            values: self.state.current(),
        }
    }

    pub(super) async fn set_online(&mut self, online: bool, reason: Option<DriverError>) {
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
}
