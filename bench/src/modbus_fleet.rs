//! The `modbus-fleet` scenario (issue #26): N Modbus TCP endpoints with one
//! device each (tokio-modbus servers in this process, one loopback port
//! each). Measures process start → first state and → a state from every
//! device, then a window: values/s delivered, CPU-seconds per 1 000 values,
//! `RssAnon`/`VmRSS`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::counter::StateCounter;
use crate::modbus_devices::Fleet;
use crate::online::{self, Online};
use crate::process;
use crate::scenario;

/// Options of the `modbus-fleet` scenario.
#[derive(Args)]
pub(crate) struct ModbusFleetArgs {
    /// Modbus TCP endpoints, one device each.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Holding registers per device (uint16, addresses 0..M, one read each poll).
    #[arg(long, default_value_t = 10)]
    pub registers: u16,
    /// Poll interval of every device.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Time between every device online and the window.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Length of the measurement window.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub common: crate::cli::CommonArgs,
}

/// Runs the scenario and prints its result.
pub(crate) async fn run_modbus_fleet(args: ModbusFleetArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.registers == 0 {
        bail!("--devices and --registers must be at least 1");
    }
    if args.interval.is_zero() || args.duration.is_zero() {
        bail!("--interval and --duration must be more than 0");
    }
    let scenario = format!(
        "modbus-fleet endpoints={} registers={} interval={}",
        args.devices,
        args.registers,
        humantime::format_duration(args.interval)
    );
    let expected =
        (args.devices * usize::from(args.registers)) as f64 / args.interval.as_secs_f64();
    let fleet = Fleet::start(args.devices).await?;
    let dir = crate::harness::RunDir::create(args.common.keep)?;
    let (_broker, port) = process::start_mosquitto(dir.path()).await?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        scenario::modbus_config(
            &fleet.endpoints,
            args.registers,
            args.interval,
            None,
            port,
            &dir.path().join("state"),
        ),
    )
    .with_context(|| format!("write {}", config.display()))?;
    let counter = StateCounter::connect(port, scenario::PREFIX).await?;
    let online = Online::connect(port, args.devices, None).await?;

    let load_before = online::load_average();
    let started = Instant::now();
    let mut gateway =
        process::start_fieldgate(&crate::cli::binary(&args.common), &config, dir.path())?;
    let startup = online::wait_online(
        &mut gateway,
        &online,
        started,
        Duration::from_secs(120).max(args.interval * 5),
    )
    .await?;
    let start_memory = crate::measure::memory(gateway.pid())?;
    crate::harness::run_for(&mut gateway, args.warmup).await?;
    let requests = fleet.requests();
    let requests_before = requests.load(Ordering::Relaxed);
    let mut report =
        online::measure_window(&mut gateway, &counter, args.duration, scenario, expected).await?;
    report.device_requests = Some(
        requests
            .load(Ordering::Relaxed)
            .saturating_sub(requests_before),
    );
    let load_after = online::load_average();
    gateway.terminate(Duration::from_secs(5)).await;

    let per_thousand = online::cpu_seconds_per_thousand(&report);
    if args.common.json {
        let mut j = report.json();
        j["first_state_ms"] = serde_json::json!(startup.first_state.as_secs_f64() * 1e3);
        j["all_online_ms"] = serde_json::json!(startup.all_online.as_secs_f64() * 1e3);
        j["rss_anon_all_online_mib"] = serde_json::json!(crate::report::mib(start_memory.anon));
        j["cpu_seconds_per_1000_values"] = serde_json::json!(per_thousand);
        j["load_average"] = serde_json::json!([load_before, load_after]);
        println!("{j}");
    } else {
        println!("{}", report.line());
        println!(
            "start → first state {:.0} ms, → all {} devices online {:.0} ms (RssAnon then {:.1} MiB); \
             CPU-s per 1 000 values {:.4}; load average {load_before} → {load_after}",
            startup.first_state.as_secs_f64() * 1e3,
            args.devices,
            startup.all_online.as_secs_f64() * 1e3,
            crate::report::mib(start_memory.anon),
            per_thousand,
        );
    }
    Ok(())
}
