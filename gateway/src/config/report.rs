//! The human-readable report `fieldgate check` prints for a valid config:
//! sessions, devices, their topics and effective settings (never passwords).

use std::fmt::Write as _;
use std::time::Duration;

use fieldgate_drivers::Value;

use super::resolved::{DeviceSettings, Resolved, ServerAddress, SessionSettings, StoreSettings};
use super::types::PayloadEncode;

/// A duration as `check` prints it.
pub(super) fn dur(d: Duration) -> String {
    if d.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn value(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn encode(e: PayloadEncode) -> &'static str {
    match e {
        PayloadEncode::Raw => "raw",
        PayloadEncode::Base64 => "base64",
    }
}

fn server(s: &ServerAddress) -> String {
    match s {
        ServerAddress::Tcp { host, port } if host.contains(':') => format!("tcp://[{host}]:{port}"),
        ServerAddress::Tls { host, port } if host.contains(':') => format!("tls://[{host}]:{port}"),
        other => other.to_string(),
    }
}

/// The effective client options of a session, each line prefixed by `pad`.
fn client_options(out: &mut String, pad: &str, s: &SessionSettings) {
    let _ = writeln!(
        out,
        "{pad}server {}, MQTT {}",
        s.servers().map(server).collect::<Vec<_>>().join(", "),
        match s.protocol_version {
            5 => "5",
            3 => "3.1",
            _ => "3.1.1",
        }
    );
    if s.servers().any(ServerAddress::is_tls) {
        let t = &s.tls;
        let _ = writeln!(
            out,
            "      TLS: CA {}, client certificate {}, server name {}{}",
            if t.ca_pem.is_some() {
                "(given)"
            } else {
                "(system)"
            },
            if t.cert_pem.is_some() {
                "(set)"
            } else {
                "(none)"
            },
            t.server_name.as_deref().unwrap_or("(host)"),
            if t.insecure_skip_verify {
                ", INSECURE: server certificate not verified"
            } else {
                ""
            }
        );
    }
    if !s.http_headers.is_empty() {
        let names: Vec<&str> = s.http_headers.iter().map(|(k, _)| k.as_str()).collect();
        let _ = writeln!(out, "      WebSocket headers: {}", names.join(", "));
    }
    let payload = String::from_utf8(s.will.payload.clone())
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|_| format!("{} bytes", s.will.payload.len()));
    let _ = writeln!(
        out,
        "{pad}will {} payload {payload} qos {} retained {}",
        s.will.topic, s.will.qos, s.will.retained
    );
    if s.username.is_some() || s.password.is_some() {
        let _ = writeln!(
            out,
            "{pad}username: {}, password: {}",
            s.username.as_deref().unwrap_or("(none)"),
            if s.password.is_some() {
                "(set)"
            } else {
                "(none)"
            }
        );
    }
    let _ = writeln!(
        out,
        "{pad}cleanSession {}, connectTimeout {}, keepAlive {}, pingTimeout {}, autoReconnect {}, maxReconnectInterval {}, store {}",
        s.clean_session,
        dur(s.connect_timeout),
        dur(s.keep_alive),
        dur(s.ping_timeout),
        s.auto_reconnect,
        dur(s.max_reconnect_interval),
        match &s.store {
            StoreSettings::Memory => format!("memory ({} messages)", s.message_channel_depth),
            StoreSettings::File {
                directory,
                max_bytes,
                ..
            } => format!("file {} (max {max_bytes} bytes)", directory.display()),
        }
    );
}

fn session(out: &mut String, i: usize, s: &SessionSettings) {
    let _ = writeln!(out, "  [{i}] client id {}", s.client_id);
    client_options(out, "      ", s);
    if let Some(sp) = &s.sparkplug {
        let _ = writeln!(
            out,
            "      Sparkplug B edge node {}/{} ({}), primary host {}, bdSeq in {}",
            sp.group_id,
            sp.edge_node_id,
            crate::northbound::sparkplug::node_topic(sp, "NBIRTH"),
            sp.primary_host_id.as_deref().unwrap_or("(none)"),
            sp.bdseq_file.display()
        );
    }
}

fn device(out: &mut String, r: &Resolved, d: &DeviceSettings) {
    let _ = writeln!(out, "  {} (driver {})", d.name, d.driver.as_str());
    if let Some(f) = r.sources.file_of(&d.name) {
        let _ = writeln!(out, "    from: {f}");
    }
    if let Some((p, from)) = r.sources.profile_of(&d.name) {
        let _ = writeln!(
            out,
            "    profile: {p} ({from}); the device's own keys override it"
        );
    }
    // The merged client options (top-level `mqtt.client` + the device's
    // override) are the device's session's options.
    if let Some(s) = r.sessions.get(d.session) {
        let _ = writeln!(out, "    session: [{}] {}", d.session, s.client_id);
        client_options(out, "      ", s);
    }
    let t = &d.message.topic;
    let _ = writeln!(out, "    topics:");
    if let Some(sp) = r.sessions.get(d.session).and_then(|s| s.sparkplug.as_ref()) {
        use crate::northbound::sparkplug::device_topic;
        for (kind, what) in [
            ("DBIRTH", "birth: every property as a metric"),
            ("DDATA", "changed metrics"),
            ("DDEATH", "offline"),
            ("DCMD", "writes in"),
        ] {
            let _ = writeln!(out, "      {}  ({what})", device_topic(sp, kind, &d.name));
        }
    } else {
        let _ = writeln!(out, "      {t}  (state)");
        let _ = writeln!(out, "      {t}/$set  (commands in)");
        let _ = writeln!(out, "      {t}/$set/result  (command results)");
        let _ = writeln!(out, "      {t}/$get  (read now)");
        let _ = writeln!(out, "      {t}/$state  (online/offline)");
        let _ = writeln!(out, "      {t}/$meta  (metadata)");
    }
    let _ = writeln!(
        out,
        "    syncInterval {}, timeout {}",
        dur(d.spec.sync_interval),
        dur(d.spec.timeout)
    );
    if d.publish.on_change {
        let _ = writeln!(
            out,
            "    publish: on change (heartbeat {})",
            if d.publish.heartbeat.is_zero() {
                "never".to_string()
            } else {
                dur(d.publish.heartbeat)
            }
        );
    } else {
        let _ = writeln!(out, "    publish: after every poll");
    }
    let _ = writeln!(
        out,
        "    message: qos {}, retained {}, encoding {}, waitTimeout {}",
        d.message.qos,
        d.message.retained,
        encode(d.message.payload_encode),
        dur(d.message.wait_timeout)
    );
    let driver = super::drivers::of(d.driver);
    driver.report_connection(out, &d.spec);
    let _ = writeln!(out, "    properties:");
    for (spec, sem) in d.spec.properties.iter().zip(&d.properties) {
        // Device-level slots (`$advertisement`) are not properties.
        if sem.name.starts_with('$') {
            continue;
        }
        let mut line = format!("      {}: {}", sem.name, sem.data_type);
        if sem.writable {
            line.push_str(", writable");
        } else {
            line.push_str(", read-only");
        }
        if let Some(s) = sem.scale() {
            let _ = write!(line, ", scale {s}");
        }
        if let Some(sf) = sem.scale_factor() {
            let _ = write!(line, ", scaleFactor {}", sf.name);
        }
        if let Some(o) = sem.offset() {
            let _ = write!(line, ", offset {o}");
        }
        if let Some(m) = sem.min() {
            let _ = write!(line, ", min {m}");
        }
        if let Some(m) = sem.max() {
            let _ = write!(line, ", max {m}");
        }
        if let Some(db) = sem.deadband() {
            let _ = write!(line, ", deadband {db}");
        }
        if let Some(u) = sem.unit() {
            let _ = write!(line, ", unit {u:?}");
        }
        if let Some(text) = sem.description() {
            let _ = write!(line, ", description {text:?}");
        }
        if !sem.enum_entries().is_empty() {
            let e: Vec<String> = sem
                .enum_entries()
                .iter()
                .map(|e| format!("{}: {}", value(&e.raw), e.label))
                .collect();
            let _ = write!(line, ", enum {{{}}}", e.join(", "));
        }
        driver.report_address(&mut line, &spec.address);
        let _ = writeln!(out, "{line}");
    }
    driver.report_tail(out, &d.spec);
}

/// The report for a valid config.
pub fn render(r: &Resolved) -> String {
    render_parts(r).concat()
}

/// [`render`] in consecutive parts (a large config's devices are rendered
/// on several threads), to print one after the other.
pub fn render_parts(r: &Resolved) -> Vec<String> {
    let mut out = String::new();
    let g = &r.gateway;
    let _ = writeln!(out, "config OK");
    let _ = writeln!(out, "gateway:");
    let _ = writeln!(out, "  namespace {}", g.namespace);
    let _ = writeln!(out, "  stateDirectory {}", g.state_directory.display());
    let _ = writeln!(
        out,
        "  metrics {}",
        g.metrics_listen
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_else(|| "off".into())
    );
    if let Some(a) = g.metrics_listen {
        let writes = match (g.metrics_commands, &g.metrics_token) {
            (false, _) => "read-only",
            (true, Some(_)) => "commands on, token required",
            (true, None) => "commands on",
        };
        let _ = writeln!(out, "  status page http://{a}/ ({writes})");
    }
    let _ = writeln!(out, "  log {:?} {:?}", g.log_level, g.log_format);
    let _ = writeln!(out, "  topic {}", r.gateway_topic);
    if let Some(b) = &r.broker {
        let _ = writeln!(out, "broker: embedded, listening on {}", b.listen);
    }
    if let Some(ha) = &r.home_assistant {
        let entities: usize = r.devices.iter().map(|d| d.properties.len()).sum();
        let _ = writeln!(
            out,
            "homeAssistant discovery: prefix {}, statusTopic {}, {} device(s) with {entities} entities, plus the gateway's 3 diagnostic entities",
            ha.prefix,
            ha.status_topic,
            r.devices.len()
        );
    }
    let _ = writeln!(out, "sessions:");
    for (i, s) in r.sessions.iter().enumerate() {
        session(&mut out, i, s);
    }
    if !r.sources.include_globs.is_empty() {
        let _ = writeln!(out, "include: {}", r.sources.include_globs.join(", "));
        for f in &r.sources.files {
            let _ = writeln!(out, "  {}", f.display());
        }
    }
    let _ = writeln!(out, "devices: {}", r.devices.len());
    let mut parts = vec![out];
    parts.extend(devices(r));
    parts
}

/// Devices one thread renders at least.
const DEVICES_PER_THREAD: usize = 1024;

/// The devices' part of the report, in order: a long list is rendered in
/// parts on several threads.
fn devices(r: &Resolved) -> Vec<String> {
    let text_of = |list: &[std::sync::Arc<DeviceSettings>]| {
        let mut out = String::new();
        for d in list {
            device(&mut out, r, d);
        }
        out
    };
    let most = (r.devices.len() / DEVICES_PER_THREAD).min(8);
    // (Asked only for a long list: it reads the cgroup's CPU limits.)
    let threads = if most < 2 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |cores| most.min(cores.get()))
    };
    if threads < 2 {
        return vec![text_of(&r.devices)];
    }
    let per = r.devices.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = r.devices.chunks(per);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|chunk| {
                let handle = std::thread::Builder::new()
                    .name("check-report".into())
                    .spawn_scoped(scope, move || text_of(chunk));
                (chunk, handle.ok())
            })
            .collect();
        let mut parts = vec![text_of(first)];
        for (chunk, handle) in others {
            // A thread that could not be started: rendered here.
            parts.push(match handle.and_then(|h| h.join().ok()) {
                Some(text) => text,
                None => text_of(chunk),
            });
        }
        parts
    })
}
