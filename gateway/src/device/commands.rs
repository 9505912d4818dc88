//! `$set` / `$get` commands: rate limit, queue, the driver's write and the result message.

use std::collections::VecDeque;

use bytes::Bytes;
use fieldgate_drivers::{CommandSender, DeviceCommand, DriverError, ErrorKind, WriteOutcome};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::command;
use crate::config::types::PayloadEncode;
use crate::mqtt::{Inbound, OutMsg, SessionInput};
use crate::telemetry::SetResult;

use super::{Actor, CommandLimit, InFlight, PendingSet, INBOX, WRITE_DEADLINE_FLOOR};

impl Actor {
    /// A `$set` or `$get` from the session (`http: None`) or a `$set` from
    /// the status page (`http`: where its result goes; its payload is plain
    /// JSON whatever the device's `payloadEncode`).
    pub(super) async fn on_inbound(
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

    pub(super) async fn start_set(
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

    pub(super) async fn finish_set(&mut self, pending: PendingSet, outcome: WriteOutcome) {
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
    pub(super) fn count_ignored(&self, reason: &str) {
        self.m
            .metrics
            .mqtt_commands_ignored
            .with_label_values(&[&self.session.client_id, reason])
            .inc();
    }

    /// Applies `mqtt.message.commandRate`: false when this command is over
    /// the rate; it is counted, and a `$set` gets a "rate limited" result
    /// at most once per second.
    pub(super) async fn within_rate(&mut self, is_set: bool) -> bool {
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

    pub(super) fn count_set(&self, result: SetResult) {
        self.m.series.count_set(result);
    }

    pub(super) async fn send_result(
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
pub(super) fn with_note(result: Vec<u8>, note: Option<String>) -> Vec<u8> {
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

pub(super) async fn recv_outcome(
    in_flight: &mut Option<Box<InFlight>>,
) -> Result<WriteOutcome, oneshot::error::RecvError> {
    match in_flight {
        Some(f) => (&mut f.outcome).await,
        None => std::future::pending().await,
    }
}
