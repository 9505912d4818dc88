//! Runs the gateway under a scenario's load and measures it: run directory, warm-up, CPU and memory window.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cli::CommonArgs;
use crate::counter::StateCounter;
use crate::measure;
use crate::process::{self, Supervised};
use crate::report::Report;

/// A run directory under the system temp dir, deleted on drop unless kept.
pub(crate) struct RunDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl RunDir {
    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh run directory with a `state/` directory in it.
    pub(crate) fn create(keep: bool) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("fieldgate-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(path.join("state"))
            .with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path, keep })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "fieldgate-bench: run directory kept: {}",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What a scenario asks of the gateway.
pub(crate) struct Load {
    /// Scenario and parameters, for the report.
    pub scenario: String,
    /// Values per second the config should produce.
    pub expected_values_per_second: f64,
    /// Requests answered by the scenario's simulated field devices, if any.
    pub device_requests: Option<Arc<AtomicU64>>,
    /// Topic prefix the values arrive under: fieldgate's, or `spBv1.0`.
    pub counter_prefix: &'static str,
}

/// The phases of a measurement.
pub(crate) struct Window {
    /// How long the gateway may take to publish its first state.
    pub first_state_timeout: Duration,
    /// Running time before the measurement starts.
    pub warmup: Duration,
    /// The measurement itself.
    pub duration: Duration,
}

/// Runs the gateway on `config` against the broker on `port` and measures it.
pub(crate) async fn measure_gateway(
    common: &CommonArgs,
    dir: &Path,
    config: &Path,
    port: u16,
    window: Window,
    load: Load,
) -> anyhow::Result<Report> {
    let Load {
        scenario,
        expected_values_per_second,
        device_requests,
        counter_prefix,
    } = load;
    let counter = StateCounter::connect(port, counter_prefix).await?;
    let binary = common
        .fieldgate
        .clone()
        .unwrap_or_else(process::default_fieldgate_binary);
    let mut gateway = process::start_fieldgate(&binary, config, dir)?;

    // Up: the first state message has arrived.
    let deadline = Instant::now() + window.first_state_timeout;
    while counter.snapshot().states == 0 {
        gateway.ensure_running()?;
        if Instant::now() >= deadline {
            bail!(
                "no state message within {:?}; last log lines:\n{}",
                window.first_state_timeout,
                process::log_tail(gateway.log_path(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run_for(&mut gateway, window.warmup).await?;

    let ticks = measure::clock_ticks_per_second();
    let before = counter.snapshot();
    let requests_before = device_requests.as_ref().map(|r| r.load(Ordering::Relaxed));
    let cpu = measure::CpuWindow::start(gateway.pid(), ticks)?;
    let memory = run_sampling(&mut gateway, window.duration).await?;
    let usage = cpu.finish()?;
    let delivered = counter.snapshot().since(&before);
    let device_requests = device_requests
        .zip(requests_before)
        .map(|(r, before)| r.load(Ordering::Relaxed).saturating_sub(before));
    let peak_rss_bytes = measure::peak_rss_bytes(gateway.pid())?;

    gateway.terminate(Duration::from_secs(5)).await;
    Ok(Report {
        scenario,
        expected_values_per_second,
        delivered,
        cpu: usage,
        peak_rss_bytes,
        memory,
        device_requests,
    })
}

/// [`run_for`], sampling the gateway's memory every half second: the
/// highest `VmRSS` and `RssAnon` seen.
pub(crate) async fn run_sampling(
    gateway: &mut Supervised,
    dur: Duration,
) -> anyhow::Result<measure::Memory> {
    let end = Instant::now() + dur;
    let mut seen = measure::memory(gateway.pid())?;
    loop {
        gateway.ensure_running()?;
        seen = seen.max(measure::memory(gateway.pid())?);
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(seen);
        }
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
}

/// Lets the gateway run for `dur`, failing early if it exits.
pub(crate) async fn run_for(gateway: &mut Supervised, dur: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + dur;
    loop {
        gateway.ensure_running()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
}
