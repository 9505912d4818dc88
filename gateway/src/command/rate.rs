//! The per-device command rate limit (`mqtt.message.commandRate`): a token
//! bucket refilled at the rate, holding at most twice the rate (the burst;
//! 100 at the default 50 per second).

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// A full bucket for `rate` commands per second.
    pub fn new(rate: f64) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            f64::INFINITY
        };
        let burst = (rate * 2.0).max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token if one is there; false: over the rate.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        if self.rate.is_infinite() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How often a rate-limited device answers "rate limited" at most: once
/// per second (the answers are rate limited too).
pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_then_the_rate() {
        let mut r = RateLimit::new(50.0);
        let t0 = r.at;
        let taken = (0..1000).filter(|_| r.take_at(t0)).count();
        assert_eq!(taken, 100);
        let later = t0 + Duration::from_secs(1);
        let taken = (0..1000).filter(|_| r.take_at(later)).count();
        assert_eq!(taken, 50);
    }
}
