//! The `flatness` scenario: a steady load of dummy values for a long time
//! while Mosquitto is restarted periodically (each restart empties the
//! broker's sessions and retained store, so the gateway reconnects, buffers
//! and replays). The gateway's `VmRSS` is sampled throughout; what matters
//! is its growth after the warm-up.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cli::{binary, parse_duration, print_result, CommonArgs};
use crate::counter::StateCounter;
use crate::harness::RunDir;
use crate::measure::{self, CpuWindow};
use crate::process;
use crate::scenario;
use clap::Args;

/// Parameters of one run.
pub(crate) struct FlatnessRun {
    /// Dummy devices.
    pub devices: usize,
    /// Properties per device.
    pub properties: usize,
    /// Poll interval.
    pub interval: Duration,
    /// Running time before the measured part (restarts happen in it too).
    pub warmup: Duration,
    /// Measured time after the warm-up.
    pub duration: Duration,
    /// Time between two broker restarts (zero: never).
    pub restart_every: Duration,
    /// Time between two RSS samples.
    pub sample_every: Duration,
}

/// One RSS sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// Time since the gateway's first state message.
    pub at: Duration,
    /// `VmRSS` in bytes.
    pub rss: u64,
    /// `RssAnon` in bytes: the gateway's own memory, without mapped files.
    pub anon: u64,
    /// Values delivered to the subscriber so far.
    pub values: u64,
    /// Broker restarts so far.
    pub restarts: u32,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct FlatnessReport {
    /// Scenario and parameters.
    pub scenario: String,
    /// Values per second the config asks for.
    pub expected_values_per_second: f64,
    /// The warm-up length (samples before it are not counted).
    pub warmup: Duration,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// CPU-seconds of the gateway over the measured part.
    pub cpu_seconds: f64,
    /// Peak RSS at the end, bytes.
    pub peak_rss_bytes: u64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl FlatnessReport {
    /// Samples taken after the warm-up.
    fn measured(&self) -> &[Sample] {
        let first = self
            .samples
            .iter()
            .position(|s| s.at >= self.warmup)
            .unwrap_or(self.samples.len());
        &self.samples[first..]
    }

    /// RSS of the first sample after the warm-up and of the last, in bytes.
    pub(crate) fn first_and_last(&self) -> Option<(u64, u64)> {
        let m = self.measured();
        Some((m.first()?.rss, m.last()?.rss))
    }

    /// Growth from the first sample after the warm-up to the last, in bytes
    /// (negative: it shrank).
    pub(crate) fn growth(&self) -> Option<i64> {
        self.first_and_last()
            .map(|(first, last)| last as i64 - first as i64)
    }

    /// Largest and smallest RSS after the warm-up, in bytes.
    pub(crate) fn range(&self) -> Option<(u64, u64)> {
        let m = self.measured();
        Some((
            m.iter().map(|s| s.rss).min()?,
            m.iter().map(|s| s.rss).max()?,
        ))
    }

    /// Delivered values per second over the measured part.
    pub(crate) fn delivered_per_second(&self) -> f64 {
        let m = self.measured();
        match (m.first(), m.last()) {
            (Some(a), Some(b)) if b.at > a.at => {
                (b.values - a.values) as f64 / (b.at - a.at).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The highest RSS within each restart period after the warm-up (the
    /// samples between two restarts), as (restarts so far, max RSS).
    pub(crate) fn max_per_period(&self) -> Vec<(u32, u64)> {
        let mut out: Vec<(u32, u64)> = Vec::new();
        for s in self.measured() {
            match out.last_mut() {
                Some((r, max)) if *r == s.restarts => *max = (*max).max(s.rss),
                _ => out.push((s.restarts, s.rss)),
            }
        }
        out
    }

    /// The summary line.
    pub(crate) fn line(&self) -> String {
        let (first, last) = self.first_and_last().unwrap_or((0, 0));
        let (min, max) = self.range().unwrap_or((0, 0));
        let measured = self.measured();
        let window = match (measured.first(), measured.last()) {
            (Some(a), Some(b)) => (b.at - a.at).as_secs_f64(),
            _ => 0.0,
        };
        let periods: Vec<String> = self
            .max_per_period()
            .iter()
            .map(|(r, m)| format!("{r}:{:.2}", mib(*m)))
            .collect();
        format!(
            "{}: values/s expected {:.0} delivered {:.0} ({:.1}%); VmRSS after warm-up {:.2} MiB, \
             at the end {:.2} MiB, growth {:+.2} MiB (min {:.2}, max {:.2} MiB over {:.0}s, \
             {} samples); max per restart period (restarts:MiB) {}; cpu {:.2}% of one core; \
             peak RSS {:.2} MiB",
            self.scenario,
            self.expected_values_per_second,
            self.delivered_per_second(),
            100.0 * self.delivered_per_second() / self.expected_values_per_second.max(1e-9),
            mib(first),
            mib(last),
            self.growth().unwrap_or(0) as f64 / (1024.0 * 1024.0),
            mib(min),
            mib(max),
            window,
            measured.len(),
            periods.join(" "),
            100.0 * self.cpu_seconds / window.max(1e-9),
            mib(self.peak_rss_bytes),
        )
    }

    /// The same as JSON, with every sample.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.scenario,
            "expected_values_per_second": self.expected_values_per_second,
            "delivered_values_per_second": self.delivered_per_second(),
            "warmup_seconds": self.warmup.as_secs_f64(),
            "rss_after_warmup_mib": self.first_and_last().map(|(f, _)| mib(f)),
            "rss_at_end_mib": self.first_and_last().map(|(_, l)| mib(l)),
            "growth_mib": self.growth().map(|g| g as f64 / (1024.0 * 1024.0)),
            "min_mib": self.range().map(|(m, _)| mib(m)),
            "max_mib": self.range().map(|(_, m)| mib(m)),
            "max_per_restart_period_mib": self.max_per_period().iter().map(|(r, m)| serde_json::json!([r, mib(*m)])).collect::<Vec<_>>(),
            "cpu_seconds": self.cpu_seconds,
            "peak_rss_mib": mib(self.peak_rss_bytes),
            "samples": self.samples.iter().map(|s| serde_json::json!({
                "t_seconds": s.at.as_secs_f64(),
                "rss_kib": s.rss / 1024,
                "rss_anon_kib": s.anon / 1024,
                "values": s.values,
                "restarts": s.restarts,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Runs the scenario with the gateway `binary`, in `dir`.
pub(crate) async fn run(
    run: &FlatnessRun,
    dir: &Path,
    binary: &Path,
    scenario_name: String,
) -> anyhow::Result<FlatnessReport> {
    let (mut broker, port) = process::start_mosquitto(dir).await?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        scenario::dummy_config(
            run.devices,
            run.properties,
            run.interval,
            port,
            &dir.join("state"),
        ),
    )
    .with_context(|| format!("write {}", config.display()))?;
    let counter = StateCounter::connect(port, scenario::PREFIX).await?;
    let mut gateway = process::start_fieldgate(binary, &config, dir)?;
    let deadline = Instant::now() + Duration::from_secs(60).max(run.interval * 3);
    while counter.snapshot().states == 0 {
        gateway.ensure_running()?;
        if Instant::now() >= deadline {
            anyhow::bail!(
                "no state message within 60 s; last log lines:\n{}",
                process::log_tail(gateway.log_path(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let end = started + run.warmup + run.duration;
    let mut next_sample = started;
    let mut next_restart = (!run.restart_every.is_zero()).then(|| started + run.restart_every);
    let mut restarts = 0u32;
    let mut samples = Vec::new();
    let mut cpu: Option<CpuWindow> = None;
    let ticks = measure::clock_ticks_per_second();
    loop {
        gateway.ensure_running()?;
        let now = Instant::now();
        if now >= next_sample {
            if cpu.is_none() && now - started >= run.warmup {
                cpu = Some(CpuWindow::start(gateway.pid(), ticks)?);
            }
            let memory = measure::memory(gateway.pid())?;
            let sample = Sample {
                at: now - started,
                rss: memory.rss,
                anon: memory.anon,
                values: counter.snapshot().values,
                restarts,
            };
            eprintln!(
                "fieldgate-bench: t={:>6.1}s VmRSS {:>8} kB, RssAnon {:>8} kB, restarts {restarts}, values {}",
                sample.at.as_secs_f64(),
                sample.rss / 1024,
                sample.anon / 1024,
                sample.values
            );
            samples.push(sample);
            next_sample += run.sample_every;
            if now >= end {
                break;
            }
        }
        if next_restart.is_some_and(|at| now >= at) {
            broker.terminate(Duration::from_secs(5)).await;
            broker = process::start_mosquitto_on(dir, port).await?;
            restarts += 1;
            next_restart = next_restart.map(|at| at + run.restart_every);
        }
        let wake = next_restart.map_or(next_sample, |r| r.min(next_sample));
        tokio::time::sleep(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500)),
        )
        .await;
    }
    let cpu_seconds = match cpu {
        Some(c) => c.finish()?.cpu_seconds,
        None => 0.0,
    };
    let peak_rss_bytes = measure::peak_rss_bytes(gateway.pid())?;
    gateway.terminate(Duration::from_secs(5)).await;
    Ok(FlatnessReport {
        scenario: scenario_name,
        expected_values_per_second: (run.devices * run.properties) as f64
            / run.interval.as_secs_f64(),
        warmup: run.warmup,
        samples,
        cpu_seconds,
        peak_rss_bytes,
    })
}

/// Options of the `flatness` scenario.
#[derive(Args)]
pub(crate) struct FlatnessArgs {
    /// Dummy devices.
    #[arg(long, default_value_t = 500)]
    devices: usize,
    /// Properties per device.
    #[arg(long, default_value_t = 20)]
    properties: usize,
    /// Poll interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Running time before the measured part (restarts happen in it too).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured time after the warm-up.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Time between two Mosquitto restarts (0s: never).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    restart_every: Duration,
    /// Time between two VmRSS samples.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample_every: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run_flatness(args: FlatnessArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.properties == 0 {
        bail!("--devices and --properties must be at least 1");
    }
    if args.interval.is_zero() || args.duration.is_zero() || args.sample_every.is_zero() {
        bail!("--interval, --duration and --sample-every must be more than 0");
    }
    let scenario = format!(
        "flatness devices={} properties={} interval={} warmup={} duration={} restart-every={}",
        args.devices,
        args.properties,
        humantime::format_duration(args.interval),
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration),
        humantime::format_duration(args.restart_every),
    );
    let dir = RunDir::create(args.common.keep)?;
    let report = run(
        &FlatnessRun {
            devices: args.devices,
            properties: args.properties,
            interval: args.interval,
            warmup: args.warmup,
            duration: args.duration,
            restart_every: args.restart_every,
            sample_every: args.sample_every,
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

    fn sample(secs: u64, rss_kib: u64, values: u64, restarts: u32) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            rss: rss_kib * 1024,
            anon: rss_kib * 512,
            values,
            restarts,
        }
    }

    #[test]
    fn growth_counts_only_after_the_warmup() {
        let r = FlatnessReport {
            scenario: "flatness".into(),
            expected_values_per_second: 100.0,
            warmup: Duration::from_secs(10),
            samples: vec![
                sample(0, 1000, 0, 0),
                sample(5, 5000, 500, 0),
                sample(10, 8192, 1000, 1),
                sample(15, 9216, 1500, 1),
                sample(20, 8704, 2000, 2),
            ],
            cpu_seconds: 0.1,
            peak_rss_bytes: 9216 * 1024,
        };
        assert_eq!(r.first_and_last(), Some((8192 * 1024, 8704 * 1024)));
        assert_eq!(r.growth(), Some(512 * 1024));
        assert_eq!(r.range(), Some((8192 * 1024, 9216 * 1024)));
        assert!((r.delivered_per_second() - 100.0).abs() < 1e-9);
        assert_eq!(r.max_per_period(), vec![(1, 9216 * 1024), (2, 8704 * 1024)]);
        let line = r.line();
        assert!(line.contains("growth +0.50 MiB"), "{line}");
        assert!(line.contains("(restarts:MiB) 1:9.00 2:8.50"), "{line}");
        assert_eq!(r.json()["samples"].as_array().map(Vec::len), Some(5));
    }
}
