//! Scaling: how a property's raw number becomes its published one (scale,
//! offset and a `scaleFactor` exponent read from another property), and
//! the checks of that exponent.

use std::sync::Arc;

use fieldgate_drivers::{DataType, Value};

use super::round_significant;
use crate::config::resolved::{PropertySemantics, ScaleFactorRef};

/// How a property's raw number becomes its published one:
/// published = raw × scale × 10^exponent + offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scaling {
    /// `scale` (1 when unset).
    scale: f64,
    /// The `scaleFactor` reading (0 without one).
    exponent: i32,
    /// `offset` (0 when unset).
    offset: f64,
}

impl Scaling {
    /// The published value of raw `x`.
    pub(crate) fn apply(self, x: f64) -> f64 {
        round_significant(times_pow10(x * self.scale, self.exponent) + self.offset)
    }

    /// The raw value of published `v` (the inverse of [`Scaling::apply`]).
    pub(crate) fn invert(self, v: f64) -> f64 {
        round_significant(times_pow10(v - self.offset, -self.exponent) / self.scale)
    }
}

/// `x × 10^e`, dividing for negative `e` so that `2301 × 10^-1` is exactly
/// the double nearest 230.1.
fn times_pow10(x: f64, e: i32) -> f64 {
    match e {
        0 => x,
        e if e < 0 => x / 10f64.powi(-e),
        e => x * 10f64.powi(e),
    }
}

/// The scaling of a property, when it has `scale`, `offset` or a
/// `scaleFactor` (whose current reading is `exponent`; `None` counts as 0).
pub(crate) fn scaling(prop: &PropertySemantics, exponent: Option<i32>) -> Option<Scaling> {
    if !prop.is_scaled() {
        return None;
    }
    Some(Scaling {
        scale: prop.scale().unwrap_or(1.0),
        exponent: exponent.unwrap_or(0),
        offset: prop.offset().unwrap_or(0.0),
    })
}

/// The exponents a `scaleFactor` may read: SunSpec's range.
pub const SCALE_FACTOR_RANGE: std::ops::RangeInclusive<i32> = -10..=10;

/// Why a property with a `scaleFactor` has no value now: its scale factor
/// is not usable (published in `errors` under the property's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScaleFactorError {
    /// The scale factor was never read.
    #[error("scale factor {name} not read yet")]
    Unread {
        /// The scale factor property.
        name: Arc<str>,
    },
    /// The scale factor's last read failed.
    #[error("scale factor {name} unavailable: {reason}")]
    Failed {
        /// The scale factor property.
        name: Arc<str>,
        /// Its error.
        reason: String,
    },
    /// The scale factor reads its type's "not implemented" value (SunSpec:
    /// 0x8000 for int16, the largest value for unsigned types).
    #[error("scale factor {name} is not implemented by the device (reads {raw}, {hex})")]
    NotImplemented {
        /// The scale factor property.
        name: Arc<str>,
        /// Its reading.
        raw: i128,
        /// The reading in hex, as the register holds it.
        hex: String,
    },
    /// The scale factor reads a value outside [`SCALE_FACTOR_RANGE`].
    #[error("scale factor {name} reads {raw}, outside -10..=10")]
    OutOfRange {
        /// The scale factor property.
        name: Arc<str>,
        /// Its reading.
        raw: i128,
    },
}

/// The exponent that raw reading `raw` of scale factor `sf` (of type
/// `data_type`) stands for.
pub(super) fn exponent_of(
    sf: &ScaleFactorRef,
    data_type: DataType,
    raw: &Value,
) -> Result<i32, ScaleFactorError> {
    let name = || Arc::clone(&sf.name);
    let Some(x) = raw.as_i128() else {
        return Err(ScaleFactorError::Failed {
            name: name(),
            reason: "not an integer".to_owned(),
        });
    };
    let unimplemented = match data_type.integer_range() {
        Some((lo, _)) if lo < 0 => x == lo,
        Some((_, hi)) => x == hi,
        None => false,
    };
    if unimplemented {
        // Integer types are 1 to 8 bytes: the reading as the register holds it.
        let bytes = data_type.fixed_size().unwrap_or(8).min(8);
        let mask = u128::from(u64::MAX) >> (64 - 8 * bytes);
        return Err(ScaleFactorError::NotImplemented {
            name: name(),
            raw: x,
            hex: format!("{:#0w$x}", (x as u128) & mask, w = 2 + 2 * bytes),
        });
    }
    match i32::try_from(x) {
        Ok(e) if SCALE_FACTOR_RANGE.contains(&e) => Ok(e),
        _ => Err(ScaleFactorError::OutOfRange {
            name: name(),
            raw: x,
        }),
    }
}
