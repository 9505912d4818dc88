//! `fieldgate-bench`: runs the real `fieldgate` binary against a private
//! Mosquitto under generated load and reports delivered values per second,
//! the gateway's CPU use and its peak memory.

mod counter;
mod measure;
#[path = "../../drivers/tests/opcua_server/mod.rs"]
mod opcua_server;
mod process;
mod report;
mod scenario;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use counter::StateCounter;
use process::Supervised;
use report::Report;

/// Benchmarks of the fieldgate binary.
#[derive(Parser)]
#[command(name = "fieldgate-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// N simulated devices x M counter/sine properties, polled every interval.
    Dummy(DummyArgs),
    /// One OPC-UA device with N Int32 nodes that all change every `--change`,
    /// served by an async-opcua server inside this process.
    Opcua(OpcuaArgs),
}

/// Options of the `opcua` scenario.
#[derive(Args)]
struct OpcuaArgs {
    /// Number of nodes (properties of the one device).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// How often the server changes every node.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    change: Duration,
    /// `syncInterval`: publishing interval (subscribe) or poll period (poll).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    interval: Duration,
    /// subscribe | poll
    #[arg(long, default_value = "subscribe")]
    mode: String,
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Time between the first state message and the measurement window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options of the `dummy` scenario.
#[derive(Args)]
struct DummyArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Properties per device.
    #[arg(long, default_value_t = 10)]
    properties: usize,
    /// Poll interval of every device.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Time between the first state message and the measurement window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options shared by every scenario.
#[derive(Args)]
struct CommonArgs {
    /// The fieldgate binary (default: target/release/fieldgate).
    #[arg(long)]
    fieldgate: Option<PathBuf>,
    /// Print the result as JSON instead of one line.
    #[arg(long)]
    json: bool,
    /// Keep the run directory (config, logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}; write e.g. 500ms, 1s, 30s"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Dummy(args) => run_dummy(args).await,
        Scenario::Opcua(args) => run_opcua(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fieldgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A run directory under the system temp dir, deleted on drop unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(keep: bool) -> anyhow::Result<Self> {
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

async fn run_dummy(args: DummyArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.properties == 0 {
        bail!("--devices and --properties must be at least 1");
    }
    if args.interval.is_zero() || args.duration.is_zero() {
        bail!("--interval and --duration must be more than 0");
    }
    let scenario = format!(
        "dummy devices={} properties={} interval={}",
        args.devices,
        args.properties,
        humantime::format_duration(args.interval)
    );
    let expected = (args.devices * args.properties) as f64 / args.interval.as_secs_f64();
    let dir = RunDir::create(args.common.keep)?;
    let (_broker, port) = process::start_mosquitto(&dir.path).await?;
    let config = dir.path.join("config.yaml");
    std::fs::write(
        &config,
        scenario::dummy_config(
            args.devices,
            args.properties,
            args.interval,
            port,
            &dir.path.join("state"),
        ),
    )
    .with_context(|| format!("write {}", config.display()))?;
    let report = measure_gateway(
        &args.common,
        &dir.path,
        &config,
        port,
        Window {
            first_state_timeout: Duration::from_secs(30).max(args.interval * 3),
            warmup: args.warmup,
            duration: args.duration,
        },
        scenario,
        expected,
    )
    .await?;
    if args.common.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.line());
    }
    Ok(())
}

async fn run_opcua(args: OpcuaArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.interval.is_zero() || args.duration.is_zero() || args.change.is_zero() {
        bail!("--interval, --change and --duration must be more than 0");
    }
    if args.mode != "subscribe" && args.mode != "poll" {
        bail!("--mode is subscribe or poll");
    }
    let scenario = format!(
        "opcua mode={} nodes={} change={} interval={}",
        args.mode,
        args.nodes,
        humantime::format_duration(args.change),
        humantime::format_duration(args.interval)
    );
    // Subscribe: every change arrives (at most one per publishing interval);
    // poll: every node once per interval.
    let expected = if args.mode == "poll" {
        args.nodes as f64 / args.interval.as_secs_f64()
    } else {
        args.nodes as f64 / args.change.max(args.interval).as_secs_f64()
    };
    let dir = RunDir::create(args.common.keep)?;
    let mut options = opcua_server::Options::new(&dir.path.join("server-pki"));
    options.tick = args.change;
    options.load = args.nodes;
    let server = opcua_server::OpcUaServer::start(options).await;
    let ids: Vec<String> = (0..args.nodes)
        .map(|i| server.node(&format!("Load.{i}")))
        .collect();
    let (_broker, port) = process::start_mosquitto(&dir.path).await?;
    let config = dir.path.join("config.yaml");
    std::fs::write(
        &config,
        scenario::opcua_config(
            &server.url,
            &ids,
            &args.mode,
            args.interval,
            port,
            &dir.path.join("state"),
        ),
    )
    .with_context(|| format!("write {}", config.display()))?;
    let report = measure_gateway(
        &args.common,
        &dir.path,
        &config,
        port,
        Window {
            first_state_timeout: Duration::from_secs(60).max(args.interval * 3),
            warmup: args.warmup,
            duration: args.duration,
        },
        scenario,
        expected,
    )
    .await?;
    server.stop().await;
    if args.common.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.line());
    }
    Ok(())
}

/// The phases of a measurement.
struct Window {
    /// How long the gateway may take to publish its first state.
    first_state_timeout: Duration,
    /// Running time before the measurement starts.
    warmup: Duration,
    /// The measurement itself.
    duration: Duration,
}

/// Runs the gateway on `config` against the broker on `port` and measures it.
async fn measure_gateway(
    common: &CommonArgs,
    dir: &Path,
    config: &Path,
    port: u16,
    window: Window,
    scenario: String,
    expected_values_per_second: f64,
) -> anyhow::Result<Report> {
    let counter = StateCounter::connect(port, scenario::PREFIX).await?;
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
    let cpu = measure::CpuWindow::start(gateway.pid(), ticks)?;
    run_for(&mut gateway, window.duration).await?;
    let usage = cpu.finish()?;
    let delivered = counter.snapshot().since(&before);
    let peak_rss_bytes = measure::peak_rss_bytes(gateway.pid())?;

    gateway.terminate(Duration::from_secs(5)).await;
    Ok(Report {
        scenario,
        expected_values_per_second,
        delivered,
        cpu: usage,
        peak_rss_bytes,
    })
}

/// Lets the gateway run for `dur`, failing early if it exits.
async fn run_for(gateway: &mut Supervised, dur: Duration) -> anyhow::Result<()> {
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
