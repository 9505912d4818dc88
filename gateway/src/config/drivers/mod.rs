//! Each driver's part of the config: the keys it takes under `protocol:`
//! and in a property, its checks with located errors, the driver spec a
//! device lowers to, and the lines `fieldgate check` prints for it.
//!
//! Adding a driver: a module here implementing [`DriverConfig`] and one
//! arm in [`of`].

use std::path::Path;

use fieldgate_drivers::{Connection, DeviceSpec, PropertyAddress, PropertySpec};

use super::ctx::Ctx;
use super::devices::ParsedDevice;
use super::resolved::PropertySemantics;
use super::tree::Node;
use super::types::{DriverKind, PropertyConfig};

mod ble;
#[cfg(feature = "ble")]
pub(crate) mod ble_adverts;
mod dummy;
mod modbus;
mod opcua;

/// One driver's config rules. Checks report into the [`Ctx`]; lowering
/// runs on a device whose checks passed.
pub(super) trait DriverConfig: Sync {
    /// The keys the driver takes under a device's `protocol:`.
    fn protocol_keys(&self) -> &'static [&'static str];

    /// The keys a property of this driver takes besides the common ones.
    fn property_keys(&self) -> &'static [&'static str];

    /// Checks the driver keys of property `p` (node `pn`, path `pp`).
    fn check_property(
        &self,
        ctx: &mut Ctx,
        d: &ParsedDevice<'_>,
        p: &PropertyConfig,
        pn: &Node,
        pp: &str,
    );

    /// Checks the device's `protocol:` and the driver's device-wide rules;
    /// relative paths are resolved against `base`.
    fn check_device(&self, ctx: &mut Ctx, base: &Path, d: &ParsedDevice<'_>);

    /// Lowers the device's properties into `specs` and `sems` (one entry
    /// each, in one order) and returns its connection; `None` when the
    /// device cannot run in this build.
    fn build(
        &self,
        base: &Path,
        state_directory: &str,
        d: &ParsedDevice<'_>,
        specs: &mut Vec<PropertySpec>,
        sems: &mut Vec<PropertySemantics>,
    ) -> Option<Connection>;

    /// `fieldgate check`: the device's connection lines (and warnings).
    fn report_connection(&self, out: &mut String, spec: &DeviceSpec);

    /// `fieldgate check`: a property's address, appended to its line.
    fn report_address(&self, line: &mut String, address: &PropertyAddress);

    /// `fieldgate check`: lines after the device's properties.
    fn report_tail(&self, _out: &mut String, _spec: &DeviceSpec) {}
}

/// The config rules of driver `d`.
pub(super) fn of(d: DriverKind) -> &'static dyn DriverConfig {
    match d {
        DriverKind::Dummy => &dummy::Dummy,
        DriverKind::Modbus => &modbus::Modbus,
        DriverKind::Opcua => &opcua::Opcua,
        DriverKind::Ble => &ble::Ble,
    }
}

/// Every driver, for messages that name the drivers a key belongs to.
const ALL: [DriverKind; 4] = [
    DriverKind::Dummy,
    DriverKind::Modbus,
    DriverKind::Opcua,
    DriverKind::Ble,
];

/// The drivers whose `protocol:` takes `key`.
pub(super) fn protocol_key_owners(key: &str) -> Vec<&'static str> {
    ALL.into_iter()
        .filter(|d| of(*d).protocol_keys().contains(&key))
        .map(|d| d.as_str())
        .collect()
}

/// The drivers whose properties take `key`.
pub(super) fn property_key_owners(key: &str) -> Vec<&'static str> {
    ALL.into_iter()
        .filter(|d| of(*d).property_keys().contains(&key))
        .map(|d| d.as_str())
        .collect()
}
