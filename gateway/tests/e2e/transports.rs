//! End-to-end tests of the MQTT transports and client options: TLS (server
//! auth, mutual, wrong CA, serverName), WebSocket (ws, wss with headers),
//! Unix sockets, MQTT 3.1, MQTT 5 message properties, persistent sessions,
//! connectTimeout and pingTimeout. Certificates come from the `openssl` CLI;
//! every broker is a Mosquitto started by the test.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{Gateway, Mosquitto, MqttProbe, MqttProbe5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(15);

const FAN: &str = r#"  - name: fan
    driver: dummy
    model: fan
    syncInterval: 200ms
"#;

/// A config for the fan device with `client` as the `mqtt.client` body
/// (indented by four spaces) and `message` as `mqtt.message` body.
fn config(client: &str, message: &str, metrics: &str) -> String {
    format!(
        r#"gateway:
  namespace: test
  metrics: {{ listen: "{metrics}" }}
mqtt:
  client:
    maxReconnectInterval: 2s
{client}
  message:
    qos: 1
{message}
devices:
{FAN}"#
    )
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn readable_by_all(dir: &Path) {
    set_mode(dir, 0o755);
}

/// A CA and certificates signed by it, written with the `openssl` CLI.
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA named `name` with a server certificate (`broker.test`,
    /// `localhost`, 127.0.0.1) and a client certificate.
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("pki dir");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj"]);
        let subj = format!("/CN={name}");
        ca.push(&subj);
        openssl(d, &ca);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:broker.test,DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("server.ext");
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
        for (who, cn) in [("server", "broker.test"), ("client", "fieldgate")] {
            let mut req = vec!["req"];
            req.extend(ec);
            let key = format!("{who}.key");
            let csr = format!("{who}.csr");
            let pem = format!("{who}.pem");
            let ext = format!("{who}.ext");
            let subj = format!("/CN={cn}");
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &req);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        // Mosquitto started as root drops to the `mosquitto` user: let it
        // read the directory and the key files.
        readable_by_all(d);
        for f in ["ca.key", "server.key", "client.key"] {
            set_mode(&d.join(f), 0o644);
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn p(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// Mosquitto lines for a TLS listener on `port` with this PKI.
    fn listener(&self, port: u16, extra: &str) -> String {
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n{extra}\n",
            self.p("ca.pem"),
            self.p("server.pem"),
            self.p("server.key")
        )
    }
}

/// Waits for a state message of the fan on a probe subscribed to it.
async fn wait_state(probe: &mut MqttProbe) -> Value {
    probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/fan")
        .await
        .map(|m| m.json())
        .expect("a state message of the fan")
}

async fn probe_on(port: u16) -> MqttProbe {
    let p = MqttProbe::connect(port).await;
    p.subscribe("fieldgate/test/fan", 1).await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_auth_with_ca_file_and_server_name() {
    let pki = Pki::new("ca-one");
    let tls_port = support::free_port();
    let broker = Mosquitto::start_with(&pki.listener(tls_port, ""));
    let mut probe = probe_on(broker.port()).await;
    // 127.0.0.1 is in the certificate; `serverName` picks the other name for
    // SNI and verification.
    let gw = Gateway::start(&config(
        &format!(
            "    server: ssl://127.0.0.1:{tls_port}\n    tlsConfig: {{ caFile: {}, serverName: broker.test }}",
            pki.p("ca.pem")
        ),
        "",
        "",
    ));
    let state = wait_state(&mut probe).await;
    assert_eq!(state["name"], "fan");
    assert!(!gw.log().contains("INSECURE"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_inline_pem() {
    let pki = Pki::new("ca-mutual");
    let tls_port = support::free_port();
    let broker = Mosquitto::start_with(&pki.listener(
        tls_port,
        "require_certificate true\nuse_identity_as_username true",
    ));
    let mut probe = probe_on(broker.port()).await;
    let read = |f: &str| std::fs::read_to_string(pki.path(f)).expect("pem");
    let indent = |s: String| {
        s.lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    };
    let client = format!(
        "    server: tls://localhost:{tls_port}\n    tlsConfig:\n      caFilePem: |\n{}      certFilePem: |\n{}      keyFile: {}\n",
        indent(read("ca.pem")),
        indent(read("client.pem")),
        pki.p("client.key"),
    );
    let _gw = Gateway::start(&config(&client, "", ""));
    wait_state(&mut probe).await;
    // The broker saw the client certificate's identity.
    assert!(
        support::wait_until(WAIT, || broker.log().contains("u'fieldgate'")),
        "{}",
        broker.log()
    );
}

/// `caFilePemRef`, `certFilePemRef`, `keyFilePemRef` (`{name, item}`) read
/// from `<gateway.secretsDirectory>/<name>/<item>`, laid out like a mounted
/// Kubernetes secret (issue #19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_pem_refs_from_the_secrets_directory() {
    let pki = Pki::new("ca-secrets");
    let secret = pki.path("secrets/mqtt-tls");
    std::fs::create_dir_all(&secret).expect("secret dir");
    for (from, to) in [
        ("ca.pem", "ca.crt"),
        ("client.pem", "tls.crt"),
        ("client.key", "tls.key"),
    ] {
        std::fs::copy(pki.path(from), secret.join(to)).expect("copy into the secret");
    }
    let tls_port = support::free_port();
    let broker = Mosquitto::start_with(&pki.listener(
        tls_port,
        "require_certificate true\nuse_identity_as_username true",
    ));
    let mut probe = probe_on(broker.port()).await;
    let client = format!(
        "    server: tls://localhost:{tls_port}\n    tlsConfig:\n      caFilePemRef: {{ name: mqtt-tls, item: ca.crt }}\n      certFilePemRef: {{ name: mqtt-tls, item: tls.crt }}\n      keyFilePemRef: {{ name: mqtt-tls, item: tls.key }}\n",
    );
    let yaml = config(&client, "", "").replacen(
        "  namespace: test\n",
        &format!(
            "  namespace: test\n  secretsDirectory: {}\n",
            pki.p("secrets")
        ),
        1,
    );
    let _gw = Gateway::start(&yaml);
    wait_state(&mut probe).await;
    assert!(
        support::wait_until(WAIT, || broker.log().contains("u'fieldgate'")),
        "the broker did not see the client certificate from the secret:\n{}",
        broker.log()
    );
    // A missing item is a located config error (exit 78 from `check`).
    std::fs::remove_file(secret.join("tls.key")).expect("remove the key");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, &yaml).expect("write config");
    let out = support::fieldgate(&["check", "-c", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:12:22: mqtt.client.tlsConfig.keyFilePemRef: cannot read secret `mqtt-tls` item `tls.key`",
            path.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "only the missing secret: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_refused_with_a_clear_error_in_log_and_healthz() {
    let pki = Pki::new("ca-real");
    let other = Pki::new("ca-other");
    let tls_port = support::free_port();
    let _broker = Mosquitto::start_with(&pki.listener(tls_port, ""));
    let metrics = support::free_port();
    let gw = Gateway::start(&config(
        &format!(
            "    server: tcps://127.0.0.1:{tls_port}\n    tlsConfig: {{ caFile: {} }}",
            other.p("ca.pem")
        ),
        "",
        &format!("127.0.0.1:{metrics}"),
    ));
    assert!(
        gw.wait_for_log("TLS handshake failed", WAIT),
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("UnknownIssuer"), "{}", gw.log());
    let health = support::wait_until(WAIT, || {
        support::http_get(&format!("127.0.0.1:{metrics}"), "/healthz")
            .is_ok_and(|(code, body)| code == 503 && body.contains("TLS handshake failed"))
    });
    assert!(
        health,
        "{:?}",
        support::http_get(&format!("127.0.0.1:{metrics}"), "/healthz")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_connects_and_warns_loudly() {
    let pki = Pki::new("ca-unknown");
    let tls_port = support::free_port();
    let broker = Mosquitto::start_with(&pki.listener(tls_port, ""));
    let mut probe = probe_on(broker.port()).await;
    let gw = Gateway::start(&config(
        &format!(
            "    server: ssl://127.0.0.1:{tls_port}\n    tlsConfig: {{ insecureSkipVerify: true }}"
        ),
        "",
        "",
    ));
    wait_state(&mut probe).await;
    assert!(
        gw.log().contains("WARN") && gw.log().contains("INSECURE"),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener() {
    let sock_dir = tempfile::tempdir().expect("socket dir");
    // The broker may run as the `mosquitto` user: let it create the socket.
    set_mode(sock_dir.path(), 0o777);
    let sock = sock_dir.path().join("mqtt.sock");
    let broker = Mosquitto::start_with(&format!("listener 0 {}\n", sock.display()));
    let mut probe = probe_on(broker.port()).await;
    let _gw = Gateway::start(&config(
        &format!("    server: unix://{}", sock.display()),
        "",
        "",
    ));
    wait_state(&mut probe).await;
}

/// Mosquitto lines for a plain WebSocket listener on `port`.
fn ws_listener(port: u16) -> String {
    format!("listener {port} 127.0.0.1\nprotocol websockets\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_and_wss_listeners() {
    let pki = Pki::new("ca-ws");
    let ws_port = support::free_port();
    let wss_port = support::free_port();
    let broker = Mosquitto::start_with(&format!(
        "{}{}",
        ws_listener(ws_port),
        pki.listener(wss_port, "protocol websockets")
    ));
    let mut probe = probe_on(broker.port()).await;
    let yaml = format!(
        r#"gateway:
  namespace: test
  metrics: {{ listen: "" }}
mqtt:
  client:
    server: ws://127.0.0.1:{ws_port}/mqtt
    maxReconnectInterval: 2s
devices:
{FAN}  - name: fan2
    driver: dummy
    model: fan
    syncInterval: 200ms
    mqtt:
      client:
        server: wss://localhost:{wss_port}
        protocolVersion: 5
        tlsConfig: {{ caFile: {} }}
"#,
        pki.p("ca.pem")
    );
    let _gw = Gateway::start(&yaml);
    probe.subscribe("fieldgate/test/fan2", 1).await;
    let mut seen = (false, false);
    let done = probe
        .wait_for(WAIT, |m| {
            seen.0 |= m.topic == "fieldgate/test/fan";
            seen.1 |= m.topic == "fieldgate/test/fan2";
            seen.0 && seen.1
        })
        .await;
    assert!(done.is_some(), "ws state {} / wss state {}", seen.0, seen.1);
}

/// A TLS-terminating proxy in front of a plain WebSocket listener that
/// records the HTTP request head of every connection.
async fn wss_recording_proxy(pki: &Pki, upstream: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).expect("server.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                seen.lock()
                    .expect("heads")
                    .push(String::from_utf8_lossy(&head).into_owned());
                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                if up.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (port, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_sends_custom_http_headers() {
    let pki = Pki::new("ca-wss");
    let ws_port = support::free_port();
    let broker = Mosquitto::start_with(&ws_listener(ws_port));
    let (proxy, heads) = wss_recording_proxy(&pki, ws_port).await;
    let mut probe = probe_on(broker.port()).await;
    let _gw = Gateway::start(&config(
        &format!(
            "    server: wss://localhost:{proxy}/mqtt\n    tlsConfig: {{ caFile: {} }}\n    httpHeaders:\n      X-Fieldgate-Site: plant-a\n      X-Multi: [one, two]",
            pki.p("ca.pem")
        ),
        "",
        "",
    ));
    wait_state(&mut probe).await;
    let heads = heads.lock().expect("heads").clone();
    let head = heads.first().expect("one handshake").to_ascii_lowercase();
    assert!(head.starts_with("get /mqtt "), "{head}");
    assert!(head.contains("x-fieldgate-site: plant-a\r\n"), "{head}");
    assert!(
        head.contains("x-multi: one\r\n") && head.contains("x-multi: two\r\n"),
        "{head}"
    );
    assert!(head.contains("sec-websocket-protocol: mqtt"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt31_connects_as_mqisdp() {
    let broker = Mosquitto::start();
    let mut probe = probe_on(broker.port()).await;
    let gw = Gateway::start(&config(
        &format!(
            "    server: {}\n    protocolVersion: 3\n    clientId: fg31",
            broker.url()
        ),
        "",
        "",
    ));
    wait_state(&mut probe).await;
    // Mosquitto logs the protocol of each client: p1 = MQTT 3.1 (MQIsdp),
    // p2 = 3.1.1, p5 = 5.
    assert!(
        support::wait_until(WAIT, || broker.log().contains("as fg31 (p1,")),
        "{}",
        broker.log()
    );
    // Commands work over 3.1 too.
    probe
        .publish("fieldgate/test/fan/$set", r#"{"gear":"fast"}"#, 1, false)
        .await;
    let changed = probe
        .wait_for(WAIT, |m| {
            m.topic == "fieldgate/test/fan" && m.json()["properties"]["gear"] == "fast"
        })
        .await;
    assert!(changed.is_some(), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_content_type_user_properties_and_expiry() {
    let broker = Mosquitto::start();
    let probe = MqttProbe5::connect(broker.port()).await;
    probe.subscribe("fieldgate/test/fan/#", 1).await;
    let mut probe = probe;
    let mut gw = Gateway::start(&config(
        &format!("    server: {}\n    protocolVersion: 5", broker.url()),
        "    retained: true\n    messageExpiryInterval: 2s\n    userProperties: { site: plant-a, line: \"3\" }",
        "",
    ));
    let state = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/fan")
        .await
        .expect("state");
    assert_eq!(state.content_type.as_deref(), Some("application/json"));
    assert!(state
        .user_properties
        .contains(&("site".into(), "plant-a".into())));
    assert!(state.user_properties.contains(&("line".into(), "3".into())));
    probe
        .publish("fieldgate/test/fan/$set", r#"{"on":false}"#, 1, false)
        .await;
    let result = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/fan/$set/result")
        .await
        .expect("result");
    assert_eq!(result.content_type.as_deref(), Some("application/json"));
    assert!(result.user_properties.is_empty());
    // The retained state expires on the broker once the gateway is gone.
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some());
    let mut expired = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !expired && tokio::time::Instant::now() < deadline {
        let mut fresh = MqttProbe5::connect(broker.port()).await;
        fresh.subscribe("fieldgate/test/fan", 1).await;
        expired = fresh
            .wait_for(Duration::from_millis(300), |m| {
                m.topic == "fieldgate/test/fan"
            })
            .await
            .is_none();
        fresh.disconnect().await;
    }
    assert!(expired, "the retained state did not expire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_gets_commands_sent_while_stopped() {
    let broker = Mosquitto::start();
    let mut probe = probe_on(broker.port()).await;
    let yaml = config(
        &format!(
            "    server: {}\n    clientId: fg-persistent\n    cleanSession: false",
            broker.url()
        ),
        "",
        "",
    );
    let mut gw = Gateway::start(&yaml);
    let first = wait_state(&mut probe).await;
    assert_eq!(first["properties"]["gear"], "slow");
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).is_some());
    // Sent while the gateway is away: the broker queues it for the session.
    probe
        .publish(
            "fieldgate/test/fan/$set",
            r#"{"gear":"fast","$id":"q"}"#,
            1,
            false,
        )
        .await;
    probe.subscribe("fieldgate/test/fan/$set/result", 1).await;
    let gw = Gateway::start(&yaml);
    let result = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/fan/$set/result")
        .await
        .map(|m| m.json());
    assert_eq!(
        result.as_ref().map(|r| (&r["$id"], &r["ok"])),
        Some((&Value::from("q"), &Value::from(true))),
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("session_present=true"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_when_the_broker_never_answers() {
    // Accepts TCP connections and never answers CONNECT.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in silent.incoming().flatten() {
            keep.lock().expect("held").push(s);
        }
    });
    let gw = Gateway::start(&config(
        &format!("    server: tcp://127.0.0.1:{port}\n    connectTimeout: 1s"),
        "",
        "",
    ));
    assert!(
        gw.wait_for_log("no CONNACK within connectTimeout (1s)", WAIT),
        "{}",
        gw.log()
    );
    // It keeps retrying (with backoff).
    assert!(
        support::wait_until(WAIT, || held.lock().expect("held").len() >= 2),
        "{}",
        gw.log()
    );
}

/// A proxy that forwards everything to the broker but only the first chunk
/// (the CONNACK) back: the gateway never sees a PINGRESP.
async fn one_way_proxy(upstream: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = up.into_split();
                let forward = async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                };
                let back = async move {
                    let mut buf = [0u8; 4];
                    // CONNACK is exactly 4 bytes in MQTT 3.1.1.
                    if ur.read_exact(&mut buf).await.is_ok() && cw.write_all(&buf).await.is_ok() {
                        let _ = tokio::io::copy(&mut ur, &mut tokio::io::sink()).await;
                    }
                    // Keep the client's side open.
                    std::future::pending::<()>().await;
                    drop(cw);
                };
                tokio::join!(forward, back);
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_timeout_fails_a_connection_without_pingresp() {
    let broker = Mosquitto::start();
    let proxy = one_way_proxy(broker.port()).await;
    let gw = Gateway::start(&config(
        // PINGREQ at 3 s; our limit fires at 4 s, before rumqttc's own
        // check at the next keep-alive (6 s).
        &format!("    server: tcp://127.0.0.1:{proxy}\n    keepAlive: 3s\n    pingTimeout: 1s"),
        "",
        "",
    ));
    assert!(
        gw.wait_for_log("no PINGRESP within pingTimeout (1s)", WAIT),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_refusal_is_logged_and_counted() {
    // The ACL lets the gateway use every topic but publish its state.
    let acl_dir = tempfile::tempdir().expect("acl dir");
    readable_by_all(acl_dir.path());
    let acl = acl_dir.path().join("acl");
    let mut rules = String::from("topic read fieldgate/test/fan\n");
    for t in [
        "fan/$set",
        "fan/$get",
        "fan/$set/result",
        "fan/$state",
        "fan/$meta",
        "$will",
    ] {
        rules.push_str(&format!("topic readwrite fieldgate/test/{t}\n"));
    }
    std::fs::write(&acl, rules).expect("acl");
    set_mode(&acl, 0o644);
    let broker = Mosquitto::start_with(&format!("acl_file {}\n", acl.display()));
    let metrics = support::free_port();
    let gw = Gateway::start(&config(
        &format!("    server: {}\n    protocolVersion: 5", broker.url()),
        "",
        &format!("127.0.0.1:{metrics}"),
    ));
    assert!(
        gw.wait_for_log("PUBACK reason code NotAuthorized", WAIT),
        "{}",
        gw.log()
    );
    let counted = support::wait_until(WAIT, || {
        support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics").is_ok_and(|(_, body)| {
            body.lines().any(|l| {
                l.starts_with("fieldgate_mqtt_reason_codes_total{")
                    && l.contains(r#"code="NotAuthorized""#)
                    && l.contains(r#"packet="puback""#)
            })
        })
    });
    assert!(
        counted,
        "{:?}",
        support::http_get(&format!("127.0.0.1:{metrics}"), "/metrics")
    );
}

/// Subscription log lines (`log_type subscribe`) for `client` in `log`.
fn subscribe_lines(log: &str, client: &str) -> usize {
    let needle = format!(": {client} 1 fieldgate/test/fan/$");
    log.lines().filter(|l| l.contains(&needle)).count()
}

/// `resumeSubs` with a persistent session: after a broker restart that
/// resumed the session, `false` relies on the broker's stored subscriptions
/// (no SUBSCRIBE is sent again) while `true` subscribes to everything again.
/// Commands reach the device either way.
async fn resume_subs_case(resume: bool) {
    let state = tempfile::tempdir().expect("broker state dir");
    set_mode(state.path(), 0o777);
    let mut broker = Mosquitto::start_with(&format!(
        "persistence true\npersistence_location {}/\nautosave_interval 3600\nlog_type subscribe\nlog_type information\nlog_dest stderr\n",
        state.path().display()
    ));
    let client = if resume {
        "fg-resume-on"
    } else {
        "fg-resume-off"
    };
    let yaml = config(
        &format!(
            "    server: {}\n    clientId: {client}\n    cleanSession: false\n    resumeSubs: {resume}",
            broker.url()
        ),
        "",
        "",
    );
    let gw = Gateway::start(&yaml);
    // The first connect subscribes to `$set` and `$get`.
    assert!(
        support::wait_until_async(WAIT, || subscribe_lines(&broker.log(), client) >= 2).await,
        "no SUBSCRIBE logged:\n{}",
        broker.log()
    );
    // Restart the broker; it keeps the session (and its subscriptions).
    broker.stop_graceful();
    let before = broker.log().len();
    broker.restart();
    assert!(
        gw.wait_for_log("session_present=true", WAIT),
        "the session was not resumed: {}\n{}",
        gw.log(),
        broker.log()
    );
    // A command after the reconnect is applied either way.
    let mut probe = probe_on(broker.port()).await;
    probe.subscribe("fieldgate/test/fan/$set/result", 1).await;
    probe
        .publish(
            "fieldgate/test/fan/$set",
            r#"{"on":true,"$id":"r"}"#,
            1,
            false,
        )
        .await;
    let result = probe
        .wait_for(WAIT, |m| m.topic == "fieldgate/test/fan/$set/result")
        .await
        .map(|m| m.json());
    assert_eq!(
        result.as_ref().map(|r| (&r["$id"], &r["ok"])),
        Some((&Value::from("r"), &Value::from(true))),
        "{}",
        gw.log()
    );
    let after = subscribe_lines(&broker.log()[before..], client);
    if resume {
        assert!(
            after >= 2,
            "resumeSubs: true subscribes again:\n{}",
            broker.log()
        );
    } else {
        assert_eq!(
            after,
            0,
            "resumeSubs: false sends no SUBSCRIBE:\n{}",
            broker.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_subs_false_relies_on_the_resumed_session() {
    resume_subs_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_subs_true_subscribes_again() {
    resume_subs_case(true).await;
}
