//! The end of a session and the start of its successor: shutdown, the
//! hand-over of unsent messages, late messages passed on, the store opened.

use super::*;

impl Session {
    /// After a hand-over timed out: passes the undelivered messages to the
    /// successor's input; counts them dropped (`reason="handover"`) only
    /// when it is gone too.
    pub(super) async fn pass_late(
        &self,
        left: Vec<OutMsg>,
        successor: Option<mpsc::Sender<SessionInput>>,
    ) {
        let n = left.len();
        let lost = match successor {
            Some(next) => match next.send(SessionInput::Predecessor(left)).await {
                Ok(()) => 0,
                Err(_) => n,
            },
            None => n,
        };
        if lost > 0 {
            self.count_drop(crate::mqtt::drops::HANDOVER, lost as u64);
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
    pub(super) async fn take_late(&mut self) {
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
    pub(super) async fn open_store(&mut self, older: Vec<OutMsg>) {
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
                    self.count_drop(crate::mqtt::drops::STORE_DAMAGED, opened.damaged as u64);
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
    pub(super) async fn shutdown(
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
    pub(super) async fn disconnect(&mut self, link: &mut link::Link) {
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
}
