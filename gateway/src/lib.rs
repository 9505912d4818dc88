//! fieldgate: an edge gateway that reads field-bus devices and publishes their
//! normalized state to MQTT, and turns `$set` commands into device writes.

#[cfg(feature = "broker")]
pub mod broker;
pub mod cli;
// adjtimex(2): the kernel's clock synchronisation state.
#[allow(unsafe_code)]
pub mod clock;
pub mod command;
pub mod config;
pub mod daemon;
pub mod deadline;
// getrlimit(2) / setrlimit(2): the open-file limit.
#[allow(unsafe_code)]
pub mod descriptors;
pub mod device;
// statvfs(2): free space of a file system.
#[allow(unsafe_code)]
pub mod disk;
pub mod health;
// The allocator's purge calls (jemalloc mallctl, glibc malloc_trim).
#[allow(unsafe_code)]
pub mod heap;
pub mod http;
pub mod mqtt;
pub mod northbound;
pub mod reload;
pub mod sdnotify;
pub mod settle;
pub mod state;
pub mod supervisor;
pub mod telemetry;

/// Exit code for an invalid config (systemd `RestartPreventExitStatus=78`).
pub const EXIT_CONFIG: i32 = 78;
