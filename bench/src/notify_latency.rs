//! The `notify-latency` scenario (issue #26): latency from a value change at
//! the source to the state message at an MQTT subscriber, on loopback.
//!
//! - `--source opcua`: the async-opcua server in this process changes one
//!   Int32 variable that the gateway monitors (`mode: subscribe`); the
//!   server's publishing cycle (`--interval`, at most one server tick
//!   `--server-tick` late) is part of the latency, as it is with a real
//!   server.
//! - `--source ble`: the BlueZ stand-in of the end-to-end tests (private
//!   `dbus-daemon`) emits a GATT notification (`PropertiesChanged` on
//!   `Value`) of a characteristic the gateway has `access: notify` on.
//!
//! Each sample sets a new value, stamps the instant just before the set and
//! waits for the state carrying that value; the next change follows after
//! `--gap` (plus a varying 0–9 ms, so changes do not lock to a cycle).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use fieldgate_testkit::bluez as bluez_standin;
use tokio::sync::mpsc;

use crate::latency::quantile;
use crate::online::{self, Arrival, Online};
use crate::opcua_server;
use crate::process;
use crate::scenario;

/// Options of the `notify-latency` scenario.
#[derive(Args)]
pub(crate) struct NotifyLatencyArgs {
    /// opcua (subscription change) or ble (GATT notification).
    #[arg(long, default_value = "opcua")]
    pub source: String,
    /// Changes to time.
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
    /// OPC-UA: `syncInterval`, i.e. the subscription's publishing and the
    /// item's sampling interval. BLE: the device's poll interval (notified
    /// values do not wait for it).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// OPC-UA: the server's subscription tick (and shortest publishing interval).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub server_tick: Duration,
    /// Pause between a change's arrival and the next change.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub gap: Duration,
    /// Time between the device online and the first change.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    #[command(flatten)]
    pub common: crate::cli::CommonArgs,
}

const BLE_ADDRESS: &str = "A4:C1:38:00:26:26";
const BLE_SERVICE: &str = "ebe0ccb0-7a0a-4b0c-8a1a-6ff2997da3a6";
const BLE_CHAR: &str = "ebe0ccc1-7a0a-4b0c-8a1a-6ff2997da3a6";

/// The integer value of property `name` in a state payload.
fn property(payload: &[u8], name: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("properties")?.get(name)?.as_i64()
}

/// Waits for the state whose property `name` is `want`; its arrival instant.
async fn arrival_of(
    rx: &mut mpsc::UnboundedReceiver<Arrival>,
    name: &str,
    want: i64,
    timeout: Duration,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let a = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        if property(&a.payload, name) == Some(want) {
            return Some(a.at);
        }
    }
}

/// The `gateway:`/`mqtt:` header and one device, as YAML.
fn ble_config(broker_port: u16, state: &std::path::Path, interval: Duration) -> String {
    let base = scenario::opcua_config(
        "opc.tcp://unused:1/",
        &[],
        "poll",
        interval,
        broker_port,
        state,
    );
    let header = base
        .split("  - name: plc")
        .next()
        .unwrap_or_default()
        .to_string();
    format!(
        "{header}  - name: thermo\n    driver: ble\n    syncInterval: {}\n    timeout: 2s\n    \
         protocol: {{ address: \"{BLE_ADDRESS}\", adapter: hci0, scanTimeout: 10s }}\n    properties:\n      \
         - {{ name: value, service: {BLE_SERVICE}, characteristic: {BLE_CHAR}, access: notify, type: uint16, byteOrder: little }}\n",
        humantime::format_duration(interval)
    )
}

/// Runs the scenario and prints its result.
pub(crate) async fn run_notify_latency(args: NotifyLatencyArgs) -> anyhow::Result<()> {
    if args.samples == 0 || args.interval.is_zero() {
        bail!("--samples and --interval must be more than 0");
    }
    let dir = crate::harness::RunDir::create(args.common.keep)?;
    let (_broker, port) = process::start_mosquitto_nodelay(dir.path()).await?;
    let state = dir.path().join("state");
    let config = dir.path().join("config.yaml");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let load_before = online::load_average();

    let (latencies, lost, scenario) = match args.source.as_str() {
        "opcua" => {
            let mut options = opcua_server::Options::new(&dir.path().join("server-pki"));
            options.tick = Duration::from_secs(3600);
            options.subscription_tick = args.server_tick;
            let server = opcua_server::OpcUaServer::start(options).await;
            std::fs::write(
                &config,
                scenario::opcua_config(
                    &server.url,
                    &[server.node("Int32")],
                    "subscribe",
                    args.interval,
                    port,
                    &state,
                ),
            )
            .with_context(|| format!("write {}", config.display()))?;
            let online = Online::connect(port, 1, Some(("plc".into(), tx))).await?;
            let mut gateway =
                process::start_fieldgate(&crate::cli::binary(&args.common), &config, dir.path())?;
            online::wait_online(
                &mut gateway,
                &online,
                Instant::now(),
                Duration::from_secs(60),
            )
            .await?;
            crate::harness::run_for(&mut gateway, args.warmup).await?;
            while rx.try_recv().is_ok() {}
            let mut latencies = Vec::with_capacity(args.samples);
            let mut lost = 0;
            for k in 0..args.samples {
                gateway.ensure_running()?;
                let value = 1_000_000 + k as i32;
                let t0 = Instant::now();
                server.set("Int32", opcua::types::Variant::Int32(value));
                match arrival_of(&mut rx, "n00000", i64::from(value), Duration::from_secs(2)).await
                {
                    Some(at) => latencies.push(at.saturating_duration_since(t0)),
                    None => lost += 1,
                }
                tokio::time::sleep(args.gap + Duration::from_millis((k * 7 % 10) as u64)).await;
            }
            gateway.terminate(Duration::from_secs(5)).await;
            server.stop().await;
            (
                latencies,
                lost,
                format!(
                    "notify-latency source=opcua publishingInterval={} server-tick={}",
                    humantime::format_duration(args.interval),
                    humantime::format_duration(args.server_tick)
                ),
            )
        }
        "ble" => {
            let bus = bluez_standin::DbusDaemon::start();
            let bluez = bluez_standin::Bluez::start(
                bus.address(),
                vec![bluez_standin::DeviceDef {
                    address: BLE_ADDRESS.into(),
                    name: Some("bench".into()),
                    services: vec![bluez_standin::ServiceDef {
                        uuid: BLE_SERVICE.into(),
                        chars: vec![bluez_standin::CharDef {
                            uuid: BLE_CHAR.into(),
                            flags: vec!["read", "notify"],
                            value: vec![0, 0],
                        }],
                    }],
                }],
            );
            std::fs::write(&config, ble_config(port, &state, args.interval))
                .with_context(|| format!("write {}", config.display()))?;
            let online = Online::connect(port, 1, Some(("thermo".into(), tx))).await?;
            let binary = std::fs::canonicalize(crate::cli::binary(&args.common))
                .context("the fieldgate binary (build it or pass --fieldgate)")?;
            let mut cmd = Command::new(binary);
            cmd.arg("run")
                .arg("-c")
                .arg(&config)
                .current_dir(dir.path())
                .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address());
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "warn");
            }
            let mut gateway =
                process::Supervised::spawn("fieldgate", cmd, dir.path().join("fieldgate.log"))?;
            online::wait_online(
                &mut gateway,
                &online,
                Instant::now(),
                Duration::from_secs(60),
            )
            .await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !bluez.notifying(BLE_CHAR) {
                gateway.ensure_running()?;
                if Instant::now() > deadline {
                    bail!(
                        "the gateway did not start notifications within 30 s; log:\n{}",
                        process::log_tail(gateway.log_path(), 30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            crate::harness::run_for(&mut gateway, args.warmup).await?;
            while rx.try_recv().is_ok() {}
            let mut latencies = Vec::with_capacity(args.samples);
            let mut lost = 0;
            for k in 0..args.samples {
                gateway.ensure_running()?;
                let value = 1000 + k as u16;
                let t0 = Instant::now();
                // One D-Bus signal sent from this thread: quick, but blocking.
                tokio::task::block_in_place(|| {
                    bluez.set_value(BLE_ADDRESS, BLE_CHAR, &value.to_le_bytes());
                });
                match arrival_of(&mut rx, "value", i64::from(value), Duration::from_secs(2)).await {
                    Some(at) => latencies.push(at.saturating_duration_since(t0)),
                    None => lost += 1,
                }
                tokio::time::sleep(args.gap + Duration::from_millis((k * 7 % 10) as u64)).await;
            }
            gateway.terminate(Duration::from_secs(5)).await;
            drop(bluez);
            drop(bus);
            (
                latencies,
                lost,
                format!(
                    "notify-latency source=ble (BlueZ stand-in, private dbus-daemon) syncInterval={}",
                    humantime::format_duration(args.interval)
                ),
            )
        }
        other => bail!("--source is opcua or ble, not {other:?}"),
    };
    let load_after = online::load_average();
    let mut sorted = latencies;
    sorted.sort();
    if sorted.is_empty() {
        bail!("no change arrived ({lost} lost)");
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99, max) = (
        quantile(&sorted, 0.50),
        quantile(&sorted, 0.99),
        sorted.last().copied().unwrap_or_default(),
    );
    if args.common.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": scenario,
                "samples": sorted.len(),
                "lost": lost,
                "p50_ms": ms(p50),
                "p99_ms": ms(p99),
                "max_ms": ms(max),
                "min_ms": ms(sorted[0]),
                "load_average": [load_before, load_after],
            })
        );
    } else {
        println!(
            "{scenario}: {} changes, {lost} lost, latency min {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             load average {load_before} → {load_after}",
            sorted.len(),
            ms(sorted[0]),
            ms(p50),
            ms(p99),
            ms(max),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_reads_integers_of_a_state() {
        let p = br#"{"name":"plc","properties":{"n00000":1000042}}"#;
        assert_eq!(property(p, "n00000"), Some(1_000_042));
        assert_eq!(property(p, "other"), None);
        assert_eq!(property(b"nope", "n00000"), None);
    }

    #[test]
    fn ble_config_has_one_notify_property() {
        let y = ble_config(1883, std::path::Path::new("/s"), Duration::from_secs(1));
        assert!(y.contains("driver: ble"));
        assert!(y.contains("access: notify"));
        assert!(y.contains("server: tcp://127.0.0.1:1883"));
        assert!(!y.contains("plc"));
    }
}
