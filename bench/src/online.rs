//! Shared parts of the fleet scenarios (`modbus-fleet`, `rtu-line`,
//! `notify-latency`): a subscriber that timestamps each device's first
//! state (start → all online) and hands one device's states to a latency
//! probe, and the measurement window (values delivered, CPU-seconds,
//! `RssAnon`/`VmRSS`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::counter::StateCounter;
use crate::measure;
use crate::process::{self, Supervised};
use crate::report::Report;
use crate::scenario;

/// One state message of the probed device, with its arrival instant.
pub(crate) struct Arrival {
    /// When the subscriber received it.
    pub at: Instant,
    /// Its payload (a state object).
    pub payload: Vec<u8>,
}

#[derive(Default)]
struct Seen {
    devices: HashSet<String>,
    first: Option<Instant>,
    all: Option<Instant>,
}

/// A subscriber on `fieldgate/bench/+` that records when the first state
/// arrived and when `expect` distinct devices had published one, and
/// forwards every state of one device (`probe`) with its arrival instant.
pub(crate) struct Online {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
    _client: AsyncClient,
}

impl Online {
    /// Connects to 127.0.0.1:`port`, subscribes and returns once the broker
    /// acknowledged the subscription.
    pub(crate) async fn connect(
        port: u16,
        expect: usize,
        probe: Option<(String, mpsc::UnboundedSender<Arrival>)>,
    ) -> anyhow::Result<Self> {
        let mut opts = MqttOptions::new(
            format!("fieldgate-bench-online-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(16 << 20, 64 << 10);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (sub_tx, mut sub_rx) = watch::channel(false);
        let filter = format!("{}/{}/+", scenario::PREFIX, scenario::NAMESPACE);
        let task = {
            let seen = seen.clone();
            let client = client.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(filter.clone(), QoS::AtMostOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = sub_tx.send(true);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => {
                            let now = Instant::now();
                            let Some(device) = p.topic.rsplit('/').next() else {
                                continue;
                            };
                            if let Some((name, tx)) = &probe {
                                if name == device {
                                    let _ = tx.send(Arrival {
                                        at: now,
                                        payload: p.payload.to_vec(),
                                    });
                                }
                            }
                            let Ok(mut s) = seen.lock() else { continue };
                            s.first.get_or_insert(now);
                            if s.all.is_none() {
                                s.devices.insert(device.to_owned());
                                if s.devices.len() >= expect {
                                    s.all = Some(now);
                                }
                            }
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
        let acked = tokio::time::timeout(Duration::from_secs(10), sub_rx.wait_for(|s| *s)).await;
        if !matches!(acked, Ok(Ok(_))) {
            task.abort();
            bail!("no SUBACK from the broker on port {port} within 10 s");
        }
        Ok(Self {
            seen,
            task,
            _client: client,
        })
    }

    /// When the first state arrived.
    pub(crate) fn first(&self) -> Option<Instant> {
        self.seen.lock().ok()?.first
    }

    /// When every expected device had published.
    pub(crate) fn all(&self) -> Option<Instant> {
        self.seen.lock().ok()?.all
    }

    /// Distinct devices seen so far (counted until all were seen).
    pub(crate) fn devices(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.devices.len())
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start → first state and start → every device, measured by [`wait_online`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartUp {
    /// Process start to the first state at the subscriber.
    pub first_state: Duration,
    /// Process start to a state from every device.
    pub all_online: Duration,
}

/// Waits until `online` saw every device (or `timeout` after `started`).
pub(crate) async fn wait_online(
    gateway: &mut Supervised,
    online: &Online,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<StartUp> {
    loop {
        gateway.ensure_running()?;
        if let (Some(first), Some(all)) = (online.first(), online.all()) {
            return Ok(StartUp {
                first_state: first.saturating_duration_since(started),
                all_online: all.saturating_duration_since(started),
            });
        }
        if started.elapsed() > timeout {
            bail!(
                "only {} devices published within {timeout:?}; last log lines:\n{}",
                online.devices(),
                process::log_tail(gateway.log_path(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One measurement window: values counted by `counter`, the gateway's CPU
/// and its highest `VmRSS`/`RssAnon` (sampled every 0.5 s).
pub(crate) async fn measure_window(
    gateway: &mut Supervised,
    counter: &StateCounter,
    duration: Duration,
    scenario: String,
    expected_values_per_second: f64,
) -> anyhow::Result<Report> {
    let before = counter.snapshot();
    let cpu = measure::CpuWindow::start(gateway.pid(), measure::clock_ticks_per_second())?;
    let end = Instant::now() + duration;
    let mut memory = measure::memory(gateway.pid())?;
    loop {
        gateway.ensure_running()?;
        memory = memory.max(measure::memory(gateway.pid())?);
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
    let usage = cpu.finish()?;
    let delivered = counter.snapshot().since(&before);
    Ok(Report {
        scenario,
        expected_values_per_second,
        delivered,
        cpu: usage,
        peak_rss_bytes: measure::peak_rss_bytes(gateway.pid())?,
        memory,
        device_requests: None,
    })
}

/// Current load average (1, 5, 15 min), for the report's note.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// CPU-seconds per 1 000 delivered values in `report`'s window.
pub(crate) fn cpu_seconds_per_thousand(report: &Report) -> f64 {
    if report.delivered.values == 0 {
        return 0.0;
    }
    report.cpu.cpu_seconds * 1000.0 / report.delivered.values as f64
}
