//! `fieldgate-bench`: runs the real `fieldgate` binary against a private
//! Mosquitto under generated load and reports delivered values per second,
//! the gateway's CPU use and its peak memory, or the latency of a hot reload.

mod counter;
mod edit;
mod first_message;
mod flatness;
mod idle;
mod latency;
mod measure;
mod modbus_devices;
mod modbus_fleet;
mod notify_latency;
mod online;
#[path = "../../drivers/tests/opcua_server/mod.rs"]
mod opcua_server;
mod process;
mod reconnect_bytes;
mod report;
mod rtu_line;
mod scenario;
mod startup;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// N simulated Modbus TCP devices (servers in this process, one port
    /// each) x M holding registers, polled every interval.
    Modbus(ModbusArgs),
    /// N simulated devices running, then rename-saves that add one device
    /// each: time from the rename to the new device's first state message.
    Reload(ReloadArgs),
    /// QoS 1 counters through the file store: sustained rate, disk bytes per
    /// message during a broker outage, replay rate afterwards.
    Store(StoreArgs),
    /// One OPC-UA device with N Int32 nodes that all change every `--change`,
    /// served by an async-opcua server inside this process.
    Opcua(OpcuaArgs),
    /// `$set` commands to writable Modbus TCP registers (servers in this
    /// process): latency from publish to `$set/result`, register verified.
    Latency(LatencyArgs),
    /// Process start to the first state message (demo config or N devices).
    Startup(StartupArgs),
    /// Long steady load with Mosquitto restarted periodically: VmRSS samples.
    Flatness(FlatnessArgs),
    /// Context switches per second of every gateway thread at idle.
    Idle(IdleArgs),
    /// Sweep of devices x properties x interval (dummy or modbus): one line
    /// of CPU and RSS per combination.
    Scale(ScaleArgs),
    /// Bytes and PUBLISH packets sent after a lost connection, N idle
    /// devices, resumed or clean session (bench/src/reconnect_bytes.rs).
    ReconnectBytes(reconnect_bytes::ReconnectArgs),
    /// N Modbus TCP endpoints, one device each: start → all online, then
    /// values/s, CPU-s per 1 000 values, RssAnon (issue #26).
    ModbusFleet(modbus_fleet::ModbusFleetArgs),
    /// N Modbus RTU units on one line (a pty pair): achieved poll cycle,
    /// values/s, CPU, RssAnon (issue #26).
    RtuLine(rtu_line::RtuLineArgs),
    /// Latency from an OPC-UA subscription change or a BLE notification to
    /// the state message at an MQTT subscriber (issue #26).
    NotifyLatency(notify_latency::NotifyLatencyArgs),
    /// N simulated devices in one file or split over included files, then
    /// rename-saves that add one device to one file: time to its first
    /// state and the longest silence of any other device.
    Edit(edit::EditArgs),
}

/// Options of the `latency` scenario.
#[derive(Args)]
struct LatencyArgs {
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

/// Options of the `startup` scenario.
#[derive(Args)]
struct StartupArgs {
    /// Generate this many dummy devices (on Mosquitto) instead of the demo config.
    #[arg(long)]
    devices: Option<usize>,
    /// Properties per generated device.
    #[arg(long, default_value_t = 10)]
    properties: usize,
    /// Poll interval of the generated devices.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// The demo config (default: configs/demo.yaml of this workspace).
    #[arg(long)]
    demo: Option<PathBuf>,
    /// The demo's broker: embedded (as shipped, on a free port) or mosquitto.
    #[arg(long, default_value = "mosquitto")]
    broker: String,
    /// Start-ups to measure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options of the `flatness` scenario.
#[derive(Args)]
struct FlatnessArgs {
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

/// Options of the `idle` scenario.
#[derive(Args)]
struct IdleArgs {
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

/// Options of the `scale` sweep.
#[derive(Args)]
struct ScaleArgs {
    /// dummy or modbus.
    #[arg(long, default_value = "dummy")]
    driver: String,
    /// Device counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    devices: Vec<usize>,
    /// Properties (registers) per device, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    properties: Vec<usize>,
    /// Poll intervals, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1s", value_parser = parse_duration)]
    interval: Vec<Duration>,
    /// Measurement window of each combination.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up of each combination.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options of the `modbus` scenario.
#[derive(Args)]
struct ModbusArgs {
    /// Number of devices (one Modbus TCP server each).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Holding registers per device (uint16 properties at addresses 0..M).
    #[arg(long, default_value_t = 30)]
    registers: u16,
    /// Poll interval of every device.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// The read planner's `maxRegistersPerRead` (default: the gateway's, 125);
    /// 1 turns merging off.
    #[arg(long)]
    max_registers_per_read: Option<u16>,
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Time between the first state message and the measurement window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options of the `reload` scenario.
#[derive(Args)]
struct ReloadArgs {
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

/// Options of the `store` scenario.
#[derive(Args)]
struct StoreArgs {
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
    /// Turn on Home Assistant discovery (`mqtt.discovery.homeAssistant`).
    #[arg(long)]
    ha_discovery: bool,
    /// Publish Sparkplug B (`mqtt.message.format: sparkplugB`) instead of
    /// fieldgate's topics; values are counted as DDATA/DBIRTH metrics.
    #[arg(long)]
    sparkplug: bool,
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
        Scenario::Modbus(args) => run_modbus(args).await,
        Scenario::Reload(args) => run_reload(args).await,
        Scenario::Store(args) => run_store(args).await,
        Scenario::Opcua(args) => run_opcua(args).await,
        Scenario::Latency(args) => run_latency(args).await,
        Scenario::Startup(args) => run_startup(args).await,
        Scenario::Flatness(args) => run_flatness(args).await,
        Scenario::Idle(args) => run_idle(args).await,
        Scenario::Scale(args) => run_scale(args).await,
        Scenario::ReconnectBytes(args) => reconnect_bytes::run(args).await,
        Scenario::ModbusFleet(args) => modbus_fleet::run_modbus_fleet(args).await,
        Scenario::RtuLine(args) => rtu_line::run_rtu_line(args).await,
        Scenario::NotifyLatency(args) => notify_latency::run_notify_latency(args).await,
        Scenario::Edit(args) => edit::main(args).await,
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
    let report = measure_dummy(&args).await?;
    print_result(args.common.json, || report.line(), || report.json());
    Ok(())
}

async fn measure_dummy(args: &DummyArgs) -> anyhow::Result<Report> {
    if args.devices == 0 || args.properties == 0 {
        bail!("--devices and --properties must be at least 1");
    }
    if args.interval.is_zero() || args.duration.is_zero() {
        bail!("--interval and --duration must be more than 0");
    }
    let scenario = format!(
        "dummy devices={} properties={} interval={}{}",
        args.devices,
        args.properties,
        humantime::format_duration(args.interval),
        if args.sparkplug {
            " format=sparkplugB"
        } else {
            ""
        }
    );
    let expected = (args.devices * args.properties) as f64 / args.interval.as_secs_f64();
    let dir = RunDir::create(args.common.keep)?;
    let (_broker, port) = process::start_mosquitto(&dir.path).await?;
    let config = dir.path.join("config.yaml");
    let mut yaml = scenario::dummy_config(
        args.devices,
        args.properties,
        args.interval,
        port,
        &dir.path.join("state"),
    );
    if args.ha_discovery {
        yaml = yaml.replacen(
            "\nmqtt:\n",
            "\nmqtt:\n  discovery: { homeAssistant: { enabled: true } }\n",
            1,
        );
    }
    if args.sparkplug {
        yaml = scenario::as_sparkplug(&yaml);
    }
    std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
    measure_gateway(
        &args.common,
        &dir.path,
        &config,
        port,
        Window {
            first_state_timeout: Duration::from_secs(30).max(args.interval * 3),
            warmup: args.warmup,
            duration: args.duration,
        },
        Load {
            scenario,
            expected_values_per_second: expected,
            device_requests: None,
            counter_prefix: if args.sparkplug {
                counter::SPARKPLUG
            } else {
                scenario::PREFIX
            },
        },
    )
    .await
}

async fn run_modbus(args: ModbusArgs) -> anyhow::Result<()> {
    let (report, per_cycle) = measure_modbus(&args).await?;
    if args.common.json {
        let mut j = report.json();
        j["device_requests_per_cycle"] = serde_json::json!(per_cycle);
        println!("{j}");
    } else {
        println!(
            "{}, requests per device per cycle {:.2}",
            report.line(),
            per_cycle.unwrap_or(0.0)
        );
    }
    Ok(())
}

/// Runs the modbus scenario; also returns the requests one poll cycle of
/// one device made, as the devices saw them.
async fn measure_modbus(args: &ModbusArgs) -> anyhow::Result<(Report, Option<f64>)> {
    if args.devices == 0 || args.registers == 0 {
        bail!("--devices and --registers must be at least 1");
    }
    if args.interval.is_zero() || args.duration.is_zero() {
        bail!("--interval and --duration must be more than 0");
    }
    let scenario = format!(
        "modbus devices={} registers={} interval={} maxRegistersPerRead={}",
        args.devices,
        args.registers,
        humantime::format_duration(args.interval),
        args.max_registers_per_read
            .map_or_else(|| "default".to_string(), |m| m.to_string())
    );
    let expected =
        (args.devices * usize::from(args.registers)) as f64 / args.interval.as_secs_f64();
    let fleet = modbus_devices::Fleet::start(args.devices).await?;
    let dir = RunDir::create(args.common.keep)?;
    let (_broker, port) = process::start_mosquitto(&dir.path).await?;
    let config = dir.path.join("config.yaml");
    std::fs::write(
        &config,
        scenario::modbus_config(
            &fleet.endpoints,
            args.registers,
            args.interval,
            args.max_registers_per_read,
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
        Load {
            scenario,
            expected_values_per_second: expected,
            device_requests: Some(fleet.requests()),
            counter_prefix: scenario::PREFIX,
        },
    )
    .await?;
    let per_cycle = report
        .device_requests_per_second()
        .map(|r| r * args.interval.as_secs_f64() / args.devices as f64);
    Ok((report, per_cycle))
}

/// The gateway binary of `common`.
fn binary(common: &CommonArgs) -> PathBuf {
    common
        .fieldgate
        .clone()
        .unwrap_or_else(process::default_fieldgate_binary)
}

/// The demo config: `path`, else configs/demo.yaml of this workspace.
fn demo_path(path: Option<PathBuf>) -> PathBuf {
    path.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo.yaml"))
}

fn parse_broker(s: &str) -> anyhow::Result<startup::Broker> {
    match s {
        "embedded" => Ok(startup::Broker::Embedded),
        "mosquitto" => Ok(startup::Broker::Mosquitto),
        other => bail!("--broker is embedded or mosquitto, not {other:?}"),
    }
}

async fn run_latency(args: LatencyArgs) -> anyhow::Result<()> {
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
    let report = latency::run(
        &latency::LatencyRun {
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

async fn run_startup(args: StartupArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (source, scenario) = match args.devices {
        Some(devices) => {
            if devices == 0 || args.properties == 0 {
                bail!("--devices and --properties must be at least 1");
            }
            (
                startup::Source::Generated {
                    devices,
                    properties: args.properties,
                    interval: args.interval,
                },
                format!(
                    "startup dummy devices={devices} properties={} interval={} broker=mosquitto",
                    args.properties,
                    humantime::format_duration(args.interval)
                ),
            )
        }
        None => {
            let broker = parse_broker(&args.broker)?;
            (
                startup::Source::Demo {
                    path: demo_path(args.demo),
                    broker,
                },
                format!("startup demo broker={}", args.broker),
            )
        }
    };
    let dir = RunDir::create(args.common.keep)?;
    let runs = startup::run(&source, args.runs, &dir.path, &binary(&args.common)).await?;
    print_result(
        args.common.json,
        || startup::line(&scenario, &runs),
        || startup::json(&scenario, &runs),
    );
    Ok(())
}

async fn run_flatness(args: FlatnessArgs) -> anyhow::Result<()> {
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
    let report = flatness::run(
        &flatness::FlatnessRun {
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

async fn run_idle(args: IdleArgs) -> anyhow::Result<()> {
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    let (config, scenario) = match args.config.as_str() {
        "demo" => (
            idle::IdleConfig::Demo {
                path: demo_path(args.demo),
                broker: parse_broker(&args.broker)?,
            },
            format!("idle demo broker={}", args.broker),
        ),
        "empty" => (
            idle::IdleConfig::Empty,
            "idle empty (no devices, no metrics) broker=mosquitto".to_string(),
        ),
        other => bail!("--config is demo or empty, not {other:?}"),
    };
    let dir = RunDir::create(args.common.keep)?;
    let report = idle::run(
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

async fn run_scale(args: ScaleArgs) -> anyhow::Result<()> {
    if args.driver != "dummy" && args.driver != "modbus" {
        bail!("--driver is dummy or modbus");
    }
    for &devices in &args.devices {
        for &properties in &args.properties {
            for &interval in &args.interval {
                let common = CommonArgs {
                    fieldgate: args.common.fieldgate.clone(),
                    json: args.common.json,
                    keep: args.common.keep,
                };
                let report = if args.driver == "dummy" {
                    measure_dummy(&DummyArgs {
                        devices,
                        properties,
                        interval,
                        duration: args.duration,
                        warmup: args.warmup,
                        ha_discovery: false,
                        sparkplug: false,
                        common,
                    })
                    .await?
                } else {
                    let registers = u16::try_from(properties)
                        .context("--properties of a modbus sweep must fit in 16 bits")?;
                    measure_modbus(&ModbusArgs {
                        devices,
                        registers,
                        interval,
                        max_registers_per_read: None,
                        duration: args.duration,
                        warmup: args.warmup,
                        common,
                    })
                    .await?
                    .0
                };
                print_result(args.common.json, || report.line(), || report.json());
            }
        }
    }
    Ok(())
}

/// What a scenario asks of the gateway.
struct Load {
    /// Scenario and parameters, for the report.
    scenario: String,
    /// Values per second the config should produce.
    expected_values_per_second: f64,
    /// Requests answered by the scenario's simulated field devices, if any.
    device_requests: Option<Arc<AtomicU64>>,
    /// Topic prefix the values arrive under: fieldgate's, or `spBv1.0`.
    counter_prefix: &'static str,
}

async fn run_reload(args: ReloadArgs) -> anyhow::Result<()> {
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

async fn run_store(args: StoreArgs) -> anyhow::Result<()> {
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
    let report = store::run(
        &store::StoreRun {
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
        Load {
            scenario,
            expected_values_per_second: expected,
            device_requests: None,
            counter_prefix: scenario::PREFIX,
        },
    )
    .await?;
    server.stop().await;
    print_result(args.common.json, || report.line(), || report.json());
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
async fn run_sampling(gateway: &mut Supervised, dur: Duration) -> anyhow::Result<measure::Memory> {
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

/// Prints a scenario's result: as JSON with `--json`, else as one line.
fn print_result(
    json: bool,
    line: impl FnOnce() -> String,
    value: impl FnOnce() -> serde_json::Value,
) {
    if json {
        println!("{}", value());
    } else {
        println!("{}", line());
    }
}
