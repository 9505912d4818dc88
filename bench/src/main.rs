//! `fieldgate-bench`: runs the real `fieldgate` binary against a private
//! Mosquitto under generated load and reports delivered values per second,
//! the gateway's CPU use and its peak memory, or the latency of a hot reload.

mod cli;
mod counter;
mod dummy;
mod edit;
mod first_message;
mod flatness;
mod harness;
mod idle;
mod latency;
mod measure;
mod modbus;
mod modbus_devices;
mod modbus_fleet;
mod notify_latency;
mod online;
mod opcua;
#[path = "../../drivers/tests/opcua_server/mod.rs"]
mod opcua_server;
mod process;
mod reconnect_bytes;
mod reload;
mod report;
mod rtu_line;
mod scale;
mod scenario;
mod startup;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use dummy::{run_dummy, DummyArgs};
use flatness::{run_flatness, FlatnessArgs};
use idle::{run_idle, IdleArgs};
use latency::{run_latency, LatencyArgs};
use modbus::{run_modbus, ModbusArgs};
use opcua::{run_opcua, OpcuaArgs};
use reload::{run_reload, ReloadArgs};
use scale::{run_scale, ScaleArgs};
use startup::{run_startup, StartupArgs};
use store::{run_store, StoreArgs};

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
