//! Logging setup, the Prometheus registry with every fieldgate metric family,
//! and the reasons the daemon is degraded (gathered with the rest of the
//! health facts by [`crate::health`]).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::config::types::{LogFormat, LogLevel};

mod device_series;
pub use device_series::{DeviceMetrics, DeviceSeries, SetResult};

/// The `EnvFilter` directive of a configured log level.
fn level_directive(level: LogLevel) -> String {
    let level = match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // The embedded broker logs every connection at INFO: keep it quieter.
    // The OPC-UA library logs every failed attempt several times at ERROR,
    // while the driver reports each distinct reason once: its own logs show
    // at `debug` and `trace` only. The same for tokio-modbus, which warns
    // once per byte it drops while looking for a frame (a noisy RS-485
    // line would flood the journal); the driver reports the device's
    // errors in its state, its metrics and once per change in the log.
    match level {
        "trace" | "debug" => format!("{level},rumqttd=warn"),
        _ => format!(
            "{level},rumqttd=warn,opcua_client=off,opcua_core=off,opcua_crypto=off,opcua_types=off,tokio_modbus=off"
        ),
    }
}

/// Changes the log level of the running process (hot reload).
pub struct LogControl {
    handle: Option<
        tracing_subscriber::reload::Handle<
            tracing_subscriber::EnvFilter,
            tracing_subscriber::Registry,
        >,
    >,
    from_env: bool,
}

impl LogControl {
    /// Applies `level` from a reloaded config. `RUST_LOG`, when set, keeps
    /// precedence, as at start-up.
    pub fn set_level(&self, level: LogLevel) {
        if self.from_env {
            return;
        }
        if let Some(h) = &self.handle {
            let filter = tracing_subscriber::EnvFilter::new(level_directive(level));
            if let Err(e) = h.reload(filter) {
                tracing::warn!("cannot change the log level: {e}");
            }
        }
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` (when set and not
/// empty) overrides `level`.
/// No ANSI colours unless stderr is a terminal (journald-friendly). The
/// level can be changed later through the returned [`LogControl`]; the
/// format is fixed for the life of the process.
pub fn init_logging(level: LogLevel, format: LogFormat) -> LogControl {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|_| tracing_subscriber::EnvFilter::try_from_default_env().ok());
    let from_env = env.is_some();
    let filter = env.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level_directive(level)));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text if stderr_is_journal() => fmt
            .event_format(JournalFormat(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false),
            ))
            .boxed(),
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(fmt);
    // The embedded broker's routine disconnects at DEBUG, not ERROR.
    #[cfg(feature = "broker")]
    let subscriber = subscriber.with(crate::broker::RoutineBrokerEvents);
    let installed = subscriber.try_init().is_ok();
    LogControl {
        handle: installed.then_some(handle),
        from_env,
    }
}

/// True when stderr is the journal stream systemd named in `JOURNAL_STREAM`
/// (`DEVICE:INODE`), not merely inherited by a child of a journald service.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream
        .to_string_lossy()
        .split_once(':')
        .and_then(|(d, i)| Some((d.trim().parse::<u64>().ok()?, i.trim().parse::<u64>().ok()?)))
    else {
        return false;
    };
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Prefixes every event with its syslog priority (`<3>` error … `<7>` trace),
/// as journald's `SyslogLevelPrefix=` expects.
struct JournalFormat<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The syslog priority of a tracing level (debug and trace both map to 7).
fn syslog_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        tracing::Level::DEBUG | tracing::Level::TRACE => 7,
    }
}

/// Every metric family fieldgate exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `fieldgate_build_info{version,drivers}` = 1
    pub build_info: IntGaugeVec,
    /// `fieldgate_device_{up,reads_total,read_errors_total,poll_duration_seconds,set_commands_total}`
    pub devices: DeviceMetrics,
    /// `fieldgate_mqtt_connected{session,server}` (one series per session)
    pub mqtt_connected: IntGaugeVec,
    /// `fieldgate_mqtt_published_total{session}`
    pub mqtt_published: IntCounterVec,
    /// `fieldgate_mqtt_reconnects_total{session}`
    pub mqtt_reconnects: IntCounterVec,
    /// `fieldgate_mqtt_store_messages{session}`
    pub mqtt_store_messages: IntGaugeVec,
    /// `fieldgate_mqtt_store_bytes{session}`
    pub mqtt_store_bytes: IntGaugeVec,
    /// `fieldgate_mqtt_dropped_total{session,reason}`
    pub mqtt_dropped: IntCounterVec,
    /// `fieldgate_mqtt_handover_timeouts_total{session}`
    pub mqtt_handover_timeouts: IntCounterVec,
    /// `fieldgate_mqtt_commands_ignored_total{session,reason}`
    pub mqtt_commands_ignored: IntCounterVec,
    /// `fieldgate_mqtt_reason_codes_total{session,packet,code}`: refusals by the broker
    pub mqtt_reason_codes: IntCounterVec,
    /// `fieldgate_mqtt_store_oldest_age_seconds{session}`
    pub mqtt_store_oldest_age: GaugeVec,
    /// `fieldgate_mqtt_replayed_total{session}`
    pub mqtt_replayed: IntCounterVec,
    /// `fieldgate_mqtt_ack_latency_seconds{session}`
    pub mqtt_ack_latency: HistogramVec,
    /// `fieldgate_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `fieldgate_config_last_reload_timestamp_seconds`
    pub config_last_reload: Gauge,
    /// `fieldgate_clock_synchronized`: 1 while the system clock is trusted.
    pub clock_synchronized: IntGauge,
    /// `fieldgate_config_info{hash}` = 1 for the loaded config's content hash
    pub config_info: IntGaugeVec,
}

impl Metrics {
    /// A session's `fieldgate_mqtt_connected` series: the server of its
    /// `server` label and whether it is connected.
    pub fn mqtt_connection(&self, session: &str) -> Option<(String, bool)> {
        use prometheus::core::Collector as _;
        self.mqtt_connected.collect().iter().find_map(|family| {
            family.get_metric().iter().find_map(|m| {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value())
                };
                (label("session") == Some(session)).then(|| {
                    (
                        label("server").unwrap_or_default().to_owned(),
                        m.get_gauge().get_value() == 1.0,
                    )
                })
            })
        })
    }

    /// Creates and registers every family.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let devices = DeviceMetrics::new()?;
        registry.register(Box::new(devices.clone()))?;
        let config_last_reload = Gauge::new(
            "fieldgate_config_last_reload_timestamp_seconds",
            "Unix time of the last successful config load",
        )?;
        registry.register(Box::new(config_last_reload.clone()))?;
        let clock_synchronized = IntGauge::new(
            "fieldgate_clock_synchronized",
            "1 while the system clock is trusted for timestamps (kernel NTP state, \
             not earlier than the binary), 0 while states carry clockSynchronized: false",
        )?;
        clock_synchronized.set(1);
        registry.register(Box::new(clock_synchronized.clone()))?;
        let mqtt_store_oldest_age = GaugeVec::new(
            Opts::new(
                "fieldgate_mqtt_store_oldest_age_seconds",
                "Age of the oldest message in the session's store (0 when empty)",
            ),
            &["session"],
        )?;
        registry.register(Box::new(mqtt_store_oldest_age.clone()))?;
        let mqtt_ack_latency = HistogramVec::new(
            HistogramOpts::new(
                "fieldgate_mqtt_ack_latency_seconds",
                "Time from handing a QoS 1/2 message to the connection to its PUBACK/PUBCOMP",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["session"],
        )?;
        registry.register(Box::new(mqtt_ack_latency.clone()))?;
        Ok(Self {
            build_info: gauge(
                "fieldgate_build_info",
                "Build information (always 1)",
                &["version", "drivers"],
            )?,
            devices,
            mqtt_connected: gauge(
                "fieldgate_mqtt_connected",
                "1 while the MQTT session is connected; `server`: the server in use (or last used)",
                &["session", "server"],
            )?,
            mqtt_published: counter(
                "fieldgate_mqtt_published_total",
                "Messages handed to the broker",
                &["session"],
            )?,
            mqtt_reconnects: counter(
                "fieldgate_mqtt_reconnects_total",
                "Successful reconnects after a lost connection",
                &["session"],
            )?,
            mqtt_store_messages: gauge(
                "fieldgate_mqtt_store_messages",
                "Messages waiting in the session's store",
                &["session"],
            )?,
            mqtt_store_bytes: gauge(
                "fieldgate_mqtt_store_bytes",
                "Payload bytes waiting in the session's store",
                &["session"],
            )?,
            mqtt_dropped: counter(
                "fieldgate_mqtt_dropped_total",
                "Messages dropped, by reason (see docs/mqtt.md)",
                &["session", "reason"],
            )?,
            mqtt_commands_ignored: counter(
                "fieldgate_mqtt_commands_ignored_total",
                "Commands ($set/$get) not executed, by reason (see docs/mqtt.md)",
                &["session", "reason"],
            )?,
            mqtt_handover_timeouts: counter(
                "fieldgate_mqtt_handover_timeouts_total",
                "Reload hand-overs the old session did not finish in time (its messages were passed on later or kept on disk)",
                &["session"],
            )?,
            mqtt_reason_codes: counter(
                "fieldgate_mqtt_reason_codes_total",
                "Failure reason codes the broker sent (CONNACK, SUBACK, PUBACK, PUBREC)",
                &["session", "packet", "code"],
            )?,
            mqtt_store_oldest_age,
            mqtt_replayed: counter(
                "fieldgate_mqtt_replayed_total",
                "Messages sent after waiting in the store for a connection (stored while offline, unacknowledged before a reconnect, or recovered from disk)",
                &["session"],
            )?,
            mqtt_ack_latency,
            config_reloads: counter(
                "fieldgate_config_reloads_total",
                "Config reloads by result",
                &["result"],
            )?,
            config_last_reload,
            clock_synchronized,
            config_info: gauge(
                "fieldgate_config_info",
                "Content hash of the loaded config file (always 1)",
                &["hash"],
            )?,
            registry,
        })
    }

    /// Forgets a stopped device's series.
    pub fn remove_device(&self, device: &str) {
        self.devices.remove(device);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("encoding metrics failed: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// What `/healthz` reports: reasons the daemon is degraded (empty = healthy).
#[derive(Clone, Default)]
pub struct Health {
    reasons: Arc<Mutex<BTreeMap<String, String>>>,
    warnings: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Health {
    /// Records (or replaces) a degradation under `key`.
    pub fn set_problem(&self, key: &str, reason: String) {
        if let Ok(mut r) = self.reasons.lock() {
            r.insert(key.to_owned(), reason);
        }
    }

    /// Clears the degradation under `key`.
    pub fn clear(&self, key: &str) {
        if let Ok(mut r) = self.reasons.lock() {
            r.remove(key);
        }
    }

    /// Records (or replaces) a warning under `key`: shown by `/healthz`,
    /// without degrading it (the gateway still works, e.g. with an
    /// unsynchronised clock).
    pub fn set_warning(&self, key: &str, warning: String) {
        if let Ok(mut w) = self.warnings.lock() {
            w.insert(key.to_owned(), warning);
        }
    }

    /// Clears the warning under `key`.
    pub fn clear_warning(&self, key: &str) {
        if let Ok(mut w) = self.warnings.lock() {
            w.remove(key);
        }
    }

    /// The current reasons, sorted by key.
    pub fn reasons(&self) -> Vec<String> {
        self.reasons
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The current warnings, sorted by key.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .lock()
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default()
    }
}
