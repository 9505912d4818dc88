//! The `startup` scenario: time from starting the `fieldgate` process to the
//! first device state message a subscriber receives (and, for generated
//! configs, until every device has published once).
//!
//! With a private Mosquitto the subscriber is subscribed before the gateway
//! starts, so the first state cannot be missed. With the embedded broker of
//! `configs/demo.yaml` the subscriber can only connect once the gateway's
//! broker listens: it polls the port every millisecond and subscribes at
//! once, and the report says whether the first state it saw was the
//! device's first read (the demo's `sensors.count` is 0 on the first read).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::{binary, demo_path, parse_broker, parse_duration, print_result, CommonArgs};
use crate::harness::RunDir;
use crate::process;
use crate::scenario;
use clap::Args;

/// Which broker the gateway publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broker {
    /// The config's embedded broker (on a free port).
    Embedded,
    /// A private Mosquitto.
    Mosquitto,
}

/// What the gateway runs.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A copy of the demo config (`configs/demo.yaml`): free ports for its
    /// embedded broker and metrics, its state directory in the run directory,
    /// and with [`Broker::Mosquitto`] the embedded broker replaced by
    /// `mqtt.client.server` pointing at Mosquitto.
    Demo {
        /// The demo config.
        path: PathBuf,
        /// Where it publishes.
        broker: Broker,
    },
    /// Generated dummy devices on a private Mosquitto.
    Generated {
        /// Devices.
        devices: usize,
        /// Properties per device.
        properties: usize,
        /// Poll interval.
        interval: Duration,
    },
}

/// One start-up.
#[derive(Debug, Clone)]
pub(crate) struct Startup {
    /// Process start to the first state message.
    pub first_state: Duration,
    /// Process start to a state from every device (generated configs).
    pub all_devices: Option<Duration>,
    /// Process start to the subscriber's SUBACK (embedded broker).
    pub subscribed: Option<Duration>,
    /// Whether the first state with a `count` property that the subscriber
    /// saw was that device's first read (demo: `sensors.count` is 0 then);
    /// `None` when no state had a `count`.
    pub first_read: Option<bool>,
    /// Topic of the first state.
    pub first_topic: String,
    /// The gateway's `VmRSS` and `RssAnon` once every device had published.
    pub memory: Option<crate::measure::Memory>,
}

/// The demo config text rewritten for a run: `broker_port` replaces the
/// embedded broker's 11883, `metrics_port` the metrics' 9880, `state_dir`
/// the state directory; with `mosquitto` the `broker:` section becomes an
/// `mqtt.client.server` on that port.
pub(crate) fn demo_variant(
    demo: &str,
    broker_port: u16,
    metrics_port: u16,
    state_dir: &Path,
    mosquitto: bool,
) -> anyhow::Result<String> {
    const BROKER: &str = "broker:\n  listen: 127.0.0.1:11883\n";
    const METRICS: &str = "listen: 127.0.0.1:9880";
    const STATE: &str = "stateDirectory: /tmp/fieldgate-demo";
    for needle in [BROKER, METRICS, STATE] {
        if !demo.contains(needle) {
            bail!(
                "the demo config has no `{}`; update fieldgate-bench's startup scenario",
                needle.trim()
            );
        }
    }
    let broker = if mosquitto {
        format!("mqtt:\n  client:\n    server: tcp://127.0.0.1:{broker_port}\n")
    } else {
        format!("broker:\n  listen: 127.0.0.1:{broker_port}\n")
    };
    Ok(demo
        .replace(BROKER, &broker)
        .replace(METRICS, &format!("listen: 127.0.0.1:{metrics_port}"))
        .replace(
            STATE,
            &format!("stateDirectory: \"{}\"", state_dir.display()),
        ))
}

/// The value of the integer property `count` in a state payload.
fn count_property(payload: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("properties")?.get("count")?.as_u64()
}

/// The device of a state topic `<prefix>/<ns>/<device>` (no `$` level).
fn state_device(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(scenario::PREFIX)?.strip_prefix('/')?;
    let mut levels = rest.split('/');
    let (_ns, device) = (levels.next()?, levels.next()?);
    if levels.next().is_some() || device.is_empty() || device.starts_with('$') {
        return None;
    }
    Some(device)
}

/// What the watcher saw.
#[derive(Default)]
struct Seen {
    first: Option<(Instant, String)>,
    /// `count` of the first state that had one.
    first_count: Option<u64>,
    devices: HashSet<String>,
    all: Option<Instant>,
}

/// A subscriber on `<prefix>/#` that timestamps the first live state message
/// and the moment `expect` devices have published.
struct Watcher {
    seen: Arc<Mutex<Seen>>,
    subscribed: watch::Receiver<Option<Instant>>,
    task: JoinHandle<()>,
    _client: AsyncClient,
}

impl Watcher {
    fn connect(port: u16, expect: usize) -> Self {
        let mut opts = MqttOptions::new(
            format!("fieldgate-bench-startup-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (sub_tx, subscribed) = watch::channel(None);
        let task = {
            let seen = seen.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let filter = format!("{}/#", scenario::PREFIX);
                let _ = client.subscribe(filter, QoS::AtMostOnce).await;
                loop {
                    match eventloop.poll().await {
                        // Retained states are from an earlier run.
                        Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => {
                            let now = Instant::now();
                            let Some(device) = state_device(&p.topic) else {
                                continue;
                            };
                            let Ok(mut s) = seen.lock() else { continue };
                            if s.first.is_none() {
                                s.first = Some((now, p.topic.clone()));
                            }
                            if s.first_count.is_none() {
                                s.first_count = count_property(&p.payload);
                            }
                            if s.all.is_none() {
                                s.devices.insert(device.to_owned());
                                if s.devices.len() >= expect {
                                    s.all = Some(now);
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let now = Instant::now();
                            sub_tx.send_if_modified(|s| s.is_none() && s.replace(now).is_none());
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            })
        };
        Self {
            seen,
            subscribed,
            task,
            _client: client,
        }
    }

    async fn wait_subscribed(&mut self, timeout: Duration) -> anyhow::Result<Instant> {
        match tokio::time::timeout(timeout, self.subscribed.wait_for(|s| s.is_some())).await {
            Ok(Ok(at)) => Ok(at.unwrap_or_else(Instant::now)),
            _ => bail!("no SUBACK within {timeout:?}"),
        }
    }

    fn first(&self) -> Option<(Instant, String)> {
        self.seen.lock().ok()?.first.clone()
    }

    fn first_count(&self) -> Option<u64> {
        self.seen.lock().ok()?.first_count
    }

    fn all(&self) -> Option<Instant> {
        self.seen.lock().ok()?.all
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls 127.0.0.1:`port` every millisecond until it accepts a connection.
async fn wait_listening(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// Starts the gateway `runs` times on `source` and measures each start.
pub(crate) async fn run(
    source: &Source,
    runs: usize,
    dir: &Path,
    binary: &Path,
) -> anyhow::Result<Vec<Startup>> {
    let needs_mosquitto = !matches!(
        source,
        Source::Demo {
            broker: Broker::Embedded,
            ..
        }
    );
    let mosquitto = if needs_mosquitto {
        Some(process::start_mosquitto(dir).await?)
    } else {
        None
    };
    let demo = match source {
        Source::Demo { path, .. } => Some(
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        ),
        Source::Generated { .. } => None,
    };
    let mut results = Vec::with_capacity(runs);
    for run in 1..=runs {
        let run_dir = dir.join(format!("run-{run}"));
        let state = run_dir.join("state");
        std::fs::create_dir_all(&state).with_context(|| format!("create {}", state.display()))?;
        let config = run_dir.join("config.yaml");
        let broker_port = match &mosquitto {
            Some((_, port)) => *port,
            None => process::free_port()?,
        };
        let (text, expect) = match source {
            Source::Demo { broker, .. } => (
                demo_variant(
                    demo.as_deref().unwrap_or_default(),
                    broker_port,
                    process::free_port()?,
                    &state,
                    *broker == Broker::Mosquitto,
                )?,
                1,
            ),
            Source::Generated {
                devices,
                properties,
                interval,
            } => (
                scenario::dummy_config(*devices, *properties, *interval, broker_port, &state),
                *devices,
            ),
        };
        std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;

        let embedded = mosquitto.is_none();
        let mut watcher = if embedded {
            None
        } else {
            let mut w = Watcher::connect(broker_port, expect);
            w.wait_subscribed(Duration::from_secs(10)).await?;
            Some(w)
        };
        let started = Instant::now();
        let mut gateway = process::start_fieldgate(binary, &config, &run_dir)?;
        let mut subscribed = None;
        if embedded {
            if !wait_listening(broker_port, Duration::from_secs(10)).await {
                gateway.ensure_running()?;
                bail!("the embedded broker did not listen on {broker_port} within 10 s");
            }
            let mut w = Watcher::connect(broker_port, expect);
            subscribed = Some(w.wait_subscribed(Duration::from_secs(10)).await? - started);
            watcher = Some(w);
        }
        let Some(watcher) = watcher else {
            bail!("no subscriber");
        };
        let deadline = started + Duration::from_secs(120);
        let (first, all) = loop {
            gateway.ensure_running()?;
            let first = watcher.first();
            let all = watcher.all();
            if first.is_some() && (all.is_some() || expect <= 1) {
                break (first, all);
            }
            if Instant::now() >= deadline {
                bail!(
                    "run {run}: no state from every device within 120 s; last log lines:\n{}",
                    process::log_tail(gateway.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if embedded {
            // The demo's sensors publish every 2 s: wait for their first
            // state to tell whether the subscriber was in time for it.
            let until = Instant::now() + Duration::from_secs(3);
            while watcher.first_count().is_none() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let count = watcher.first_count();
        let memory = crate::measure::memory(gateway.pid()).ok();
        gateway.terminate(Duration::from_secs(5)).await;
        let Some((first_at, first_topic)) = first else {
            bail!("no first state");
        };
        let result = Startup {
            first_state: first_at - started,
            all_devices: (expect > 1).then(|| all.map(|a| a - started)).flatten(),
            subscribed,
            first_read: count.map(|c| c == 0),
            first_topic,
            memory,
        };
        eprintln!(
            "fieldgate-bench: start-up {run}: first state {:.1} ms{}{}{}",
            ms(result.first_state),
            result
                .all_devices
                .map(|d| format!(", every device {:.1} ms", ms(d)))
                .unwrap_or_default(),
            result
                .subscribed
                .map(|d| format!(", subscriber ready {:.1} ms", ms(d)))
                .unwrap_or_default(),
            result
                .memory
                .map(|m| format!(
                    ", then RssAnon {:.1} MiB, VmRSS {:.1} MiB",
                    crate::report::mib(m.anon),
                    crate::report::mib(m.rss)
                ))
                .unwrap_or_default(),
        );
        results.push(result);
        // Run directories are small; keep only the last one's logs.
        if run < runs {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
    }
    Ok(results)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of `values` (mean of the middle two for an even count).
pub(crate) fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// The summary line of a series of start-ups.
pub(crate) fn line(scenario: &str, runs: &[Startup]) -> String {
    let list = |f: &dyn Fn(&Startup) -> Option<Duration>| -> Option<(Duration, String)> {
        let v: Vec<Duration> = runs.iter().filter_map(f).collect();
        if v.is_empty() {
            return None;
        }
        let all: Vec<String> = v.iter().map(|d| format!("{:.1}", ms(*d))).collect();
        Some((median(&v), all.join(" / ")))
    };
    let mut out = format!("{scenario}: runs {}", runs.len());
    if let Some((m, all)) = list(&|s| Some(s.first_state)) {
        out.push_str(&format!(", first state median {:.1} ms ({all})", ms(m)));
    }
    if let Some((m, all)) = list(&|s| s.all_devices) {
        out.push_str(&format!(", every device median {:.1} ms ({all})", ms(m)));
    }
    if let Some((m, all)) = list(&|s| s.subscribed) {
        out.push_str(&format!(
            ", subscriber ready median {:.1} ms ({all})",
            ms(m)
        ));
    }
    let mut anon: Vec<u64> = runs
        .iter()
        .filter_map(|s| s.memory.map(|m| m.anon))
        .collect();
    if !anon.is_empty() {
        anon.sort_unstable();
        let all: Vec<String> = anon
            .iter()
            .map(|b| format!("{:.1}", crate::report::mib(*b)))
            .collect();
        out.push_str(&format!(
            ", RssAnon then median {:.1} MiB ({})",
            crate::report::mib(anon[anon.len() / 2]),
            all.join(" / ")
        ));
    }
    let checked: Vec<bool> = runs.iter().filter_map(|s| s.first_read).collect();
    if !checked.is_empty() {
        out.push_str(&format!(
            ", subscriber saw the first read (count 0) in {} of {} runs",
            checked.iter().filter(|b| **b).count(),
            checked.len()
        ));
    }
    out
}

/// The same as JSON.
pub(crate) fn json(scenario: &str, runs: &[Startup]) -> serde_json::Value {
    let firsts: Vec<Duration> = runs.iter().map(|s| s.first_state).collect();
    let alls: Vec<Duration> = runs.iter().filter_map(|s| s.all_devices).collect();
    serde_json::json!({
        "scenario": scenario,
        "runs": runs.iter().map(|s| serde_json::json!({
            "first_state_ms": ms(s.first_state),
            "every_device_ms": s.all_devices.map(ms),
            "subscriber_ready_ms": s.subscribed.map(ms),
            "first_read": s.first_read,
            "first_topic": s.first_topic,
            "rss_anon_mib": s.memory.map(|m| crate::report::mib(m.anon)),
            "vm_rss_mib": s.memory.map(|m| crate::report::mib(m.rss)),
        })).collect::<Vec<_>>(),
        "first_state_median_ms": ms(median(&firsts)),
        "every_device_median_ms": (!alls.is_empty()).then(|| ms(median(&alls))),
    })
}

/// Options of the `startup` scenario.
#[derive(Args)]
pub(crate) struct StartupArgs {
    /// Generate this many dummy devices (on Mosquitto) instead of the demo config.
    #[arg(long)]
    devices: Option<usize>,
    /// Properties per generated device.
    #[arg(long, default_value_t = 10)]
    properties: usize,
    /// Poll interval of the generated devices.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// The demo config (default: configs/demo.yaml of this workspace).
    #[arg(long)]
    demo: Option<PathBuf>,
    /// The demo's broker: embedded (as shipped, on a free port) or mosquitto.
    #[arg(long, default_value = "mosquitto")]
    broker: String,
    /// Start-ups to measure.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    common: CommonArgs,
}

pub(crate) async fn run_startup(args: StartupArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (source, scenario) = match args.devices {
        Some(devices) => {
            if devices == 0 || args.properties == 0 {
                bail!("--devices and --properties must be at least 1");
            }
            (
                Source::Generated {
                    devices,
                    properties: args.properties,
                    interval: args.interval,
                },
                format!(
                    "startup dummy devices={devices} properties={} interval={} broker=mosquitto",
                    args.properties,
                    humantime::format_duration(args.interval)
                ),
            )
        }
        None => {
            let broker = parse_broker(&args.broker)?;
            (
                Source::Demo {
                    path: demo_path(args.demo),
                    broker,
                },
                format!("startup demo broker={}", args.broker),
            )
        }
    };
    let dir = RunDir::create(args.common.keep)?;
    let runs = run(&source, args.runs, &dir.path, &binary(&args.common)).await?;
    print_result(
        args.common.json,
        || line(&scenario, &runs),
        || json(&scenario, &runs),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = "gateway:\n  namespace: demo\n  stateDirectory: /tmp/fieldgate-demo\n  metrics:\n    listen: 127.0.0.1:9880\n\nbroker:\n  listen: 127.0.0.1:11883\n\ndevices: []\n";

    #[test]
    fn demo_variants() {
        let e = demo_variant(DEMO, 4000, 4001, Path::new("/r/state"), false).unwrap();
        assert!(e.contains("broker:\n  listen: 127.0.0.1:4000\n"), "{e}");
        assert!(e.contains("listen: 127.0.0.1:4001"), "{e}");
        assert!(e.contains("stateDirectory: \"/r/state\""), "{e}");
        let m = demo_variant(DEMO, 4000, 4001, Path::new("/r/state"), true).unwrap();
        assert!(!m.contains("broker:"), "{m}");
        assert!(
            m.contains("mqtt:\n  client:\n    server: tcp://127.0.0.1:4000\n"),
            "{m}"
        );
        assert!(demo_variant("gateway: {}\n", 1, 2, Path::new("/s"), false).is_err());
    }

    #[test]
    fn the_real_demo_config_can_be_rewritten() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/demo.yaml");
        let demo = std::fs::read_to_string(path).unwrap();
        assert!(demo_variant(&demo, 1, 2, Path::new("/s"), true).is_ok());
    }

    #[test]
    fn state_topics_and_counts() {
        assert_eq!(state_device("fieldgate/demo/sensors"), Some("sensors"));
        assert_eq!(state_device("fieldgate/demo/sensors/$meta"), None);
        assert_eq!(state_device("fieldgate/demo/$will"), None);
        assert_eq!(state_device("fieldgate/demo"), None);
        assert_eq!(
            count_property(br#"{"name":"s","properties":{"count":0,"x":1.5}}"#),
            Some(0)
        );
        assert_eq!(
            count_property(br#"{"name":"s","properties":{"x":1}}"#),
            None
        );
    }

    #[test]
    fn medians_and_line() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
        let runs = vec![
            Startup {
                first_state: ms(40),
                all_devices: None,
                subscribed: Some(ms(10)),
                first_read: Some(true),
                first_topic: "fieldgate/demo/sensors".into(),
                memory: None,
            },
            Startup {
                first_state: ms(20),
                all_devices: None,
                subscribed: Some(ms(12)),
                first_read: Some(false),
                first_topic: "fieldgate/demo/sensors".into(),
                memory: None,
            },
        ];
        let l = line("startup demo", &runs);
        assert!(
            l.contains("first state median 30.0 ms (40.0 / 20.0)"),
            "{l}"
        );
        assert!(l.contains("first read (count 0) in 1 of 2 runs"), "{l}");
        assert_eq!(json("x", &runs)["first_state_median_ms"], 30.0);
    }
}
