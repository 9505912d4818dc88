//! The result of one benchmark run: one human-readable line, or JSON.

use std::time::Duration;

use crate::counter::Counts;
use crate::measure::{CpuUsage, Memory};

/// What one run measured over its measurement window.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// Scenario and parameters, e.g. `dummy devices=10 properties=10 interval=1s`.
    pub scenario: String,
    /// Values per second the config should produce.
    pub expected_values_per_second: f64,
    /// What arrived during the window.
    pub delivered: Counts,
    /// The window's CPU use by the gateway (its wall-clock length included).
    pub cpu: CpuUsage,
    /// Peak resident memory of the gateway, bytes.
    pub peak_rss_bytes: u64,
    /// The highest `VmRSS` and `RssAnon` sampled during the window.
    pub memory: Memory,
    /// Requests the simulated field devices answered during the window, when
    /// the scenario has such devices.
    pub device_requests: Option<u64>,
}

impl Report {
    fn window(&self) -> Duration {
        self.cpu.elapsed
    }

    fn per_second(&self, n: u64) -> f64 {
        let secs = self.window().as_secs_f64();
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    }

    /// Delivered values per second.
    pub(crate) fn delivered_values_per_second(&self) -> f64 {
        self.per_second(self.delivered.values)
    }

    /// Delivered as a percentage of expected.
    pub(crate) fn delivery_percent(&self) -> f64 {
        if self.expected_values_per_second > 0.0 {
            100.0 * self.delivered_values_per_second() / self.expected_values_per_second
        } else {
            0.0
        }
    }

    /// The highest `RssAnon` sampled in the window, MiB.
    pub(crate) fn anon_mib(&self) -> f64 {
        mib(self.memory.anon)
    }

    /// The highest `VmRSS` sampled in the window, MiB.
    pub(crate) fn rss_mib(&self) -> f64 {
        mib(self.memory.rss)
    }

    /// Peak RSS in MiB.
    pub(crate) fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_bytes as f64 / (1024.0 * 1024.0)
    }

    /// The gateway's CPU-seconds per million delivered values (0 when none
    /// arrived): the cost of one value, independent of the rate.
    pub(crate) fn cpu_seconds_per_million_values(&self) -> f64 {
        if self.delivered.values > 0 {
            self.cpu.cpu_seconds * 1e6 / self.delivered.values as f64
        } else {
            0.0
        }
    }

    /// Device requests per second, when counted.
    pub(crate) fn device_requests_per_second(&self) -> Option<f64> {
        self.device_requests.map(|n| self.per_second(n))
    }

    /// The one-line summary.
    pub(crate) fn line(&self) -> String {
        let requests = self
            .device_requests_per_second()
            .map(|r| format!(", device requests/s {r:.1}"))
            .unwrap_or_default();
        format!(
            "{}: values/s expected {:.1} delivered {:.1} ({:.1}%), states/s {:.1}, \
             errors {}, cpu {:.1}% of one core ({:.2} CPU-s per million values), \
             RssAnon {:.1} MiB, VmRSS {:.1} MiB, peak RSS {:.1} MiB (window {:.1}s){}",
            self.scenario,
            self.expected_values_per_second,
            self.delivered_values_per_second(),
            self.delivery_percent(),
            self.per_second(self.delivered.states),
            self.delivered.errors + self.delivered.malformed,
            self.cpu.percent_of_one_core(),
            self.cpu_seconds_per_million_values(),
            self.anon_mib(),
            self.rss_mib(),
            self.peak_rss_mib(),
            self.window().as_secs_f64(),
            requests,
        )
    }

    /// The same as a JSON object.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.scenario,
            "window_seconds": self.window().as_secs_f64(),
            "expected_values_per_second": self.expected_values_per_second,
            "delivered_values_per_second": self.delivered_values_per_second(),
            "delivery_percent": self.delivery_percent(),
            "states_per_second": self.per_second(self.delivered.states),
            "state_bytes_per_second": self.per_second(self.delivered.bytes),
            "property_errors": self.delivered.errors,
            "malformed_states": self.delivered.malformed,
            "cpu_percent_of_one_core": self.cpu.percent_of_one_core(),
            "cpu_seconds": self.cpu.cpu_seconds,
            "cpu_seconds_per_million_values": self.cpu_seconds_per_million_values(),
            "peak_rss_mib": self.peak_rss_mib(),
            "rss_anon_mib": self.anon_mib(),
            "vm_rss_mib": self.rss_mib(),
            "device_requests_per_second": self.device_requests_per_second(),
        })
    }
}

/// Bytes as MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Latencies of repeated runs of one scenario.
pub(crate) struct Latencies {
    /// What was measured.
    pub scenario: String,
    /// One per run, sorted.
    pub sorted: Vec<std::time::Duration>,
}

impl Latencies {
    /// Sorts `runs`.
    pub(crate) fn new(scenario: String, mut runs: Vec<std::time::Duration>) -> Self {
        runs.sort();
        Self {
            scenario,
            sorted: runs,
        }
    }

    fn ms(d: std::time::Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    /// The median (mean of the middle two for an even count); zero when empty.
    pub(crate) fn median(&self) -> std::time::Duration {
        let n = self.sorted.len();
        match n {
            0 => std::time::Duration::ZERO,
            _ if n % 2 == 1 => self.sorted[n / 2],
            _ => (self.sorted[n / 2 - 1] + self.sorted[n / 2]) / 2,
        }
    }

    /// One human-readable line.
    pub(crate) fn line(&self) -> String {
        let all: Vec<String> = self
            .sorted
            .iter()
            .map(|d| format!("{:.0}", Self::ms(*d)))
            .collect();
        format!(
            "{}: runs {}, median {:.0} ms, min {:.0} ms, max {:.0} ms (all, sorted: {} ms)",
            self.scenario,
            self.sorted.len(),
            Self::ms(self.median()),
            self.sorted.first().map(|d| Self::ms(*d)).unwrap_or(0.0),
            self.sorted.last().map(|d| Self::ms(*d)).unwrap_or(0.0),
            all.join(", ")
        )
    }

    /// The same as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.scenario,
            "runs": self.sorted.len(),
            "median_ms": Self::ms(self.median()),
            "min_ms": self.sorted.first().map(|d| Self::ms(*d)),
            "max_ms": self.sorted.last().map(|d| Self::ms(*d)),
            "sorted_ms": self.sorted.iter().map(|d| Self::ms(*d)).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = std::time::Duration::from_millis;
        let odd = Latencies::new("x".into(), vec![ms(30), ms(10), ms(20)]);
        assert_eq!(odd.median(), ms(20));
        assert_eq!(odd.sorted, vec![ms(10), ms(20), ms(30)]);
        let even = Latencies::new("x".into(), vec![ms(40), ms(10), ms(20), ms(30)]);
        assert_eq!(even.median(), ms(25));
        assert!(even.line().contains("median 25 ms, min 10 ms, max 40 ms"));
        assert_eq!(even.json()["runs"], 4);
    }

    #[test]
    fn rates_and_line() {
        let r = Report {
            scenario: "dummy devices=2 properties=5 interval=1s".into(),
            expected_values_per_second: 10.0,
            delivered: Counts {
                states: 40,
                values: 200,
                ..Counts::default()
            },
            cpu: CpuUsage {
                elapsed: Duration::from_secs(20),
                cpu_seconds: 1.0,
            },
            peak_rss_bytes: 12 << 20,
            memory: Memory {
                rss: 11 << 20,
                anon: 3 << 20,
            },
            device_requests: Some(60),
        };
        assert!((r.delivered_values_per_second() - 10.0).abs() < 1e-9);
        assert!((r.delivery_percent() - 100.0).abs() < 1e-9);
        let line = r.line();
        assert!(
            line.contains("expected 10.0 delivered 10.0 (100.0%)"),
            "{line}"
        );
        assert!(line.contains("cpu 5.0% of one core"), "{line}");
        // 1 CPU-second for 200 values: 5 000 CPU-seconds per million.
        assert!(
            line.contains("(5000.00 CPU-s per million values)"),
            "{line}"
        );
        assert_eq!(r.json()["cpu_seconds_per_million_values"], 5000.0);
        assert!(
            line.contains("RssAnon 3.0 MiB, VmRSS 11.0 MiB, peak RSS 12.0 MiB"),
            "{line}"
        );
        assert_eq!(r.json()["rss_anon_mib"], 3.0);
        assert!(
            line.ends_with("(window 20.0s), device requests/s 3.0"),
            "{line}"
        );
        assert_eq!(r.json()["states_per_second"], 2.0);
        assert_eq!(r.json()["device_requests_per_second"], 3.0);
    }
}
