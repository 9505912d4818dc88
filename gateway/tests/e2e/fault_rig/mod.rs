//! Misbehaving peers and observers for the fault-injection and security
//! tests (`faults.rs`, `faults_modbus.rs`, `security.rs`): a TCP server that
//! accepts and never answers, a TCP proxy that can silently stop forwarding
//! the connections it carries, and readers of `/metrics` and `/healthz`.
//! Everything is real sockets on loopback; nothing is mocked.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{Message, MqttProbe};

/// Upper bound of every wait for something the gateway should do.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A dummy device `name` whose property `n` counts up by one per poll
/// (every 100 ms): a healthy neighbour whose cadence the tests check.
pub(crate) fn clock(name: &str) -> String {
    format!(
        "  - name: {name}\n    driver: dummy\n    syncInterval: 100ms\n    properties:\n      - {{ name: n, type: uint64, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}\n"
    )
}

/// Asserts that the counter `n` of `states` goes up by exactly one each
/// time: the device never restarted and no poll went unpublished.
pub(crate) fn assert_counting(device: &str, states: &[Value]) {
    let ns: Vec<u64> = states
        .iter()
        .map(|s| s["properties"]["n"].as_u64().expect("counter n"))
        .collect();
    assert!(ns.len() >= 2, "{device}: too few states: {ns:?}");
    for w in ns.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{device}: counter jumped: {ns:?}");
    }
}

/// Asserts that `device` published in time at its poll `period`: the
/// reading timestamps of `states` increase, no interval reaches three
/// periods (no poll went missing or stalled), and the states per second
/// over the whole span are within a quarter of one per period.
pub(crate) fn assert_cadence(device: &str, states: &[Value], period: Duration) {
    assert!(
        states.len() >= 10,
        "{device}: too few states: {}",
        states.len()
    );
    let times: Vec<std::time::SystemTime> = states
        .iter()
        .map(|s| {
            let ts = s["timestamp"].as_str().expect("timestamp");
            humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{ts}: {e}"))
        })
        .collect();
    for w in times.windows(2) {
        let dt = w[1]
            .duration_since(w[0])
            .unwrap_or_else(|_| panic!("{device}: timestamp went back: {w:?}"));
        assert!(
            dt > Duration::ZERO && dt < 3 * period,
            "{device}: {dt:?} between two readings (period {period:?})"
        );
    }
    let span = times[times.len() - 1]
        .duration_since(times[0])
        .unwrap_or_default()
        .as_secs_f64();
    let per_second = (times.len() - 1) as f64 / span;
    let want = 1.0 / period.as_secs_f64();
    assert!(
        (per_second - want).abs() <= want / 4.0,
        "{device}: {per_second:.2} states/s over {span:.1}s, expected {want:.1}"
    );
}

/// A subscriber to everything under `fieldgate/<namespace>/` that records
/// every message it sees while the test waits for some.
pub(crate) struct Recorder {
    probe: MqttProbe,
    prefix: String,
    /// Every message received so far, in arrival order.
    pub seen: Vec<Message>,
}

impl Recorder {
    /// Connects to the broker on `port` and subscribes (QoS 1).
    pub(crate) async fn start(port: u16, namespace: &str) -> Self {
        let probe = MqttProbe::connect(port).await;
        let prefix = format!("fieldgate/{namespace}");
        probe.subscribe(&format!("{prefix}/#"), 1).await;
        Self {
            probe,
            prefix,
            seen: Vec::new(),
        }
    }

    /// The state topic T of `device`.
    pub(crate) fn topic(&self, device: &str) -> String {
        format!("{}/{device}", self.prefix)
    }

    /// The next message matching `pred`; panics after [`WAIT`].
    pub(crate) async fn wait(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Message {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self
                .probe
                .next(left)
                .await
                .unwrap_or_else(|| panic!("timed out after {WAIT:?} waiting for {what}"));
            self.seen.push(m.clone());
            if pred(&m) {
                return m;
            }
        }
    }

    /// The first message matching `pred`, already recorded or still to come.
    pub(crate) async fn seen_or_wait(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Message {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return m.clone();
        }
        self.wait(what, pred).await
    }

    /// Waits until `T/$state` of `device` says `payload`.
    pub(crate) async fn status(&mut self, device: &str, payload: &str) {
        let t = format!("{}/$state", self.topic(device));
        self.wait(&format!("{t} = {payload}"), |m| {
            m.topic == t && m.payload_str() == payload
        })
        .await;
    }

    /// Waits until each `(device, payload)` was said on its `T/$state`, in
    /// any order.
    pub(crate) async fn statuses(&mut self, expected: &[(&str, &str)]) {
        let mut missing: Vec<(String, String)> = expected
            .iter()
            .map(|(d, p)| (format!("{}/$state", self.topic(d)), p.to_string()))
            .collect();
        let what = format!("{missing:?}");
        self.wait(&what, |m| {
            missing.retain(|(t, p)| !(m.topic == *t && m.payload_str() == p.as_str()));
            missing.is_empty()
        })
        .await;
    }

    /// The next state of `device` that satisfies `pred`.
    pub(crate) async fn state_where(
        &mut self,
        device: &str,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let t = self.topic(device);
        self.wait(&format!("a state of {device} with {what}"), |m| {
            m.topic == t && !m.payload.is_empty() && pred(&m.json())
        })
        .await
        .json()
    }

    /// Waits for `n` more states of `device`.
    pub(crate) async fn more_states(&mut self, device: &str, n: usize) {
        for _ in 0..n {
            self.state_where(device, "anything", |_| true).await;
        }
    }

    /// A position in the record, for [`Recorder::states_since`].
    pub(crate) fn mark(&self) -> usize {
        self.seen.len()
    }

    /// The states of `device` recorded since `mark`, parsed.
    pub(crate) fn states_since(&self, mark: usize, device: &str) -> Vec<Value> {
        let t = self.topic(device);
        self.seen[mark..]
            .iter()
            .filter(|m| m.topic == t && !m.payload.is_empty())
            .map(Message::json)
            .collect()
    }
}

/// The sample of `family` whose line contains every one of `labels` (e.g.
/// `device="tank"`), from the gateway's `/metrics` on 127.0.0.1:`port`.
pub(crate) fn metric(port: u16, family: &str, labels: &[&str]) -> Option<f64> {
    let (_, body) = crate::support::http_get(&format!("127.0.0.1:{port}"), "/metrics").ok()?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The status code of `/healthz` on 127.0.0.1:`port` (`None`: no answer).
pub(crate) fn healthz(port: u16) -> Option<u16> {
    crate::support::http_get(&format!("127.0.0.1:{port}"), "/healthz")
        .ok()
        .map(|(code, _)| code)
}

/// A TCP server that accepts every connection and then never sends a byte:
/// a device whose network stack runs while its application hangs.
pub(crate) struct FrozenServer {
    /// The loopback port it listens on.
    pub port: u16,
    held: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FrozenServer {
    /// Listens on `addr` (`127.0.0.1:0` for a free port).
    pub(crate) async fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind frozen server");
        let port = listener.local_addr().expect("local_addr").port();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (h, a) = (held.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                // Kept open and never read: requests pile up unanswered.
                h.lock().unwrap().push(stream);
            }
        });
        Self {
            port,
            held,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection it holds (the hung
    /// application is finally killed); returns once the port is free.
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.held.lock().unwrap().clear();
    }
}

impl Drop for FrozenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy to `upstream`: a network the test controls.
/// [`Proxy::blackhole`] makes every connection it carries at that moment
/// silently lose all data in both directions without closing anything (a
/// half-open connection: a NAT entry or a firewall state lost, a cable cut
/// behind a switch), while connections made afterwards are forwarded
/// normally. [`Proxy::cut`] closes every connection it carries, and
/// [`Proxy::refuse`] turns new ones away (closed at once).
pub(crate) struct Proxy {
    /// The loopback port clients connect to.
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    /// Bytes forwarded from clients to the upstream.
    up: Arc<AtomicU64>,
    live: Arc<Mutex<Vec<Link>>>,
    refusing: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// The switches of one proxied connection.
#[derive(Clone)]
struct Link {
    dead: Arc<AtomicBool>,
    cut: CancellationToken,
}

impl Proxy {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub(crate) async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("local_addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicU64::new(0));
        let live: Arc<Mutex<Vec<Link>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let (a, l, r, u) = (accepted.clone(), live.clone(), refusing.clone(), up.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    continue;
                }
                a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let link = Link {
                    dead: Arc::new(AtomicBool::new(false)),
                    cut: CancellationToken::new(),
                };
                l.lock().unwrap().push(link.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, link.clone(), Some(u.clone())));
                tokio::spawn(pump(sr, cw, link, None));
            }
        });
        Self {
            port,
            accepted,
            up,
            live,
            refusing,
            task,
        }
    }

    /// Connections accepted (and forwarded) so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from clients to the upstream so far.
    pub(crate) fn bytes_up(&self) -> u64 {
        self.up.load(Ordering::SeqCst)
    }

    /// Every connection open now stops forwarding, silently and for good.
    pub(crate) fn blackhole(&self) {
        for link in self.live.lock().unwrap().drain(..) {
            link.dead.store(true, Ordering::SeqCst);
        }
    }

    /// Closes every connection open now, both ways.
    pub(crate) fn cut(&self) {
        for link in self.live.lock().unwrap().drain(..) {
            link.cut.cancel();
        }
    }

    /// While `on`, new connections are closed as soon as they are accepted.
    pub(crate) fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Copies `r` to `w` until either ends or the link is cut; once the link
/// is dead, reads and discards.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    link: Link,
    count: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            _ = link.cut.cancelled() => return,
            read = r.read(&mut buf) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                if link.dead.load(Ordering::SeqCst) {
                    // A lost network does not deliver the close either:
                    // keep the other side open until cut or the test ends.
                    link.cut.cancelled().await;
                    return;
                }
                let _ = w.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if link.dead.load(Ordering::SeqCst) {
            continue;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
}
