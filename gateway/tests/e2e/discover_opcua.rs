//! `fieldgate discover opcua` against a real async-opcua server with a nested
//! address space of 520 variables of mixed types: the printed YAML passes
//! `fieldgate check`, and the gateway run with it publishes every variable.
//! Discovery only reads: the server's values are unchanged afterwards.

use crate::opcua_server;
use crate::support;

use std::time::Duration;

use opcua_server::{OpcUaServer, Options, TREE_ROOT};
use support::{Gateway, Mosquitto, MqttProbe};

const WAIT: Duration = Duration::from_secs(60);
const VARIABLES: usize = 520;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_yaml_is_valid_and_every_variable_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new(&dir.path().join("server"));
    opts.tree = VARIABLES;
    let server = OpcUaServer::start(opts).await;
    let before: Vec<_> = opcua_server::scalars()
        .iter()
        .map(|(n, _)| server.value(n))
        .collect();

    let root = format!("ns={};s={TREE_ROOT}", server.ns);
    let state = dir.path().join("state");
    let args: Vec<String> = [
        "discover",
        "opcua",
        server.url.as_str(),
        "--root",
        root.as_str(),
        "--depth",
        "4",
        "--name",
        "plant",
        "--state-directory",
        state.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        support::fieldgate(&a)
    })
    .await
    .unwrap();
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "discover failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
    let props: Vec<&str> = yaml
        .lines()
        .filter(|l| l.trim_start().starts_with("- { name:"))
        .collect();
    assert_eq!(props.len(), VARIABLES, "{yaml}");
    // Names from browse paths, sanitised and unique.
    assert!(
        yaml.contains(r#"name: "Area_0.Line_0.Double__10_", nodeId: "ns="#),
        "{yaml}"
    );
    // Types from data types, `writable` from the access level.
    assert!(yaml.contains("type: float64"), "{yaml}");
    assert!(yaml.contains("type: bytes"), "{yaml}");
    assert!(
        yaml.contains(r#"Area_0.Line_0.Bool__0_", nodeId"#),
        "{yaml}"
    );
    let writable = props
        .iter()
        .filter(|l| l.contains("writable: true"))
        .count();
    assert_eq!(writable, VARIABLES.div_ceil(3), "{yaml}");
    // Skipped nodes are commented with the reason.
    for why in ["a method", "an array", "data type i=14"] {
        assert_eq!(
            yaml.lines()
                .filter(|l| l.contains("# skipped") && l.contains(why))
                .count(),
            20,
            "{why}: {yaml}"
        );
    }

    // The YAML as printed, under a gateway and mqtt section: check accepts it.
    let broker = Mosquitto::start();
    let config = format!(
        "gateway:\n  namespace: test\n  stateDirectory: \"{{dir}}/state\"\n  metrics: {{ listen: \"\" }}\nmqtt:\n  client:\n    server: tcp://127.0.0.1:{}\n{yaml}",
        broker.port()
    );
    let check_file = dir.path().join("check.yaml");
    std::fs::write(
        &check_file,
        config.replace("{dir}", dir.path().to_str().unwrap()),
    )
    .unwrap();
    let check = support::fieldgate(&["check", "-c", check_file.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "check refused the discovered YAML:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The gateway publishes every variable.
    let mut probe = MqttProbe::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/plant", 1).await;
    let gw = Gateway::start(&config);
    let all = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/plant"
                && m.json()["properties"]
                    .as_object()
                    .is_some_and(|p| p.len() == VARIABLES)
        })
        .await;
    assert!(all.is_some(), "not every variable published:\n{}", gw.log());
    let state = all.unwrap().json();
    assert!(state.get("errors").is_none(), "{state}");
    drop(gw);

    // Nothing was written.
    let after: Vec<_> = opcua_server::scalars()
        .iter()
        .map(|(n, _)| server.value(n))
        .collect();
    assert_eq!(before, after);
    server.stop().await;
}

/// `fieldgate discover opcua` with `args`, run off the async runtime.
async fn discover(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        support::fieldgate(&a)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_options_work_like_the_drivers() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new(&dir.path().join("server"));
    opts.tree = 30;
    let server = OpcUaServer::start(opts).await;
    let trusted = dir.path().join("trusted");
    std::fs::create_dir_all(&trusted).unwrap();
    let pass = dir.path().join("op.pass");
    std::fs::write(&pass, format!("{}\n", opcua_server::PASSWORD)).unwrap();
    let args = |trusted: &std::path::Path| -> Vec<String> {
        [
            "discover",
            "opcua",
            server.url.as_str(),
            "--root",
            &format!("ns={};s={TREE_ROOT}", server.ns),
            "--name",
            "secure",
            "--security-policy",
            "Basic256Sha256",
            "--security-mode",
            "SignAndEncrypt",
            "--username",
            opcua_server::USER,
            "--password-file",
            pass.to_str().unwrap(),
            "--trusted-server-certificates",
            trusted.to_str().unwrap(),
            "--state-directory",
            dir.path().join("state").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // An unknown server is refused, as by the daemon.
    let out = discover(args(&trusted)).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not trusted"), "{err}");
    // Trusted: the same walk over the encrypted session.
    std::fs::copy(server.certificate(), trusted.join("plc.der")).unwrap();
    let out = discover(args(&trusted)).await;
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        yaml.lines()
            .filter(|l| l.trim_start().starts_with("- { name:"))
            .count(),
        30,
        "{yaml}"
    );
    assert!(yaml.contains("securityPolicy: Basic256Sha256"), "{yaml}");
    assert!(yaml.contains("securityMode: SignAndEncrypt"), "{yaml}");
    assert!(
        yaml.contains(&format!("username: \"{}\"", opcua_server::USER)),
        "{yaml}"
    );
    assert!(yaml.contains("passwordFile:"), "{yaml}");
    assert!(yaml.contains("trustedServerCertificates:"), "{yaml}");
    server.stop().await;
}
