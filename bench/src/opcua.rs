//! The `opcua` scenario: one OPC-UA device with N changing Int32 nodes served by an in-process server.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::cli::{parse_duration, print_result, CommonArgs};
use crate::harness::{measure_gateway, Load, RunDir, Window};
use crate::{opcua_server, process, scenario};

/// Options of the `opcua` scenario.
#[derive(Args)]
pub(crate) struct OpcuaArgs {
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

pub(crate) async fn run_opcua(args: OpcuaArgs) -> anyhow::Result<()> {
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
