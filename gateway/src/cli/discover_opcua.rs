//! `fieldgate discover opcua ENDPOINT [--root NODE] [--depth N] [security
//! options]`: browses the server and prints a ready device YAML, one
//! property per variable (name from the browse path, type from the data
//! type, `writable` from the access level), with comments for what it
//! skipped and why. Read-only: only Browse and Read are sent.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use fieldgate_drivers::opcua::browse::{self, Discovery, FoundKind};
use fieldgate_drivers::opcua::{Identity, Mode, OpcUaConnection, Policy, SecurityMode};

/// Options of `fieldgate discover opcua` (its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// opc.tcp://HOST:PORT[/PATH]
    pub endpoint: String,
    /// NodeId to start from (default: the Objects folder).
    #[arg(long, default_value = "i=85")]
    pub root: String,
    /// Levels below the root to browse.
    #[arg(long, default_value_t = 5)]
    pub depth: usize,
    /// Device name in the printed YAML (default: opcua-<host>).
    #[arg(long)]
    pub name: Option<String>,
    /// None | Basic256Sha256 | Aes128Sha256RsaOaep | Aes256Sha256RsaPss
    #[arg(long, default_value = "None")]
    pub security_policy: String,
    /// None | Sign | SignAndEncrypt
    #[arg(long, default_value = "None")]
    pub security_mode: String,
    /// User name (with --password-file).
    #[arg(long)]
    pub username: Option<String>,
    /// File whose first line is the password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Client certificate (DER or PEM).
    #[arg(long)]
    pub certificate: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long)]
    pub private_key: Option<PathBuf>,
    /// Directory of trusted server certificates.
    #[arg(long, default_value = "/etc/fieldgate/pki/trusted")]
    pub trusted_server_certificates: PathBuf,
    /// Where a generated client certificate is kept (the daemon's `<stateDirectory>/opcua`).
    #[arg(long, default_value = "/var/lib/fieldgate/opcua")]
    pub state_directory: PathBuf,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why a variable's data type has no fieldgate type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnmappedType {
    /// The server did not give the data type.
    #[error("its data type could not be read")]
    Unread,
    /// A structure, enumeration or other non-built-in type.
    #[error("data type {0} is a structure, enumeration or other type fieldgate does not map")]
    Unsupported(String),
}

/// The fieldgate type of an OPC-UA built-in data type NodeId, or why not.
pub fn type_of(data_type: &str) -> Result<&'static str, UnmappedType> {
    Ok(match data_type {
        "i=1" => "bool",
        "i=2" => "int8",
        "i=3" => "uint8",
        "i=4" => "int16",
        "i=5" => "uint16",
        "i=6" => "int32",
        "i=7" => "uint32",
        "i=8" => "int64",
        "i=9" => "uint64",
        "i=10" => "float32",
        "i=11" => "float64",
        "i=12" => "string",
        "i=13" => "string", // DateTime, published as RFC 3339 text
        "i=15" => "bytes",
        "i=21" => "string",  // LocalizedText: its text
        "i=26" => "float64", // Number
        "i=27" => "int64",   // Integer
        "i=28" => "uint64",  // UInteger
        "" => return Err(UnmappedType::Unread),
        other => return Err(UnmappedType::Unsupported(other.to_owned())),
    })
}

/// A property name from a browse path: the names joined by `.`, characters
/// outside `[A-Za-z0-9_.-]` as `_`, starting with a letter or digit.
pub fn sanitize(path: &[String]) -> String {
    let joined = path.join(".");
    let mut s: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        s.insert(0, 'v');
    }
    s
}

/// `s` unique among `used` (a `_2`, `_3`, … suffix when taken).
fn unique(s: String, used: &mut HashSet<String>) -> String {
    if used.insert(s.clone()) {
        return s;
    }
    let mut n = 2;
    loop {
        let c = format!("{s}_{n}");
        if used.insert(c.clone()) {
            return c;
        }
        n += 1;
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// A device name from the endpoint's host.
fn default_name(endpoint: &str) -> String {
    let host = endpoint
        .trim_start_matches("opc.tcp://")
        .split(['/', ':'])
        .next()
        .unwrap_or("server");
    sanitize(&[format!("opcua-{host}")]).replace('.', "-")
}

/// The device YAML for a discovery.
pub fn yaml(o: &Options, d: &Discovery) -> String {
    let mut out = String::new();
    let vars = d
        .nodes
        .iter()
        .filter(|n| matches!(n.kind, FoundKind::Variable { .. }))
        .count();
    let _ = writeln!(
        out,
        "# Written by `fieldgate discover opcua {} --root {} --depth {}`: {vars} variables found.",
        o.endpoint, o.root, o.depth
    );
    if d.truncated {
        let _ = writeln!(
            out,
            "# The walk stopped at {} nodes: narrow it with --root or --depth.",
            browse::MAX_NODES
        );
    }
    let _ = writeln!(out, "devices:");
    let name = o.name.clone().unwrap_or_else(|| default_name(&o.endpoint));
    let _ = writeln!(out, "  - name: {}", quote(&name));
    let _ = writeln!(out, "    driver: opcua");
    let _ = writeln!(out, "    protocol:");
    let _ = writeln!(out, "      endpoint: {}", quote(&o.endpoint));
    let _ = writeln!(out, "      securityPolicy: {}", o.security_policy);
    let _ = writeln!(out, "      securityMode: {}", o.security_mode);
    if let Some(u) = &o.username {
        let _ = writeln!(out, "      username: {}", quote(u));
    }
    if let Some(p) = &o.password_file {
        let _ = writeln!(
            out,
            "      passwordFile: {}",
            quote(&p.display().to_string())
        );
    }
    if let (Some(c), Some(k)) = (&o.certificate, &o.private_key) {
        let _ = writeln!(
            out,
            "      certificate: {}",
            quote(&c.display().to_string())
        );
        let _ = writeln!(out, "      privateKey: {}", quote(&k.display().to_string()));
    }
    if o.security_policy != "None" {
        let _ = writeln!(
            out,
            "      trustedServerCertificates: {}",
            quote(&o.trusted_server_certificates.display().to_string())
        );
    }
    let _ = writeln!(out, "    properties:");
    let mut used = HashSet::new();
    let mut any = false;
    // In path order: a folder's nodes together, whatever order the server
    // answered in.
    let mut nodes: Vec<&browse::FoundNode> = d.nodes.iter().collect();
    nodes.sort_by(|a, b| a.path.cmp(&b.path));
    for n in nodes {
        let shown = n.path.join("/");
        match &n.kind {
            FoundKind::Method => {
                let _ = writeln!(
                    out,
                    "      # skipped {shown} ({}): a method (discover never calls methods)",
                    n.node_id
                );
            }
            FoundKind::Variable {
                data_type,
                value_rank,
                access_level,
            } => {
                if *value_rank != -1 {
                    let _ = writeln!(
                        out,
                        "      # skipped {shown} ({}): an array or matrix (value rank {value_rank})",
                        n.node_id
                    );
                    continue;
                }
                if access_level & 1 == 0 {
                    let _ = writeln!(
                        out,
                        "      # skipped {shown} ({}): not readable by this user",
                        n.node_id
                    );
                    continue;
                }
                match type_of(data_type) {
                    Err(why) => {
                        let _ = writeln!(out, "      # skipped {shown} ({}): {why}", n.node_id);
                    }
                    Ok(t) => {
                        any = true;
                        let pname = unique(sanitize(&n.path), &mut used);
                        let writable = access_level & 2 != 0;
                        let _ = writeln!(
                            out,
                            "      - {{ name: {}, nodeId: {}, type: {t}{} }}",
                            quote(&pname),
                            quote(&n.node_id),
                            if writable { ", writable: true" } else { "" }
                        );
                    }
                }
            }
        }
    }
    if !any {
        let _ = writeln!(out, "      []   # no variable of a mapped type found");
    }
    out
}

/// Runs the discovery; the exit code.
pub fn run(o: Options) -> i32 {
    let policy = match Policy::parse(&o.security_policy) {
        Some(p) => p,
        None => {
            eprintln!(
                "fieldgate discover opcua: unknown security policy `{}`; allowed: None, Basic256Sha256, Aes128Sha256RsaOaep, Aes256Sha256RsaPss",
                o.security_policy
            );
            return 2;
        }
    };
    let mode = match SecurityMode::parse(&o.security_mode) {
        Some(m) => m,
        None => {
            eprintln!(
                "fieldgate discover opcua: unknown security mode `{}`; allowed: None, Sign, SignAndEncrypt",
                o.security_mode
            );
            return 2;
        }
    };
    let identity = match (&o.username, &o.password_file) {
        (Some(user), Some(pf)) => {
            match crate::config::load::read_password_file(
                std::path::Path::new("."),
                &pf.display().to_string(),
            ) {
                Ok(password) => Identity::UserName {
                    user: user.clone(),
                    password,
                },
                Err(e) => {
                    eprintln!("fieldgate discover opcua: {e}");
                    return 2;
                }
            }
        }
        (Some(_), None) => {
            eprintln!("fieldgate discover opcua: --username needs --password-file");
            return 2;
        }
        _ => Identity::Anonymous,
    };
    let certificate = match (&o.certificate, &o.private_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            eprintln!("fieldgate discover opcua: --certificate and --private-key go together");
            return 2;
        }
    };
    let conn = OpcUaConnection {
        endpoint: o.endpoint.clone(),
        policy,
        security_mode: mode,
        identity,
        certificate,
        trusted_dir: o.trusted_server_certificates.clone(),
        state_dir: o.state_directory.clone(),
        mode: Mode::Poll,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fieldgate discover opcua: {e}");
            return 1;
        }
    };
    match rt.block_on(browse::discover(&conn, &o.root, o.depth, o.timeout)) {
        Ok(d) => {
            print!("{}", yaml(&o, &d));
            0
        }
        Err(e) => {
            eprintln!("fieldgate discover opcua: {}: {e}", o.endpoint);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_and_unique() {
        let mut used = HashSet::new();
        let a = unique(
            sanitize(&["Line 1".into(), "Speed (rpm)".into()]),
            &mut used,
        );
        assert_eq!(a, "Line_1.Speed__rpm_");
        let b = unique(
            sanitize(&["Line 1".into(), "Speed (rpm)".into()]),
            &mut used,
        );
        assert_eq!(b, "Line_1.Speed__rpm__2");
        assert_eq!(sanitize(&["$x".into()]), "v_x");
        assert_eq!(type_of("i=11").unwrap(), "float64");
        assert!(type_of("i=884").is_err());
    }
}
