//! Every example in `configs/` validates against `fieldgate schema` and
//! passes `fieldgate check`; the shipped `configs/fieldgate.schema.json` is
//! exactly what `fieldgate schema` prints.

use crate::support;

use std::path::PathBuf;

use support::fieldgate;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// The schema as printed by the binary.
fn printed_schema() -> String {
    let out = fieldgate(&["schema"]);
    assert!(out.status.success(), "fieldgate schema failed: {out:?}");
    String::from_utf8(out.stdout).expect("schema is UTF-8")
}

/// Every `*.yaml` in `configs/`, sorted.
fn example_configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(configs_dir())
        .expect("read configs/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "examples in configs/: {files:?}");
    files
}

#[test]
fn every_example_validates_against_the_schema_and_passes_check() {
    let schema: serde_json::Value =
        serde_json::from_str(&printed_schema()).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    for path in example_configs() {
        let text = std::fs::read_to_string(&path).expect("read example");
        // Strict booleans, as the loader and YAML 1.2 editors read them:
        // `off` in `{0: off}` is a string.
        let doc: serde_json::Value = serde_saphyr::from_str_with_options(
            &text,
            serde_saphyr::options! { strict_booleans: true },
        )
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match the schema:\n{}",
            path.display(),
            errors.join("\n")
        );

        let path_arg = path.to_str().expect("UTF-8 path");
        let out = fieldgate(&["check", "-c", path_arg]);
        assert!(
            out.status.success(),
            "fieldgate check {}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("config OK"));
    }
}

#[test]
fn the_schema_rejects_what_the_parser_rejects() {
    let schema: serde_json::Value =
        serde_json::from_str(&printed_schema()).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let unknown_key = serde_json::json!({
        "devices": [{ "name": "a", "driver": "dummy", "model": "fan", "colour": "red" }]
    });
    assert!(
        !validator.is_valid(&unknown_key),
        "unknown keys are refused"
    );
    let bad_driver = serde_json::json!({
        "devices": [{ "name": "a", "driver": "profibus" }]
    });
    assert!(
        !validator.is_valid(&bad_driver),
        "unknown drivers are refused"
    );
}

#[test]
fn the_shipped_schema_file_is_current() {
    let shipped = std::fs::read_to_string(configs_dir().join("fieldgate.schema.json"))
        .expect("configs/fieldgate.schema.json exists");
    assert_eq!(
        shipped.trim_end(),
        printed_schema().trim_end(),
        "configs/fieldgate.schema.json is stale: regenerate it with \
         `fieldgate schema > configs/fieldgate.schema.json`"
    );
}

#[test]
fn check_prints_each_devices_merged_mqtt_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        r#"gateway: { namespace: t, metrics: { listen: "" } }
mqtt:
  client: { server: tcp://127.0.0.1:1883, keepAlive: 20s }
devices:
  - { name: a, driver: dummy, model: fan }
  - name: b
    driver: dummy
    model: fan
    mqtt: { client: { clientId: own, maxReconnectInterval: 5s }, message: { qos: 1 } }
"#,
    )
    .unwrap();
    let out = fieldgate(&["check", "-c", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let b = &text[text.find("\n  b (driver dummy)").expect("device b")..];
    let a = &text[text.find("\n  a (driver dummy)").expect("device a")..];
    assert!(a.contains("session: [0] fieldgate-t"), "{text}");
    assert!(b.contains("session: [1] own"), "{text}");
    // b inherits keepAlive and overrides maxReconnectInterval and the message QoS.
    assert!(
        b.contains("keepAlive 20s, pingTimeout 10s, autoReconnect true, maxReconnectInterval 5s"),
        "merged client options of b: {text}"
    );
    assert!(b.contains("message: qos 1"), "{text}");
}
