//! Child processes: signals, logs, and [`Supervised`] (a child with its log
//! file, killed on drop).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::wait::wait_until;
use crate::Error;

/// Sends `signal` (e.g. `TERM`, `HUP`, `KILL`) to `pid` with the `kill` command.
pub fn try_send_signal(pid: u32, signal: &str) -> Result<(), Error> {
    let command = format!("kill -{signal} {pid}");
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .map_err(|e| Error::io(format!("run {command}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed { command, status })
    }
}

/// [`try_send_signal`] for tests: panics if the signal cannot be sent.
pub fn send_signal(pid: u32, signal: &str) {
    try_send_signal(pid, signal).unwrap_or_else(|e| panic!("{e}"));
}

/// Everything in a log file so far (invalid UTF-8 replaced; empty when it
/// does not exist).
pub fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = read_log(path);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process with its stdout and stderr appended to a log file,
/// killed on drop.
#[derive(Debug)]
pub struct Supervised {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    /// Starts `cmd` (stdin empty) with stdout and stderr appended to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self, Error> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(format!("open {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("clone the handle of {}", log.display()), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Error::io(format!("start {name} ({:?})", cmd.get_program()), e))?;
        Ok(Self { name, child, log })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// An error if the process has exited, with the end of its log.
    pub fn ensure_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name,
                status,
                log: log_tail(&self.log, 30),
            }),
            Err(e) => Err(Error::io(format!("wait for {}", self.name), e)),
        }
    }

    /// Kills the process (SIGKILL, like a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit (blocking the
    /// thread); kills the process if it does not stop in time.
    pub fn terminate_blocking(&mut self, timeout: Duration) {
        let _ = try_send_signal(self.pid(), "TERM");
        let child = &mut self.child;
        if !wait_until(timeout, || matches!(child.try_wait(), Ok(Some(_)))) {
            self.kill();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; kills the
    /// process if it does not stop in time.
    pub async fn terminate(&mut self, timeout: Duration) {
        let _ = try_send_signal(self.pid(), "TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}
