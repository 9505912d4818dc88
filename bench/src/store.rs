//! The `store` scenario: a QoS 1 counter stream through the file store —
//! the publish rate sustained to Mosquitto, disk bytes written per stored
//! message during a broker outage (`/proc/<pid>/io` `write_bytes`), and the
//! replay rate after the broker comes back.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{parse_duration, print_result, CommonArgs};
use crate::counter::StateCounter;
use crate::harness::RunDir;
use crate::process::{self, Supervised};
use crate::scenario;
use clap::Args;

/// Parameters of one run.
pub(crate) struct StoreRun {
    /// Devices, one counter each.
    pub devices: usize,
    /// Poll (and publish) interval of every device.
    pub interval: Duration,
    /// Measurement window of the sustained rate.
    pub duration: Duration,
    /// Broker outage length.
    pub outage: Duration,
    /// Time between the first state message and the measurement.
    pub warmup: Duration,
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct StoreReport {
    /// Messages per second the config asks for.
    pub offered: f64,
    /// QoS 1 state messages per second that reached the subscriber.
    pub sustained: f64,
    /// Messages in the store when the broker came back.
    pub held: f64,
    /// Bytes the gateway wrote to storage during the outage.
    pub outage_write_bytes: u64,
    /// Messages stored during the outage (store depth growth).
    pub outage_messages: f64,
    /// Seconds from the gateway's reconnect until the backlog was sent.
    pub drain_seconds: f64,
}

impl StoreReport {
    /// Disk bytes written per stored message.
    pub(crate) fn bytes_per_message(&self) -> f64 {
        if self.outage_messages > 0.0 {
            self.outage_write_bytes as f64 / self.outage_messages
        } else {
            0.0
        }
    }

    /// Messages sent per second while draining: the backlog plus what was
    /// produced meanwhile, over the drain time.
    pub(crate) fn replay_rate(&self) -> f64 {
        if self.drain_seconds > 0.0 {
            (self.held + self.offered * self.drain_seconds) / self.drain_seconds
        } else {
            0.0
        }
    }

    /// The one-line summary.
    pub(crate) fn line(&self, scenario: &str) -> String {
        format!(
            "{scenario}: offered {:.0} msg/s, QoS 1 sustained {:.0} msg/s; outage: {:.0} messages stored, \
             {:.1} disk bytes/message; replay: {:.0} held drained in {:.1}s = {:.0} msg/s",
            self.offered,
            self.sustained,
            self.outage_messages,
            self.bytes_per_message(),
            self.held,
            self.drain_seconds,
            self.replay_rate()
        )
    }

    /// The result as JSON.
    pub(crate) fn json(&self, scenario: &str) -> serde_json::Value {
        serde_json::json!({
            "scenario": scenario,
            "offered_per_second": self.offered,
            "qos1_sustained_per_second": self.sustained,
            "outage_messages": self.outage_messages,
            "outage_write_bytes": self.outage_write_bytes,
            "disk_bytes_per_message": self.bytes_per_message(),
            "held_at_reconnect": self.held,
            "drain_seconds": self.drain_seconds,
            "replay_per_second": self.replay_rate(),
        })
    }
}

/// The gateway config of the scenario: file store under `store_dir`,
/// metrics on `metrics_port`.
fn config(run: &StoreRun, broker_port: u16, metrics_port: u16, store_dir: &Path) -> String {
    let interval = humantime::format_duration(run.interval).to_string();
    let mut y = format!(
        "gateway:\n  namespace: {ns}\n  metrics: {{ listen: \"127.0.0.1:{metrics_port}\" }}\n  log: {{ level: warn, format: text }}\n\
         mqtt:\n  client:\n    server: tcp://127.0.0.1:{broker_port}\n    clientId: bench-store\n    maxReconnectInterval: 1s\n\
         \x20   store: {{ type: file, directoryPrefix: \"{dir}\", maxBytes: 256MiB }}\n\
         \x20 message:\n    topic: {{ prefix: {prefix}, with: nn }}\n    qos: 1\n    retained: false\ndevices:\n",
        ns = scenario::NAMESPACE,
        prefix = scenario::PREFIX,
        dir = store_dir.display(),
    );
    for d in 0..run.devices {
        y.push_str(&format!(
            "  - name: dev-{d:05}\n    driver: dummy\n    syncInterval: {interval}\n    properties:\n      - {{ name: n, type: uint64, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}\n"
        ));
    }
    y
}

/// One sample of `family{session="bench-store"}` from the gateway's /metrics.
async fn metric(port: u16, family: &str) -> anyhow::Result<f64> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .context("connect to /metrics")?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .find(|l| l.starts_with(family) && l.contains("bench-store"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0))
}

/// `write_bytes` of `/proc/<pid>/io`: bytes the process caused to be sent
/// to the storage layer.
fn write_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/io");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no write_bytes in {path}"))
}

async fn run_for(gateway: &mut Supervised, dur: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + dur;
    while Instant::now() < end {
        gateway.ensure_running()?;
        tokio::time::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200)),
        )
        .await;
    }
    Ok(())
}

/// Runs the scenario in `dir` with `binary`.
pub(crate) async fn run(run: &StoreRun, dir: &Path, binary: &Path) -> anyhow::Result<StoreReport> {
    let offered = run.devices as f64 / run.interval.as_secs_f64();
    let broker_dir = dir.join("broker");
    std::fs::create_dir_all(&broker_dir)?;
    let (mut broker, port) = process::start_mosquitto(&broker_dir).await?;
    let metrics_port = process::free_port()?;
    let store_dir = dir.join("state").join("store");
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config(run, port, metrics_port, &store_dir))?;
    let counter = StateCounter::connect(port, scenario::PREFIX).await?;
    let mut gateway = process::start_fieldgate(binary, &config_path, dir)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter.snapshot().states == 0 {
        gateway.ensure_running()?;
        if Instant::now() >= deadline {
            bail!(
                "no state message within 30 s:\n{}",
                process::log_tail(gateway.log_path(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run_for(&mut gateway, run.warmup).await?;

    // Sustained QoS 1 rate.
    let before = counter.snapshot();
    let start = Instant::now();
    run_for(&mut gateway, run.duration).await?;
    let sustained = counter.snapshot().since(&before).states as f64 / start.elapsed().as_secs_f64();
    drop(counter);
    if run.outage.is_zero() {
        gateway.terminate(Duration::from_secs(10)).await;
        return Ok(StoreReport {
            offered,
            sustained,
            held: 0.0,
            outage_write_bytes: 0,
            outage_messages: 0.0,
            drain_seconds: 0.0,
        });
    }

    // Outage: disk bytes per stored message.
    let depth_before = metric(metrics_port, "fieldgate_mqtt_store_messages").await?;
    let written_before = write_bytes(gateway.pid())?;
    broker.terminate(Duration::from_secs(5)).await;
    run_for(&mut gateway, run.outage).await?;
    let held = metric(metrics_port, "fieldgate_mqtt_store_messages").await?;
    let outage_write_bytes = write_bytes(gateway.pid())?.saturating_sub(written_before);

    // Replay.
    let _broker = process::start_mosquitto_on(&broker_dir, port).await?;
    let restart = Instant::now();
    let drain_deadline = restart + Duration::from_secs(600);
    // The replay starts when the gateway has reconnected (its backoff is
    // not part of the replay rate).
    let mut connected_at = None;
    loop {
        gateway.ensure_running()?;
        if connected_at.is_none() && metric(metrics_port, "fieldgate_mqtt_connected").await? >= 1.0
        {
            connected_at = Some(Instant::now());
        }
        // Below one second's production: the backlog is gone.
        if metric(metrics_port, "fieldgate_mqtt_store_messages").await? < offered.max(100.0) {
            break;
        }
        if Instant::now() >= drain_deadline {
            bail!("store not drained within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = connected_at.unwrap_or(restart).elapsed().as_secs_f64();
    gateway.terminate(Duration::from_secs(10)).await;
    Ok(StoreReport {
        offered,
        sustained,
        held,
        outage_write_bytes,
        outage_messages: held - depth_before,
        drain_seconds,
    })
}

/// Options of the `store` scenario.
#[derive(Args)]
pub(crate) struct StoreArgs {
    /// Number of devices (one counter each, one message per poll).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Poll interval of every device.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    interval: Duration,
    /// Window of the sustained-rate measurement.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Broker outage; 0s measures only the sustained rate.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    outage: Duration,
    /// Time between the first state message and the measurement.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.interval.is_zero() || args.duration.is_zero() {
        bail!("--devices, --interval and --duration must be more than 0");
    }
    let scenario = format!(
        "store devices={} interval={} outage={}",
        args.devices,
        humantime::format_duration(args.interval),
        humantime::format_duration(args.outage)
    );
    let dir = RunDir::create(args.common.keep)?;
    let binary = args
        .common
        .fieldgate
        .clone()
        .unwrap_or_else(process::default_fieldgate_binary);
    let report = run(
        &StoreRun {
            devices: args.devices,
            interval: args.interval,
            duration: args.duration,
            outage: args.outage,
            warmup: args.warmup,
        },
        &dir.path,
        &binary,
    )
    .await?;
    print_result(
        args.common.json,
        || report.line(&scenario),
        || report.json(&scenario),
    );
    Ok(())
}
