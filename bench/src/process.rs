//! The processes a benchmark runs: a private Mosquitto on a free loopback
//! port and the `fieldgate` binary under test, each killed on drop, with
//! their output in log files of the run directory.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits (asynchronously) until 127.0.0.1:`port` accepts connections.
pub async fn wait_port_open(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        );
        if matches!(attempt.await, Ok(Ok(_))) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process with its log file, killed on drop.
#[derive(Debug)]
pub struct Supervised {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
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

    /// An error if the process has exited, with the end of its log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                log_tail(&self.log, 30)
            ),
        }
    }

    /// Sends SIGTERM (via `kill`) and waits up to `timeout` for the exit;
    /// kills it if it does not stop in time.
    pub async fn terminate(&mut self, timeout: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The mosquitto binary: `/usr/sbin/mosquitto`, else the first on `PATH`.
pub fn mosquitto_binary() -> anyhow::Result<PathBuf> {
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
        .context("mosquitto not installed (Debian: apt-get install mosquitto)")
}

/// Starts an anonymous, non-persistent Mosquitto on 127.0.0.1:<free port>
/// with its config and log in `dir`; returns it and its port once it listens.
pub async fn start_mosquitto(dir: &Path) -> anyhow::Result<(Supervised, u16)> {
    let port = free_port()?;
    Ok((start_mosquitto_on(dir, port).await?, port))
}

/// [`start_mosquitto`] with `set_tcp_nodelay true`: Mosquitto then sends
/// each packet at once instead of holding a small one back (Nagle) until the
/// client acknowledges the previous one, which a client delays by up to
/// 40 ms. Request/response measurements need it.
pub async fn start_mosquitto_nodelay(dir: &Path) -> anyhow::Result<(Supervised, u16)> {
    let port = free_port()?;
    Ok((start_mosquitto_with(dir, port, true).await?, port))
}

/// [`start_mosquitto`] on a given port (to restart a broker after an outage).
pub async fn start_mosquitto_on(dir: &Path, port: u16) -> anyhow::Result<Supervised> {
    start_mosquitto_with(dir, port, false).await
}

async fn start_mosquitto_with(dir: &Path, port: u16, nodelay: bool) -> anyhow::Result<Supervised> {
    let conf = dir.join("mosquitto.conf");
    fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 100000\nset_tcp_nodelay {nodelay}\n"
        ),
    )
    .with_context(|| format!("write {}", conf.display()))?;
    let mut cmd = Command::new(mosquitto_binary()?);
    cmd.arg("-c").arg(&conf);
    let mut broker = Supervised::spawn("mosquitto", cmd, dir.join("mosquitto.log"))?;
    if !wait_port_open(port, Duration::from_secs(10)).await {
        broker.ensure_running()?;
        bail!("mosquitto did not listen on port {port} within 10 s");
    }
    Ok(broker)
}

/// The default `fieldgate` binary: `target/release/fieldgate` under the
/// current directory, else under this workspace.
pub fn default_fieldgate_binary() -> PathBuf {
    let local = PathBuf::from("target/release/fieldgate");
    if local.is_file() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/fieldgate")
}

/// Starts `fieldgate run -c <config>` with its log in `dir/fieldgate.log`.
pub fn start_fieldgate(binary: &Path, config: &Path, dir: &Path) -> anyhow::Result<Supervised> {
    if !binary.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p fieldgate` or pass --fieldgate PATH",
            binary.display()
        );
    }
    // Absolute, since the child runs in `dir`.
    let binary =
        fs::canonicalize(binary).with_context(|| format!("resolve {}", binary.display()))?;
    let mut cmd = Command::new(binary);
    cmd.arg("run").arg("-c").arg(config).current_dir(dir);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    Supervised::spawn("fieldgate", cmd, dir.join("fieldgate.log"))
}
