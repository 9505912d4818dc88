//! The per-device metric families (`fieldgate_device_*`), kept as a few
//! plain atomics per device and turned into Prometheus families only when
//! `/metrics` is scraped. A labelled series of the `prometheus` crate keeps
//! its own label strings, bucket bounds and map entry, about 1.2 KiB per
//! device for these five families; a gateway runs thousands of devices.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fieldgate_drivers::ErrorKind;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// Upper bounds (seconds) of the poll-duration histogram's buckets.
pub(super) const POLL_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The results a `$set` command is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetResult {
    /// Every write was applied.
    Ok,
    /// The device refused a write.
    Failed,
    /// The payload was refused before reaching the device.
    Rejected,
}

impl SetResult {
    const ALL: [SetResult; 3] = [SetResult::Ok, SetResult::Failed, SetResult::Rejected];

    /// The metric label for this result.
    pub fn as_str(self) -> &'static str {
        match self {
            SetResult::Ok => "ok",
            SetResult::Failed => "failed",
            SetResult::Rejected => "rejected",
        }
    }
}

/// The live counters of one device.
#[derive(Debug, Default)]
pub struct DeviceSeries {
    up: AtomicI64,
    reads: AtomicU64,
    /// Observations per bucket (not cumulative); above the last bound only
    /// in `poll_count`.
    poll_buckets: [AtomicU64; POLL_BUCKETS.len()],
    poll_count: AtomicU64,
    /// Sum of the observations, as `f64` bits.
    poll_sum: AtomicU64,
    read_errors: [AtomicU64; ErrorKind::ALL.len()],
    set_commands: [AtomicU64; SetResult::ALL.len()],
}

impl DeviceSeries {
    /// `fieldgate_device_up`: 1 when the device answers, 0 when not.
    pub fn set_up(&self, up: bool) {
        self.up.store(i64::from(up), Ordering::Relaxed);
    }

    /// Counts one read cycle.
    pub fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long one poll took.
    pub fn observe_poll(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = POLL_BUCKETS.iter().position(|b| secs <= *b) {
            self.poll_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.poll_count.fetch_add(1, Ordering::Relaxed);
        // A device restarting on reload briefly shares its series with its
        // successor: add, do not overwrite.
        let _ = self
            .poll_sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + secs).to_bits())
            });
    }

    /// Counts one failed read (or the loss of the device) of `kind`.
    pub fn count_error(&self, kind: ErrorKind) {
        self.read_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one `$set` command by its result.
    pub fn count_set(&self, result: SetResult) {
        self.set_commands[result as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The series of every device, registered once as a Prometheus collector.
#[derive(Clone)]
pub struct DeviceMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    descs: Vec<Desc>,
    devices: Mutex<BTreeMap<Box<str>, Arc<DeviceSeries>>>,
}

/// Names and help texts of the families, in [`DeviceMetrics::collect`]'s order.
const FAMILIES: [(&str, &str, &[&str]); 5] = [
    (
        "fieldgate_device_up",
        "1 when the device answers, 0 when offline",
        &["device"],
    ),
    (
        "fieldgate_device_reads_total",
        "Read cycles of a device",
        &["device"],
    ),
    (
        "fieldgate_device_read_errors_total",
        "Failed property reads by kind",
        &["device", "kind"],
    ),
    (
        "fieldgate_device_poll_duration_seconds",
        "Duration of one poll cycle of a device",
        &["device"],
    ),
    (
        "fieldgate_device_set_commands_total",
        "$set commands by result",
        &["device", "result"],
    ),
];

impl DeviceMetrics {
    /// An empty set of device series.
    pub fn new() -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, labels)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    Default::default(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                descs,
                devices: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The series of `device`, created on first use; a restarted device
    /// continues its predecessor's counters.
    pub fn series(&self, device: &str) -> Arc<DeviceSeries> {
        let mut devices = self
            .inner
            .devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(s) = devices.get(device) {
            return Arc::clone(s);
        }
        let s = Arc::new(DeviceSeries::default());
        devices.insert(device.into(), Arc::clone(&s));
        s
    }

    /// Whether `device` is up (`fieldgate_device_up`); `None` when it has
    /// no series (not started, or removed).
    pub fn is_up(&self, device: &str) -> Option<bool> {
        self.inner
            .devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(device)
            .map(|s| s.up.load(Ordering::Relaxed) == 1)
    }

    /// Forgets a removed device's series.
    pub fn remove(&self, device: &str) {
        self.inner
            .devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(device);
    }
}

/// A label pair.
fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

/// A metric with these labels.
fn metric(labels: Vec<proto::LabelPair>) -> proto::Metric {
    let mut m = proto::Metric::default();
    m.set_label(labels);
    m
}

fn counter(labels: Vec<proto::LabelPair>, value: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value as f64);
    let mut m = metric(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<proto::LabelPair>, value: i64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(value as f64);
    let mut m = metric(labels);
    m.set_gauge(g);
    m
}

fn histogram(labels: Vec<proto::LabelPair>, s: &DeviceSeries) -> proto::Metric {
    let mut h = proto::Histogram::default();
    let mut cumulative = 0;
    let buckets = POLL_BUCKETS
        .iter()
        .zip(&s.poll_buckets)
        .map(|(bound, n)| {
            cumulative += n.load(Ordering::Relaxed);
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    h.set_bucket(buckets);
    // Never below the buckets' total, whatever the order of concurrent updates.
    h.set_sample_count(s.poll_count.load(Ordering::Relaxed).max(cumulative));
    h.set_sample_sum(f64::from_bits(s.poll_sum.load(Ordering::Relaxed)));
    let mut m = metric(labels);
    m.set_histogram(h);
    m
}

/// Pushes one counter of `device` per `label` value that has counted, like
/// a lazily created labelled series that appears with its first count.
fn push_counted<'a>(
    family: &mut MetricFamily,
    device: &str,
    label_name: &str,
    counts: impl Iterator<Item = (&'a str, &'a AtomicU64)>,
) {
    for (value, n) in counts {
        let n = n.load(Ordering::Relaxed);
        if n > 0 {
            family.mut_metric().push(counter(
                vec![label("device", device), label(label_name, value)],
                n,
            ));
        }
    }
}

impl Collector for DeviceMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let devices: Vec<(Box<str>, Arc<DeviceSeries>)> = self
            .inner
            .devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(name, s)| (name.clone(), Arc::clone(s)))
            .collect();
        let mut families: Vec<MetricFamily> = FAMILIES
            .iter()
            .zip([
                MetricType::GAUGE,
                MetricType::COUNTER,
                MetricType::COUNTER,
                MetricType::HISTOGRAM,
                MetricType::COUNTER,
            ])
            .map(|((name, help, _), kind)| {
                let mut f = MetricFamily::default();
                f.set_name((*name).to_owned());
                f.set_help((*help).to_owned());
                f.set_field_type(kind);
                f
            })
            .collect();
        for (name, s) in &devices {
            let device = || label("device", name);
            families[0]
                .mut_metric()
                .push(gauge(vec![device()], s.up.load(Ordering::Relaxed)));
            families[1]
                .mut_metric()
                .push(counter(vec![device()], s.reads.load(Ordering::Relaxed)));
            push_counted(
                &mut families[2],
                name,
                "kind",
                ErrorKind::ALL
                    .iter()
                    .map(|k| k.as_str())
                    .zip(&s.read_errors),
            );
            families[3].mut_metric().push(histogram(vec![device()], s));
            push_counted(
                &mut families[4],
                name,
                "result",
                SetResult::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .zip(&s.set_commands),
            );
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};

    fn render(m: &DeviceMetrics) -> String {
        let registry = Registry::new();
        registry.register(Box::new(m.clone())).expect("register");
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn every_family_is_exported_per_device() {
        let m = DeviceMetrics::new().expect("descs");
        let fan = m.series("fan");
        fan.set_up(true);
        fan.count_read();
        fan.count_read();
        fan.observe_poll(Duration::from_millis(3));
        fan.observe_poll(Duration::from_millis(30));
        fan.observe_poll(Duration::from_secs(9));
        fan.count_error(ErrorKind::Timeout);
        fan.count_set(SetResult::Rejected);
        m.series("pump");
        let text = render(&m);
        for line in [
            "fieldgate_device_up{device=\"fan\"} 1",
            "fieldgate_device_up{device=\"pump\"} 0",
            "fieldgate_device_reads_total{device=\"fan\"} 2",
            "fieldgate_device_read_errors_total{device=\"fan\",kind=\"timeout\"} 1",
            "fieldgate_device_set_commands_total{device=\"fan\",result=\"rejected\"} 1",
            "fieldgate_device_poll_duration_seconds_bucket{device=\"fan\",le=\"0.0025\"} 0",
            "fieldgate_device_poll_duration_seconds_bucket{device=\"fan\",le=\"0.005\"} 1",
            "fieldgate_device_poll_duration_seconds_bucket{device=\"fan\",le=\"0.05\"} 2",
            "fieldgate_device_poll_duration_seconds_bucket{device=\"fan\",le=\"5\"} 2",
            "fieldgate_device_poll_duration_seconds_bucket{device=\"fan\",le=\"+Inf\"} 3",
            "fieldgate_device_poll_duration_seconds_count{device=\"fan\"} 3",
            "# TYPE fieldgate_device_poll_duration_seconds histogram",
            "# TYPE fieldgate_device_reads_total counter",
            "# TYPE fieldgate_device_up gauge",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Error kinds and results that never counted are not shown.
        assert!(!text.contains("kind=\"io\""), "{text}");
        assert!(!text.contains("result=\"ok\""), "{text}");
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("fieldgate_device_poll_duration_seconds_sum{device=\"fan\"} ")
            })
            .expect("sum line")
            .parse()
            .expect("number");
        assert!((sum - 9.033).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn a_restarted_device_continues_and_a_removed_one_vanishes() {
        let m = DeviceMetrics::new().expect("descs");
        m.series("fan").count_read();
        m.series("fan").count_read();
        assert!(render(&m).contains("fieldgate_device_reads_total{device=\"fan\"} 2"));
        m.remove("fan");
        assert!(!render(&m).contains("fan"));
    }
}
