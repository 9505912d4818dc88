//! What a session sends: the store fed into the in-flight window, packet
//! limits, acknowledgement timeouts, and drop counting.

use super::*;

impl Session {
    /// Counts what the store dropped for its age (`maxAge`) or the disk
    /// floor (`minFreeBytes`), and marks dropped retained topics.
    pub(super) fn count_store_drops(&mut self) {
        let drops = self.outbox.take_drops();
        if drops == Default::default() {
            return;
        }
        self.count_drop(crate::mqtt::drops::EXPIRED, drops.expired);
        self.count_drop(crate::mqtt::drops::DISK_FLOOR, drops.disk_floor);
        self.retained
            .note_dropped(self.outbox.take_dropped_retained());
        if drops.expired > 0 {
            tracing::debug!(session = %self.id(), "store: dropped {} message(s) older than maxAge", drops.expired);
        }
    }

    /// The store's timer: `maxAge` expiry and the disk floor.
    pub(super) fn store_tick(&mut self) {
        self.outbox.tick();
        self.count_store_drops();
        self.update_store_gauges();
        self.store_tick_at = self
            .outbox
            .needs_ticks()
            .then(|| Instant::now() + STORE_TICK);
    }

    /// Counts `n` messages dropped for `reason`.
    pub(super) fn count_drop(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.m
                .dropped_vec
                .with_label_values(&[&self.settings.client_id, reason])
                .inc_by(n);
        }
    }

    /// The largest packet the broker takes: its CONNACK maximum (MQTT 5)
    /// or the configured `maxPacketSize`, whichever is smaller.
    pub(super) fn packet_limit(&self) -> Option<usize> {
        match (self.broker_max_packet, self.settings.max_packet_size) {
            (Some(a), Some(b)) => Some(a.min(b) as usize),
            (a, b) => a.or(b).map(|n| n as usize),
        }
    }

    /// When the oldest unacknowledged message was handed out longer than
    /// `ackTimeout` ago: marks `/healthz` degraded and says why the
    /// connection is dropped. Otherwise schedules the next check.
    pub(super) fn ack_overdue(&mut self) -> Option<String> {
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
    pub(super) fn rewind_after_loss(&mut self) {
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
                self.count_drop(crate::mqtt::drops::REFUSED, 1);
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
    pub(super) fn too_large(&mut self, msg: Option<&OutMsg>, limit: Option<usize>) {
        let Some(msg) = msg else { return };
        self.count_drop(crate::mqtt::drops::TOO_LARGE, 1);
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
    pub(super) fn feed(&mut self) {
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
