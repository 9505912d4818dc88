//! `mqtt.client` (top level or per device): its checks, how a device's
//! options inherit the top level's, the resolved [`SessionSettings`], the
//! server URL and the file store directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::load::Loader;
use super::names::{check_topic, MAX_CLIENT_ID};
use super::read_password_file;
use super::resolved::*;
use super::tls::{check_tls, resolve_tls};
use super::tree::{join, Node};
use super::types::*;

/// The MQTT sessions resolved so far: the gateway's first, then one per
/// distinct set of merged client options.
pub(super) struct Sessions {
    /// The merged client options of each session, to find a shared one.
    pub(super) keys: Vec<ClientOptions>,
    /// The sessions, in the same order.
    pub(super) list: Vec<SessionSettings>,
}

impl Loader<'_> {
    /// Checks one `mqtt.client` mapping as given (before inheritance).
    pub(super) fn check_client(&mut self, n: &Node, path: &str, c: &ClientOptions) {
        let ctx = &mut *self.ctx;
        let urls = c.server.as_ref().map_or(&[][..], |l| l.urls());
        if c.server.is_some() && urls.is_empty() {
            ctx.val(n, path, &["server"], "`server` lists no server");
        }
        let servers: Vec<ServerAddress> = urls
            .iter()
            .filter_map(|s| {
                parse_server(s)
                    .map_err(|e| ctx.val(n, path, &["server"], e))
                    .ok()
            })
            .collect();
        // The checks below are about any WebSocket server of a list.
        let server = servers
            .iter()
            .find(|s| matches!(s, ServerAddress::WebSocket { .. }))
            .or(servers.first())
            .cloned();
        match c.protocol_version {
            None | Some(4) | Some(5) => {}
            Some(3) => {
                if matches!(server, Some(ServerAddress::WebSocket { .. })) {
                    ctx.val(
                        n,
                        path,
                        &["protocolVersion"],
                        "protocolVersion 3 (MQTT 3.1) works over tcp, ssl/tls/tcps and unix servers, not over ws/wss; use 4 or 5",
                    );
                }
                if let Some(id) = c.client_id.as_deref().filter(|id| !id.is_empty()) {
                    if id.len() > 23 {
                        ctx.val(
                            n,
                            path,
                            &["clientId"],
                            format!("MQTT 3.1 (protocolVersion 3) allows client ids of at most 23 characters; `{id}` has {}", id.len()),
                        );
                    }
                }
            }
            Some(v) => ctx.val(
                n,
                path,
                &["protocolVersion"],
                format!("protocolVersion {v} is not an MQTT version; allowed: 3 (MQTT 3.1), 4 (MQTT 3.1.1), 5 (MQTT 5)"),
            ),
        }
        if let Some(id) = &c.client_id {
            if id.len() > MAX_CLIENT_ID || id.contains('\0') {
                ctx.val(
                    n,
                    path,
                    &["clientId"],
                    "client id is too long or contains NUL",
                );
            }
        }
        if let Some(w) = &c.will {
            let wn = n.get("will").unwrap_or(n);
            let wp = join(path, "will");
            if let Some(t) = &w.topic {
                let t = t.as_str();
                if !t.is_empty() {
                    if let Err(e) = check_topic(t) {
                        let tn = wn.get("topic").unwrap_or(wn);
                        let target = tn.get("name").unwrap_or(tn);
                        let p = if tn.get("name").is_some() {
                            join(&join(&wp, "topic"), "name")
                        } else {
                            join(&wp, "topic")
                        };
                        ctx.at(target, &p, e);
                    }
                }
            }
            if let Some(q) = w.qos {
                if q > 2 {
                    ctx.val(
                        wn,
                        &wp,
                        &["qos"],
                        format!("qos {q} is out of range; allowed: 0, 1, 2"),
                    );
                }
            }
            if w.payload_encode == Some(PayloadEncode::Base64) {
                let content = w
                    .payload_content
                    .clone()
                    .unwrap_or_else(|| "offline".into());
                if base64::engine::general_purpose::STANDARD
                    .decode(content.trim())
                    .is_err()
                {
                    ctx.val(
                        wn,
                        &wp,
                        &["payloadContent"],
                        "with `payloadEncode: base64`, `payloadContent` must be base64 text (e.g. b2ZmbGluZQ== for `offline`)",
                    );
                }
            }
        }
        if let Some(a) = &c.basic_auth {
            let an = n.get("basicAuth").unwrap_or(n);
            let ap = join(path, "basicAuth");
            if a.password.is_some() && a.password_file.as_deref().is_some_and(|f| !f.is_empty()) {
                ctx.key(
                    an,
                    &ap,
                    &["passwordFile"],
                    "give either `password` or `passwordFile`, not both",
                );
            }
            if let Some(f) = a.password_file.as_deref().filter(|f| !f.is_empty()) {
                if let Err(e) = read_password_file(self.base_dir, f) {
                    ctx.val(an, &ap, &["passwordFile"], e);
                }
            }
        }
        if let (Some(t), Some(tn)) = (&c.tls_config, n.get("tlsConfig")) {
            check_tls(
                ctx,
                self.base_dir,
                &self.secrets_dir,
                tn,
                &join(path, "tlsConfig"),
                t,
            );
            if t.server_name.as_deref().is_some_and(|s| !s.is_empty())
                && matches!(server, Some(ServerAddress::WebSocket { .. }))
            {
                ctx.key(
                    tn,
                    &join(path, "tlsConfig"),
                    &["serverName"],
                    "`serverName` works with ssl/tls/tcps servers; a wss server is verified against the host of its URL",
                );
            }
        }
        if let Some(s) = &c.store {
            let sn = n.get("store").unwrap_or(n);
            let sp = join(path, "store");
            if s.max_bytes.is_some_and(|b| b.0 < MIN_STORE_BYTES) {
                ctx.val(sn, &sp, &["maxBytes"], "must be at least 64KiB");
            }
            if s.directory_prefix.as_deref() == Some("") {
                ctx.val(
                    sn,
                    &sp,
                    &["directoryPrefix", "direcotryPrefix"],
                    "must not be empty",
                );
            }
        }
        if let Some(h) = &c.http_headers {
            for (name, values) in h {
                let bad_value = match values {
                    HeaderValues::One(v) => !header_value_ok(v),
                    HeaderValues::Many(vs) => vs.iter().any(|v| !header_value_ok(v)),
                };
                if !header_name_ok(name) || bad_value {
                    let hn = n.get("httpHeaders").unwrap_or(n);
                    ctx.key(
                        hn,
                        &join(path, "httpHeaders"),
                        &[name.as_str()],
                        format!("`{name}` is not a valid HTTP header (name: letters, digits and !#$%&'*+-.^_`|~; values: visible ASCII and spaces)"),
                    );
                }
            }
        }
        if let Some(k) = c.keep_alive {
            if !k.0.is_zero() && k.0 < Duration::from_secs(1) {
                ctx.val(
                    n,
                    path,
                    &["keepAlive"],
                    "keepAlive must be 0s (off) or at least 1s",
                );
            } else if k.0 > Duration::from_secs(65_535) {
                ctx.val(n, path, &["keepAlive"], "keepAlive must be at most 65535s");
            }
        }
        if let Some(m) = c.max_reconnect_interval {
            if m.0 < Duration::from_secs(1) {
                ctx.val(
                    n,
                    path,
                    &["maxReconnectInterval"],
                    "maxReconnectInterval must be at least 1s (the backoff starts at 1s)",
                );
            }
        }
        if c.message_channel_depth == Some(0) {
            ctx.val(
                n,
                path,
                &["messageChannelDepth"],
                "messageChannelDepth must be at least 1",
            );
        }
    }

    /// Resolves one session from merged configured options.
    pub(super) fn resolve_session(
        &mut self,
        c: &ClientOptions,
        node: Option<&Node>,
        path: &str,
        broker: &Option<BrokerSettings>,
        default_id: String,
        default_will: String,
    ) -> Option<SessionSettings> {
        let mut servers = match &c.server {
            Some(list) => list
                .urls()
                .iter()
                .map(|s| parse_server(s))
                .collect::<Result<Vec<_>, _>>()
                .ok()?,
            None => vec![match broker {
                Some(b) => {
                    // MQTT 5 goes to the broker's MQTT 5 listener.
                    let listen = if c.protocol_version == Some(5) {
                        match b.listen_v5 {
                            Some(v5) => v5,
                            None => {
                                let msg = "protocolVersion 5 with the embedded broker needs `broker.listenV5` (its MQTT 5 listener); `broker.listen` serves MQTT 3.1.1 only";
                                match node {
                                    Some(n) => self.ctx.key(n, path, &["protocolVersion"], msg),
                                    None => self.ctx.at_pos(1, 1, path, msg),
                                }
                                return None;
                            }
                        }
                    } else {
                        b.listen
                    };
                    ServerAddress::Tcp {
                        // A broker listening on every address is reached locally.
                        host: match listen.ip() {
                            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".into(),
                            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "::1".into(),
                            ip => ip.to_string(),
                        },
                        port: listen.port(),
                    }
                }
                None => ServerAddress::Tcp {
                    host: "127.0.0.1".into(),
                    port: 1883,
                },
            }],
        };
        if servers.is_empty() {
            return None;
        }
        let server = servers.remove(0);
        let w = c.will.clone().unwrap_or_default();
        let will_topic = w
            .topic
            .as_ref()
            .map(|t| t.as_str().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or(default_will);
        let content = w
            .payload_content
            .clone()
            .unwrap_or_else(|| "offline".into());
        let payload = match w.payload_encode.unwrap_or_default() {
            PayloadEncode::Raw => content.into_bytes(),
            PayloadEncode::Base64 => base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .ok()?,
        };
        let auth = c.basic_auth.clone().unwrap_or_default();
        let password = match auth.password_file.as_deref().filter(|f| !f.is_empty()) {
            // An unreadable file was reported by `check_client` at the
            // `basicAuth` (top level or device) that set it.
            Some(f) => read_password_file(self.base_dir, f).ok(),
            None => auth.password.clone(),
        }
        .map(Secret);
        let client_id = c
            .client_id
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or(default_id);
        if c.protocol_version == Some(3)
            && client_id.len() > 23
            && c.client_id.as_deref().is_none_or(str::is_empty)
        {
            let msg = format!(
                "MQTT 3.1 (protocolVersion 3) allows client ids of at most 23 characters; the default `{client_id}` is longer: set a shorter `clientId`"
            );
            match node {
                Some(n) => self.ctx.key(n, path, &["protocolVersion"], msg),
                None => self.ctx.at_pos(1, 1, path, msg),
            }
        }
        Some(SessionSettings {
            client_id,
            server,
            fallback_servers: servers,
            protocol_version: c.protocol_version.unwrap_or(4),
            tls: resolve_tls(self.base_dir, &self.secrets_dir, c.tls_config.as_ref()),
            http_headers: c
                .http_headers
                .iter()
                .flatten()
                .flat_map(|(k, v)| match v {
                    HeaderValues::One(v) => vec![(k.clone(), Secret(v.clone()))],
                    HeaderValues::Many(vs) => {
                        vs.iter().map(|v| (k.clone(), Secret(v.clone()))).collect()
                    }
                })
                .collect(),
            will: WillSettings {
                topic: will_topic,
                payload,
                qos: w.qos.unwrap_or(1),
                retained: w.retained.unwrap_or(true),
            },
            username: auth.name.clone().filter(|s| !s.is_empty()),
            password,
            clean_session: c.clean_session.unwrap_or(true),
            store: match c.store.as_ref() {
                Some(s) if s.kind == Some(StoreKind::File) => StoreSettings::File {
                    // Empty: `<stateDirectory>/mqtt/<client id>`, filled in
                    // once the state directory is known.
                    directory: s.directory_prefix.clone().unwrap_or_default().into(),
                    max_bytes: s.max_bytes.map_or(DEFAULT_STORE_MAX_BYTES, |b| b.0),
                    max_age: s.max_age.map(|d| d.0).filter(|d| !d.is_zero()),
                    min_free_bytes: s
                        .min_free_bytes
                        .map_or(crate::config::resolved::DEFAULT_STORE_MIN_FREE_BYTES, |b| {
                            b.0
                        }),
                },
                _ => StoreSettings::Memory,
            },
            connect_timeout: c
                .connect_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            keep_alive: c.keep_alive.map(|d| d.0).unwrap_or(Duration::from_secs(30)),
            ping_timeout: c
                .ping_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(10)),
            write_timeout: c
                .write_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
            resume_subs: c.resume_subs.unwrap_or(false),
            order: c.order.unwrap_or(true),
            auto_reconnect: c.auto_reconnect.unwrap_or(true),
            max_reconnect_interval: c
                .max_reconnect_interval
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(600)),
            message_channel_depth: c.message_channel_depth.unwrap_or(100).max(1) as usize,
            ack_timeout: c
                .ack_timeout
                .map(|d| d.0)
                .unwrap_or(crate::config::resolved::DEFAULT_ACK_TIMEOUT),
            max_packet_size: c
                .max_packet_size
                .map(|b| u32::try_from(b.0).unwrap_or(u32::MAX)),
            sparkplug: None,
        })
    }
}

/// File store directories: the default per client id; a directory that
/// several sessions would share (an inherited `directoryPrefix`) gets one
/// subdirectory per client id.
pub(super) fn assign_store_directories(sessions: &mut [SessionSettings], state_directory: &str) {
    let mut uses: HashMap<PathBuf, usize> = HashMap::new();
    for s in sessions.iter_mut() {
        if let StoreSettings::File { directory, .. } = &mut s.store {
            if directory.as_os_str().is_empty() {
                *directory = Path::new(state_directory)
                    .join("mqtt")
                    .join(store_dir_name(&s.client_id));
            }
            *uses.entry(directory.clone()).or_default() += 1;
        }
    }
    for s in sessions.iter_mut() {
        if let StoreSettings::File { directory, .. } = &mut s.store {
            if uses.get(directory.as_path()).is_some_and(|n| *n > 1) {
                *directory = directory.join(store_dir_name(&s.client_id));
            }
        }
    }
}

/// Longest store directory name taken from a client id as is.
const STORE_DIR_NAME_MAX: usize = 200;

/// A client id as one safe path component (`/`, `..` and the like
/// become `_`); a longer id than a file name allows is cut to
/// [`STORE_DIR_NAME_MAX`] and made unique with the id's UUIDv5.
fn store_dir_name(client_id: &str) -> String {
    let name: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '.') {
        format!("_{name}")
    } else if name.len() > STORE_DIR_NAME_MAX {
        // Only ASCII is left, so any byte index is a character boundary.
        let uid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, client_id.as_bytes());
        format!("{}-{}", &name[..STORE_DIR_NAME_MAX], uid.simple())
    } else {
        name
    }
}

/// A stand-in session for one whose options have errors (the config is
/// refused; it keeps session indices in step).
pub(super) fn placeholder_session() -> SessionSettings {
    SessionSettings {
        client_id: String::new(),
        server: ServerAddress::Tcp {
            host: "127.0.0.1".into(),
            port: 1883,
        },
        fallback_servers: Vec::new(),
        protocol_version: 4,
        tls: TlsSettings::default(),
        http_headers: Vec::new(),
        will: WillSettings {
            topic: String::new(),
            payload: Vec::new(),
            qos: 1,
            retained: true,
        },
        username: None,
        password: None,
        clean_session: true,
        store: StoreSettings::Memory,
        connect_timeout: Duration::from_secs(30),
        keep_alive: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(30),
        resume_subs: false,
        order: true,
        auto_reconnect: true,
        max_reconnect_interval: Duration::from_secs(600),
        message_channel_depth: 100,
        ack_timeout: crate::config::resolved::DEFAULT_ACK_TIMEOUT,
        max_packet_size: None,
        sparkplug: None,
    }
}

/// An HTTP header name is a token (RFC 9110).
fn header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP header value: visible ASCII, spaces and tabs.
fn header_value_ok(v: &str) -> bool {
    v.bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

/// Why a `server` URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// `unix://` without a socket path.
    #[error("server `{0}` has no socket path; write e.g. unix:///run/mosquitto/mqtt.sock")]
    NoSocketPath(String),
    /// A scheme fieldgate does not speak.
    #[error("unknown server scheme `{0}`; allowed: tcp, ssl, tls, tcps, ws, wss, unix")]
    UnknownScheme(String),
    /// Nothing between the scheme and the path.
    #[error("server `{0}` has no host; write e.g. tcp://127.0.0.1:1883")]
    NoHost(String),
    /// Credentials in the URL; only the scheme and host are kept (the part
    /// before `@` is likely a password and is never echoed).
    #[error("server `{scheme}://…@{host}`: a user name or password in the URL is not supported (it would show in logs and `check`); use basicAuth")]
    Credentials {
        /// The scheme, lowercase.
        scheme: String,
        /// What follows the `@`.
        host: String,
    },
    /// `[` of an IPv6 address without its `]`.
    #[error("server `{0}`: unclosed `[`")]
    UnclosedBracket(String),
    /// The port is not a number in 1..65535.
    #[error("server `{server}`: `{port}` is not a port (1..65535)")]
    BadPort {
        /// The URL as given.
        server: String,
        /// The port text as given.
        port: String,
    },
    /// The host part is empty or holds a `/`.
    #[error("server `{0}` has no valid host; write e.g. tcp://127.0.0.1:1883")]
    BadHost(String),
}

/// Parses `scheme://host[:port]` (or `host[:port]`, meaning tcp),
/// `ws[s]://host[:port][/path]` and `unix:///path/to/socket`.
pub fn parse_server(s: &str) -> Result<ServerAddress, ServerError> {
    let (scheme, rest) = match s.split_once("://") {
        Some((sc, r)) => (sc.to_ascii_lowercase(), r),
        None => ("tcp".to_string(), s),
    };
    let default_port = match scheme.as_str() {
        "tcp" | "mqtt" => 1883,
        "ssl" | "tls" | "tcps" | "mqtts" => 8883,
        "ws" => 80,
        "wss" => 443,
        "unix" => {
            if rest.is_empty() || rest.contains('\0') {
                return Err(ServerError::NoSocketPath(s.to_owned()));
            }
            return Ok(ServerAddress::Unix {
                path: PathBuf::from(rest),
            });
        }
        other => return Err(ServerError::UnknownScheme(other.to_owned())),
    };
    let (authority, url_path) = match rest.find('/') {
        Some(i) if scheme == "ws" || scheme == "wss" => (&rest[..i], &rest[i..]),
        _ => (rest.trim_end_matches('/'), ""),
    };
    if authority.is_empty() {
        return Err(ServerError::NoHost(s.to_owned()));
    }
    if let Some((_, host)) = authority.rsplit_once('@') {
        // Not echoed: the part before `@` is likely a password.
        return Err(ServerError::Credentials {
            scheme,
            host: host.to_owned(),
        });
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        // [v6]:port
        let (h, p) = r
            .split_once(']')
            .ok_or_else(|| ServerError::UnclosedBracket(s.to_owned()))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            Some(_) => (authority.to_string(), None),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ServerError::BadPort {
                    server: s.to_owned(),
                    port: p.to_owned(),
                })?
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(ServerError::BadHost(s.to_owned()));
    }
    Ok(match scheme.as_str() {
        "ws" | "wss" => {
            let h = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let path = if url_path.is_empty() { "/" } else { url_path };
            ServerAddress::WebSocket {
                url: format!("{scheme}://{h}:{port}{path}"),
                host,
                secure: scheme == "wss",
            }
        }
        "tcp" | "mqtt" => ServerAddress::Tcp { host, port },
        _ => ServerAddress::Tls { host, port },
    })
}

/// A device's client options `d` over the top level's `t`, key by key.
pub(super) fn merge_client(d: &ClientOptions, t: &ClientOptions) -> ClientOptions {
    fn m<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
        a.clone().or_else(|| b.clone())
    }
    ClientOptions {
        server: m(&d.server, &t.server),
        protocol_version: m(&d.protocol_version, &t.protocol_version),
        client_id: m(&d.client_id, &t.client_id),
        will: match (&d.will, &t.will) {
            (Some(a), Some(b)) => Some(WillOptions {
                topic: m(&a.topic, &b.topic),
                payload_encode: m(&a.payload_encode, &b.payload_encode),
                payload_content: m(&a.payload_content, &b.payload_content),
                qos: m(&a.qos, &b.qos),
                retained: m(&a.retained, &b.retained),
            }),
            (a, b) => m(a, b),
        },
        basic_auth: match (&d.basic_auth, &t.basic_auth) {
            (Some(a), Some(b)) => Some(BasicAuth {
                name: m(&a.name, &b.name),
                password: m(&a.password, &b.password),
                password_file: m(&a.password_file, &b.password_file),
            }),
            (a, b) => m(a, b),
        },
        tls_config: m(&d.tls_config, &t.tls_config),
        clean_session: m(&d.clean_session, &t.clean_session),
        store: match (&d.store, &t.store) {
            (Some(a), Some(b)) => Some(StoreOptions {
                kind: m(&a.kind, &b.kind),
                directory_prefix: m(&a.directory_prefix, &b.directory_prefix),
                max_bytes: m(&a.max_bytes, &b.max_bytes),
                max_age: m(&a.max_age, &b.max_age),
                min_free_bytes: m(&a.min_free_bytes, &b.min_free_bytes),
            }),
            (a, b) => m(a, b),
        },
        resume_subs: m(&d.resume_subs, &t.resume_subs),
        connect_timeout: m(&d.connect_timeout, &t.connect_timeout),
        keep_alive: m(&d.keep_alive, &t.keep_alive),
        ping_timeout: m(&d.ping_timeout, &t.ping_timeout),
        order: m(&d.order, &t.order),
        write_timeout: m(&d.write_timeout, &t.write_timeout),
        auto_reconnect: m(&d.auto_reconnect, &t.auto_reconnect),
        max_reconnect_interval: m(&d.max_reconnect_interval, &t.max_reconnect_interval),
        message_channel_depth: m(&d.message_channel_depth, &t.message_channel_depth),
        http_headers: m(&d.http_headers, &t.http_headers),
        ack_timeout: m(&d.ack_timeout, &t.ack_timeout),
        max_packet_size: m(&d.max_packet_size, &t.max_packet_size),
    }
}
