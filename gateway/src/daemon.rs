//! `fieldgate run`: starts telemetry, the optional embedded broker, MQTT
//! sessions and devices, then serves until SIGTERM/SIGINT.

use std::path::Path;

/// Runs the daemon with the config at `path`; returns the process exit code.
pub fn run(path: &Path) -> i32 {
    let _ = path;
    todo!()
}
