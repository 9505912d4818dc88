//! Where a `$set` result goes: the MQTT 5 response topic a command names is
//! used only when it is a valid publish topic that `responseTopics` allows
//! (CONTRACT §9); otherwise the result goes to `T/$set/result` only, with
//! an error saying why the response topic was not used.

use crate::config::resolved::ResponseTopicPolicy;

/// Longest response topic used.
pub const MAX_RESPONSE_TOPIC: usize = 32 * 1024;

/// Why a response topic is not used, for the `$payload` error; `None` when
/// it may be used.
pub fn refuse_response_topic(topic: &str, policy: &ResponseTopicPolicy) -> Option<String> {
    let shown = shown(topic);
    let invalid = if topic.is_empty() {
        Some("it is empty")
    } else if topic.len() > MAX_RESPONSE_TOPIC {
        Some("it is longer than 32 KiB")
    } else if topic.contains(['+', '#']) {
        Some("it holds a wildcard (+ or #)")
    } else if topic.contains('\0') {
        Some("it holds a NUL character")
    } else if topic.starts_with('$') {
        Some("it starts with $")
    } else {
        None
    };
    if let Some(why) = invalid {
        return Some(format!(
            "response topic {shown} not used: {why}; the result is on $set/result only"
        ));
    }
    match policy {
        ResponseTopicPolicy::Any => None,
        ResponseTopicPolicy::None => Some(format!(
            "response topic {shown} not used: mqtt.message.responseTopics is none; the result is on $set/result only"
        )),
        ResponseTopicPolicy::Filters(filters) => {
            if filters.iter().any(|f| rumqttc::matches(topic, f)) {
                None
            } else {
                Some(format!(
                    "response topic {shown} not used: it matches none of mqtt.message.responseTopics; the result is on $set/result only"
                ))
            }
        }
    }
}

/// The topic quoted for an error message, cut to 200 characters.
fn shown(topic: &str) -> String {
    let cut: String = topic.chars().take(200).collect();
    if cut.len() < topic.len() {
        format!("{:?}…", cut)
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_allowed_topics_are_used() {
        let any = ResponseTopicPolicy::Any;
        assert_eq!(refuse_response_topic("replies/a", &any), None);
        for bad in ["", "a/+", "a/#", "#", "$SYS/x", "a\0b"] {
            assert!(refuse_response_topic(bad, &any).is_some(), "{bad:?}");
        }
        assert!(refuse_response_topic(&"a".repeat(40_000), &any).is_some());
        let filters = ResponseTopicPolicy::Filters(vec!["replies/#".into()]);
        assert_eq!(refuse_response_topic("replies/a/b", &filters), None);
        let e = refuse_response_topic("other/a", &filters).unwrap();
        assert!(e.contains("\"other/a\""), "{e}");
        assert!(refuse_response_topic("replies/a", &ResponseTopicPolicy::None).is_some());
    }
}
