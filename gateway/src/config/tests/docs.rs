//! docs/config.md stays a complete reference: every key the parser takes
//! (the JSON Schema generated from its types) and every key of every
//! driver's key tables is documented there.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::drivers;
use crate::config::types::DriverKind;

/// The reference page, as shipped.
const DOC: &str = include_str!("../../../../docs/config.md");

/// Whether `key` appears in the page as a key: in backticks, alone or as
/// a part of a dotted path (`` `store.maxAge` ``, `` `gateway.log.level` ``).
fn documented(key: &str) -> bool {
    DOC.contains(&format!("`{key}`"))
        || DOC.contains(&format!("`{key}."))
        || DOC.contains(&format!(".{key}."))
        || DOC.contains(&format!(".{key}`"))
        || DOC.contains(&format!(".{key},"))
        || DOC.contains(&format!(".{key} "))
}

/// Every property name of every object schema reachable from `schema`.
fn schema_keys(schema: &Value, out: &mut BTreeSet<String>) {
    let Some(obj) = schema.as_object() else {
        if let Some(items) = schema.as_array() {
            items.iter().for_each(|s| schema_keys(s, out));
        }
        return;
    };
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, sub) in props {
            out.insert(k.clone());
            schema_keys(sub, out);
        }
    }
    for nested in ["$defs", "patternProperties"] {
        if let Some(defs) = obj.get(nested).and_then(Value::as_object) {
            defs.values().for_each(|s| schema_keys(s, out));
        }
    }
    for sub in ["items", "additionalProperties", "anyOf", "oneOf", "allOf"] {
        if let Some(s) = obj.get(sub) {
            schema_keys(s, out);
        }
    }
}

#[test]
fn every_schema_key_is_in_the_config_reference() {
    let mut keys = BTreeSet::new();
    schema_keys(&crate::config::schema::schema_json(), &mut keys);
    // The walk must reach the nested sections, not only the top level.
    for deep in [
        "caFilePemRef",
        "minFreeBytes",
        "statusTopic",
        "serviceUuid",
        "period",
    ] {
        assert!(keys.contains(deep), "schema walk missed `{deep}`");
    }
    let missing: Vec<&String> = keys.iter().filter(|k| !documented(k)).collect();
    assert!(
        missing.is_empty(),
        "keys of the config schema missing from docs/config.md: {missing:?}"
    );
}

#[test]
fn every_driver_key_is_in_its_driver_section() {
    for kind in [
        DriverKind::Dummy,
        DriverKind::Modbus,
        DriverKind::Opcua,
        DriverKind::Ble,
    ] {
        let d = drivers::of(kind);
        let heading = format!("### Driver `{}`", kind.as_str());
        // A driver's keys are documented in its own section(s).
        let sections: String = DOC
            .split("\n### ")
            .filter(|s| format!("\n### {s}").starts_with(&format!("\n{heading}")))
            .collect();
        assert!(
            !sections.is_empty(),
            "no section `{heading}` in docs/config.md"
        );
        for key in d.protocol_keys().iter().chain(d.property_keys()) {
            assert!(
                sections.contains(&format!("`{key}`")) || sections.contains(&format!("`{key}.")),
                "`{key}` of driver {} is not in its section of docs/config.md",
                kind.as_str()
            );
        }
    }
}
