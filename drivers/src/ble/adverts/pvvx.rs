//! The pvvx custom format of LYWSD03MMC (and other Telink thermometer)
//! firmware (<https://github.com/pvvx/ATC_MiThermometer>): 15 bytes of
//! service data on UUID 0x181A, little-endian — MAC (reversed), temperature
//! int16 × 0.01 °C, humidity uint16 × 0.01 %, battery uint16 mV, battery
//! uint8 %, measurement counter uint8, flags uint8.

use super::{
    field, invalid, Advertisement, DecodeError, Decoded, FieldInfo, ENVIRONMENTAL_SENSING,
};
use crate::{DataType, Value};

/// The fields of the pvvx format.
pub const FIELDS: &[FieldInfo] = &[
    field("temperature", DataType::Float64, Some("°C")),
    field("humidity", DataType::Float64, Some("%")),
    field("voltage", DataType::Float64, Some("V")),
    field("battery", DataType::Uint8, Some("%")),
];

/// Decodes the pvvx service data of `adv`.
pub fn decode(adv: &Advertisement) -> Result<Decoded, DecodeError> {
    let d = adv
        .service_data
        .get(&ENVIRONMENTAL_SENSING)
        .ok_or(DecodeError::Absent("pvvx"))?;
    if d.len() == 13 {
        return Err(invalid(
            "0x181A service data of 13 bytes is the ATC1441 format; set format: atc1441",
        ));
    }
    if d.len() != 15 {
        return Err(invalid(format!(
            "pvvx format has 15 bytes of 0x181A service data, got {} (encrypted or another format? set the firmware's advertising type to \"custom\")",
            d.len()
        )));
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(d[..6].iter().rev()) {
        *dst = *src;
    }
    super::check_sender(adv, &mac)?;
    let t = i16::from_le_bytes([d[6], d[7]]);
    let h = u16::from_le_bytes([d[8], d[9]]);
    let mv = u16::from_le_bytes([d[10], d[11]]);
    let mut out = Decoded::default();
    out.push("temperature", Value::Float(f64::from(t) / 100.0));
    out.push("humidity", Value::Float(f64::from(h) / 100.0));
    out.push("voltage", Value::Float(f64::from(mv) / 1000.0));
    out.push("battery", Value::Uint(u64::from(d[12])));
    Ok(out)
}

/// Encodes a pvvx advertisement (tests and the stand-in's fixtures).
pub fn encode(
    address: &[u8; 6],
    centi_c: i16,
    centi_rh: u16,
    mv: u16,
    pct: u8,
    count: u8,
) -> Vec<u8> {
    let mut v: Vec<u8> = address.iter().rev().copied().collect();
    v.extend_from_slice(&centi_c.to_le_bytes());
    v.extend_from_slice(&centi_rh.to_le_bytes());
    v.extend_from_slice(&mv.to_le_bytes());
    v.push(pct);
    v.push(count);
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::super::hex;
    use super::*;

    fn adv(data: &str) -> Advertisement {
        let mut a = Advertisement {
            address: [0xa4, 0xc1, 0x38, 0x8e, 0x3c, 0x7d],
            ..Default::default()
        };
        a.service_data.insert(ENVIRONMENTAL_SENSING, hex(data));
        a
    }

    /// The layout of the firmware's README: MAC reversed, then
    /// 0x0898 = 22.00 °C, 0x1734 = 59.40 %, 0x0b86 = 2950 mV, 86 %, count 0x2b, flags 0x04.
    #[test]
    fn readme_layout() {
        let d = decode(&adv("7d3c8e38c1a498083417860b562b04")).unwrap();
        assert_eq!(d.get("temperature"), Some(&Value::Float(22.0)));
        assert_eq!(d.get("humidity"), Some(&Value::Float(59.40)));
        assert_eq!(d.get("voltage"), Some(&Value::Float(2.95)));
        assert_eq!(d.get("battery"), Some(&Value::Uint(86)));
        let mac = [0xa4, 0xc1, 0x38, 0x8e, 0x3c, 0x7d];
        assert_eq!(
            encode(&mac, 2200, 5940, 2950, 86, 0x2b),
            hex("7d3c8e38c1a498083417860b562b00")
        );
    }

    #[test]
    fn wrong_lengths_and_macs() {
        let e = decode(&adv("a4c1388e3c7d00e6321b0b67aa")).unwrap_err();
        assert!(e.to_string().contains("set format: atc1441"), "{e}");
        assert!(decode(&adv("0102")).is_err());
        let e = decode(&adv("7d3c8e38c1a598083417860b562b04")).unwrap_err();
        assert!(e.to_string().contains("names MAC"), "{e}");
        assert_eq!(
            decode(&Advertisement::default()),
            Err(DecodeError::Absent("pvvx"))
        );
    }
}
