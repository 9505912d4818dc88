//! Embedded MQTT broker (placeholder until the ops branch lands).

/// A running embedded broker.
pub struct EmbeddedBroker;

/// Starts the embedded broker on `listen`.
pub fn start(listen: std::net::SocketAddr) -> anyhow::Result<EmbeddedBroker> {
    anyhow::bail!("embedded broker on {listen} is not built yet")
}
