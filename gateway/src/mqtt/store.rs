//! The session's store: one abstraction over the memory store (the
//! [`Outbox`] alone, `messageChannelDepth` messages) and the file store (the
//! same outbox mirrored by an append-only [`FileLog`], bounded by
//! `maxBytes`). Both keep messages in order, drop the oldest when full,
//! release QoS 0 when written and QoS 1/2 when acknowledged, and replay
//! unconfirmed messages in order after a reconnect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::filestore::{self, FileLog, StoreError};
use super::outbox::{Meta, Outbox};
use super::OutMsg;
use crate::config::resolved::StoreSettings;

/// What opening the store found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Messages recovered from disk.
    pub recovered: usize,
    /// Damaged places cut off during recovery.
    pub damaged: usize,
    /// Messages dropped to fit the bound.
    pub dropped: u64,
}

/// Messages the store dropped for reasons other than its bound, since the
/// last [`Store::take_drops`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// Older than `maxAge` (`reason="expired"`).
    pub expired: u64,
    /// Dropped to keep `minFreeBytes` free on the disk
    /// (`reason="disk_floor"`).
    pub disk_floor: u64,
}

enum Backing {
    Memory,
    /// File store not opened yet (or failed to open: memory only).
    FilePending {
        dir: PathBuf,
        max_bytes: u64,
        min_free: u64,
    },
    File {
        log: FileLog,
        next_seq: u64,
    },
}

/// An ordered, bounded store of outgoing messages.
pub struct Store {
    outbox: Outbox,
    backing: Backing,
    /// `maxAge`: older messages are dropped.
    max_age: Option<Duration>,
    /// The weight bound `maxBytes` allows (the disk floor may lower it).
    live_max: u64,
    /// Segment size of the file store (the disk floor's margin).
    segment: u64,
    /// The disk floor lowers the bound now.
    floor_limited: bool,
    drops: Drops,
}

/// Milliseconds since the Unix epoch on a clock that never jumps: the wall
/// clock as read at the first call, advanced by the monotonic clock since.
/// Store ages (and the time stamped into the file store) stay right when
/// the system clock is set by days, e.g. when NTP first synchronises a
/// board without a real-time clock.
fn now_ms() -> u64 {
    static ANCHOR: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (at, wall_ms) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        (std::time::Instant::now(), wall)
    });
    wall_ms.saturating_add(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// A store per `settings`; a file store starts working on [`Store::open`]
    /// (until then it holds messages in memory within the same bound).
    pub fn new(settings: &StoreSettings, message_channel_depth: usize) -> Self {
        match settings {
            StoreSettings::Memory => Self {
                outbox: Outbox::new(message_channel_depth),
                backing: Backing::Memory,
                max_age: None,
                live_max: u64::MAX,
                segment: 0,
                floor_limited: false,
                drops: Drops::default(),
            },
            StoreSettings::File {
                directory,
                max_bytes,
                max_age,
                min_free_bytes,
            } => Self {
                outbox: Outbox::with_bounds(usize::MAX, filestore::live_bound(*max_bytes)),
                backing: Backing::FilePending {
                    dir: directory.clone(),
                    max_bytes: *max_bytes,
                    min_free: *min_free_bytes,
                },
                max_age: *max_age,
                live_max: filestore::live_bound(*max_bytes),
                segment: filestore::segment_size(*max_bytes),
                floor_limited: false,
                drops: Drops::default(),
            },
        }
    }

    /// Opens the store before first use: a file store recovers what its
    /// directory holds (off the runtime's worker threads). `older` are a
    /// predecessor session's undelivered messages; they go after recovered
    /// ones and before anything pushed so far. Only valid before anything
    /// was handed out.
    pub async fn open(&mut self, older: Vec<OutMsg>) -> Result<Opened, StoreError> {
        let (dir, max_bytes, min_free) = match &self.backing {
            Backing::FilePending {
                dir,
                max_bytes,
                min_free,
            } => (dir.clone(), *max_bytes, *min_free),
            Backing::Memory | Backing::File { .. } => {
                let dropped = self.outbox.prepend(older);
                return Ok(Opened {
                    dropped,
                    ..Opened::default()
                });
            }
        };
        let opened = tokio::task::spawn_blocking(move || {
            let mut recovery = filestore::recover(&dir)?;
            let log = FileLog::start(&dir, max_bytes, min_free, &mut recovery)?;
            Ok::<_, StoreError>((recovery, log))
        })
        .await;
        let (recovery, log) = match opened {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                // Keep working from memory within the same bound.
                self.outbox.prepend(older);
                return Err(e);
            }
            Err(join) => {
                self.outbox.prepend(older);
                return Err(StoreError::Thread(std::io::Error::other(join.to_string())));
            }
        };
        let queued = self.outbox.drain_unconfirmed();
        let dropped_before = self.outbox.dropped();
        let mut opened = Opened {
            recovered: recovery.messages.len(),
            damaged: recovery.damaged,
            dropped: 0,
        };
        for stored in recovery.messages {
            let weight = filestore::encode_message(stored.seq, stored.stored_ms, &stored.msg).len();
            let meta = Meta {
                seq: stored.seq,
                stored_ms: stored.stored_ms,
                waited: true,
                weight: weight as u64,
            };
            self.outbox.push_with(stored.msg, meta);
        }
        self.backing = Backing::File {
            log,
            next_seq: recovery.next_seq,
        };
        // What the session held before the directory was free (a
        // predecessor's late messages, its own in-flight ones) was accepted
        // already: it goes on top of what was on disk even past `maxBytes`
        // (at most one more bound's worth: the pending store had the same
        // bound). The session then pushes back until the broker drains it;
        // only the disk floor still drops.
        for msg in older.into_iter().chain(queued) {
            self.push_carried(msg).await;
        }
        self.expire();
        self.release();
        opened.dropped = self.outbox.dropped() - dropped_before;
        Ok(opened)
    }

    /// True for a file store that is open (it holds its directory).
    pub fn is_open_file(&self) -> bool {
        matches!(self.backing, Backing::File { .. })
    }

    /// True for a file store not open yet (or whose opening failed: it
    /// works from memory meanwhile).
    pub fn needs_open(&self) -> bool {
        matches!(self.backing, Backing::FilePending { .. })
    }

    /// True for a file store (open or not).
    pub fn is_file(&self) -> bool {
        !matches!(self.backing, Backing::Memory)
    }

    /// Appends a message (`waited`: stored while not connected); when full,
    /// drops the oldest first. Returns how many were dropped.
    pub async fn push(&mut self, msg: OutMsg, waited: bool) -> u64 {
        self.push_within(msg, waited, true).await
    }

    /// Appends a message the session held before the file store opened:
    /// kept even past `maxBytes` (see [`Store::open`]); only the disk floor
    /// drops the oldest.
    async fn push_carried(&mut self, msg: OutMsg) {
        self.push_within(msg, true, false).await;
    }

    /// [`Store::push`]; with `evict` false an open file store keeps the
    /// message past its bound (the disk floor still drops the oldest).
    async fn push_within(&mut self, msg: OutMsg, waited: bool, evict: bool) -> u64 {
        let stored_ms = now_ms();
        match &mut self.backing {
            Backing::Memory => self.outbox.push_with(
                msg,
                Meta {
                    stored_ms,
                    waited,
                    ..Meta::default()
                },
            ),
            Backing::FilePending { .. } => {
                let weight = filestore::encode_message(0, stored_ms, &msg).len() as u64;
                self.outbox.push_with(
                    msg,
                    Meta {
                        stored_ms,
                        waited,
                        weight,
                        seq: 0,
                    },
                )
            }
            Backing::File { log, next_seq } => {
                let seq = *next_seq;
                *next_seq += 1;
                let record = filestore::encode_message(seq, stored_ms, &msg);
                let meta = Meta {
                    seq,
                    stored_ms,
                    waited,
                    weight: record.len() as u64,
                };
                let room = log.disk_room();
                self.apply_floor(room);
                let mut dropped = if evict || self.floor_limited {
                    self.outbox.push_with(msg, meta)
                } else {
                    self.outbox.push_past_bound(msg, meta);
                    0
                };
                if self.floor_limited {
                    self.drops.disk_floor += dropped;
                    dropped = 0;
                }
                if let Backing::File { log, .. } = &self.backing {
                    log.append(seq, record).await;
                }
                self.expire();
                self.release();
                dropped
            }
        }
    }

    /// Lowers the bound while the disk has less room than `maxBytes`
    /// allows (see [`FileLog::disk_room`]), dropping the oldest; restores
    /// it once there is room again (drops counted in [`Store::take_drops`]).
    fn apply_floor(&mut self, room: Option<u64>) {
        let Some(room) = room else { return };
        let bound = room.saturating_sub(2 * self.segment).min(self.live_max);
        let limited = bound < self.live_max;
        if limited != self.floor_limited {
            self.floor_limited = limited;
            let dir = match &self.backing {
                Backing::File { log, .. } => log.dir().display().to_string(),
                _ => String::new(),
            };
            if limited {
                tracing::warn!(
                    "store {dir}: the disk is short of space (minFreeBytes): keeping at most {bound} bytes of messages and dropping the oldest (counted as reason=\"disk_floor\")"
                );
            } else {
                tracing::info!("store {dir}: the disk has room again: back to maxBytes");
            }
        }
        if bound != self.outbox.max_weight() {
            self.drops.disk_floor += self.outbox.set_max_weight(bound);
        }
    }

    /// Drops messages older than `maxAge` (not those in flight); counted
    /// in [`Store::take_drops`].
    pub fn expire(&mut self) {
        let Some(max_age) = self.max_age else {
            return;
        };
        let cutoff =
            now_ms().saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
        let expired = self.outbox.expire(cutoff);
        if expired > 0 {
            self.drops.expired += expired;
            self.release();
        }
    }

    /// Drops for reasons other than the bound since the last call.
    pub fn take_drops(&mut self) -> Drops {
        std::mem::take(&mut self.drops)
    }

    /// True when the store has work on a timer: `maxAge` expiry, or the
    /// disk floor to watch.
    pub fn needs_ticks(&self) -> bool {
        self.max_age.is_some() || matches!(self.backing, Backing::File { .. })
    }

    /// The timer's work: expiry and the disk floor.
    pub fn tick(&mut self) {
        if let Backing::File { log, .. } = &self.backing {
            let room = log.disk_room();
            self.apply_floor(room);
        }
        self.expire();
        self.release();
    }

    /// Tells the file log how far messages have left the store.
    fn release(&self) {
        if let Backing::File { log, next_seq } = &self.backing {
            let upto = self.outbox.front_meta().map_or(*next_seq, |m| m.seq);
            log.set_acked(upto);
        }
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.outbox.len()
    }

    /// True when one more message would drop the oldest.
    pub fn is_full(&self) -> bool {
        self.outbox.is_full()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.outbox.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.outbox.bytes()
    }

    /// Messages dropped because the store was full, since creation.
    pub fn dropped(&self) -> u64 {
        self.outbox.dropped()
    }

    /// See [`Outbox::take_dropped_retained`].
    pub fn take_dropped_retained(&mut self) -> super::outbox::DroppedRetained {
        self.outbox.take_dropped_retained()
    }

    /// Age of the oldest message held.
    pub fn oldest_age(&self) -> Option<Duration> {
        let stored = self.outbox.front_meta()?.stored_ms;
        Some(Duration::from_millis(now_ms().saturating_sub(stored)))
    }

    /// Messages handed out and not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.outbox.in_flight()
    }

    /// The next message to hand to the connection.
    pub fn peek_queued(&self) -> Option<&OutMsg> {
        self.outbox.peek_queued()
    }

    /// Marks the peeked message handed out; true when it is a replay.
    pub fn mark_handed(&mut self) -> bool {
        self.outbox.mark_handed()
    }

    /// Records a publish that bypasses the store.
    pub fn note_transient(&mut self) {
        self.outbox.note_transient();
    }

    /// The connection wrote a publish with packet id `pkid` (0 for QoS 0).
    pub fn on_written(&mut self, pkid: u16) {
        self.outbox.on_written(pkid);
        if pkid == 0 {
            self.release();
        }
    }

    /// The broker acknowledged `pkid`; returns the time since hand-out.
    pub fn on_acked(&mut self, pkid: u16) -> Option<Duration> {
        let latency = self.outbox.on_acked(pkid);
        if latency.is_some() {
            self.release();
        }
        latency
    }

    /// The connection was lost: unconfirmed messages go back to the queue.
    pub fn rewind(&mut self) {
        self.outbox.rewind();
    }

    /// See [`Outbox::recent_unconfirmed`].
    pub fn recent_unconfirmed(&self, window: Duration) -> Vec<u64> {
        self.outbox.recent_unconfirmed(window)
    }

    /// See [`Outbox::blame`].
    pub fn blame(&mut self, id: u64, max_tries: u8) -> Option<(Arc<str>, usize)> {
        let gone = self.outbox.blame(id, max_tries);
        if gone.is_some() {
            self.release();
        }
        gone
    }

    /// See [`Outbox::confirmed_through`].
    pub fn confirmed_through(&self, id: u64) -> bool {
        self.outbox.confirmed_through(id)
    }

    /// Drops the next queued message unsent (see [`Outbox::drop_queued`]).
    pub fn drop_queued(&mut self) {
        self.outbox.drop_queued();
        self.release();
    }

    /// When the oldest unconfirmed message was handed out.
    pub fn oldest_unconfirmed_since(&self) -> Option<std::time::Instant> {
        self.outbox.oldest_unconfirmed_since()
    }

    /// Closes the store. `hand_over`: returns every unconfirmed message,
    /// oldest first, and releases them from the file (the successor stores
    /// them); otherwise a file store keeps them on disk for the next start.
    pub async fn close(mut self, hand_over: bool) -> Vec<OutMsg> {
        let left = if hand_over {
            let left = self.outbox.drain_unconfirmed();
            self.release();
            left
        } else {
            Vec::new()
        };
        if let Backing::File { log, .. } = self.backing {
            let dir = log.dir().to_path_buf();
            if tokio::task::spawn_blocking(move || log.close())
                .await
                .is_err()
            {
                tracing::warn!("store {}: closing failed", dir.display());
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(n: u32) -> OutMsg {
        OutMsg {
            topic: "t".into(),
            payload: Bytes::from(n.to_string()),
            qos: 1,
            retain: false,
            correlation: None,
            props: None,
        }
    }

    fn file(dir: &std::path::Path, max_bytes: u64) -> StoreSettings {
        StoreSettings::File {
            directory: dir.to_path_buf(),
            max_bytes,
            max_age: None,
            min_free_bytes: 0,
        }
    }

    /// Hands out everything queued and returns the payloads with the
    /// packet ids they were written with.
    fn hand_all(s: &mut Store, next_pkid: &mut u16) -> Vec<(String, u16)> {
        let mut out = Vec::new();
        while let Some(m) = s.peek_queued() {
            let text = String::from_utf8_lossy(&m.payload).into_owned();
            s.mark_handed();
            *next_pkid += 1;
            s.on_written(*next_pkid);
            out.push((text, *next_pkid));
        }
        out
    }

    #[tokio::test]
    async fn file_store_replays_unacked_in_order_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = file(tmp.path(), 1 << 20);
        let mut s = Store::new(&settings, 10);
        s.open(Vec::new()).await.unwrap();
        for n in 1..=6 {
            s.push(msg(n), false).await;
        }
        let mut pkid = 0;
        let handed = hand_all(&mut s, &mut pkid);
        // 1, 2 and 4 acknowledged; the process ends without a clean stop.
        for i in [0, 1, 3] {
            assert!(s.on_acked(handed[i].1).is_some());
        }
        s.close(false).await;
        let mut s = Store::new(&settings, 10);
        let opened = s.open(vec![msg(100)]).await.unwrap();
        assert_eq!(opened.recovered, 4, "3, 4, 5, 6 (4 is behind unacked 3)");
        s.push(msg(7), false).await;
        let texts: Vec<_> = hand_all(&mut s, &mut pkid)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(texts, ["3", "4", "5", "6", "100", "7"]);
    }

    #[tokio::test]
    async fn file_store_bound_drops_oldest_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = file(tmp.path(), 64 << 10);
        let mut s = Store::new(&settings, 10);
        s.open(Vec::new()).await.unwrap();
        let mut dropped = 0;
        for n in 0..5000 {
            dropped += s.push(msg(n), false).await;
        }
        assert!(dropped > 0);
        assert_eq!(s.dropped(), dropped);
        assert_eq!(s.len() as u64 + dropped, 5000);
        s.close(false).await;
        let on_disk: u64 = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 64 << 10, "{on_disk} bytes on disk");
        let mut s = Store::new(&settings, 10);
        s.open(Vec::new()).await.unwrap();
        let mut pkid = 0;
        let texts: Vec<_> = hand_all(&mut s, &mut pkid)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let first = 5000 - texts.len() as u32;
        let want: Vec<_> = (first..5000).map(|n| n.to_string()).collect();
        assert_eq!(texts, want, "the newest survive, in order");
    }

    #[tokio::test]
    async fn hand_over_releases_the_file_for_a_successor() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = file(tmp.path(), 1 << 20);
        let mut s = Store::new(&settings, 10);
        s.open(Vec::new()).await.unwrap();
        for n in 1..=3 {
            s.push(msg(n), false).await;
        }
        let left = s.close(true).await;
        assert_eq!(left.len(), 3);
        let mut next = Store::new(&settings, 10);
        let opened = next.open(left).await.unwrap();
        assert_eq!(opened.recovered, 0, "no duplicates from the same directory");
        assert_eq!(next.len(), 3);
    }

    #[tokio::test]
    async fn messages_older_than_max_age_expire_and_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = StoreSettings::File {
            directory: tmp.path().to_path_buf(),
            max_bytes: 1 << 20,
            max_age: Some(Duration::from_millis(50)),
            min_free_bytes: 0,
        };
        let mut s = Store::new(&settings, 10);
        s.open(Vec::new()).await.unwrap();
        for n in 1..=3 {
            s.push(msg(n), true).await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !s.is_empty() {
            assert!(std::time::Instant::now() < deadline, "never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
            s.tick();
        }
        assert_eq!(s.take_drops().expired, 3);
        assert_eq!(s.dropped(), 0, "not counted as store_full");
        s.push(msg(4), true).await;
        assert_eq!(s.len(), 1, "a new message stays");
        s.close(false).await;
        let mut s = Store::new(&settings, 10);
        let opened = s.open(Vec::new()).await.unwrap();
        assert!(opened.recovered <= 1, "expired ones left the file too");
    }

    #[tokio::test]
    async fn memory_store_keeps_the_outbox_semantics() {
        let mut s = Store::new(&StoreSettings::Memory, 2);
        s.open(Vec::new()).await.unwrap();
        assert!(!s.is_file());
        for n in 1..=3 {
            s.push(msg(n), true).await;
        }
        assert_eq!(s.dropped(), 1);
        assert!(s.mark_handed(), "stored while offline: a replay");
        assert!(s.oldest_age().is_some());
    }
}
