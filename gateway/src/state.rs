//! Device state objects: normalization of raw readings (scale/offset,
//! `scaleFactor` exponents read from another property, enum labels),
//! per-property errors, and the publish policy (on-change with deadbands,
//! heartbeat). Produces the JSON payloads of `T` and `T/$meta`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fieldgate_drivers::{DataType, ReadCause, Readings, Value};
use serde::Serialize;

use crate::config::resolved::{DeviceSettings, PropertySemantics, PublishPolicy};

mod scaling;
#[cfg(test)]
pub(crate) mod tests;
mod timestamp;

use scaling::exponent_of;
pub(crate) use scaling::scaling;
pub use scaling::{ScaleFactorError, SCALE_FACTOR_RANGE};

/// Error text published for a NaN or infinite reading.
const NOT_FINITE: &str = "value is not finite";

/// A published (normalized) property value, cheap to compare and to write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Published {
    /// A boolean.
    Bool(bool),
    /// An exact signed integer.
    Int(i64),
    /// An exact unsigned integer.
    Uint(u64),
    /// A finite float (always written with a fraction or exponent).
    Float(f64),
    /// The label of the property's enum entry with this index.
    Label(usize),
    /// Text: a trimmed `string` or the hex form of `bytes`.
    Text(String),
}

impl Published {
    /// The numeric value, for the deadband comparison.
    fn as_number(&self) -> Option<f64> {
        match *self {
            Published::Int(i) => Some(i as f64),
            Published::Uint(u) => Some(u as f64),
            Published::Float(f) => Some(f),
            Published::Bool(_) | Published::Label(_) | Published::Text(_) => None,
        }
    }

    /// The value as a JSON tree (for `$set/result`), labels taken from `prop`.
    pub(crate) fn to_json(&self, prop: &PropertySemantics) -> serde_json::Value {
        match self {
            Published::Bool(b) => serde_json::Value::Bool(*b),
            Published::Int(i) => serde_json::Value::from(*i),
            Published::Uint(u) => serde_json::Value::from(*u),
            Published::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Published::Label(i) => prop
                .enum_entries()
                .get(*i)
                .map_or(serde_json::Value::Null, |e| {
                    serde_json::Value::String(e.label.clone())
                }),
            Published::Text(s) => serde_json::Value::String(s.clone()),
        }
    }
}

/// Whether two raw values are the same enum key (numerically equal numbers
/// of any width, or equal values of the same kind).
fn same_raw(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    match (a.as_i128(), b.as_i128()) {
        (Some(x), Some(y)) => x == y,
        _ => match (a, b) {
            (Value::Float(_), _) | (_, Value::Float(_)) => {
                matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
            }
            _ => false,
        },
    }
}

/// A small stack buffer for formatting one number without allocating.
struct NumBuf {
    bytes: [u8; 48],
    len: usize,
}

impl NumBuf {
    /// An empty buffer.
    fn new() -> Self {
        Self {
            bytes: [0; 48],
            len: 0,
        }
    }

    /// The formatted text (empty if it did not fit).
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for NumBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `x` rounded to 15 significant digits, so that scaling artefacts such as
/// `3 × 0.1 = 0.30000000000000004` publish as `0.3`.
pub(crate) fn round_significant(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let mut buf = NumBuf::new();
    if write!(buf, "{x:.14e}").is_err() {
        return x;
    }
    buf.as_str().parse().unwrap_or(x)
}

/// The shortest decimal that reads back as the same `f32`, as an `f64`
/// (so 21.1f32 publishes as 21.1, not 21.100000381469727).
pub(crate) fn shortest_f32(x: f64) -> f64 {
    let narrow = x as f32;
    if !narrow.is_finite() {
        return x;
    }
    let mut buf = NumBuf::new();
    if write!(buf, "{narrow:e}").is_err() {
        return x;
    }
    buf.as_str().parse().unwrap_or(x)
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Normalizes one raw reading of `prop` into its published form, or says why
/// it cannot be published; `exponent` is the reading of its `scaleFactor`.
pub(crate) fn normalize(
    prop: &PropertySemantics,
    raw: &Value,
    exponent: Option<i32>,
) -> Result<Published, &'static str> {
    if let Some(i) = prop
        .enum_entries()
        .iter()
        .position(|e| same_raw(&e.raw, raw))
    {
        return Ok(Published::Label(i));
    }
    // An unlabeled enum value is published as the raw number, unscaled.
    let scaling = if prop.enum_entries().is_empty() {
        scaling(prop, exponent)
    } else {
        None
    };
    let scaled = |x: f64| -> Result<Published, &'static str> {
        let y = match scaling {
            Some(s) => s.apply(x),
            None => x,
        };
        if y.is_finite() {
            Ok(Published::Float(y))
        } else {
            Err(NOT_FINITE)
        }
    };
    match raw {
        Value::Bool(b) => Ok(Published::Bool(*b)),
        Value::Int(i) if scaling.is_none() => Ok(Published::Int(*i)),
        Value::Uint(u) if scaling.is_none() => Ok(Published::Uint(*u)),
        Value::Int(i) => scaled(*i as f64),
        Value::Uint(u) => scaled(*u as f64),
        Value::Float(f) if !f.is_finite() => Err(NOT_FINITE),
        Value::Float(f) if prop.data_type == DataType::Float32 => scaled(shortest_f32(*f)),
        Value::Float(f) => scaled(*f),
        Value::String(s) => Ok(Published::Text(s.trim_end_matches(['\0', ' ']).to_owned())),
        Value::Bytes(b) => Ok(Published::Text(hex(b))),
    }
}

/// What the gateway knows about one property right now.
#[derive(Debug, Clone, PartialEq)]
enum Slot {
    /// Never read.
    Unread,
    /// The last read succeeded.
    Value(Published),
    /// The last read failed (or could not be published), with the reason.
    Error(String),
}

impl Slot {
    /// Sets `self` to an error with `message`, reusing its allocation.
    fn set_error(&mut self, message: &str) {
        match self {
            Slot::Error(m) if m == message => {}
            Slot::Error(m) => {
                m.clear();
                m.push_str(message);
            }
            _ => *self = Slot::Error(message.to_owned()),
        }
    }

    /// Copies `src` into `self`, reusing string allocations.
    fn copy_from(&mut self, src: &Slot) {
        match (&mut *self, src) {
            (Slot::Error(d), Slot::Error(s))
            | (Slot::Value(Published::Text(d)), Slot::Value(Published::Text(s))) => {
                d.clear();
                d.push_str(s);
            }
            _ => *self = src.clone(),
        }
    }

    /// Whether `self` counts as a change against the last published `old`.
    fn differs_from(&self, old: &Slot, deadband: Option<f64>) -> bool {
        match (self, old) {
            (Slot::Value(new), Slot::Value(old)) => match deadband {
                None => new != old,
                Some(band) => match (new.as_number(), old.as_number()) {
                    // Differences within float rounding of the band (22.1 - 21.6
                    // is 0.5000000000000036) do not count as more than it.
                    (Some(x), Some(y)) => {
                        let slack = x.abs().max(y.abs()) * 8.0 * f64::EPSILON;
                        (x - y).abs() > band + slack
                    }
                    _ => new != old,
                },
            },
            (Slot::Error(new), Slot::Error(old)) => new != old,
            (Slot::Unread, Slot::Unread) => false,
            _ => true,
        }
    }
}

/// Appends `v` as JSON to `buf`.
fn push_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) {
    // Serializing a string or number into a Vec cannot fail.
    if serde_json::to_writer(&mut *buf, v).is_err() {
        buf.extend_from_slice(b"null");
    }
}

/// Appends `s` as a JSON string to `buf`: copied as is when it needs no
/// escaping (the usual property name or label), escaped by serde_json otherwise.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        push_json(buf, s);
    }
}

/// One property's current value (as JSON) or the error of its last read;
/// `None` while it was never read.
pub type CurrentValue = Option<Result<serde_json::Value, PropertyError>>;

/// Why a property has no current value: the error of its last read, or why
/// that reading could not be published (serialized as the plain message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
#[error("{0}")]
pub struct PropertyError(pub String);

/// The live state of one device and its publish bookkeeping.
pub struct DeviceState {
    /// `{"name":"<device>","timestamp":"`
    prefix: Vec<u8>,
    /// The device's settings (property semantics in device order), shared
    /// with the running device rather than copied.
    settings: Arc<DeviceSettings>,
    /// The raw value last normalized into each current slot, same order.
    last_raw: Vec<Option<Value>>,
    /// Current state, same order.
    current: Vec<Slot>,
    /// State as last published (kept only with `on_change`).
    published: Vec<Slot>,
    /// Time of the latest readings.
    at: Option<SystemTime>,
    /// Time of the latest readings with at least one value (not all errors).
    read_ok_at: Option<SystemTime>,
    /// The device's publish policy.
    policy: PublishPolicy,
    /// When the state was last published.
    last_publish: Option<Instant>,
    /// Size of the last payload, to size the next one.
    last_len: usize,
    /// The properties with a `scaleFactor`, when the device has any.
    factors: Option<Box<Factors>>,
}

/// Bookkeeping of a device whose properties have `scaleFactor`s.
struct Factors {
    /// Indices of the properties with a `scaleFactor`, in device order.
    scaled: Box<[usize]>,
    /// Per property: read in the readings being applied (cleared after).
    touched: Vec<bool>,
}

impl DeviceState {
    /// A device with no readings yet.
    pub fn new(settings: &Arc<DeviceSettings>) -> Self {
        let mut prefix = b"{\"name\":".to_vec();
        push_json(&mut prefix, settings.name.as_str());
        prefix.extend_from_slice(b",\"timestamp\":\"");
        prefix.shrink_to_fit();
        let n = settings.properties.len();
        Self {
            prefix,
            settings: Arc::clone(settings),
            last_raw: vec![None; n],
            current: vec![Slot::Unread; n],
            // Only an on-change publisher compares with what it published.
            published: if settings.publish.on_change {
                vec![Slot::Unread; n]
            } else {
                Vec::new()
            },
            at: None,
            read_ok_at: None,
            policy: settings.publish,
            last_publish: None,
            last_len: 128,
            factors: Self::factors(settings),
        }
    }

    /// The `scaleFactor` bookkeeping `settings` needs (`None`: no property has one).
    fn factors(settings: &DeviceSettings) -> Option<Box<Factors>> {
        let scaled: Box<[usize]> = settings
            .properties
            .iter()
            .enumerate()
            .filter(|(_, p)| p.scale_factor().is_some())
            .map(|(i, _)| i)
            .collect();
        (!scaled.is_empty()).then(|| {
            Box::new(Factors {
                scaled,
                touched: vec![false; settings.properties.len()],
            })
        })
    }

    /// The current exponent of `prop`'s `scaleFactor` (`Ok(None)`: it has
    /// none): the latest reading of the property it names, which must have
    /// read a usable value.
    pub(crate) fn scale_exponent(
        &self,
        prop: &PropertySemantics,
    ) -> Result<Option<i32>, ScaleFactorError> {
        let Some(sf) = prop.scale_factor() else {
            return Ok(None);
        };
        let data_type = self
            .settings
            .properties
            .get(sf.index)
            .map_or(DataType::Int16, |p| p.data_type);
        match (self.current.get(sf.index), self.last_raw.get(sf.index)) {
            (Some(Slot::Value(_)), Some(Some(raw))) => exponent_of(sf, data_type, raw).map(Some),
            (Some(Slot::Error(reason)), _) => Err(ScaleFactorError::Failed {
                name: Arc::clone(&sf.name),
                reason: reason.clone(),
            }),
            _ => Err(ScaleFactorError::Unread {
                name: Arc::clone(&sf.name),
            }),
        }
    }

    /// Second step of [`DeviceState::apply`] for a device with
    /// `scaleFactor`s: every property with one whose own reading or whose
    /// scale factor's reading came in `readings` is normalized again with
    /// the scale factor as it now reads (an unusable one makes the property
    /// an error). Returns whether one of them changed against what was
    /// last published.
    fn apply_factors(&mut self, readings: &Readings) -> bool {
        let Some(mut factors) = self.factors.take() else {
            return false;
        };
        for (index, _) in &readings.values {
            if let Some(t) = factors.touched.get_mut(*index) {
                *t = true;
            }
        }
        let mut changed = false;
        for &i in factors.scaled.iter() {
            let Some(prop) = self.settings.properties.get(i) else {
                continue;
            };
            let sf_index = prop.scale_factor().map_or(i, |sf| sf.index);
            let touched = |j: usize| factors.touched.get(j).copied().unwrap_or(false);
            if !touched(i) && !touched(sf_index) {
                continue;
            }
            // A failed own read keeps its error (and left no raw value).
            let Some(Some(raw)) = self.last_raw.get(i) else {
                continue;
            };
            let next = match self.scale_exponent(prop) {
                Ok(exponent) => normalize(prop, raw, exponent).map_err(str::to_owned),
                Err(e) => Err(e.to_string()),
            };
            let Some(slot) = self.current.get_mut(i) else {
                continue;
            };
            match next {
                Ok(out) => *slot = Slot::Value(out),
                Err(reason) => slot.set_error(&reason),
            }
            if self.policy.on_change && !changed {
                if let Some(old) = self.published.get(i) {
                    changed = slot.differs_from(old, prop.deadband());
                }
            }
        }
        for (index, _) in &readings.values {
            if let Some(t) = factors.touched.get_mut(*index) {
                *t = false;
            }
        }
        self.factors = Some(factors);
        changed
    }

    /// Folds `readings` into the state. Returns the state payload (plain JSON,
    /// not yet base64) when the publish policy says to publish now.
    pub fn apply(&mut self, readings: &Readings, now: Instant) -> Option<Vec<u8>> {
        let mut changed = false;
        for (index, result) in &readings.values {
            let index = *index;
            let (Some(slot), Some(last_raw), Some(prop)) = (
                self.current.get_mut(index),
                self.last_raw.get_mut(index),
                self.settings.properties.get(index),
            ) else {
                tracing::debug!(index, "reading for an unknown property index ignored");
                continue;
            };
            match result {
                // Normalized in `apply_factors`, once every reading is in;
                // the raw value is kept even when the scale factor is not
                // usable, for when it is.
                Ok(raw) if prop.scale_factor().is_some() => {
                    if last_raw.as_ref() != Some(raw) {
                        *last_raw = Some(raw.clone());
                    }
                    continue;
                }
                Ok(raw) => {
                    let unchanged =
                        matches!(slot, Slot::Value(_)) && last_raw.as_ref() == Some(raw);
                    if !unchanged {
                        match normalize(prop, raw, None) {
                            Ok(out) => {
                                *slot = Slot::Value(out);
                                *last_raw = Some(raw.clone());
                            }
                            Err(reason) => {
                                slot.set_error(reason);
                                *last_raw = None;
                            }
                        }
                    }
                }
                Err(e) => {
                    slot.set_error(&e.message);
                    *last_raw = None;
                }
            }
            if self.policy.on_change && !changed {
                if let Some(old) = self.published.get(index) {
                    changed = slot.differs_from(old, prop.deadband());
                }
            }
        }
        if self.factors.is_some() && self.apply_factors(readings) {
            changed = true;
        }
        self.at = Some(readings.at);
        if readings.values.iter().any(|(_, r)| r.is_ok()) {
            self.read_ok_at = Some(readings.at);
        }
        let publish = !self.policy.on_change
            || self.last_publish.is_none()
            || readings.cause == ReadCause::Forced
            || changed
            || self.heartbeat_due().is_some_and(|due| now >= due);
        publish.then(|| self.publish_now(now))
    }

    /// When the latest readings that read at least one value were taken
    /// (`None`: none yet; readings that all failed do not count).
    pub fn last_reading(&self) -> Option<SystemTime> {
        self.read_ok_at
    }

    /// Every property's current value or error, in device order (for the
    /// status page; built on request, nothing kept for it).
    pub fn current(&self) -> Vec<CurrentValue> {
        self.current
            .iter()
            .zip(&self.settings.properties)
            .map(|(slot, prop)| match slot {
                Slot::Unread => None,
                Slot::Value(v) => Some(Ok(v.to_json(prop))),
                Slot::Error(e) => Some(Err(PropertyError(e.clone()))),
            })
            .collect()
    }

    /// When a heartbeat publish is next due (`None`: no heartbeat).
    pub fn heartbeat_due(&self) -> Option<Instant> {
        if !self.policy.on_change || self.policy.heartbeat == Duration::ZERO {
            return None;
        }
        self.last_publish?.checked_add(self.policy.heartbeat)
    }

    /// The current state payload (plain JSON), marking it published at `now`.
    pub fn publish_now(&mut self, now: Instant) -> Vec<u8> {
        let payload = self.payload();
        if self.policy.on_change {
            for (dst, src) in self.published.iter_mut().zip(&self.current) {
                dst.copy_from(src);
            }
        }
        self.last_publish = Some(now);
        self.last_len = payload.len();
        payload
    }

    /// The time of the latest readings and every property's current value
    /// (`None`: unread or failed), in property order: what a dialect other
    /// than fieldgate's JSON publishes.
    pub(crate) fn snapshot(&self) -> (SystemTime, Vec<Option<Published>>) {
        let values = self
            .current
            .iter()
            .map(|slot| match slot {
                Slot::Value(v) => Some(v.clone()),
                Slot::Error(_) | Slot::Unread => None,
            })
            .collect();
        (self.at.unwrap_or_else(SystemTime::now), values)
    }

    /// Serializes the current state.
    fn payload(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.last_len + 16);
        buf.extend_from_slice(&self.prefix);
        timestamp::push_rfc3339_millis(&mut buf, self.at.unwrap_or_else(SystemTime::now));
        buf.extend_from_slice(b"\",\"properties\":{");
        let mut first = true;
        let mut errors = false;
        for (slot, prop) in self.current.iter().zip(&self.settings.properties) {
            let value = match slot {
                Slot::Error(_) => {
                    errors = true;
                    continue;
                }
                Slot::Value(_) if is_device_slot(&prop.name) => continue,
                Slot::Value(v) => v,
                Slot::Unread => continue,
            };
            if !first {
                buf.push(b',');
            }
            first = false;
            push_json_str(&mut buf, &prop.name);
            buf.push(b':');
            match value {
                Published::Bool(b) => push_json(&mut buf, b),
                Published::Int(i) => push_json(&mut buf, i),
                Published::Uint(u) => push_json(&mut buf, u),
                Published::Float(f) => push_json(&mut buf, f),
                Published::Label(i) => match prop.enum_entries().get(*i) {
                    Some(entry) => push_json_str(&mut buf, &entry.label),
                    None => buf.extend_from_slice(b"null"),
                },
                Published::Text(s) => push_json(&mut buf, s.as_str()),
            }
        }
        buf.push(b'}');
        if errors {
            buf.extend_from_slice(b",\"errors\":{");
            let mut first = true;
            for (slot, prop) in self.current.iter().zip(&self.settings.properties) {
                if let Slot::Error(message) = slot {
                    if !first {
                        buf.push(b',');
                    }
                    first = false;
                    push_json_str(&mut buf, &prop.name);
                    buf.push(b':');
                    push_json(&mut buf, message.as_str());
                }
            }
            buf.push(b'}');
        }
        if !crate::clock::is_synchronized() {
            buf.extend_from_slice(b",\"clockSynchronized\":false");
        }
        buf.push(b'}');
        buf
    }
}

/// A driver's device-level error slot (`$advertisement`): a `$` name no
/// configured property can have. It shows only in `errors` and `$meta`
/// leaves it out.
pub(crate) fn is_device_slot(name: &str) -> bool {
    name.starts_with('$')
}

/// The JSON object key of an enum entry's raw value.
fn raw_key(raw: &Value) -> String {
    match raw {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::String(s) => s.clone(),
        Value::Bytes(b) => hex(b),
    }
}

/// A float as a JSON value (`null` if not finite; config validation forbids that).
fn json_f64(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// The retained `T/$meta` payload (plain JSON).
pub fn meta_payload(settings: &DeviceSettings) -> Vec<u8> {
    use serde_json::{Map, Value as J};
    let mut props = Map::new();
    for p in settings
        .properties
        .iter()
        .filter(|p| !is_device_slot(&p.name))
    {
        let mut m = Map::new();
        m.insert("type".into(), J::from(p.data_type.as_str()));
        if let Some(unit) = p.unit() {
            m.insert("unit".into(), J::from(unit));
        }
        m.insert("writable".into(), J::Bool(p.writable));
        if !p.enum_entries().is_empty() {
            let labels = p
                .enum_entries()
                .iter()
                .map(|e| (raw_key(&e.raw), J::from(e.label.as_str())))
                .collect::<Map<_, _>>();
            m.insert("enum".into(), J::Object(labels));
        }
        if let Some(description) = p.description() {
            m.insert("description".into(), J::from(description));
        }
        for (key, value) in [
            ("min", p.min()),
            ("max", p.max()),
            ("scale", p.scale()),
            ("offset", p.offset()),
        ] {
            if let Some(v) = value {
                m.insert(key.into(), json_f64(v));
            }
        }
        if let Some(sf) = p.scale_factor() {
            m.insert("scaleFactor".into(), J::from(&*sf.name));
        }
        props.insert(p.name.to_string(), J::Object(m));
    }
    let mut meta = Map::new();
    meta.insert("name".into(), J::from(settings.name.as_str()));
    meta.insert("driver".into(), J::from(settings.driver.as_str()));
    meta.insert("properties".into(), J::Object(props));
    let mut buf = Vec::with_capacity(256);
    push_json(&mut buf, &meta);
    buf
}
