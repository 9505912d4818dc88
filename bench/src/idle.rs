//! The `idle` scenario: how often the gateway's threads wake up when there
//! is little to do — the context switches of every thread
//! (`/proc/<pid>/task/<tid>/status`) per second over a window, with the
//! demo config (two slow dummy devices, metrics, embedded broker) or with no
//! devices at all.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cli::{binary, demo_path, parse_broker, parse_duration, print_result, CommonArgs};
use crate::harness::RunDir;
use crate::measure::{self, CpuWindow, Switches};
use crate::process;
use crate::startup::{demo_variant, Broker};
use clap::Args;

/// What runs.
#[derive(Debug, Clone)]
pub(crate) enum IdleConfig {
    /// A copy of the demo config (see [`demo_variant`]).
    Demo {
        /// The demo config file.
        path: std::path::PathBuf,
        /// Where it publishes.
        broker: Broker,
    },
    /// No devices, no metrics listener, a private Mosquitto.
    Empty,
}

/// One thread's wake-ups over the window.
#[derive(Debug, Clone)]
pub(crate) struct ThreadWakeups {
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// Context switches during the window.
    pub switches: Switches,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub(crate) struct IdleReport {
    /// Scenario and parameters.
    pub scenario: String,
    /// Window length.
    pub window: Duration,
    /// Per thread (threads alive at both ends of the window).
    pub threads: Vec<ThreadWakeups>,
    /// CPU-seconds over the window.
    pub cpu_seconds: f64,
    /// `VmRSS` at the end, bytes.
    pub rss_bytes: u64,
}

impl IdleReport {
    /// All threads' switches.
    pub(crate) fn total(&self) -> Switches {
        self.threads
            .iter()
            .fold(Switches::default(), |acc, t| Switches {
                voluntary: acc.voluntary + t.switches.voluntary,
                nonvoluntary: acc.nonvoluntary + t.switches.nonvoluntary,
            })
    }

    fn per_second(&self, n: u64) -> f64 {
        n as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// The summary line.
    pub(crate) fn line(&self) -> String {
        let total = self.total();
        let threads: Vec<String> = self
            .threads
            .iter()
            .map(|t| {
                format!(
                    "{}[{}] {:.2}",
                    t.name,
                    t.tid,
                    self.per_second(t.switches.voluntary + t.switches.nonvoluntary)
                )
            })
            .collect();
        format!(
            "{}: {} threads, context switches/s {:.2} (voluntary {:.2}, involuntary {:.2}) over {:.0}s; \
             per thread/s: {}; cpu {:.3}% of one core; VmRSS {:.1} MiB",
            self.scenario,
            self.threads.len(),
            self.per_second(total.voluntary + total.nonvoluntary),
            self.per_second(total.voluntary),
            self.per_second(total.nonvoluntary),
            self.window.as_secs_f64(),
            threads.join(", "),
            100.0 * self.cpu_seconds / self.window.as_secs_f64().max(1e-9),
            self.rss_bytes as f64 / (1024.0 * 1024.0),
        )
    }

    /// The same as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        let total = self.total();
        serde_json::json!({
            "scenario": self.scenario,
            "window_seconds": self.window.as_secs_f64(),
            "switches_per_second": self.per_second(total.voluntary + total.nonvoluntary),
            "voluntary_per_second": self.per_second(total.voluntary),
            "involuntary_per_second": self.per_second(total.nonvoluntary),
            "threads": self.threads.iter().map(|t| serde_json::json!({
                "tid": t.tid,
                "name": t.name,
                "voluntary": t.switches.voluntary,
                "involuntary": t.switches.nonvoluntary,
            })).collect::<Vec<_>>(),
            "cpu_seconds": self.cpu_seconds,
            "rss_mib": self.rss_bytes as f64 / (1024.0 * 1024.0),
        })
    }
}

/// Per-thread differences between two snapshots (threads present in both).
pub(crate) fn thread_deltas(
    before: &[(u32, String, Switches)],
    after: &[(u32, String, Switches)],
) -> Vec<ThreadWakeups> {
    after
        .iter()
        .filter_map(|(tid, name, end)| {
            let (_, _, start) = before.iter().find(|(t, _, _)| t == tid)?;
            Some(ThreadWakeups {
                tid: *tid,
                name: name.clone(),
                switches: end.since(start),
            })
        })
        .collect()
}

/// Runs the gateway on `config` for `warmup`, then measures for `window`.
pub(crate) async fn run(
    config: &IdleConfig,
    warmup: Duration,
    window: Duration,
    dir: &Path,
    binary: &Path,
    scenario_name: String,
) -> anyhow::Result<IdleReport> {
    let state = dir.join("state");
    let needs_mosquitto = !matches!(
        config,
        IdleConfig::Demo {
            broker: Broker::Embedded,
            ..
        }
    );
    let mosquitto = if needs_mosquitto {
        Some(process::start_mosquitto(dir).await?)
    } else {
        None
    };
    let broker_port = match &mosquitto {
        Some((_, port)) => *port,
        None => process::free_port()?,
    };
    let text = match config {
        IdleConfig::Demo { path, broker } => {
            let demo = std::fs::read_to_string(path)
                .with_context(|| format!("read {}", path.display()))?;
            demo_variant(
                &demo,
                broker_port,
                process::free_port()?,
                &state,
                *broker == Broker::Mosquitto,
            )?
        }
        IdleConfig::Empty => format!(
            "gateway:\n  namespace: idle\n  stateDirectory: \"{}\"\n  metrics: {{ listen: \"\" }}\n\
             mqtt:\n  client:\n    server: tcp://127.0.0.1:{broker_port}\ndevices: []\n",
            state.display()
        ),
    };
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    let mut gateway = process::start_fieldgate(binary, &path, dir)?;
    let end_warmup = Instant::now() + warmup;
    while Instant::now() < end_warmup {
        gateway.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = gateway.pid();
    let cpu = CpuWindow::start(pid, measure::clock_ticks_per_second())?;
    let before = measure::thread_switches(pid)?;
    let started = Instant::now();
    // One sleep for the whole window: the bench's own polling would not
    // wake the gateway, but keep the machine as quiet as possible.
    tokio::time::sleep(window).await;
    let after = measure::thread_switches(pid)?;
    let elapsed = started.elapsed();
    let cpu_seconds = cpu.finish()?.cpu_seconds;
    let rss_bytes = measure::rss_bytes(pid)?;
    gateway.ensure_running()?;
    gateway.terminate(Duration::from_secs(5)).await;
    Ok(IdleReport {
        scenario: scenario_name,
        window: elapsed,
        threads: thread_deltas(&before, &after),
        cpu_seconds,
        rss_bytes,
    })
}

/// Options of the `idle` scenario.
#[derive(Args)]
pub(crate) struct IdleArgs {
    /// demo (configs/demo.yaml, see --broker) or empty (no devices, no metrics).
    #[arg(long, default_value = "demo")]
    config: String,
    /// The demo config (default: configs/demo.yaml of this workspace).
    #[arg(long)]
    demo: Option<PathBuf>,
    /// The demo's broker: embedded (as shipped, on a free port) or mosquitto.
    #[arg(long, default_value = "embedded")]
    broker: String,
    /// Running time before the window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Length of the window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run_idle(args: IdleArgs) -> anyhow::Result<()> {
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    let (config, scenario) = match args.config.as_str() {
        "demo" => (
            IdleConfig::Demo {
                path: demo_path(args.demo),
                broker: parse_broker(&args.broker)?,
            },
            format!("idle demo broker={}", args.broker),
        ),
        "empty" => (
            IdleConfig::Empty,
            "idle empty (no devices, no metrics) broker=mosquitto".to_string(),
        ),
        other => bail!("--config is demo or empty, not {other:?}"),
    };
    let dir = RunDir::create(args.common.keep)?;
    let report = run(
        &config,
        args.warmup,
        args.duration,
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

    fn sw(v: u64, n: u64) -> Switches {
        Switches {
            voluntary: v,
            nonvoluntary: n,
        }
    }

    #[test]
    fn deltas_per_thread_and_total() {
        let before = vec![
            (10, "fieldgate".to_string(), sw(100, 5)),
            (11, "fieldgate".to_string(), sw(50, 1)),
            (12, "gone".to_string(), sw(7, 0)),
        ];
        let after = vec![
            (10, "fieldgate".to_string(), sw(130, 5)),
            (11, "fieldgate".to_string(), sw(60, 3)),
            (13, "new".to_string(), sw(1, 0)),
        ];
        let threads = thread_deltas(&before, &after);
        assert_eq!(threads.len(), 2);
        let r = IdleReport {
            scenario: "idle".into(),
            window: Duration::from_secs(10),
            threads,
            cpu_seconds: 0.01,
            rss_bytes: 8 << 20,
        };
        assert_eq!(r.total(), sw(40, 2));
        let line = r.line();
        assert!(
            line.contains("context switches/s 4.20 (voluntary 4.00, involuntary 0.20)"),
            "{line}"
        );
        assert!(
            line.contains("fieldgate[10] 3.00, fieldgate[11] 1.20"),
            "{line}"
        );
    }
}
