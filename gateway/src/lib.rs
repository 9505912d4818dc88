//! fieldgate: an edge gateway that reads field-bus devices and publishes their
//! normalized state to MQTT, and turns `$set` commands into device writes.

#[cfg(feature = "broker")]
pub mod broker;
pub mod cli;
// adjtimex(2): the kernel's clock synchronisation state.
#[allow(unsafe_code)]
mod clock;
pub mod command;
pub mod config;
pub mod daemon;
mod deadline;
// getrlimit(2) / setrlimit(2): the open-file limit.
#[allow(unsafe_code)]
mod descriptors;
pub mod device;
// statvfs(2): free space of a file system.
#[allow(unsafe_code)]
mod disk;
mod health;
// The allocator's purge calls (jemalloc mallctl, glibc malloc_trim).
#[allow(unsafe_code)]
mod heap;
mod http;
pub mod mqtt;
mod northbound;
mod reload;
mod sdnotify;
mod settle;
pub mod state;
mod supervisor;
pub mod telemetry;

/// Exit code for an invalid config (systemd `RestartPreventExitStatus=78`).
pub const EXIT_CONFIG: i32 = 78;
