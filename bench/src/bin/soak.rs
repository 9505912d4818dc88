//! `soak`: runs the real `fieldgate` binary for a long time (default 30 min)
//! while its broker and its Modbus devices flap, and reports what happened:
//! messages requested, delivered and lost, reconnects, and the gateway's
//! memory over time. Run it through `tests/soak.sh`.
//!
//! - Simulated counter devices publish at QoS 1 on every read; a persistent
//!   QoS 1 subscriber on the same Mosquitto receives them, so every value is
//!   accounted for: requested = values read (the gateway's read counter, or
//!   the highest value seen + 1), delivered = distinct values received,
//!   lost = requested − delivered. Duplicates (at-least-once) are counted
//!   apart.
//! - The broker is stopped every `--broker-every` for `--broker-down`:
//!   gracefully (SIGTERM, its persistence keeps the subscriber's queue, so a
//!   loss is the gateway's), or with `--kill` by SIGKILL (a loss may then be
//!   the broker's own: what it had acknowledged but not yet delivered).
//! - Modbus TCP servers (in this process, one per device) are killed in
//!   turn every `--device-every` for `--device-down` and started again on
//!   the same port.
//! - Every `--sample` a row: RSS, peak RSS, open files, threads, values
//!   delivered so far, reconnects, messages in the store.
//!
//! Exit code: 0 when nothing was lost and the gateway ran throughout.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// Soak test of the fieldgate binary with a flapping broker and devices.
#[derive(Parser)]
#[command(name = "soak", about)]
struct Args {
    /// How long to run (e.g. 30m, 2h).
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The fieldgate binary.
    #[arg(long, default_value = "target/release/fieldgate")]
    fieldgate: PathBuf,
    /// Simulated counter devices.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Their poll interval.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Modbus TCP devices (one server each).
    #[arg(long, default_value_t = 3)]
    modbus: usize,
    /// Stop the broker this often…
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    broker_every: Duration,
    /// …for this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    broker_down: Duration,
    /// Kill the broker with SIGKILL instead of stopping it with SIGTERM.
    #[arg(long)]
    kill: bool,
    /// Kill one Modbus server (in turn) this often…
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    device_every: Duration,
    /// …for this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    device_down: Duration,
    /// One row of the time series this often.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Use the file store (in the run directory) instead of memory.
    #[arg(long)]
    file_store: bool,
    /// Where the configs and logs go (default: a new temp directory, kept).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// Mosquitto with persistence

struct Broker {
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Proc>,
    restarts: u32,
}

impl Broker {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let state = dir.join("broker");
        std::fs::create_dir_all(&state)?;
        // Mosquitto started as root runs as `mosquitto`.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777))?;
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_queued_bytes 0\nautosave_interval 3600\n",
                state.display()
            ),
        )?;
        let mut b = Self {
            port,
            conf,
            log: dir.join("mosquitto.log"),
            child: None,
            restarts: 0,
        };
        b.spawn().await?;
        Ok(b)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or("mosquitto");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start mosquitto (apt-get install mosquitto)")?;
        self.child = Some(Proc(child));
        if !wait_port(self.port, Duration::from_secs(10)).await {
            bail!("mosquitto did not start; see {}", self.log.display());
        }
        Ok(())
    }

    /// Stops the broker (SIGTERM and wait, or SIGKILL).
    async fn stop(&mut self, kill: bool) {
        if let Some(mut p) = self.child.take() {
            if kill {
                let _ = p.0.kill();
            } else {
                signal(p.0.id(), "TERM");
            }
            let _ = tokio::task::spawn_blocking(move || {
                let _ = p.0.wait();
                drop(p);
            })
            .await;
        }
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        self.restarts += 1;
        self.spawn().await
    }
}

// ---------------------------------------------------------------------------
// Modbus servers: holding register 0 counts the reads

#[derive(Clone, Default)]
struct Register(Arc<AtomicU16>);

impl Service for Register {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        ready(match req.request {
            Request::ReadHoldingRegisters(0, 1) => {
                let v = self.0.fetch_add(1, Ordering::Relaxed);
                Ok(Some(Response::ReadHoldingRegisters(vec![v])))
            }
            _ => Err(ExceptionCode::IllegalDataAddress),
        })
    }
}

/// One Modbus TCP server that can be killed and started again.
struct ModbusServer {
    addr: SocketAddr,
    register: Register,
    task: Option<tokio::task::JoinHandle<()>>,
    restarts: u32,
}

impl ModbusServer {
    async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut s = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            register: Register::default(),
            task: None,
            restarts: 0,
        };
        s.spawn().await?;
        Ok(s)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let register = self.register.clone();
        self.task = Some(tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = move |stream, peer| {
                let register = register.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, peer, move |_| {
                        Ok(Some(register.clone()))
                    })
                }
            };
            let _ = server.serve(&on_connected, |_| {}).await;
        }));
        Ok(())
    }

    /// Kills the server: the listener and (with the task) its connections.
    async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        self.restarts += 1;
        self.spawn().await
    }
}

// ---------------------------------------------------------------------------
// The subscriber

#[derive(Default)]
struct Seen {
    /// Distinct counter values per counter device.
    values: BTreeMap<String, HashSet<u64>>,
    /// Messages per counter device, duplicates included.
    messages: BTreeMap<String, u64>,
    /// States per Modbus device.
    modbus_states: BTreeMap<String, u64>,
    /// `$state` changes per device (online→offline and back).
    transitions: BTreeMap<String, u64>,
    last_status: BTreeMap<String, String>,
    /// Subscriber reconnects.
    reconnects: u64,
    last_message: Option<Instant>,
}

impl Seen {
    fn delivered(&self) -> u64 {
        self.values.values().map(|v| v.len() as u64).sum()
    }
}

fn subscribe(port: u16, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    let mut opts = rumqttc::MqttOptions::new("soak-subscriber", "127.0.0.1", port);
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_inflight(100);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
    tokio::spawn(async move {
        let mut first = true;
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if !first {
                        seen.lock().unwrap().reconnects += 1;
                    }
                    first = false;
                    let _ = client.try_subscribe("fieldgate/soak/#", rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    record(&mut seen.lock().unwrap(), &p.topic, &p.payload);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

fn record(seen: &mut Seen, topic: &str, payload: &[u8]) {
    seen.last_message = Some(Instant::now());
    let Some(rest) = topic.strip_prefix("fieldgate/soak/") else {
        return;
    };
    if let Some(device) = rest.strip_suffix("/$state") {
        let status = String::from_utf8_lossy(payload).into_owned();
        let last = seen.last_status.insert(device.to_owned(), status.clone());
        if last.is_some_and(|l| l != status) {
            *seen.transitions.entry(device.to_owned()).or_default() += 1;
        }
        return;
    }
    if rest.contains('/') || payload.is_empty() {
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return;
    };
    if rest.starts_with("mb") {
        *seen.modbus_states.entry(rest.to_owned()).or_default() += 1;
    } else if let Some(n) = v["properties"]["n"].as_u64() {
        *seen.messages.entry(rest.to_owned()).or_default() += 1;
        seen.values.entry(rest.to_owned()).or_default().insert(n);
    }
}

// ---------------------------------------------------------------------------
// The gateway

fn gateway_config(
    args: &Args,
    broker: u16,
    metrics: u16,
    servers: &[ModbusServer],
    dir: &Path,
) -> String {
    let store = if args.file_store {
        format!(
            "    store: {{ type: file, directoryPrefix: \"{}/store\" }}\n",
            dir.display()
        )
    } else {
        "    messageChannelDepth: 1000000\n".to_string()
    };
    let mut yaml = format!(
        "gateway:\n  namespace: soak\n  stateDirectory: \"{}/state\"\n  metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\n  log: {{ level: info }}\nmqtt:\n  client:\n    server: tcp://127.0.0.1:{broker}\n    clientId: soak-gateway\n    maxReconnectInterval: 2s\n{store}  message: {{ qos: 1, retained: false }}\ndevices:\n",
        dir.display()
    );
    let interval = humantime::format_duration(args.interval);
    for i in 0..args.devices {
        let _ = write!(
            yaml,
            "  - name: c{i}\n    driver: dummy\n    syncInterval: {interval}\n    properties:\n      - {{ name: n, type: uint64, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}\n"
        );
    }
    for (i, s) in servers.iter().enumerate() {
        let _ = write!(
            yaml,
            "  - name: mb{i}\n    driver: modbus\n    syncInterval: 500ms\n    timeout: 500ms\n    protocol: {{ tcp: {{ endpoint: \"{}\" }}, unitId: 1 }}\n    properties:\n      - {{ name: r0, register: holding, address: 0, type: uint16 }}\n",
            s.addr
        );
    }
    yaml
}

/// Every sample of `family` (label filter `labels`) summed, from /metrics.
async fn metric(port: u16, family: &str, labels: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    let mut found = None;
    for l in body.lines() {
        let Some(rest) = l.strip_prefix(family) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !l.contains(labels) {
            continue;
        }
        if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// `(VmRSS, VmHWM)` in KiB, open files and threads of `pid`.
fn proc_stats(pid: u32) -> (u64, u64, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"), fds, field("Threads:"))
}

struct Row {
    at: Duration,
    rss: u64,
    hwm: u64,
    fds: usize,
    threads: u64,
    delivered: u64,
    reconnects: f64,
    stored: f64,
    broker_up: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tempfile_dir()?,
    };
    if !args.fieldgate.is_file() {
        bail!("{} not found (build it first)", args.fieldgate.display());
    }
    let mut broker = Broker::start(&dir).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _sub = subscribe(broker.port, seen.clone());
    // Let the subscriber's session reach the broker's database, so that a
    // restart (even after a SIGKILL) queues for it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.stop(false).await;
    broker.restart().await?;
    broker.restarts = 0;

    let mut servers = Vec::new();
    for _ in 0..args.modbus {
        servers.push(ModbusServer::start().await?);
    }
    let metrics = free_port()?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        gateway_config(&args, broker.port, metrics, &servers, &dir),
    )?;
    let log = std::fs::File::create(dir.join("fieldgate.log"))?;
    let mut gw = Proc(
        Command::new(&args.fieldgate)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", args.fieldgate.display()))?,
    );
    let pid = gw.0.id();
    println!(
        "soak: {} for {}, {} counter devices every {}, {} Modbus devices; broker {} every {} for {}; a Modbus server killed every {} for {}; run dir {}",
        args.fieldgate.display(),
        humantime::format_duration(args.duration),
        args.devices,
        humantime::format_duration(args.interval),
        args.modbus,
        if args.kill { "killed (SIGKILL)" } else { "stopped (SIGTERM)" },
        humantime::format_duration(args.broker_every),
        humantime::format_duration(args.broker_down),
        humantime::format_duration(args.device_every),
        humantime::format_duration(args.device_down),
        dir.display()
    );

    let start = Instant::now();
    let end = start + args.duration;
    let mut next_broker = start + args.broker_every;
    let mut broker_back: Option<Instant> = None;
    let mut next_device = start + args.device_every;
    let mut device_back: Option<(usize, Instant)> = None;
    let mut next_device_index = 0;
    let mut next_sample = start + args.sample.min(Duration::from_secs(10));
    let mut rows = Vec::new();
    let mut exited = None;
    println!("| time | RSS MiB | peak RSS MiB | open files | threads | delivered | gateway reconnects | in store | broker |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|:---|");
    while Instant::now() < end {
        let now = Instant::now();
        if let Ok(Some(status)) = gw.0.try_wait() {
            exited = Some(status);
            break;
        }
        if broker_back.is_none() && now >= next_broker {
            broker.stop(args.kill).await;
            broker_back = Some(now + args.broker_down);
            next_broker = now + args.broker_every;
        }
        if let Some(at) = broker_back {
            if now >= at {
                broker.restart().await?;
                broker_back = None;
            }
        }
        if !servers.is_empty() && device_back.is_none() && now >= next_device {
            let i = next_device_index % servers.len();
            next_device_index += 1;
            servers[i].kill().await;
            device_back = Some((i, now + args.device_down));
            next_device = now + args.device_every;
        }
        if let Some((i, at)) = device_back {
            if now >= at {
                servers[i].restart().await?;
                device_back = None;
            }
        }
        if now >= next_sample {
            let (rss, hwm, fds, threads) = proc_stats(pid);
            // Not inside the struct literal: the guard would live across
            // the awaits below and block the subscriber's task.
            let delivered = seen.lock().unwrap().delivered();
            let row = Row {
                at: now - start,
                rss,
                hwm,
                fds,
                threads,
                delivered,
                reconnects: metric(metrics, "fieldgate_mqtt_reconnects_total", "")
                    .await
                    .unwrap_or(f64::NAN),
                stored: metric(metrics, "fieldgate_mqtt_store_messages", "")
                    .await
                    .unwrap_or(f64::NAN),
                broker_up: broker_back.is_none(),
            };
            println!("{}", row_line(&row));
            rows.push(row);
            next_sample = now + args.sample;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Wind down: everything up, the backlog delivered, then a clean stop.
    if broker_back.is_some() {
        broker.restart().await?;
    }
    if let Some((i, _)) = device_back {
        servers[i].restart().await?;
    }
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    while exited.is_none() && Instant::now() < drain_deadline {
        let stored = metric(metrics, "fieldgate_mqtt_store_messages", "").await;
        if stored.is_some_and(|n| n < 64.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (rss_end, hwm_end, fds_end, threads_end) = proc_stats(pid);
    let mut reads = BTreeMap::new();
    for i in 0..args.devices {
        let d = format!("c{i}");
        let r = metric(
            metrics,
            "fieldgate_device_reads_total",
            &format!("device=\"{d}\""),
        )
        .await
        .unwrap_or(0.0) as u64;
        reads.insert(d, r);
    }
    let reconnects = metric(metrics, "fieldgate_mqtt_reconnects_total", "")
        .await
        .unwrap_or(f64::NAN);
    let dropped = metric(metrics, "fieldgate_mqtt_dropped_total", "")
        .await
        .unwrap_or(f64::NAN);
    let replayed = metric(metrics, "fieldgate_mqtt_replayed_total", "")
        .await
        .unwrap_or(f64::NAN);
    let running = exited.is_none() && matches!(gw.0.try_wait(), Ok(None));
    if running {
        signal(pid, "TERM");
    }
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(s)) = gw.0.try_wait() {
            break Some(s);
        }
        if Instant::now() > stop_deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Quiet for 3 s: everything sent has arrived.
    loop {
        let last = seen.lock().unwrap().last_message;
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let seen = seen.lock().unwrap();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\n| device | requested | delivered | duplicates | lost |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|---:|");
    let (mut requested_total, mut delivered_total, mut dup_total, mut lost_total) = (0, 0, 0, 0);
    for i in 0..args.devices {
        let d = format!("c{i}");
        let values = seen.values.get(&d).cloned().unwrap_or_default();
        let highest = values.iter().max().map_or(0, |m| m + 1);
        let requested = highest.max(reads[&d]);
        let delivered = values.len() as u64;
        let duplicates = seen.messages.get(&d).copied().unwrap_or(0) - delivered;
        let lost = requested - delivered;
        requested_total += requested;
        delivered_total += delivered;
        dup_total += duplicates;
        lost_total += lost;
        let _ = writeln!(
            report,
            "| {d} | {requested} | {delivered} | {duplicates} | {lost} |"
        );
    }
    let _ = writeln!(
        report,
        "| **all** | **{requested_total}** | **{delivered_total}** | **{dup_total}** | **{lost_total}** |"
    );
    let _ = writeln!(
        report,
        "\n| Modbus device | states | $state changes | server restarts |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|");
    for (i, s) in servers.iter().enumerate() {
        let d = format!("mb{i}");
        let _ = writeln!(
            report,
            "| {d} | {} | {} | {} |",
            seen.modbus_states.get(&d).copied().unwrap_or(0),
            seen.transitions.get(&d).copied().unwrap_or(0),
            s.restarts
        );
    }
    let first = rows
        .iter()
        .find(|r| r.at >= Duration::from_secs(60))
        .or(rows.first());
    let _ = writeln!(
        report,
        "\nbroker restarts: {} ({}); gateway reconnects: {reconnects}; replayed from the store: {replayed}; dropped (store full): {dropped}; subscriber reconnects: {}",
        broker.restarts,
        if args.kill { "SIGKILL" } else { "SIGTERM" },
        seen.reconnects
    );
    let _ = writeln!(
        report,
        "gateway at the end: RSS {:.1} MiB (after 1 min: {:.1} MiB), peak {:.1} MiB, {fds_end} open files, {threads_end} threads; {}",
        rss_end as f64 / 1024.0,
        first.map_or(f64::NAN, |r| r.rss as f64 / 1024.0),
        hwm_end as f64 / 1024.0,
        match (&exited, status) {
            (Some(s), _) => format!("EXITED during the run: {s}"),
            (None, Some(s)) => format!("ran throughout; clean stop: {s}"),
            (None, None) => "ran throughout; did not stop within 10 s".into(),
        }
    );
    print!("{report}");
    std::fs::write(dir.join("report.md"), &report)?;
    let ok = exited.is_none() && (lost_total == 0 || args.kill);
    if !ok {
        println!("soak: FAILED (see {})", dir.display());
    }
    Ok(ok)
}

fn row_line(r: &Row) -> String {
    let s = r.at.as_secs();
    format!(
        "| {:02}:{:02}:{:02} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
        s / 3600,
        s / 60 % 60,
        s % 60,
        r.rss as f64 / 1024.0,
        r.hwm as f64 / 1024.0,
        r.fds,
        r.threads,
        r.delivered,
        r.reconnects,
        r.stored,
        if r.broker_up { "up" } else { "down" }
    )
}

/// A new directory under the system temp dir, kept after the run.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "fieldgate-soak-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
