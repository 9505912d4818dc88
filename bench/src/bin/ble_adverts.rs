//! `ble_adverts`: CPU and memory of the real `fieldgate` binary reading N
//! advertising BLE sensors (pvvx format) at one advertisement per second
//! each, through the BlueZ stand-in of the end-to-end tests on a private
//! `dbus-daemon`, publishing to a private Mosquitto.
//!
//! ```sh
//! cargo build --release -p fieldgate -p fieldgate-bench
//! target/release/ble_adverts --devices 200 --warmup 15s --duration 60s
//! ```
//!
//! Prints the advertisements sent, the states received, the gateway's CPU
//! (user + system, % of one core) over the window and its `RssAnon`/`VmRSS`
//! at the end. The stand-in and the subscriber run in this process, so
//! their CPU is not counted.

use fieldgate_testkit::bluez as bluez_standin;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Options.
#[derive(Parser)]
struct Args {
    /// Advertising devices.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Time before measuring.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Measuring window.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The gateway binary.
    #[arg(long, default_value = "target/release/fieldgate")]
    fieldgate: PathBuf,
}

fn proc_status(pid: u32, key: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    let kb: u64 = line.split_whitespace().nth(1).context("value")?.parse()?;
    Ok(kb * 1024)
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').context("stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn mac(i: usize) -> [u8; 6] {
    [0xa4, 0xc1, 0x38, 0x10, (i >> 8) as u8, i as u8]
}

fn address(i: usize) -> String {
    mac(i)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A pvvx advertisement: MAC reversed, temperature, humidity, mV, %, count, flags.
fn pvvx(i: usize, round: u32) -> Vec<u8> {
    let mut v: Vec<u8> = mac(i).iter().rev().copied().collect();
    let t = 2000i16 + (round % 50) as i16;
    v.extend_from_slice(&t.to_le_bytes());
    v.extend_from_slice(&5000u16.to_le_bytes());
    v.extend_from_slice(&3000u16.to_le_bytes());
    v.extend_from_slice(&[90, round as u8, 0]);
    v
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.fieldgate.is_file() {
        bail!(
            "{} not found: cargo build --release -p fieldgate",
            args.fieldgate.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let bus = bluez_standin::DbusDaemon::start();
    let devices = (0..args.devices)
        .map(|i| bluez_standin::DeviceDef {
            address: address(i),
            name: None,
            services: vec![],
        })
        .collect();
    let bluez = Arc::new(bluez_standin::Bluez::start(bus.address(), devices));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let mut mosquitto = Command::new("/usr/sbin/mosquitto")
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start mosquitto")?;
    let mut yaml = format!(
        "gateway: {{ namespace: bench, metrics: {{ listen: \"\" }} }}\nmqtt: {{ client: {{ server: tcp://127.0.0.1:{port} }} }}\ndevices:\n"
    );
    for i in 0..args.devices {
        yaml.push_str(&format!(
            "  - {{ name: s{i}, driver: ble, protocol: {{ address: \"{}\", mode: advertisement, format: pvvx }} }}\n",
            address(i)
        ));
    }
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml)?;
    std::thread::sleep(Duration::from_millis(300));
    let states = Arc::new(AtomicU64::new(0));
    let mut opts = MqttOptions::new("ble-bench", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1000);
    client
        .subscribe("fieldgate/bench/+", QoS::AtMostOnce)
        .await?;
    {
        let states = states.clone();
        tokio::spawn(async move {
            while let Ok(ev) = events.poll().await {
                if let Event::Incoming(Packet::Publish(_)) = ev {
                    states.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let mut gateway = Command::new(&args.fieldgate)
        .args(["run", "-c"])
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("fieldgate.log"))?)
        .spawn()?;
    let pid = gateway.id();
    let started = Instant::now();
    while !bluez.discovering() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the gateway never started its scan");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let advertiser = {
        let (bluez, stop, sent, n) = (bluez.clone(), stop.clone(), sent.clone(), args.devices);
        std::thread::spawn(move || {
            let mut round = 0u32;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                // Spread the devices over the second, as real sensors are.
                for i in 0..n {
                    let at = next + Duration::from_secs(1) * i as u32 / n as u32;
                    if let Some(d) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    if bluez.advertise(&address(i), None, Some(("181a", &pvvx(i, round))), -60) {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                next += Duration::from_secs(1);
            }
        })
    };
    tokio::time::sleep(args.warmup).await;
    let tck = 100.0; // USER_HZ on Linux
    let (t0, s0, a0, c0) = (
        Instant::now(),
        states.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        cpu_ticks(pid)?,
    );
    tokio::time::sleep(args.duration).await;
    let (t1, s1, a1, c1) = (
        Instant::now(),
        states.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        cpu_ticks(pid)?,
    );
    let anon = proc_status(pid, "RssAnon:")?;
    let rss = proc_status(pid, "VmRSS:")?;
    let secs = (t1 - t0).as_secs_f64();
    println!(
        "ble_adverts: {} pvvx devices at 1 Hz; window {:.0} s: advertisements {:.1}/s, states {:.1}/s, CPU {:.1} % of one core, RssAnon {:.2} MiB, VmRSS {:.2} MiB",
        args.devices,
        secs,
        (a1 - a0) as f64 / secs,
        (s1 - s0) as f64 / secs,
        (c1 - c0) as f64 / tck / secs * 100.0,
        anon as f64 / 1048576.0,
        rss as f64 / 1048576.0
    );
    stop.store(true, Ordering::Relaxed);
    let _ = advertiser.join();
    let _ = gateway.kill();
    let _ = gateway.wait();
    let _ = mosquitto.kill();
    let _ = mosquitto.wait();
    Ok(())
}
