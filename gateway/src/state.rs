//! Device state objects: normalization of raw readings (scale/offset, enum
//! labels), per-property errors, and the publish policy (on-change with
//! deadbands, heartbeat). Produces the JSON payloads of `T` and `T/$meta`.

use std::time::Instant;

use fieldgate_drivers::Readings;

use crate::config::resolved::DeviceSettings;

/// The live state of one device and its publish bookkeeping.
pub struct DeviceState {
    _todo: (),
}

impl DeviceState {
    /// A device with no readings yet.
    pub fn new(settings: &DeviceSettings) -> Self {
        let _ = settings;
        todo!()
    }

    /// Folds `readings` into the state. Returns the state payload (plain JSON,
    /// not yet base64) when the publish policy says to publish now.
    pub fn apply(&mut self, readings: &Readings, now: Instant) -> Option<Vec<u8>> {
        let _ = (readings, now);
        todo!()
    }

    /// When a heartbeat publish is next due (`None`: no heartbeat).
    pub fn heartbeat_due(&self) -> Option<Instant> {
        todo!()
    }

    /// The current state payload (plain JSON), marking it published at `now`.
    pub fn publish_now(&mut self, now: Instant) -> Vec<u8> {
        let _ = now;
        todo!()
    }
}

/// The retained `T/$meta` payload (plain JSON).
pub fn meta_payload(settings: &DeviceSettings) -> Vec<u8> {
    let _ = settings;
    todo!()
}
