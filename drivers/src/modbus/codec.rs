//! Value codecs: typed values to and from Modbus register images and bits,
//! per data type and byte order.

use super::{ByteOrder, ByteSelect, RegisterAddress, RegisterKind};
use crate::{DataType, DriverError, ErrorKind, Value};

/// How many registers (or bits, for coils and discrete inputs) a property
/// occupies, starting at its address.
pub fn width(data_type: DataType, address: &RegisterAddress) -> u16 {
    if matches!(
        address.kind,
        RegisterKind::Coil | RegisterKind::DiscreteInput
    ) || address.bit.is_some()
    {
        return 1;
    }
    match data_type {
        DataType::String | DataType::Bytes => address.quantity.unwrap_or(1).max(1),
        t => t.fixed_size().map_or(1, |n| n.div_ceil(2) as u16),
    }
}

fn decode_error(message: impl Into<String>) -> DriverError {
    DriverError::new(ErrorKind::Decode, message)
}

fn rejected(message: impl Into<String>) -> DriverError {
    DriverError::new(ErrorKind::Rejected, message)
}

/// Puts the big-endian bytes of a value into register order.
fn to_words(be: &[u8], order: ByteOrder) -> Vec<u16> {
    let mut words: Vec<u16> = be
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    if matches!(order, ByteOrder::Badc | ByteOrder::Dcba) {
        for w in &mut words {
            *w = w.swap_bytes();
        }
    }
    if matches!(order, ByteOrder::Cdab | ByteOrder::Dcba) {
        words.reverse();
    }
    words
}

/// Recovers the big-endian bytes of a value from its registers.
fn from_words(words: &[u16], order: ByteOrder) -> Vec<u8> {
    let mut words = words.to_vec();
    if matches!(order, ByteOrder::Cdab | ByteOrder::Dcba) {
        words.reverse();
    }
    if matches!(order, ByteOrder::Badc | ByteOrder::Dcba) {
        for w in &mut words {
            *w = w.swap_bytes();
        }
    }
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// Decodes a coil or discrete input.
pub fn decode_bit(data_type: DataType, bit: bool) -> Result<Value, DriverError> {
    match data_type {
        DataType::Bool => Ok(Value::Bool(bit)),
        t => Err(decode_error(format!("a single bit cannot hold {t}"))),
    }
}

/// Decodes a property from exactly the registers it occupies
/// (see [`width`]); `regs` shorter than that is a decode error.
pub fn decode_registers(
    data_type: DataType,
    address: &RegisterAddress,
    regs: &[u16],
) -> Result<Value, DriverError> {
    let need = width(data_type, address) as usize;
    if regs.len() < need {
        return Err(decode_error(format!(
            "short response: {} of {need} registers",
            regs.len()
        )));
    }
    let regs = &regs[..need];
    if let Some(bit) = address.bit {
        if bit > 15 {
            return Err(decode_error(format!("bit {bit} is outside a register")));
        }
        return decode_bit(data_type, regs[0] & (1 << bit) != 0);
    }
    let order = address.byte_order;
    let reg = regs[0];
    let byte = match address.byte {
        ByteSelect::High => (reg >> 8) as u8,
        ByteSelect::Low => reg as u8,
    };
    let be = |n: usize| -> Vec<u8> { from_words(&regs[..n / 2], order) };
    Ok(match data_type {
        DataType::Bool => Value::Bool(reg != 0),
        DataType::Int8 => Value::Int(byte as i8 as i64),
        DataType::Uint8 => Value::Uint(byte as u64),
        DataType::Int16 => Value::Int(i16::from_be_bytes(arr(&be(2))?) as i64),
        DataType::Uint16 => Value::Uint(u16::from_be_bytes(arr(&be(2))?) as u64),
        DataType::Int32 => Value::Int(i32::from_be_bytes(arr(&be(4))?) as i64),
        DataType::Uint32 => Value::Uint(u32::from_be_bytes(arr(&be(4))?) as u64),
        DataType::Int64 => Value::Int(i64::from_be_bytes(arr(&be(8))?)),
        DataType::Uint64 => Value::Uint(u64::from_be_bytes(arr(&be(8))?)),
        DataType::Float32 => Value::Float(f32::from_be_bytes(arr(&be(4))?) as f64),
        DataType::Float64 => Value::Float(f64::from_be_bytes(arr(&be(8))?)),
        DataType::String => {
            let bytes: Vec<u8> = regs.iter().flat_map(|w| w.to_be_bytes()).collect();
            let end = bytes
                .iter()
                .rposition(|b| *b != 0 && *b != b' ')
                .map_or(0, |p| p + 1);
            Value::String(String::from_utf8_lossy(&bytes[..end]).into_owned())
        }
        DataType::Bytes => Value::Bytes(regs.iter().flat_map(|w| w.to_be_bytes()).collect()),
    })
}

fn arr<const N: usize>(bytes: &[u8]) -> Result<[u8; N], DriverError> {
    bytes
        .try_into()
        .map_err(|_| decode_error(format!("expected {N} bytes, got {}", bytes.len())))
}

fn int_of(data_type: DataType, value: &Value) -> Result<i128, DriverError> {
    let v = value
        .as_i128()
        .ok_or_else(|| rejected(format!("{value:?} is not a {data_type} value")))?;
    match data_type.integer_range() {
        Some((lo, hi)) if v < lo || v > hi => {
            Err(rejected(format!("{v} does not fit {data_type}")))
        }
        _ => Ok(v),
    }
}

fn float_of(data_type: DataType, value: &Value) -> Result<f64, DriverError> {
    value
        .as_f64()
        .ok_or_else(|| rejected(format!("{value:?} is not a {data_type} value")))
}

/// Encodes a coil value.
pub fn encode_bit(value: &Value) -> Result<bool, DriverError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Int(i) if *i == 0 || *i == 1 => Ok(*i == 1),
        Value::Uint(u) if *u <= 1 => Ok(*u == 1),
        v => Err(rejected(format!("{v:?} is not a bool"))),
    }
}

/// Encodes a register property into the registers it occupies. Strings and
/// bytes are padded with NUL to `quantity` registers (and refused if longer).
/// Int8/uint8 and single bits need the current register value (`current`):
/// the other byte/bits are kept.
pub fn encode_registers(
    data_type: DataType,
    address: &RegisterAddress,
    value: &Value,
    current: Option<u16>,
) -> Result<Vec<u16>, DriverError> {
    let order = address.byte_order;
    if let Some(bit) = address.bit {
        if bit > 15 {
            return Err(rejected(format!("bit {bit} is outside a register")));
        }
        let on = encode_bit(value)?;
        let cur = current.unwrap_or(0);
        let mask = 1u16 << bit;
        return Ok(vec![if on { cur | mask } else { cur & !mask }]);
    }
    Ok(match data_type {
        DataType::Bool => vec![u16::from(encode_bit(value)?)],
        DataType::Int8 | DataType::Uint8 => {
            let b = int_of(data_type, value)? as u8;
            let cur = current.unwrap_or(0);
            vec![match address.byte {
                ByteSelect::High => (cur & 0x00FF) | ((b as u16) << 8),
                ByteSelect::Low => (cur & 0xFF00) | b as u16,
            }]
        }
        DataType::Int16 | DataType::Uint16 => {
            to_words(&(int_of(data_type, value)? as u16).to_be_bytes(), order)
        }
        DataType::Int32 | DataType::Uint32 => {
            to_words(&(int_of(data_type, value)? as u32).to_be_bytes(), order)
        }
        DataType::Int64 | DataType::Uint64 => {
            to_words(&(int_of(data_type, value)? as u64).to_be_bytes(), order)
        }
        DataType::Float32 => to_words(&(float_of(data_type, value)? as f32).to_be_bytes(), order),
        DataType::Float64 => to_words(&float_of(data_type, value)?.to_be_bytes(), order),
        DataType::String | DataType::Bytes => {
            let bytes: &[u8] = match value {
                Value::String(s) => s.as_bytes(),
                Value::Bytes(b) => b,
                v => return Err(rejected(format!("{v:?} is not a {data_type} value"))),
            };
            let n = width(data_type, address) as usize;
            if bytes.len() > n * 2 {
                return Err(rejected(format!(
                    "{} bytes do not fit {n} registers",
                    bytes.len()
                )));
            }
            let mut padded = bytes.to_vec();
            padded.resize(n * 2, 0);
            padded
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(order: ByteOrder) -> RegisterAddress {
        RegisterAddress {
            kind: RegisterKind::Holding,
            address: 0,
            bit: None,
            quantity: None,
            byte_order: order,
            byte: ByteSelect::Low,
        }
    }

    const ORDERS: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Badc,
        ByteOrder::Cdab,
        ByteOrder::Dcba,
    ];

    fn check(t: DataType, addr: &RegisterAddress, v: Value, regs: &[u16]) {
        assert_eq!(
            encode_registers(t, addr, &v, None).unwrap(),
            regs,
            "encode {t} {:?}",
            addr.byte_order
        );
        assert_eq!(
            decode_registers(t, addr, regs).unwrap(),
            v,
            "decode {t} {:?}",
            addr.byte_order
        );
    }

    #[test]
    fn float32_in_all_orders() {
        let images: [[u16; 2]; 4] = [
            [0x41AC, 0x0000],
            [0xAC41, 0x0000],
            [0x0000, 0x41AC],
            [0x0000, 0xAC41],
        ];
        for (order, regs) in ORDERS.into_iter().zip(images) {
            check(DataType::Float32, &at(order), Value::Float(21.5), &regs);
        }
    }

    #[test]
    fn u64_and_f64_in_all_orders() {
        let images: [[u16; 4]; 4] = [
            [0x0102, 0x0304, 0x0506, 0x0708],
            [0x0201, 0x0403, 0x0605, 0x0807],
            [0x0708, 0x0506, 0x0304, 0x0102],
            [0x0807, 0x0605, 0x0403, 0x0201],
        ];
        for (order, regs) in ORDERS.into_iter().zip(images) {
            check(
                DataType::Uint64,
                &at(order),
                Value::Uint(0x0102030405060708),
                &regs,
            );
            check(
                DataType::Int64,
                &at(order),
                Value::Int(0x0102030405060708),
                &regs,
            );
        }
        // 1.0f64 = 0x3FF0_0000_0000_0000
        check(
            DataType::Float64,
            &at(ByteOrder::Abcd),
            Value::Float(1.0),
            &[0x3FF0, 0, 0, 0],
        );
        check(
            DataType::Float64,
            &at(ByteOrder::Dcba),
            Value::Float(1.0),
            &[0, 0, 0, 0xF03F],
        );
    }

    #[test]
    fn signed_values_sign_extend() {
        check(
            DataType::Int16,
            &at(ByteOrder::Abcd),
            Value::Int(-2),
            &[0xFFFE],
        );
        check(
            DataType::Int16,
            &at(ByteOrder::Dcba),
            Value::Int(-2),
            &[0xFEFF],
        );
        check(
            DataType::Uint16,
            &at(ByteOrder::Abcd),
            Value::Uint(0xFFFE),
            &[0xFFFE],
        );
        check(
            DataType::Int32,
            &at(ByteOrder::Cdab),
            Value::Int(-2),
            &[0xFFFE, 0xFFFF],
        );
        check(
            DataType::Int32,
            &at(ByteOrder::Abcd),
            Value::Int(-70000),
            &[0xFFFE, 0xEE90],
        );
        check(
            DataType::Uint32,
            &at(ByteOrder::Badc),
            Value::Uint(0x12345678),
            &[0x3412, 0x7856],
        );
        check(
            DataType::Int64,
            &at(ByteOrder::Abcd),
            Value::Int(-1),
            &[0xFFFF; 4],
        );
    }

    #[test]
    fn eight_bit_values_pick_their_byte() {
        let mut a = at(ByteOrder::Abcd);
        assert_eq!(
            decode_registers(DataType::Int8, &a, &[0x12FE]).unwrap(),
            Value::Int(-2)
        );
        assert_eq!(
            encode_registers(DataType::Uint8, &a, &Value::Uint(0x34), Some(0x12FE)).unwrap(),
            vec![0x1234]
        );
        a.byte = ByteSelect::High;
        assert_eq!(
            decode_registers(DataType::Uint8, &a, &[0x12FE]).unwrap(),
            Value::Uint(0x12)
        );
        assert_eq!(
            decode_registers(DataType::Int8, &a, &[0x80FE]).unwrap(),
            Value::Int(-128)
        );
        assert_eq!(
            encode_registers(DataType::Int8, &a, &Value::Int(-1), Some(0x12FE)).unwrap(),
            vec![0xFFFE]
        );
        assert!(encode_registers(DataType::Int8, &a, &Value::Int(200), None).is_err());
    }

    #[test]
    fn bits_of_registers() {
        let mut a = at(ByteOrder::Abcd);
        a.bit = Some(3);
        assert_eq!(width(DataType::Bool, &a), 1);
        assert_eq!(
            decode_registers(DataType::Bool, &a, &[0b1000]).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            decode_registers(DataType::Bool, &a, &[0b0111]).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(
            encode_registers(DataType::Bool, &a, &Value::Bool(true), Some(0x8001)).unwrap(),
            vec![0x8009]
        );
        assert_eq!(
            encode_registers(DataType::Bool, &a, &Value::Bool(false), Some(0xFFFF)).unwrap(),
            vec![0xFFF7]
        );
        a.bit = Some(15);
        assert_eq!(
            decode_registers(DataType::Bool, &a, &[0x8000]).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(decode_bit(DataType::Bool, true).unwrap(), Value::Bool(true));
        assert!(decode_bit(DataType::Int16, true).is_err());
    }

    #[test]
    fn strings_and_bytes() {
        let mut a = at(ByteOrder::Dcba);
        a.quantity = Some(4);
        assert_eq!(width(DataType::String, &a), 4);
        let regs = [0x4142, 0x4320, 0x0000, 0x0000];
        assert_eq!(
            decode_registers(DataType::String, &a, &regs).unwrap(),
            Value::String("ABC".into())
        );
        assert_eq!(
            decode_registers(DataType::String, &a, &[0x2020, 0, 0, 0]).unwrap(),
            Value::String(String::new())
        );
        assert_eq!(
            encode_registers(DataType::String, &a, &Value::String("ABC".into()), None).unwrap(),
            vec![0x4142, 0x4300, 0, 0]
        );
        assert!(encode_registers(
            DataType::String,
            &a,
            &Value::String("123456789".into()),
            None
        )
        .is_err());
        check(
            DataType::Bytes,
            &a,
            Value::Bytes(vec![1, 2, 3, 4, 5, 6, 7, 0]),
            &[0x0102, 0x0304, 0x0506, 0x0700],
        );
    }

    #[test]
    fn short_responses_are_decode_errors() {
        let a = at(ByteOrder::Abcd);
        let err = decode_registers(DataType::Float64, &a, &[1, 2]).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Decode);
        assert!(decode_registers(DataType::Int16, &a, &[]).is_err());
    }

    #[test]
    fn round_trips_for_every_type_and_order() {
        let samples = [
            (DataType::Int16, Value::Int(-12345)),
            (DataType::Uint16, Value::Uint(54321)),
            (DataType::Int32, Value::Int(-123456789)),
            (DataType::Uint32, Value::Uint(4000000000)),
            (DataType::Int64, Value::Int(i64::MIN + 7)),
            (DataType::Uint64, Value::Uint(u64::MAX - 7)),
            (DataType::Float32, Value::Float(-0.15625)),
            (DataType::Float64, Value::Float(std::f64::consts::PI)),
            (DataType::Bool, Value::Bool(true)),
        ];
        for order in ORDERS {
            for (t, v) in &samples {
                let a = at(order);
                let regs = encode_registers(*t, &a, v, None).unwrap();
                assert_eq!(regs.len(), width(*t, &a) as usize);
                assert_eq!(
                    &decode_registers(*t, &a, &regs).unwrap(),
                    v,
                    "{t} {order:?}"
                );
            }
        }
    }
}
