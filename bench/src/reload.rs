//! The `reload` scenario: rename-saves that add one device each, timed to the new device's first state.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::cli::{parse_duration, print_result, CommonArgs};
use crate::counter::StateCounter;
use crate::harness::{run_for, RunDir};
use crate::{first_message, process, report, scenario};

/// Options of the `reload` scenario.
#[derive(Args)]
pub(crate) struct ReloadArgs {
    /// Number of devices configured before the reloads.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Properties per device.
    #[arg(long, default_value_t = 2)]
    properties: usize,
    /// Poll interval of every device.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Number of reloads (each adds one device) to measure.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run_reload(args: ReloadArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.properties == 0 || args.runs == 0 {
        bail!("--devices, --properties and --runs must be at least 1");
    }
    let dir = RunDir::create(args.common.keep)?;
    let (_broker, port) = process::start_mosquitto(&dir.path).await?;
    let state = dir.path.join("state");
    let config = dir.path.join("config.yaml");
    let write = |path: &Path, extra: &[String]| -> anyhow::Result<()> {
        let yaml = scenario::dummy_config_with(
            args.devices,
            args.properties,
            args.interval,
            port,
            &state,
            extra,
        );
        std::fs::write(path, yaml).with_context(|| format!("write {}", path.display()))
    };
    write(&config, &[])?;
    let counter = StateCounter::connect(port, scenario::PREFIX).await?;
    let mut stopwatch = first_message::FirstMessage::connect(port).await?;
    let binary = args
        .common
        .fieldgate
        .clone()
        .unwrap_or_else(process::default_fieldgate_binary);
    let mut gateway = process::start_fieldgate(&binary, &config, &dir.path)?;

    // Up: every configured device has published about once.
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.snapshot().states < args.devices as u64 {
        gateway.ensure_running()?;
        if Instant::now() >= deadline {
            bail!(
                "the {} devices did not all publish within 120 s; last log lines:\n{}",
                args.devices,
                process::log_tail(gateway.log_path(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run_for(&mut gateway, Duration::from_secs(2)).await?;

    let mut extra: Vec<String> = Vec::new();
    let mut latencies: Vec<Duration> = Vec::new();
    for run in 1..=args.runs {
        let name = format!("added-{run:03}");
        let topic = format!("{}/{}/{name}", scenario::PREFIX, scenario::NAMESPACE);
        stopwatch.watch(&topic).await?;
        extra.push(name);
        let tmp = dir.path.join(".config.yaml.tmp");
        write(&tmp, &extra)?;
        let renamed = Instant::now();
        std::fs::rename(&tmp, &config).context("rename the new config over the old")?;
        let arrived = loop {
            if let Some(t) = stopwatch.arrival(&topic) {
                break t;
            }
            gateway.ensure_running()?;
            if renamed.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{topic}: no state within 30 s of the rename; last log lines:\n{}",
                    process::log_tail(gateway.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let latency = arrived.saturating_duration_since(renamed);
        eprintln!("fieldgate-bench: reload {run}: {latency:?}");
        latencies.push(latency);
        // Space the reloads out so each one is its own.
        run_for(&mut gateway, Duration::from_secs(1)).await?;
    }
    gateway.terminate(Duration::from_secs(5)).await;

    let scenario = format!(
        "reload devices={} properties={} interval={}",
        args.devices,
        args.properties,
        humantime::format_duration(args.interval)
    );
    let summary = report::Latencies::new(scenario, latencies);
    print_result(args.common.json, || summary.line(), || summary.json());
    Ok(())
}
