//! Fault injection for the embedded broker's end (cargo feature
//! `fault-injection`; never in packaged builds: `cross/build.sh` and the
//! package test build without it, and `tests/package-test.sh` checks the
//! packaged binary has no trace of it).
//!
//! rumqttd 0.20 gives no outside way to end its threads on a running broker
//! (its accept loops `continue` on every error), so a test cannot make the
//! daemon's "broker thread ended" path happen for real. With this feature
//! the broker runs in a child of the thread the daemon watches, and that
//! watched thread panics on request, as it would if rumqttd panicked or
//! returned. rumqttd's own threads keep running until the process exits.
//!
//! The hook is armed only when `FIELDGATE_FAULT_INJECTION` lists
//! `broker-thread`; then SIGUSR2 ends the broker thread.

use std::sync::mpsc;

/// The environment variable that arms the hooks (comma-separated names).
pub const ENV: &str = "FIELDGATE_FAULT_INJECTION";

/// The hook's name in [`ENV`].
pub const BROKER_THREAD: &str = "broker-thread";

/// What the watched broker thread waits for.
#[derive(Debug)]
pub(super) enum Event {
    /// The broker's own thread ended (returned or panicked).
    BrokerEnded,
    /// A test asked the watched thread to end.
    Injected,
}

/// Ends the embedded broker's watched thread (see the module docs).
#[derive(Debug, Clone)]
pub struct Trigger(mpsc::Sender<Event>);

impl Trigger {
    /// Makes the watched broker thread panic; false if it had ended already.
    pub fn end_broker_thread(&self) -> bool {
        self.0.send(Event::Injected).is_ok()
    }
}

/// Sends [`Event::BrokerEnded`] when dropped: also when `body` panics.
struct Ended(mpsc::Sender<Event>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(Event::BrokerEnded);
    }
}

/// A channel for [`run`] and the [`Trigger`] that feeds it.
pub(super) fn channel() -> (Trigger, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    (Trigger(tx), rx)
}

/// Runs `body` (the broker) in a child thread; returns when it ends and
/// panics when `trigger` fires first. Runs on the watched broker thread.
pub(super) fn run(
    body: impl FnOnce() + Send + 'static,
    trigger: &Trigger,
    events: mpsc::Receiver<Event>,
) {
    let ended = Ended(trigger.0.clone());
    let child = std::thread::Builder::new()
        .name("mqtt-broker-run".into())
        .spawn(move || {
            let _ended = ended;
            body();
        });
    if let Err(e) = child {
        tracing::error!("fault injection: cannot start the broker's thread: {e}");
        return;
    }
    match events.recv() {
        Ok(Event::Injected) => {
            tracing::warn!("fault injection: ending the embedded broker's thread");
            panic!("fault injection: the embedded broker's thread was ended on request");
        }
        Ok(Event::BrokerEnded) | Err(_) => {}
    }
}

/// True when [`ENV`] lists `name`.
fn armed(name: &str) -> bool {
    std::env::var(ENV).is_ok_and(|v| v.split(',').any(|n| n.trim() == name))
}

/// With [`BROKER_THREAD`] in [`ENV`]: SIGUSR2 ends the broker thread.
/// Call from the runtime.
pub fn arm_from_env(trigger: Trigger) {
    if !armed(BROKER_THREAD) {
        return;
    }
    let mut usr2 =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("fault injection: cannot handle SIGUSR2: {e}");
                return;
            }
        };
    tracing::warn!(
        "fault injection armed ({ENV}={BROKER_THREAD}): SIGUSR2 ends the embedded broker's thread"
    );
    tokio::spawn(async move {
        if usr2.recv().await.is_some() {
            tracing::warn!("fault injection: SIGUSR2 received");
            trigger.end_broker_thread();
        }
    });
}
