//! Log levels of the embedded broker. rumqttd 0.20 logs ordinary client
//! disconnects at ERROR (`no-connection id 2 is already gone`,
//! `router-drop error=Recv(Disconnected)`, `disconnected error=…ConnectionReset…`),
//! and a user reads ERROR as "something is broken". [`RoutineBrokerEvents`]
//! turns those routine events into DEBUG events (target `rumqttd`, so
//! `RUST_LOG=rumqttd=debug` shows them) and leaves every other rumqttd event
//! — its real errors — as it was.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// A tracing layer that demotes rumqttd's routine ERROR events to DEBUG.
/// Install it outermost (the last `.with(…)`): it drops the ERROR event for
/// every layer and emits the same message again at DEBUG.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoutineBrokerEvents;

impl<S: Subscriber> Layer<S> for RoutineBrokerEvents {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || !is_rumqttd(meta.target()) {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if !is_routine(&fields.message, fields.error.as_deref()) {
            return true;
        }
        // A nested event while this one is being dispatched: it reaches the
        // global subscriber (the daemon installs one); under a thread-scoped
        // subscriber tracing drops it, which only loses a debug line.
        match &fields.error {
            Some(error) => {
                tracing::debug!(target: "rumqttd", %error, "{} (routine; rumqttd logs it as an error)", fields.message)
            }
            None => {
                tracing::debug!(target: "rumqttd", "{} (routine; rumqttd logs it as an error)", fields.message)
            }
        }
        false
    }
}

/// True for events of the rumqttd crate (`rumqttd` or `rumqttd::…`).
fn is_rumqttd(target: &str) -> bool {
    target == "rumqttd" || target.starts_with("rumqttd::")
}

/// True when an ERROR event of rumqttd is part of a client's ordinary
/// coming and going rather than a fault of the broker or of a client.
pub(super) fn is_routine(message: &str, error: Option<&str>) -> bool {
    // The router handling a disconnect twice (a DISCONNECT packet, then the
    // closed socket) or a payload of a connection it already removed.
    if message.starts_with("no-connection id ") && message.ends_with(" is already gone") {
        return true;
    }
    if message == "Connection is already disconnected" {
        return true;
    }
    let error = error.unwrap_or("");
    match message {
        // The router dropped the link of a client that disconnected.
        "router-drop" => error.contains("Disconnected"),
        // The client closed its socket (with or without DISCONNECT), also
        // a TCP health check that connects and closes before CONNECT.
        "disconnected" | "Error while handling MQTT connect packet" => peer_closed(error),
        _ => false,
    }
}

/// True when an I/O error (as rumqttd formats it with `{:?}`) means the
/// other side closed or reset the connection.
fn peer_closed(error: &str) -> bool {
    [
        "ConnectionReset",
        "ConnectionAborted",
        "UnexpectedEof",
        "BrokenPipe",
        "ConnectionClosed",
        "kind: NotConnected",
    ]
    .iter()
    .any(|k| error.contains(k))
}

/// The `message` and `error` fields of an event, as text.
#[derive(Default)]
struct Fields {
    message: String,
    error: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "error" => self.error = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "error" => self.error = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_disconnects_are_routine() {
        assert!(is_routine("no-connection id 2 is already gone", None));
        assert!(is_routine("router-drop", Some("Recv(Disconnected)")));
        assert!(is_routine(
            "disconnected",
            Some(
                r#"Network(Io(Os { code: 104, kind: ConnectionReset, message: "Connection reset by peer" }))"#
            )
        ));
        assert!(is_routine(
            "disconnected",
            Some(r#"Network(Io(Kind(UnexpectedEof)))"#)
        ));
        assert!(is_routine(
            "Error while handling MQTT connect packet",
            Some("Network(Io(Kind(ConnectionAborted)))")
        ));
        assert!(is_routine("Connection is already disconnected", None));
    }

    #[test]
    fn real_errors_stay_errors() {
        assert!(!is_routine(
            "Error while handling MQTT connect packet",
            Some("Network(Protocol(InvalidProtocol))")
        ));
        assert!(!is_routine(
            "disconnected",
            Some("Network(Protocol(PayloadSizeLimitExceeded(2000000)))")
        ));
        assert!(!is_routine("router-drop", Some("Send(Full)")));
        assert!(!is_routine("no space for new connection", None));
        assert!(!is_routine("Remote link error", Some("Recv(Disconnected)")));
        assert!(!is_routine("Server error - V4", Some("Io(AddrInUse)")));
    }

    #[test]
    fn only_rumqttd_targets_are_touched() {
        assert!(is_rumqttd("rumqttd"));
        assert!(is_rumqttd("rumqttd::router::routing"));
        assert!(!is_rumqttd("rumqttdx"));
        assert!(!is_rumqttd("fieldgate::broker"));
    }
}
