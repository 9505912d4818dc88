//! `format: raw`: a value at an offset of one manufacturer or service data
//! entry, with the GATT codec's types and byte orders.

use uuid::Uuid;

use super::Advertisement;
use crate::ble::codec::decode;
use crate::ble::Endian;
use crate::{DataType, DriverError, Value};

/// Which advertisement data a raw field reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RawSource {
    /// Manufacturer data of this company id.
    ManufacturerData(u16),
    /// Service data of this service UUID.
    ServiceData(Uuid),
}

/// A raw field: source, offset, type, byte order.
#[derive(Debug, Clone, PartialEq)]
pub struct RawField {
    /// Where the bytes come from.
    pub source: RawSource,
    /// Offset of the value in the data.
    pub byte_offset: usize,
    /// Byte order of multi-byte values.
    pub byte_order: Endian,
}

impl RawField {
    /// The field's value in `adv`: `None` when the advertisement does not
    /// carry the source, an error when the data is too short.
    pub fn read(&self, adv: &Advertisement, t: DataType) -> Option<Result<Value, DriverError>> {
        let bytes = match self.source {
            RawSource::ManufacturerData(id) => adv.manufacturer_data.get(&id)?,
            RawSource::ServiceData(u) => adv.service_data.get(&u)?,
        };
        Some(decode(bytes, t, self.byte_order, self.byte_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_offsets() {
        let mut adv = Advertisement::default();
        adv.manufacturer_data.insert(0x0059, vec![1, 2, 0x34, 0x12]);
        let f = RawField {
            source: RawSource::ManufacturerData(0x0059),
            byte_offset: 2,
            byte_order: Endian::Little,
        };
        assert_eq!(
            f.read(&adv, DataType::Uint16),
            Some(Ok(Value::Uint(0x1234)))
        );
        let big = RawField {
            byte_order: Endian::Big,
            ..f.clone()
        };
        assert_eq!(
            big.read(&adv, DataType::Uint16),
            Some(Ok(Value::Uint(0x3412)))
        );
        let far = RawField {
            byte_offset: 3,
            ..f.clone()
        };
        assert!(far.read(&adv, DataType::Uint16).unwrap().is_err());
        let other = RawField {
            source: RawSource::ManufacturerData(1),
            ..f
        };
        assert_eq!(other.read(&adv, DataType::Uint16), None);
    }
}
