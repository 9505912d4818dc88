//! `fieldgate status`: asks the local daemon's HTTP listener for
//! `/api/v1/status` and `/api/v1/devices` and prints what an operator wants
//! first over SSH: status and reasons, the config and its last reload, each
//! MQTT session and its backlog, the devices that are not online (or have
//! errors) with their errors, and the free space of the state directory.
//!
//! Exit codes: 0 when the daemon answers and is healthy, 3 when it answers
//! and is degraded, 1 when it cannot be reached or answers nonsense.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Exit code when the daemon answers but is degraded.
pub const EXIT_DEGRADED: i32 = 3;
/// How long connecting to and reading from the daemon may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (a device listing of a large gateway fits).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// The listener when the config does not name one (`gateway.metrics.listen`'s default).
const DEFAULT_LISTEN: &str = "127.0.0.1:9880";

/// `fieldgate status` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Config file whose `gateway.metrics.listen` is the daemon's listener
    /// (default: $FIELDGATE_CONFIG, else /etc/fieldgate/config.yaml).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// The daemon's listener instead, e.g. http://127.0.0.1:9880.
    #[arg(long, conflicts_with = "config")]
    pub url: Option<String>,
    /// List every device, not only those offline or with errors.
    #[arg(long)]
    pub all: bool,
    /// Print the two JSON documents as they came instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Why the daemon could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The listener address could not be worked out.
    #[error("{0}")]
    Address(String),
    /// Connecting, writing or reading failed.
    #[error("cannot reach the daemon at {addr}: {source}")]
    Io {
        /// The listener.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The answer was not what the API returns.
    #[error("unexpected answer from {addr}{path}: {what}")]
    Answer {
        /// The listener.
        addr: String,
        /// The path asked.
        path: String,
        /// What was wrong.
        what: String,
    },
}

/// Runs `fieldgate status`; `default_config` is the path when `--config`
/// is not given. Returns the exit code.
pub fn run(args: &Args, default_config: &Path) -> i32 {
    let addr = match &args.url {
        Some(url) => parse_url(url),
        None => listener_of(args.config.as_deref().unwrap_or(default_config)),
    };
    let result = addr.and_then(|addr| {
        let status = get_json(&addr, "/api/v1/status")?;
        let devices = get_json(&addr, "/api/v1/devices")?;
        Ok((addr, status, devices))
    });
    match result {
        Ok((addr, status, devices)) => {
            if args.json {
                println!("{status}");
                println!("{devices}");
            } else {
                print!("{}", render(&addr, &status, &devices, args.all));
            }
            if status["status"] == "ok" {
                0
            } else {
                EXIT_DEGRADED
            }
        }
        Err(e) => {
            eprintln!("fieldgate status: {e}");
            1
        }
    }
}

/// `http://host:port[/]` or `host:port`.
fn parse_url(url: &str) -> Result<String, StatusError> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains("://") {
        return Err(StatusError::Address(format!(
            "{url}: only http:// URLs are supported"
        )));
    }
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        return Err(StatusError::Address(format!(
            "{url}: give the listener as http://HOST:PORT"
        )));
    }
    Ok(hostport.to_owned())
}

/// The listener named by the config at `path`: its `gateway.metrics.listen`
/// (the default when absent), an unspecified address (`0.0.0.0`, `[::]`)
/// asked on loopback. The file is read as plain YAML, so a config the
/// daemon would reject (an edit not yet applied) still names its listener.
fn listener_of(path: &Path) -> Result<String, StatusError> {
    let text = crate::config::read_limited(path, crate::config::tree::MAX_CONFIG_BYTES as u64)
        .map_err(|e| StatusError::Address(format!("{}: {e}; or give --url", path.display())))?;
    let text = String::from_utf8_lossy(&text);
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| {
        StatusError::Address(format!("{}: not YAML ({e}); give --url", path.display()))
    })?;
    let listen = match doc.pointer("/gateway/metrics/listen") {
        None | Some(Value::Null) => DEFAULT_LISTEN.to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(StatusError::Address(format!(
                "{}: gateway.metrics.listen is {other}; give --url",
                path.display()
            )))
        }
    };
    if listen.trim().is_empty() {
        return Err(StatusError::Address(format!(
            "{}: gateway.metrics.listen is empty (the listener is off); turn it on or give --url",
            path.display()
        )));
    }
    Ok(match listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let lo: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(lo, a.port()).to_string()
        }
        _ => listen,
    })
}

/// `GET path` from `addr`, its body parsed as JSON.
fn get_json(addr: &str, path: &str) -> Result<Value, StatusError> {
    let io = |source| StatusError::Io {
        addr: addr.to_owned(),
        source,
    };
    let answer = |what: String| StatusError::Answer {
        addr: addr.to_owned(),
        path: path.to_owned(),
        what,
    };
    let sockaddr = addr
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| StatusError::Address(format!("{addr}: no address")))?;
    let mut stream = TcpStream::connect_timeout(&sockaddr, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(answer("no HTTP header".into()));
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let code = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| answer("no HTTP status line".into()))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body).ok_or_else(|| answer("bad chunked body".into()))?
    } else {
        body.to_vec()
    };
    if code != 200 {
        return Err(answer(format!(
            "HTTP {code}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    serde_json::from_slice(&body).map_err(|e| answer(format!("not JSON: {e}")))
}

/// The body of a `Transfer-Encoding: chunked` answer.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// `1h 02m`, `3m 05s`, `12s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Bytes in B, KiB, MiB or GiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

/// A JSON value as text without quotes.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The human summary of `status` and `devices` (from `addr`).
pub fn render(addr: &str, status: &Value, devices: &Value, all: bool) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "fieldgate {} at http://{addr}/  namespace {}  up {}",
        text(&status["version"]),
        text(&status["namespace"]),
        duration(status["uptimeSeconds"].as_u64().unwrap_or(0)),
    );
    let _ = writeln!(o, "status      {}", text(&status["status"]));
    for r in status["reasons"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  reason    {}", text(r));
    }
    for w in status["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  warning   {}", text(w));
    }
    if status["clockSynchronized"] == false {
        let _ = writeln!(
            o,
            "clock       not synchronised (readings carry clockSynchronized: false)"
        );
    }

    let config = &status["config"];
    let _ = writeln!(
        o,
        "config      {}  hash {}  loaded {}",
        text(&config["path"]),
        text(&config["hash"]),
        text(&config["loadedAt"]),
    );
    match config["lastReload"].as_object() {
        None => {
            let _ = writeln!(o, "last reload none since start");
        }
        Some(r) => {
            let _ = writeln!(
                o,
                "last reload {} at {}",
                text(&r["result"]),
                text(&r["at"])
            );
            for e in r["errors"].as_array().into_iter().flatten() {
                let _ = writeln!(o, "  error     {}", text(&e["text"]));
            }
        }
    }

    let _ = writeln!(o, "sessions");
    for s in status["sessions"].as_array().into_iter().flatten() {
        let connected = if s["connected"] == true {
            "connected"
        } else {
            "NOT CONNECTED"
        };
        let _ = writeln!(
            o,
            "  {}  {}  {connected}  backlog {} msgs ({}, oldest {} s)  dropped {}",
            text(&s["id"]),
            text(&s["server"]),
            s["storeMessages"].as_i64().unwrap_or(0),
            bytes(s["storeBytes"].as_u64().unwrap_or(0)),
            text(&s["storeOldestAgeSeconds"]),
            s["dropped"].as_u64().unwrap_or(0),
        );
    }

    let list = devices["devices"].as_array().cloned().unwrap_or_default();
    let online = list.iter().filter(|d| d["status"] == "online").count();
    let _ = writeln!(
        o,
        "devices     {} total, {online} online, {} not online",
        list.len(),
        list.len() - online
    );
    for d in &list {
        let errors = d["errors"].as_object().filter(|e| !e.is_empty());
        let is_online = d["status"] == "online";
        if !all && is_online && errors.is_none() {
            continue;
        }
        let mut line = format!(
            "  {:<20} {:<8} {:<8}",
            text(&d["name"]),
            text(&d["driver"]),
            text(&d["status"])
        );
        if let Some(e) = d["error"].as_str() {
            let _ = write!(line, " {e}");
        }
        // Property errors that only repeat the device's error are not shown again.
        let list: Vec<String> = errors
            .into_iter()
            .flatten()
            .filter(|(_, e)| e.as_str() != d["error"].as_str())
            .map(|(p, e)| format!("{p}: {}", text(e)))
            .collect();
        if !list.is_empty() {
            let _ = write!(line, " [{}]", list.join("; "));
        }
        if let Some(age) = d["lastReadingAgeSeconds"].as_f64() {
            let _ = write!(line, " (last reading {age} s ago)");
        }
        let _ = writeln!(o, "{}", line.trim_end());
    }
    if let Some(free) = status["stateDirectory"]["freeBytes"].as_u64() {
        let _ = writeln!(o, "state dir   {} free", bytes(free));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_and_listeners() {
        assert_eq!(
            parse_url("http://127.0.0.1:9880/").unwrap(),
            "127.0.0.1:9880"
        );
        assert_eq!(parse_url("[::1]:9").unwrap(), "[::1]:9");
        assert!(parse_url("https://x:1").is_err());
        assert!(parse_url("http://x:1/api").is_err());

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "gateway: { metrics: { listen: \"0.0.0.0:9999\" } }\n").unwrap();
        assert_eq!(listener_of(&p).unwrap(), "127.0.0.1:9999");
        std::fs::write(&p, "devices: []\n").unwrap();
        assert_eq!(listener_of(&p).unwrap(), DEFAULT_LISTEN);
        std::fs::write(&p, "gateway: { metrics: { listen: \"\" } }\n").unwrap();
        assert!(listener_of(&p).unwrap_err().to_string().contains("off"));
        // A config the daemon would reject still names its listener.
        std::fs::write(
            &p,
            "gateway: { metrics: { listen: \"127.0.0.1:1234\" }, bogus: 1 }\n",
        )
        .unwrap();
        assert_eq!(listener_of(&p).unwrap(), "127.0.0.1:1234");
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(dechunk(b"5\r\nab"), None);
    }

    #[test]
    fn the_summary_names_what_is_wrong() {
        let status = json!({
            "version": "1.2.3", "namespace": "plant", "uptimeSeconds": 3725,
            "status": "degraded", "reasons": ["MQTT session s not connected"], "warnings": [],
            "clockSynchronized": true,
            "config": {"path": "/etc/fieldgate/config.yaml", "hash": "abcd", "loadedAt": "2026-01-01T00:00:00.000Z",
                "lastReload": {"result": "rolled_back", "at": "2026-01-01T00:01:00.000Z",
                    "errors": [{"text": "0 of 1 kept and changed devices online"}]}},
            "sessions": [{"id": "s", "server": "tcp://b:1883", "connected": false, "storeMessages": 12,
                "storeBytes": 2048, "storeOldestAgeSeconds": 3.5, "dropped": 0}],
            "stateDirectory": {"freeBytes": 1073741824u64},
        });
        let devices = json!({"devices": [
            {"name": "ok", "driver": "dummy", "status": "online", "errors": {}},
            {"name": "plc", "driver": "modbus", "status": "offline", "error": "connection refused", "errors": {}},
            {"name": "half", "driver": "modbus", "status": "online", "errors": {"t": "exception 2"}},
        ]});
        let out = render("127.0.0.1:9880", &status, &devices, false);
        assert!(out.contains("up 1h 02m"), "{out}");
        assert!(out.contains("status      degraded"), "{out}");
        assert!(
            out.contains("reason    MQTT session s not connected"),
            "{out}"
        );
        assert!(out.contains("last reload rolled_back"), "{out}");
        assert!(
            out.contains("0 of 1 kept and changed devices online"),
            "{out}"
        );
        assert!(
            out.contains("NOT CONNECTED  backlog 12 msgs (2.0 KiB, oldest 3.5 s)"),
            "{out}"
        );
        assert!(out.contains("3 total, 2 online, 1 not online"), "{out}");
        assert!(
            out.contains("plc") && out.contains("connection refused"),
            "{out}"
        );
        assert!(out.contains("[t: exception 2]"), "{out}");
        assert!(
            !out.contains("  ok "),
            "online devices without errors are only counted: {out}"
        );
        assert!(out.contains("state dir   1.0 GiB free"), "{out}");
        assert!(render("a", &status, &devices, true).contains("  ok "));
    }
}
