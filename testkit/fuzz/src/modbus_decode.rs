//! `modbus_decode`: bytes → a register image and values → the Modbus
//! driver's codec (`fieldgate_drivers::modbus::codec`) for every data type ×
//! byte order × byte select × bit × quantity, and the read planner. Decoding
//! never panics and fails only on short input; a decoded value has the
//! property's type and encodes back to the same registers (bijective types)
//! or the same value; an encodable value decodes to itself; planned
//! requests cover each property once, within the request and its limit.

use fieldgate_drivers::modbus::codec::{
    decode_bit, decode_registers, encode_bit, encode_registers, width,
};
use fieldgate_drivers::modbus::plan::{limit, Item, Plan};
use fieldgate_drivers::modbus::{ByteOrder, ByteSelect, RegisterAddress, RegisterKind};
use fieldgate_drivers::{DataType, ErrorKind, Value};

use super::input::Input;

/// Every data type.
pub const TYPES: [DataType; 13] = [
    DataType::Bool,
    DataType::Int8,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::Uint8,
    DataType::Uint16,
    DataType::Uint32,
    DataType::Uint64,
    DataType::Float32,
    DataType::Float64,
    DataType::String,
    DataType::Bytes,
];
/// Every byte order.
pub const ORDERS: [ByteOrder; 4] = [
    ByteOrder::Abcd,
    ByteOrder::Badc,
    ByteOrder::Cdab,
    ByteOrder::Dcba,
];
const KINDS: [RegisterKind; 4] = [
    RegisterKind::Coil,
    RegisterKind::DiscreteInput,
    RegisterKind::Input,
    RegisterKind::Holding,
];

/// The fuzz entry point.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let n = usize::from(input.u8() % 130);
    let regs: Vec<u16> = (0..n).map(|_| input.u16()).collect();
    let bit = input.u8() % 18;
    let quantity = input.u16() % 140;
    for t in TYPES {
        for order in ORDERS {
            for byte in [ByteSelect::High, ByteSelect::Low] {
                for bit in [None, Some(bit)] {
                    for quantity in [None, Some(quantity)] {
                        let address = RegisterAddress {
                            kind: RegisterKind::Holding,
                            address: 0,
                            bit,
                            quantity,
                            byte_order: order,
                            byte,
                        };
                        image_round_trip(t, &address, &regs);
                    }
                }
            }
        }
    }
    let bits = input.u8();
    for t in TYPES {
        check_bits(t, bits & 1 == 1, &regs);
    }
    for t in TYPES {
        let order = input.pick(&ORDERS);
        let byte = input.pick(&[ByteSelect::High, ByteSelect::Low]);
        let address = RegisterAddress {
            kind: RegisterKind::Holding,
            address: 0,
            bit: None,
            quantity: Some(1 + input.u8() as u16 % 8),
            byte_order: order,
            byte,
        };
        let value = value_of(t, &mut input);
        value_round_trip(t, &address, &value, input.u16());
    }
    plan(&mut input);
}

/// Whether `v` is a value of `t` as the codec produces it.
fn has_type(t: DataType, v: &Value) -> bool {
    match (t, v) {
        (DataType::Bool, Value::Bool(_)) => true,
        (t, Value::Int(_) | Value::Uint(_)) if t.is_integer() => {
            let (lo, hi) = t.integer_range().unwrap_or_default();
            let signed = lo < 0;
            matches!(v, Value::Int(_)) == signed
                && v.as_i128().is_some_and(|x| (lo..=hi).contains(&x))
        }
        (DataType::Float32, Value::Float(f)) => f.is_nan() || f64::from(*f as f32) == *f,
        (DataType::Float64, Value::Float(_)) => true,
        (DataType::String, Value::String(_)) | (DataType::Bytes, Value::Bytes(_)) => true,
        _ => false,
    }
}

/// Equal values, NaN equal to NaN.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

/// Decodes `regs`; a decoded value encodes back.
fn image_round_trip(t: DataType, address: &RegisterAddress, regs: &[u16]) {
    let w = usize::from(width(t, address));
    assert!(w >= 1, "{t}: zero width");
    let decoded = decode_registers(t, address, regs);
    let value = match decoded {
        Ok(v) => v,
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Decode, "{t} {address:?}: {e}");
            let bad_bit = address.bit.is_some_and(|b| b > 15);
            let bad_type = address.bit.is_some() && t != DataType::Bool;
            assert!(
                regs.len() < w || bad_bit || bad_type,
                "{t} {address:?}: {} registers for width {w}, yet: {e}",
                regs.len()
            );
            return;
        }
    };
    assert!(regs.len() >= w);
    assert!(has_type(t, &value), "{t} {address:?}: decoded {value:?}");
    if address.bit.is_some_and(|b| b > 15) {
        panic!("{t} {address:?}: decoded a bit outside the register: {value:?}");
    }
    let current = regs.first().copied();
    let encoded = encode_registers(t, address, &value, current);
    let lossy_text = matches!(&value, Value::String(s) if s.contains('\u{FFFD}'));
    let words = match encoded {
        Ok(words) => words,
        Err(e) if lossy_text => {
            assert_eq!(e.kind, ErrorKind::Rejected);
            return;
        }
        Err(e) => panic!("{t} {address:?}: decoded {value:?} does not encode: {e}"),
    };
    assert_eq!(words.len(), w, "{t} {address:?}: width");
    let exact_image = match t {
        DataType::Bool => address.bit.is_some(),
        DataType::String => false,
        DataType::Float32 | DataType::Float64 => !matches!(value, Value::Float(f) if f.is_nan()),
        _ => true,
    };
    if exact_image {
        assert_eq!(
            words,
            regs[..w],
            "{t} {address:?}: {value:?} re-encodes differently"
        );
    }
    let again = decode_registers(t, address, &words)
        .unwrap_or_else(|e| panic!("{t} {address:?}: re-decoding failed: {e}"));
    if !lossy_text {
        assert!(
            same(&again, &value),
            "{t} {address:?}: {value:?} -> {again:?}"
        );
    }
}

/// Coils and discrete inputs: one bit, only `bool`.
fn check_bits(t: DataType, bit: bool, regs: &[u16]) {
    for kind in [RegisterKind::Coil, RegisterKind::DiscreteInput] {
        let address = RegisterAddress {
            kind,
            address: regs.first().copied().unwrap_or(0),
            bit: None,
            quantity: Some(7),
            byte_order: ByteOrder::Abcd,
            byte: ByteSelect::Low,
        };
        assert_eq!(width(t, &address), 1);
    }
    match decode_bit(t, bit) {
        Ok(v) => {
            assert_eq!(t, DataType::Bool);
            assert_eq!(encode_bit(&v).ok(), Some(bit));
        }
        Err(e) => {
            assert_ne!(t, DataType::Bool);
            assert_eq!(e.kind, ErrorKind::Decode);
        }
    }
}

/// A value for `t`, sometimes of another type or out of range.
fn value_of(t: DataType, input: &mut Input<'_>) -> Value {
    let raw = input.u64();
    match input.u8() % 8 {
        0 => Value::Bool(raw & 1 == 1),
        1 => Value::Int(raw as i64),
        2 => Value::Uint(raw),
        3 => Value::Float(f64::from_bits(raw)),
        4 => Value::String(input.string()),
        5 => Value::Bytes(input.bytes().to_vec()),
        // Mostly in range for integers; f32 values for float32.
        _ => match t {
            DataType::Float32 => Value::Float(f64::from(f32::from_bits(raw as u32))),
            DataType::Float64 => Value::Float(f64::from_bits(raw)),
            t if t.is_integer() => {
                let (lo, hi) = t.integer_range().unwrap_or_default();
                let span = (hi - lo) as u128 + 1;
                Value::integer_of(t, lo + (u128::from(raw) % span) as i128)
                    .unwrap_or(Value::Uint(raw))
            }
            _ => Value::Bool(raw & 1 == 1),
        },
    }
}

/// Whether the codec must accept `v` for `t` (with its address).
fn encodable(t: DataType, address: &RegisterAddress, v: &Value) -> bool {
    match (t, v) {
        (DataType::Bool, Value::Bool(_)) => true,
        (DataType::Bool, Value::Int(i)) => *i == 0 || *i == 1,
        (DataType::Bool, Value::Uint(u)) => *u <= 1,
        (t, Value::Int(_) | Value::Uint(_) | Value::Bool(_)) if t.is_integer() => {
            let (lo, hi) = t.integer_range().unwrap_or_default();
            v.as_i128().is_some_and(|x| (lo..=hi).contains(&x))
        }
        (DataType::Float32 | DataType::Float64, v) => v.as_f64().is_some(),
        (DataType::String | DataType::Bytes, Value::String(_) | Value::Bytes(_)) => {
            let n = match v {
                Value::String(s) => s.len(),
                Value::Bytes(b) => b.len(),
                _ => 0,
            };
            n <= 2 * usize::from(width(t, address))
        }
        _ => false,
    }
}

/// An encodable value decodes to itself (as the property's type holds it).
fn value_round_trip(t: DataType, address: &RegisterAddress, v: &Value, current: u16) {
    let encoded = encode_registers(t, address, v, Some(current));
    let must = encodable(t, address, v);
    let words = match encoded {
        Ok(words) => {
            assert!(must, "{t}: {v:?} encoded to {words:?}");
            words
        }
        Err(e) => {
            assert!(!must, "{t}: {v:?} refused: {e}");
            assert_eq!(e.kind, ErrorKind::Rejected);
            return;
        }
    };
    assert_eq!(words.len(), usize::from(width(t, address)));
    let back = decode_registers(t, address, &words)
        .unwrap_or_else(|e| panic!("{t}: {v:?} encoded to {words:?}, which does not decode: {e}"));
    let want = match (t, v) {
        (DataType::Bool, v) => Value::Bool(v.as_i128() != Some(0) && *v != Value::Bool(false)),
        (t, v) if t.is_integer() => {
            Value::integer_of(t, v.as_i128().unwrap_or_default()).unwrap_or_else(|| v.clone())
        }
        (DataType::Float32, v) => Value::Float(f64::from(v.as_f64().unwrap_or_default() as f32)),
        (DataType::Float64, v) => Value::Float(v.as_f64().unwrap_or_default()),
        (DataType::String, Value::String(s)) => {
            Value::String(s.trim_end_matches(['\0', ' ']).to_owned())
        }
        (DataType::String, Value::Bytes(b)) => {
            let end = b
                .iter()
                .rposition(|c| *c != 0 && *c != b' ')
                .map_or(0, |p| p + 1);
            Value::String(String::from_utf8_lossy(&b[..end]).into_owned())
        }
        (DataType::Bytes, Value::String(s)) => Value::Bytes(padded(s.as_bytes(), &words)),
        (DataType::Bytes, Value::Bytes(b)) => Value::Bytes(padded(b, &words)),
        _ => unreachable!("encodable"),
    };
    assert!(
        same(&back, &want),
        "{t} {address:?}: {v:?} -> {words:?} -> {back:?}"
    );
}

fn padded(b: &[u8], words: &[u16]) -> Vec<u8> {
    let mut out = b.to_vec();
    out.resize(words.len() * 2, 0);
    out
}

/// Plans arbitrary properties and checks the requests.
fn plan(input: &mut Input<'_>) {
    let n = usize::from(input.u8() % 12);
    let items: Vec<Item> = (0..n)
        .map(|index| Item {
            index,
            data_type: input.pick(&TYPES),
            address: RegisterAddress {
                kind: input.pick(&KINDS),
                address: input.u16(),
                bit: input.bool().then(|| input.u8() % 16),
                quantity: input.bool().then(|| input.u16() % 300),
                byte_order: ByteOrder::Abcd,
                byte: ByteSelect::Low,
            },
        })
        .collect();
    let max_per_read = input.u16() % 200;
    let max_gap = input.u16() % 300;
    let mut plan = std::sync::Arc::new(Plan::new(items.clone(), max_per_read, max_gap));
    check_plan(&plan, &items, max_per_read);
    // Splitting (after exceptions) down to single properties keeps every
    // property covered.
    let mut guard = 0;
    while let Some(at) = plan.requests.iter().position(|r| r.items.len() > 1) {
        assert!(Plan::split_at(&mut plan, at));
        guard += 1;
        assert!(guard <= 64, "splitting does not end");
    }
    check_plan(&plan, &items, max_per_read);
}

fn check_plan(plan: &Plan, items: &[Item], max_per_read: u16) {
    let mut seen = vec![0usize; items.len()];
    for r in &plan.requests {
        assert!(!r.items.is_empty(), "an empty request");
        assert!(r.count >= 1, "{r:?}");
        let start = u32::from(r.start);
        let end = start + u32::from(r.count);
        let mut widest = 0;
        for it in &r.items {
            assert_eq!(it.address.kind, r.kind);
            seen[it.index] += 1;
            let w = u32::from(width(it.data_type, &it.address));
            widest = widest.max(w);
            let (s, e) = (
                u32::from(it.address.address),
                u32::from(it.address.address) + w,
            );
            if e <= 65_536 {
                assert!(
                    s >= start && e <= end,
                    "item {s}..{e} outside request {start}..{end}"
                );
            }
        }
        if r.items.len() > 1 {
            assert!(
                u32::from(r.count) <= u32::from(limit(r.kind, max_per_read)).max(widest),
                "request of {} over the limit {}",
                r.count,
                limit(r.kind, max_per_read)
            );
        }
    }
    assert!(seen.iter().all(|n| *n == 1), "coverage {seen:?}");
}
