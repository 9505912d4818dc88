//! Subcommands of the `fieldgate` command line besides run/check/schema:
//! `profiles`, `discover opcua|ble`, `probe modbus`, `status`. Each prints to stdout
//! and returns the process exit code.

#[cfg(feature = "ble")]
pub mod discover_ble;
#[cfg(feature = "opcua")]
pub mod discover_opcua;
#[cfg(feature = "modbus")]
pub mod probe_modbus;
pub mod profiles;
pub mod status;
