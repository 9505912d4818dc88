//! A session's connection events: connects and losses, the server of a
//! list in use, retained replay, and subscriptions.

use super::*;

impl Session {
    pub(super) async fn on_net(&mut self, ev: NetEvent, permits: &mpsc::Sender<usize>) {
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
                    self.count_drop(crate::mqtt::drops::REFUSED, 1);
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

    pub(super) fn on_connected(&mut self, session_present: bool) {
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
    pub(super) fn plan_replay(&mut self, session_present: bool, reconnect: bool) {
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
    pub(super) fn next_server(&mut self, lasted: Option<Duration>) -> Duration {
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
    pub(super) fn label_connected(&mut self, server: &str) {
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
    pub(super) async fn return_to_dialect(&mut self) {
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
    pub(super) fn restore_subscriptions(&mut self, session_present: bool) {
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
    pub(super) fn flush_subscriptions(&mut self) {
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
}
