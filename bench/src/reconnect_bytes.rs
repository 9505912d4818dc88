//! The `reconnect-bytes` scenario (#18 item 5, a flapping uplink): what one
//! lost connection costs on the uplink. N idle simulated fans (each with its
//! retained state, `$meta` and `$state` on the broker) publish through a
//! counting TCP proxy to a private Mosquitto; once start-up is over and the
//! uplink is quiet, the proxy cuts the connection, and the bytes and PUBLISH
//! packets the gateway sends after it (until the uplink is quiet again) are
//! the cost of that reconnect. `--session resumed` keeps the broker's session
//! (`cleanSession: false`), `clean` starts a new one each time.
//!
//! Only the gateway → broker direction is counted: that is what a metered
//! cellular uplink pays for first. The config uses keys every fieldgate since
//! session 6 understands, so older binaries can be measured (`--fieldgate`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::process::{self, Supervised};

/// Options of the `reconnect-bytes` scenario.
#[derive(Args)]
pub(crate) struct ReconnectArgs {
    /// Idle simulated fans (retained state, `$meta` and `$state` each).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// The MQTT session after a reconnect: `resumed` (cleanSession: false)
    /// or `clean`.
    #[arg(long, value_enum, default_value_t = SessionKind::Resumed)]
    session: SessionKind,
    /// Reconnects to measure, one after the other.
    #[arg(long, default_value_t = 3)]
    reconnects: usize,
    /// How long the uplink must carry nothing for start-up or a replay to
    /// count as over.
    #[arg(long, default_value = "3s", value_parser = crate::cli::parse_duration)]
    quiet: Duration,
    /// The fieldgate binary (default: target/release/fieldgate).
    #[arg(long)]
    fieldgate: Option<PathBuf>,
    /// Print the result as JSON instead of one line.
    #[arg(long)]
    json: bool,
    /// Keep the run directory (config, logs) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// The MQTT session a reconnect finds.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SessionKind {
    /// `cleanSession: false`: the broker keeps the session and the gateway's
    /// retained topics; the gateway may resume.
    Resumed,
    /// `cleanSession: true`: every connection starts a new session.
    Clean,
}

impl SessionKind {
    fn name(self) -> &'static str {
        match self {
            Self::Resumed => "resumed",
            Self::Clean => "clean",
        }
    }
}

/// What the gateway sent after one cut.
#[derive(Debug, Clone, Copy)]
struct Cost {
    bytes: u64,
    publishes: u64,
    seconds: f64,
}

/// Counts the MQTT packets of one direction of one connection (which starts
/// at a packet boundary): PUBLISH packets among them.
#[derive(Default)]
struct Frames {
    /// First byte of the packet whose remaining length is being read.
    first: Option<u8>,
    len: usize,
    shift: u32,
    /// Bytes of the current packet's body still to skip.
    skip: usize,
    publishes: u64,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let b = data[0];
            data = &data[1..];
            match self.first {
                None => {
                    self.first = Some(b);
                    self.len = 0;
                    self.shift = 0;
                }
                Some(first) => {
                    self.len |= usize::from(b & 0x7f) << self.shift;
                    self.shift += 7;
                    if b & 0x80 == 0 || self.shift >= 28 {
                        if first >> 4 == 3 {
                            self.publishes += 1;
                        }
                        self.skip = self.len;
                        self.first = None;
                    }
                }
            }
        }
    }
}

/// A TCP proxy to the broker that counts the gateway's bytes and PUBLISH
/// packets and can cut every connection at once.
struct Proxy {
    port: u16,
    bytes_up: Arc<AtomicU64>,
    publishes_up: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(broker_port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let bytes_up = Arc::new(AtomicU64::new(0));
        let publishes_up = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (cut, cuts) = watch::channel(0u64);
        let (b, p, c) = (bytes_up.clone(), publishes_up.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let (b, p, mut cuts) = (b.clone(), p.clone(), cuts.clone());
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = relay(client, broker, b, p) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Ok(Self {
            port,
            bytes_up,
            publishes_up,
            connections,
            cut,
            task,
        })
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.bytes_up.load(Ordering::Relaxed),
            self.publishes_up.load(Ordering::Relaxed),
        )
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Closes every open connection (both sides see the TCP connection end).
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side ends, counting the client's bytes
/// and PUBLISH packets.
async fn relay(client: TcpStream, broker: TcpStream, bytes: Arc<AtomicU64>, pubs: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = broker.into_split();
    let up = async {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            bytes.fetch_add(n as u64, Ordering::Relaxed);
            let before = frames.publishes;
            frames.feed(&buf[..n]);
            pubs.fetch_add(frames.publishes - before, Ordering::Relaxed);
            if bw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        let _ = tokio::io::copy(&mut br, &mut cw).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// The gateway config: `devices` idle fans, QoS 1, retained (the default).
fn config(devices: usize, session: SessionKind, proxy_port: u16, metrics_port: u16) -> String {
    let mut y = format!(
        "gateway:\n  namespace: bench\n  metrics: {{ listen: \"127.0.0.1:{metrics_port}\" }}\n\
         mqtt:\n  client:\n    server: tcp://127.0.0.1:{proxy_port}\n    clientId: bench-reconnect-{}\n\
         \x20   cleanSession: {}\n    maxReconnectInterval: 1s\n  message:\n    qos: 1\ndevices:\n",
        session.name(),
        session == SessionKind::Clean,
    );
    for d in 0..devices {
        y.push_str(&format!(
            "  - {{ name: fan{d:05}, driver: dummy, model: fan, syncInterval: 1h }}\n"
        ));
    }
    y
}

/// Waits until the uplink carried nothing new for `quiet` (and, when
/// `at_least` is given, at least that many PUBLISH packets in all);
/// returns when the last byte went.
async fn wait_quiet(
    proxy: &Proxy,
    gateway: &mut Supervised,
    quiet: Duration,
    at_least: Option<u64>,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    let mut last = proxy.counts();
    let mut last_change = Instant::now();
    loop {
        gateway.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = proxy.counts();
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet && at_least.is_none_or(|n| now.1 >= n) {
            return Ok(last_change);
        }
        if Instant::now() >= deadline {
            bail!(
                "the uplink was not quiet within {limit:?} ({} bytes, {} PUBLISH so far):\n{}",
                now.0,
                now.1,
                process::log_tail(gateway.log_path(), 30)
            );
        }
    }
}

/// Runs the scenario.
pub(crate) async fn run(args: ReconnectArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.reconnects == 0 {
        bail!("--devices and --reconnects must be at least 1");
    }
    let binary = args
        .fieldgate
        .clone()
        .unwrap_or_else(process::default_fieldgate_binary);
    let dir = tempfile::Builder::new()
        .prefix("fieldgate-bench-reconnect-")
        .tempdir()
        .context("create the run directory")?;
    let result = measure(&args, dir.path(), &binary).await;
    if args.keep {
        let kept = dir.keep();
        eprintln!("run directory kept: {}", kept.display());
    }
    let costs = result?;
    let scenario = format!(
        "reconnect-bytes devices={} session={}",
        args.devices,
        args.session.name()
    );
    let n = costs.len() as f64;
    let mean_bytes = costs.iter().map(|c| c.bytes as f64).sum::<f64>() / n;
    let mean_pubs = costs.iter().map(|c| c.publishes as f64).sum::<f64>() / n;
    if args.json {
        let each: Vec<_> = costs
            .iter()
            .map(|c| {
                serde_json::json!({
                    "bytes": c.bytes, "publishes": c.publishes, "seconds": c.seconds
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "scenario": scenario,
                "fieldgate": binary.display().to_string(),
                "reconnects": each,
                "mean_bytes": mean_bytes,
                "mean_publishes": mean_pubs,
                "bytes_per_device": mean_bytes / args.devices as f64,
            })
        );
    } else {
        let each: Vec<String> = costs
            .iter()
            .map(|c| format!("{} B/{} PUBLISH in {:.1}s", c.bytes, c.publishes, c.seconds))
            .collect();
        println!(
            "{scenario}: per reconnect {mean_bytes:.0} bytes, {mean_pubs:.0} PUBLISH ({:.1} bytes per device); each: {}",
            mean_bytes / args.devices as f64,
            each.join(", ")
        );
    }
    Ok(())
}

async fn measure(args: &ReconnectArgs, dir: &Path, binary: &Path) -> anyhow::Result<Vec<Cost>> {
    let broker_dir = dir.join("broker");
    std::fs::create_dir_all(&broker_dir)?;
    let (_broker, broker_port) = process::start_mosquitto(&broker_dir).await?;
    let proxy = Proxy::start(broker_port).await?;
    let metrics_port = process::free_port()?;
    let config_path = dir.join("config.yaml");
    std::fs::write(
        &config_path,
        config(args.devices, args.session, proxy.port, metrics_port),
    )?;
    let mut gateway = process::start_fieldgate(binary, &config_path, dir)?;
    // Start-up: at least the state and `$meta` of every fan, then quiet.
    let startup = Duration::from_secs(600);
    wait_quiet(
        &proxy,
        &mut gateway,
        args.quiet,
        Some(2 * args.devices as u64),
        startup,
    )
    .await
    .context("start-up")?;
    let mut costs = Vec::new();
    for round in 1..=args.reconnects {
        let (bytes0, pubs0) = proxy.counts();
        let connections = proxy.connections();
        let cut_at = Instant::now();
        proxy.cut();
        let deadline = cut_at + Duration::from_secs(60);
        while proxy.connections() == connections {
            gateway.ensure_running()?;
            if Instant::now() >= deadline {
                bail!("reconnect {round}: the gateway did not connect again within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reconnected = Instant::now();
        let last = wait_quiet(&proxy, &mut gateway, args.quiet, None, startup)
            .await
            .with_context(|| format!("reconnect {round}"))?;
        let (bytes1, pubs1) = proxy.counts();
        costs.push(Cost {
            bytes: bytes1 - bytes0,
            publishes: pubs1 - pubs0,
            seconds: last.saturating_duration_since(reconnected).as_secs_f64(),
        });
    }
    gateway.terminate(Duration::from_secs(10)).await;
    Ok(costs)
}

#[cfg(test)]
mod tests {
    use super::Frames;

    #[test]
    fn frames_count_publishes_across_reads() {
        // CONNECT (len 3), PUBLISH QoS 1 (len 200, two length bytes),
        // PINGREQ (len 0), PUBLISH QoS 0 (len 2).
        let mut stream = vec![0x10, 3, 0, 0, 0, 0x32, 0xC8, 0x01];
        stream.extend(std::iter::repeat_n(7u8, 200));
        stream.extend([0xC0, 0, 0x30, 2, 9, 9]);
        for split in 0..stream.len() {
            let mut f = Frames::default();
            f.feed(&stream[..split]);
            f.feed(&stream[split..]);
            assert_eq!(f.publishes, 2, "split at {split}");
            assert!(f.first.is_none() && f.skip == 0);
        }
    }
}
