//! The OPC-UA driver against a real async-opcua server in the test process:
//! every type, subscriptions and polling, writes, server restarts, security
//! with user names, untrusted servers, wrong passwords.

#![cfg(feature = "opcua")]

mod opcua_server;

use std::path::Path;
use std::time::Duration;

use fieldgate_drivers::opcua::{
    Identity, Mode, NodeAddress, OpcUaConnection, Policy, SecurityMode,
};
use fieldgate_drivers::{
    Buses, Connection, DataType, DeviceCommand, DeviceEvent, DeviceLink, DeviceSpec, DriverError,
    ErrorKind, PropertyAddress, PropertySpec, ReadCause, Readings, Value, WriteOutcome,
};
use opcua::types::Variant;
use opcua_server::{OpcUaServer, Options, PASSWORD, USER};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything to happen (security handshakes with RSA are slow
/// in debug builds).
const WAIT: Duration = Duration::from_secs(30);

struct Running {
    events: fieldgate_drivers::EventReceiver,
    commands: fieldgate_drivers::CommandSender,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(spec: DeviceSpec) -> Self {
        let (events_tx, events) = fieldgate_drivers::event_channel(256);
        let (commands, commands_rx) = fieldgate_drivers::command_channel(8);
        let cancel = CancellationToken::new();
        let link = DeviceLink {
            events: events_tx,
            commands: commands_rx,
            cancel: cancel.clone(),
        };
        let task =
            tokio::spawn(
                async move { fieldgate_drivers::run_device(spec, link, &Buses::new()).await },
            );
        Self {
            events,
            commands,
            cancel,
            task,
        }
    }

    async fn wait_for(&mut self, mut pred: impl FnMut(&DeviceEvent) -> bool) -> DeviceEvent {
        tokio::time::timeout(WAIT, async {
            loop {
                let ev = self.events.recv().await.expect("device stopped");
                if pred(&ev) {
                    return ev;
                }
            }
        })
        .await
        .expect("timed out waiting for an event")
    }

    async fn readings(&mut self, mut pred: impl FnMut(&Readings) -> bool) -> Readings {
        match self
            .wait_for(|e| matches!(e, DeviceEvent::Readings(r) if pred(r)))
            .await
        {
            DeviceEvent::Readings(r) => r,
            _ => unreachable!(),
        }
    }

    async fn offline(&mut self) -> DriverError {
        match self
            .wait_for(|e| matches!(e, DeviceEvent::Offline(_)))
            .await
        {
            DeviceEvent::Offline(e) => e,
            _ => unreachable!(),
        }
    }

    async fn write(&self, writes: Vec<(usize, Value)>) -> WriteOutcome {
        let (reply, outcome) = oneshot::channel();
        self.commands
            .send(DeviceCommand::Write { writes, reply })
            .await
            .expect("device alive");
        tokio::time::timeout(WAIT, outcome)
            .await
            .expect("write answered in time")
            .expect("reply sent")
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("device stops")
            .expect("no panic");
    }
}

fn get(r: &Readings, i: usize) -> Option<&Result<Value, DriverError>> {
    r.values.iter().find(|(k, _)| *k == i).map(|(_, v)| v)
}

/// Every scalar test variable with its property type and expected value.
fn typed() -> Vec<(&'static str, DataType, Value)> {
    vec![
        ("Bool", DataType::Bool, Value::Bool(true)),
        ("SByte", DataType::Int8, Value::Int(-8)),
        ("Byte", DataType::Uint8, Value::Uint(200)),
        ("Int16", DataType::Int16, Value::Int(-1600)),
        ("UInt16", DataType::Uint16, Value::Uint(60000)),
        ("Int32", DataType::Int32, Value::Int(-320000)),
        ("UInt32", DataType::Uint32, Value::Uint(4_000_000_000)),
        ("Int64", DataType::Int64, Value::Int(-64_000_000_000)),
        (
            "UInt64",
            DataType::Uint64,
            Value::Uint(18_000_000_000_000_000_000),
        ),
        ("Float", DataType::Float32, Value::Float(1.5)),
        ("Double", DataType::Float64, Value::Float(2.25)),
        ("String", DataType::String, Value::String("hello".into())),
        (
            "ByteString",
            DataType::Bytes,
            Value::Bytes(vec![0xde, 0xad]),
        ),
        (
            "DateTime",
            DataType::String,
            Value::String("2024-05-06T07:08:09Z".into()),
        ),
    ]
}

fn prop(server: &OpcUaServer, name: &str, t: DataType) -> PropertySpec {
    PropertySpec {
        name: name.into(),
        data_type: t,
        writable: true,
        address: PropertyAddress::OpcUa(NodeAddress {
            node_id: server.node(name),
        }),
    }
}

/// Indexes: 0..14 the scalars, 14 Counter, 15 Broken, 16 ReadOnly.
fn all_props(server: &OpcUaServer) -> Vec<PropertySpec> {
    let mut v: Vec<PropertySpec> = typed()
        .into_iter()
        .map(|(n, t, _)| prop(server, n, t))
        .collect();
    v.push(prop(server, "Counter", DataType::Uint32));
    v.push(prop(server, "Broken", DataType::Int32));
    v.push(prop(server, "ReadOnly", DataType::Int32));
    v
}
const COUNTER: usize = 14;
const BROKEN: usize = 15;
const READ_ONLY: usize = 16;

fn connection(server: &OpcUaServer, state: &Path, mode: Mode) -> OpcUaConnection {
    OpcUaConnection {
        endpoint: server.url.clone(),
        policy: Policy::None,
        security_mode: SecurityMode::None,
        identity: Identity::Anonymous,
        certificate: None,
        trusted_dir: state.join("trusted"),
        state_dir: state.join("opcua"),
        mode,
    }
}

fn spec(conn: OpcUaConnection, props: Vec<PropertySpec>, sync: Duration) -> DeviceSpec {
    DeviceSpec {
        name: "plc".into(),
        sync_interval: sync,
        timeout: Duration::from_secs(5),
        connection: Connection::OpcUa(conn),
        properties: props.into(),
    }
}

fn check_initial(r: &Readings) {
    for (i, (name, _, want)) in typed().into_iter().enumerate() {
        assert_eq!(get(r, i), Some(&Ok(want)), "{name}");
    }
    let broken = get(r, BROKEN).expect("Broken read").clone().unwrap_err();
    assert_eq!(broken.kind, ErrorKind::Exception);
    assert!(broken.message.contains("BadSensorFailure"), "{broken}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reads_every_type_then_only_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let props = all_props(&server);
    let n = props.len();
    let mut dev = Running::start(spec(
        connection(&server, dir.path(), Mode::Subscribe),
        props,
        Duration::from_millis(100),
    ));
    assert!(matches!(dev.wait_for(|_| true).await, DeviceEvent::Online));
    // The initial Read: every property at once.
    let first = dev.readings(|r| r.values.len() == n).await;
    assert_eq!(first.cause, ReadCause::Poll);
    check_initial(&first);
    // Then data changes: only what changed, the counter climbing.
    let Some(Ok(Value::Uint(c0))) = get(&first, COUNTER).cloned() else {
        panic!("counter missing")
    };
    let change = dev
        .readings(|r| {
            r.values.len() < n && matches!(get(r, COUNTER), Some(Ok(Value::Uint(c))) if *c > c0 + 2)
        })
        .await;
    assert_eq!(change.cause, ReadCause::Poll);
    // A value set on the server arrives by itself.
    server.set("Int32", Variant::Int32(42));
    dev.readings(|r| get(r, 5) == Some(&Ok(Value::Int(42))))
        .await;
    dev.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_reads_every_node_each_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let props = all_props(&server);
    let n = props.len();
    let mut dev = Running::start(spec(
        connection(&server, dir.path(), Mode::Poll),
        props,
        Duration::from_millis(200),
    ));
    let first = dev.readings(|r| r.values.len() == n).await;
    check_initial(&first);
    let Some(Ok(Value::Uint(c0))) = get(&first, COUNTER).cloned() else {
        panic!("counter missing")
    };
    for _ in 0..2 {
        let r = dev.readings(|_| true).await;
        assert_eq!(r.values.len(), n, "a poll reads every node");
        assert!(r.duration.is_some());
    }
    let later = dev.readings(|_| true).await;
    assert!(matches!(get(&later, COUNTER), Some(Ok(Value::Uint(c))) if *c > c0));
    dev.commands.send(DeviceCommand::ReadNow).await.unwrap();
    let forced = dev.readings(|r| r.cause == ReadCause::Forced).await;
    assert_eq!(forced.values.len(), n);
    dev.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_convert_to_the_node_type_and_report_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let props = all_props(&server);
    let n = props.len();
    let mut dev = Running::start(spec(
        connection(&server, dir.path(), Mode::Subscribe),
        props,
        Duration::from_millis(500),
    ));
    dev.readings(|r| r.values.len() == n).await;
    let outcome = dev
        .write(vec![
            (0, Value::Bool(false)),
            (1, Value::Int(-100)),
            (3, Value::Int(1234)),
            (8, Value::Uint(7)),
            (9, Value::Float(-0.5)),
            (10, Value::Float(1e10)),
            (11, Value::String("written".into())),
            (12, Value::Bytes(vec![1, 2, 3])),
            (13, Value::String("2030-01-02T03:04:05Z".into())),
        ])
        .await;
    assert_eq!(outcome.applied, 9, "{:?}", outcome.failed);
    assert!(outcome.failed.is_none());
    assert_eq!(server.value("Bool"), Some(Variant::Boolean(false)));
    assert_eq!(server.value("SByte"), Some(Variant::SByte(-100)));
    assert_eq!(server.value("Int16"), Some(Variant::Int16(1234)));
    assert_eq!(server.value("UInt64"), Some(Variant::UInt64(7)));
    assert_eq!(server.value("Float"), Some(Variant::Float(-0.5)));
    assert_eq!(server.value("Double"), Some(Variant::Double(1e10)));
    assert_eq!(
        server.value("String"),
        Some(Variant::String("written".into()))
    );
    assert_eq!(
        server.value("ByteString"),
        Some(Variant::ByteString(vec![1u8, 2, 3].into()))
    );
    // The read-back after a write is forced and carries the new values.
    let back = dev.readings(|r| r.cause == ReadCause::Forced).await;
    assert_eq!(
        get(&back, 13),
        Some(&Ok(Value::String("2030-01-02T03:04:05Z".into())))
    );

    // The server refuses: its status code is the error; later writes are not tried.
    let outcome = dev
        .write(vec![
            (1, Value::Int(5)),
            (READ_ONLY, Value::Int(1)),
            (1, Value::Int(6)),
        ])
        .await;
    assert_eq!(outcome.applied, 1);
    let (at, e) = outcome.failed.expect("refused");
    assert_eq!(at, 1);
    assert_eq!(e.kind, ErrorKind::Exception);
    assert!(
        e.message.contains("BadNotWritable") || e.message.contains("BadUserAccessDenied"),
        "{e}"
    );
    assert_eq!(server.value("SByte"), Some(Variant::SByte(5)));
    // A value the node's type cannot hold never reaches the server.
    let outcome = dev.write(vec![(2, Value::Uint(300))]).await;
    let (_, e) = outcome.failed.expect("out of range");
    assert_eq!(e.kind, ErrorKind::Rejected);
    assert_eq!(server.value("Byte"), Some(Variant::Byte(200)));
    dev.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_goes_offline_then_values_resume() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let props = all_props(&server);
    let n = props.len();
    let mut dev = Running::start(spec(
        connection(&server, dir.path(), Mode::Subscribe),
        props,
        Duration::from_millis(100),
    ));
    dev.readings(|r| r.values.len() == n).await;
    let options = server.stop().await;
    let e = dev.offline().await;
    assert!(
        matches!(e.kind, ErrorKind::Io | ErrorKind::Timeout),
        "{e:?}"
    );
    let server = OpcUaServer::start(options).await;
    server.set("Int32", Variant::Int32(99));
    assert!(matches!(
        dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await,
        DeviceEvent::Online
    ));
    // New subscription, new monitored items: the counter moves again.
    let first = dev.readings(|r| r.values.len() == n).await;
    assert_eq!(get(&first, 5), Some(&Ok(Value::Int(99))));
    dev.readings(|r| r.values.len() < n && get(r, COUNTER).is_some())
        .await;
    dev.stop().await;
    server.stop().await;
}

fn secure(server: &OpcUaServer, state: &Path, password: &str) -> OpcUaConnection {
    OpcUaConnection {
        policy: Policy::Basic256Sha256,
        security_mode: SecurityMode::SignAndEncrypt,
        identity: Identity::UserName {
            user: USER.into(),
            password: password.into(),
        },
        ..connection(server, state, Mode::Subscribe)
    }
}

fn trust(server: &OpcUaServer, state: &Path) {
    let dir = state.join("trusted");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(server.certificate(), dir.join("plc.der")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic256sha256_sign_and_encrypt_with_user_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    trust(&server, dir.path());
    let props = all_props(&server);
    let n = props.len();
    let mut dev = Running::start(spec(
        secure(&server, dir.path(), PASSWORD),
        props,
        Duration::from_millis(200),
    ));
    let first = dev.readings(|r| r.values.len() == n).await;
    check_initial(&first);
    let outcome = dev.write(vec![(5, Value::Int(7))]).await;
    assert!(outcome.failed.is_none(), "{:?}", outcome.failed);
    assert_eq!(server.value("Int32"), Some(Variant::Int32(7)));
    // The client certificate was generated once, its key private.
    let key = dir.path().join("opcua/private/private.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        let private = std::fs::metadata(dir.path().join("opcua/private")).unwrap();
        assert_eq!(private.permissions().mode() & 0o777, 0o700);
    }
    assert!(dir.path().join("opcua/own/cert.der").exists());
    dev.stop().await;
    server.stop().await;
}

/// With no user name configured and a server that accepts only X.509 user
/// identities, the driver logs in with its client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_identity_when_the_server_accepts_only_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    trust(&server, dir.path());
    let conn = OpcUaConnection {
        policy: Policy::Basic256Sha256,
        security_mode: SecurityMode::SignAndEncrypt,
        ..connection(&server, dir.path(), Mode::Poll)
    };
    let props = vec![prop(&server, "Int32", DataType::Int32)];
    // First run (anonymous still offered): the client certificate is generated.
    let mut dev = Running::start(spec(
        conn.clone(),
        props.clone(),
        Duration::from_millis(200),
    ));
    dev.readings(|r| get(r, 0).is_some_and(|v| v.is_ok())).await;
    dev.stop().await;
    let mut options = server.stop().await;
    let own = dir.path().join("opcua/own/cert.der");
    assert!(own.exists());

    // Now only that certificate may log in: readings prove the X.509 token.
    options.x509_user = Some(own);
    let server = OpcUaServer::start(options).await;
    let mut dev = Running::start(spec(
        conn.clone(),
        props.clone(),
        Duration::from_millis(200),
    ));
    dev.readings(|r| get(r, 0).is_some_and(|v| v.is_ok())).await;
    dev.stop().await;
    let mut options = server.stop().await;

    // A server expecting another certificate refuses the identity.
    options.x509_user = Some(dir.path().join("trusted/plc.der"));
    let server = OpcUaServer::start(options).await;
    let mut dev = Running::start(spec(conn, props, Duration::from_millis(200)));
    let err = dev.offline().await;
    assert!(
        err.message.contains("Bad"),
        "a refused identity names the status: {}",
        err.message
    );
    dev.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_is_refused_with_the_file_to_copy() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let props = all_props(&server);
    let mut dev = Running::start(spec(
        secure(&server, dir.path(), PASSWORD),
        props,
        Duration::from_millis(200),
    ));
    let e = dev.offline().await;
    assert_eq!(e.kind, ErrorKind::Rejected);
    assert!(e.message.contains("is not trusted"), "{e}");
    let trusted = dir.path().join("trusted");
    assert!(
        e.message.contains(&format!("into {}", trusted.display())),
        "{e}"
    );
    let rejected = std::fs::read_dir(dir.path().join("opcua/rejected"))
        .unwrap()
        .next()
        .expect("certificate saved")
        .unwrap()
        .path();
    assert!(
        e.message.contains(&format!("copy {}", rejected.display())),
        "{e}"
    );
    // Doing what the message says makes the next attempt succeed.
    std::fs::create_dir_all(&trusted).unwrap();
    std::fs::copy(&rejected, trusted.join("server.der")).unwrap();
    dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await;
    dev.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    trust(&server, dir.path());
    let props = all_props(&server);
    let mut dev = Running::start(spec(
        secure(&server, dir.path(), "not-the-password"),
        props,
        Duration::from_millis(200),
    ));
    let e = dev.offline().await;
    assert!(e.message.contains("wrong user name or password"), "{e}");
    dev.stop().await;
    server.stop().await;
}

/// A TCP proxy that can stop forwarding without closing anything: a
/// network that silently loses every packet.
struct Blackhole {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Blackhole {
    async fn start(target: String) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut r, mut w, f) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                        f.clone(),
                    ),
                    (Box::new(sr) as _, Box::new(cw) as _, f.clone()),
                ] {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if f.load(Ordering::SeqCst) {
                                continue; // lost in the network
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { port, frozen, task }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_is_noticed_and_values_resume_after_it_heals() {
    let dir = tempfile::tempdir().unwrap();
    let server = OpcUaServer::start(Options::new(&dir.path().join("server"))).await;
    let target = server
        .url
        .trim_start_matches("opc.tcp://")
        .trim_end_matches('/')
        .to_string();
    let net = Blackhole::start(target).await;
    let props = all_props(&server);
    let n = props.len();
    let mut conn = connection(&server, dir.path(), Mode::Subscribe);
    conn.endpoint = format!("opc.tcp://127.0.0.1:{}/", net.port);
    let mut s = spec(conn, props, Duration::from_millis(100));
    s.timeout = Duration::from_secs(1);
    let mut dev = Running::start(s);
    dev.readings(|r| r.values.len() == n).await;
    net.freeze(true);
    // Nothing closes; only the missing data changes and keep-alives tell.
    let e = dev.offline().await;
    assert!(
        matches!(e.kind, ErrorKind::Timeout | ErrorKind::Io),
        "{e:?}"
    );
    net.freeze(false);
    dev.wait_for(|e| matches!(e, DeviceEvent::Online)).await;
    dev.readings(|r| r.values.len() == n).await;
    dev.readings(|r| r.values.len() < n && get(r, COUNTER).is_some())
        .await;
    dev.stop().await;
    net.task.abort();
    server.stop().await;
}

/// Large devices (#26): 12 000 nodes on one session. The first Read is
/// split under the server's message size (one Read of them all was refused
/// with BadRequestTooLarge and the device never came online), and a Publish
/// carrying a change of every node is decoded (unbounded notifications per
/// Publish exceeded the client's 1 000-item decoding limit: BadDecodingError,
/// a reconnect, and again, until BadTooManySessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_thousand_nodes_are_read_then_followed_in_one_subscription() {
    const NODES: usize = 12_000;
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::new(&dir.path().join("server"));
    options.load = NODES;
    options.tick = Duration::from_millis(500);
    let server = OpcUaServer::start(options).await;
    let props: Vec<PropertySpec> = (0..NODES)
        .map(|i| prop(&server, &format!("Load.{i}"), DataType::Int32))
        .collect();
    let mut dev = Running::start(spec(
        connection(&server, dir.path(), Mode::Subscribe),
        props,
        Duration::from_millis(100),
    ));
    assert!(matches!(dev.wait_for(|_| true).await, DeviceEvent::Online));
    let first = dev.readings(|r| r.values.len() == NODES).await;
    let failed = first.values.iter().filter(|(_, v)| v.is_err()).count();
    assert_eq!(failed, 0, "every node read at once");
    // Changes of more than 1 000 nodes arrive, with the device online all
    // along (an Offline event would be seen by wait_for's predicate).
    let mut changed = 0;
    while changed < 3 * NODES {
        match dev
            .wait_for(|e| matches!(e, DeviceEvent::Readings(_) | DeviceEvent::Offline(_)))
            .await
        {
            DeviceEvent::Readings(r) => {
                assert!(r.values.iter().all(|(_, v)| v.is_ok()));
                changed += r.values.len();
            }
            other => panic!("the device went offline: {other:?}"),
        }
    }
    dev.stop().await;
    server.stop().await;
}
