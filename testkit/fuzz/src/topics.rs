//! `topics`: arbitrary namespaces, prefixes, device names, static topic
//! names, client ids and will topics → a config → the topics the gateway
//! builds from them. Whatever validation says, either the config is
//! refused or every topic is safe: no `+`, `#` or NUL, no leading `/` or
//! `$`, no empty level, within MQTT's 65 535 bytes with every suffix the
//! gateway appends, a device's topic is exactly the documented
//! `<prefix>/<namespace>/<device>` (`nn`, both one level), `<prefix>/<uid>`
//! or its static name, and no topic the gateway publishes is one it
//! listens to for commands.

use std::collections::{HashMap, HashSet};

use fieldgate::config::resolved::StoreSettings;
use fieldgate::config::Resolved;

use super::config;
use super::input::Input;

/// MQTT's topic length limit (a UTF-8 string with a 16-bit length).
pub const MQTT_MAX: usize = 65_535;
/// Longest file name (Linux NAME_MAX).
const NAME_MAX: usize = 255;
/// What the gateway appends to a device topic T.
const DEVICE_OUT: [&str; 4] = ["", "/$set/result", "/$state", "/$meta"];
/// The command topics the gateway subscribes to.
const DEVICE_IN: [&str; 2] = ["/$set", "/$get"];

/// The topic rules, checked independently of the loader's own check.
fn assert_safe(t: &str, what: &str) {
    assert!(!t.is_empty(), "{what}: empty topic");
    assert!(
        !t.contains(['+', '#', '\0']),
        "{what}: wildcard or NUL in {t:?}"
    );
    assert!(
        !t.starts_with('/') && !t.starts_with('$'),
        "{what}: {t:?} starts with `/` or `$`"
    );
    assert!(
        !t.split('/').any(str::is_empty),
        "{what}: empty level in {t:?}"
    );
    assert!(
        t.len() <= MQTT_MAX,
        "{what}: {} bytes, more than MQTT allows",
        t.len()
    );
}

/// Checks every topic, client id and store directory of a resolved config.
pub fn check_resolved(r: &Resolved) {
    let g = &r.gateway_topic;
    assert_safe(g, "gateway topic G");
    assert_safe(&format!("{g}/$will"), "G/$will");
    let mut incoming: HashMap<String, &str> = HashMap::new();
    let mut outgoing: HashMap<String, &str> = HashMap::new();
    for d in &r.devices {
        let t = &d.message.topic;
        for suffix in DEVICE_OUT.iter().chain(&DEVICE_IN) {
            assert_safe(&format!("{t}{suffix}"), &format!("device {}", d.name));
        }
        for suffix in DEVICE_IN {
            incoming.insert(format!("{t}{suffix}"), &d.name);
        }
        for suffix in DEVICE_OUT {
            let topic = format!("{t}{suffix}");
            if let Some(other) = outgoing.insert(topic.clone(), &d.name) {
                panic!("devices {other} and {} both publish to {topic:?}", d.name);
            }
        }
    }
    for s in &r.sessions {
        assert_safe(&s.will.topic, &format!("will of session {}", s.client_id));
        assert!(
            !s.client_id.is_empty() && s.client_id.len() <= MQTT_MAX && !s.client_id.contains('\0'),
            "unusable client id ({} bytes)",
            s.client_id.len()
        );
        if let StoreSettings::File { directory, .. } = &s.store {
            for c in directory.components() {
                assert!(
                    c.as_os_str().len() <= NAME_MAX,
                    "store directory of {} has a {}-byte component",
                    s.client_id,
                    c.as_os_str().len()
                );
            }
        }
    }
    // Publishing to a command topic would feed the gateway's own messages
    // back to a device as commands.
    let wills = r.sessions.iter().map(|s| (s.will.topic.clone(), "a will"));
    let gw_will = std::iter::once((format!("{g}/$will"), "the gateway will"));
    for (topic, by) in outgoing
        .iter()
        .map(|(t, d)| (t.clone(), *d))
        .chain(wills)
        .chain(gw_will)
    {
        if let Some(d) = incoming.get(&topic) {
            panic!("{by} publishes to {topic:?}, a command topic of device {d}");
        }
    }
}

/// Pieces strings are made of: separators, wildcards, reserved characters,
/// the suffixes the gateway uses, line breaks, multi-byte characters.
const PIECES: &[&str] = &[
    "a",
    "Z9",
    "fieldgate",
    "/",
    "+",
    "#",
    "\0",
    "$",
    "$set",
    "$get",
    "$will",
    "$state",
    "$meta",
    "result",
    ".",
    "..",
    "-",
    "_",
    " ",
    "\n",
    "\r",
    "\t",
    "é",
    "\u{2028}",
    "\u{feff}",
    "\u{85}",
    "\u{7f}",
    "//",
    "default",
    "dev",
    "\\",
    "\"",
    "'",
    ":",
    "{",
    "[",
    "*",
    "~",
    "%2F",
    "\u{ff0f}",
];

/// A string from pieces and raw bytes; a piece may repeat up to 65 535
/// times so that lengths around the protocol limits are reachable.
fn string(input: &mut Input<'_>) -> String {
    let parts = 1 + input.u8() % 4;
    let mut s = String::new();
    for _ in 0..parts {
        let b = input.u8();
        let piece = if b < 200 {
            PIECES[usize::from(b) % PIECES.len()].to_string()
        } else {
            input.string()
        };
        let r = input.u8();
        let times = if r & 0x80 != 0 {
            usize::from(input.u16())
        } else {
            usize::from(r % 3) + 1
        };
        if s.len() + piece.len() * times > 200_000 {
            break;
        }
        s.push_str(&piece.repeat(times));
    }
    s
}

/// A YAML double-quoted scalar holding exactly `s`.
pub fn yaml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// One generated device.
struct Device {
    name: String,
    own_topic: Option<String>,
    prefix: Option<String>,
    with: Option<&'static str>,
    client_id: Option<String>,
    own_session: bool,
    will: Option<String>,
    property: String,
}

/// What the config says, to predict the topics.
struct Spec {
    namespace: Option<String>,
    prefix: Option<String>,
    with: Option<&'static str>,
    will: Option<String>,
    file_store: bool,
    devices: Vec<Device>,
}

fn opt(input: &mut Input<'_>) -> Option<String> {
    input.bool().then(|| string(input))
}

fn spec(input: &mut Input<'_>) -> Spec {
    let withs = [None, Some("nn"), Some("uid")];
    let namespace = opt(input);
    let prefix = opt(input);
    let with = input.pick(&withs);
    let will = opt(input);
    let file_store = input.bool();
    let n = 1 + input.u8() % 3;
    let devices = (0..n)
        .map(|_| Device {
            name: string(input),
            own_topic: opt(input),
            prefix: opt(input),
            with: input.pick(&withs),
            client_id: opt(input),
            own_session: input.bool(),
            will: opt(input),
            property: if input.bool() {
                string(input)
            } else {
                "value".into()
            },
        })
        .collect();
    Spec {
        namespace,
        prefix,
        with,
        will,
        file_store,
        devices,
    }
}

/// The config text for `spec`.
fn render(spec: &Spec) -> String {
    let mut y = String::from("gateway:\n  stateDirectory: /tmp/fieldgate-fuzz-state\n");
    if let Some(ns) = &spec.namespace {
        y.push_str(&format!("  namespace: {}\n", yaml_str(ns)));
    }
    y.push_str("mqtt:\n  client:\n    server: tcp://127.0.0.1:1883\n");
    if let Some(w) = &spec.will {
        y.push_str(&format!("    will: {{ topic: {} }}\n", yaml_str(w)));
    }
    if spec.file_store {
        y.push_str("    store: { type: file }\n");
    }
    y.push_str("  message:\n    topic: {");
    if let Some(p) = &spec.prefix {
        y.push_str(&format!(" prefix: {},", yaml_str(p)));
    }
    if let Some(w) = spec.with {
        y.push_str(&format!(" with: {w}"));
    }
    y.push_str(" }\ndevices:\n");
    for d in &spec.devices {
        y.push_str(&format!(
            "  - name: {}\n    driver: dummy\n    properties:\n      - {{ name: {}, type: int32, simulate: {{ constant: 1 }} }}\n    mqtt:\n      message:\n        topic: {{",
            yaml_str(&d.name),
            yaml_str(&d.property)
        ));
        if let Some(t) = &d.own_topic {
            y.push_str(&format!(" name: {},", yaml_str(t)));
        }
        if let Some(p) = &d.prefix {
            y.push_str(&format!(" prefix: {},", yaml_str(p)));
        }
        if let Some(w) = d.with {
            y.push_str(&format!(" with: {w}"));
        }
        y.push_str(" }\n");
        if d.own_session || d.client_id.is_some() || d.will.is_some() {
            y.push_str("      client:\n");
            if d.own_session {
                // Differs from the top level: a session of its own.
                y.push_str("        keepAlive: 31s\n");
            }
            if let Some(c) = &d.client_id {
                y.push_str(&format!("        clientId: {}\n", yaml_str(c)));
            }
            if let Some(w) = &d.will {
                y.push_str(&format!("        will: {{ topic: {} }}\n", yaml_str(w)));
            }
        }
    }
    y
}

/// The fuzz entry point.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let spec = spec(&mut input);
    let text = render(&spec);
    let Ok(resolved) = config::check_text(&text) else {
        return;
    };
    check_against_spec(&spec, &resolved);
}

/// The accepted config's topics are the documented ones.
fn check_against_spec(spec: &Spec, r: &Resolved) {
    let ns = spec.namespace.clone().unwrap_or_else(|| "default".into());
    assert_eq!(r.gateway.namespace, ns);
    let top_prefix = spec.prefix.clone().unwrap_or_else(|| "fieldgate".into());
    assert_eq!(r.gateway_topic, format!("{top_prefix}/{ns}"));
    assert!(!ns.contains('/'), "namespace {ns:?} spans levels");
    let mut names = HashSet::new();
    for (d, settings) in spec.devices.iter().zip(&r.devices) {
        assert_eq!(settings.name, d.name);
        assert!(names.insert(&d.name), "duplicate device {:?}", d.name);
        let t = &settings.message.topic;
        match d.own_topic.as_deref().filter(|t| !t.is_empty()) {
            Some(own) => assert_eq!(t, own),
            None => {
                let prefix = d.prefix.as_ref().unwrap_or(&top_prefix);
                let levels = prefix.split('/').count();
                let with = d.with.or(spec.with).unwrap_or("nn");
                if with == "nn" {
                    assert_eq!(*t, format!("{prefix}/{ns}/{}", d.name));
                    assert!(
                        !d.name.contains('/'),
                        "device name {:?} spans levels",
                        d.name
                    );
                    assert_eq!(t.split('/').count(), levels + 2, "{t:?}");
                } else {
                    let uid = fieldgate::config::load::device_uid(&ns, &d.name);
                    assert_eq!(*t, format!("{prefix}/{uid}"));
                    assert_eq!(t.split('/').count(), levels + 1, "{t:?}");
                }
            }
        }
    }
    assert_eq!(r.devices.len(), spec.devices.len());
}
