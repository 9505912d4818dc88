//! Counts the device state messages (and the values in them) that fieldgate
//! publishes under a topic prefix, as an MQTT subscriber would see them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What one received message was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A device state `<prefix>/<namespace>/<device>` with this many values
    /// and errors.
    State {
        /// Entries of `properties`.
        values: u64,
        /// Entries of `errors`.
        errors: u64,
    },
    /// A state topic whose payload is not a state object.
    Malformed,
    /// Anything else (`$state`, `$meta`, will, `$set/result`, …).
    Other,
}

/// The Sparkplug B topic namespace: with this prefix the counter counts
/// the metrics of DBIRTH and DDATA messages as values.
pub(crate) const SPARKPLUG: &str = "spBv1.0";

/// Classifies a Sparkplug B message: `spBv1.0/<group>/<type>/<node>/<device>`.
fn classify_sparkplug(topic: &str, payload: &[u8]) -> Kind {
    let levels: Vec<&str> = topic.split('/').collect();
    if levels.len() != 5 || !matches!(levels[2], "DDATA" | "DBIRTH") {
        return Kind::Other;
    }
    match sparkplug_metrics(payload) {
        Some(values) => Kind::State { values, errors: 0 },
        None => Kind::Malformed,
    }
}

/// The number of metrics (field 2) of a Sparkplug B payload, the other
/// fields skipped with prost's wire-format decoder.
fn sparkplug_metrics(mut buf: &[u8]) -> Option<u64> {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    let mut n = 0;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        if tag == 2 {
            n += 1;
        }
        skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
    }
    Some(n)
}

/// Classifies a message published under `prefix` (topic layout `with: nn`).
pub(crate) fn classify(prefix: &str, topic: &str, payload: &[u8]) -> Kind {
    if prefix == SPARKPLUG {
        return classify_sparkplug(topic, payload);
    }
    let Some(rest) = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return Kind::Other;
    };
    let levels: Vec<&str> = rest.split('/').collect();
    if levels.len() != 2 || levels.iter().any(|l| l.is_empty() || l.starts_with('$')) {
        return Kind::Other;
    }
    match serde_json::from_slice::<StateShape>(payload) {
        Ok(StateShape {
            properties: Some(values),
            errors,
        }) => Kind::State {
            values: values.0,
            errors: errors.map_or(0, |e| e.0),
        },
        _ => Kind::Malformed,
    }
}

/// The parts of a state object the counter needs. Counting the entries of
/// `properties` and `errors` without building a JSON tree keeps the
/// subscriber cheap at hundreds of thousands of values per second (it shares
/// the machine with the gateway).
#[derive(serde::Deserialize)]
struct StateShape {
    properties: Option<Entries>,
    errors: Option<Entries>,
}

/// The number of entries of a JSON object (values skipped unparsed).
struct Entries(u64);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut n = 0;
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {
                    n += 1;
                }
                Ok(Entries(n))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Running totals of received messages.
#[derive(Debug, Default)]
struct Totals {
    states: AtomicU64,
    values: AtomicU64,
    errors: AtomicU64,
    malformed: AtomicU64,
    other: AtomicU64,
    bytes: AtomicU64,
}

/// A snapshot of the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Device state messages.
    pub states: u64,
    /// Property values in them.
    pub values: u64,
    /// Property errors in them.
    pub errors: u64,
    /// State-topic messages that were not state objects.
    pub malformed: u64,
    /// Other messages under the prefix.
    pub other: u64,
    /// Payload bytes of state messages.
    pub bytes: u64,
}

impl Counts {
    /// `self - earlier`, field by field.
    pub(crate) fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            states: self.states - earlier.states,
            values: self.values - earlier.values,
            errors: self.errors - earlier.errors,
            malformed: self.malformed - earlier.malformed,
            other: self.other - earlier.other,
            bytes: self.bytes - earlier.bytes,
        }
    }
}

/// An MQTT 3.1.1 subscriber on `<prefix>/#` that counts what arrives.
pub(crate) struct StateCounter {
    totals: Arc<Totals>,
    task: JoinHandle<()>,
    _client: AsyncClient,
}

impl StateCounter {
    /// Connects to 127.0.0.1:`port` and subscribes to `<prefix>/#`; returns
    /// once the subscription is acknowledged.
    pub(crate) async fn connect(port: u16, prefix: &str) -> anyhow::Result<Self> {
        let mut opts = MqttOptions::new(
            format!("fieldgate-bench-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(16 << 20, 64 << 10);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let totals = Arc::new(Totals::default());
        let (subscribed_tx, mut subscribed_rx) = watch::channel(false);
        let task = {
            let totals = totals.clone();
            let prefix = prefix.to_owned();
            let client = client.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        // Subscribe after every connect: a clean session
                        // forgets its subscriptions when the broker restarts.
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if let Err(e) =
                                client.try_subscribe(format!("{prefix}/#"), QoS::AtMostOnce)
                            {
                                eprintln!("fieldgate-bench: subscriber: {e}");
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            match classify(&prefix, &p.topic, &p.payload) {
                                Kind::State { values, errors } => {
                                    totals.states.fetch_add(1, Ordering::Relaxed);
                                    totals.values.fetch_add(values, Ordering::Relaxed);
                                    totals.errors.fetch_add(errors, Ordering::Relaxed);
                                    totals
                                        .bytes
                                        .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                                }
                                Kind::Malformed => {
                                    totals.malformed.fetch_add(1, Ordering::Relaxed);
                                }
                                Kind::Other => {
                                    totals.other.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = subscribed_tx.send(true);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("fieldgate-bench: subscriber connection: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        let acked = tokio::time::timeout(Duration::from_secs(10), subscribed_rx.wait_for(|s| *s));
        match acked.await {
            Ok(Ok(_)) => {}
            _ => {
                task.abort();
                bail!("no SUBACK from the broker on port {port} within 10 s");
            }
        }
        Ok(Self {
            totals,
            task,
            _client: client,
        })
    }

    /// The totals so far.
    pub(crate) fn snapshot(&self) -> Counts {
        let t = &self.totals;
        Counts {
            states: t.states.load(Ordering::Relaxed),
            values: t.values.load(Ordering::Relaxed),
            errors: t.errors.load(Ordering::Relaxed),
            malformed: t.malformed.load(Ordering::Relaxed),
            other: t.other.load(Ordering::Relaxed),
            bytes: t.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for StateCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_messages_are_counted_with_their_values() {
        let payload = br#"{"name":"d1","timestamp":"2026-11-21T10:00:00Z",
            "properties":{"a":1,"b":2.5},"errors":{"c":"timeout after 1s"}}"#;
        assert_eq!(
            classify("fieldgate", "fieldgate/bench/d1", payload),
            Kind::State {
                values: 2,
                errors: 1
            }
        );
        let no_errors = br#"{"name":"d1","properties":{"a":1}}"#;
        assert_eq!(
            classify("fieldgate", "fieldgate/bench/d1", no_errors),
            Kind::State {
                values: 1,
                errors: 0
            }
        );
    }

    #[test]
    fn other_topics_are_not_states() {
        for topic in [
            "fieldgate/bench/d1/$state",
            "fieldgate/bench/d1/$meta",
            "fieldgate/bench/$will",
            "fieldgate/bench/d1/$set/result",
            "fieldgate/bench",
            "other/bench/d1",
            "fieldgatex/bench/d1",
        ] {
            assert_eq!(classify("fieldgate", topic, b"{}"), Kind::Other, "{topic}");
        }
    }

    #[test]
    fn bad_payloads_on_state_topics_are_malformed() {
        assert_eq!(
            classify("fieldgate", "fieldgate/bench/d1", b"not json"),
            Kind::Malformed
        );
        assert_eq!(
            classify("fieldgate", "fieldgate/bench/d1", br#"{"name":"d1"}"#),
            Kind::Malformed
        );
    }

    #[test]
    fn counts_subtract() {
        let a = Counts {
            states: 10,
            values: 100,
            ..Counts::default()
        };
        let b = Counts {
            states: 4,
            values: 40,
            ..Counts::default()
        };
        assert_eq!(a.since(&b).states, 6);
        assert_eq!(a.since(&b).values, 60);
    }
}
