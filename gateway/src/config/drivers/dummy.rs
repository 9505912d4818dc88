//! The dummy driver (the built-in simulator): `model: fan`, or properties
//! with a `simulate:` generator.

use std::path::Path;
use std::sync::Arc;

use fieldgate_drivers::dummy::Generator;
use fieldgate_drivers::{Connection, DataType, DeviceSpec, PropertyAddress, PropertySpec, Value};

use super::DriverConfig;
use crate::config::ctx::Ctx;
use crate::config::devices::ParsedDevice;
use crate::config::properties::{semantics, LiteralError};
use crate::config::resolved::{EnumEntry, PropertySemantics};
use crate::config::tree::{join, Kind, Node};
use crate::config::types::*;

/// The dummy driver's config.
pub(super) struct Dummy;

/// Keys of a dummy property besides the common ones.
const PROPERTY_KEYS: &[&str] = &["simulate"];

impl DriverConfig for Dummy {
    fn protocol_keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn property_keys(&self) -> &'static [&'static str] {
        PROPERTY_KEYS
    }

    fn check_property(
        &self,
        ctx: &mut Ctx,
        _d: &ParsedDevice<'_>,
        p: &PropertyConfig,
        pn: &Node,
        pp: &str,
    ) {
        check_property(ctx, p, pn, pp);
    }

    /// Either `model` or `properties`.
    fn check_device(&self, ctx: &mut Ctx, _base: &Path, d: &ParsedDevice<'_>) {
        let path = &d.path;
        let has_props = d.node.get("properties").is_some_and(|p| !p.is_null());
        match (d.config.model.is_some(), has_props) {
            (true, true) => ctx.key(
                d.node,
                path,
                &["properties"],
                "a dummy device takes either `model` or `properties`, not both",
            ),
            (false, false) => ctx.key(
                d.node,
                path,
                &["driver"],
                "a dummy device needs `model: fan` or a list of `properties` with `simulate`",
            ),
            _ => {}
        }
    }

    fn build(
        &self,
        _base: &Path,
        _state_directory: &str,
        d: &ParsedDevice<'_>,
        specs: &mut Vec<PropertySpec>,
        sems: &mut Vec<PropertySemantics>,
    ) -> Option<Connection> {
        if d.config.model == Some(DummyModel::Fan) {
            for (name, t, w, g) in [
                ("on", DataType::Bool, true, Generator::FanOn),
                ("gear", DataType::Uint8, true, Generator::FanGear),
                ("rotatingSpeed", DataType::Int32, false, Generator::FanSpeed),
            ] {
                let name_shared: Arc<str> = name.into();
                specs.push(PropertySpec {
                    name: Arc::clone(&name_shared),
                    data_type: t,
                    writable: w,
                    address: PropertyAddress::Simulated(g),
                });
                let s = PropertySemantics::new(name_shared, t, w);
                sems.push(if name == "gear" {
                    s.with(|d| {
                        d.enum_entries = ["slow", "middle", "fast"]
                            .iter()
                            .enumerate()
                            .map(|(i, l)| EnumEntry {
                                raw: Value::Uint(i as u64),
                                label: (*l).into(),
                            })
                            .collect();
                    })
                } else {
                    s
                });
            }
        } else {
            for (p, pn, _) in &d.props {
                let g = generator(p, pn)?;
                let name: Arc<str> = p.name.as_str().into();
                specs.push(PropertySpec {
                    name: Arc::clone(&name),
                    data_type: p.data_type,
                    writable: p.writable,
                    address: PropertyAddress::Simulated(g),
                });
                sems.push(semantics(p, pn, name)?);
            }
        }
        Some(Connection::Dummy)
    }

    fn report_connection(&self, _out: &mut String, _spec: &DeviceSpec) {}

    fn report_address(&self, line: &mut String, address: &PropertyAddress) {
        use std::fmt::Write as _;
        if let PropertyAddress::Simulated(g) = address {
            let _ = write!(line, ", simulated {g:?}");
        }
    }
}

/// The value a `constant:` node stands for, for type `t`.
fn constant_value(t: DataType, v: &Node) -> Result<Value, LiteralError> {
    const WHAT: &str = "constant";
    let bad = || LiteralError::does_not_fit(WHAT, v, t);
    match (&v.kind, t) {
        (Kind::Bool(b), DataType::Bool) => Ok(Value::Bool(*b)),
        (Kind::Int(i), t) if t.is_integer() => Value::integer_of(t, i.get())
            .ok_or_else(|| LiteralError::out_of_range(WHAT, i.get(), t)),
        (Kind::Float(f), t) if t.is_integer() && f.fract() == 0.0 => {
            Value::integer_of(t, *f as i128).ok_or_else(bad)
        }
        (Kind::Int(i), t) if t.is_float() => Ok(Value::Float(i.get() as f64)),
        (Kind::Float(f), t) if t.is_float() => Ok(Value::Float(*f)),
        (Kind::Str(s), DataType::String) => Ok(Value::String(s.to_string())),
        (Kind::Str(s), DataType::Bytes) => {
            decode_hex(s)
                .map(Value::Bytes)
                .ok_or_else(|| LiteralError::NotHex {
                    what: WHAT,
                    value: s.to_string(),
                })
        }
        _ => Err(bad()),
    }
}

/// Hex text (`01ff`, `0x01ff`) as bytes.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The generator of a property whose checks passed.
fn generator(p: &PropertyConfig, pn: &Node) -> Option<Generator> {
    Some(match p.simulate.as_ref()? {
        SimulateConfig::Constant(_) => {
            let v = pn.get("simulate")?.get("constant")?;
            Generator::Constant(constant_value(p.data_type, v).ok()?)
        }
        SimulateConfig::Counter { start, step } => Generator::Counter {
            start: *start,
            step: *step,
        },
        SimulateConfig::Random { min, max } => Generator::Random {
            min: *min,
            max: *max,
        },
        SimulateConfig::Sine { min, max, period } => Generator::Sine {
            min: *min,
            max: *max,
            period: period.0,
        },
    })
}

/// The `simulate:` generator of one property.
fn check_property(ctx: &mut Ctx, p: &PropertyConfig, pn: &Node, pp: &str) {
    let Some(sim) = &p.simulate else {
        ctx.at(
            pn,
            pp,
            "a dummy property needs `simulate` with one of `constant`, `counter`, `random`, `sine`",
        );
        return;
    };
    let sn = pn.get("simulate").unwrap_or(pn);
    let sp = join(pp, "simulate");
    let t = p.data_type;
    match sim {
        SimulateConfig::Constant(_) => {
            if let Some(v) = sn.get("constant") {
                if let Err(e) = constant_value(t, v) {
                    ctx.at(v, &join(&sp, "constant"), e);
                }
            }
        }
        other => {
            let (key, lo_hi, period) = match other {
                SimulateConfig::Counter { .. } => ("counter", None, None),
                SimulateConfig::Random { min, max } => ("random", Some((*min, *max)), None),
                SimulateConfig::Sine { min, max, period } => {
                    ("sine", Some((*min, *max)), Some(period.0))
                }
                SimulateConfig::Constant(_) => unreachable!(),
            };
            let gn = sn.get(key).unwrap_or(sn);
            let gp = join(&sp, key);
            if !t.is_numeric() {
                ctx.key(
                    sn,
                    &sp,
                    &[key],
                    format!("`{key}` generates numbers; a `{t}` property needs `constant`"),
                );
            }
            if let Some((lo, hi)) = lo_hi {
                if lo > hi {
                    ctx.val(gn, &gp, &["max"], format!("max ({hi}) is below min ({lo})"));
                }
            }
            if period.is_some_and(|p| p.is_zero()) {
                ctx.val(gn, &gp, &["period"], "period must be greater than 0s");
            }
        }
    }
}
