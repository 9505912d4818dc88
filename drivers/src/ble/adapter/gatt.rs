//! GATT reads, writes and notifications of one connected device's characteristics.

use std::time::{Instant, SystemTime};

use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _, ValueNotification, WriteType};
use btleplug::platform::Peripheral;
use tokio::sync::oneshot;

use crate::ble::codec::{decode, encode, splice};
use crate::ble::Access;
use crate::{
    DeviceEvent, DeviceLink, DeviceSpec, DriverError, ErrorKind, ReadCause, Readings, Value,
    WriteOutcome,
};

use super::io;
use super::session::Bound;

/// The connected device as the session loop uses it.
pub(super) struct Ctx<'a> {
    pub(super) spec: &'a DeviceSpec,
    pub(super) peripheral: &'a Peripheral,
    pub(super) bound: &'a [Bound],
}

impl Ctx<'_> {
    /// Reads the polled properties (and, when `all`, the readable notify
    /// ones) once per characteristic and reports them. Errs when the
    /// connection is gone.
    pub(super) async fn read(
        &self,
        link: &DeviceLink,
        cause: ReadCause,
        all: bool,
        errors: &mut [(usize, DriverError)],
    ) -> Result<(), DriverError> {
        let started = Instant::now();
        let mut values: Vec<(usize, Result<Value, DriverError>)> = Vec::new();
        let mut cache: Vec<(&Characteristic, Result<Vec<u8>, DriverError>)> = Vec::new();
        for b in self.bound {
            let wanted = b.address.access.polled()
                || (all
                    && b.address.access == Access::Notify
                    && b.characteristic.properties.contains(CharPropFlags::READ));
            if !wanted {
                continue;
            }
            let bytes = match cache.iter().find(|(c, _)| *c == &b.characteristic) {
                Some((_, r)) => r.clone(),
                None => {
                    let r = self.read_bytes(&b.characteristic).await;
                    cache.push((&b.characteristic, r.clone()));
                    r
                }
            };
            let value = bytes.and_then(|bytes| {
                decode(
                    &bytes,
                    self.data_type(b.index),
                    b.address.byte_order,
                    b.address.byte_offset,
                )
            });
            values.push((b.index, value));
        }
        let failures = cache.iter().filter(|(_, r)| r.is_err()).count();
        if failures > 0 && !self.still_connected().await {
            return Err(io("disconnected"));
        }
        values.extend(errors.iter().map(|(i, e)| (*i, Err(e.clone()))));
        if values.is_empty() {
            return Ok(());
        }
        values.sort_by_key(|(i, _)| *i);
        let readings = Readings {
            at: SystemTime::now(),
            cause,
            values,
            duration: Some(started.elapsed()),
        };
        link.events
            .send(DeviceEvent::Readings(readings))
            .await
            .map_err(|_| io("device stopped"))
    }

    pub(super) async fn read_bytes(&self, c: &Characteristic) -> Result<Vec<u8>, DriverError> {
        match tokio::time::timeout(self.spec.timeout, self.peripheral.read(c)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(DriverError::new(
                ErrorKind::Exception,
                format!("read failed: {e}"),
            )),
            Err(_) => Err(DriverError::timeout(self.spec.timeout)),
        }
    }

    pub(super) async fn still_connected(&self) -> bool {
        matches!(
            tokio::time::timeout(self.spec.timeout, self.peripheral.is_connected()).await,
            Ok(Ok(true))
        )
    }

    pub(super) fn data_type(&self, index: usize) -> crate::DataType {
        self.spec
            .properties
            .get(index)
            .map(|p| p.data_type)
            .unwrap_or(crate::DataType::Bytes)
    }

    /// Reports the properties bound to a notifying characteristic.
    pub(super) async fn notified(&self, link: &DeviceLink, n: ValueNotification) -> Result<(), ()> {
        let values: Vec<(usize, Result<Value, DriverError>)> = self
            .bound
            .iter()
            .filter(|b| {
                b.address.access == Access::Notify
                    && b.characteristic.uuid == n.uuid
                    && b.characteristic.service_uuid == n.service_uuid
            })
            .map(|b| {
                (
                    b.index,
                    decode(
                        &n.value,
                        self.data_type(b.index),
                        b.address.byte_order,
                        b.address.byte_offset,
                    ),
                )
            })
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        let readings = Readings {
            at: SystemTime::now(),
            cause: ReadCause::Poll,
            values,
            duration: None,
        };
        link.events
            .send(DeviceEvent::Readings(readings))
            .await
            .map_err(drop)
    }

    /// Applies writes in order, stopping at the first failure. Errs when the
    /// connection is gone (after replying).
    pub(super) async fn write(
        &self,
        writes: Vec<(usize, Value)>,
        reply: oneshot::Sender<WriteOutcome>,
    ) -> Result<(), DriverError> {
        let mut outcome = WriteOutcome::default();
        for (n, (index, value)) in writes.into_iter().enumerate() {
            match self.write_one(index, &value).await {
                Ok(()) => outcome.applied += 1,
                Err(e) => {
                    outcome.failed = Some((n, e));
                    break;
                }
            }
        }
        let failed_io = matches!(&outcome.failed, Some((_, e)) if e.kind != ErrorKind::Rejected && e.kind != ErrorKind::NotFound);
        let _ = reply.send(outcome);
        if failed_io && !self.still_connected().await {
            return Err(io("disconnected"));
        }
        Ok(())
    }

    pub(super) async fn write_one(&self, index: usize, value: &Value) -> Result<(), DriverError> {
        let rejected = |m: &str| DriverError::new(ErrorKind::Rejected, m);
        let p = self
            .spec
            .properties
            .get(index)
            .ok_or_else(|| DriverError::new(ErrorKind::NotFound, "no such property"))?;
        if !p.writable {
            return Err(rejected("property is not writable"));
        }
        let Some(b) = self.bound.iter().find(|b| b.index == index) else {
            return Err(DriverError::new(
                ErrorKind::NotFound,
                "characteristic not resolved on the device",
            ));
        };
        if !b.address.access.writable() {
            return Err(rejected("property access is not write or readWrite"));
        }
        let encoded = encode(value, p.data_type, b.address.byte_order)?;
        let bytes = if b.address.byte_offset == 0 {
            encoded
        } else if b.characteristic.properties.contains(CharPropFlags::READ) {
            let current = self.read_bytes(&b.characteristic).await?;
            splice(&current, b.address.byte_offset, &encoded)
        } else {
            splice(&[], b.address.byte_offset, &encoded)
        };
        let kind = if b.characteristic.properties.contains(CharPropFlags::WRITE) {
            WriteType::WithResponse
        } else {
            WriteType::WithoutResponse
        };
        match tokio::time::timeout(
            self.spec.timeout,
            self.peripheral.write(&b.characteristic, &bytes, kind),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DriverError::new(
                ErrorKind::Exception,
                format!("write failed: {e}"),
            )),
            Err(_) => Err(DriverError::timeout(self.spec.timeout)),
        }
    }
}
