//! Fault injection on the field side, end to end: the real `fieldgate`
//! binary against Modbus devices that freeze, vanish behind a half-open
//! connection, get killed and restarted, or answer an RTU line with garbage;
//! and serial ports it may not open. For each fault: the gateway stays up,
//! the affected device reports it (`$state`, `errors`, metrics), its
//! neighbours keep their cadence, and recovery needs nobody.
//!
//! Timeouts and poll periods are short (100 ms polls, 300 ms timeouts) so
//! the whole file runs in well under a minute; every wait is on a condition.

use crate::modbus_server;
use crate::support;

use crate::fault_rig;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fault_rig::{assert_counting, clock, healthz, metric, FrozenServer, Proxy, Recorder};
use modbus_server::{tcp_server, Storage};
use serde_json::{json, Value};
use support::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config with `devices` (YAML list items), metrics on `metrics`.
fn config(broker: u16, metrics: u16, devices: &str) -> String {
    format!(
        r#"gateway:
  namespace: faults
  metrics: {{ listen: "127.0.0.1:{metrics}" }}
mqtt:
  client:
    server: tcp://127.0.0.1:{broker}
    maxReconnectInterval: 1s
devices:
{devices}"#
    )
}

/// A Modbus TCP device reading one holding register every 100 ms.
fn tcp_device(name: &str, endpoint: &str) -> String {
    format!(
        r#"  - name: {name}
    driver: modbus
    syncInterval: 100ms
    timeout: 300ms
    protocol: {{ tcp: {{ endpoint: "{endpoint}" }}, unitId: 1 }}
    properties:
      - {{ name: r0, register: holding, address: 0, type: uint16 }}
"#
    )
}

/// A Modbus RTU device (unit `unit` on serial `port`) reading one holding
/// register every 100 ms.
fn rtu_device(name: &str, port: &str, unit: u8) -> String {
    format!(
        r#"  - name: {name}
    driver: modbus
    syncInterval: 100ms
    timeout: 300ms
    protocol: {{ rtu: {{ port: "{port}", baudRate: 19200, dataBits: 8, parity: none, stopBits: 1 }}, unitId: {unit} }}
    properties:
      - {{ name: r0, register: holding, address: 0, type: uint16 }}
"#
    )
}

/// A device whose holding register 0 holds `value`.
fn holding(value: u16) -> Storage {
    Storage::with(|t| {
        t.holding.insert(0, value);
    })
}

/// States of `device` since `mark` with `r0 == value` and no errors.
fn good_states(rec: &Recorder, mark: usize, device: &str, value: Value) -> usize {
    rec.states_since(mark, device)
        .iter()
        .filter(|v| v["properties"]["r0"] == value && v.get("errors").is_none())
        .count()
}

/// The gateway still runs and answers `/healthz` with 200 (its MQTT
/// session is connected: field-side faults never degrade it).
fn assert_up(gw: &mut Gateway, metrics: u16) {
    assert!(gw.is_running(), "the gateway exited:\n{}", gw.log());
    assert_eq!(healthz(metrics), Some(200), "/healthz:\n{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_reported_and_its_neighbours_keep_their_cadence() {
    let healthy = tcp_server(holding(7), "127.0.0.1:0").await;
    let frozen = FrozenServer::start("127.0.0.1:0").await;
    let frozen_port = frozen.port;
    let broker = support::Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let devices = [
        clock("clock"),
        tcp_device("tank", &healthy.addr.to_string()),
        tcp_device("frozen", &format!("127.0.0.1:{frozen_port}")),
    ]
    .concat();
    let mut gw = Gateway::start(&config(broker.port(), metrics, &devices));

    rec.status("frozen", "offline").await;
    let s = rec
        .state_where("frozen", "a timeout error", |v| {
            v["errors"]["r0"]
                .as_str()
                .is_some_and(|e| e.contains("timeout"))
        })
        .await;
    assert!(s["properties"].get("r0").is_none(), "no stale value: {s}");
    assert!(frozen.accepted() >= 1, "the gateway never connected");

    // While the clock publishes 20 states (2 s), the tank next to the
    // frozen device keeps publishing complete ones (about 20; a stalled
    // gateway would publish none).
    let mark = rec.mark();
    rec.more_states("clock", 20).await;
    let tank = good_states(&rec, mark, "tank", json!(7));
    assert!(
        tank >= 10,
        "only {tank} tank states while the clock made 20"
    );
    assert_counting("clock", &rec.states_since(mark, "clock"));

    let up = |d: &str| {
        metric(
            metrics,
            "fieldgate_device_up",
            &[&format!("device=\"{d}\"")],
        )
    };
    assert_eq!(up("frozen"), Some(0.0));
    assert_eq!(up("tank"), Some(1.0));
    let timeouts = metric(
        metrics,
        "fieldgate_device_read_errors_total",
        &["device=\"frozen\"", "kind=\"timeout\""],
    );
    assert!(timeouts >= Some(1.0), "timeouts counted: {timeouts:?}");
    assert_up(&mut gw, metrics);

    // The hung application is killed and a working one takes the port:
    // the device comes back by itself.
    frozen.stop().await;
    let revived = tcp_server(holding(9), &format!("127.0.0.1:{frozen_port}")).await;
    rec.status("frozen", "online").await;
    rec.state_where("frozen", "r0 = 9", |v| v["properties"]["r0"] == 9)
        .await;
    assert_up(&mut gw, metrics);
    revived.stop().await;
    healthy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_noticed_by_its_timeout_and_replaced() {
    let storage = holding(7);
    let server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let proxy = Proxy::start(server.addr.to_string()).await;
    let broker = support::Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let devices = [
        clock("clock"),
        tcp_device("plc", &format!("127.0.0.1:{}", proxy.port)),
    ]
    .concat();
    let mut gw = Gateway::start(&config(broker.port(), metrics, &devices));
    rec.status("plc", "online").await;
    rec.state_where("plc", "r0 = 7", |v| v["properties"]["r0"] == 7)
        .await;
    assert_eq!(proxy.accepted(), 1);

    // The connection goes dead without a FIN or RST: only the missing
    // answers tell. The gateway must give up on it and dial again.
    proxy.blackhole();
    storage.0.lock().unwrap().holding.insert(0, 8);
    rec.status("plc", "offline").await;
    rec.status("plc", "online").await;
    rec.state_where("plc", "r0 = 8 (a fresh read)", |v| {
        v["properties"]["r0"] == 8
    })
    .await;
    assert!(proxy.accepted() >= 2, "no new connection was made");
    let timeouts = metric(
        metrics,
        "fieldgate_device_read_errors_total",
        &["device=\"plc\"", "kind=\"timeout\""],
    );
    assert!(timeouts >= Some(1.0), "timeouts counted: {timeouts:?}");
    assert_up(&mut gw, metrics);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_and_restarted_three_times_comes_back_each_time() {
    let storage = holding(1);
    let mut server = tcp_server(storage.clone(), "127.0.0.1:0").await;
    let addr = server.addr.to_string();
    let broker = support::Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let devices = [clock("clock"), tcp_device("tank", &addr)].concat();
    let mut gw = Gateway::start(&config(broker.port(), metrics, &devices));
    let mark = rec.mark();
    for round in 1..=3u16 {
        rec.status("tank", "online").await;
        rec.state_where("tank", &format!("r0 = {round}"), |v| {
            v["properties"]["r0"] == round
        })
        .await;
        server.stop().await;
        rec.status("tank", "offline").await;
        let s = rec
            .state_where("tank", "an error", |v| v.get("errors").is_some())
            .await;
        assert!(s["properties"].get("r0").is_none(), "no stale value: {s}");
        storage.0.lock().unwrap().holding.insert(0, round + 1);
        server = tcp_server(storage.clone(), &addr).await;
    }
    rec.status("tank", "online").await;
    rec.state_where("tank", "r0 = 4", |v| v["properties"]["r0"] == 4)
        .await;
    // The neighbour never missed a poll through all of it.
    assert_counting("clock", &rec.states_since(mark, "clock"));
    assert_up(&mut gw, metrics);
    server.stop().await;
}

/// CRC-16/MODBUS of `data`, as the two bytes that follow it on the line.
fn crc(data: &[u8]) -> [u8; 2] {
    const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
    CRC16.checksum(data).to_le_bytes()
}

/// How the scripted RTU line answers unit 1 (unit 2 always gets good answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// A correct response.
    Good,
    /// Random bytes instead of a response.
    Garbage,
    /// The first bytes of a correct response, then nothing.
    Truncated,
    /// A correct response with a damaged checksum.
    BadCrc,
    /// Line noise, then a correct response.
    NoiseFirst,
    /// A correct response from unit 9.
    WrongUnit,
    /// No answer at all, the line staying open: what a process sees on the
    /// handle of a USB adapter that was pulled out.
    Silent,
}

/// Two Modbus RTU units on the far end of a pseudo-terminal, answering by
/// script: a real serial line whose bytes the test controls.
struct RtuLine {
    /// The serial port for the gateway (the pty's slave side).
    path: String,
    reply: Arc<Mutex<Reply>>,
    asked: Arc<AtomicUsize>,
    _slave: tokio_serial::SerialStream,
    task: tokio::task::JoinHandle<()>,
}

impl RtuLine {
    fn start() -> Self {
        use tokio_serial::SerialPort as _;
        let (master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
        let path = slave.name().expect("pty name");
        let reply = Arc::new(Mutex::new(Reply::Good));
        let asked = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve_line(master, reply.clone(), asked.clone()));
        Self {
            path,
            reply,
            asked,
            _slave: slave,
            task,
        }
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Requests to unit 1 so far: the value of its next answer is one more.
    fn asked(&self) -> u64 {
        self.asked.load(Ordering::SeqCst) as u64
    }
}

impl Drop for RtuLine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers FC3 requests on `line`: unit 1 with the number of requests it
/// got (`asked`), as `reply` says; unit 2 always with 42.
async fn serve_line(
    mut line: tokio_serial::SerialStream,
    reply: Arc<Mutex<Reply>>,
    asked: Arc<AtomicUsize>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 256];
    let mut counter: u16 = 0;
    let mut seed: u32 = 0x2545_F491;
    let mut random = move |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed >> 24) as u8
            })
            .collect()
    };
    loop {
        let n = match line.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        // Requests are FC3, 8 bytes; anything else is skipped byte by byte.
        while buf.len() >= 8 {
            if crc(&buf[..6]) != buf[6..8] || buf[1] != 3 {
                buf.remove(0);
                continue;
            }
            let req: Vec<u8> = buf.drain(..8).collect();
            let (unit, count) = (req[0], u16::from_be_bytes([req[4], req[5]]));
            let value = if unit == 1 {
                counter = counter.wrapping_add(1);
                asked.fetch_add(1, Ordering::SeqCst);
                counter
            } else {
                42
            };
            let response = |unit: u8| {
                let mut f = vec![unit, 3, (count * 2) as u8];
                for _ in 0..count {
                    f.extend_from_slice(&value.to_be_bytes());
                }
                let c = crc(&f);
                f.extend_from_slice(&c);
                f
            };
            let mode = if unit == 1 {
                *reply.lock().unwrap()
            } else {
                Reply::Good
            };
            let out = match mode {
                Reply::Good => response(unit),
                Reply::Garbage => random(11),
                Reply::Truncated => {
                    let f = response(unit);
                    f[..f.len() - 3].to_vec()
                }
                Reply::BadCrc => {
                    let mut f = response(unit);
                    if let Some(last) = f.last_mut() {
                        *last ^= 0xFF;
                    }
                    f
                }
                Reply::NoiseFirst => {
                    let mut f = vec![0x00, 0x00, 0x00];
                    f.extend(response(unit));
                    f
                }
                Reply::WrongUnit => response(9),
                Reply::Silent => continue,
            };
            if line.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_frames_on_an_rtu_line_stay_with_their_unit() {
    let line = RtuLine::start();
    let broker = support::Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let devices = [
        clock("clock"),
        rtu_device("meter", &line.path, 1),
        rtu_device("neighbour", &line.path, 2),
    ]
    .concat();
    // The log level of the config (info), as in production: no RUST_LOG.
    let mut gw = Gateway::start_with_env(
        &config(broker.port(), metrics, &devices),
        &[("RUST_LOG", "")],
    );
    rec.statuses(&[("meter", "online"), ("neighbour", "online")])
        .await;
    rec.state_where("meter", "a value", |v| v["properties"]["r0"].is_u64())
        .await;

    let faults = [
        Reply::Garbage,
        Reply::Truncated,
        Reply::BadCrc,
        Reply::WrongUnit,
        Reply::NoiseFirst,
    ];
    for fault in faults {
        line.set(fault);
        if fault == Reply::NoiseFirst {
            // Noise before a good answer: the driver finds the frame.
            let asked = line.asked();
            rec.state_where("meter", "a value read through the noise", |v| {
                v["properties"]["r0"].as_u64().is_some_and(|n| n > asked)
            })
            .await;
        } else {
            let s = rec
                .state_where("meter", &format!("an error ({fault:?})"), |v| {
                    v["errors"]["r0"].is_string()
                })
                .await;
            assert!(s["properties"].get("r0").is_none(), "{fault:?}: {s}");
        }
        // Meanwhile the other unit on the same line keeps publishing
        // complete states (about 10 while the clock makes 10).
        let mark = rec.mark();
        rec.more_states("clock", 10).await;
        let neighbour = good_states(&rec, mark, "neighbour", json!(42));
        assert!(
            neighbour >= 3,
            "{fault:?}: only {neighbour} good neighbour states while the clock made 10:\n{:?}",
            rec.states_since(mark, "neighbour")
        );
        // The line heals: the meter recovers by itself.
        line.set(Reply::Good);
        let asked = line.asked();
        rec.state_where("meter", &format!("a good value after {fault:?}"), |v| {
            v["properties"]["r0"].as_u64().is_some_and(|n| n > asked) && v.get("errors").is_none()
        })
        .await;
    }
    let errors: f64 = ["decode", "timeout"]
        .iter()
        .filter_map(|k| {
            metric(
                metrics,
                "fieldgate_device_read_errors_total",
                &["device=\"meter\"", &format!("kind=\"{k}\"")],
            )
        })
        .sum();
    assert!(errors >= 4.0, "meter errors counted: {errors}");
    // The protocol library's per-byte complaints stay out of an info log.
    let log = gw.log();
    let lines = log.lines().count();
    assert!(
        !log.contains("tokio_modbus") && lines < 100,
        "{lines} log lines:\n{log}"
    );
    assert_up(&mut gw, metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_port_it_may_not_open_or_that_is_missing_is_reported_and_retried() {
    use std::os::unix::fs::PermissionsExt;
    let line = RtuLine::start();
    let broker = support::Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let devices = [
        clock("clock"),
        rtu_device("locked", &line.path, 2),
        rtu_device("missing", "/dev/ttyFIELDGATE-none", 1),
    ]
    .concat();
    let yaml = config(broker.port(), metrics, &devices);
    // As root the kernel lets the daemon open anything; run it as `nobody`
    // (like the packaged service, which is not root) so that the pty's
    // permissions (root:tty 0620) apply. Without root, the test's own user
    // owns the pty: take its permissions away instead.
    let original = std::fs::metadata(&line.path).unwrap().permissions();
    let mut gw = match Gateway::start_unprivileged(&yaml) {
        Some(gw) => {
            eprintln!("running the gateway as nobody against {}", line.path);
            gw
        }
        None => {
            std::fs::set_permissions(&line.path, std::fs::Permissions::from_mode(0o000)).unwrap();
            eprintln!("not root: {} made mode 000", line.path);
            Gateway::start(&yaml)
        }
    };
    rec.statuses(&[("locked", "offline"), ("missing", "offline")])
        .await;
    let locked = rec
        .state_where("locked", "an error", |v| v["errors"]["r0"].is_string())
        .await;
    let missing = rec
        .state_where("missing", "an error", |v| v["errors"]["r0"].is_string())
        .await;
    let log = gw.log();
    assert!(
        log.contains("Permission denied"),
        "the reason is logged: {locked}\n{log}"
    );
    assert!(
        log.contains("No such file or directory"),
        "the reason is logged: {missing}\n{log}"
    );
    let mark = rec.mark();
    rec.more_states("clock", 10).await;
    assert_counting("clock", &rec.states_since(mark, "clock"));
    assert_up(&mut gw, metrics);

    // Permission granted (e.g. the user was added to `dialout`): the
    // device comes online at its next attempt, without a restart.
    std::fs::set_permissions(&line.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    rec.status("locked", "online").await;
    rec.state_where("locked", "r0 = 42", |v| v["properties"]["r0"] == 42)
        .await;
    std::fs::set_permissions(&line.path, original).unwrap();
    assert_up(&mut gw, metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replugged_usb_adapter_is_found_again_under_its_stable_name() {
    // The config names the adapter by a stable link, as
    // /dev/serial/by-id/... does; the test swaps what it points to.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("usb-FTDI_FT232R-if00-port0");
    let first = RtuLine::start();
    std::os::unix::fs::symlink(&first.path, &link).unwrap();
    let broker = support::Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let devices = [
        clock("clock"),
        rtu_device("meter", &link.to_string_lossy(), 1),
    ]
    .concat();
    let mut gw = Gateway::start(&config(broker.port(), metrics, &devices));
    rec.status("meter", "online").await;
    rec.state_where("meter", "a value", |v| v["properties"]["r0"].is_u64())
        .await;

    // Pulled out: the open handle only times out, and the node is gone.
    first.set(Reply::Silent);
    std::fs::remove_file(&link).unwrap();
    rec.status("meter", "offline").await;
    rec.state_where("meter", "an error", |v| v["errors"]["r0"].is_string())
        .await;

    // Plugged in again: a new device node behind the same stable name.
    let second = RtuLine::start();
    std::os::unix::fs::symlink(&second.path, &link).unwrap();
    rec.status("meter", "online").await;
    rec.state_where("meter", "a value from the replugged adapter", |v| {
        v["properties"]["r0"].is_u64() && v.get("errors").is_none()
    })
    .await;
    assert!(second.asked() >= 1, "the new adapter was never asked");
    let log = gw.log();
    assert!(
        log.contains("serial port vanished"),
        "the unplug is logged:\n{log}"
    );
    let mark = rec.mark();
    rec.more_states("clock", 5).await;
    assert_counting("clock", &rec.states_since(mark, "clock"));
    assert_up(&mut gw, metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_needing_more_open_files_than_allowed_is_refused_or_the_limit_raised() {
    let broker = support::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    // 300 Modbus endpoints (refused connections on loopback: each still
    // takes a descriptor while it is tried).
    let devices: String = (0..300)
        .map(|i| tcp_device(&format!("m{i}"), &format!("127.0.0.1:{}", 40000 + i)))
        .collect();
    let metrics = support::free_port();
    std::fs::write(&path, config(broker.port(), metrics, &devices)).unwrap();

    // A hard limit below the need: a clear error at start, exit 78.
    let out = support::fieldgate_with_nofile(256, 256, &path)
        .output()
        .expect("prlimit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("open files") && err.contains("at most 256") && err.contains("LimitNOFILE"),
        "{err}"
    );

    // A soft limit below the need but a hard one above: raised, and it runs.
    let mut child = support::fieldgate_with_nofile(256, 8192, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prlimit");
    let limits = format!("/proc/{}/limits", child.id());
    let raised = support::wait_until(std::time::Duration::from_secs(20), || {
        std::fs::read_to_string(&limits)
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
            })
            .is_some_and(|soft| soft > 256)
    });
    let running = child.try_wait().ok().flatten().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(raised, "the soft limit was not raised");
    assert!(running, "the gateway exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_server_that_never_answers_marks_only_the_devices_behind_a_host_name() {
    // The gateway alone gets a resolv.conf naming a "name server" that
    // swallows every query: its own mount namespace with the file bound over
    // /etc/resolv.conf. The machine's resolver config is never touched.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root for a mount namespace and a socket on port 53");
        return;
    }
    let swallower = std::net::UdpSocket::bind("127.0.0.2:53").expect("bind 127.0.0.2:53");
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.2\noptions timeout:30 attempts:1\n",
    )
    .unwrap();
    let bind = format!(
        "mount --bind '{}' /etc/resolv.conf && exec \"$@\"",
        resolv.display()
    );

    let healthy = tcp_server(holding(7), "127.0.0.1:0").await;
    let broker = support::Mosquitto::start();
    let mut rec = Recorder::start(broker.port(), "faults").await;
    let metrics = support::free_port();
    let devices = [
        clock("clock"),
        tcp_device("tank", &healthy.addr.to_string()),
        tcp_device("named", "plc-7.fieldgate-test:1502"),
    ]
    .concat();
    let mut gw = Gateway::start_wrapped(
        &config(broker.port(), metrics, &devices),
        &["unshare", "--mount", "--", "sh", "-c", &bind, "sh"],
    );

    rec.status("tank", "online").await;
    let s = rec
        .state_where("named", "a resolver error", |v| {
            v["errors"]["r0"]
                .as_str()
                .is_some_and(|e| e.contains("cannot resolve plc-7.fieldgate-test:1502"))
        })
        .await;
    assert!(
        s["errors"]["r0"]
            .as_str()
            .is_some_and(|e| e.contains("no answer from the name server")),
        "{s}"
    );
    // Meanwhile the device on an address keeps its cadence.
    let mark = rec.mark();
    rec.more_states("clock", 20).await;
    let tank = good_states(&rec, mark, "tank", json!(7));
    assert!(
        tank >= 10,
        "only {tank} tank states while the clock made 20"
    );
    // Lookups in flight stay bounded: no thread piles up per attempt.
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let threads: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(threads <= 24, "{threads} threads");
    assert_up(&mut gw, metrics);
    drop(swallower);
}
