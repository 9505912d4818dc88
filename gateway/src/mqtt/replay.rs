//! Retained topics a session publishes again after a reconnect (#18 item 5,
//! a flapping uplink). A broker that resumed the session (`session present`)
//! and is the same broker as before still holds every retained message it
//! acknowledged, and what changed while the link was down waits in the
//! store: only topics whose latest message the store dropped are published
//! again. A clean session (or another broker) may have lost its retained
//! store: every topic is published again, paced (built one at a time as the
//! connection takes them, sharing the in-flight window with the store).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::outbox::DroppedRetained;
use super::{OutMsg, PayloadBuilder};

/// A retained topic as the session keeps it for replays after a reconnect.
enum Retained {
    /// The message as published.
    Kept(OutMsg),
    /// The message without its payload, and how to build the payload.
    Rebuilt {
        template: OutMsg,
        rebuild: PayloadBuilder,
    },
}

impl Retained {
    /// The message to publish again.
    fn message(&self) -> OutMsg {
        match self {
            Retained::Kept(msg) => msg.clone(),
            Retained::Rebuilt { template, rebuild } => OutMsg {
                payload: rebuild.build(),
                ..template.clone()
            },
        }
    }
}

/// What a connect re-publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Nothing: the broker holds every retained topic's latest value, or
    /// the store still holds it.
    Nothing,
    /// Only topics whose latest message the store dropped (this many).
    Changed(usize),
    /// Every retained topic (this many): a clean session or another broker.
    All(usize),
}

/// The session's retained topics and the replay after a connect.
#[derive(Default)]
pub(super) struct RetainedTopics {
    topics: HashMap<Arc<str>, Retained>,
    /// Topics whose latest message the store dropped before the broker had
    /// it: the broker may hold an older value.
    dirty: HashSet<Arc<str>>,
    /// Topics to publish on this connection, in order.
    queue: VecDeque<Arc<str>>,
    /// The broker of the last connection.
    last_server: Option<String>,
}

impl RetainedTopics {
    /// Remembers a retained message (its latest value is now queued in the
    /// store, so the topic is no longer dirty).
    pub(super) fn keep(&mut self, msg: &OutMsg) {
        self.dirty.remove(&msg.topic);
        self.topics
            .insert(msg.topic.clone(), Retained::Kept(msg.clone()));
    }

    /// Like [`RetainedTopics::keep`], keeping `rebuild` instead of the payload.
    pub(super) fn keep_rebuilt(&mut self, msg: &OutMsg, rebuild: PayloadBuilder) {
        self.dirty.remove(&msg.topic);
        let template = OutMsg {
            payload: Bytes::new(),
            ..msg.clone()
        };
        self.topics
            .insert(msg.topic.clone(), Retained::Rebuilt { template, rebuild });
    }

    /// Forgets a topic (cleared, or refused by the broker for good).
    pub(super) fn forget(&mut self, topic: &str) {
        self.topics.remove(topic);
        self.dirty.remove(topic);
    }

    /// Retained topics kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.topics.len()
    }

    /// The store dropped these retained messages: their topics are
    /// published again after the next connect. With `overflow` (too many to
    /// list) every topic is.
    pub(super) fn note_dropped(&mut self, dropped: DroppedRetained) {
        if dropped.overflow {
            self.dirty.extend(self.topics.keys().cloned());
            return;
        }
        for topic in dropped.topics {
            if self.topics.contains_key(&topic) {
                self.dirty.insert(topic);
            }
        }
    }

    /// Plans the replay of a connect to `server`: `reconnect` is false for
    /// the session's first connection (the retained messages are still in
    /// the store then, unless it dropped them).
    pub(super) fn plan(&mut self, server: &str, session_present: bool, reconnect: bool) -> Plan {
        let same_broker = self.last_server.as_deref() == Some(server);
        if !same_broker {
            self.last_server = Some(server.to_owned());
        }
        self.queue.clear();
        if reconnect && !(session_present && same_broker) {
            self.dirty.clear();
            self.queue.extend(self.topics.keys().cloned());
            self.queue.shrink_to_fit();
            return Plan::All(self.queue.len());
        }
        self.queue.extend(self.dirty.drain());
        match self.queue.len() {
            0 => Plan::Nothing,
            n => Plan::Changed(n),
        }
    }

    /// Topics still to publish on this connection.
    pub(super) fn pending(&self) -> usize {
        self.queue.len()
    }

    /// The next message to publish again, built now (topics forgotten since
    /// the plan are skipped). Give it back with [`RetainedTopics::unsent`]
    /// when the connection could not take it.
    pub(super) fn next(&mut self) -> Option<OutMsg> {
        while let Some(topic) = self.queue.pop_front() {
            if let Some(r) = self.topics.get(&topic) {
                return Some(r.message());
            }
        }
        if self.queue.capacity() > 64 {
            // A replay of every topic is done: do not keep its memory.
            self.queue = VecDeque::new();
        }
        None
    }

    /// The connection did not take `msg`: it is the next again.
    pub(super) fn unsent(&mut self, msg: &OutMsg) {
        self.queue.push_front(msg.topic.clone());
    }

    /// The connection was lost: what was not yet published is published
    /// after the next connect, whatever it resumes.
    pub(super) fn on_down(&mut self) {
        self.dirty.extend(self.queue.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retained(topic: &str, payload: &str) -> OutMsg {
        OutMsg {
            topic: topic.into(),
            payload: Bytes::from(payload.to_owned()),
            qos: 1,
            retain: true,
            correlation: None,
            props: None,
        }
    }

    fn drain(r: &mut RetainedTopics) -> Vec<String> {
        let mut out: Vec<String> = std::iter::from_fn(|| r.next())
            .map(|m| m.topic.to_string())
            .collect();
        out.sort();
        out
    }

    fn three() -> RetainedTopics {
        let mut r = RetainedTopics::default();
        for t in ["a", "b", "c"] {
            r.keep(&retained(t, "1"));
        }
        assert_eq!(r.plan("tcp://x", false, false), Plan::Nothing);
        r
    }

    #[test]
    fn a_resumed_session_on_the_same_broker_replays_nothing_unchanged() {
        let mut r = three();
        assert_eq!(r.plan("tcp://x", true, true), Plan::Nothing);
        assert!(r.next().is_none());
    }

    #[test]
    fn a_clean_session_or_another_broker_replays_everything() {
        let mut r = three();
        assert_eq!(r.plan("tcp://x", false, true), Plan::All(3));
        assert_eq!(drain(&mut r), ["a", "b", "c"]);
        assert_eq!(r.plan("tcp://y", true, true), Plan::All(3));
        assert_eq!(drain(&mut r), ["a", "b", "c"]);
    }

    #[test]
    fn topics_the_store_dropped_are_replayed_with_their_latest_value() {
        let mut r = three();
        r.keep(&retained("b", "2"));
        r.note_dropped(DroppedRetained {
            topics: vec!["b".into(), "not-retained".into()],
            overflow: false,
        });
        assert_eq!(r.plan("tcp://x", true, true), Plan::Changed(1));
        let m = r.next().unwrap();
        assert_eq!((&*m.topic, &m.payload[..]), ("b", &b"2"[..]));
        // Once queued again the store carries it: no longer dirty.
        r.note_dropped(DroppedRetained {
            topics: vec!["c".into()],
            overflow: false,
        });
        r.keep(&retained("c", "3"));
        assert_eq!(r.plan("tcp://x", true, true), Plan::Nothing);
    }

    #[test]
    fn an_interrupted_replay_continues_after_the_next_connect() {
        let mut r = three();
        assert_eq!(r.plan("tcp://x", false, true), Plan::All(3));
        let first = r.next().unwrap();
        let second = r.next().unwrap();
        r.unsent(&second);
        r.on_down();
        assert_eq!(r.plan("tcp://x", true, true), Plan::Changed(2));
        let rest = drain(&mut r);
        assert!(!rest.contains(&first.topic.to_string()), "{rest:?}");
        assert!(rest.contains(&second.topic.to_string()), "{rest:?}");
    }

    #[test]
    fn overflow_marks_every_topic_and_forgotten_topics_are_skipped() {
        let mut r = three();
        r.note_dropped(DroppedRetained {
            topics: Vec::new(),
            overflow: true,
        });
        r.forget("a");
        assert_eq!(r.len(), 2);
        assert_eq!(r.plan("tcp://x", true, true), Plan::Changed(2));
        assert_eq!(drain(&mut r), ["b", "c"]);
    }
}
