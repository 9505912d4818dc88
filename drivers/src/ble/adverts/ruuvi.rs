//! RuuviTag data format 5 "RAWv2"
//! (<https://docs.ruuvi.com/communication/bluetooth-advertisements/data-format-5-rawv2>):
//! manufacturer data of company 0x0499, 24 bytes big-endian: format 5,
//! temperature int16 × 0.005 °C, humidity uint16 × 0.0025 %, pressure uint16
//! plus 50000 Pa, acceleration x/y/z int16 mG, power info uint16 (11 bits
//! battery voltage above 1.6 V in mV, 5 bits TX power above −40 dBm in 2 dBm
//! steps), movement counter uint8, measurement sequence uint16, MAC. The
//! largest value of each field means "not available": such fields are left out.

use super::{field, invalid, Advertisement, DecodeError, Decoded, FieldInfo};
use crate::{DataType, Value};

/// Ruuvi Innovations' company id.
pub const COMPANY_ID: u16 = 0x0499;

/// The fields of data format 5.
pub const FIELDS: &[FieldInfo] = &[
    field("temperature", DataType::Float64, Some("°C")),
    field("humidity", DataType::Float64, Some("%")),
    field("pressure", DataType::Float64, Some("hPa")),
    field("accelerationX", DataType::Int16, Some("mG")),
    field("accelerationY", DataType::Int16, Some("mG")),
    field("accelerationZ", DataType::Int16, Some("mG")),
    field("accelerationTotal", DataType::Float64, Some("mG")),
    field("voltage", DataType::Float64, Some("V")),
    field("txPower", DataType::Int8, Some("dBm")),
    field("movementCounter", DataType::Uint8, None),
    field("measurementSequence", DataType::Uint16, None),
];

/// Decodes the RuuviTag data format 5 manufacturer data of `adv`.
pub fn decode(adv: &Advertisement) -> Result<Decoded, DecodeError> {
    let d = adv
        .manufacturer_data
        .get(&COMPANY_ID)
        .ok_or(DecodeError::Absent("RuuviTag"))?;
    match d.first() {
        Some(5) => {}
        Some(f) => {
            return Err(invalid(format!(
                "RuuviTag data format {f}; only data format 5 (RAWv2) is supported (update the tag's firmware)"
            )))
        }
        None => return Err(invalid("RuuviTag manufacturer data is empty")),
    }
    if d.len() < 24 {
        return Err(invalid(format!(
            "RuuviTag data format 5 has 24 bytes, got {}",
            d.len()
        )));
    }
    let i16_at = |i: usize| i16::from_be_bytes([d[i], d[i + 1]]);
    let u16_at = |i: usize| u16::from_be_bytes([d[i], d[i + 1]]);
    let mut out = Decoded::default();
    let t = i16_at(1);
    if t != i16::MIN {
        out.push("temperature", Value::Float(f64::from(t) / 200.0));
    }
    let h = u16_at(3);
    if h != u16::MAX {
        out.push("humidity", Value::Float(f64::from(h) / 400.0));
    }
    let p = u16_at(5);
    if p != u16::MAX {
        out.push("pressure", Value::Float((f64::from(p) + 50000.0) / 100.0));
    }
    let acc = [i16_at(7), i16_at(9), i16_at(11)];
    for (name, a) in ["accelerationX", "accelerationY", "accelerationZ"]
        .into_iter()
        .zip(acc)
    {
        if a != i16::MIN {
            out.push(name, Value::Int(i64::from(a)));
        }
    }
    if acc.iter().all(|a| *a != i16::MIN) {
        let [x, y, z] = acc.map(f64::from);
        let total = (x * x + y * y + z * z).sqrt();
        out.push(
            "accelerationTotal",
            Value::Float((total * 100.0).round() / 100.0),
        );
    }
    let power = u16_at(13);
    if power >> 5 != 0x7ff {
        out.push(
            "voltage",
            Value::Float(f64::from((power >> 5) + 1600) / 1000.0),
        );
    }
    if power & 0x1f != 0x1f {
        out.push("txPower", Value::Int(-40 + 2 * i64::from(power & 0x1f)));
    }
    if d[15] != u8::MAX {
        out.push("movementCounter", Value::Uint(u64::from(d[15])));
    }
    let seq = u16_at(16);
    if seq != u16::MAX {
        out.push("measurementSequence", Value::Uint(u64::from(seq)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::hex;
    use super::*;

    fn adv(data: &str) -> Advertisement {
        let mut a = Advertisement::default();
        a.manufacturer_data.insert(COMPANY_ID, hex(data));
        a
    }

    /// The "valid data" test vector of the format's specification.
    #[test]
    fn specification_valid_vector() {
        let d = decode(&adv("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")).unwrap();
        assert_eq!(d.get("temperature"), Some(&Value::Float(24.3)));
        assert_eq!(d.get("pressure"), Some(&Value::Float(1000.44)));
        assert_eq!(d.get("humidity"), Some(&Value::Float(53.49)));
        assert_eq!(d.get("accelerationX"), Some(&Value::Int(4)));
        assert_eq!(d.get("accelerationY"), Some(&Value::Int(-4)));
        assert_eq!(d.get("accelerationZ"), Some(&Value::Int(1036)));
        assert_eq!(d.get("txPower"), Some(&Value::Int(4)));
        assert_eq!(d.get("voltage"), Some(&Value::Float(2.977)));
        assert_eq!(d.get("movementCounter"), Some(&Value::Uint(66)));
        assert_eq!(d.get("measurementSequence"), Some(&Value::Uint(205)));
    }

    /// The maximum and minimum vectors of the specification.
    #[test]
    fn specification_extremes() {
        let d = decode(&adv("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F")).unwrap();
        assert_eq!(d.get("temperature"), Some(&Value::Float(163.835)));
        assert_eq!(d.get("pressure"), Some(&Value::Float(1155.34)));
        assert_eq!(d.get("humidity"), Some(&Value::Float(163.835)));
        assert_eq!(d.get("accelerationZ"), Some(&Value::Int(32767)));
        assert_eq!(d.get("voltage"), Some(&Value::Float(3.646)));
        assert_eq!(d.get("txPower"), Some(&Value::Int(20)));
        assert_eq!(d.get("movementCounter"), Some(&Value::Uint(254)));
        assert_eq!(d.get("measurementSequence"), Some(&Value::Uint(65534)));
        let d = decode(&adv("058001000000008001800180010000000000CBB8334C884F")).unwrap();
        assert_eq!(d.get("temperature"), Some(&Value::Float(-163.835)));
        assert_eq!(d.get("pressure"), Some(&Value::Float(500.0)));
        assert_eq!(d.get("humidity"), Some(&Value::Float(0.0)));
        assert_eq!(d.get("accelerationX"), Some(&Value::Int(-32767)));
        assert_eq!(d.get("voltage"), Some(&Value::Float(1.6)));
        assert_eq!(d.get("txPower"), Some(&Value::Int(-40)));
    }

    /// The specification's "invalid values" vector: nothing is published.
    #[test]
    fn specification_invalid_vector() {
        let d = decode(&adv("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF")).unwrap();
        assert!(d.fields.is_empty(), "{d:?}");
        assert!(decode(&adv("0312FC"))
            .unwrap_err()
            .to_string()
            .contains("format 3"));
        assert!(decode(&adv("0512FC")).is_err());
        assert_eq!(
            decode(&Advertisement::default()),
            Err(DecodeError::Absent("RuuviTag"))
        );
    }
}
