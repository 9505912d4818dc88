//! Subcommands beyond run/check/schema, one module each.

#[cfg(feature = "ble")]
pub mod discover_ble;
