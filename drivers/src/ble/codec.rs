//! Characteristic bytes ⇄ typed values: `type`, `byteOrder`, `byteOffset`.
//!
//! bool is one byte (≠ 0 is true); integers and floats take their width in
//! the given byte order; `string` is the rest of the bytes as UTF-8 (lossy)
//! without trailing NUL and space characters; `bytes` is the rest.

use super::Endian;
use crate::{DataType, DriverError, ErrorKind, Value};

fn decode_err(m: String) -> DriverError {
    DriverError::new(ErrorKind::Decode, m)
}

/// Decodes the value of `data_type` at `offset` of a characteristic's bytes.
pub fn decode(
    bytes: &[u8],
    data_type: DataType,
    order: Endian,
    offset: usize,
) -> Result<Value, DriverError> {
    let rest = bytes.get(offset..).ok_or_else(|| {
        decode_err(format!(
            "value has {} bytes, byteOffset {offset} is past its end",
            bytes.len()
        ))
    })?;
    let Some(width) = data_type.fixed_size() else {
        return Ok(match data_type {
            DataType::String => {
                let text = String::from_utf8_lossy(rest);
                Value::String(text.trim_end_matches(['\0', ' ']).to_string())
            }
            _ => Value::Bytes(rest.to_vec()),
        });
    };
    let raw = rest.get(..width).ok_or_else(|| {
        decode_err(format!(
            "value has {} bytes, {data_type} at byteOffset {offset} needs {}",
            bytes.len(),
            offset + width
        ))
    })?;
    let mut be = [0u8; 8];
    match order {
        Endian::Big => be[8 - width..].copy_from_slice(raw),
        Endian::Little => {
            for (i, b) in raw.iter().enumerate() {
                be[7 - i] = *b;
            }
        }
    }
    let u = u64::from_be_bytes(be);
    let bits = (width * 8) as u32;
    let signed = |u: u64| -> i64 {
        let shift = 64 - bits;
        ((u << shift) as i64) >> shift
    };
    Ok(match data_type {
        DataType::Bool => Value::Bool(u != 0),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            Value::Int(signed(u))
        }
        DataType::Float32 => Value::Float(f64::from(f32::from_bits(u as u32))),
        DataType::Float64 => Value::Float(f64::from_bits(u)),
        _ => Value::Uint(u),
    })
}

/// Encodes `value` as the bytes of `data_type` in `order` (the value alone,
/// without the offset).
pub fn encode(value: &Value, data_type: DataType, order: Endian) -> Result<Vec<u8>, DriverError> {
    let mismatch = || {
        DriverError::new(
            ErrorKind::Rejected,
            format!("value {value:?} does not fit type {data_type}"),
        )
    };
    let bits: u64 = match (data_type, value) {
        (DataType::String, Value::String(s)) => return Ok(s.as_bytes().to_vec()),
        (DataType::Bytes, Value::Bytes(b)) => return Ok(b.clone()),
        (DataType::Bool, Value::Bool(b)) => u64::from(*b),
        (DataType::Float32, v) => u64::from((v.as_f64().ok_or_else(mismatch)? as f32).to_bits()),
        (DataType::Float64, v) => v.as_f64().ok_or_else(mismatch)?.to_bits(),
        (t, v) if t.is_integer() => {
            let i = v.as_i128().ok_or_else(mismatch)?;
            Value::integer_of(t, i).ok_or_else(mismatch)?;
            i as u64
        }
        _ => return Err(mismatch()),
    };
    let width = data_type.fixed_size().unwrap_or(8);
    let be = bits.to_be_bytes();
    let mut out = be[8 - width..].to_vec();
    if order == Endian::Little {
        out.reverse();
    }
    Ok(out)
}

/// Places `encoded` at `offset` of `current` (zero-filled as needed) and
/// returns the characteristic's new bytes.
pub fn splice(current: &[u8], offset: usize, encoded: &[u8]) -> Vec<u8> {
    let mut out = current.to_vec();
    if out.len() < offset + encoded.len() {
        out.resize(offset + encoded.len(), 0);
    }
    out[offset..offset + encoded.len()].copy_from_slice(encoded);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_both_orders_and_offsets() {
        let b = [0x01, 0x34, 0x12, 0xff];
        assert_eq!(
            decode(&b, DataType::Uint16, Endian::Little, 1),
            Ok(Value::Uint(0x1234))
        );
        assert_eq!(
            decode(&b, DataType::Uint16, Endian::Big, 1),
            Ok(Value::Uint(0x3412))
        );
        assert_eq!(
            decode(&b, DataType::Int8, Endian::Little, 3),
            Ok(Value::Int(-1))
        );
        assert_eq!(
            decode(&[0x18, 0xfc], DataType::Int16, Endian::Little, 0),
            Ok(Value::Int(-1000))
        );
        assert_eq!(
            decode(&b, DataType::Bool, Endian::Little, 0),
            Ok(Value::Bool(true))
        );
        let e = decode(&b, DataType::Uint32, Endian::Little, 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Decode);
        assert_eq!(
            e.message,
            "value has 4 bytes, uint32 at byteOffset 1 needs 5"
        );
        assert!(decode(&b, DataType::Bytes, Endian::Little, 5).is_err());
        assert_eq!(
            decode(&b, DataType::Bytes, Endian::Little, 4),
            Ok(Value::Bytes(vec![]))
        );
    }

    #[test]
    fn floats_strings_bytes() {
        let f = 21.5f32.to_le_bytes();
        assert_eq!(
            decode(&f, DataType::Float32, Endian::Little, 0),
            Ok(Value::Float(21.5))
        );
        let d = (-2.25f64).to_be_bytes();
        assert_eq!(
            decode(&d, DataType::Float64, Endian::Big, 0),
            Ok(Value::Float(-2.25))
        );
        assert_eq!(
            decode(b"\x01Mi Sensor \0\0", DataType::String, Endian::Little, 1),
            Ok(Value::String("Mi Sensor".into()))
        );
        assert_eq!(
            decode(&[0xff, 0xfe, b'a'], DataType::String, Endian::Little, 0),
            Ok(Value::String("\u{fffd}\u{fffd}a".into()))
        );
        assert_eq!(
            decode(&[1, 2, 3], DataType::Bytes, Endian::Big, 1),
            Ok(Value::Bytes(vec![2, 3]))
        );
    }

    #[test]
    fn encode_round_trips() {
        for (t, v) in [
            (DataType::Int16, Value::Int(-1000)),
            (DataType::Uint32, Value::Uint(0xdead_beef)),
            (DataType::Int64, Value::Int(i64::MIN)),
            (DataType::Float32, Value::Float(21.5)),
            (DataType::Float64, Value::Float(-0.125)),
            (DataType::Bool, Value::Bool(true)),
            (DataType::Uint8, Value::Uint(200)),
        ] {
            for order in [Endian::Little, Endian::Big] {
                let bytes = encode(&v, t, order).unwrap();
                assert_eq!(bytes.len(), t.fixed_size().unwrap());
                assert_eq!(decode(&bytes, t, order, 0), Ok(v.clone()), "{t} {order:?}");
            }
        }
        assert_eq!(
            encode(&Value::Int(-2), DataType::Int16, Endian::Little).unwrap(),
            vec![0xfe, 0xff]
        );
        assert_eq!(
            encode(&Value::Uint(0x1234), DataType::Uint16, Endian::Big).unwrap(),
            vec![0x12, 0x34]
        );
        assert!(encode(&Value::Int(300), DataType::Uint8, Endian::Big).is_err());
        assert_eq!(
            encode(&Value::String("on".into()), DataType::String, Endian::Big).unwrap(),
            b"on".to_vec()
        );
    }

    #[test]
    fn splice_fills_and_overwrites() {
        assert_eq!(splice(&[1, 2, 3, 4], 1, &[9, 9]), vec![1, 9, 9, 4]);
        assert_eq!(splice(&[1], 2, &[7]), vec![1, 0, 7]);
    }
}
