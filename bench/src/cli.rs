//! Command-line pieces every scenario shares: common options, duration and broker parsing, result printing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::{process, startup};

/// Options shared by every scenario.
#[derive(Args, Clone)]
pub(crate) struct CommonArgs {
    /// The fieldgate binary (default: target/release/fieldgate).
    #[arg(long)]
    pub fieldgate: Option<PathBuf>,
    /// Print the result as JSON instead of one line.
    #[arg(long)]
    pub json: bool,
    /// Keep the run directory (config, logs) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}; write e.g. 500ms, 1s, 30s"))
}

/// The gateway binary of `common`.
pub(crate) fn binary(common: &CommonArgs) -> PathBuf {
    common
        .fieldgate
        .clone()
        .unwrap_or_else(process::default_fieldgate_binary)
}

/// The demo config: `path`, else configs/demo.yaml of this workspace.
pub(crate) fn demo_path(path: Option<PathBuf>) -> PathBuf {
    path.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo.yaml"))
}

pub(crate) fn parse_broker(s: &str) -> anyhow::Result<startup::Broker> {
    match s {
        "embedded" => Ok(startup::Broker::Embedded),
        "mosquitto" => Ok(startup::Broker::Mosquitto),
        other => bail!("--broker is embedded or mosquitto, not {other:?}"),
    }
}

/// Prints a scenario's result: as JSON with `--json`, else as one line.
pub(crate) fn print_result(
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
