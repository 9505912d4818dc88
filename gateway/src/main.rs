//! The `fieldgate` command line: run, check, schema, status, --version.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The daemon's allocator: jemalloc keeps a gateway's many small,
/// long-lived objects (one set per device and property) packed by size class,
/// where glibc's malloc left a quarter of the heap in holes. Its build-time
/// setting (the arm64 page size: one binary for 4/16/64 KiB-page kernels)
/// is in `.cargo/config.toml`; its run-time settings are below.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read once at its start: one arena (a gateway's few
/// threads allocate little; an arena per CPU would keep a heap per thread),
/// and freed pages given back to the OS after about a second instead of ten.
/// `_RJEM_MALLOC_CONF` in the environment can still override them.
// SAFETY: jemalloc reads this symbol once, as a NUL-terminated string,
// which the static is; nothing else defines `_rjem_malloc_conf`.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
    /// Ask the running daemon how it is: sessions, devices, backlog, last reload.
    Status(fieldgate::cli::status::Args),
    /// List the device profiles, or print one (`profiles show NAME`).
    Profiles {
        #[command(subcommand)]
        action: Option<ProfilesCmd>,
    },
    /// Browse a server and print a ready device YAML (read-only).
    Discover {
        #[command(subcommand)]
        what: DiscoverCmd,
    },
    /// Scan a bus and show what answers, decoded every way (read-only).
    Probe {
        #[command(subcommand)]
        what: ProbeCmd,
    },
}

#[derive(Subcommand)]
enum ProfilesCmd {
    /// Print one profile's YAML.
    Show {
        /// Profile name (built-in or local) or a path ending in .yaml.
        name: String,
    },
}

#[derive(Subcommand)]
// Parsed once from the command line: the size of its variants is no cost.
#[allow(clippy::large_enum_variant)]
enum DiscoverCmd {
    /// BLE devices advertising nearby (passive scan): address, name, RSSI,
    /// recognised format and decoded values, and YAML for each recognised one.
    #[cfg(feature = "ble")]
    Ble(fieldgate::cli::discover_ble::Args),
    /// Browse an OPC-UA server from a root node to a depth.
    #[cfg(feature = "opcua")]
    Opcua(fieldgate::cli::discover_opcua::Options),
}

#[derive(Subcommand)]
enum ProbeCmd {
    /// Scan unit ids and register ranges of a Modbus bus.
    #[cfg(feature = "modbus")]
    Modbus {
        /// tcp://HOST:PORT, rtu+tcp://HOST:PORT or rtu:/dev/ttyUSB0?baud=9600[&parity=even]
        target: String,
        /// Unit ids to try, e.g. 1-247 or 1,3,10-12.
        #[arg(long, default_value = "1-247")]
        units: String,
        /// Register ranges, e.g. holding:0-99 (repeat or comma-separate for more).
        #[arg(long, default_value = "holding:0-99")]
        registers: Vec<String>,
        /// Print a device YAML skeleton instead of the table.
        #[arg(long)]
        yaml: bool,
        /// Per-unit (and per-request) timeout.
        #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Bound on the whole scan.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        total: std::time::Duration,
    },
}

fn version_line() -> String {
    format!(
        "{} (drivers: {})",
        env!("CARGO_PKG_VERSION"),
        fieldgate_drivers::enabled_drivers().join(", ")
    )
}

/// The config path from `-c`, else `$FIELDGATE_CONFIG`, else the system default.
fn config_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("FIELDGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/fieldgate/config.yaml"))
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run { config } => fieldgate::daemon::run(&config_path(config)),
        Command::Check { config } => check(&config_path(config)),
        Command::Schema => schema(),
        Command::Status(args) => {
            fieldgate::cli::status::run(&args, &config_path(args.config.clone()))
        }
        Command::Profiles { action: None } => fieldgate::cli::profiles::list(),
        Command::Profiles {
            action: Some(ProfilesCmd::Show { name }),
        } => fieldgate::cli::profiles::show(&name),
        Command::Discover { what } => discover(what),
        Command::Probe { what } => probe(what),
    };
    std::process::exit(code);
}

/// `fieldgate check`: prints the effective config or every error.
fn check(path: &std::path::Path) -> i32 {
    match fieldgate::config::load(path) {
        Ok(resolved) => {
            for part in fieldgate::config::report::render_parts(&resolved) {
                print!("{part}");
            }
            0
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            fieldgate::EXIT_CONFIG
        }
    }
}

/// `fieldgate schema`: prints the JSON Schema of the config.
fn schema() -> i32 {
    println!("{}", fieldgate::config::schema::schema_pretty());
    0
}

/// `fieldgate discover …`.
fn discover(what: DiscoverCmd) -> i32 {
    match what {
        #[cfg(feature = "ble")]
        DiscoverCmd::Ble(args) => fieldgate::cli::discover_ble::run(&args),
        #[cfg(feature = "opcua")]
        DiscoverCmd::Opcua(options) => fieldgate::cli::discover_opcua::run(options),
    }
}

/// `fieldgate probe …`.
fn probe(what: ProbeCmd) -> i32 {
    match what {
        #[cfg(feature = "modbus")]
        ProbeCmd::Modbus {
            target,
            units,
            registers,
            yaml,
            timeout,
            total,
        } => fieldgate::cli::probe_modbus::run(fieldgate::cli::probe_modbus::Options {
            target,
            units,
            registers,
            yaml,
            timeout,
            total,
        }),
    }
}
