//! `$set` commands: decoding and validating a request against the device's
//! properties (all-or-nothing), and building the `$set/result` reply.

use fieldgate_drivers::{DriverError, Value};

use crate::config::resolved::DeviceSettings;
use crate::config::types::PayloadEncode;

/// Largest `$set` payload accepted, counted before base64 decoding.
pub const MAX_SET_PAYLOAD: usize = 64 * 1024;

/// A validated `$set`: raw writes in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct SetRequest {
    /// The request's `$id`, echoed in the result.
    pub id: Option<serde_json::Value>,
    /// `(property index, raw value)` in the order given in the request.
    pub writes: Vec<(usize, Value)>,
}

/// A `$set` that failed validation: nothing may be written.
#[derive(Debug, Clone, PartialEq)]
pub struct SetRejection {
    /// The request's `$id`, if it could be read.
    pub id: Option<serde_json::Value>,
    /// Property name (or `$payload`) → reason, for every problem found.
    pub errors: Vec<(String, String)>,
}

/// Decodes (per `encode`) and validates a `$set` payload.
pub fn parse_set(
    payload: &[u8],
    encode: PayloadEncode,
    device: &DeviceSettings,
) -> Result<SetRequest, SetRejection> {
    let _ = (payload, encode, device);
    todo!()
}

/// The `$set/result` payload (plain JSON, not yet base64) for a request that
/// reached the device: `applied` holds the published-unit values of the first
/// `applied` writes, `failed` the write the device refused.
pub fn result_payload(
    device: &DeviceSettings,
    request: &SetRequest,
    applied: usize,
    failed: Option<(usize, &DriverError)>,
) -> Vec<u8> {
    let _ = (device, request, applied, failed);
    todo!()
}

/// The `$set/result` payload for a rejected request.
pub fn rejection_payload(rejection: &SetRejection) -> Vec<u8> {
    let _ = rejection;
    todo!()
}
