//! `fieldgate run`: loads the config, starts telemetry, the optional
//! embedded broker, MQTT sessions and devices, reloads on SIGHUP, and stops
//! cleanly on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Resolved};
use crate::health;
use crate::reload::{self, probation};
use crate::sdnotify;
use crate::supervisor::{plan, DiffSummary, Supervisor};
use crate::telemetry::{self, Health, LogControl, Metrics};
use crate::EXIT_CONFIG;

/// A clean stop must finish within this (the contract allows 5 s).
const STOP_DEADLINE: Duration = Duration::from_millis(4500);

/// Runs the daemon with the config at `path`; returns the process exit code.
pub fn run(path: &Path) -> i32 {
    let resolved = match config::load(path) {
        Ok(r) => r,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("fieldgate: invalid config, not starting");
            return EXIT_CONFIG;
        }
    };
    // A large config's parse tree is garbage now: give its pages back.
    crate::heap::release_free_memory();
    if let Err(e) = crate::descriptors::ensure(crate::descriptors::needed(&resolved)) {
        eprintln!("fieldgate: {e}");
        eprintln!("fieldgate: not starting");
        return EXIT_CONFIG;
    }
    let logs = telemetry::init_logging(resolved.gateway.log_level, resolved.gateway.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fieldgate")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fieldgate: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve(path.to_path_buf(), resolved, logs)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fieldgate: {e:#}");
            1
        }
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn serve(path: PathBuf, resolved: Resolved, logs: LogControl) -> anyhow::Result<()> {
    let metrics = Metrics::new()?;
    let health = Health::default();
    let drivers = fieldgate_drivers::enabled_drivers().join(",");
    metrics
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), &drivers])
        .set(1);
    metrics.config_last_reload.set(now_seconds());
    // Both results exist from the start (at 0), so rates and alerts on
    // them work before the first reload.
    for result in ["ok", "invalid", "rolled_back"] {
        metrics.config_reloads.with_label_values(&[result]);
    }
    let cancel = CancellationToken::new();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    // The watcher starts before the files are hashed and before anything
    // (the status page, the broker) shows that the gateway is up: a save
    // made from then on is seen, not lost in the start-up.
    let mut watcher = match reload::watch(&path) {
        Ok(mut w) => {
            w.set_sources(&resolved.sources);
            Some(w)
        }
        Err(e) => {
            tracing::warn!(
                "not watching {} for changes ({e}); reload with SIGHUP",
                path.display()
            );
            None
        }
    };
    let mut loaded_hash = file_hash(&path, &resolved.sources).await;
    let mut loaded_stamp = crate::settle::Loaded::take(&path, &resolved.sources).await;
    let info = crate::http::GatewayInfo::new(&path, &resolved, loaded_hash.clone());
    let http = match resolved.gateway.metrics_listen {
        Some(addr) => {
            let state = crate::http::HttpState {
                metrics: metrics.clone(),
                health: health.clone(),
                info: info.clone(),
            };
            Some(crate::http::serve(addr, state, cancel.clone()).await?)
        }
        None => None,
    };

    crate::clock::set_kernel_check(resolved.gateway.clock_check);
    tokio::spawn(crate::clock::watch(
        metrics.clone(),
        health.clone(),
        cancel.clone(),
    ));

    #[cfg(feature = "broker")]
    let _broker = match &resolved.broker {
        Some(b) => Some(
            crate::broker::start_async(crate::broker::BrokerOptions {
                listen_v5: b.listen_v5,
                ..crate::broker::BrokerOptions::new(b.listen)
            })
            .await?,
        ),
        None => None,
    };
    #[cfg(not(feature = "broker"))]
    let _broker = ();
    // Tests only (cargo feature `fault-injection`, armed by an environment
    // variable): SIGUSR2 ends the broker thread.
    #[cfg(all(feature = "broker", feature = "fault-injection"))]
    if let Some(b) = &_broker {
        crate::broker::fault::arm_from_env(b.fault_trigger());
    }
    let mut failure: Option<anyhow::Error> = None;

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        devices = resolved.devices.len(),
        config = %path.display(),
        "fieldgate starting"
    );
    set_config_hash(&metrics, loaded_hash.as_deref());

    let mut supervisor = Supervisor::new(metrics.clone(), health.clone());
    let empty = Resolved {
        devices: Vec::new(),
        sessions: Vec::new(),
        ..resolved.clone()
    };
    supervisor.apply(&empty, &resolved).await;
    info.set_devices(supervisor.probes());
    let mut current = resolved;
    let publisher = health::spawn_publisher(
        info.clone(),
        metrics.clone(),
        health.clone(),
        cancel.clone(),
    );
    publisher.set_target(health_target(&supervisor, &current));
    // A reload under watch (`gateway.reload.probation`).
    let mut on_probation: Option<Probation> = None;

    // systemd: ready once the config is loaded and every task started; the
    // watchdog is pinged while this loop keeps answering its probes.
    let notifier = sdnotify::Notifier::from_env();
    let (probe_tx, mut probes) = tokio::sync::mpsc::channel::<sdnotify::Probe>(1);
    if let Some(n) = &notifier {
        n.notify(&format!(
            "READY=1\nSTATUS=running {} devices",
            current.devices.len()
        ));
        if let Some(interval) = sdnotify::watchdog_interval() {
            tokio::spawn(sdnotify::watchdog(
                n.clone(),
                interval,
                probe_tx,
                cancel.clone(),
            ));
        }
    }

    let mut settling: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> =
        None;
    loop {
        // Set by a config change or SIGHUP: the files' stamps and hash as
        // read, and whether unchanged included files may be taken over (a
        // save: yes; SIGHUP reads everything again).
        let mut load_now: Option<(crate::settle::Loaded, Option<String>, bool)> = None;
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            Some(probe) = probes.recv() => { let _ = probe.send(()); }
            _ = broker_ended(&_broker) => {
                tracing::error!("the embedded MQTT broker stopped: stopping so that the service manager restarts fieldgate");
                failure = Some(anyhow::anyhow!("the embedded MQTT broker stopped"));
                break;
            }
            changed = watched(&mut watcher), if settling.is_none() => {
                if changed.is_none() {
                    tracing::warn!("config watcher stopped; reload with SIGHUP");
                    watcher = None;
                    continue;
                }
                // Read only once every file of the config (main, included,
                // profiles) written in place stopped changing.
                let (main, sources, loaded) =
                    (path.clone(), current.sources.clone(), loaded_stamp.clone());
                let settle = current.gateway.reload_settle;
                settling = Some(Box::pin(async move {
                    crate::settle::settled_all(main, &sources, loaded, settle).await;
                }));
            }
            _ = async { if let Some(s) = settling.as_mut() { s.await } }, if settling.is_some() => {
                settling = None;
                let stamp = crate::settle::Loaded::take(&path, &current.sources).await;
                let hash = file_hash(&path, &current.sources).await;
                if hash.is_some() && hash == loaded_hash {
                    tracing::debug!("config file touched but unchanged");
                    continue;
                }
                tracing::info!("config file changed: reloading {}", path.display());
                load_now = Some((stamp, hash, true));
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading {}", path.display());
                let stamp = crate::settle::Loaded::take(&path, &current.sources).await;
                let hash = file_hash(&path, &current.sources).await;
                load_now = Some((stamp, hash, false));
            }
            _ = sleep_until(on_probation.as_ref().map(|p| p.until)), if on_probation.is_some() => {
                let Some(p) = on_probation.take() else { continue };
                let after = online_of(&metrics, p.before.keys());
                match probation::judge(&p.before, &after) {
                    probation::Verdict::Keep => {
                        tracing::info!("the reload passed its probation: the new config stays");
                    }
                    probation::Verdict::RollBack { reason } => {
                        tracing::warn!(
                            "rolling back to the previous config (the file is left as it is; its next save is tried again): {reason}"
                        );
                        metrics.config_reloads.with_label_values(&["rolled_back"]).inc();
                        apply_gateway_settings(&current, &p.previous, &logs);
                        let summary = supervisor.apply(&current, &p.previous).await;
                        loaded_hash = p.previous_hash;
                        set_config_hash(&metrics, loaded_hash.as_deref());
                        info.loaded(&p.previous, loaded_hash.clone());
                        info.rolled_back(&reason);
                        info.set_devices(supervisor.probes());
                        log_summary(&summary);
                        if let Some(w) = &mut watcher {
                            w.set_sources(&p.previous.sources);
                        }
                        current = p.previous;
                        publisher.set_target(health_target(&supervisor, &current));
                    }
                }
            }
        }

        let Some((stamp, hash, may_reuse)) = load_now else {
            continue;
        };
        let reuse = if may_reuse {
            config::Reuse::new(&current, &path, |p| stamp.get(p))
        } else {
            config::Reuse::default()
        };
        if !reuse.is_empty() {
            tracing::debug!(
                files = reuse.files(),
                "unchanged included files: their devices are kept, not read again"
            );
        }
        let Some(next) = reload(&path, &metrics, &info, reuse).await else {
            continue;
        };
        // A reload while another is on probation ends that probation: the
        // config to go back to is the one running now.
        on_probation = None;
        let previous_hash = std::mem::replace(&mut loaded_hash, hash);
        loaded_stamp = stamp;
        set_config_hash(&metrics, loaded_hash.as_deref());
        apply_gateway_settings(&current, &next, &logs);
        let plan = plan::plan(&current, &next);
        let kept_and_changed = plan.kept_and_changed();
        let before = online_of(&metrics, kept_and_changed.iter());
        supervisor.execute(&plan, &current, &next).await;
        info.loaded(&next, loaded_hash.clone());
        info.set_devices(supervisor.probes());
        log_summary(&plan.summary(&current, &next));
        if let Some(w) = &mut watcher {
            w.set_sources(&next.sources);
        }
        let previous = std::mem::replace(&mut current, next);
        publisher.set_target(health_target(&supervisor, &current));
        let watch_for = current.gateway.reload_probation;
        if !watch_for.is_zero() && plan.changes_devices() {
            tracing::info!(
                devices = before.len(),
                online = before.values().filter(|up| **up).count(),
                "the reload is on probation for {}",
                humantime::format_duration(watch_for)
            );
            on_probation = Some(Probation {
                until: tokio::time::Instant::now() + watch_for,
                previous,
                previous_hash,
                before,
            });
        }
    }

    if let Some(n) = &notifier {
        n.notify("STOPPING=1\nSTATUS=stopping");
    }
    info.set_devices(Vec::new());
    if tokio::time::timeout(STOP_DEADLINE, supervisor.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("clean stop took too long; exiting anyway");
    }
    cancel.cancel();
    if let Some(h) = http {
        h.abort();
    }
    tracing::info!("stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A reload under watch: the config to go back to and the picture of the
/// kept and changed devices just before the reload.
struct Probation {
    until: tokio::time::Instant,
    previous: Resolved,
    previous_hash: Option<String>,
    before: probation::Online,
}

/// Whether each of `names` is online now (`fieldgate_device_up`).
fn online_of<'a>(metrics: &Metrics, names: impl Iterator<Item = &'a String>) -> probation::Online {
    names
        .map(|n| (n.clone(), metrics.devices.is_up(n) == Some(true)))
        .collect()
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where `G/$health` goes for the config `current`: its gateway topic,
/// through the gateway's session, every `gateway.healthInterval`.
fn health_target(supervisor: &Supervisor, current: &Resolved) -> Option<health::Target> {
    Some(health::Target {
        topic: health::topic(&current.gateway_topic).into(),
        session: supervisor.gateway_session(current)?,
        interval: current.gateway.health_interval,
    })
}

/// Resolves once the embedded broker's thread has ended; never without one.
#[cfg(feature = "broker")]
async fn broker_ended(broker: &Option<crate::broker::EmbeddedBroker>) {
    match broker {
        Some(b) => b.ended().await,
        None => std::future::pending().await,
    }
}

/// Without the embedded broker there is nothing to watch.
#[cfg(not(feature = "broker"))]
async fn broker_ended(_: &()) {
    std::future::pending().await
}

/// Applies the gateway-wide settings that can change live (the log level)
/// and warns about those that need a restart.
fn apply_gateway_settings(old: &Resolved, new: &Resolved, logs: &LogControl) {
    if old.gateway.log_level != new.gateway.log_level {
        logs.set_level(new.gateway.log_level);
        tracing::info!(level = ?new.gateway.log_level, "log level changed");
    }
    crate::clock::set_kernel_check(new.gateway.clock_check);
    if old.gateway.log_format != new.gateway.log_format {
        tracing::warn!("gateway.log.format changed: takes effect after a restart");
    }
    if old.gateway.metrics_listen != new.gateway.metrics_listen {
        tracing::warn!("gateway.metrics.listen changed: takes effect after a restart");
    }
    if old.broker != new.broker {
        tracing::warn!("broker changed: the embedded broker changes after a restart");
    }
}

fn log_summary(summary: &DiffSummary) {
    tracing::info!(
        added = ?summary.added,
        changed = ?summary.changed,
        removed = ?summary.removed,
        unchanged = summary.unchanged.len(),
        moved = ?summary.moved,
        sessions_started = ?summary.sessions_started,
        sessions_stopped = ?summary.sessions_stopped,
        "config applied"
    );
}

/// The content hash of the config file and of the files it includes (see
/// [`reload::sources_hash`]), `None` if the config cannot be read (or is
/// larger than a config may be).
async fn file_hash(path: &Path, sources: &config::sources::Sources) -> Option<String> {
    let path = path.to_path_buf();
    let sources = sources.clone();
    tokio::task::spawn_blocking(move || reload::sources_hash(&path, &sources))
        .await
        .ok()?
}

fn set_config_hash(metrics: &Metrics, hash: Option<&str>) {
    metrics.config_info.reset();
    if let Some(h) = hash {
        metrics.config_info.with_label_values(&[h]).set(1);
    }
}

/// Waits for the watcher's next trigger; never fires without a watcher.
async fn watched(watcher: &mut Option<reload::ConfigWatcher>) -> Option<()> {
    match watcher {
        Some(w) => w.changed.recv().await,
        None => std::future::pending().await,
    }
}

/// Loads the config again; an invalid one changes nothing and is reported
/// in the log and the reload metric.
async fn reload(
    path: &Path,
    metrics: &Metrics,
    info: &crate::http::GatewayInfo,
    reuse: config::Reuse,
) -> Option<Resolved> {
    let p = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || {
        let loaded = config::load_reusing(&p, reuse);
        crate::heap::release_free_memory();
        loaded
    })
    .await;
    match loaded {
        Ok(Ok(next)) => {
            if let Err(e) = crate::descriptors::ensure(crate::descriptors::needed(&next)) {
                metrics.config_reloads.with_label_values(&["invalid"]).inc();
                tracing::error!("config not reloaded: {e}");
                return None;
            }
            metrics.config_reloads.with_label_values(&["ok"]).inc();
            metrics.config_last_reload.set(now_seconds());
            info.reloaded(None);
            Some(next)
        }
        Ok(Err(errors)) => {
            metrics.config_reloads.with_label_values(&["invalid"]).inc();
            for e in &errors.0 {
                tracing::error!("config not reloaded: {e}");
            }
            info.reloaded(Some(&errors));
            None
        }
        Err(e) => {
            tracing::error!("config reload failed: {e}");
            None
        }
    }
}
