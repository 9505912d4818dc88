//! Northbound dialects: how a session's devices' events (online/offline,
//! state, commands) become MQTT messages. `fieldgate` (today's topics) is
//! published by the device actor itself; `sparkplug` goes through one edge
//! node task per session; `homeassistant` adds discovery configs beside the
//! fieldgate topics. The MQTT session stays dialect-free: a dialect
//! only sets [`crate::mqtt::SessionHooks`] on it.

pub(crate) mod homeassistant;
pub(crate) mod sparkplug;

use crate::config::resolved::SessionSettings;
use crate::mqtt::{self, OutMsg, SessionHandle};
use crate::telemetry::{Health, Metrics};

/// The dialect a session's devices speak.
#[derive(Clone, Default)]
pub enum Dialect {
    /// fieldgate topics: `T`, `T/$state`, `T/$meta`, `T/$set`, …
    #[default]
    Fieldgate,
    /// Sparkplug B through the session's edge node.
    Sparkplug(sparkplug::NodeHandle),
}

/// Starts a session for `settings` and, for Sparkplug B, its edge node.
pub(crate) fn spawn(
    mut settings: SessionSettings,
    metrics: Metrics,
    health: Health,
) -> SessionHandle {
    match settings.sparkplug.clone() {
        None => mqtt::spawn(settings, metrics, health),
        Some(sp) => {
            let (hooks, parts) = sparkplug::prepare(&mut settings, &sp);
            let mut handle = mqtt::spawn_with(settings, metrics.clone(), health, hooks);
            handle.dialect = Dialect::Sparkplug(sparkplug::start(sp, parts, &handle, metrics));
            handle
        }
    }
}

/// Starts a session that takes over a predecessor's undelivered messages
/// (see [`mqtt::spawn_successor`]), and its edge node for Sparkplug B.
pub(crate) fn spawn_successor(
    mut settings: SessionSettings,
    metrics: Metrics,
    health: Health,
) -> (SessionHandle, tokio::sync::oneshot::Sender<Vec<OutMsg>>) {
    match settings.sparkplug.clone() {
        None => mqtt::spawn_successor(settings, metrics, health),
        Some(sp) => {
            let (hooks, parts) = sparkplug::prepare(&mut settings, &sp);
            let (mut handle, takeover) =
                mqtt::spawn_successor_with(settings, metrics.clone(), health, hooks);
            handle.dialect = Dialect::Sparkplug(sparkplug::start(sp, parts, &handle, metrics));
            (handle, takeover)
        }
    }
}
