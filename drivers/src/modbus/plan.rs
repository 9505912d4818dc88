//! The read planner: merges neighbouring properties into as few requests as
//! the device's limits allow, and splits requests that the device refuses.

use std::sync::Arc;

use super::codec::width;
use super::{RegisterAddress, RegisterKind};
use crate::{DataType, DeviceSpec, PropertyAddress};

/// Most registers one read may return (FC3/FC4).
pub const MAX_REGISTERS: u16 = 125;
/// Most bits one read may return (FC1/FC2).
pub const MAX_BITS: u16 = 2000;

/// One property as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Index in [`DeviceSpec::properties`].
    pub index: usize,
    /// Raw type.
    pub data_type: DataType,
    /// Where it lives.
    pub address: RegisterAddress,
}

impl Item {
    fn start(&self) -> u16 {
        self.address.address
    }

    /// One past the last register/bit, as u32 so that 65535 + width fits.
    fn end(&self) -> u32 {
        self.address.address as u32 + width(self.data_type, &self.address) as u32
    }
}

/// One read request of a poll cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRequest {
    /// Data table.
    pub kind: RegisterKind,
    /// First address.
    pub start: u16,
    /// Number of registers or bits.
    pub count: u16,
    /// The properties it serves.
    pub items: Vec<Item>,
}

impl ReadRequest {
    fn of(kind: RegisterKind, items: Vec<Item>) -> Self {
        let start = items.iter().map(Item::start).min().unwrap_or(0);
        let end = items.iter().map(Item::end).max().unwrap_or(start as u32);
        let count = end.saturating_sub(start as u32).min(u16::MAX as u32) as u16;
        Self {
            kind,
            start,
            count,
            items,
        }
    }

    /// Last address read (inclusive).
    pub fn last(&self) -> u32 {
        (self.start as u32 + self.count as u32).saturating_sub(1)
    }

    /// Splits in two halves by items; `None` for a single-property request.
    pub fn split(&self) -> Option<(ReadRequest, ReadRequest)> {
        if self.items.len() < 2 {
            return None;
        }
        let mut left = self.items.clone();
        let right = left.split_off(self.items.len() / 2);
        Some((Self::of(self.kind, left), Self::of(self.kind, right)))
    }
}

/// The protocol name of a data table.
pub fn kind_name(kind: RegisterKind) -> &'static str {
    match kind {
        RegisterKind::Coil => "coil",
        RegisterKind::DiscreteInput => "discreteInput",
        RegisterKind::Input => "input",
        RegisterKind::Holding => "holding",
    }
}

fn is_bits(kind: RegisterKind) -> bool {
    matches!(kind, RegisterKind::Coil | RegisterKind::DiscreteInput)
}

/// The per-request limit for a data table: `max_per_read` registers (at most
/// 125), or for bit tables `max_per_read × 16` bits (at most 2000).
pub fn limit(kind: RegisterKind, max_per_read: u16) -> u16 {
    let regs = max_per_read.clamp(1, MAX_REGISTERS);
    if is_bits(kind) {
        regs.saturating_mul(16).min(MAX_BITS)
    } else {
        regs
    }
}

/// The read requests of one poll cycle. Splits after exceptions are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Requests in execution order.
    pub requests: Vec<ReadRequest>,
}

impl Plan {
    /// Plans the Modbus properties of `spec` (others are ignored).
    pub fn for_device(spec: &DeviceSpec, max_per_read: u16, max_gap: u16) -> Self {
        let items = spec
            .properties
            .iter()
            .enumerate()
            .filter_map(|(index, p)| match &p.address {
                PropertyAddress::Modbus(a) => Some(Item {
                    index,
                    data_type: p.data_type,
                    address: a.clone(),
                }),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .collect();
        Self::new(items, max_per_read, max_gap)
    }

    /// Merges `items` per data table (tables in order of first appearance,
    /// addresses ascending) within `max_per_read` and `max_gap`.
    pub fn new(items: Vec<Item>, max_per_read: u16, max_gap: u16) -> Self {
        let mut kinds: Vec<RegisterKind> = Vec::new();
        for it in &items {
            if !kinds.contains(&it.address.kind) {
                kinds.push(it.address.kind);
            }
        }
        let mut requests = Vec::new();
        for kind in kinds {
            let mut of_kind: Vec<Item> = items
                .iter()
                .filter(|i| i.address.kind == kind)
                .cloned()
                .collect();
            of_kind.sort_by_key(|i| (i.start(), i.index));
            let limit = limit(kind, max_per_read) as u32;
            let mut current: Vec<Item> = Vec::new();
            let (mut start, mut end) = (0u32, 0u32);
            for it in of_kind {
                let (s, e) = (it.start() as u32, it.end());
                let fits =
                    !current.is_empty() && s <= end + max_gap as u32 && e.max(end) - start <= limit;
                if fits {
                    end = end.max(e);
                    current.push(it);
                } else {
                    if !current.is_empty() {
                        requests.push(ReadRequest::of(kind, std::mem::take(&mut current)));
                    }
                    start = s;
                    end = e;
                    current.push(it);
                }
            }
            if !current.is_empty() {
                requests.push(ReadRequest::of(kind, current));
            }
        }
        Self { requests }
    }

    /// Replaces request `at` by its two halves after the device refused it;
    /// returns false when it already serves a single property. A plan
    /// shared with its merged copy is copied only when it does split.
    pub fn split_at(plan: &mut Arc<Plan>, at: usize) -> bool {
        let Some((left, right)) = plan.requests.get(at).and_then(ReadRequest::split) else {
            return false;
        };
        Arc::make_mut(plan).requests.splice(at..=at, [left, right]);
        true
    }

    /// The summary line and one line per request, for `fieldgate check`.
    pub fn describe(&self, spec: &DeviceSpec) -> Vec<String> {
        let ranges: Vec<String> = self
            .requests
            .iter()
            .map(|r| format!("{} {}..={}", kind_name(r.kind), r.start, r.last()))
            .collect();
        let n = self.requests.len();
        let mut lines = vec![format!(
            "read plan: {n} request{} per cycle ({})",
            if n == 1 { "" } else { "s" },
            ranges.join(", ")
        )];
        for r in &self.requests {
            let (fc, unit) = match r.kind {
                RegisterKind::Coil => (1, "bits"),
                RegisterKind::DiscreteInput => (2, "bits"),
                RegisterKind::Holding => (3, "registers"),
                RegisterKind::Input => (4, "registers"),
            };
            let names: Vec<&str> = r
                .items
                .iter()
                .filter_map(|i| spec.properties.get(i.index).map(|p| &*p.name))
                .collect();
            lines.push(format!(
                "  FC{fc} {} {}..={} ({} {unit}): {}",
                kind_name(r.kind),
                r.start,
                r.last(),
                r.count,
                names.join(", ")
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::{ByteOrder, ByteSelect};

    fn item(index: usize, kind: RegisterKind, address: u16, t: DataType) -> Item {
        Item {
            index,
            data_type: t,
            address: RegisterAddress {
                kind,
                address,
                bit: None,
                quantity: None,
                byte_order: ByteOrder::Abcd,
                byte: ByteSelect::Low,
            },
        }
    }

    fn spans(p: &Plan) -> Vec<(RegisterKind, u16, u16)> {
        p.requests
            .iter()
            .map(|r| (r.kind, r.start, r.count))
            .collect()
    }

    use DataType::*;
    use RegisterKind::*;

    #[test]
    fn merges_neighbours_within_gap_and_groups_by_table() {
        let items = vec![
            item(0, Holding, 0, Float32),
            item(1, Holding, 2, Int16),
            item(2, Coil, 0, Bool),
            item(3, Holding, 10, Uint16),
            item(4, Input, 20, Uint16),
            item(5, Coil, 3, Bool),
            item(6, Holding, 30, Uint16),
        ];
        let p = Plan::new(items, 125, 10);
        assert_eq!(
            spans(&p),
            vec![
                (Holding, 0, 11),
                (Holding, 30, 1),
                (Coil, 0, 4),
                (Input, 20, 1)
            ]
        );
        assert_eq!(p.requests[0].items.len(), 3);
        let p = Plan::new(
            vec![item(0, Holding, 0, Uint16), item(1, Holding, 2, Uint16)],
            125,
            0,
        );
        assert_eq!(spans(&p), vec![(Holding, 0, 1), (Holding, 2, 1)]);
        let p = Plan::new(
            vec![item(0, Holding, 0, Uint16), item(1, Holding, 2, Uint16)],
            125,
            1,
        );
        assert_eq!(spans(&p), vec![(Holding, 0, 3)]);
    }

    #[test]
    fn respects_register_and_bit_limits() {
        let regs: Vec<Item> = (0..130)
            .map(|i| item(i, Holding, i as u16, Uint16))
            .collect();
        let p = Plan::new(regs.clone(), 125, 10);
        assert_eq!(spans(&p), vec![(Holding, 0, 125), (Holding, 125, 5)]);
        let p = Plan::new(regs, 200, 10);
        assert_eq!(p.requests[0].count, 125);
        let p = Plan::new(
            (0..30)
                .map(|i| item(i, Holding, i as u16 * 2, Float32))
                .collect(),
            10,
            0,
        );
        assert!(p.requests.iter().all(|r| r.count <= 10));
        assert_eq!(p.requests.len(), 6);
        let bits: Vec<Item> = (0..2100).map(|i| item(i, Coil, i as u16, Bool)).collect();
        let p = Plan::new(bits, 125, 10);
        assert_eq!(spans(&p), vec![(Coil, 0, 2000), (Coil, 2000, 100)]);
        assert_eq!(limit(DiscreteInput, 10), 160);
        // A value never straddles two requests.
        let p = Plan::new(
            vec![item(0, Holding, 0, Float64), item(1, Holding, 4, Float64)],
            6,
            0,
        );
        assert_eq!(spans(&p), vec![(Holding, 0, 4), (Holding, 4, 4)]);
    }

    #[test]
    fn bits_of_one_register_share_it() {
        let mut a = item(0, Holding, 10, Bool);
        a.address.bit = Some(3);
        let mut b = item(1, Holding, 10, Bool);
        b.address.bit = Some(4);
        let p = Plan::new(vec![a, b, item(2, Holding, 11, Int16)], 125, 0);
        assert_eq!(spans(&p), vec![(Holding, 10, 2)]);
    }

    #[test]
    fn splitting_after_an_exception_reaches_single_properties() {
        let mut p = Arc::new(Plan::new(
            (0..5).map(|i| item(i, Holding, i as u16, Uint16)).collect(),
            125,
            10,
        ));
        assert!(Plan::split_at(&mut p, 0));
        assert_eq!(spans(&p), vec![(Holding, 0, 2), (Holding, 2, 3)]);
        assert!(Plan::split_at(&mut p, 1));
        assert_eq!(
            spans(&p),
            vec![(Holding, 0, 2), (Holding, 2, 1), (Holding, 3, 2)]
        );
        assert!(!Plan::split_at(&mut p, 1));
        assert!(!Plan::split_at(&mut p, 9));
    }
}
