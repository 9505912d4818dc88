//! A private Mosquitto on a loopback port: [`start_async`] for a benchmark
//! run directory, [`Mosquitto`] (own temp dir, restartable) for tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::net::{free_port, port_open, wait_port_open_async};
use crate::process::{read_log, Supervised};
use crate::wait::wait_until;
use crate::{Error, READY_TIMEOUT};

/// The mosquitto binary: `/usr/sbin/mosquitto`, else the first on `PATH`.
pub fn binary() -> Result<PathBuf, Error> {
    let fixed = PathBuf::from("/usr/sbin/mosquitto");
    if fixed.is_file() {
        return Ok(fixed);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("mosquitto"))
                .find(|p| p.is_file())
        })
        .ok_or(Error::NotInstalled {
            program: "mosquitto",
            hint: "Debian: apt-get install mosquitto; tests/run-tests.sh installs it",
        })
}

/// Writes `dir/mosquitto.conf`: an anonymous, non-persistent listener on
/// 127.0.0.1:`port`, then the lines of `extra_conf`.
pub fn write_config(dir: &Path, port: u16, extra_conf: &str) -> Result<PathBuf, Error> {
    let conf = dir.join("mosquitto.conf");
    let text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_conf}\n"
    );
    fs::write(&conf, text).map_err(|e| Error::io(format!("write {}", conf.display()), e))?;
    Ok(conf)
}

/// Starts `mosquitto -c <conf>` with its output appended to `log`
/// (returns at once; see [`start_async`] for a broker that listens).
pub fn spawn(conf: &Path, log: PathBuf) -> Result<Supervised, Error> {
    let mut cmd = Command::new(binary()?);
    cmd.arg("-c").arg(conf);
    Supervised::spawn("mosquitto", cmd, log)
}

/// Starts a broker on 127.0.0.1:`port` with its config and log
/// (`mosquitto.conf`, `mosquitto.log`) in `dir`; returns once it listens.
pub async fn start_async(dir: &Path, port: u16, extra_conf: &str) -> Result<Supervised, Error> {
    let conf = write_config(dir, port, extra_conf)?;
    let mut broker = spawn(&conf, dir.join("mosquitto.log"))?;
    if !wait_port_open_async(port, READY_TIMEOUT).await {
        broker.ensure_running()?;
        return Err(Error::NotListening {
            name: "mosquitto",
            port,
            timeout: READY_TIMEOUT,
        });
    }
    Ok(broker)
}

/// A Mosquitto broker on a loopback port with its config and log in its own
/// temp dir, killed on drop. For tests: it panics when the broker cannot
/// start.
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Supervised>,
    starts: u32,
}

impl Mosquitto {
    /// Starts an anonymous, non-persistent broker on 127.0.0.1:<free port>.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`Mosquitto::start`], with `extra_conf` appended to the config file.
    pub fn start_with(extra_conf: &str) -> Self {
        Self::start_on_with(free_port(), extra_conf)
    }

    /// Starts the broker on a given port (e.g. one a gateway already
    /// tries to reach).
    pub fn start_on(port: u16) -> Self {
        Self::start_on_with(port, "")
    }

    /// [`Mosquitto::start_on`] with `extra_conf` appended to the config file.
    pub fn start_on_with(port: u16, extra_conf: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for mosquitto");
        let conf = write_config(dir.path(), port, extra_conf).unwrap_or_else(|e| panic!("{e}"));
        let mut m = Self {
            port,
            dir,
            conf,
            child: None,
            starts: 0,
        };
        m.spawn();
        m
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `tcp://127.0.0.1:<port>` for a fieldgate `mqtt.client.server`.
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// The broker's process id while it runs (to freeze it with SIGSTOP).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Supervised::pid)
    }

    /// True while the broker process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(Supervised::is_running)
    }

    /// Kills the broker (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Stops the broker with SIGTERM (it saves its persistence file) and
    /// waits for it to exit (kills it after [`READY_TIMEOUT`]).
    pub fn stop_graceful(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.terminate_blocking(READY_TIMEOUT);
        }
    }

    /// Stops the broker and starts it again on the same port; returns once
    /// it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Everything the broker wrote to stdout/stderr, across restarts.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn spawn(&mut self) {
        let child = spawn(&self.conf, self.log_path())
            .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
        self.child = Some(child);
        self.starts += 1;
        let port = self.port;
        let ready = wait_until(READY_TIMEOUT, || {
            if !self.is_running() {
                return true;
            }
            port_open(port)
        });
        if !ready || !self.is_running() {
            self.stop();
            panic!(
                "mosquitto did not start on port {port} (start #{}):\n{}",
                self.starts,
                self.log()
            );
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
