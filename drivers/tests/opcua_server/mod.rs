//! A real async-opcua server for tests, in the test process, on a free port.
//!
//! Namespace `urn:fieldgate:test` holds one writable variable per supported
//! Variant type (`Bool`, `SByte`, `Byte`, `Int16`, `UInt16`, `Int32`,
//! `UInt32`, `Int64`, `UInt64`, `Float`, `Double`, `String`, `ByteString`,
//! `DateTime`), `Counter` (UInt32, +1 every tick), `Sine` (Double, changes
//! every tick), `Broken` (status BadSensorFailure), `ReadOnly` (Int32, not writable) and optionally `Load.0` …
//! `Load.{n-1}` (Int32, all changing every tick). Endpoints: None/None,
//! Basic256Sha256 Sign and SignAndEncrypt, Aes128Sha256RsaOaep and
//! Aes256Sha256RsaPss SignAndEncrypt; users: anonymous and `operator` /
//! `secret`. The PKI directory survives restarts, so the server keeps its
//! certificate.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::nodes::Variable;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::types::{
    ByteString, DataValue, DateTime, MessageSecurityMode, NodeId, ObjectId, StatusCode, Variant,
};
use tokio::net::TcpListener;

/// The test namespace URI.
pub(crate) const NAMESPACE: &str = "urn:fieldgate:test";
/// The user with a password.
pub(crate) const USER: &str = "operator";
/// Its password.
pub(crate) const PASSWORD: &str = "secret";
/// The user token id of the X.509 identity (see [`Options::x509_user`]).
pub(crate) const X509_USER: &str = "x509-operator";

/// The scalar variables and their initial values.
pub(crate) fn scalars() -> Vec<(&'static str, Variant)> {
    vec![
        ("Bool", Variant::Boolean(true)),
        ("SByte", Variant::SByte(-8)),
        ("Byte", Variant::Byte(200)),
        ("Int16", Variant::Int16(-1600)),
        ("UInt16", Variant::UInt16(60000)),
        ("Int32", Variant::Int32(-320000)),
        ("UInt32", Variant::UInt32(4_000_000_000)),
        ("Int64", Variant::Int64(-64_000_000_000)),
        ("UInt64", Variant::UInt64(18_000_000_000_000_000_000)),
        ("Float", Variant::Float(1.5)),
        ("Double", Variant::Double(2.25)),
        ("String", Variant::String("hello".into())),
        (
            "ByteString",
            Variant::ByteString(ByteString::from(vec![0xde, 0xad])),
        ),
        (
            "DateTime",
            Variant::DateTime(Box::new(
                "2024-05-06T07:08:09Z"
                    .parse::<DateTime>()
                    .expect("valid date"),
            )),
        ),
    ]
}

/// How to build the server.
#[derive(Clone)]
pub(crate) struct Options {
    /// Directory for the server's certificate and PKI.
    pub pki_dir: PathBuf,
    /// Listen on this port (0 = any free port).
    pub port: u16,
    /// How often `Counter`, `Sine` and `Load.*` change.
    pub tick: Duration,
    /// How many `Load.*` variables.
    pub load: usize,
    /// When set, the secured endpoints accept only the X.509 user identity
    /// of this certificate (DER) — no anonymous or user-name logins.
    pub x509_user: Option<PathBuf>,
    /// Variables of a nested tree `Plant/Area N/Line M/…` (see [`TREE_ROOT`]):
    /// every scalar type in turn, plus nodes discovery must skip (a method,
    /// an array, a Guid). 0 = no tree.
    pub tree: usize,
    /// How often the server checks its subscriptions for a due Publish
    /// response; also its shortest publishing and sampling interval
    /// (async-opcua's default: 100 ms).
    pub subscription_tick: Duration,
}

/// The folder holding the tree of [`Options::tree`] (in the test namespace).
pub(crate) const TREE_ROOT: &str = "Plant";

impl Options {
    /// Defaults: any port, 100 ms ticks, no load variables.
    pub(crate) fn new(pki_dir: &Path) -> Self {
        Self {
            pki_dir: pki_dir.to_path_buf(),
            port: 0,
            tick: Duration::from_millis(100),
            load: 0,
            x509_user: None,
            tree: 0,
            subscription_tick: Duration::from_millis(100),
        }
    }
}

/// A running server.
pub(crate) struct OpcUaServer {
    /// Options it was started with (port filled in).
    pub options: Options,
    /// `opc.tcp://host:port/`
    pub url: String,
    /// Host name in the URL (matches the server certificate).
    pub host: String,
    /// Namespace index of the test variables.
    pub ns: u16,
    handle: ServerHandle,
    nm: Arc<SimpleNodeManager>,
    task: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
}

/// The host name the server certificate is made for.
pub(crate) fn hostname() -> String {
    opcua::crypto::X509Data::computer_hostnames()
        .into_iter()
        .next()
        .unwrap_or_else(|| "localhost".into())
}

impl OpcUaServer {
    /// Starts a server with `options`.
    pub(crate) async fn start(options: Options) -> Self {
        let host = hostname();
        let listener = {
            let mut tries = 0;
            loop {
                match TcpListener::bind((host.as_str(), options.port)).await {
                    Ok(l) => break l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("cannot bind {host}:{}: {e}", options.port),
                }
            }
        };
        // Server stacks commonly turn Nagle's algorithm off; async-opcua's
        // server does not, and then a Publish response written while the
        // previous one is unacknowledged waits for the client's delayed ACK
        // (up to 40 ms: the tail of the notification latency bench). Set on
        // the listener, it holds for every accepted connection.
        socket2::SockRef::from(&listener)
            .set_tcp_nodelay(true)
            .expect("TCP_NODELAY on the test server's listener");
        let port = listener.local_addr().expect("local addr").port();
        let url = format!("opc.tcp://{host}:{port}/");
        let users: &[&str] = &[ANONYMOUS_USER_TOKEN_ID, USER];
        let x509_only: &[&str] = &[X509_USER];
        let mut builder = ServerBuilder::new()
            .application_name("fieldgate test server")
            .application_uri("urn:fieldgate:test-server")
            .product_uri("urn:fieldgate:test-server")
            .create_sample_keypair(true)
            .pki_dir(&options.pki_dir)
            .host(host.clone())
            .port(port)
            .discovery_urls(vec![url.clone()])
            .trust_client_certs(true)
            .add_user_token(USER, ServerUserToken::user_pass(USER, PASSWORD))
            .add_user_token(
                X509_USER,
                match &options.x509_user {
                    Some(cert) => ServerUserToken::x509(X509_USER, cert),
                    // Never offered without a certificate to check against.
                    None => ServerUserToken::user_pass(X509_USER, "unused"),
                },
            )
            .with_node_manager(simple_node_manager(
                opcua::server::diagnostics::NamespaceMetadata {
                    namespace_uri: NAMESPACE.to_owned(),
                    ..Default::default()
                },
                "fieldgate-test",
            ));
        for (id, policy, mode) in [
            ("none", SecurityPolicy::None, MessageSecurityMode::None),
            (
                "b256s",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::Sign,
            ),
            (
                "b256se",
                SecurityPolicy::Basic256Sha256,
                MessageSecurityMode::SignAndEncrypt,
            ),
            (
                "aes128se",
                SecurityPolicy::Aes128Sha256RsaOaep,
                MessageSecurityMode::SignAndEncrypt,
            ),
            (
                "aes256se",
                SecurityPolicy::Aes256Sha256RsaPss,
                MessageSecurityMode::SignAndEncrypt,
            ),
        ] {
            let users = if options.x509_user.is_some() && policy != SecurityPolicy::None {
                x509_only
            } else {
                users
            };
            builder = builder.add_endpoint(id, ("/", policy, mode, users));
        }
        let tick_ms = options.subscription_tick.as_millis().max(1);
        builder = builder.subscription_poll_interval_ms(u64::try_from(tick_ms).unwrap_or(100));
        let limits = builder.limits_mut();
        limits.subscriptions.min_publishing_interval_ms = tick_ms as f64;
        limits.subscriptions.min_sampling_interval_ms = tick_ms as f64;
        limits.subscriptions.max_monitored_items_per_sub = 100_000;
        limits.subscriptions.max_queued_notifications = 100_000;
        limits.subscriptions.max_notifications_per_publish = 100_000;
        limits.max_message_size = 64 * 1024 * 1024;
        limits.max_array_length = 100_000;
        limits.max_chunk_count = 1024;
        limits.operational.max_monitored_items_per_call = 100_000;
        limits.operational.max_nodes_per_read = 100_000;
        let (server, handle) = builder.build().expect("server builds");
        let nm = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .expect("simple node manager");
        let ns = handle.get_namespace_index(NAMESPACE).expect("namespace");
        {
            let mut space = nm.address_space().write();
            let folder = NodeId::new(ns, "Test");
            space.add_folder(&folder, "Test", "Test", &ObjectId::ObjectsFolder.into());
            let mut vars = Vec::new();
            let mut all: Vec<(String, Variant)> = scalars()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            all.push(("Counter".into(), Variant::UInt32(0)));
            all.push(("Sine".into(), Variant::Double(0.0)));
            all.push(("Broken".into(), Variant::Int32(0)));
            for i in 0..options.load {
                all.push((format!("Load.{i}"), Variant::Int32(0)));
            }
            all.push(("ReadOnly".into(), Variant::Int32(7)));
            for (name, value) in all {
                let mut v = Variable::new(
                    &NodeId::new(ns, name.as_str()),
                    name.as_str(),
                    name.as_str(),
                    value,
                );
                if name != "ReadOnly" {
                    v.set_writable(true);
                    v.set_user_access_level(v.access_level());
                }
                vars.push(v);
            }
            space.add_variables(vars, &folder);
            if options.tree > 0 {
                add_tree(&mut space, ns, options.tree);
            }
        }
        let subs = handle.subscriptions().clone();
        nm.set_value(
            &subs,
            &NodeId::new(ns, "Broken"),
            None,
            DataValue {
                value: Some(Variant::Int32(0)),
                status: Some(StatusCode::BadSensorFailure),
                source_timestamp: Some(DateTime::now()),
                server_timestamp: Some(DateTime::now()),
                ..Default::default()
            },
        )
        .expect("set Broken");
        let task = tokio::spawn(async move {
            let _ = server.run_with(listener).await;
        });
        let ticker = {
            let nm = nm.clone();
            let subs = subs.clone();
            let tick = options.tick;
            let load = options.load;
            tokio::spawn(async move {
                let mut n: u32 = 0;
                let mut iv = tokio::time::interval(tick);
                let counter = NodeId::new(ns, "Counter");
                let sine = NodeId::new(ns, "Sine");
                let loads: Vec<NodeId> = (0..load)
                    .map(|i| NodeId::new(ns, format!("Load.{i}")))
                    .collect();
                loop {
                    iv.tick().await;
                    n = n.wrapping_add(1);
                    let now = DateTime::now();
                    let dv = |v: Variant| DataValue::new_at(v, now);
                    let mut updates = vec![
                        (&counter, None, dv(Variant::UInt32(n))),
                        (&sine, None, dv(Variant::Double((n as f64 / 10.0).sin()))),
                    ];
                    for id in &loads {
                        updates.push((id, None, dv(Variant::Int32(n as i32))));
                    }
                    let _ = nm.set_values(&subs, updates.into_iter());
                }
            })
        };
        let options = Options { port, ..options };
        Self {
            options,
            url,
            host,
            ns,
            handle,
            nm,
            task,
            ticker,
        }
    }

    /// The NodeId string of a test variable.
    pub(crate) fn node(&self, name: &str) -> String {
        format!("ns={};s={name}", self.ns)
    }

    /// The server's certificate (DER), to put into a trusted directory.
    pub(crate) fn certificate(&self) -> PathBuf {
        self.options.pki_dir.join("own").join("cert.der")
    }

    /// The current value of a test variable.
    pub(crate) fn value(&self, name: &str) -> Option<Variant> {
        let space = self.nm.address_space().read();
        let node = space.find(&NodeId::new(self.ns, name))?;
        match node {
            opcua::nodes::NodeType::Variable(v) => {
                v.value(
                    opcua::types::TimestampsToReturn::Neither,
                    &opcua::types::NumericRange::None,
                    &opcua::types::DataEncoding::Binary,
                    0.0,
                )
                .value
            }
            _ => None,
        }
    }

    /// Sets a test variable (subscribers are notified).
    pub(crate) fn set(&self, name: &str, value: Variant) {
        let subs = self.handle.subscriptions().clone();
        self.nm
            .set_value(
                &subs,
                &NodeId::new(self.ns, name),
                None,
                DataValue::new_now(value),
            )
            .expect("set value");
    }

    /// Stops the server and waits until its listener is closed.
    pub(crate) async fn stop(self) -> Options {
        self.ticker.abort();
        self.handle.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.options
    }
}

/// A nested tree of `count` readable variables under `Plant` (4 areas × 5
/// lines, names with spaces and brackets), cycling through the scalar types
/// (some writable), plus in each line a method, an Int32 array and a Guid.
fn add_tree(space: &mut opcua::server::address_space::AddressSpace, ns: u16, count: usize) {
    let root = NodeId::new(ns, TREE_ROOT);
    space.add_folder(&root, TREE_ROOT, TREE_ROOT, &ObjectId::ObjectsFolder.into());
    let types = scalars();
    let mut lines = Vec::new();
    for a in 0..4 {
        let area = NodeId::new(ns, format!("{TREE_ROOT}/Area {a}"));
        space.add_folder(
            &area,
            format!("Area {a}").as_str(),
            format!("Area {a}").as_str(),
            &root,
        );
        for l in 0..5 {
            let line = NodeId::new(ns, format!("{TREE_ROOT}/Area {a}/Line {l}"));
            space.add_folder(
                &line,
                format!("Line {l}").as_str(),
                format!("Line {l}").as_str(),
                &area,
            );
            let m = NodeId::new(ns, format!("{TREE_ROOT}/Area {a}/Line {l}/Reset"));
            opcua::nodes::MethodBuilder::new(&m, "Reset", "Reset")
                .component_of(line.clone())
                .insert(&mut *space);
            let mut arr = Variable::new(
                &NodeId::new(ns, format!("{TREE_ROOT}/Area {a}/Line {l}/History")),
                "History",
                "History",
                Variant::from(vec![1i32, 2, 3]),
            );
            arr.set_value_rank(1);
            let guid = Variable::new(
                &NodeId::new(ns, format!("{TREE_ROOT}/Area {a}/Line {l}/Id")),
                "Id",
                "Id",
                Variant::Guid(Box::new(opcua::types::Guid::new())),
            );
            space.add_variables(vec![arr, guid], &line);
            lines.push((a, l, line));
        }
    }
    let per_line = count.div_ceil(lines.len());
    let mut made = 0;
    for (a, l, line) in &lines {
        let mut vars = Vec::new();
        for k in 0..per_line {
            if made == count {
                break;
            }
            let (tname, value) = types[made % types.len()].clone();
            let name = format!("{tname} ({k})");
            let mut v = Variable::new(
                &NodeId::new(ns, format!("{TREE_ROOT}/Area {a}/Line {l}/{name}")),
                name.as_str(),
                name.as_str(),
                value,
            );
            if made % 3 == 0 {
                v.set_writable(true);
                v.set_user_access_level(v.access_level());
            }
            vars.push(v);
            made += 1;
        }
        space.add_variables(vars, line);
    }
}
