//! Counter devices for the delivery and fault tests: dummy devices `d0…`
//! that publish one counter `n` (+1 per read), and the streams of values a
//! subscriber received from them, to check for gaps and order.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use super::{Message, MqttProbe};

/// Counters of a second gateway run start here, so that its values are
/// told apart from the first run's.
pub(crate) const SECOND_RUN: u64 = 1_000_000;

/// The `devices:` items of `n` counter devices `d0…`: one uint64 `n` from
/// `start`, step 1, read every `interval`.
pub(crate) fn counter_devices(n: usize, interval: &str, start: u64) -> String {
    (0..n)
        .map(|i| format!(
            "  - name: d{i}\n    driver: dummy\n    syncInterval: {interval}\n    properties:\n      - {{ name: n, type: uint64, simulate: {{ counter: {{ start: {start}, step: 1 }} }} }}\n"
        ))
        .collect()
}

/// Counter values (and read times) per counter device, in arrival order.
#[derive(Debug)]
pub(crate) struct Streams {
    /// `fieldgate/<namespace>/`
    prefix: String,
    /// Values and their `timestamp`s by device name.
    pub by_device: BTreeMap<String, Vec<(u64, SystemTime)>>,
}

impl Streams {
    /// Empty streams for the counter devices of `namespace`.
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            prefix: format!("fieldgate/{namespace}/"),
            by_device: BTreeMap::new(),
        }
    }

    /// Records `m` if it is the state of a counter device.
    pub(crate) fn add(&mut self, m: &Message) {
        let Some(device) = m.topic.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        if !device.starts_with('d') || device.contains('/') {
            return;
        }
        let v = m.json();
        let n = v["properties"]["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter in {}: {}", m.topic, m.payload_str()));
        let ts = v["timestamp"].as_str().expect("timestamp");
        let at = humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{ts}: {e}"));
        self.by_device
            .entry(device.to_owned())
            .or_default()
            .push((n, at));
    }

    /// Values of one run (below or from [`SECOND_RUN`]) in order of first
    /// arrival, at-least-once duplicates removed.
    pub(crate) fn firsts(&self, device: &str, second_run: bool) -> Vec<u64> {
        let mut seen = HashSet::new();
        self.by_device
            .get(device)
            .map(|v| {
                v.iter()
                    .map(|(n, _)| *n)
                    .filter(|n| (*n >= SECOND_RUN) == second_run)
                    .filter(|n| seen.insert(*n))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Values read at or after `at` (by their timestamp).
    pub(crate) fn read_since(&self, device: &str, at: SystemTime) -> usize {
        self.by_device
            .get(device)
            .map(|v| v.iter().filter(|(_, t)| *t >= at).count())
            .unwrap_or(0)
    }

    /// Per device: how many values, and the largest.
    pub(crate) fn summary(&self) -> Vec<(String, usize, Option<u64>)> {
        self.by_device
            .iter()
            .map(|(d, v)| (d.clone(), v.len(), v.iter().map(|(n, _)| *n).max()))
            .collect()
    }
}

/// Asserts `values` is gap-free and in order: each is the previous + 1.
pub(crate) fn assert_gap_free(device: &str, values: &[u64]) {
    assert!(!values.is_empty(), "{device}: nothing received");
    for w in values.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{device}: {} followed by {} (lost or out of order)",
            w[0],
            w[1]
        );
    }
}

/// Receives into `streams` until `done` holds; panics after `timeout`.
pub(crate) async fn receive_until(
    probe: &mut MqttProbe,
    streams: &mut Streams,
    timeout: Duration,
    mut done: impl FnMut(&Streams) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(streams) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "timed out; received so far: {:?}",
            streams.summary()
        );
        if let Some(m) = probe.next(left.min(Duration::from_millis(500))).await {
            streams.add(&m);
        }
    }
}
