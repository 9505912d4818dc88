//! Test support shared by fieldgate's end-to-end tests (`gateway/tests/e2e`)
//! and its benchmarks (`bench/`): free loopback ports, waiting on conditions
//! with timeouts (never fixed sleeps), child processes with their logs, a
//! private Mosquitto, and behind the `bluez` feature the BlueZ stand-in.
//! It does not depend on fieldgate itself, so a change to the gateway
//! rebuilds no benchmark. The fuzz targets' harness, which does, is the
//! `fieldgate-fuzz-harness` crate next to it (`testkit/fuzz/`).
//!
//! The fallible helpers return [`Error`]; the test conveniences
//! ([`free_port`], [`send_signal`], [`Mosquitto`]) panic with a clear
//! message instead, as a test wants.

#[cfg(feature = "bluez")]
pub mod bluez;
pub mod mosquitto;
pub mod net;
pub mod process;
pub mod wait;

use std::time::Duration;

pub use mosquitto::Mosquitto;
pub use net::{free_port, port_open, try_free_port, wait_port_open, wait_port_open_async};
pub use process::{log_tail, read_log, send_signal, try_send_signal, Supervised};
pub use wait::{wait_until, wait_until_async};

/// How long helpers wait for a process or connection to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a helper failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed (`what` names it).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A program the helper runs is not installed.
    #[error("{program} not installed ({hint})")]
    NotInstalled {
        /// The program.
        program: &'static str,
        /// How to install it.
        hint: &'static str,
    },
    /// A supervised process exited.
    #[error("{name} exited ({status}); last log lines:\n{log}")]
    Exited {
        /// The process's name.
        name: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// A process did not listen on its port in time.
    #[error("{name} did not listen on port {port} within {timeout:?}")]
    NotListening {
        /// The process's name.
        name: &'static str,
        /// The port.
        port: u16,
        /// How long it was given.
        timeout: Duration,
    },
    /// A command ran but failed.
    #[error("{command} failed: {status}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
}

impl Error {
    /// An [`Error::Io`] saying what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
