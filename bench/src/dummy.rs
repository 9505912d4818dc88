//! The `dummy` scenario: N simulated devices x M counter/sine properties through Mosquitto.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::cli::{parse_duration, print_result, CommonArgs};
use crate::harness::{measure_gateway, Load, RunDir, Window};
use crate::report::Report;
use crate::{counter, process, scenario};

/// Options of the `dummy` scenario.
#[derive(Args)]
pub(crate) struct DummyArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Properties per device.
    #[arg(long, default_value_t = 10)]
    pub properties: usize,
    /// Poll interval of every device.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Length of the measurement window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time between the first state message and the measurement window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Turn on Home Assistant discovery (`mqtt.discovery.homeAssistant`).
    #[arg(long)]
    pub ha_discovery: bool,
    /// Publish Sparkplug B (`mqtt.message.format: sparkplugB`) instead of
    /// fieldgate's topics; values are counted as DDATA/DBIRTH metrics.
    #[arg(long)]
    pub sparkplug: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub(crate) async fn run_dummy(args: DummyArgs) -> anyhow::Result<()> {
    let report = measure_dummy(&args).await?;
    print_result(args.common.json, || report.line(), || report.json());
    Ok(())
}

pub(crate) async fn measure_dummy(args: &DummyArgs) -> anyhow::Result<Report> {
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
