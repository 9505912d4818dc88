//! The session's store and replays end to end, with the real binary and a
//! real Mosquitto: a reconnect with a resumed session re-publishes no
//! unchanged retained topic (a flapping uplink, #18 item 5) while a clean
//! session gets all of them again; a reload whose hand-over times out loses
//! nothing, with a memory store and with a file store (#17).

use crate::support;

use crate::fault_rig;

use std::collections::BTreeSet;

use fault_rig::{clock, metric, Proxy, Recorder, WAIT};
use support::{Gateway, Mosquitto};

/// Idle devices with retained topics (`T`, `T/$meta`, `T/$state`).
const FANS: usize = 20;

/// A gateway in namespace `ns` with `FANS` idle fans and a clock `tick`;
/// `client` lines go under `mqtt.client`.
fn config(ns: &str, server: &str, metrics: u16, client: &str) -> String {
    let mut devices = String::new();
    for i in 0..FANS {
        devices.push_str(&format!(
            "  - {{ name: fan{i}, driver: dummy, model: fan, syncInterval: 1h }}\n"
        ));
    }
    format!(
        "gateway:\n  namespace: {ns}\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: {server}\n    maxReconnectInterval: 1s\n{client}  message:\n    qos: 1\ndevices:\n{devices}{}",
        clock("tick")
    )
}

/// Waits until `cond` holds (checked every 50 ms), at most [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let ok = support::wait_until_async(WAIT, &mut cond).await;
    assert!(ok, "timed out after {WAIT:?} waiting for {what}");
}

fn reconnects(metrics: u16) -> f64 {
    metric(metrics, "fieldgate_mqtt_reconnects_total", &[]).unwrap_or(0.0)
}

/// What a reconnect re-published: messages on the fans' topics the
/// subscriber got after the reconnect, and the bytes the gateway sent
/// from the cut until 20 clock states later.
struct Replay {
    fan_messages: usize,
    metas: usize,
    bytes: u64,
}

/// Starts a gateway through a proxy, waits until every fan's `$meta` is
/// on the broker, cuts the connection and measures what follows.
async fn reconnect(ns: &str, client: &str) -> Replay {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", broker.port())).await;
    let metrics = support::free_port();
    let yaml = config(
        ns,
        &format!("tcp://127.0.0.1:{}", proxy.port),
        metrics,
        client,
    );
    let gw = Gateway::start(&yaml);
    let mut rec = Recorder::start(broker.port(), ns).await;
    let mut metas: BTreeSet<String> = BTreeSet::new();
    rec.wait("every fan's $meta", |m| {
        if m.topic.ends_with("/$meta") {
            metas.insert(m.topic.clone());
        }
        metas.len() == FANS
    })
    .await;
    rec.more_states("tick", 3).await;

    let mark = rec.mark();
    let bytes_before = proxy.bytes_up();
    let before = reconnects(metrics);
    proxy.cut();
    until("a reconnect", || reconnects(metrics) > before).await;
    // Two seconds of clock states after the reconnect: a replay goes out
    // with (or before) the first of them.
    rec.more_states("tick", 20).await;
    let bytes = proxy.bytes_up() - bytes_before;
    let fan_prefix = format!("fieldgate/{ns}/fan");
    let after = &rec.seen[mark..];
    let replay = Replay {
        fan_messages: after
            .iter()
            .filter(|m| m.topic.starts_with(&fan_prefix))
            .count(),
        metas: after
            .iter()
            .filter(|m| m.topic.starts_with(&fan_prefix) && m.topic.ends_with("/$meta"))
            .count(),
        bytes,
    };
    // What the clock said while the link was down arrived, in order.
    fault_rig::assert_counting("tick", &rec.states_since(mark, "tick"));
    eprintln!(
        "{ns}: after the reconnect {} message(s) on the fans' topics ({} $meta), {} bytes sent\n{}",
        replay.fan_messages,
        replay.metas,
        replay.bytes,
        gw.log()
            .lines()
            .filter(|l| l.contains("re-publishing"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    replay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_does_not_republish_unchanged_retained_topics() {
    let r = reconnect(
        "resumed",
        "    clientId: replay-resumed\n    cleanSession: false\n",
    )
    .await;
    // Before #18 item 5: every fan's T/$meta and T/$state again (40).
    assert_eq!(
        r.fan_messages, 0,
        "nothing unchanged is re-published ({} bytes sent)",
        r.bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_republishes_every_retained_topic() {
    let r = reconnect(
        "clean",
        "    clientId: replay-clean\n    cleanSession: true\n",
    )
    .await;
    assert_eq!(r.metas, FANS, "every $meta again");
    assert!(r.fan_messages >= 2 * FANS, "$meta and $state of each fan");
}

/// A reload that changes the client options while the uplink is silently
/// dead: the old session waits for its full store to drain and misses the
/// 3 s hand-over deadline. The new session starts at once; the old one
/// passes its messages on when its connection is declared lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_hand_over_times_out_loses_nothing() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", broker.port())).await;
    let metrics = support::free_port();
    let ns = "handover";
    let yaml = |server: &str| {
        format!(
            "gateway:\n  namespace: {ns}\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: {server}\n    clientId: handover-1\n    keepAlive: 5s\n    pingTimeout: 5s\n    messageChannelDepth: 10\n    maxReconnectInterval: 1s\n  message:\n    qos: 1\ndevices:\n{}",
            clock("tick")
        )
    };
    let gw = Gateway::start(&yaml(&format!("tcp://127.0.0.1:{}", proxy.port)));
    let mut rec = Recorder::start(broker.port(), ns).await;
    rec.more_states("tick", 3).await;
    let mark = rec.mark();

    proxy.blackhole();
    until("a full store", || {
        metric(metrics, "fieldgate_mqtt_store_messages", &[]).unwrap_or(0.0) >= 10.0
    })
    .await;
    gw.replace_config(&yaml(&broker.url()));
    until("the hand-over timeout counted", || {
        metric(metrics, "fieldgate_mqtt_handover_timeouts_total", &[]).unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(
        gw.wait_for_log("to the new session late", WAIT),
        "the old session passes its messages on: {}",
        gw.log()
    );
    // Every clock value from before the outage to now arrived (the late
    // ones after newer ones): the counter has no gap.
    let seen = |rec: &Recorder| -> BTreeSet<u64> {
        rec.states_since(mark, "tick")
            .iter()
            .filter_map(|s| s["properties"]["n"].as_u64())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        rec.more_states("tick", 1).await;
        let ns = seen(&rec);
        let (first, last) = (ns.first().copied(), ns.last().copied());
        if let (Some(first), Some(last)) = (first, last) {
            if ns.len() as u64 == last - first + 1 && last >= first + 30 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clock values lost in the hand-over: {ns:?}\n{}",
            gw.log()
        );
    }
    assert_eq!(
        metric(metrics, "fieldgate_mqtt_dropped_total", &[]).unwrap_or(0.0),
        0.0,
        "nothing dropped: {}",
        gw.log()
    );
}

/// The sum of every sample of `family` on the gateway's `/metrics` (all
/// sessions and reasons); 0 when it has none.
fn metric_sum(port: u16, family: &str) -> f64 {
    let Ok((_, body)) = support::http_get(&format!("127.0.0.1:{port}"), "/metrics") else {
        return 0.0;
    };
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A device with a 1 000-byte string and a counter, polled every 100 ms:
/// 10 kB/s that fill a small file store in seconds.
fn filler(name: &str) -> String {
    format!(
        "  - name: {name}\n    driver: dummy\n    syncInterval: 100ms\n    properties:\n      - {{ name: n, type: uint64, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}\n      - {{ name: pad, type: string, simulate: {{ constant: \"{}\" }} }}\n",
        "x".repeat(1000)
    )
}

/// The file-store side of the hand-over (#17): a reload that changes the
/// client options while the uplink is silently dead, with a full file store
/// (`maxBytes: 64KiB`, about 56 KiB of live records). The old session
/// misses the 3 s hand-over deadline; the new one, on the same directory,
/// cannot open it yet and starts from memory. When the old session's
/// connection is declared lost it closes the directory with its messages
/// on disk, and the new session opens it and sends them: nothing lost.
///
/// Opening the store late adds what the new session held in memory (in
/// flight) on top of a full store: kept past `maxBytes` (the session
/// pushes back until it drains), not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_hand_over_times_out_keeps_the_file_stores_messages() {
    let broker = Mosquitto::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", broker.port())).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = support::free_port();
    let ns = "handoverfile";
    let fillers: String = (0..4).map(|i| filler(&format!("pad{i}"))).collect();
    let yaml = |server: &str| {
        format!(
            "gateway:\n  namespace: {ns}\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: {server}\n    clientId: handover-file\n    keepAlive: 5s\n    pingTimeout: 5s\n    maxReconnectInterval: 1s\n    store: {{ type: file, directoryPrefix: '{}/q', maxBytes: 64KiB }}\n  message:\n    qos: 1\ndevices:\n{}{fillers}",
            dir.path().display(),
            clock("tick")
        )
    };
    let gw = Gateway::start(&yaml(&format!("tcp://127.0.0.1:{}", proxy.port)));
    let mut rec = Recorder::start(broker.port(), ns).await;
    rec.more_states("tick", 3).await;
    let mark = rec.mark();

    proxy.blackhole();
    until("a nearly full file store", || {
        metric(metrics, "fieldgate_mqtt_store_bytes", &[]).unwrap_or(0.0) >= 40_000.0
    })
    .await;
    // Full: the session pushes back (the broker counts as reachable), so
    // the store stops growing; while it fills, 50 messages a second arrive.
    let mut last = -1.0;
    let mut steady = 0;
    until(
        "a full file store (no growth over 20 reads 50 ms apart)",
        || {
            let now = metric(metrics, "fieldgate_mqtt_store_messages", &[]).unwrap_or(-1.0);
            steady = if now == last { steady + 1 } else { 0 };
            last = now;
            steady >= 20
        },
    )
    .await;
    gw.replace_config(&yaml(&broker.url()));
    until("the hand-over timeout counted", || {
        metric_sum(metrics, "fieldgate_mqtt_handover_timeouts_total") >= 1.0
    })
    .await;
    assert!(
        gw.wait_for_log(
            "stay in the file store; the new session reads them now",
            WAIT
        ),
        "the old session leaves its messages on disk:\n{}",
        gw.log()
    );
    assert!(
        gw.wait_for_log(
            "the old session closed the store directory: opening it",
            WAIT
        ),
        "the new session opens the directory once the old one closed it:\n{}",
        gw.log()
    );
    assert!(
        gw.wait_for_log("store: recovered ", WAIT),
        "the new session read the old one's messages from disk:\n{}",
        gw.log()
    );
    let log = gw.log();
    let recovered: u64 = log
        .lines()
        .filter_map(|l| {
            let rest = l.split("store: recovered ").nth(1)?;
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    assert!(
        recovered > 0,
        "the new session read the old one's messages from disk:\n{log}"
    );
    // Every clock value from before the outage to now arrived: the
    // counter has no gap.
    let seen = |rec: &Recorder| -> BTreeSet<u64> {
        rec.states_since(mark, "tick")
            .iter()
            .filter_map(|s| s["properties"]["n"].as_u64())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        rec.more_states("tick", 1).await;
        let ns = seen(&rec);
        let (first, last) = (ns.first().copied(), ns.last().copied());
        if let (Some(first), Some(last)) = (first, last) {
            if ns.len() as u64 == last - first + 1 && last >= first + 30 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clock values lost in the hand-over: {ns:?}\n{}",
            gw.log()
        );
    }
    // Counters: one timeout, nothing dropped for any reason, and the
    // messages read back from disk counted as replayed.
    assert_eq!(
        metric_sum(metrics, "fieldgate_mqtt_handover_timeouts_total"),
        1.0,
        "one hand-over timed out"
    );
    assert_eq!(
        metric_sum(metrics, "fieldgate_mqtt_dropped_total"),
        0.0,
        "nothing dropped: {}",
        gw.log()
    );
    until("the recovered messages counted as replayed", || {
        metric_sum(metrics, "fieldgate_mqtt_replayed_total") >= recovered as f64
    })
    .await;
    // The new session sent everything: its store drains.
    until("an empty store", || {
        metric(metrics, "fieldgate_mqtt_store_messages", &[]).unwrap_or(1.0) < 10.0
    })
    .await;
}

/// A file store whose segment got a torn tail (a power cut mid-write):
/// the next start recovers what is whole, cuts the rest off and counts the
/// damage (`reason="store_damaged"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_file_store_is_recovered_and_the_damage_counted() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let metrics = support::free_port();
    let yaml = |metrics: u16| {
        format!(
            "gateway:\n  namespace: damaged\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: {}\n    store: {{ type: file, directoryPrefix: '{}/q' }}\n  message:\n    qos: 1\ndevices:\n{}",
            broker.url(),
            dir.path().display(),
            clock("tick")
        )
    };
    let mut gw = Gateway::start(&yaml(metrics));
    let mut rec = Recorder::start(broker.port(), "damaged").await;
    rec.more_states("tick", 3).await;
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "the gateway stops");
    let segment = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a segment file");
    // A record header promising 100 bytes, then 20 bytes of noise.
    let mut torn = 100u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xA5; 24]);
    let mut data = std::fs::read(&segment).unwrap();
    data.extend_from_slice(&torn);
    std::fs::write(&segment, data).unwrap();

    let metrics = support::free_port();
    let gw = Gateway::start(&yaml(metrics));
    until("the damage counted", || {
        metric(
            metrics,
            "fieldgate_mqtt_dropped_total",
            &["reason=\"store_damaged\""],
        ) == Some(1.0)
    })
    .await;
    assert!(gw.log().contains("dropped the remaining"), "{}", gw.log());
    rec.more_states("tick", 3).await;
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
