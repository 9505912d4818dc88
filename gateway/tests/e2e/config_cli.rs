//! Runs the real binary: `check` on broken and good configs, and `schema`.

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fieldgate"))
}

fn check(path: &Path) -> Output {
    bin()
        .arg("check")
        .arg("-c")
        .arg(path)
        .env_remove("FIELDGATE_CONFIG")
        .output()
        .expect("run fieldgate")
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn broken_config_exits_78_with_every_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.yaml",
        "gateway:\n  namespce: x\nmqtt:\n  message:\n    qos: 5\ndevices:\n  - name: a\n    driver: dummy\n    model: fan\n  - name: a\n    driver: dummy\n    model: fan\n    syncInterval: soon\n",
    );
    let out = check(&p);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = p.display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{f}:2:3: gateway.namespce: unknown key `namespce` (did you mean `namespace`?); allowed keys: `namespace`, `stateDirectory`, `secretsDirectory`, `metrics`, `log`, `clockCheck`, `reload`, `healthInterval`"),
            format!("{f}:5:10: mqtt.message.qos: qos 5 is out of range; allowed: 0, 1, 2"),
            format!("{f}:10:11: devices[1].name: duplicate device name `a`: already used by devices[0]; device names must be unique"),
            format!("{f}:13:19: devices[1].syncInterval: `soon` is not a duration (expected number at 0); write e.g. 500ms, 30s, 10m"),
        ],
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn yaml_syntax_error_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "syn.yaml", "gateway:\n  namespace: [x\n");
    let out = check(&p);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = p.display().to_string();
    assert!(err.starts_with(&format!("{f}:")), "{err}");
    assert!(err.contains("YAML syntax error"), "{err}");
    let first = err.lines().next().unwrap();
    let mut parts = first[f.len() + 1..].splitn(3, ':');
    let line: usize = parts.next().unwrap().parse().unwrap();
    let col: usize = parts.next().unwrap().parse().unwrap();
    assert!(line >= 2 && col >= 1, "{first}");
}

#[test]
fn unreadable_file_exits_78() {
    let out = check(Path::new("/nonexistent/fieldgate.yaml"));
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("/nonexistent/fieldgate.yaml:1:1: : cannot read"),
        "{err}"
    );
}

#[test]
fn good_config_prints_topics_and_no_password() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "pw", "topsecret\n");
    let p = write(
        dir.path(),
        "good.yaml",
        "gateway: {namespace: plant-a}\nmqtt:\n  client: {basicAuth: {name: gw, passwordFile: pw}}\ndevices:\n  - name: fan\n    driver: dummy\n    model: fan\n  - name: gen\n    driver: dummy\n    mqtt: {message: {topic: {name: custom/gen}}, client: {keepAlive: 15s}}\n    properties:\n      - {name: t, type: float64, unit: C, scale: 0.5, simulate: {sine: {min: 1, max: 2, period: 10s}}}\n",
    );
    let out = check(&p);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in [
        "fieldgate/plant-a/fan",
        "fieldgate/plant-a/fan/$set",
        "fieldgate/plant-a/fan/$set/result",
        "fieldgate/plant-a/fan/$get",
        "fieldgate/plant-a/fan/$state",
        "fieldgate/plant-a/fan/$meta",
        "custom/gen/$set",
        "fieldgate-plant-a-gen",
        "fieldgate-plant-a",
        "fieldgate/plant-a/$will",
        "custom/gen/$will",
        "password: (set)",
        "scale 0.5",
    ] {
        assert!(stdout.contains(t), "missing `{t}` in:\n{stdout}");
    }
    assert!(!stdout.contains("topsecret"), "{stdout}");
}

#[cfg(feature = "opcua")]
#[test]
fn check_warns_about_a_plaintext_opcua_password() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |allow: &str| {
        format!("devices:\n  - name: plc\n    driver: opcua\n    protocol: {{endpoint: 'opc.tcp://plc:4840', username: op, password: topsecret{allow}}}\n    properties: [{{name: s, nodeId: 'ns=2;s=S', type: float64}}]\n")
    };
    let refused = check(&write(dir.path(), "refused.yaml", &yaml("")));
    assert_eq!(refused.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("devices[0].protocol.username:")
            && stderr.contains("allowPlaintextPassword: true"),
        "{stderr}"
    );
    let out = check(&write(
        dir.path(),
        "allowed.yaml",
        &yaml(", allowPlaintextPassword: true"),
    ));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("warning: allowPlaintextPassword: the password is sent in plain text"),
        "{stdout}"
    );
    assert!(!stdout.contains("topsecret"), "{stdout}");
}

#[test]
fn schema_is_json() {
    let out = bin().arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["additionalProperties"], false);
    assert!(v["$schema"].is_string());
    assert!(v["title"].is_string());
}
