//! The subscription and its monitored items, whose data changes land in the device's pending values.

use std::sync::Arc;
use std::time::Duration;

use opcua::client::{DataChangeCallback, Session};
use opcua::types::{
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, TimestampsToReturn,
};
use tracing::warn;

use super::connection::{describe_status, io};
use super::Pending;
use crate::{DeviceSpec, DriverError};

pub(super) async fn subscribe(
    spec: &DeviceSpec,
    nodes: &[Option<NodeId>],
    session: &Session,
    pending: &Arc<Pending>,
) -> Result<(), DriverError> {
    let p = pending.clone();
    let callback = DataChangeCallback::new(move |dv, item| {
        let handle = item.client_handle() as usize;
        if handle == 0 {
            return;
        }
        if let Ok(mut g) = p.values.lock() {
            g.insert(handle - 1, dv);
        }
        p.notify.notify_one();
    });
    let interval = spec.sync_interval;
    // The server sends a keep-alive when nothing changed for this many intervals.
    let keep_alive_count = (5_000 / interval.as_millis().max(1)).clamp(1, 1000) as u32;
    // At most as many notifications per Publish response as the client
    // decodes in one array (its default limit): asking for 0 (no limit) let
    // a server send more when over a thousand items changed in one
    // publishing interval; the client then refused the message and dropped
    // the session, again at every reconnect.
    let max_notifications =
        u32::try_from(opcua::types::constants::MAX_ARRAY_LENGTH).unwrap_or(1000);
    let sub = tokio::time::timeout(
        spec.timeout + Duration::from_millis(100),
        session.create_subscription(
            interval,
            keep_alive_count * 4,
            keep_alive_count,
            max_notifications,
            0,
            true,
            callback,
        ),
    )
    .await
    .map_err(|_| DriverError::timeout(spec.timeout))?
    .map_err(|e| {
        io(format!(
            "CreateSubscription failed: {}",
            describe_status(e.status())
        ))
    })?;
    let items: Vec<MonitoredItemCreateRequest> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            n.as_ref().map(|n| {
                MonitoredItemCreateRequest::new(
                    n.clone().into(),
                    MonitoringMode::Reporting,
                    MonitoringParameters {
                        client_handle: i as u32 + 1,
                        sampling_interval: interval.as_secs_f64() * 1000.0,
                        queue_size: 1,
                        discard_oldest: true,
                        ..Default::default()
                    },
                )
            })
        })
        .collect();
    // Large devices: create the items in chunks so no request gets too big.
    for chunk in items.chunks(500) {
        let created = tokio::time::timeout(
            spec.timeout * 2,
            session.create_monitored_items(sub, TimestampsToReturn::Neither, chunk.to_vec()),
        )
        .await
        .map_err(|_| DriverError::timeout(spec.timeout * 2))?
        .map_err(|e| {
            io(format!(
                "CreateMonitoredItems failed: {}",
                describe_status(e.status())
            ))
        })?;
        for (req, res) in chunk.iter().zip(&created) {
            if !res.result.status_code.is_good() {
                let i = req.requested_parameters.client_handle as usize - 1;
                let name = spec.properties.get(i).map(|p| &*p.name).unwrap_or("?");
                // The initial Read reports the per-property error; just log here.
                warn!(device = %spec.name, property = name,
                      "opcua: monitored item refused: {}", res.result.status_code);
            }
        }
    }
    Ok(())
}
