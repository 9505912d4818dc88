//! The per-device loop: poll timer, forced reads and writes, submitted to the bus task.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::modbus::plan::Plan;
use crate::modbus::ModbusConnection;
use crate::{
    Backoff, DataType, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, ErrorKind,
    PropertyAddress, PropertySpec, ReadCause, Readings, Value, WriteOutcome,
};

use super::{Attachment, Done, Job, Work, WriteItem, REMERGE_EVERY, UNIT_BACKOFF_MAX};

/// The device side: its schedule, offline state and backoff.
pub(super) struct DeviceLoop {
    /// Device name (for logs).
    pub(super) name: String,
    pub(super) sync_interval: Duration,
    pub(super) timeout: Duration,
    pub(super) properties: Arc<[PropertySpec]>,
    pub(super) unit: u8,
    pub(super) plan: Option<Arc<Plan>>,
    /// The merged plan, restored every [`REMERGE_EVERY`] cycles after splits
    /// (the same allocation as `plan` until a split).
    pub(super) merged: Arc<Plan>,
    pub(super) cycles: u32,
    pub(super) attachment: Attachment,
    pub(super) online: Option<bool>,
    pub(super) offline_reason: Option<String>,
    pub(super) backoff: Backoff,
    pub(super) paused_until: Option<Instant>,
}

impl DeviceLoop {
    pub(super) fn new(spec: DeviceSpec, conn: &ModbusConnection, attachment: Attachment) -> Self {
        let plan = Arc::new(Plan::for_device(
            &spec,
            conn.max_registers_per_read,
            conn.max_gap,
        ));
        let initial = spec.sync_interval.max(Duration::from_millis(100));
        Self {
            unit: conn.unit_id,
            merged: Arc::clone(&plan),
            plan: Some(plan),
            cycles: 0,
            attachment,
            online: None,
            offline_reason: None,
            backoff: Backoff::new(initial, UNIT_BACKOFF_MAX.max(initial)),
            paused_until: None,
            // Not the whole spec: its connection settings are the bus's.
            name: spec.name,
            sync_interval: spec.sync_interval,
            timeout: spec.timeout,
            properties: spec.properties,
        }
    }

    /// Polls and writes until cancelled. An async block rather than an
    /// async fn: a function's arguments would be stored twice in its future
    /// (as arguments and as locals), and every device holds this future.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn: see above
    pub(super) fn run(
        mut self,
        mut link: DeviceLink,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let mut ticker =
                tokio::time::interval(self.sync_interval.max(Duration::from_millis(1)));
            // On the syncInterval grid: with Delay each tick handled late moved
            // every later poll back, losing polls on a busy machine.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                let keep_going = tokio::select! {
                    biased;
                    _ = link.cancel.cancelled() => false,
                    cmd = link.commands.recv() => match cmd {
                        None => false,
                        Some(DeviceCommand::ReadNow) => self.read(&link, ReadCause::Forced).await,
                        Some(DeviceCommand::Write { writes, reply }) => {
                            self.write(&link, writes, reply).await
                        }
                    },
                    _ = ticker.tick() => {
                        if self.paused_until.is_some_and(|until| Instant::now() < until) {
                            true
                        } else {
                            self.read(&link, ReadCause::Poll).await
                        }
                    }
                };
                if !keep_going {
                    return;
                }
            }
        }
    }

    /// Sends a job and waits for its answer; `None` when cancelled or the bus is gone.
    pub(super) async fn submit(&self, link: &DeviceLink, work: Work, urgent: bool) -> Option<Done> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            unit: self.unit,
            timeout: self.timeout,
            work,
            reply,
        };
        let queue = if urgent {
            &self.attachment.queues.urgent
        } else {
            &self.attachment.queues.poll
        };
        tokio::select! {
            _ = link.cancel.cancelled() => return None,
            sent = queue.send_async(job) => sent.ok()?,
        }
        tokio::select! {
            _ = link.cancel.cancelled() => None,
            done = answer => done.ok(),
        }
    }

    /// Sends an event unless cancelled; false when the device must stop.
    pub(super) async fn emit(&self, link: &DeviceLink, event: DeviceEvent) -> bool {
        tokio::select! {
            _ = link.cancel.cancelled() => false,
            sent = link.events.send(event) => sent.is_ok(),
        }
    }

    pub(super) async fn read(&mut self, link: &DeviceLink, cause: ReadCause) -> bool {
        let Some(mut plan) = self.plan.take() else {
            return false;
        };
        self.cycles = self.cycles.wrapping_add(1);
        if self.cycles.is_multiple_of(REMERGE_EVERY) && !Arc::ptr_eq(&plan, &self.merged) {
            // Refusals may have been temporary: try the merged reads again.
            plan = Arc::clone(&self.merged);
        }
        let Some(Done::Read(plan, cycle)) = self
            .submit(link, Work::Read(plan), cause == ReadCause::Forced)
            .await
        else {
            return false;
        };
        self.plan = Some(plan);
        if cycle.answered {
            self.backoff.reset();
            self.paused_until = None;
            self.offline_reason = None;
            if self.online != Some(true) {
                self.online = Some(true);
                info!(device = %self.name, "online");
                if !self.emit(link, DeviceEvent::Online).await {
                    return false;
                }
            }
        } else if let Some(err) = cycle.failure.clone() {
            if err.kind == ErrorKind::Timeout && cause == ReadCause::Poll {
                // A silent unit is skipped for a while so it costs its
                // neighbours on the bus at most one timeout per attempt.
                self.paused_until = Some(Instant::now() + self.backoff.next_delay());
            }
            let changed = self.online != Some(false)
                || self.offline_reason.as_deref() != Some(err.message.as_str());
            self.online = Some(false);
            if changed {
                warn!(device = %self.name, error = %err, "offline");
                self.offline_reason = Some(err.message.clone());
                if !self.emit(link, DeviceEvent::Offline(err)).await {
                    return false;
                }
            }
        }
        let readings = Readings {
            at: SystemTime::now(),
            cause,
            values: cycle.values,
            duration: (cause == ReadCause::Poll).then_some(cycle.duration),
        };
        self.emit(link, DeviceEvent::Readings(readings)).await
    }

    pub(super) async fn write(
        &mut self,
        link: &DeviceLink,
        writes: Vec<(usize, Value)>,
        reply: oneshot::Sender<WriteOutcome>,
    ) -> bool {
        let items = writes
            .into_iter()
            .map(|(index, value)| match self.properties.get(index) {
                Some(p) => WriteItem {
                    data_type: p.data_type,
                    address: match &p.address {
                        PropertyAddress::Modbus(a) => Some(a.clone()),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    },
                    writable: p.writable,
                    value,
                    exists: true,
                },
                None => WriteItem {
                    data_type: DataType::Bool,
                    address: None,
                    writable: false,
                    value,
                    exists: false,
                },
            })
            .collect();
        let Some(Done::Write(outcome)) = self.submit(link, Work::Write(items), true).await else {
            return false;
        };
        let _ = reply.send(outcome);
        self.read(link, ReadCause::Forced).await
    }
}
