//! Whether the system clock can be trusted for timestamps. Boards without a
//! real-time clock boot in 1970 (or at their last shutdown time) and jump
//! when NTP synchronises; readings taken before that carry
//! `"clockSynchronized": false` in their state. Everything that measures
//! time inside the gateway (ages, timeouts, backoff) uses the monotonic
//! clock and is not affected by such a jump.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::telemetry::{Health, Metrics};

/// How often the clock's state is looked at again.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The last answer of [`check`], read where states are built (a load per
/// state; the check itself runs every [`CHECK_INTERVAL`]).
static SYNCHRONIZED: AtomicBool = AtomicBool::new(true);

/// `gateway.clockCheck`: whether [`watch`] asks the kernel (changes with a
/// reload, taken at the next check).
static KERNEL_CHECK: AtomicBool = AtomicBool::new(true);

/// Sets `gateway.clockCheck` for the running [`watch`].
pub(crate) fn set_kernel_check(on: bool) {
    KERNEL_CHECK.store(on, Ordering::Relaxed);
}

/// Whether timestamps can be trusted now (as of the last check).
pub(crate) fn is_synchronized() -> bool {
    SYNCHRONIZED.load(Ordering::Relaxed)
}

/// Why the clock is not trusted, or `None` when it is.
pub(crate) fn check(kernel: bool) -> Option<&'static str> {
    if let Some(floor) = binary_time() {
        if SystemTime::now() < floor {
            return Some("the system clock is earlier than the fieldgate binary");
        }
    }
    if kernel && kernel_unsynchronized() {
        return Some("the kernel reports the system clock as not synchronised (NTP)");
    }
    None
}

/// The modification time of the running binary: a clock earlier than that
/// is certainly wrong (a package keeps its build's times).
fn binary_time() -> Option<SystemTime> {
    std::fs::metadata("/proc/self/exe")
        .and_then(|m| m.modified())
        .ok()
}

/// The kernel's NTP state (`adjtimex`): unsynchronised when it says
/// `TIME_ERROR` or has `STA_UNSYNC` set. Unknown counts as synchronised.
fn kernel_unsynchronized() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: an all-zero timex is a valid argument; with `modes` 0,
        // adjtimex only reads the kernel's state into it.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        // SAFETY: `tx` is a valid, writable timex for the call's duration.
        let state = unsafe { libc::adjtimex(&mut tx) };
        state == libc::TIME_ERROR || (state >= 0 && tx.status & libc::STA_UNSYNC != 0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Checks the clock now and every [`CHECK_INTERVAL`] until `cancel`: sets
/// the flag states read, the `fieldgate_clock_synchronized` gauge, a
/// `/healthz` warning, and logs each change once.
pub(crate) async fn watch(metrics: Metrics, health: Health, cancel: CancellationToken) {
    let mut last: Option<Option<&'static str>> = None;
    loop {
        let now = check(KERNEL_CHECK.load(Ordering::Relaxed));
        if last != Some(now) {
            SYNCHRONIZED.store(now.is_none(), Ordering::Relaxed);
            metrics.clock_synchronized.set(i64::from(now.is_none()));
            match now {
                Some(why) => {
                    tracing::warn!(
                        "{why}: states are marked \"clockSynchronized\": false until it is \
                         (set gateway.clockCheck: false if the host keeps this machine's clock)"
                    );
                    health.set_warning("clock", format!("{why}; timestamps may be wrong"));
                }
                None => {
                    if last.is_some() {
                        tracing::info!("the system clock is synchronised");
                    }
                    health.clear_warning("clock");
                }
            }
            last = Some(now);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_later_than_the_binary_passes_without_the_kernel_test() {
        assert_eq!(check(false), None);
    }
}
