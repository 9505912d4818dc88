//! A property's semantics from its config: enum labels, literals that must
//! fit the property's type, and `scaleFactor` references between
//! properties (what every driver's properties share).

use std::collections::HashMap;
use std::sync::Arc;

use fieldgate_drivers::{DataType, Value};

use super::resolved::*;
use super::tree::{Kind, Node};
use super::types::*;

/// Why a literal of the config (an `enum` key, a simulator `constant`)
/// does not fit its property's type; `what` names the literal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LiteralError {
    /// The literal's kind does not fit the type (a string for an int, …).
    #[error("{what} {shown} does not fit the property's type `{ty}`")]
    DoesNotFit {
        /// `enum key` or `constant`.
        what: &'static str,
        /// The literal as [`Node::describe`] shows it.
        shown: String,
        /// The property's type.
        ty: DataType,
    },
    /// An integer outside the type's range.
    #[error("{what} `{value}` is out of range for `{ty}` ({lo}..={hi})")]
    OutOfRange {
        /// `enum key` or `constant`.
        what: &'static str,
        /// The integer as written.
        value: i128,
        /// The property's type.
        ty: DataType,
        /// The type's smallest value.
        lo: i128,
        /// The type's largest value.
        hi: i128,
    },
    /// Text for a `bytes` property that is not hex.
    #[error("{what} `{value}` is not hex bytes (e.g. \"01ff\")")]
    NotHex {
        /// `enum key` or `constant`.
        what: &'static str,
        /// The text as written.
        value: String,
    },
}

impl LiteralError {
    /// The literal `node` (named `what`) does not fit type `ty`.
    pub(crate) fn does_not_fit(what: &'static str, node: &Node, ty: DataType) -> Self {
        LiteralError::DoesNotFit {
            what,
            shown: node.describe(),
            ty,
        }
    }

    /// Integer `value` (named `what`) is outside the range of `ty`.
    pub(crate) fn out_of_range(what: &'static str, value: i128, ty: DataType) -> Self {
        let (lo, hi) = ty.integer_range().unwrap_or_default();
        LiteralError::OutOfRange {
            what,
            value,
            ty,
            lo,
            hi,
        }
    }
}

/// What is wrong with the `scaleFactor` of numeric property `p`, if
/// anything: it must name another integer property of the device (`names`:
/// name → index in `props`) that has no `scaleFactor` of its own.
pub(super) fn scale_factor_problem(
    p: &PropertyConfig,
    props: &[(PropertyConfig, &Node, String)],
    names: &HashMap<String, usize>,
) -> Option<String> {
    let sf = p.scale_factor.as_deref()?;
    if !p.data_type.is_numeric() {
        return None; // reported with the other numeric-only keys
    }
    if sf == p.name {
        return Some(format!(
            "`scaleFactor: {sf}` names the property itself; name another integer property of this device that holds the power of ten (such as `{sf}_SF`)"
        ));
    }
    let Some((q, ..)) = names.get(sf).and_then(|&j| props.get(j)) else {
        let mut msg = format!("`scaleFactor: {sf}`: this device has no property `{sf}`");
        // Suggest only what would be valid: another integer property.
        let closest = names
            .iter()
            .filter(|(n, &j)| {
                **n != p.name && props.get(j).is_some_and(|(q, ..)| q.data_type.is_integer())
            })
            .map(|(n, _)| (strsim::jaro_winkler(sf, n), n))
            .filter(|(score, _)| *score >= 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, n)) = closest {
            msg.push_str(&format!(" (did you mean `{n}`?)"));
        }
        msg.push_str("; name an integer property of this device that holds the power of ten");
        return Some(msg);
    };
    if !q.data_type.is_integer() {
        return Some(format!(
            "`scaleFactor: {sf}`: `{sf}` is `{}`; a scale factor must be an integer property (int8…int64, uint8…uint64)",
            q.data_type
        ));
    }
    if let Some(next) = &q.scale_factor {
        return Some(format!(
            "`scaleFactor: {sf}`: `{sf}` has a `scaleFactor` itself (`{next}`); scale factors do not chain: name a property read as a plain integer"
        ));
    }
    None
}

/// Points every property's `scaleFactor` at the index of the property it
/// names (the config checks made sure there is one).
pub(super) fn link_scale_factors(
    props: &[(PropertyConfig, &Node, String)],
    sems: &mut [PropertySemantics],
) {
    if props.iter().all(|(p, ..)| p.scale_factor.is_none()) {
        return;
    }
    let index: HashMap<Arc<str>, usize> = sems
        .iter()
        .enumerate()
        .map(|(i, s)| (Arc::clone(&s.name), i))
        .collect();
    for (p, ..) in props {
        let Some(sf) = p.scale_factor.as_deref() else {
            continue;
        };
        let (Some(&i), Some(&j)) = (index.get(p.name.as_str()), index.get(sf)) else {
            continue;
        };
        let name = Arc::clone(&sems[j].name);
        sems[i]
            .details
            .get_or_insert_with(Default::default)
            .scale_factor = Some(ScaleFactorRef { name, index: j });
    }
}

/// The raw value an enum key node stands for, for type `t`.
pub(super) fn enum_raw(t: DataType, k: &Node) -> Result<Value, LiteralError> {
    const WHAT: &str = "enum key";
    let bad = || LiteralError::does_not_fit(WHAT, k, t);
    match (&k.kind, t) {
        (Kind::Bool(b), DataType::Bool) => Ok(Value::Bool(*b)),
        (Kind::Str(s), DataType::Bool) if &**s == "true" || &**s == "false" => {
            Ok(Value::Bool(&**s == "true"))
        }
        (Kind::Int(i), t) if t.is_integer() => Value::integer_of(t, i.get())
            .ok_or_else(|| LiteralError::out_of_range(WHAT, i.get(), t)),
        (Kind::Str(s), t) if t.is_integer() => match s.trim().parse::<i128>() {
            Ok(i) => Value::integer_of(t, i).ok_or_else(bad),
            Err(_) => Err(bad()),
        },
        (Kind::Int(i), t) if t.is_float() => Ok(Value::Float(i.get() as f64)),
        (Kind::Float(f), t) if t.is_float() => Ok(Value::Float(*f)),
        (_, DataType::String) => Ok(Value::String(k.text().ok_or_else(bad)?)),
        _ => Err(bad()),
    }
}

/// The gateway's view of property `p`, named by the `name` its driver spec
/// holds (one allocation per name, shared by driver and gateway).
pub(crate) fn semantics(
    p: &PropertyConfig,
    pn: &Node,
    name: Arc<str>,
) -> Option<PropertySemantics> {
    let mut entries = Vec::new();
    if let Some(en) = pn.get("enum").and_then(|e| e.entries()) {
        entries.reserve_exact(en.len());
        for (k, v) in en {
            entries.push(EnumEntry {
                raw: enum_raw(p.data_type, k).ok()?,
                label: v.text().unwrap_or_default(),
            });
        }
    }
    Some(
        PropertySemantics::new(name, p.data_type, p.writable).with(|d| {
            d.scale = p.scale;
            d.offset = p.offset;
            d.min = p.min;
            d.max = p.max;
            d.deadband = p.deadband;
            d.unit = p.unit.as_deref().map(Box::from);
            d.description = p.description.as_deref().map(Box::from);
            d.home_assistant = p.home_assistant.clone().map(Box::new);
            d.enum_entries = entries.into_boxed_slice();
        }),
    )
}
