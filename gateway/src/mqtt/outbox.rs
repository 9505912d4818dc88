//! The session's in-memory outbox: messages kept in order until the broker
//! has them (QoS 0: written to the socket; QoS 1/2: acknowledged), bounded by
//! a message count and a weight (bytes) with drop-oldest, and replayed in
//! order after a reconnect. The file store mirrors it on disk.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::OutMsg;

/// Where a stored message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting to be handed to the connection.
    Queued,
    /// Handed to the connection, not yet confirmed.
    Handed,
    /// Confirmed; removed once everything before it is confirmed too.
    Done,
}

#[derive(Debug)]
struct Entry {
    msg: OutMsg,
    stage: Stage,
    meta: Meta,
    /// Connections that ended while it was alone in flight, shortly after
    /// it was handed out (see [`Outbox::blame`]).
    tries: u8,
}

/// What the store knows about a message besides its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Sequence number in the file store (0 in the memory store).
    pub seq: u64,
    /// When it was stored, Unix milliseconds.
    pub stored_ms: u64,
    /// It waited for a connection (stored while offline, handed again after
    /// a reconnect, or recovered from disk): its hand-out is a replay.
    pub waited: bool,
    /// Weight counted against the weight bound (encoded record size).
    pub weight: u64,
}

/// Ids start high so a predecessor's messages can be prepended below them.
const FIRST_ID: u64 = 1 << 40;

/// Slots the queue keeps whatever it held before; above this, a queue that
/// drained to a quarter of its allocation gives half of it back, so a burst
/// (start-up, an outage) does not keep its memory for the months after.
const KEEP_SLOTS: usize = 256;

/// Topics of dropped retained messages remembered at most (see
/// [`Outbox::take_dropped_retained`]); past this the outbox only says that
/// more were dropped.
const DROPPED_RETAINED_MAX: usize = 1 << 16;

/// A bounded, ordered store of outgoing messages.
///
/// Ids are consecutive: the entry with id `front_id + i` is at index `i`.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    front_id: u64,
    /// Id of the next entry to hand out.
    cursor: u64,
    capacity: usize,
    max_weight: u64,
    weight: u64,
    /// The largest weight of a message pushed so far: with less room than
    /// this left, a message like it would drop the oldest.
    largest: u64,
    bytes: usize,
    dropped: u64,
    /// Handed publishes in hand-out order (entry id, hand-out time), waiting
    /// for their packet id.
    handed: VecDeque<Option<(u64, Instant)>>,
    /// Packet id → entry id and hand-out time for handed QoS 1/2 publishes.
    by_pkid: HashMap<u16, (u64, Instant)>,
    /// Topics of retained messages dropped to keep the bound, since the
    /// last [`Outbox::take_dropped_retained`].
    dropped_retained: Vec<std::sync::Arc<str>>,
    /// More retained messages were dropped than `dropped_retained` holds.
    dropped_retained_overflow: bool,
}

/// Retained topics whose latest message the outbox dropped (see
/// [`Outbox::take_dropped_retained`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DroppedRetained {
    /// The topics, in drop order (may repeat).
    pub topics: Vec<std::sync::Arc<str>>,
    /// More were dropped than listed: the caller cannot know which.
    pub overflow: bool,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` (≥ 1) messages.
    pub fn new(capacity: usize) -> Self {
        Self::with_bounds(capacity, u64::MAX)
    }

    /// An empty outbox holding at most `capacity` (≥ 1) messages whose
    /// weights sum to at most `max_weight`.
    pub fn with_bounds(capacity: usize, max_weight: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            front_id: FIRST_ID,
            cursor: FIRST_ID,
            capacity: capacity.max(1),
            max_weight,
            weight: 0,
            largest: 0,
            bytes: 0,
            dropped: 0,
            handed: VecDeque::new(),
            by_pkid: HashMap::new(),
            dropped_retained: Vec::new(),
            dropped_retained_overflow: false,
        }
    }

    /// Remembers the topic of a dropped retained message.
    fn note_dropped(&mut self, msg: &OutMsg) {
        if !msg.retain {
            return;
        }
        if self.dropped_retained.len() < DROPPED_RETAINED_MAX {
            self.dropped_retained.push(msg.topic.clone());
        } else {
            self.dropped_retained_overflow = true;
        }
    }

    /// The topics of retained messages dropped to keep the bound since the
    /// last call: the broker may not have their latest value.
    pub fn take_dropped_retained(&mut self) -> DroppedRetained {
        DroppedRetained {
            topics: std::mem::take(&mut self.dropped_retained),
            overflow: std::mem::take(&mut self.dropped_retained_overflow),
        }
    }

    /// Messages held (queued, handed or awaiting acknowledgement).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when one more message (as heavy as the heaviest so far) would
    /// drop the oldest.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
            || self.weight >= self.max_weight
            || self.weight.saturating_add(self.largest) > self.max_weight
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages dropped because the outbox was full, since creation.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages handed out and not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.handed.len() + self.by_pkid.len()
    }

    /// Weight held (sum of the messages' [`Meta::weight`]).
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// The oldest message's [`Meta`], if any.
    pub fn front_meta(&self) -> Option<Meta> {
        self.entries.front().map(|e| e.meta)
    }

    /// The weight bound.
    pub fn max_weight(&self) -> u64 {
        self.max_weight
    }

    /// Changes the weight bound (the file store's disk floor lowers it
    /// while the disk is short of space) and drops the oldest messages
    /// until the weight fits. Returns how many were dropped.
    pub fn set_max_weight(&mut self, max_weight: u64) -> u64 {
        self.max_weight = max_weight;
        let mut dropped = 0;
        while self.weight > self.max_weight {
            let Some(e) = self.pop_front() else { break };
            self.note_dropped(&e.msg);
            self.dropped += 1;
            dropped += 1;
        }
        dropped
    }

    /// Drops the oldest messages stored before `cutoff_ms` (Unix ms) that
    /// are not handed out (a message in flight is left to its
    /// acknowledgement). Returns how many were dropped; they are not
    /// counted in [`Outbox::dropped`] (their reason is their age).
    pub fn expire(&mut self, cutoff_ms: u64) -> u64 {
        let mut expired = 0;
        while self
            .entries
            .front()
            .is_some_and(|e| e.stage != Stage::Handed && e.meta.stored_ms < cutoff_ms)
        {
            if let Some(e) = self.pop_front() {
                if e.stage != Stage::Done {
                    self.note_dropped(&e.msg);
                    expired += 1;
                }
            }
        }
        expired
    }

    /// Appends a message; when full, drops the oldest message first.
    /// Returns how many were dropped.
    pub fn push(&mut self, msg: OutMsg) -> u64 {
        self.push_with(msg, Meta::default())
    }

    /// Appends a message without dropping any, even past the bounds: for
    /// messages already accepted elsewhere (see `Store::open`). The outbox
    /// is full until it drains below them.
    pub fn push_past_bound(&mut self, msg: OutMsg, meta: Meta) {
        self.largest = self.largest.max(meta.weight);
        self.bytes += msg.payload.len();
        self.weight += meta.weight;
        self.entries.push_back(Entry {
            msg,
            stage: Stage::Queued,
            meta,
            tries: 0,
        });
    }

    /// Appends a message with its [`Meta`]; when the count or weight bound
    /// would be exceeded, drops the oldest messages first. A message heavier
    /// than the whole bound is itself dropped. Returns how many were dropped.
    pub fn push_with(&mut self, msg: OutMsg, meta: Meta) -> u64 {
        if meta.weight > self.max_weight {
            self.note_dropped(&msg);
            self.dropped += 1;
            return 1;
        }
        let mut dropped = 0;
        while !self.entries.is_empty()
            && (self.entries.len() >= self.capacity
                || self.weight.saturating_add(meta.weight) > self.max_weight)
        {
            if let Some(e) = self.pop_front() {
                self.note_dropped(&e.msg);
            }
            self.dropped += 1;
            dropped += 1;
        }
        self.push_past_bound(msg, meta);
        dropped
    }

    /// Puts older messages (a predecessor session's) in front of what is
    /// queued, keeping the capacity bound by dropping the oldest. Only valid
    /// before anything was handed out. Returns how many were dropped.
    pub fn prepend(&mut self, older: Vec<OutMsg>) -> u64 {
        let room = self.capacity.saturating_sub(self.entries.len());
        let skip = older.len().saturating_sub(room);
        let mut dropped = skip as u64;
        for msg in &older[..skip] {
            self.note_dropped(msg);
        }
        for msg in older.into_iter().skip(skip).rev() {
            self.bytes += msg.payload.len();
            self.entries.push_front(Entry {
                msg,
                stage: Stage::Queued,
                meta: Meta {
                    waited: true,
                    ..Meta::default()
                },
                tries: 0,
            });
            self.front_id -= 1;
        }
        self.cursor = self.front_id;
        while self.entries.len() > self.capacity {
            if let Some(e) = self.pop_front() {
                self.note_dropped(&e.msg);
            }
            dropped += 1;
        }
        self.dropped += dropped;
        dropped
    }

    /// Everything not yet confirmed, oldest first; empties the outbox.
    pub fn drain_unconfirmed(&mut self) -> Vec<OutMsg> {
        self.front_id += self.entries.len() as u64;
        self.cursor = self.front_id;
        let left = self
            .entries
            .drain(..)
            .filter(|e| e.stage != Stage::Done)
            .map(|e| e.msg)
            .collect();
        self.bytes = 0;
        self.weight = 0;
        self.handed.clear();
        self.by_pkid.clear();
        left
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        {
            self.bytes -= e.msg.payload.len();
            self.weight -= e.meta.weight;
            self.front_id += 1;
            if self.cursor < self.front_id {
                self.cursor = self.front_id;
            }
            let allocated = self.entries.capacity();
            if allocated > KEEP_SLOTS && self.entries.len() <= allocated / 4 {
                self.entries.shrink_to(allocated / 2);
            }
        }
        Some(e)
    }

    fn entry_mut(&mut self, id: u64) -> Option<&mut Entry> {
        let index = id.checked_sub(self.front_id)?;
        self.entries.get_mut(usize::try_from(index).ok()?)
    }

    /// The next message to hand to the connection, if any (not yet marked).
    pub fn peek_queued(&self) -> Option<&OutMsg> {
        let index = usize::try_from(self.cursor - self.front_id).ok()?;
        self.entries.get(index).map(|e| &e.msg)
    }

    /// Marks the message [`Outbox::peek_queued`] returned as handed out.
    /// Returns true when this hand-out is a replay (see [`Meta::waited`]).
    pub fn mark_handed(&mut self) -> bool {
        let id = self.cursor;
        let Some(entry) = self.entry_mut(id) else {
            return false;
        };
        entry.stage = Stage::Handed;
        let waited = entry.meta.waited;
        self.cursor += 1;
        self.handed.push_back(Some((id, Instant::now())));
        self.skip_confirmed();
        waited
    }

    /// Moves the cursor past entries already confirmed (acknowledged before
    /// a reconnect re-queued an older one).
    fn skip_confirmed(&mut self) {
        while let Some(e) = usize::try_from(self.cursor - self.front_id)
            .ok()
            .and_then(|i| self.entries.get(i))
        {
            if e.stage != Stage::Done {
                break;
            }
            self.cursor += 1;
        }
    }

    /// Drops the message [`Outbox::peek_queued`] returned without handing
    /// it out (it can never be sent: larger than the broker takes).
    pub fn drop_queued(&mut self) {
        let id = self.cursor;
        let Some(entry) = self.entry_mut(id) else {
            return;
        };
        entry.stage = Stage::Done;
        self.cursor += 1;
        self.complete(id);
        self.skip_confirmed();
    }

    /// When the oldest handed-out message still waiting for its packet id
    /// or acknowledgement was handed out, if any.
    pub fn oldest_unconfirmed_since(&self) -> Option<Instant> {
        let handed = self.handed.iter().flatten().map(|(_, at)| *at);
        self.by_pkid.values().map(|(_, at)| *at).chain(handed).min()
    }

    /// Ids of the handed-out, unconfirmed messages handed out less than
    /// `window` ago (the suspects when a connection ends at once).
    pub fn recent_unconfirmed(&self, window: Duration) -> Vec<u64> {
        self.handed
            .iter()
            .flatten()
            .chain(self.by_pkid.values())
            .filter(|(_, at)| at.elapsed() < window)
            .map(|(id, _)| *id)
            .collect()
    }

    /// After [`Outbox::rewind`]: counts one try of message `id`, which
    /// was alone in flight when the connection ended (a broker closes the
    /// connection on a packet it refuses: over its size limit, not
    /// authorised). At `max_tries` it is dropped: returns its topic and
    /// payload size.
    pub fn blame(&mut self, id: u64, max_tries: u8) -> Option<(std::sync::Arc<str>, usize)> {
        let entry = self.entry_mut(id)?;
        if entry.stage == Stage::Done {
            return None;
        }
        entry.tries = entry.tries.saturating_add(1);
        if entry.tries < max_tries {
            return None;
        }
        let gone = (entry.msg.topic.clone(), entry.msg.payload.len());
        entry.stage = Stage::Done;
        self.complete(id);
        self.skip_confirmed();
        Some(gone)
    }

    /// True when every message up to id `id` is confirmed (or dropped).
    pub fn confirmed_through(&self, id: u64) -> bool {
        self.front_id > id
    }

    /// Records a publish that bypasses the store (birth, retained replays) so
    /// that packet ids stay matched with hand-out order.
    pub fn note_transient(&mut self) {
        self.handed.push_back(None);
    }

    /// The connection wrote a publish with packet id `pkid` (0 for QoS 0):
    /// matches it with the oldest handed message.
    pub fn on_written(&mut self, pkid: u16) {
        let Some(slot) = self.handed.pop_front() else {
            return;
        };
        let Some((id, at)) = slot else { return };
        if pkid == 0 {
            self.complete(id);
        } else {
            self.by_pkid.insert(pkid, (id, at));
        }
    }

    /// The broker acknowledged packet id `pkid` (PUBACK or PUBCOMP).
    /// Returns the time since the message was handed out.
    pub fn on_acked(&mut self, pkid: u16) -> Option<Duration> {
        let (id, at) = self.by_pkid.remove(&pkid)?;
        self.complete(id);
        Some(at.elapsed())
    }

    fn complete(&mut self, id: u64) {
        if let Some(e) = self.entry_mut(id) {
            e.stage = Stage::Done;
        }
        while self.entries.front().is_some_and(|e| e.stage == Stage::Done) {
            self.pop_front();
        }
    }

    /// The connection was lost: everything handed but unconfirmed goes back
    /// to the queue, to be handed again in order after the reconnect.
    pub fn rewind(&mut self) {
        self.handed.clear();
        self.by_pkid.clear();
        let mut first_unconfirmed = None;
        for (i, e) in self.entries.iter_mut().enumerate() {
            if e.stage == Stage::Handed {
                e.stage = Stage::Queued;
                e.meta.waited = true;
                first_unconfirmed.get_or_insert(i);
            }
        }
        if let Some(i) = first_unconfirmed {
            self.cursor = self.cursor.min(self.front_id + i as u64);
        }
        // Confirmed entries behind a re-queued one are not sent again.
        self.skip_confirmed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(n: u32, qos: u8) -> OutMsg {
        OutMsg {
            topic: "t".into(),
            payload: Bytes::from(n.to_string()),
            qos,
            retain: false,
            correlation: None,
            props: None,
        }
    }

    fn hand(o: &mut Outbox) -> Option<String> {
        let text = String::from_utf8_lossy(&o.peek_queued()?.payload).into_owned();
        o.mark_handed();
        Some(text)
    }

    #[test]
    fn qos0_leaves_when_written_qos1_when_acked() {
        let mut o = Outbox::new(10);
        o.push(msg(1, 0));
        o.push(msg(2, 1));
        assert_eq!(hand(&mut o).as_deref(), Some("1"));
        assert_eq!(hand(&mut o).as_deref(), Some("2"));
        assert_eq!(hand(&mut o), None);
        o.on_written(0);
        assert_eq!(o.len(), 1);
        o.on_written(7);
        assert_eq!(o.len(), 1, "written but not acked");
        o.on_acked(7);
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let mut o = Outbox::new(10_000);
        for n in 0..5_000 {
            o.push(msg(n, 0));
        }
        let burst = o.entries.capacity();
        assert!(burst >= 5_000);
        for _ in 0..5_000 {
            hand(&mut o);
            o.on_written(0);
        }
        assert!(o.is_empty());
        assert!(
            o.entries.capacity() <= KEEP_SLOTS * 2,
            "{} slots kept after a burst of {burst}",
            o.entries.capacity()
        );
    }

    #[test]
    fn full_outbox_drops_oldest_and_counts() {
        let mut o = Outbox::new(3);
        for n in 1..=5 {
            o.push(msg(n, 1));
        }
        assert_eq!(o.len(), 3);
        assert_eq!(o.dropped(), 2);
        assert_eq!(hand(&mut o).as_deref(), Some("3"));
    }

    #[test]
    fn rewind_replays_unacked_in_order_and_skips_acked() {
        let mut o = Outbox::new(10);
        for n in 1..=4 {
            o.push(msg(n, 1));
        }
        for pkid in 1..=3 {
            hand(&mut o);
            o.on_written(pkid);
        }
        // Broker acks 2 but not 1 and 3, then the connection drops.
        o.on_acked(2);
        o.rewind();
        let replay: Vec<_> = std::iter::from_fn(|| hand(&mut o)).collect();
        assert_eq!(replay, vec!["1", "3", "4"]);
    }

    #[test]
    fn acks_out_of_order_release_from_the_front_only() {
        let mut o = Outbox::new(10);
        for n in 1..=3 {
            o.push(msg(n, 1));
            hand(&mut o);
            o.on_written(n as u16);
        }
        o.on_acked(3);
        assert_eq!(o.len(), 3);
        o.on_acked(1);
        assert_eq!(o.len(), 2);
        o.on_acked(2);
        assert!(o.is_empty());
    }

    #[test]
    fn transient_publishes_keep_pkids_aligned() {
        let mut o = Outbox::new(10);
        o.push(msg(1, 1));
        o.note_transient();
        hand(&mut o);
        o.on_written(0); // the transient one
        o.on_written(5);
        o.on_acked(5);
        assert!(o.is_empty());
    }

    #[test]
    fn carried_messages_go_past_the_bound_and_the_outbox_stays_full_until_drained() {
        let mut o = Outbox::new(2);
        o.push(msg(1, 1));
        o.push(msg(2, 1));
        o.push_past_bound(msg(3, 1), Meta::default());
        assert_eq!((o.len(), o.dropped()), (3, 0));
        assert!(o.is_full());
        let all: Vec<_> = std::iter::from_fn(|| hand(&mut o)).collect();
        assert_eq!(all, vec!["1", "2", "3"]);
    }

    #[test]
    fn prepend_puts_a_predecessors_messages_first_within_capacity() {
        let mut o = Outbox::new(4);
        o.push(msg(10, 1));
        o.push(msg(11, 1));
        let dropped = o.prepend(vec![msg(1, 1), msg(2, 1), msg(3, 1)]);
        assert_eq!(dropped, 1);
        let all: Vec<_> = std::iter::from_fn(|| hand(&mut o)).collect();
        assert_eq!(all, vec!["2", "3", "10", "11"]);
    }

    #[test]
    fn drain_returns_unconfirmed_in_order() {
        let mut o = Outbox::new(10);
        for n in 1..=3 {
            o.push(msg(n, 1));
            hand(&mut o);
            o.on_written(n as u16);
        }
        o.on_acked(2);
        let left: Vec<_> = o
            .drain_unconfirmed()
            .into_iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        assert_eq!(left, vec!["1", "3"]);
        assert!(o.is_empty());
        o.push(msg(4, 0));
        assert_eq!(hand(&mut o).as_deref(), Some("4"));
    }

    #[test]
    fn weight_bound_drops_oldest_and_oversized() {
        let mut o = Outbox::with_bounds(100, 10);
        let w = |weight| Meta {
            weight,
            ..Meta::default()
        };
        assert_eq!(o.push_with(msg(1, 1), w(4)), 0);
        assert_eq!(o.push_with(msg(2, 1), w(4)), 0);
        assert_eq!(o.push_with(msg(3, 1), w(4)), 1, "1 makes room");
        assert_eq!(o.weight(), 8);
        assert_eq!(o.push_with(msg(4, 1), w(11)), 1, "heavier than the bound");
        assert_eq!(o.len(), 2);
        assert_eq!(o.dropped(), 2);
        assert_eq!(hand(&mut o).as_deref(), Some("2"));
    }

    #[test]
    fn full_means_a_message_as_heavy_as_the_heaviest_would_drop_the_oldest() {
        let mut o = Outbox::with_bounds(100, 10);
        let w = |weight| Meta {
            weight,
            ..Meta::default()
        };
        o.push_with(msg(1, 1), w(4));
        assert!(!o.is_full(), "room for another 4");
        o.push_with(msg(2, 1), w(4));
        // 8 of 10: not at the bound, but a third 4 would drop the oldest.
        assert!(o.is_full());
        assert_eq!(o.push_with(msg(3, 1), w(4)), 1);
        // An oversized message is refused and does not count as the heaviest.
        let mut o = Outbox::with_bounds(100, 10);
        o.push_with(msg(1, 1), w(11));
        o.push_with(msg(2, 1), w(2));
        assert!(!o.is_full());
    }

    #[test]
    fn replays_are_flagged_and_ack_latency_measured() {
        let mut o = Outbox::new(10);
        o.push(msg(1, 1));
        assert!(!o.mark_handed(), "first hand-out while connected");
        o.on_written(1);
        o.rewind();
        assert!(o.mark_handed(), "handed again after a reconnect");
        o.on_written(2);
        assert!(o.on_acked(2).is_some());
        assert!(o.on_acked(2).is_none(), "a duplicate ack matches nothing");
        assert!(o.is_empty());
    }

    #[test]
    fn dropping_a_handed_message_is_safe() {
        let mut o = Outbox::new(1);
        o.push(msg(1, 1));
        hand(&mut o);
        o.on_written(1);
        o.push(msg(2, 1));
        assert_eq!(o.dropped(), 1);
        o.on_acked(1);
        assert_eq!(o.len(), 1);
        assert_eq!(hand(&mut o).as_deref(), Some("2"));
    }
}
