//! Writes to nodes, in order, each converted to the node's own type.

use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AttributeId, DataValue, NodeId, NumericRange, ReadValueId, StatusCode, TimestampsToReturn,
    VariantScalarTypeId, WriteValue,
};

use super::connection::{describe_status, io};
use super::convert;
use crate::{DeviceSpec, DriverError, ErrorKind, Value, WriteOutcome};

/// Writes in order, stopping at the first refusal. The second value is set
/// when the session itself failed (the caller reconnects).
pub(super) async fn write(
    spec: &DeviceSpec,
    nodes: &[Option<NodeId>],
    session: &Session,
    types: &mut [Option<VariantScalarTypeId>],
    writes: &[(usize, Value)],
) -> (WriteOutcome, Option<DriverError>) {
    let mut outcome = WriteOutcome::default();
    for (k, (i, value)) in writes.iter().enumerate() {
        let (Some(Some(node)), Some(p)) = (nodes.get(*i), spec.properties.get(*i)) else {
            outcome.failed = Some((k, DriverError::new(ErrorKind::Rejected, "invalid NodeId")));
            return (outcome, None);
        };
        if types.get(*i).copied().flatten().is_none() {
            // Learn the node's type first, so the Variant matches it.
            if let Ok(Ok(r)) = tokio::time::timeout(
                spec.timeout,
                session.read(
                    &[ReadValueId::from(node.clone())],
                    TimestampsToReturn::Neither,
                    0.0,
                ),
            )
            .await
            {
                if let Some(t) = r
                    .first()
                    .and_then(|dv| dv.value.as_ref())
                    .and_then(|v| v.scalar_type_id())
                {
                    types[*i] = Some(t);
                }
            }
        }
        let target = types
            .get(*i)
            .copied()
            .flatten()
            .unwrap_or_else(|| convert::natural_type(p.data_type));
        let variant = match convert::value_to_variant(value, target) {
            Ok(v) => v,
            Err(e) => {
                outcome.failed = Some((k, e));
                return (outcome, None);
            }
        };
        let wv = WriteValue {
            node_id: node.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: NumericRange::None,
            value: DataValue::value_only(variant),
        };
        let res = tokio::time::timeout(
            spec.timeout + Duration::from_millis(100),
            session.write(&[wv]),
        )
        .await;
        match res {
            Err(_) => {
                let e = DriverError::timeout(spec.timeout);
                outcome.failed = Some((k, e.clone()));
                return (outcome, Some(e));
            }
            Ok(Err(e)) => {
                let e = io(format!("Write failed: {}", describe_status(e.status())));
                outcome.failed = Some((k, e.clone()));
                return (outcome, Some(e));
            }
            Ok(Ok(codes)) => {
                let code = codes
                    .first()
                    .copied()
                    .unwrap_or(StatusCode::BadUnexpectedError);
                if !code.is_good() {
                    outcome.failed = Some((k, convert::status_error(code)));
                    return (outcome, None);
                }
                outcome.applied += 1;
            }
        }
    }
    (outcome, None)
}
