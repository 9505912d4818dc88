//! The original ATC1441 format of the LYWSD03MMC custom firmware
//! (<https://github.com/atc1441/ATC_MiThermometer>): 13 bytes of service
//! data on UUID 0x181A, big-endian — MAC, temperature int16 × 0.1 °C,
//! humidity uint8 %, battery uint8 %, battery uint16 mV, frame counter uint8.

use super::{
    field, invalid, Advertisement, DecodeError, Decoded, FieldInfo, ENVIRONMENTAL_SENSING,
};
use crate::{DataType, Value};

/// The fields of the ATC1441 format.
pub const FIELDS: &[FieldInfo] = &[
    field("temperature", DataType::Float64, Some("°C")),
    field("humidity", DataType::Float64, Some("%")),
    field("battery", DataType::Uint8, Some("%")),
    field("voltage", DataType::Float64, Some("V")),
];

/// Decodes the ATC1441 service data of `adv`.
pub fn decode(adv: &Advertisement) -> Result<Decoded, DecodeError> {
    let d = adv
        .service_data
        .get(&ENVIRONMENTAL_SENSING)
        .ok_or(DecodeError::Absent("ATC1441"))?;
    if d.len() == 15 {
        return Err(invalid(
            "0x181A service data of 15 bytes is the pvvx format; set format: pvvx",
        ));
    }
    if d.len() != 13 {
        return Err(invalid(format!(
            "ATC1441 format has 13 bytes of 0x181A service data, got {}",
            d.len()
        )));
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    super::check_sender(adv, &mac)?;
    let t = i16::from_be_bytes([d[6], d[7]]);
    let mv = u16::from_be_bytes([d[10], d[11]]);
    let mut out = Decoded::default();
    out.push("temperature", Value::Float(f64::from(t) / 10.0));
    out.push("humidity", Value::Float(f64::from(d[8])));
    out.push("battery", Value::Uint(u64::from(d[9])));
    out.push("voltage", Value::Float(f64::from(mv) / 1000.0));
    Ok(out)
}

/// Encodes an ATC1441 advertisement (tests and the stand-in's fixtures).
pub fn encode(address: &[u8; 6], deci_c: i16, rh: u8, pct: u8, mv: u16, count: u8) -> Vec<u8> {
    let mut v = address.to_vec();
    v.extend_from_slice(&deci_c.to_be_bytes());
    v.push(rh);
    v.push(pct);
    v.extend_from_slice(&mv.to_be_bytes());
    v.push(count);
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

    /// The README's layout: 0x00e6 = 23.0 °C, 50 %, 100 %, 0x0b67 = 2919 mV.
    #[test]
    fn readme_layout() {
        let d = decode(&adv("a4c1388e3c7d00e632640b67aa")).unwrap();
        assert_eq!(d.get("temperature"), Some(&Value::Float(23.0)));
        assert_eq!(d.get("humidity"), Some(&Value::Float(50.0)));
        assert_eq!(d.get("battery"), Some(&Value::Uint(100)));
        assert_eq!(d.get("voltage"), Some(&Value::Float(2.919)));
        let mac = [0xa4, 0xc1, 0x38, 0x8e, 0x3c, 0x7d];
        assert_eq!(
            encode(&mac, 230, 50, 100, 2919, 0xaa),
            hex("a4c1388e3c7d00e632640b67aa")
        );
        // Below zero.
        let d = decode(&adv("a4c1388e3c7dffc432640b67aa")).unwrap();
        assert_eq!(d.get("temperature"), Some(&Value::Float(-6.0)));
    }

    #[test]
    fn wrong_lengths_and_macs() {
        let e = decode(&adv("7d3c8e38c1a498083417860b562b04")).unwrap_err();
        assert!(e.to_string().contains("set format: pvvx"), "{e}");
        let e = decode(&adv("a4c1388e3c7e00e632640b67aa")).unwrap_err();
        assert!(e.to_string().contains("names MAC"), "{e}");
    }
}
