//! The `modbus` scenario: N simulated Modbus TCP devices (servers in this process) x M holding registers.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::cli::{parse_duration, CommonArgs};
use crate::harness::{measure_gateway, Load, RunDir, Window};
use crate::report::Report;
use crate::{modbus_devices, process, scenario};

/// Options of the `modbus` scenario.
#[derive(Args)]
pub(crate) struct ModbusArgs {
    /// Number of devices (one Modbus TCP server each).
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Holding registers per device (uint16 properties at addresses 0..M).
    #[arg(long, default_value_t = 30)]
    pub registers: u16,
    /// Poll interval of every device.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// The read planner's `maxRegistersPerRead` (default: the gateway's, 125);
    /// 1 turns merging off.
    #[arg(long)]
    pub max_registers_per_read: Option<u16>,
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between the first state message and the measurement window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub(crate) async fn run_modbus(args: ModbusArgs) -> anyhow::Result<()> {
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
pub(crate) async fn measure_modbus(args: &ModbusArgs) -> anyhow::Result<(Report, Option<f64>)> {
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
