//! The `edit` scenario: a running fleet of simulated devices, its config
//! either one file or split into included files (`include:` glob), then
//! editor-style saves (a temporary file renamed over the old one) that each
//! add one device to one file. Per save: the time from the rename to the
//! new device's first state message, and the longest silence of any other
//! device around it (a reload that restarted or paused the others shows as
//! a silence well above the poll interval).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::{first_message, process, report, scenario};

/// Options of the `edit` scenario.
#[derive(clap::Args)]
pub(crate) struct EditArgs {
    /// Devices configured before the edits.
    #[arg(long, default_value_t = 10000)]
    devices: usize,
    /// Properties per device.
    #[arg(long, default_value_t = 20)]
    properties: usize,
    /// 1: one config file; N > 1: the devices in N files under `include:`.
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Poll interval of every device.
    #[arg(long, default_value = "1s", value_parser = crate::cli::parse_duration)]
    interval: Duration,
    /// Saves to measure (each adds one device to one file).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    common: crate::cli::CommonArgs,
}

/// Runs the `edit` scenario and prints its summary.
pub(crate) async fn main(args: EditArgs) -> anyhow::Result<()> {
    let r = EditRun {
        devices: args.devices,
        properties: args.properties,
        files: args.files,
        interval: args.interval,
        runs: args.runs,
    };
    let dir = crate::harness::RunDir::create(args.common.keep)?;
    let edits = run(&r, &dir.path, &crate::cli::binary(&args.common)).await?;
    let scenario = format!(
        "edit devices={} properties={} files={} interval={}",
        r.devices,
        r.properties,
        r.files,
        humantime::format_duration(r.interval)
    );
    let lat = report::Latencies::new(scenario.clone(), edits.iter().map(|e| e.latency).collect());
    let silence = edits
        .iter()
        .map(|e| e.longest_silence)
        .max()
        .unwrap_or_default();
    crate::cli::print_result(
        args.common.json,
        || line(&scenario, &edits),
        || {
            let mut v = lat.json();
            v["longest_silence_ms"] = serde_json::json!(silence.as_secs_f64() * 1000.0);
            v
        },
    );
    Ok(())
}

/// What to run.
pub(crate) struct EditRun {
    /// Devices configured before the edits.
    pub devices: usize,
    /// Properties per device.
    pub properties: usize,
    /// Files the devices are spread over: 1 is one config file, more is a
    /// main file with `include: devices/*.yaml` and this many device files.
    pub files: usize,
    /// Poll interval of every device.
    pub interval: Duration,
    /// Saves to measure (each adds one device).
    pub runs: usize,
}

/// One save's figures.
pub(crate) struct Edit {
    /// Rename → the added device's first state message.
    pub latency: Duration,
    /// The longest time any other device went without a state message,
    /// from one poll interval before the rename to two after the new state.
    pub longest_silence: Duration,
}

/// The last state message of every device, and the longest silence seen
/// since a window opened.
#[derive(Default)]
struct Silences {
    last: HashMap<String, Instant>,
    window: Option<Instant>,
    longest: Duration,
}

impl Silences {
    fn seen(&mut self, topic: &str, now: Instant) {
        // The gateway's own topics (`G/$health`) are no device.
        if topic.rsplit('/').next().is_some_and(|l| l.starts_with('$')) {
            return;
        }
        if let Some(prev) = self.last.insert(topic.to_owned(), now) {
            if self.window.is_some_and(|w| now >= w) {
                self.longest = self.longest.max(now.saturating_duration_since(prev));
            }
        }
    }

    /// Opens a window at `from`.
    fn open(&mut self, from: Instant) {
        self.window = Some(from);
        self.longest = Duration::ZERO;
    }

    /// Closes the window: the longest silence in it, counting devices
    /// silent still (but not `except`).
    fn close(&mut self, now: Instant, except: &str) -> Duration {
        let ongoing = self
            .last
            .iter()
            .filter(|(t, _)| !t.ends_with(except))
            .map(|(_, at)| now.saturating_duration_since(*at))
            .max()
            .unwrap_or_default();
        self.window = None;
        self.longest.max(ongoing)
    }
}

/// Subscribes to every device's state topic and tracks silences.
async fn watch_silences(port: u16) -> anyhow::Result<Arc<Mutex<Silences>>> {
    let mut opts = MqttOptions::new(
        format!("fieldgate-bench-edit-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(16 << 20, 64 << 10);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let silences = Arc::new(Mutex::new(Silences::default()));
    let filter = format!("{}/{}/+", scenario::PREFIX, scenario::NAMESPACE);
    let (acked_tx, acked_rx) = tokio::sync::oneshot::channel();
    let mut acked_tx = Some(acked_tx);
    let s = silences.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(filter.clone(), QoS::AtMostOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = acked_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    if let Ok(mut s) = s.lock() {
                        s.seen(&p.topic, now);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("fieldgate-bench: edit subscriber: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), acked_rx)
        .await
        .context("no SUBACK within 10 s")?
        .context("subscriber ended")?;
    Ok(silences)
}

/// The device file `f` of a split config.
fn device_file(dir: &Path, f: usize) -> PathBuf {
    dir.join("devices").join(format!("part-{f:03}.yaml"))
}

/// Writes the config: one file, or a main file and `files` device files.
/// `extra[f]` are the added devices of file `f`.
fn write_config(
    run: &EditRun,
    dir: &Path,
    port: u16,
    extra: &[Vec<String>],
) -> anyhow::Result<PathBuf> {
    let state = dir.join("state");
    let main = dir.join("config.yaml");
    if run.files <= 1 {
        let yaml = scenario::dummy_config_with(
            run.devices,
            run.properties,
            run.interval,
            port,
            &state,
            extra.first().map(Vec::as_slice).unwrap_or(&[]),
        );
        std::fs::write(&main, yaml)?;
        return Ok(main);
    }
    // The main file: the generated header, the devices replaced by the glob.
    let header = scenario::dummy_config(0, run.properties, run.interval, port, &state);
    let header = header.trim_end().trim_end_matches("devices:").to_string();
    std::fs::write(&main, format!("{header}include: devices/*.yaml\n"))?;
    std::fs::create_dir_all(dir.join("devices"))?;
    for f in 0..run.files {
        write_device_file(run, dir, f, extra.get(f).map(Vec::as_slice).unwrap_or(&[]))?;
    }
    Ok(main)
}

/// The `devices:` of file `f` (its share of `dev-NNNNN` plus `extra`),
/// saved the way editors save: a temporary file (a name the glob does not
/// match) renamed over the old one. Returns the instant of the rename.
fn write_device_file(
    run: &EditRun,
    dir: &Path,
    f: usize,
    extra: &[String],
) -> anyhow::Result<Instant> {
    let interval = humantime::format_duration(run.interval).to_string();
    let per = run.devices.div_ceil(run.files);
    let mut y = vec!["devices:".to_string()];
    for d in (f * per)..((f + 1) * per).min(run.devices) {
        y.extend(scenario::dummy_device(
            &format!("dev-{d:05}"),
            run.properties,
            &interval,
        ));
    }
    for name in extra {
        y.extend(scenario::dummy_device(name, run.properties, &interval));
    }
    y.push(String::new());
    let path = device_file(dir, f);
    let tmp = dir.join("devices").join(format!(".part-{f:03}.yaml.tmp"));
    std::fs::write(&tmp, y.join("\n"))?;
    let at = Instant::now();
    std::fs::rename(&tmp, &path).with_context(|| format!("rename over {}", path.display()))?;
    Ok(at)
}

/// Runs the scenario; returns one figure per save.
pub(crate) async fn run(run: &EditRun, dir: &Path, binary: &Path) -> anyhow::Result<Vec<Edit>> {
    if run.devices == 0 || run.properties == 0 || run.runs == 0 || run.files == 0 {
        bail!("--devices, --properties, --files and --runs must be at least 1");
    }
    let (_broker, port) = process::start_mosquitto(dir).await?;
    let mut extra: Vec<Vec<String>> = vec![Vec::new(); run.files];
    let config = write_config(run, dir, port, &extra)?;
    let silences = watch_silences(port).await?;
    let mut stopwatch = first_message::FirstMessage::connect(port).await?;
    let mut gateway = process::start_fieldgate(binary, &config, dir)?;

    // Up: every configured device has published.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = silences.lock().map(|s| s.last.len()).unwrap_or(0);
        if up >= run.devices {
            break;
        }
        gateway.ensure_running()?;
        if Instant::now() >= deadline {
            bail!(
                "{up} of {} devices published within 120 s; last log lines:\n{}",
                run.devices,
                process::log_tail(gateway.log_path(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut edits = Vec::new();
    for n in 1..=run.runs {
        let name = format!("added-{n:03}");
        let topic = format!("{}/{}/{name}", scenario::PREFIX, scenario::NAMESPACE);
        stopwatch.watch(&topic).await?;
        let file = (n * 37) % run.files;
        extra[file].push(name.clone());
        if let Ok(mut s) = silences.lock() {
            let now = Instant::now();
            s.open(now.checked_sub(run.interval).unwrap_or(now));
        }
        let renamed = if run.files <= 1 {
            let tmp = dir.join(".config.yaml.tmp");
            let yaml = scenario::dummy_config_with(
                run.devices,
                run.properties,
                run.interval,
                port,
                &dir.join("state"),
                &extra[0],
            );
            std::fs::write(&tmp, yaml)?;
            let at = Instant::now();
            std::fs::rename(&tmp, &config).context("rename the new config over the old")?;
            at
        } else {
            write_device_file(run, dir, file, &extra[file])?
        };
        let arrived = loop {
            if let Some(t) = stopwatch.arrival(&topic) {
                break t;
            }
            gateway.ensure_running()?;
            if renamed.elapsed() > Duration::from_secs(60) {
                bail!(
                    "{topic}: no state within 60 s of the rename; last log lines:\n{}",
                    process::log_tail(gateway.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        tokio::time::sleep(run.interval * 2).await;
        let longest_silence = silences
            .lock()
            .map(|mut s| s.close(Instant::now(), &format!("/{name}")))
            .unwrap_or_default();
        let latency = arrived.saturating_duration_since(renamed);
        eprintln!(
            "fieldgate-bench: edit {n} (file {file}): applied in {latency:?}, longest silence of another device {longest_silence:?}"
        );
        edits.push(Edit {
            latency,
            longest_silence,
        });
    }
    gateway.terminate(Duration::from_secs(5)).await;
    Ok(edits)
}

/// The summary line: latency percentiles and the longest silence.
pub(crate) fn line(scenario: &str, edits: &[Edit]) -> String {
    let lat = report::Latencies::new(
        scenario.to_string(),
        edits.iter().map(|e| e.latency).collect(),
    );
    let silence = edits
        .iter()
        .map(|e| e.longest_silence)
        .max()
        .unwrap_or_default();
    format!(
        "{}; longest silence of another device: {} ms",
        lat.line(),
        silence.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silence_counts_only_inside_the_window() {
        let t0 = Instant::now();
        let mut s = Silences::default();
        s.seen("a", t0);
        s.seen("a", t0 + Duration::from_secs(5));
        s.open(t0 + Duration::from_secs(6));
        s.seen("a", t0 + Duration::from_secs(7));
        s.seen("b", t0 + Duration::from_secs(7));
        s.seen("a", t0 + Duration::from_secs(9));
        s.seen("b", t0 + Duration::from_secs(8));
        s.seen("x/$health", t0);
        s.seen("x/$health", t0 + Duration::from_secs(9));
        assert_eq!(
            s.close(t0 + Duration::from_secs(9), "/x"),
            Duration::from_secs(2)
        );
    }
}
