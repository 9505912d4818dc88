//! Sparkplug B 3.0: one edge node per MQTT session. NBIRTH/NDEATH with
//! `bdSeq` (NDEATH is the will), DBIRTH/DDATA/DDEATH per device with
//! aliases, `seq`, Rebirth by NCMD, DCMD into the `$set` path, primary host
//! STATE, and historical replay after an outage (see docs/sparkplug.md).

pub(crate) mod bdseq;
pub(crate) mod history;
pub(crate) mod metric;
pub(crate) mod node;
pub(crate) mod proto;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use prost::Message as _;

use crate::config::resolved::{SessionSettings, SparkplugSettings, StoreSettings};
use crate::mqtt::{ConnEvent, SessionHandle, SessionHooks, WillHook};
use crate::telemetry::Metrics;

pub(crate) use node::NodeHandle;

/// The topic namespace of Sparkplug B.
pub(crate) const NAMESPACE: &str = "spBv1.0";
/// The node metric that asks for a rebirth.
pub(crate) const REBIRTH: &str = "Node Control/Rebirth";

/// `spBv1.0/<group>/<kind>/<node>`
pub(crate) fn node_topic(sp: &SparkplugSettings, kind: &str) -> String {
    format!("{NAMESPACE}/{}/{kind}/{}", sp.group_id, sp.edge_node_id)
}

/// `spBv1.0/<group>/<kind>/<node>/<device>`
pub(crate) fn device_topic(sp: &SparkplugSettings, kind: &str, device: &str) -> String {
    format!(
        "{NAMESPACE}/{}/{kind}/{}/{device}",
        sp.group_id, sp.edge_node_id
    )
}

/// `spBv1.0/STATE/<host>`
pub(crate) fn state_topic(host: &str) -> String {
    format!("{NAMESPACE}/STATE/{host}")
}

/// Milliseconds since the Unix epoch.
pub(crate) fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The NDEATH payload: `bdSeq` only.
pub(crate) fn ndeath_payload(bd_seq: u8) -> Vec<u8> {
    proto::Payload {
        timestamp: Some(millis(std::time::SystemTime::now())),
        metrics: vec![bdseq_metric(bd_seq)],
        ..Default::default()
    }
    .encode_to_vec()
}

/// The `bdSeq` metric (Int64, as NBIRTH and NDEATH carry it).
pub(crate) fn bdseq_metric(bd_seq: u8) -> proto::payload::Metric {
    proto::payload::Metric {
        name: Some("bdSeq".into()),
        datatype: Some(proto::DataType::Int64 as u32),
        timestamp: Some(millis(std::time::SystemTime::now())),
        value: Some(proto::payload::metric::Value::LongValue(u64::from(bd_seq))),
        ..Default::default()
    }
}

/// What a session's edge node needs from its preparation.
pub(crate) struct Parts {
    bdseq: Arc<bdseq::BdSeq>,
    conn: flume::Receiver<ConnEvent>,
    history: history::History,
}

/// The session hooks of a Sparkplug session: NDEATH as the will with the
/// `bdSeq` of each CONNECT, no `online` birth, word of connects.
///
/// The outage buffer is the edge node's own (its messages need the `seq`
/// and aliases of the births they follow): a file store's directory and
/// bound go to the node's history, and the session keeps only what is in
/// flight, in memory.
pub(crate) fn prepare(
    settings: &mut SessionSettings,
    sp: &SparkplugSettings,
) -> (SessionHooks, Parts) {
    let bdseq = Arc::new(bdseq::BdSeq::load(sp.bdseq_file.clone()));
    // One event per connect or loss: bounded by how often those happen.
    let (conn_tx, conn) = flume::unbounded();
    let will = {
        let bdseq = bdseq.clone();
        WillHook::new(move |new_connection| {
            let n = if new_connection {
                bdseq.advance()
            } else {
                bdseq.current()
            };
            ndeath_payload(n)
        })
    };
    let hooks = SessionHooks {
        will: Some(will),
        no_birth: true,
        connection: Some(conn_tx),
    };
    let history = history::History::new(&settings.store, settings.message_channel_depth);
    settings.store = StoreSettings::Memory;
    let parts = Parts {
        bdseq,
        conn,
        history,
    };
    (hooks, parts)
}

/// Starts the edge node of `session`.
pub(crate) fn start(
    sp: SparkplugSettings,
    parts: Parts,
    session: &SessionHandle,
    metrics: Metrics,
) -> NodeHandle {
    node::spawn(sp, parts, session.clone(), metrics)
}
