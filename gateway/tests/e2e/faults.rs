//! Fault injection on the gateway's own side, end to end with real
//! processes: the broker killed (`kill -9`) and restarted again and again
//! under load, the config file deleted or made unreadable while running, and
//! the disk under the file store filling up. For each fault: the gateway
//! stays up, reports it (log, `/healthz`, metrics), keeps its devices'
//! cadence, loses nothing it had taken, and recovers by itself.
//!
//! Field-side faults are in `faults_modbus.rs`; what older test files
//! already cover is listed in RELIABILITY.md.

use crate::support;

use crate::fault_rig;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use fault_rig::{assert_counting, clock, healthz, metric, Proxy, Recorder, WAIT};
use support::counters::{assert_gap_free, counter_devices, receive_until, Streams, SECOND_RUN};
use support::{Gateway, Mosquitto, MqttProbe};

/// A broker whose session store survives restarts: a persistent
/// subscriber's session, saved once, is found again after every `kill -9`,
/// so messages published while that subscriber reconnects are queued for it.
fn persistent_broker(state: &Path) -> Mosquitto {
    use std::os::unix::fs::PermissionsExt;
    // Mosquitto started as root runs as `mosquitto`: it writes its
    // database into the (root-owned) temp dir.
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o777))
        .expect("open up the broker's state dir");
    Mosquitto::start_with(&format!(
        "persistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_queued_bytes 0\nautosave_interval 3600\n",
        state.display()
    ))
}

/// A persistent QoS 1 subscriber to the counter devices' states.
async fn subscriber(port: u16, id: &str) -> MqttProbe {
    let probe = MqttProbe::connect_persistent(port, id).await;
    probe.subscribe("fieldgate/faults/+", 1).await;
    probe
}

/// A config with `n` counter devices `d0…` read every `interval` and
/// published at QoS 1 on every read; `client` goes under `mqtt.client`.
fn counters(port: u16, metrics: u16, client: &str, n: usize, interval: &str, start: u64) -> String {
    let mut yaml = format!(
        r#"gateway:
  namespace: faults
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{port}
    clientId: faults-gw
    maxReconnectInterval: 1s
{client}
  message: {{ qos: 1, retained: false }}
devices:
"#
    );
    yaml.push_str(&counter_devices(n, interval, start));
    yaml
}

/// `family{session="faults-gw"}` from /metrics.
fn session_metric(port: u16, family: &str) -> Option<f64> {
    metric(port, family, &["session=\"faults-gw\""])
}

/// Keeps receiving (so nothing piles up in the probe) until `cond` holds.
async fn receive_while_waiting(
    probe: &mut MqttProbe,
    streams: &mut Streams,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        if let Some(m) = probe.next(Duration::from_millis(50)).await {
            streams.add(&m);
        }
    }
}

/// Waits until the store holds no more than live traffic keeps in flight.
async fn receive_until_drained(probe: &mut MqttProbe, streams: &mut Streams, metrics: u16) {
    receive_while_waiting(probe, streams, "the store to drain", || {
        session_metric(metrics, "fieldgate_mqtt_store_messages").is_some_and(|n| n < 64.0)
    })
    .await;
}

/// How long after a kill values read before it may still have been on
/// their way through the broker (acknowledged by it, not yet at the
/// subscriber): only those may be lost, and only by the broker's crash.
const IN_FLIGHT: Duration = Duration::from_millis(500);
/// Values of one 20 ms device read within [`IN_FLIGHT`] on both sides of
/// a kill: the most one crash of the broker may lose of it.
const MAX_LOST_PER_KILL: u64 = 2 * 500 / 20 + 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_four_times_under_load_gets_everything_read_while_it_was_down() {
    const DEVICES: usize = 5;
    let state = tempfile::tempdir().unwrap();
    let mut broker = persistent_broker(state.path());
    let mut probe = subscriber(broker.port(), "faults-sub-kill").await;
    // Save the subscriber's session into the broker's database once: every
    // restart after a kill -9 loads it and queues for the subscriber again.
    broker.stop_graceful();
    broker.restart();
    probe.wait_reconnected(1, WAIT).await;

    let metrics = support::free_port();
    // 5 devices × 20 ms = 250 messages/s, held in memory while the broker
    // is away.
    let mut gw = Gateway::start(&counters(
        broker.port(),
        metrics,
        "    messageChannelDepth: 100000",
        DEVICES,
        "20ms",
        0,
    ));
    let names: Vec<String> = (0..DEVICES).map(|i| format!("d{i}")).collect();
    let mut streams = Streams::new("faults");
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        s.by_device.len() == DEVICES
    })
    .await;

    let mut kills = Vec::new();
    let mut restarted = SystemTime::UNIX_EPOCH;
    for round in 1..=4 {
        // Load flows, the gateway has sent what it stored during the last
        // outage, and the subscriber has caught up with everything read
        // since (delivery is in order). Killing the broker earlier would
        // lose stored values it had acknowledged but not yet delivered:
        // a loss of the broker, not of the gateway, and not bounded by
        // read times.
        receive_until_drained(&mut probe, &mut streams, metrics).await;
        let drained = SystemTime::now();
        receive_until(&mut probe, &mut streams, WAIT, |s| {
            names.iter().all(|d| s.read_since(d, drained) >= 10)
        })
        .await;
        // …when the broker crashes.
        let down = SystemTime::now();
        broker.stop();
        kills.push(down);
        receive_while_waiting(&mut probe, &mut streams, "/healthz 503", || {
            healthz(metrics) == Some(503)
        })
        .await;
        // A second's worth stored: most of the outage lies beyond the
        // in-flight allowance.
        receive_while_waiting(&mut probe, &mut streams, "messages stored", || {
            session_metric(metrics, "fieldgate_mqtt_store_messages").is_some_and(|n| n >= 250.0)
        })
        .await;
        assert!(gw.is_running(), "round {round}: the gateway exited");
        restarted = SystemTime::now();
        broker.restart();
        receive_while_waiting(&mut probe, &mut streams, "/healthz 200", || {
            healthz(metrics) == Some(200)
        })
        .await;
    }
    receive_until_drained(&mut probe, &mut streams, metrics).await;
    // Everything read until now has arrived once values read after the last
    // restart keep coming (delivery is in order).
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        names.iter().all(|d| s.read_since(d, restarted) >= 20)
    })
    .await;

    let mut lost_in_broker = 0;
    for d in &names {
        let got = &streams.by_device[d];
        let by_value: BTreeMap<u64, SystemTime> = got.iter().copied().collect();
        assert_eq!(by_value.keys().next(), Some(&0), "{d}: the first value");
        let last = *by_value.keys().last().unwrap();
        // A value missing between two delivered ones was read between
        // their read times: allowed only right before a kill.
        let mut prev: Option<(u64, SystemTime)> = None;
        for (&n, &at) in &by_value {
            if let Some((p, pt)) = prev {
                if n > p + 1 {
                    // The last value delivered before the gap was read
                    // within IN_FLIGHT of the kill too: the loss is what
                    // the broker had acknowledged in that window, at most
                    // MAX_LOST_PER_KILL values of a device.
                    let straddles = kills
                        .iter()
                        .any(|k| pt <= *k && *k <= pt + IN_FLIGHT && at <= *k + IN_FLIGHT);
                    assert!(
                        straddles,
                        "{d}: values {}..{} lost, read between {} and {}; kills at {:?}",
                        p + 1,
                        n - 1,
                        humantime::format_rfc3339_millis(pt),
                        humantime::format_rfc3339_millis(at),
                        kills
                            .iter()
                            .map(|k| humantime::format_rfc3339_millis(*k).to_string())
                            .collect::<Vec<_>>()
                    );
                    assert!(
                        n - p - 1 <= MAX_LOST_PER_KILL,
                        "{d}: {} values lost in one crash (values {}..{}), more than the {MAX_LOST_PER_KILL} read within {IN_FLIGHT:?}",
                        n - p - 1,
                        p + 1,
                        n - 1
                    );
                    lost_in_broker += n - p - 1;
                }
            }
            prev = Some((n, at));
        }
        assert!(last > 0);
        // Values were read during every outage, and they arrived.
        for (k, down) in kills.iter().enumerate() {
            let during = got
                .iter()
                .filter(|(_, t)| *t > *down + IN_FLIGHT)
                .filter(|(_, t)| kills.get(k + 1).is_none_or(|next| t < next))
                .count();
            assert!(during > 0, "{d}: nothing read after kill {k}");
        }
    }
    eprintln!(
        "values lost in the broker's crashes (acknowledged, not yet delivered): {lost_in_broker}"
    );
    let bound = 4 * DEVICES as u64 * MAX_LOST_PER_KILL;
    assert!(
        lost_in_broker <= bound,
        "{lost_in_broker} values lost in 4 crashes: more than {bound}"
    );
    let reconnects = session_metric(metrics, "fieldgate_mqtt_reconnects_total");
    assert!(
        reconnects >= Some(4.0),
        "reconnects counted: {reconnects:?}"
    );
    assert_eq!(
        session_metric(metrics, "fieldgate_mqtt_dropped_total"),
        Some(0.0)
    );
    assert!(gw.is_running(), "the gateway exited:\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_to_the_broker_cut_four_times_under_load_loses_nothing() {
    // The same outages as a broker crash, seen from the gateway (its
    // connection closed, new ones turned away), but the broker itself and
    // the subscriber stay up: whatever goes missing here is the gateway's.
    const DEVICES: usize = 5;
    let broker = Mosquitto::start();
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/faults/+", 1).await;
    let net = Proxy::start(format!("127.0.0.1:{}", broker.port())).await;
    let metrics = support::free_port();
    let mut gw = Gateway::start(&counters(
        net.port,
        metrics,
        "    messageChannelDepth: 100000",
        DEVICES,
        "20ms",
        0,
    ));
    let names: Vec<String> = (0..DEVICES).map(|i| format!("d{i}")).collect();
    let mut streams = Streams::new("faults");
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        s.by_device.len() == DEVICES
    })
    .await;
    let mut restored = SystemTime::UNIX_EPOCH;
    for round in 1..=4 {
        receive_until(&mut probe, &mut streams, WAIT, |s| {
            names.iter().all(|d| s.read_since(d, restored) >= 10)
        })
        .await;
        net.refuse(true);
        net.cut();
        receive_while_waiting(&mut probe, &mut streams, "/healthz 503", || {
            healthz(metrics) == Some(503)
        })
        .await;
        receive_while_waiting(&mut probe, &mut streams, "messages stored", || {
            session_metric(metrics, "fieldgate_mqtt_store_messages").is_some_and(|n| n >= 50.0)
        })
        .await;
        assert!(gw.is_running(), "round {round}: the gateway exited");
        restored = SystemTime::now();
        net.refuse(false);
        receive_while_waiting(&mut probe, &mut streams, "/healthz 200", || {
            healthz(metrics) == Some(200)
        })
        .await;
    }
    receive_until_drained(&mut probe, &mut streams, metrics).await;
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        names.iter().all(|d| s.read_since(d, restored) >= 20)
    })
    .await;
    for d in &names {
        let got = streams.firsts(d, false);
        assert_eq!(got[0], 0, "{d}: the first value");
        assert_gap_free(d, &got);
    }
    let reconnects = session_metric(metrics, "fieldgate_mqtt_reconnects_total");
    assert!(
        reconnects >= Some(4.0),
        "reconnects counted: {reconnects:?}"
    );
    assert!(gw.is_running(), "the gateway exited:\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_deleted_or_unreadable_while_running_changes_nothing_until_it_is_back() {
    const INVALID: &str = r#"result="invalid""#;
    const OK: &str = r#"result="ok""#;
    let broker = Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let yaml = |devices: &str| {
        format!(
            "gateway:\n  namespace: faults\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client: {{ server: \"tcp://127.0.0.1:{}\" }}\ndevices:\n{devices}",
            broker.port()
        )
    };
    let one = yaml(&clock("clock"));
    // Run as `nobody` where possible, so that a mode of 000 really means
    // unreadable (root reads anything).
    let (mut gw, unprivileged) = match Gateway::start_unprivileged(&one) {
        Some(gw) => (gw, true),
        None => (Gateway::start(&one), false),
    };
    let reloads =
        |result: &str| metric(metrics, "fieldgate_config_reloads_total", &[result]).unwrap_or(-1.0);
    rec.more_states("clock", 3).await;
    let mark = rec.mark();
    let path = gw.config_path().to_path_buf();

    // 1. Deleted: the watcher notices, the reload fails, nothing changes.
    std::fs::remove_file(&path).unwrap();
    let noticed = support::wait_until_async(WAIT, || reloads(INVALID) >= 1.0).await;
    assert!(noticed, "deletion not noticed:\n{}", gw.log());
    gw.sighup();
    let noticed = support::wait_until_async(WAIT, || reloads(INVALID) >= 2.0).await;
    assert!(
        noticed,
        "SIGHUP without a config not reported:\n{}",
        gw.log()
    );
    assert!(
        gw.log().contains("No such file or directory"),
        "{}",
        gw.log()
    );
    rec.more_states("clock", 5).await;
    assert_eq!(healthz(metrics), Some(200));

    // 2. A directory where the file was: unreadable in another way.
    std::fs::create_dir(&path).unwrap();
    gw.sighup();
    let noticed = support::wait_until_async(WAIT, || reloads(INVALID) >= 3.0).await;
    assert!(noticed, "a directory as config not reported:\n{}", gw.log());
    std::fs::remove_dir(&path).unwrap();

    // 3. Back, with a device added: applied as usual.
    let two = yaml(&[clock("clock"), clock("clock2")].concat());
    gw.replace_config(&two);
    rec.status("clock2", "online").await;
    assert_eq!(reloads(OK), 1.0);

    // 4. Mode 000 (for `nobody`; as root the kernel ignores the mode, so
    //    this step needs the unprivileged run).
    if unprivileged {
        use std::os::unix::fs::PermissionsExt;
        let before = reloads(INVALID);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        gw.sighup();
        let noticed = support::wait_until_async(WAIT, || reloads(INVALID) > before).await;
        assert!(noticed, "an unreadable config not reported:\n{}", gw.log());
        assert!(gw.log().contains("Permission denied"), "{}", gw.log());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        rec.more_states("clock2", 3).await;
    } else {
        eprintln!("not root: the mode 000 step needs `setpriv` to run as nobody; skipped");
    }

    // The untouched device never restarted and never missed a poll: its
    // counter goes up by one per state and it kept its 100 ms cadence in
    // time through every failed and applied reload.
    rec.more_states("clock", 3).await;
    let states = rec.states_since(mark, "clock");
    assert_counting("clock", &states);
    fault_rig::assert_cadence("clock", &states, Duration::from_millis(100));
    assert!(gw.is_running(), "the gateway exited:\n{}", gw.log());
    assert_eq!(healthz(metrics), Some(200));
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `1m`); `None` where the test may not
    /// mount (not root, no mount namespace rights).
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills `disk` until only about `free` bytes are left; returns the filler.
fn fill(disk: &Path, free: u64) -> PathBuf {
    let filler = disk.join("filler");
    let stat = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(disk)
        .output()
        .expect("df");
    let avail: u64 = String::from_utf8_lossy(&stat.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df avail");
    let size = avail.saturating_sub(free) as usize;
    std::fs::write(&filler, vec![0u8; size]).expect("write filler");
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_file_store_loses_nothing_and_leaves_it_recoverable() {
    let Some(disk) = SmallDisk::mount("1m") else {
        eprintln!("cannot mount a tmpfs here (needs root): skipped");
        return;
    };
    let filler = fill(disk.path(), 24 << 10);
    let state = tempfile::tempdir().unwrap();
    let mut broker = persistent_broker(state.path());
    let mut probe = subscriber(broker.port(), "faults-sub-disk").await;
    let store = format!(
        "    store: {{ type: file, directoryPrefix: '{}/q', maxBytes: 8MiB, minFreeBytes: 0 }}",
        disk.path().display()
    );
    let metrics = support::free_port();
    let mut gw = Gateway::start(&counters(broker.port(), metrics, &store, 2, "10ms", 0));
    let mut streams = Streams::new("faults");
    receive_until(&mut probe, &mut streams, WAIT, |s| s.by_device.len() == 2).await;

    // 1. The broker goes away and the disk fills up: the store cannot
    //    write, says so, and keeps the messages in memory.
    broker.stop_graceful();
    assert!(
        gw.wait_for_log("No space left on device", WAIT),
        "no write error logged:\n{}",
        gw.log()
    );
    let held = support::wait_until_async(WAIT, || {
        session_metric(metrics, "fieldgate_mqtt_store_messages").is_some_and(|n| n >= 500.0)
    })
    .await;
    assert!(held, "messages not held:\n{}", gw.log());
    assert!(gw.is_running(), "the gateway exited:\n{}", gw.log());
    broker.restart();
    receive_until_drained(&mut probe, &mut streams, metrics).await;

    // 2. Space comes back. The store on disk must be whole again: a clean
    //    stop during the next outage keeps everything for the next start.
    std::fs::remove_file(&filler).unwrap();
    broker.stop_graceful();
    let stored = support::wait_until_async(WAIT, || {
        session_metric(metrics, "fieldgate_mqtt_store_messages").is_some_and(|n| n >= 300.0)
    })
    .await;
    assert!(stored, "nothing stored:\n{}", gw.log());
    let reads: Vec<u64> = ["d0", "d1"]
        .iter()
        .map(|d| {
            metric(
                metrics,
                "fieldgate_device_reads_total",
                &[&format!("device=\"{d}\"")],
            )
            .expect("reads") as u64
        })
        .collect();
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some(), "no clean stop:\n{}", gw.log());

    let metrics2 = support::free_port();
    let second = Gateway::start(&counters(
        broker.port(),
        metrics2,
        &store,
        2,
        "10ms",
        SECOND_RUN,
    ));
    assert!(
        second.wait_for_log("recovered", WAIT),
        "nothing recovered:\n{}",
        second.log()
    );
    assert!(
        !second.log().contains("dropped the remaining"),
        "the store was damaged:\n{}",
        second.log()
    );
    broker.restart();
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        ["d0", "d1"].iter().all(|d| s.firsts(d, true).len() > 10)
    })
    .await;
    for (d, reads) in ["d0", "d1"].iter().zip(reads) {
        let run1 = streams.firsts(d, false);
        assert_gap_free(d, &run1);
        assert_eq!(run1[0], 0, "{d}: the first value");
        assert!(
            run1.len() as u64 >= reads,
            "{d}: {} values delivered, {reads} were read before the stop",
            run1.len()
        );
    }
    drop(second);
}

/// Free bytes of the file system holding `path` (`df`).
fn avail(path: &Path) -> u64 {
    let stat = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&stat.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df avail")
}

/// #24: another file fills the store's disk during an outage. The file
/// store never takes the disk below `minFreeBytes`: it drops its oldest
/// messages instead, says so and counts them (`reason="disk_floor"`);
/// everything newer arrives once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_another_file_keeps_the_stores_floor_and_the_newest_messages() {
    const FLOOR: u64 = 1 << 20;
    let Some(disk) = SmallDisk::mount("4m") else {
        eprintln!("cannot mount a tmpfs here (needs root): the disk floor test is skipped");
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let mut broker = persistent_broker(state.path());
    let mut probe = subscriber(broker.port(), "faults-sub-floor").await;
    let store = format!(
        "    store: {{ type: file, directoryPrefix: '{}/q', maxBytes: 2MiB, minFreeBytes: 1MiB }}",
        disk.path().display()
    );
    let metrics = support::free_port();
    let gw = Gateway::start(&counters(broker.port(), metrics, &store, 4, "10ms", 0));
    let mut streams = Streams::new("faults");
    receive_until(&mut probe, &mut streams, WAIT, |s| s.by_device.len() == 4).await;

    broker.stop_graceful();
    // Another program leaves 1.5 MiB free: the store may grow by ~0.5 MiB.
    let _filler = fill(disk.path(), FLOOR + (512 << 10));
    let dropped = |m| {
        metric(
            m,
            "fieldgate_mqtt_dropped_total",
            &["reason=\"disk_floor\""],
        )
        .unwrap_or(0.0)
    };
    let mut lowest = u64::MAX;
    let floor_held = support::wait_until_async(WAIT, || {
        lowest = lowest.min(avail(disk.path()));
        dropped(metrics) >= 1000.0
    })
    .await;
    assert!(floor_held, "no drops at the disk floor:\n{}", gw.log());
    // The writer measures every 50 ms and the bound keeps two segments
    // (128 KiB each) of margin: the disk never went far below the floor.
    assert!(
        lowest + (64 << 10) >= FLOOR,
        "{lowest} bytes free, floor {FLOOR}:\n{}",
        gw.log()
    );
    assert!(
        gw.log().contains("short of space"),
        "the store says why it drops:\n{}",
        gw.log()
    );
    broker.restart();
    receive_until_drained(&mut probe, &mut streams, metrics).await;
    receive_until(&mut probe, &mut streams, WAIT, |s| {
        (0..4).all(|i| s.firsts(&format!("d{i}"), false).len() > 50)
    })
    .await;
    // Per device: the values missing are the oldest of the outage, one run
    // (but for a few that were in flight when the broker stopped: it had
    // them); before it and after it up to live values nothing is missing.
    let mut missing_total = 0;
    for i in 0..4 {
        let d = format!("d{i}");
        let got: BTreeSet<u64> = streams.firsts(&d, false).into_iter().collect();
        let last = *got.last().unwrap();
        let missing: Vec<u64> = (0..last).filter(|v| !got.contains(v)).collect();
        if let (Some(lo), Some(hi)) = (missing.first(), missing.last()) {
            let inside = hi - lo + 1 - missing.len() as u64;
            assert!(inside <= 64, "{d}: more than one run lost: {missing:?}");
            assert!(
                last > hi + 10,
                "{d}: the newest values missing: {missing:?}"
            );
        }
        missing_total += missing.len() as u64;
    }
    // Every value missing was counted; a few counted ones may still have
    // arrived (in flight when the broker stopped: it had them, unacknowledged).
    let counted = dropped(metrics) as u64;
    assert!(
        missing_total <= counted && missing_total + 64 >= counted,
        "{missing_total} values missing, {counted} counted at the disk floor"
    );
    assert_eq!(
        metric(
            metrics,
            "fieldgate_mqtt_dropped_total",
            &["reason=\"store_full\""]
        )
        .unwrap_or(0.0),
        0.0,
        "nothing dropped for the store's own bound"
    );
}

/// libfaketime's preload library (Debian package `faketime`, installed by
/// tests/run-tests.sh).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file());
    found.expect(
        "libfaketime not found: install the Debian package faketime (tests/run-tests.sh does)",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_by_days_are_flagged_and_change_no_age_or_cadence() {
    // The gateway alone runs on a faked wall clock that the test sets by
    // writing a libfaketime spec into a file; the monotonic clock stays real.
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("faketime");
    let set_clock = |s: &str| std::fs::write(&spec, s).unwrap();
    set_clock("+0");
    let lib = libfaketime();
    let mut broker = Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let yaml = format!(
        "gateway:\n  namespace: faults\n  clockCheck: false\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: tcp://127.0.0.1:{}\n    maxReconnectInterval: 1s\ndevices:\n{}",
        broker.port(),
        clock("clock")
    );
    let mut gw = Gateway::start_with_env(
        &yaml,
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", spec.to_str().unwrap()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_CACHE_DURATION", "1"),
        ],
    );
    let synced = |rec: &Recorder, mark: usize| -> Vec<bool> {
        rec.states_since(mark, "clock")
            .iter()
            .map(|s| s.get("clockSynchronized").is_none())
            .collect()
    };
    let first = rec
        .state_where("clock", "a state", |s| s["properties"]["n"].is_u64())
        .await;
    assert!(first.get("clockSynchronized").is_none(), "{first}");

    // A board without a real-time clock: 1970 until NTP syncs.
    set_clock("@1970-01-02 03:04:05");
    let s = rec
        .state_where("clock", "clockSynchronized: false", |s| {
            s["clockSynchronized"] == false
        })
        .await;
    assert!(
        s["timestamp"].as_str().unwrap().starts_with("1970-01-02"),
        "{s}"
    );
    assert_eq!(
        metric(metrics, "fieldgate_clock_synchronized", &[]),
        Some(0.0)
    );
    let mark = rec.mark();
    rec.more_states("clock", 20).await;
    assert_counting("clock", &rec.states_since(mark, "clock"));
    assert!(synced(&rec, mark).iter().all(|s| !s), "flag missing");

    // An outage, and NTP jumps the clock 57 years forward meanwhile: the
    // store's age of what waits stays the seconds it really waited.
    broker.stop();
    assert!(
        support::wait_until(WAIT, || {
            metric(metrics, "fieldgate_mqtt_store_messages", &[]).is_some_and(|n| n >= 10.0)
        }),
        "the store did not fill during the outage"
    );
    set_clock("+3d");
    assert!(
        support::wait_until(WAIT, || {
            metric(metrics, "fieldgate_clock_synchronized", &[]) == Some(1.0)
        }),
        "the clock was not trusted again after the jump"
    );
    let age = metric(metrics, "fieldgate_mqtt_store_oldest_age_seconds", &[]).unwrap();
    assert!(age < 120.0, "store age after a clock jump: {age} s");
    broker.restart();
    let mark = rec.mark();
    rec.more_states("clock", 10).await;
    assert_counting("clock", &rec.states_since(mark, "clock"));

    // Set back by days (earlier than the binary): flagged again, then
    // cleared when the clock is right; the cadence never breaks.
    set_clock("-2d");
    rec.state_where("clock", "clockSynchronized: false again", |s| {
        s["clockSynchronized"] == false
    })
    .await;
    set_clock("+0");
    rec.state_where("clock", "the flag gone", |s| {
        s.get("clockSynchronized").is_none()
    })
    .await;
    let mark = rec.mark();
    rec.more_states("clock", 20).await;
    assert_counting("clock", &rec.states_since(mark, "clock"));
    assert!(gw.is_running(), "{}", gw.log());
    assert_eq!(healthz(metrics), Some(200), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_on_the_http_listener_backs_off_and_recovers() {
    // A limit a little over what the gateway needs: clients of /metrics take
    // the rest, and accept() fails with EMFILE while they stay.
    let broker = Mosquitto::start();
    let metrics = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let log_path = dir.path().join("fieldgate.log");
    std::fs::write(
        &path,
        format!(
            "gateway:\n  namespace: faults\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\nmqtt:\n  client:\n    server: tcp://127.0.0.1:{}\ndevices:\n{}",
            broker.port(),
            clock("clock")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = support::fieldgate_with_nofile(80, 80, &path)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prlimit");
    // Healthy with the broker connected: from here only the clients below
    // take descriptors (not the session's connection attempts).
    assert!(
        support::wait_until(WAIT, || healthz(metrics) == Some(200)
            && metric(metrics, "fieldgate_mqtt_connected", &[]) == Some(1.0)),
        "{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut clients = Vec::new();
    for _ in 0..70 {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", metrics)) {
            clients.push(c);
        }
    }
    assert!(
        support::wait_until(WAIT, || read_log().contains("retrying with backoff")),
        "accept never ran out of descriptors:\n{}",
        read_log()
    );
    drop(clients);
    assert!(
        support::wait_until(WAIT, || healthz(metrics) == Some(200)),
        "/healthz did not answer again"
    );
    let warnings = read_log().matches("http listener").count();
    let running = child.try_wait().ok().flatten().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(running, "the gateway exited:\n{}", read_log());
    assert!(
        warnings <= 3,
        "{warnings} accept warnings (a spinning accept loop logs one per try)"
    );
}
