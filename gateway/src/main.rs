//! The `fieldgate` command line: run, check, schema, --version.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The daemon's allocator: jemalloc keeps a gateway's many small,
/// long-lived objects (one set per device and property) packed by size class,
/// where glibc's malloc left a quarter of the heap in holes. On arm64,
/// `JEMALLOC_SYS_WITH_LG_PAGE=16` at build time makes one binary run on
/// 4/16/64 KiB-page kernels (cross/build.sh sets it).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read once at its start: one arena (a gateway's few
/// threads allocate little; an arena per CPU would keep a heap per thread),
/// and freed pages given back to the OS after about a second instead of ten.
/// `_RJEM_MALLOC_CONF` in the environment can still override them.
#[cfg(feature = "jemalloc")]
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
    /// Find devices and print ready device YAML (only reads, never writes).
    #[command(subcommand)]
    Discover(Discover),
}

/// `fieldgate discover …`
#[derive(Subcommand)]
enum Discover {
    /// BLE devices advertising nearby (passive scan): address, name, RSSI,
    /// recognised format and decoded values, and YAML for each recognised one.
    #[cfg(feature = "ble")]
    Ble(fieldgate::cli::discover_ble::Args),
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
        #[cfg(feature = "ble")]
        Command::Discover(Discover::Ble(args)) => fieldgate::cli::discover_ble::run(&args),
        #[cfg(not(feature = "ble"))]
        Command::Discover(d) => match d {},
    };
    std::process::exit(code);
}

/// `fieldgate check`: prints the effective config or every error.
fn check(path: &std::path::Path) -> i32 {
    match fieldgate::config::load(path) {
        Ok(resolved) => {
            print!("{}", fieldgate::config::report::render(&resolved));
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
