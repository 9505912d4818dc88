//! The edge node's outage buffer: DDATA recorded while the node is not born
//! (broker or primary host away), replayed marked historical after the next
//! births. In memory (`messageChannelDepth` payloads), or — with
//! `mqtt.client.store: { type: file }` — in the session's store directory,
//! so that it survives a restart of the gateway.
//!
//! Entries carry metric *names*, not aliases: aliases are assigned anew
//! when devices attach (after a restart, or a reload that changed a
//! device), so a replay resolves each name against the device as it is
//! then, and drops metrics of properties that are gone or changed type.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use prost::Message as _;

use super::proto::Payload;
use crate::config::resolved::StoreSettings;
use crate::mqtt::store::Store;
use crate::mqtt::OutMsg;

/// One recorded DDATA: the device's name and the payload (no `seq`; its
/// metrics named, with `is_historical` set).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The fieldgate device.
    pub device: String,
    /// Metrics as recorded.
    pub payload: Payload,
}

impl Entry {
    fn to_msg(&self) -> OutMsg {
        OutMsg {
            topic: self.device.as_str().into(),
            payload: Bytes::from(self.payload.encode_to_vec()),
            qos: 1,
            retain: false,
            correlation: None,
            props: None,
        }
    }

    fn from_msg(msg: &OutMsg) -> Option<Self> {
        Some(Self {
            device: msg.topic.to_string(),
            payload: Payload::decode(msg.payload.as_ref()).ok()?,
        })
    }
}

/// The buffer of one edge node.
pub(crate) enum History {
    /// In memory, at most `depth` entries.
    Memory {
        /// Oldest first.
        queue: VecDeque<Entry>,
        /// Bound.
        depth: usize,
    },
    /// In a file store (the session's store directory and `maxBytes`).
    File {
        /// The store settings (a file store).
        settings: StoreSettings,
        /// The open store (`None` before [`History::open`]).
        store: Option<Box<Store>>,
        /// Held while the store is open: a successor node (after a reload)
        /// opens the directory only once this one closed it.
        lock: Option<tokio::sync::OwnedMutexGuard<()>>,
        /// The memory bound, should the directory stay busy.
        depth: usize,
    },
}

/// How long a node waits for its predecessor (after a reload) to close the
/// history directory.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One lock per store directory in this process.
fn dir_lock(dir: PathBuf) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let locks = LOCKS.get_or_init(Mutex::default);
    let mut map = locks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(dir).or_default().clone()
}

impl History {
    /// A buffer per the session's store settings.
    pub(crate) fn new(store: &StoreSettings, depth: usize) -> Self {
        match store {
            StoreSettings::Memory => Self::Memory {
                queue: VecDeque::new(),
                depth: depth.max(1),
            },
            StoreSettings::File { .. } => Self::File {
                settings: store.clone(),
                store: None,
                lock: None,
                depth: depth.max(1),
            },
        }
    }

    /// Opens a file buffer: recovers what an earlier run recorded. Returns
    /// how many entries it found.
    pub(crate) async fn open(&mut self) -> usize {
        let Self::File {
            settings,
            store,
            lock,
            depth,
        } = self
        else {
            return 0;
        };
        let StoreSettings::File { directory, .. } = &*settings else {
            return 0;
        };
        let dir = directory.clone();
        match tokio::time::timeout(LOCK_WAIT, dir_lock(dir.clone()).lock_owned()).await {
            Ok(guard) => *lock = Some(guard),
            Err(_) => {
                tracing::warn!(
                    "Sparkplug history in {} is still held by the previous edge node; kept in memory until a restart",
                    dir.display()
                );
                *self = Self::Memory {
                    queue: VecDeque::new(),
                    depth: *depth,
                };
                return 0;
            }
        }
        let mut s = Store::new(settings, 1);
        let found = match s.open(Vec::new()).await {
            Ok(opened) => {
                if opened.damaged > 0 {
                    tracing::warn!(
                        "Sparkplug history in {}: {} damaged place(s) cut off",
                        dir.display(),
                        opened.damaged
                    );
                }
                opened.recovered
            }
            Err(e) => {
                tracing::warn!(
                    "Sparkplug history in {} cannot be opened ({e}); history is kept in memory until a restart",
                    dir.display()
                );
                0
            }
        };
        *store = Some(Box::new(s));
        found
    }

    /// Records an entry after the others; returns how many of the oldest
    /// were dropped to stay within the bound.
    pub(crate) async fn push(&mut self, entry: Entry) -> u64 {
        match self {
            Self::Memory { queue, depth } => {
                queue.push_back(entry);
                let mut dropped = 0;
                while queue.len() > *depth {
                    queue.pop_front();
                    dropped += 1;
                }
                dropped
            }
            Self::File { store, .. } => match store {
                Some(s) => s.push(entry.to_msg(), true).await,
                None => 0,
            },
        }
    }

    /// Records `older` before everything recorded so far.
    pub(crate) async fn prepend(&mut self, older: Vec<Entry>) -> u64 {
        if older.is_empty() {
            return 0;
        }
        let newer = self.take_all().await;
        let mut dropped = 0;
        for e in older.into_iter().chain(newer) {
            dropped += self.push(e).await;
        }
        dropped
    }

    /// Takes every entry, oldest first, and empties the buffer (a file
    /// buffer releases them from its files). Entries that cannot be
    /// decoded are skipped.
    pub(crate) async fn take_all(&mut self) -> Vec<Entry> {
        match self {
            Self::Memory { queue, .. } => std::mem::take(queue).into(),
            Self::File {
                settings, store, ..
            } => {
                let Some(old) = store.take() else {
                    return Vec::new();
                };
                if old.is_empty() {
                    *store = Some(old);
                    return Vec::new();
                }
                let msgs = (*old).close(true).await;
                let mut fresh = Store::new(settings, 1);
                if let Err(e) = fresh.open(Vec::new()).await {
                    tracing::warn!("Sparkplug history cannot be reopened ({e}); kept in memory");
                }
                *store = Some(Box::new(fresh));
                let entries: Vec<Entry> = msgs.iter().filter_map(Entry::from_msg).collect();
                if entries.len() < msgs.len() {
                    tracing::warn!(
                        "Sparkplug history: {} unreadable entries skipped",
                        msgs.len() - entries.len()
                    );
                }
                entries
            }
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Memory { queue, .. } => queue.len(),
            Self::File { store, .. } => store.as_ref().map_or(0, |s| s.len()),
        }
    }

    /// True when nothing is held.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes a file buffer, keeping what it holds on disk for the next
    /// start.
    pub(crate) async fn close(&mut self) {
        if let Self::File { store, lock, .. } = self {
            if let Some(s) = store.take() {
                (*s).close(false).await;
            }
            lock.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::payload::{metric, Metric};
    use super::*;

    fn entry(device: &str, v: u64) -> Entry {
        Entry {
            device: device.into(),
            payload: Payload {
                timestamp: Some(v),
                metrics: vec![Metric {
                    name: Some("count".into()),
                    value: Some(metric::Value::LongValue(v)),
                    is_historical: Some(true),
                    ..Default::default()
                }],
                ..Default::default()
            },
        }
    }

    #[tokio::test]
    async fn a_file_history_survives_a_restart_in_order_and_empties_when_taken() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings::File {
            directory: dir.path().join("store"),
            max_bytes: 1 << 20,
            max_age: None,
            min_free_bytes: 0,
        };
        let mut h = History::new(&settings, 4);
        assert_eq!(h.open().await, 0);
        for v in 1..=3 {
            h.push(entry("boiler", v)).await;
        }
        h.prepend(vec![entry("plc", 0)]).await;
        h.close().await;

        // The next run finds them, oldest first.
        let mut h = History::new(&settings, 4);
        assert_eq!(h.open().await, 4);
        let got = h.take_all().await;
        assert_eq!(
            got,
            vec![
                entry("plc", 0),
                entry("boiler", 1),
                entry("boiler", 2),
                entry("boiler", 3)
            ]
        );
        assert!(h.is_empty());
        h.push(entry("boiler", 4)).await;
        h.close().await;

        // Taken entries are gone from the files; later ones stay.
        let mut h = History::new(&settings, 4);
        assert_eq!(h.open().await, 1);
        assert_eq!(h.take_all().await, vec![entry("boiler", 4)]);
        h.close().await;
    }

    #[tokio::test]
    async fn a_memory_history_keeps_the_newest_depth_entries() {
        let mut h = History::new(&StoreSettings::Memory, 2);
        let mut dropped = 0;
        for v in 1..=3 {
            dropped += h.push(entry("d", v)).await;
        }
        assert_eq!(dropped, 1);
        assert_eq!(h.take_all().await, vec![entry("d", 2), entry("d", 3)]);
    }
}
