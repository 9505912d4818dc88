//! The processes a benchmark runs: a private Mosquitto on a free loopback
//! port and the `fieldgate` binary under test, each killed on drop, with
//! their output in log files of the run directory (the process plumbing is
//! the shared `fieldgate-testkit` crate's).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use fieldgate_testkit::mosquitto;
pub(crate) use fieldgate_testkit::process::{log_tail, Supervised};

/// A loopback TCP port that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(fieldgate_testkit::try_free_port()?)
}

/// Starts an anonymous, non-persistent Mosquitto on 127.0.0.1:<free port>
/// with its config and log in `dir`; returns it and its port once it listens.
pub(crate) async fn start_mosquitto(dir: &Path) -> anyhow::Result<(Supervised, u16)> {
    let port = free_port()?;
    Ok((start_mosquitto_on(dir, port).await?, port))
}

/// [`start_mosquitto`] with `set_tcp_nodelay true`: Mosquitto then sends
/// each packet at once instead of holding a small one back (Nagle) until the
/// client acknowledges the previous one, which a client delays by up to
/// 40 ms. Request/response measurements need it.
pub(crate) async fn start_mosquitto_nodelay(dir: &Path) -> anyhow::Result<(Supervised, u16)> {
    let port = free_port()?;
    Ok((start_mosquitto_with(dir, port, true).await?, port))
}

/// [`start_mosquitto`] on a given port (to restart a broker after an outage).
pub(crate) async fn start_mosquitto_on(dir: &Path, port: u16) -> anyhow::Result<Supervised> {
    start_mosquitto_with(dir, port, false).await
}

async fn start_mosquitto_with(dir: &Path, port: u16, nodelay: bool) -> anyhow::Result<Supervised> {
    let extra = format!("max_queued_messages 100000\nset_tcp_nodelay {nodelay}");
    Ok(mosquitto::start_async(dir, port, &extra).await?)
}

/// The default `fieldgate` binary: `target/release/fieldgate` under the
/// current directory, else under this workspace.
pub(crate) fn default_fieldgate_binary() -> PathBuf {
    let local = PathBuf::from("target/release/fieldgate");
    if local.is_file() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/fieldgate")
}

/// Starts `fieldgate run -c <config>` with its log in `dir/fieldgate.log`.
pub(crate) fn start_fieldgate(
    binary: &Path,
    config: &Path,
    dir: &Path,
) -> anyhow::Result<Supervised> {
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
    Ok(Supervised::spawn(
        "fieldgate",
        cmd,
        dir.join("fieldgate.log"),
    )?)
}
