//! The `fieldgate` command line: run, check, schema, --version.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Edge gateway: field-bus devices to MQTT and back.
#[derive(Parser)]
#[command(name = "fieldgate", version = version_line(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (default: $FIELDGATE_CONFIG, else /etc/fieldgate/config.yaml).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and print what it would do.
    Check {
        /// Config file (default: $FIELDGATE_CONFIG, else /etc/fieldgate/config.yaml).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of the config file.
    Schema,
}

fn version_line() -> String {
    format!(
        "{} (drivers: {})",
        env!("CARGO_PKG_VERSION"),
        fieldgate_drivers::enabled_drivers().join(", ")
    )
}

fn main() {
    let cli = Cli::parse();
    let _ = cli.command;
}
