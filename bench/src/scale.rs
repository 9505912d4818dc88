//! The `scale` sweep: devices x properties x interval of the dummy or modbus scenario, one line each.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::cli::{parse_duration, print_result, CommonArgs};
use crate::dummy::{measure_dummy, DummyArgs};
use crate::modbus::{measure_modbus, ModbusArgs};

/// Options of the `scale` sweep.
#[derive(Args)]
pub(crate) struct ScaleArgs {
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

pub(crate) async fn run_scale(args: ScaleArgs) -> anyhow::Result<()> {
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
