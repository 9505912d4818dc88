//! Name and topic rules: device and namespace names, plain topics, MQTT
//! client ids, Sparkplug ids, and the device UID.

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`
pub(super) fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Why a topic (or topic prefix) breaks the topic rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic is empty.
    #[error("a topic must not be empty")]
    Empty,
    /// The topic holds `+` or `#`.
    #[error("topic `{0}` contains a wildcard (`+` or `#`); topics here are plain names")]
    Wildcard(String),
    /// The topic holds a NUL character.
    #[error("topic `{}` contains a NUL character", .0.escape_debug())]
    Nul(String),
    /// The topic starts with `/`.
    #[error("topic `{0}` must not start with `/`")]
    LeadingSlash(String),
    /// The topic starts with `$`.
    #[error("topic `{0}` must not start with `$` (reserved for broker topics)")]
    Reserved(String),
    /// The topic has an empty level.
    #[error("topic `{0}` has an empty level (`//` or a trailing `/`)")]
    EmptyLevel(String),
    /// The topic is longer than MQTT allows here.
    #[error("topic is too long")]
    TooLong,
}

/// Checks a topic (or topic prefix) against the topic rules.
pub fn check_topic(t: &str) -> Result<(), TopicError> {
    if t.is_empty() {
        return Err(TopicError::Empty);
    }
    if t.contains('+') || t.contains('#') {
        return Err(TopicError::Wildcard(t.to_owned()));
    }
    if t.contains('\0') {
        return Err(TopicError::Nul(t.to_owned()));
    }
    if t.starts_with('/') {
        return Err(TopicError::LeadingSlash(t.to_owned()));
    }
    if t.starts_with('$') {
        return Err(TopicError::Reserved(t.to_owned()));
    }
    if t.split('/').any(str::is_empty) {
        return Err(TopicError::EmptyLevel(t.to_owned()));
    }
    if t.len() > 60_000 {
        return Err(TopicError::TooLong);
    }
    Ok(())
}

/// Longest MQTT client id (a UTF-8 string with a 16-bit length).
pub(super) const MAX_CLIENT_ID: usize = 65_535;

/// How a valid name is spelled, for messages.
pub(super) const NAME_RULE: &str =
    "use letters, digits, `_`, `.` and `-`, starting with a letter or digit";

/// Why a text cannot be a Sparkplug id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum SparkplugIdError {
    /// The id is empty; `what` names the id (`group id`, `edge node id`, …).
    #[error("the Sparkplug {what} must not be empty")]
    Empty {
        /// Which id.
        what: String,
    },
    /// The id holds a character Sparkplug (or NATS) does not allow.
    #[error("`{id}` cannot be a Sparkplug {what}: `{bad}` is not allowed; use letters, digits, `_` and `-` (Sparkplug forbids `+`, `/`, `#`; `.`, `*`, `>` and spaces break NATS-based hosts)")]
    BadChar {
        /// The id as given.
        id: String,
        /// Which id.
        what: String,
        /// The first character not allowed.
        bad: char,
    },
}

/// A Sparkplug id (group, edge node, device, host): letters, digits, `_`
/// and `-`. Sparkplug forbids `+`, `/` and `#`; `.`, `*`, `>` and white
/// space are not allowed either, as hosts that bridge to NATS cannot carry them.
pub(crate) fn check_sparkplug_id(id: &str, what: &str) -> Result<(), SparkplugIdError> {
    if id.is_empty() {
        return Err(SparkplugIdError::Empty { what: what.into() });
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        None => Ok(()),
        Some(bad) => Err(SparkplugIdError::BadChar {
            id: id.into(),
            what: what.into(),
            bad,
        }),
    }
}

/// UUIDv5 (URL namespace) of `fieldgate://<ns>/<device>`.
pub fn device_uid(ns: &str, device: &str) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("fieldgate://{ns}/{device}").as_bytes(),
    )
    .to_string()
}

/// Why a text is not a usable MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TopicFilterError {
    /// The filter is empty.
    #[error("a topic filter must not be empty")]
    Empty,
    /// The filter holds a NUL character.
    #[error("topic filter `{}` contains a NUL character", .0.escape_debug())]
    Nul(String),
    /// `#` is not a whole last level.
    #[error("topic filter `{0}`: `#` must be a whole level and the last one (e.g. `replies/#`)")]
    MultiLevel(String),
    /// `+` is not a whole level.
    #[error("topic filter `{0}`: `+` must be a whole level (e.g. `replies/+/status`)")]
    SingleLevel(String),
    /// The filter is longer than MQTT allows.
    #[error("topic filter is too long")]
    TooLong,
}

/// Checks an MQTT topic filter: no empty filter, `#` only as the whole
/// last level, `+` only as a whole level, no NUL.
pub(crate) fn check_topic_filter(f: &str) -> Result<(), TopicFilterError> {
    if f.is_empty() {
        return Err(TopicFilterError::Empty);
    }
    if f.contains('\0') {
        return Err(TopicFilterError::Nul(f.to_owned()));
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(TopicFilterError::MultiLevel(f.to_owned()));
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicFilterError::SingleLevel(f.to_owned()));
        }
    }
    if f.len() > 65_535 {
        return Err(TopicFilterError::TooLong);
    }
    Ok(())
}
