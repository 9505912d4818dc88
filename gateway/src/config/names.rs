//! Name and topic rules: device and namespace names, plain topics, MQTT
//! client ids, Sparkplug ids, and the device UID.

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a topic (or topic prefix) against the topic rules.
pub fn check_topic(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("a topic must not be empty".into());
    }
    if t.contains('+') || t.contains('#') {
        return Err(format!(
            "topic `{t}` contains a wildcard (`+` or `#`); topics here are plain names"
        ));
    }
    if t.contains('\0') {
        return Err(format!(
            "topic `{}` contains a NUL character",
            t.escape_debug()
        ));
    }
    if t.starts_with('/') {
        return Err(format!("topic `{t}` must not start with `/`"));
    }
    if t.starts_with('$') {
        return Err(format!(
            "topic `{t}` must not start with `$` (reserved for broker topics)"
        ));
    }
    if t.split('/').any(str::is_empty) {
        return Err(format!(
            "topic `{t}` has an empty level (`//` or a trailing `/`)"
        ));
    }
    if t.len() > 60_000 {
        return Err("topic is too long".into());
    }
    Ok(())
}

/// Longest MQTT client id (a UTF-8 string with a 16-bit length).
pub(super) const MAX_CLIENT_ID: usize = 65_535;

/// How a valid name is spelled, for messages.
pub(super) const NAME_RULE: &str =
    "use letters, digits, `_`, `.` and `-`, starting with a letter or digit";

/// A Sparkplug id (group, edge node, device, host): letters, digits, `_`
/// and `-`. Sparkplug forbids `+`, `/` and `#`; `.`, `*`, `>` and white
/// space are not allowed either, as hosts that bridge to NATS cannot carry them.
pub(crate) fn check_sparkplug_id(id: &str, what: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("the Sparkplug {what} must not be empty"));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        None => Ok(()),
        Some(c) => Err(format!(
            "`{id}` cannot be a Sparkplug {what}: `{c}` is not allowed; use letters, digits, `_` and `-` (Sparkplug forbids `+`, `/`, `#`; `.`, `*`, `>` and spaces break NATS-based hosts)"
        )),
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

/// Checks an MQTT topic filter: no empty filter, `#` only as the whole
/// last level, `+` only as a whole level, no NUL.
pub(crate) fn check_topic_filter(f: &str) -> Result<(), String> {
    if f.is_empty() {
        return Err("a topic filter must not be empty".into());
    }
    if f.contains('\0') {
        return Err(format!(
            "topic filter `{}` contains a NUL character",
            f.escape_debug()
        ));
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "topic filter `{f}`: `#` must be a whole level and the last one (e.g. `replies/#`)"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "topic filter `{f}`: `+` must be a whole level (e.g. `replies/+/status`)"
            ));
        }
    }
    if f.len() > 65_535 {
        return Err("topic filter is too long".into());
    }
    Ok(())
}
