//! `fieldgate schema`: the JSON Schema of the config file.

use serde_json::Value;

use super::types::ConfigFile;

/// Accepted misspellings of the reference design: (definition, alias, key).
const ALIASES: &[(&str, &str, &str)] = &[
    ("ClientOptions", "connectionTime", "connectTimeout"),
    ("BasicAuth", "passsword", "password"),
    ("StoreOptions", "direcotryPrefix", "directoryPrefix"),
];

/// The JSON Schema of [`ConfigFile`] as a JSON value: every mapping has
/// `additionalProperties: false`, and the accepted aliases are listed too
/// (marked deprecated) so editors do not flag them.
pub fn schema_json() -> Value {
    let mut s = schemars::schema_for!(ConfigFile);
    s.insert("title".into(), "fieldgate configuration".into());
    s.remove("$id");
    let mut v = s.to_value();
    for (def, alias, key) in ALIASES {
        if let Some(props) = v
            .pointer_mut(&format!("/$defs/{def}/properties"))
            .and_then(Value::as_object_mut)
        {
            if let Some(mut target) = props.get(*key).cloned() {
                if let Some(o) = target.as_object_mut() {
                    o.insert(
                        "description".into(),
                        format!("Alias of `{key}` (spelling of the reference design).").into(),
                    );
                    o.insert("deprecated".into(), true.into());
                }
                props.insert((*alias).into(), target);
            }
        }
    }
    v
}

/// The schema, pretty-printed.
pub fn schema_pretty() -> String {
    serde_json::to_string_pretty(&schema_json()).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_strict_and_lists_aliases() {
        let v = schema_json();
        assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(v["title"], "fieldgate configuration");
        assert!(v.get("$id").is_none());
        assert_eq!(v["additionalProperties"], false);
        assert_eq!(v["$defs"]["DeviceConfig"]["additionalProperties"], false);
        assert!(v["$defs"]["ClientOptions"]["properties"]["connectionTime"].is_object());
        assert!(v["$defs"]["BasicAuth"]["properties"]["passsword"].is_object());
        assert!(v["$defs"]["StoreOptions"]["properties"]["direcotryPrefix"].is_object());
    }
}
