//! The `latency` scenario: `$set` commands over MQTT to Modbus TCP devices
//! served in this process. Each command's latency runs from the moment it
//! is handed to the MQTT client until its `$set/result` arrives; on arrival
//! the device's register must already hold the value the command wrote.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::cli::{binary, parse_duration, print_result, CommonArgs};
use crate::harness::RunDir;
use crate::measure::{self, CpuWindow};
use crate::modbus_devices::Fleet;
use crate::process;
use crate::scenario;
use clap::Args;

/// Parameters of one run.
pub(crate) struct LatencyRun {
    /// Modbus TCP devices (one server each).
    pub devices: usize,
    /// Writable holding registers per device.
    pub registers: u16,
    /// Commands to send in all.
    pub commands: usize,
    /// Commands in flight at once.
    pub concurrency: usize,
    /// Poll interval of every device (polls share the bus with the writes).
    pub interval: Duration,
    /// How long one command may take before it counts as lost.
    pub timeout: Duration,
    /// Running time between every device's first state and the first command.
    pub warmup: Duration,
    /// QoS of the `$set` publishes.
    pub qos: QoS,
    /// Run Mosquitto with `set_tcp_nodelay true` (and the bench's client
    /// with TCP_NODELAY).
    pub nodelay: bool,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct LatencyReport {
    /// Scenario and parameters.
    pub scenario: String,
    /// Latency of every answered command, sorted.
    pub sorted: Vec<Duration>,
    /// Results with `"ok": true` whose register held the written value on arrival.
    pub verified: usize,
    /// Results with `"ok": false`.
    pub failed: usize,
    /// Results with `"ok": true` whose register did not hold the value.
    pub mismatched: usize,
    /// Commands without a result within the timeout.
    pub lost: usize,
    /// Wall-clock time from the first command to the last result.
    pub elapsed: Duration,
    /// The gateway's CPU-seconds over that time.
    pub cpu_seconds: f64,
    /// Peak RSS of the gateway, bytes.
    pub peak_rss_bytes: u64,
}

/// The value at quantile `q` (0..=1) of `sorted`, nearest-rank; zero when empty.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl LatencyReport {
    /// Commands answered per second.
    pub(crate) fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.sorted.len() as f64 / s
        } else {
            0.0
        }
    }

    /// The mean latency.
    pub(crate) fn mean(&self) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        self.sorted.iter().sum::<Duration>() / self.sorted.len() as u32
    }

    /// The one-line summary.
    pub(crate) fn line(&self) -> String {
        let q = |p| ms(quantile(&self.sorted, p));
        format!(
            "{}: {} results in {:.1}s ({:.0} commands/s); latency ms p50 {:.2} p90 {:.2} p99 {:.2} \
             p99.9 {:.2} max {:.2} mean {:.2}; verified {} failed {} mismatched {} lost {}; \
             gateway cpu {:.1}% of one core ({:.1} CPU-µs per command), peak RSS {:.1} MiB",
            self.scenario,
            self.sorted.len(),
            self.elapsed.as_secs_f64(),
            self.rate(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.sorted.last().map_or(0.0, |d| ms(*d)),
            ms(self.mean()),
            self.verified,
            self.failed,
            self.mismatched,
            self.lost,
            100.0 * self.cpu_seconds / self.elapsed.as_secs_f64().max(1e-9),
            1e6 * self.cpu_seconds / self.sorted.len().max(1) as f64,
            self.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        )
    }

    /// The same as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        let q = |p| ms(quantile(&self.sorted, p));
        serde_json::json!({
            "scenario": self.scenario,
            "results": self.sorted.len(),
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "commands_per_second": self.rate(),
            "p50_ms": q(0.5),
            "p90_ms": q(0.9),
            "p99_ms": q(0.99),
            "p999_ms": q(0.999),
            "max_ms": self.sorted.last().map(|d| ms(*d)),
            "mean_ms": ms(self.mean()),
            "verified": self.verified,
            "failed": self.failed,
            "mismatched": self.mismatched,
            "lost": self.lost,
            "cpu_seconds": self.cpu_seconds,
            "peak_rss_mib": self.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        })
    }
}

/// A `$set/result` as the subscriber saw it.
#[derive(Debug)]
struct Arrival {
    id: u64,
    ok: bool,
    at: Instant,
}

/// The `$id` and `ok` of a `$set/result` payload.
fn parse_result(payload: &[u8]) -> Option<(u64, bool)> {
    #[derive(serde::Deserialize)]
    struct Result {
        #[serde(rename = "$id")]
        id: u64,
        ok: bool,
    }
    serde_json::from_slice::<Result>(payload)
        .ok()
        .map(|r| (r.id, r.ok))
}

/// The device index of a state topic `<prefix>/<ns>/dev-NNNNN` (no `$` level).
fn device_of_state(topic: &str) -> Option<usize> {
    let rest = topic.strip_prefix(&format!(
        "{}/{}/dev-",
        scenario::PREFIX,
        scenario::NAMESPACE
    ))?;
    rest.parse().ok()
}

/// A command on its way.
struct InFlight {
    sent: Instant,
    slot: (usize, u16),
    value: u16,
}

/// Runs the scenario with the gateway `binary`, in `dir`.
pub(crate) async fn run(
    run: &LatencyRun,
    dir: &Path,
    binary: &Path,
    scenario_name: String,
) -> anyhow::Result<LatencyReport> {
    let slots = run.devices * usize::from(run.registers);
    if run.concurrency == 0 || run.concurrency > slots {
        bail!(
            "--concurrency must be between 1 and devices x registers ({slots}): \
             commands in flight never share a register, so each can be verified"
        );
    }
    let fleet = Fleet::start_writable(run.devices, run.registers).await?;
    let (_broker, port) = if run.nodelay {
        process::start_mosquitto_nodelay(dir).await?
    } else {
        process::start_mosquitto(dir).await?
    };
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        scenario::modbus_writable_config(
            &fleet.endpoints,
            run.registers,
            run.interval,
            port,
            &dir.join("state"),
        ),
    )
    .with_context(|| format!("write {}", config.display()))?;

    // One client publishes the commands and receives states and results.
    let mut opts = MqttOptions::new(
        format!("fieldgate-bench-latency-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(run.nodelay);
    eventloop.set_network_options(network);
    let base = format!("{}/{}", scenario::PREFIX, scenario::NAMESPACE);
    client
        .subscribe(format!("{base}/+"), QoS::AtMostOnce)
        .await?;
    client
        .subscribe(format!("{base}/+/$set/result"), QoS::AtMostOnce)
        .await?;
    let (results_tx, mut results) = mpsc::unbounded_channel::<Arrival>();
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<usize>();
    let (suback_tx, mut subacks) = mpsc::unbounded_channel::<()>();
    let listener = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let at = Instant::now();
                    if p.topic.ends_with("/$set/result") {
                        if let Some((id, ok)) = parse_result(&p.payload) {
                            let _ = results_tx.send(Arrival { id, ok, at });
                        }
                    } else if let Some(d) = device_of_state(&p.topic) {
                        let _ = seen_tx.send(d);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = suback_tx.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("fieldgate-bench: latency client connection: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    let _listener = AbortOnDrop(listener);
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), subacks.recv())
            .await
            .context("no SUBACK within 10 s")?;
    }

    let mut gateway = process::start_fieldgate(binary, &config, dir)?;
    // Up: every device has published a state (so its `$set` route exists).
    let mut up = vec![false; run.devices];
    let mut left = run.devices;
    let deadline = Instant::now() + Duration::from_secs(60).max(run.interval * 3);
    while left > 0 {
        gateway.ensure_running()?;
        match tokio::time::timeout(Duration::from_millis(100), seen.recv()).await {
            Ok(Some(d)) => {
                if let Some(flag) = up.get_mut(d) {
                    if !*flag {
                        *flag = true;
                        left -= 1;
                    }
                }
            }
            Ok(None) => bail!("the MQTT listener stopped"),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "{left} of {} devices published no state; last log lines:\n{}",
                run.devices,
                process::log_tail(gateway.log_path(), 30)
            );
        }
    }
    tokio::time::sleep(run.warmup).await;
    gateway.ensure_running()?;
    // States keep arriving; only results matter from here on.
    drop(seen);

    let mut free: Vec<(usize, u16)> = (0..run.registers)
        .rev()
        .flat_map(|r| (0..run.devices).rev().map(move |d| (d, r)))
        .collect();
    let mut in_flight: HashMap<u64, InFlight> = HashMap::new();
    let mut latencies = Vec::with_capacity(run.commands);
    let (mut verified, mut failed, mut mismatched, mut lost) = (0, 0, 0, 0);
    let mut next: u64 = 0;
    let cpu = CpuWindow::start(gateway.pid(), measure::clock_ticks_per_second())?;
    let started = Instant::now();
    let mut last_check = Instant::now();
    while (next as usize) < run.commands || !in_flight.is_empty() {
        while (next as usize) < run.commands && in_flight.len() < run.concurrency {
            let Some(slot) = free.pop() else { break };
            let id = next;
            next += 1;
            // Never 0 (the registers' initial value) and distinct from the
            // register's previous value (ids grow).
            let value = (id % 65_535 + 1) as u16;
            let topic = format!("{base}/dev-{:05}/$set", slot.0);
            let payload = format!("{{\"r{:03}\":{value},\"$id\":{id}}}", slot.1);
            let sent = Instant::now();
            client
                .publish(topic, run.qos, false, payload)
                .await
                .context("queue a $set")?;
            in_flight.insert(id, InFlight { sent, slot, value });
        }
        match tokio::time::timeout(Duration::from_millis(50), results.recv()).await {
            Ok(Some(arrival)) => {
                let Some(cmd) = in_flight.remove(&arrival.id) else {
                    continue;
                };
                latencies.push(arrival.at.saturating_duration_since(cmd.sent));
                if !arrival.ok {
                    failed += 1;
                } else if fleet.register(cmd.slot.0, cmd.slot.1) == Some(cmd.value) {
                    verified += 1;
                } else {
                    mismatched += 1;
                }
                free.push(cmd.slot);
            }
            Ok(None) => bail!("the MQTT listener stopped"),
            Err(_) => {}
        }
        if last_check.elapsed() >= Duration::from_millis(50) {
            last_check = Instant::now();
            gateway.ensure_running()?;
            let expired: Vec<u64> = in_flight
                .iter()
                .filter(|(_, c)| c.sent.elapsed() > run.timeout)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Some(cmd) = in_flight.remove(&id) {
                    lost += 1;
                    free.push(cmd.slot);
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let usage = cpu.finish()?;
    let peak_rss_bytes = measure::peak_rss_bytes(gateway.pid())?;
    gateway.terminate(Duration::from_secs(5)).await;
    latencies.sort();
    Ok(LatencyReport {
        scenario: scenario_name,
        sorted: latencies,
        verified,
        failed,
        mismatched,
        lost,
        elapsed,
        cpu_seconds: usage.cpu_seconds,
        peak_rss_bytes,
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Options of the `latency` scenario.
#[derive(Args)]
pub(crate) struct LatencyArgs {
    /// Modbus TCP devices (one server each).
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Writable uint16 holding registers per device.
    #[arg(long, default_value_t = 10)]
    registers: u16,
    /// Commands to send.
    #[arg(long, default_value_t = 10_000)]
    commands: usize,
    /// Commands in flight at once (at most devices x registers; in-flight
    /// commands never share a register).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Poll interval of the devices (polls and writes share each connection).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// A command without a result after this counts as lost.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Time between every device's first state and the first command.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// QoS of the `$set` publishes (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Mosquitto's `set_tcp_nodelay` (and TCP_NODELAY on the bench's MQTT
    /// client). Without it Nagle's algorithm against delayed ACKs adds up
    /// to 40 ms to many round trips.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    nodelay: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run_latency(args: LatencyArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.registers == 0 || args.commands == 0 {
        bail!("--devices, --registers and --commands must be at least 1");
    }
    let qos = match args.qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => bail!("--qos is 0 or 1"),
    };
    let scenario = format!(
        "latency devices={} registers={} commands={} concurrency={} interval={} qos={} nodelay={}",
        args.devices,
        args.registers,
        args.commands,
        args.concurrency,
        humantime::format_duration(args.interval),
        args.qos,
        args.nodelay
    );
    let dir = RunDir::create(args.common.keep)?;
    let report = run(
        &LatencyRun {
            devices: args.devices,
            registers: args.registers,
            commands: args.commands,
            concurrency: args.concurrency,
            interval: args.interval,
            timeout: args.timeout,
            warmup: args.warmup,
            qos,
            nodelay: args.nodelay,
        },
        &dir.path,
        &binary(&args.common),
        scenario,
    )
    .await?;
    print_result(args.common.json, || report.line(), || report.json());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let ms = Duration::from_millis;
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&sorted, 0.5), ms(50));
        assert_eq!(quantile(&sorted, 0.9), ms(90));
        assert_eq!(quantile(&sorted, 0.99), ms(99));
        assert_eq!(quantile(&sorted, 1.0), ms(100));
        assert_eq!(quantile(&sorted, 0.0), ms(1));
        assert_eq!(quantile(&[ms(7)], 0.99), ms(7));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn results_and_state_topics_are_recognised() {
        assert_eq!(
            parse_result(br#"{"$id":17,"ok":true,"applied":{"r000":17},"errors":{}}"#),
            Some((17, true))
        );
        assert_eq!(
            parse_result(br#"{"$id":3,"ok":false,"applied":{},"errors":{"r000":"x"}}"#),
            Some((3, false))
        );
        assert_eq!(parse_result(br#"{"ok":true}"#), None);
        assert_eq!(device_of_state("fieldgate/bench/dev-00042"), Some(42));
        assert_eq!(device_of_state("fieldgate/bench/dev-00042/$state"), None);
        assert_eq!(device_of_state("fieldgate/other/dev-00042"), None);
    }

    #[test]
    fn report_line_has_the_quantiles() {
        let ms = Duration::from_millis;
        let r = LatencyReport {
            scenario: "latency".into(),
            sorted: (1..=10).map(ms).collect(),
            verified: 10,
            failed: 0,
            mismatched: 0,
            lost: 0,
            elapsed: Duration::from_secs(2),
            cpu_seconds: 0.01,
            peak_rss_bytes: 8 << 20,
        };
        let line = r.line();
        assert!(line.contains("10 results in 2.0s (5 commands/s)"), "{line}");
        assert!(line.contains("p50 5.00 p90 9.00 p99 10.00"), "{line}");
        assert!(
            line.contains("verified 10 failed 0 mismatched 0 lost 0"),
            "{line}"
        );
        assert!(line.contains("(1000.0 CPU-µs per command)"), "{line}");
        assert_eq!(r.json()["p90_ms"], 9.0);
        assert_eq!(r.mean(), Duration::from_micros(5500));
    }
}
