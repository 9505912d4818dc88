//! systemd service notifications (`sd_notify`): `READY=1`, `STOPPING=1`,
//! `STATUS=` and the watchdog's `WATCHDOG=1` pings.
//!
//! The protocol is one datagram per notification to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`), so it is
//! written here with the standard library instead of pulling in a crate. With
//! `NOTIFY_SOCKET` unset every call is a no-op.
//!
//! Watchdog health: a ping is sent only when the tokio runtime still runs
//! timers *and* the daemon's control loop (signals, reloads, the supervisor)
//! answers a probe in time. MQTT connectivity is deliberately not part of it:
//! a broker outage shows on `/healthz` and in the metrics, and must not make
//! systemd restart the service.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, or `None` when it is unset, empty or
    /// unusable (the last case is logged).
    pub(crate) fn from_env() -> Option<Arc<Self>> {
        let target = std::env::var_os("NOTIFY_SOCKET")?;
        let target = target.to_string_lossy();
        if target.is_empty() {
            return None;
        }
        match Self::connect(&target) {
            Ok(n) => Some(Arc::new(n)),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={target} is not usable ({e}); not notifying systemd");
                None
            }
        }
    }

    fn connect(target: &str) -> io::Result<Self> {
        let addr = match target.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(target)?,
        };
        let socket = UnixDatagram::unbound()?;
        // Never block the runtime: a full socket buffer drops the notification.
        socket.set_nonblocking(true)?;
        Ok(Self { socket, addr })
    }

    /// Sends one notification, e.g. `READY=1` or `STATUS=…`; failures are logged.
    pub(crate) fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!("sd_notify {state:?} failed: {e}");
        }
    }
}

/// How often to ping the watchdog: a third of `WATCHDOG_USEC`, or `None` when
/// no watchdog is requested for this process (`WATCHDOG_PID` names another).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_string_lossy().trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 3).max(Duration::from_millis(10)))
}

/// A probe the control loop answers to prove it is responsive.
pub(crate) type Probe = oneshot::Sender<()>;

/// Pings the watchdog every `interval` while the control loop answers the
/// probes sent on `probes` within `interval`; stops when `cancel` fires.
pub(crate) async fn watchdog(
    notifier: Arc<Notifier>,
    interval: Duration,
    probes: mpsc::Sender<Probe>,
    cancel: CancellationToken,
) {
    loop {
        let (tx, rx) = oneshot::channel();
        let answered = tokio::time::timeout(interval, async {
            probes.send(tx).await.is_ok() && rx.await.is_ok()
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            ok = answered => match ok {
                Ok(true) => notifier.notify("WATCHDOG=1"),
                Ok(false) => return,
                Err(_) => tracing::warn!(
                    "control loop did not answer within {interval:?}; withholding the watchdog ping"
                ),
            },
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
