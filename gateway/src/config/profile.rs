//! Device profiles: `profile: NAME` on a device starts it from a profile's
//! keys (built-in, `/etc/fieldgate/profiles/NAME.yaml`, or a path relative
//! to the file naming it). The device's own keys win; mappings merge key by
//! key; its `properties` add to the profile's or replace them by name.
//! Profile nodes are tagged with the profile file, so errors inside it point
//! at the profile's line and column and name the device using it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ctx::Ctx;
use super::sources::{self, SourceFile, Sources};
use super::tree::{self, Kind, Node};
use super::ConfigError;

/// Where local profiles live (`$FIELDGATE_PROFILE_DIR` overrides it).
pub const LOCAL_DIR: &str = "/etc/fieldgate/profiles";

/// Largest profile file read.
pub const MAX_PROFILE_BYTES: u64 = 4 * 1024 * 1024;

/// A profile compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name used in `profile:`.
    pub name: &'static str,
    /// The YAML text (its leading comments name the vendor document).
    pub text: &'static str,
}

macro_rules! builtin {
    ($($name:literal),* $(,)?) => {
        &[$(Builtin {
            name: $name,
            text: include_str!(concat!("../../profiles/", $name, ".yaml")),
        }),*]
    };
}

/// The built-in profiles, by name: Modbus meters, inverter and transmitter,
/// and the BLE advertisement formats of the contract's §11.
pub const BUILTIN: &[Builtin] = builtin![
    "abb-b23",
    "bthome-v2",
    "eastron-sdm120",
    "eastron-sdm630",
    "lywsd03mmc-atc1441",
    "lywsd03mmc-pvvx",
    "ruuvi-tag",
    "sunspec-inverter-103",
    "xy-md02",
];

/// The local profile directory.
pub fn local_dir() -> PathBuf {
    std::env::var_os("FIELDGATE_PROFILE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(LOCAL_DIR))
}

/// The first comment line of a profile's text (its title).
pub fn title(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix('#'))
        .map(|l| l.trim().to_string())
        .unwrap_or_default()
}

/// One profile as found: its name, where it came from and its text.
#[derive(Debug, Clone)]
pub struct Found {
    /// The name (or path) as written.
    pub name: String,
    /// The label used in error lines: a path, or `builtin:NAME.yaml`.
    pub label: String,
    /// The file read, for local profiles (watched for reloads).
    pub path: Option<PathBuf>,
    /// The YAML text.
    pub text: String,
}

/// True when `name` is written as a path rather than a profile name.
fn is_path(name: &str) -> bool {
    name.contains('/') || name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Why a profile cannot be found or read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profile file cannot be read.
    #[error("cannot read profile {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The profile file is not UTF-8 text.
    #[error("profile {} is not UTF-8 text", .0.display())]
    NotUtf8(PathBuf),
    /// Neither a path nor a valid profile name.
    #[error("invalid profile name `{0}`: use a built-in or local profile name, or a path ending in .yaml")]
    InvalidName(String),
    /// No local or built-in profile has this name.
    #[error("unknown profile `{name}`{}; built-in profiles: {}; local profiles are {}/NAME.yaml; or give a path ending in .yaml (see `fieldgate profiles`)",
        .suggestion.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
        tree::list(.builtin),
        .local_dir.display())]
    Unknown {
        /// The name as written.
        name: String,
        /// The closest built-in name, if one is close.
        suggestion: Option<&'static str>,
        /// Every built-in profile name.
        builtin: Vec<&'static str>,
        /// Where local profiles are looked for.
        local_dir: PathBuf,
    },
}

/// Finds profile `name`: a path (relative to `dir`), else a local profile,
/// else a built-in one. A local profile of the same name as a built-in one
/// overrides it.
pub fn find(name: &str, dir: &Path) -> Result<Found, ProfileError> {
    let read = |path: &Path| -> Result<String, ProfileError> {
        super::read_limited(path, MAX_PROFILE_BYTES)
            .map_err(|source| ProfileError::Read {
                path: path.to_path_buf(),
                source,
            })
            .and_then(|b| {
                String::from_utf8(b).map_err(|_| ProfileError::NotUtf8(path.to_path_buf()))
            })
    };
    if is_path(name) {
        let path = if Path::new(name).is_absolute() || dir == Path::new(".") {
            PathBuf::from(name)
        } else {
            dir.join(name)
        };
        let text = read(&path)?;
        return Ok(Found {
            name: name.to_string(),
            label: path.display().to_string(),
            path: Some(path),
            text,
        });
    }
    if !super::names::is_valid_name(name) {
        return Err(ProfileError::InvalidName(name.to_owned()));
    }
    let local = local_dir().join(format!("{name}.yaml"));
    if local.is_file() {
        let text = read(&local)?;
        return Ok(Found {
            name: name.to_string(),
            label: local.display().to_string(),
            path: Some(local),
            text,
        });
    }
    match BUILTIN.iter().find(|b| b.name == name) {
        Some(b) => Ok(Found {
            name: name.to_string(),
            label: format!("builtin:{name}.yaml"),
            path: None,
            text: b.text.to_string(),
        }),
        None => {
            let builtin: Vec<&'static str> = BUILTIN.iter().map(|b| b.name).collect();
            Err(ProfileError::Unknown {
                name: name.to_owned(),
                suggestion: tree::did_you_mean(name, &builtin),
                builtin,
                local_dir: local_dir(),
            })
        }
    }
}

/// Every profile `fieldgate profiles` lists: (name, origin, title), local
/// profiles first (they override built-in ones of the same name).
pub fn list() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let dir = local_dir();
    let mut local: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    local.sort();
    for p in local {
        let Some(name) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        let text = super::read_limited(&p, MAX_PROFILE_BYTES)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        out.push((name, p.display().to_string(), title(&text)));
    }
    for b in BUILTIN {
        if !out.iter().any(|(n, _, _)| n == b.name) {
            out.push((b.name.to_string(), "built-in".into(), title(b.text)));
        }
    }
    out
}

/// A loaded profile: its tree (tagged) or `None` when it was invalid.
struct Loaded {
    name: String,
    label: String,
    root: Option<Node>,
}

/// Merges the profile of every device that names one into the device.
pub(crate) fn apply(
    ctx: &mut Ctx,
    devices: &mut Option<Node>,
    base_dir: &Path,
    sources: &mut Sources,
) -> Vec<(String, usize, usize)> {
    let Some(Node {
        kind: Kind::Seq(items),
        ..
    }) = devices
    else {
        return Vec::new();
    };
    // Each profile is read and parsed once, whatever the number of devices
    // using it: key (directory, name).
    let mut cache: HashMap<(PathBuf, String), Loaded> = HashMap::new();
    let mut per_file: HashMap<String, usize> = HashMap::new();
    // Devices whose profile could not be used: their missing keys (a driver
    // the profile would have given) are not reported on top of the
    // profile's own error.
    let mut failed: Vec<usize> = Vec::new();
    for (position, item) in items.iter_mut().enumerate() {
        let file = ctx.file_of(item).to_string();
        let index = {
            let n = per_file.entry(file.clone()).or_default();
            *n += 1;
            *n - 1
        };
        let Some((_, pv)) = item.entry(&["profile"]) else {
            continue;
        };
        let path = format!("devices[{index}].profile");
        let device_name = item.get("name").and_then(Node::text);
        ctx.device = device_name.clone();
        let name = match &pv.kind {
            Kind::Str(s) => s.to_string(),
            Kind::Null => continue,
            _ => {
                ctx.at(
                    pv,
                    &path,
                    format!("expected a profile name or path, found {}", pv.describe()),
                );
                failed.push(position);
                continue;
            }
        };
        // Relative to the file naming it.
        let dir = if file == ctx.file {
            base_dir.to_path_buf()
        } else {
            Path::new(&file)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        };
        let key = (dir.clone(), name.clone());
        if !cache.contains_key(&key) {
            let loaded = match find(&name, &dir) {
                Ok(found) => {
                    if let Some(p) = &found.path {
                        if !sources.files.contains(p) {
                            sources.files.push(p.clone());
                        }
                    }
                    load_profile(
                        ctx,
                        &found,
                        device_name.as_deref(),
                        &format!("devices[{index}]"),
                    )
                }
                Err(e) => {
                    ctx.at(pv, &path, e);
                    Loaded {
                        name: name.clone(),
                        label: String::new(),
                        root: None,
                    }
                }
            };
            cache.insert(key.clone(), loaded);
        }
        let Some(loaded) = cache.get(&key) else {
            continue;
        };
        let Some(profile) = &loaded.root else {
            failed.push(position);
            continue;
        };
        if let Some(d) = &device_name {
            sources
                .profiles
                .push((d.clone(), loaded.name.clone(), loaded.label.clone()));
        }
        *item = merge(profile, item);
    }
    ctx.device = None;
    failed
        .into_iter()
        .filter_map(|i| items.get(i))
        .map(|n| {
            let (_, line) = sources::split(n.line as usize);
            (ctx.file_of(n).to_string(), line, n.column as usize)
        })
        .collect()
}

/// Drops the "missing required key" errors of devices whose profile could
/// not be used (`failed`, from [`apply`]): the keys were to come from the
/// profile, whose own error is reported.
pub(crate) fn drop_consequential(errors: &mut Vec<ConfigError>, failed: &[(String, usize, usize)]) {
    errors.retain(|e| {
        !(e.message.starts_with("missing required key")
            && failed
                .iter()
                .any(|(f, l, c)| *f == e.file && *l == e.line && *c == e.column))
    });
}

/// Parses and checks one profile file, tagging its nodes.
fn load_profile(ctx: &mut Ctx, found: &Found, device: Option<&str>, device_path: &str) -> Loaded {
    let note = match device {
        Some(d) => format!(" (in profile `{}`, used by device `{d}`)", found.name),
        None => format!(" (in profile `{}`)", found.name),
    };
    let invalid = Loaded {
        name: found.name.clone(),
        label: found.label.clone(),
        root: None,
    };
    let mut root = match tree::parse(&found.text) {
        Ok(n) => n,
        Err(e) => {
            ctx.errors.push(ConfigError {
                file: found.label.clone(),
                line: e.line.max(1),
                column: e.column.max(1),
                key_path: super::ctx::enclosing_path(&found.text, e.line, e.column),
                message: format!("YAML syntax error: {}{note}", e.message),
            });
            return invalid;
        }
    };
    if ctx.files.len() >= sources::MAX_FILES {
        ctx.errors.push(ConfigError {
            file: found.label.clone(),
            line: 1,
            column: 1,
            key_path: String::new(),
            message: format!("too many included and profile files{note}"),
        });
        return invalid;
    }
    ctx.files.push(SourceFile {
        label: found.label.clone(),
        profile: Some(found.name.clone()),
    });
    if !sources::tag(&mut root, ctx.files.len()) {
        ctx.errors.push(ConfigError {
            file: found.label.clone(),
            line: 1,
            column: 1,
            key_path: String::new(),
            message: format!(
                "a profile may have at most {} lines{note}",
                sources::MAX_TAGGED_LINE
            ),
        });
        return invalid;
    }
    let Some(entries) = root.entries() else {
        if root.is_null() {
            // An empty profile adds nothing.
            return Loaded {
                root: Some(Node::synthetic(Kind::Map(Box::new([])))),
                ..invalid
            };
        }
        ctx.at(
            &root,
            device_path,
            format!(
                "a profile must be a mapping of device keys (driver, protocol, properties, …), found {}",
                root.describe()
            ),
        );
        return invalid;
    };
    let mut ok = true;
    for (k, _) in entries.iter() {
        if k.is_text("name") {
            ctx.at(
                k,
                &tree::join(device_path, "name"),
                "a profile must not set `name`: every device names itself",
            );
            ok = false;
        } else if k.is_text("profile") {
            ctx.at(
                k,
                &tree::join(device_path, "profile"),
                "profiles do not nest: a profile cannot name another profile",
            );
            ok = false;
        }
    }
    Loaded {
        root: ok.then_some(root),
        ..invalid
    }
}

/// `device` over `profile`: the device's keys win; mappings merge key by key;
/// `properties` lists merge by property name.
pub fn merge(profile: &Node, device: &Node) -> Node {
    let (Some(pe), Some(de)) = (profile.entries(), device.entries()) else {
        return device.clone();
    };
    let mut out: Vec<(Node, Node)> = pe.to_vec();
    for (k, v) in de.iter() {
        match out.iter_mut().find(|(ok, _)| key_eq(ok, k)) {
            Some(slot) => {
                let merged = if k.is_text("properties") {
                    merge_properties(&slot.1, v)
                } else if slot.1.entries().is_some() && v.entries().is_some() {
                    merge(&slot.1, v)
                } else {
                    v.clone()
                };
                *slot = (k.clone(), merged);
            }
            None => out.push((k.clone(), v.clone())),
        }
    }
    Node {
        line: device.line,
        column: device.column,
        kind: Kind::Map(out.into_boxed_slice()),
    }
}

fn key_eq(a: &Node, b: &Node) -> bool {
    match (a.text(), b.text()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The profile's properties with the device's replacing those of the same
/// name (in place) and the others appended.
fn merge_properties(profile: &Node, device: &Node) -> Node {
    let (Some(pi), Some(di)) = (profile.items(), device.items()) else {
        return if device.is_null() {
            profile.clone()
        } else {
            device.clone()
        };
    };
    let name = |n: &Node| n.get("name").and_then(Node::text);
    let mut out: Vec<Node> = pi.to_vec();
    for d in di.iter() {
        match name(d).and_then(|dn| out.iter().position(|p| name(p).as_deref() == Some(&dn))) {
            Some(i) => out[i] = d.clone(),
            None => out.push(d.clone()),
        }
    }
    Node {
        line: device.line,
        column: device.column,
        kind: Kind::Seq(out.into_boxed_slice()),
    }
}
