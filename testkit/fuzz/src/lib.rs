//! The fuzz targets' entry points and their checks, shared by the
//! cargo-fuzz targets (`fuzz/`, which depend on this crate) and the
//! regression tests (`gateway/tests/e2e/fuzz_regressions.rs`), so a found
//! input is replayed through exactly the code and assertions that found it.
//!
//! Each `run(&[u8])` must return normally for every input: a panic is a
//! finding (a crash in fieldgate or a violated property).

pub mod config;
pub mod input;
pub mod modbus_decode;
pub mod set_payload;
pub mod store_recovery;
pub mod topics;

/// A target's entry point.
pub type Run = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and
/// `gateway/tests/fuzz_regressions/<name>/` call them.
pub const TARGETS: [(&str, Run); 5] = [
    ("config", config::run),
    ("set_payload", set_payload::run),
    ("modbus_decode", modbus_decode::run),
    ("store_recovery", store_recovery::run),
    ("topics", topics::run),
];
