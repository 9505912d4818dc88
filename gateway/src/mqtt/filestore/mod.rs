//! The on-disk half of the file store: an append-only log of checksummed
//! records in segment files, written by a dedicated thread.
//!
//! Layout of the store directory (0700):
//! - `<first seq, 20 digits>.seg` (0600): an 8-byte header, then records
//!   `[body length u32 LE][crc32 of body u32 LE][body]`. A body is a message
//!   (`1, seq, stored ms, qos, flags, topic, correlation, payload`) or an
//!   acknowledgement mark (`2, upto`: every message with a smaller sequence
//!   number has left the store).
//!
//! Messages are only ever appended; acknowledgements are appended as marks
//! at most once per sync; a segment is deleted as a whole once every message
//! in it has left the store. Writes reach the OS at once (a `kill -9` loses
//! nothing that was handed to the writer), and `fdatasync` runs at most
//! [`SYNC_INTERVAL`] after the first unsynced write (the power-cut bound).
//! Recovery reads every segment, drops a torn or corrupted tail with a
//! warning (truncating the file there) and never returns damaged records.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{MessageProps, OutMsg};

mod record;

pub use record::encode_message;
use record::*;

/// Longest time between a write and its `fdatasync`: what a power cut can
/// lose at most (plus what had not reached the writer yet).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Segment header: magic and format version.
const HEADER: &[u8; 8] = b"FGSTORE1";
/// Record header: body length and crc32.
const RECORD_HEADER: usize = 8;
/// Largest body accepted when reading (bigger lengths are damage).
const MAX_BODY: usize = 256 << 20;
/// Largest sequence number read back. The writer counts up from 1 and
/// never gets near it (2^62 messages); anything above is damage, which
/// keeps room to count on after any recovery.
const MAX_SEQ: u64 = 1 << 62;
const KIND_MSG: u8 = 1;
const KIND_ACK: u8 = 2;
/// Commands waiting for the writer thread.
const QUEUE: usize = 4096;
/// Smallest and largest segment file size.
const SEGMENT_MIN: u64 = 4 << 10;
const SEGMENT_MAX: u64 = 8 << 20;

const CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// Errors of the file store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory cannot be created or read.
    #[error("store directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A segment cannot be read or created.
    #[error("store file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The writer thread cannot be started.
    #[error("store writer thread: {0}")]
    Thread(io::Error),
    /// Another session or process uses the directory.
    #[error("store directory {0} is in use by another session or process")]
    Locked(PathBuf),
}

/// A message read back from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Sequence number.
    pub seq: u64,
    /// When it was stored, Unix milliseconds.
    pub stored_ms: u64,
    /// The message.
    pub msg: OutMsg,
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Messages not yet acknowledged, oldest first.
    pub messages: Vec<Stored>,
    /// The next sequence number to use.
    pub next_seq: u64,
    /// Damaged places found (each was warned about and cut off).
    pub damaged: usize,
    /// Segments kept, by first sequence number, oldest first.
    segments: Vec<(u64, PathBuf)>,
    /// Every message below this has left the store.
    acked: u64,
    /// The directory's lock, held while the store is open.
    lock: Option<File>,
}

/// Segment size for a store bound of `max_bytes`.
pub fn segment_size(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(SEGMENT_MIN, SEGMENT_MAX)
}

/// Bytes of live records the store may hold so that the files (live
/// records, the acknowledged part of the oldest segment, segment headers
/// and acknowledgement marks) stay within `max_bytes`.
pub fn live_bound(max_bytes: u64) -> u64 {
    max_bytes
        .saturating_sub(2 * segment_size(max_bytes))
        .max(segment_size(max_bytes))
}

/// Creates `dir` (0700) if needed and recovers what it holds. Blocking.
pub fn recover(dir: &Path) -> Result<Recovery, StoreError> {
    let dir_err = |source| StoreError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
    let lock_path = dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| StoreError::File {
            path: lock_path.clone(),
            source,
        })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StoreError::Locked(dir.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(StoreError::File {
                path: lock_path,
                source,
            })
        }
    }
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(parse_seg_name) {
            segments.push((seq, entry.path()));
        }
    }
    segments.sort();
    let mut rec = Recovery {
        lock: Some(lock),
        ..Recovery::default()
    };
    let mut messages = Vec::new();
    let mut max_seq = None::<u64>;
    for (first, path) in segments {
        let file_err = |source| StoreError::File {
            path: path.clone(),
            source,
        };
        let data = fs::read(&path).map_err(file_err)?;
        let (records, damage) = parse_segment(&data);
        if let Some((offset, what)) = damage {
            rec.damaged += 1;
            let lost = data.len() - offset;
            tracing::warn!(
                "store file {}: {what} at byte {offset}; recovered the {} record(s) before it and dropped the remaining {lost} byte(s)",
                path.display(),
                records.len()
            );
            let keep = if offset < HEADER.len() { 0 } else { offset };
            let cut = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(keep as u64).and_then(|()| f.sync_all()));
            if let Err(e) = cut {
                tracing::warn!(
                    "store file {}: cannot cut off the damage: {e}",
                    path.display()
                );
            }
        }
        if records.is_empty() && damage.is_some_and(|(o, _)| o < HEADER.len()) {
            let _ = fs::remove_file(&path);
            continue;
        }
        for record in records {
            match record {
                Record::Ack(upto) => rec.acked = rec.acked.max(upto),
                Record::Msg(m) => {
                    if max_seq.is_some_and(|s| m.seq <= s) {
                        tracing::warn!(
                            "store file {}: message {} is older than one before it; skipped",
                            path.display(),
                            m.seq
                        );
                        continue;
                    }
                    max_seq = Some(m.seq);
                    messages.push((rec.segments.len(), m));
                }
            }
        }
        rec.segments.push((first, path));
    }
    // Segments before the first kept one were deleted because every
    // message in them had left the store.
    if let Some((first, _)) = rec.segments.first() {
        rec.acked = rec.acked.max(*first);
    }
    let acked = rec.acked;
    // A segment holds the messages numbered below the next segment's first
    // number: the writer names a segment after its first message and
    // deletes it by that rule. A message at or above it is misplaced (it
    // would be deleted with its segment while unacknowledged): skipped.
    let firsts: Vec<u64> = rec.segments.iter().map(|(f, _)| *f).collect();
    rec.messages = messages
        .into_iter()
        .filter(|(i, m)| {
            let misplaced = firsts.get(i + 1).is_some_and(|next| m.seq >= *next);
            if misplaced {
                tracing::warn!(
                    "store file {}: message {} belongs in a later segment; skipped",
                    rec.segments[*i].1.display(),
                    m.seq
                );
            }
            !misplaced && m.seq >= acked
        })
        .map(|(_, m)| m)
        .collect();
    // The writer starts a new segment named after the next sequence
    // number: never reuse an existing name.
    let after_last = rec.segments.last().map_or(0, |(f, _)| f.saturating_add(1));
    rec.next_seq = max_seq
        .map_or(0, |s| s.saturating_add(1))
        .max(acked)
        .max(after_last)
        .max(1);
    Ok(rec)
}

enum Cmd {
    /// An encoded message record with its sequence number.
    Append(u64, Vec<u8>),
    /// The acknowledged position moved.
    Wake,
}

/// How often the writer measures the disk's free space (while writing)
/// against `minFreeBytes`.
const ROOM_CHECK: Duration = Duration::from_millis(50);

/// The file store's writer: appends records on its own thread.
pub struct FileLog {
    tx: Option<SyncSender<Cmd>>,
    acked: Arc<AtomicU64>,
    /// Bytes the store's files may take on disk without leaving less than
    /// `minFreeBytes` free (`u64::MAX` until measured).
    room: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl FileLog {
    /// Starts the writer for a recovered directory: a new segment begins at
    /// `recovery.next_seq`; the writer holds the directory's lock until it
    /// stops. Blocking (creates the segment file).
    pub fn start(
        dir: &Path,
        max_bytes: u64,
        min_free: u64,
        recovery: &mut Recovery,
    ) -> Result<Self, StoreError> {
        let acked = Arc::new(AtomicU64::new(recovery.acked));
        let room = Arc::new(AtomicU64::new(u64::MAX));
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            segments: recovery.segments.iter().cloned().collect(),
            current: None,
            current_len: 0,
            written_len: 0,
            segment_size: segment_size(max_bytes),
            acked: acked.clone(),
            // Record the recovered position in the new segment too.
            written_ack: 0,
            buf: Vec::new(),
            dirty_since: (recovery.acked > 0).then(Instant::now),
            last_error: None,
            min_free,
            room: room.clone(),
            room_checked: None,
            _lock: recovery.lock.take(),
        };
        writer.open_segment(recovery.next_seq)?;
        writer.measure_room();
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("fieldgate-store".into())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::Thread)?;
        Ok(Self {
            tx: Some(tx),
            acked,
            room,
            thread: Some(thread),
            dir: dir.to_path_buf(),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the store's files may take without leaving less than
    /// `minFreeBytes` free on the disk, as last measured (`None` before).
    pub fn disk_room(&self) -> Option<u64> {
        Some(self.room.load(Ordering::Relaxed)).filter(|r| *r != u64::MAX)
    }

    /// Queues a record for writing; waits (off the runtime's workers) only
    /// when the writer is [`QUEUE`] records behind.
    pub async fn append(&self, seq: u64, record: Vec<u8>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Cmd::Append(seq, record)) {
            Ok(()) => {}
            Err(TrySendError::Full(cmd)) => {
                let tx = tx.clone();
                let _ = tokio::task::spawn_blocking(move || tx.send(cmd)).await;
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("store writer for {} is gone", self.dir.display());
            }
        }
    }

    /// Every message below `upto` has left the store (acknowledged, written
    /// at QoS 0, or dropped). Recorded at the next sync.
    pub fn set_acked(&self, upto: u64) {
        if self.acked.fetch_max(upto, Ordering::Relaxed) < upto {
            if let Some(tx) = &self.tx {
                // A full queue wakes the writer anyway.
                let _ = tx.try_send(Cmd::Wake);
            }
        }
    }

    /// Writes and syncs everything queued, then stops the writer. Blocking.
    pub fn close(mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Writer {
    dir: PathBuf,
    /// Finished and current segments by first sequence number.
    segments: VecDeque<(u64, PathBuf)>,
    current: Option<File>,
    current_len: u64,
    /// Bytes of the current segment that are whole records on file: where
    /// a failed write is cut back to.
    written_len: u64,
    segment_size: u64,
    acked: Arc<AtomicU64>,
    written_ack: u64,
    buf: Vec<u8>,
    /// The first write not yet synced.
    dirty_since: Option<Instant>,
    last_error: Option<Instant>,
    /// `minFreeBytes`: free disk space the store never takes.
    min_free: u64,
    /// See [`FileLog::disk_room`].
    room: Arc<AtomicU64>,
    room_checked: Option<Instant>,
    /// Released when the writer thread ends.
    _lock: Option<File>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            let next = match self.dirty_since {
                Some(since) => {
                    let left = (since + SYNC_INTERVAL).saturating_duration_since(Instant::now());
                    rx.recv_timeout(left)
                }
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let closing = match next {
                Ok(cmd) => {
                    self.handle(cmd);
                    let mut closing = false;
                    loop {
                        match rx.try_recv() {
                            Ok(cmd) => self.handle(cmd),
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => {
                                closing = true;
                                break;
                            }
                        }
                    }
                    closing
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            self.write_out();
            self.delete_finished();
            if self
                .room_checked
                .is_none_or(|at| at.elapsed() >= ROOM_CHECK)
            {
                self.measure_room();
            }
            let due = self
                .dirty_since
                .is_some_and(|since| since.elapsed() >= SYNC_INTERVAL);
            if closing || due {
                self.sync();
            }
            if closing {
                return;
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Append(seq, record) => {
                if self.current_len >= self.segment_size {
                    self.rotate(seq);
                }
                self.current_len += record.len() as u64;
                self.buf.extend_from_slice(&record);
            }
            Cmd::Wake => {}
        }
        if self.acked.load(Ordering::Relaxed) > self.written_ack || !self.buf.is_empty() {
            self.dirty_since.get_or_insert_with(Instant::now);
        }
    }

    /// Hands the buffered records to the OS.
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let result = match &mut self.current {
            Some(f) => f.write_all(&self.buf),
            None => Err(io::Error::other("no open segment")),
        };
        match result {
            Ok(()) => {
                self.written_len += self.buf.len() as u64;
                self.buf.clear();
            }
            Err(e) => {
                self.report(&e);
                // A write can fail half-way (a full disk): cut the torn
                // part off, so the records written after the disk has room
                // again do not follow a broken one (recovery stops at the
                // first damage and would drop everything after it).
                let at = self.written_len;
                let cut = match &mut self.current {
                    Some(f) => f.set_len(at).and_then(|()| f.seek(SeekFrom::Start(at))),
                    None => Ok(at),
                };
                if let Err(e) = cut {
                    self.report(&e);
                }
                // Keep the buffer bounded: what could not be written stays
                // in memory (the session still holds every message).
                if self.buf.len() > 64 << 20 {
                    self.buf.clear();
                }
            }
        }
    }

    /// Records the acknowledged position, syncs, deletes finished segments.
    fn sync(&mut self) {
        let acked = self.acked.load(Ordering::Relaxed);
        if acked > self.written_ack {
            self.buf.extend_from_slice(&encode_ack(acked));
            self.current_len += (RECORD_HEADER + 9) as u64;
            self.write_out();
            self.written_ack = acked;
        }
        if let Some(f) = &self.current {
            if let Err(e) = f.sync_data() {
                self.report(&e);
            }
        }
        self.dirty_since = None;
        self.delete_finished();
    }

    /// Deletes segments every message of which has left the store: those
    /// followed by a segment starting at or below the acknowledged position
    /// (the current one stays). Safe before the position is recorded: the
    /// first remaining segment bounds it on recovery.
    fn delete_finished(&mut self) {
        let acked = self.acked.load(Ordering::Relaxed);
        while self.segments.len() > 1 && self.segments[1].0 <= acked {
            if let Some((_, path)) = self.segments.pop_front() {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!("store: cannot delete {}: {e}", path.display());
                }
            }
        }
    }

    /// Measures the room the store has on disk: its segment files plus the
    /// free space, less `minFreeBytes`.
    fn measure_room(&mut self) {
        self.room_checked = Some(Instant::now());
        if self.min_free == 0 {
            // No floor: a full disk leaves the messages in memory.
            return;
        }
        let free = match crate::disk::free_bytes(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                self.report(&e);
                return;
            }
        };
        let ours: u64 = self
            .segments
            .iter()
            .filter_map(|(_, path)| fs::metadata(path).ok())
            .map(|m| m.len())
            .sum();
        // Records not yet written (a full disk) need room too.
        let room = ours
            .saturating_add(free)
            .saturating_sub(self.min_free)
            .saturating_sub(self.buf.len() as u64);
        self.room.store(room.min(u64::MAX - 1), Ordering::Relaxed);
    }

    fn rotate(&mut self, first_seq: u64) {
        self.write_out();
        if let Some(f) = &self.current {
            if let Err(e) = f.sync_data() {
                self.report(&e);
            }
        }
        if let Err(e) = self.open_segment(first_seq) {
            self.report(&io::Error::other(e.to_string()));
        }
    }

    fn open_segment(&mut self, first_seq: u64) -> Result<(), StoreError> {
        let path = self.dir.join(seg_name(first_seq));
        let file_err = |source| StoreError::File {
            path: path.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(file_err)?;
        f.write_all(HEADER).map_err(file_err)?;
        f.sync_data().map_err(file_err)?;
        // Make the new name durable too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        if self.segments.back().is_some_and(|(s, _)| *s == first_seq) {
            self.segments.pop_back();
        }
        self.segments.push_back((first_seq, path));
        self.current = Some(f);
        self.current_len = HEADER.len() as u64;
        self.written_len = HEADER.len() as u64;
        Ok(())
    }

    fn report(&mut self, e: &io::Error) {
        if self
            .last_error
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::error!("store {}: write failed: {e}", self.dir.display());
            self.last_error = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests;
