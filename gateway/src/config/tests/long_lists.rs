//! A long `devices:` list, parsed in parts when the file is large: the same
//! devices in the same order, shared sessions numbered as they first
//! appear, and every error in its place, as for a short list.

use super::{errs, ok};

/// `n` dummy devices; device `i`'s lines are `extra(i)` after its first.
fn list(n: usize, extra: impl Fn(usize) -> String) -> String {
    let mut y = String::from("gateway: { namespace: plant }\ndevices:\n");
    for i in 0..n {
        y.push_str(&format!(
            "  - name: dev-{i:04}\n    driver: dummy\n    model: fan\n{}",
            extra(i)
        ));
    }
    y
}

/// Two simulated properties, on one line.
const PROPERTIES: &str = "properties: [{ name: speed, type: uint32, simulate: { counter: { start: 0, step: 1 } } }, { name: t, type: float64, simulate: { sine: { min: 0, max: 1, period: 60s } } }]";

/// The 1-based line of the `nth` (0-based) line of `text` that contains
/// `needle`.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    let (n, _) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .unwrap();
    n + 1
}

#[test]
fn a_long_list_resolves_in_order() {
    // Every 97th device has a session of its own.
    let own = |i: usize| i % 97 == 3;
    let y = list(3500, |i| {
        if own(i) {
            format!("    mqtt: {{ client: {{ clientId: own-{i} }} }}\n")
        } else {
            String::new()
        }
    });
    // Also large enough to be parsed in two parts.
    let y = y.replace("model: fan", PROPERTIES);
    assert!(y.len() > 2 * 256 * 1024, "{}", y.len());
    let r = ok(&y);
    let names: Vec<String> = (0..3500).map(|i| format!("dev-{i:04}")).collect();
    assert_eq!(
        r.devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
        names
    );
    let mut next = 1;
    for (i, d) in r.devices.iter().enumerate() {
        assert_eq!(d.properties.len(), 2);
        if own(i) {
            assert_eq!(d.session, next, "{}", d.name);
            assert_eq!(r.sessions[next].client_id, format!("own-{i}"));
            next += 1;
        } else {
            assert_eq!(d.session, 0, "{}", d.name);
        }
    }
    assert_eq!(r.sessions.len(), next);
}

#[test]
fn errors_anywhere_in_a_long_list_are_all_reported_in_place() {
    // Large enough to be parsed in two parts on two cores: errors in both.
    let y = list(3500, |i| match i {
        130 => "    syncInterval: 0s\n".into(),
        420 => "    properties: [{ name: p, type: uint99 }]\n".into(),
        2610 => "    mqtt: { message: { topic: { name: fieldgate/plant/dev-0007 } } }\n".into(),
        3499 => "    timeout: 0s\n".into(),
        _ => String::new(),
    })
    .replace("name: dev-2450", "name: dev-0005")
    .replace("model: fan", PROPERTIES);
    assert!(y.len() > 2 * 256 * 1024, "{}", y.len());
    let e = errs(&y);
    let at = |needle: &str, col: usize| format!("c.yaml:{}:{col}: ", line_of(&y, needle, 0));
    assert_eq!(
        e,
        vec![
            format!("{}devices[130].syncInterval: syncInterval must be greater than 0s", at("syncInterval: 0s", 19)),
            format!("{}devices[420].properties[0].type: unknown value `uint99` (did you mean `uint8`?); allowed: `bool`, `int8`, `int16`, `int32`, `int64`, `uint8`, `uint16`, `uint32`, `uint64`, `float32`, `float64`, `string`, `bytes`", at("uint99", 35)),
            format!("{}devices[2450].name: duplicate device name `dev-0005`: already used by devices[5]; device names must be unique", format!("c.yaml:{}:11: ", line_of(&y, "name: dev-0005", 1))),
            format!("{}devices[2610].mqtt.message.topic.name: topic `fieldgate/plant/dev-0007` is already used by device `dev-0007`; every device needs its own topic", at("topic: { name:", 39)),
            format!("{}devices[3499].timeout: timeout must be greater than 0s", at("timeout: 0s", 14)),
        ]
    );
}
