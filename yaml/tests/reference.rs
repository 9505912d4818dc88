//! The new parser against the reference: serde-saphyr's `Spanned`, the way
//! fieldgate read configs before (trees and positions must match).

use fieldgate_yaml::{parse, Kind, Node};
use serde::de::{self, Deserialize, Visitor};
use std::fmt;

/// The reference: the same tree through serde-saphyr's `Spanned`, the
/// way fieldgate read configs before this module.
struct RefNode(Node);

impl<'de> Deserialize<'de> for RefNode {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<RefKind>::deserialize(d)?;
        Ok(RefNode(Node {
            line: u32::try_from(s.referenced.line().max(1)).unwrap_or(u32::MAX),
            column: u32::try_from(s.referenced.column().max(1)).unwrap_or(u32::MAX),
            kind: s.value.0,
        }))
    }
}

struct RefKind(Kind);

impl<'de> Deserialize<'de> for RefKind {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_none<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
                RefKind::deserialize(d).map(|k| k.0)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Kind, E> {
                Ok(Kind::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Kind, E> {
                Ok(Kind::Int(i128::from(v).into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Kind, E> {
                Ok(Kind::Int(i128::from(v).into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Kind, E> {
                Ok(Kind::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Kind, E> {
                Ok(Kind::Str(v.into()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = a.next_element::<RefNode>()? {
                    v.push(n.0);
                }
                Ok(Kind::Seq(v.into_boxed_slice()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                let mut v: Vec<(Node, Node)> = Vec::new();
                while let Some((k, val)) = a.next_entry::<RefNode, RefNode>()? {
                    v.push((k.0, val.0));
                }
                Ok(Kind::Map(v.into_boxed_slice()))
            }
        }
        d.deserialize_any(V).map(RefKind)
    }
}

fn reference(text: &str) -> Result<Node, String> {
    let opts = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
        strict_booleans: true,
    };
    match serde_saphyr::from_str_with_options::<Option<RefNode>>(text, opts) {
        Ok(Some(n)) => Ok(n.0),
        Ok(None) => Ok(Node::synthetic(Kind::Null)),
        Err(e) => Err(e.to_string()),
    }
}

/// Both parsers agree on `text`: the same tree, positions included, or
/// both refuse it. True when it was read.
fn agree(text: &str) -> bool {
    let ours = parse(text);
    let theirs = reference(text);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "for:\n{text}"),
        (Err(_), Err(_)) => {}
        _ => panic!("for:\n{text}\nours: {ours:?}\nreference: {theirs:?}"),
    }
    ours.is_ok()
}

const SCALARS: &[&str] = &[
    "plain",
    "'quoted'",
    "\"dq \\u00e9\"",
    "\"\"",
    "''",
    "~",
    "null",
    "Null",
    "NULL",
    "true",
    "True",
    "FALSE",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "0",
    "-0",
    "+7",
    "42",
    "-42",
    "0127",
    "-0127",
    "0x1F",
    "0X1f",
    "-0x10",
    "0o17",
    "0b101",
    "1_000",
    "1__0",
    "_1",
    "1_",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1.5",
    "-1.5",
    ".5",
    "1.",
    "1e3",
    "1E-3",
    "+1.5e+2",
    "1_000.5",
    "inf",
    "nan",
    "Infinity",
    "0x",
    "0xZZ",
    "12:30",
    "2026-12-06",
    "60s",
    "1.2.3",
    "- x",
    "!!str 42",
    "!!int \"42\"",
    "!!float 1",
    "!!bool true",
    "!!null ''",
    "! 42",
    "!custom 42",
    "\"line\\nbreak\"",
    "|\n    literal\n    text\n",
    ">\n    folded\n    text\n",
    "a b c",
    "é",
    "'it''s'",
];

#[test]
fn every_kind_of_scalar_reads_as_before() {
    for s in SCALARS {
        assert!(agree(&format!("key: {s}\n")) || s.starts_with('-'), "{s}");
        agree(&format!("- {s}\n"));
        if !s.contains('\n') && !s.starts_with('-') {
            agree(&format!("{{ a: {s}, b: [ {s} ] }}\n"));
        }
    }
}

#[test]
fn structures_read_as_before() {
    for text in [
        "a: 1\nb:\n  - x\n  - {c: true}\n",
        "devices:\n  - name: fan\n    driver: dummy\n    properties:\n      - { name: p, type: uint32 }\n",
        "a:\n  b:\n    c: [1, 2, {d: e}]\n  f: []\n  g: {}\n",
        "- - a\n  - b\n- - c\n",
        "? complex\n: value\n",
        "a: &x 1\nb: *x\n",
        "# only a comment\n",
        "---\na: 1\n...\n",
        "a:\nb:\n",
        "'quoted key': 1\n\"dq\": 2\n1: int key\ntrue: bool key\n",
        "x: |\n  multi\n  line\n",
        "  indented: 1\n  again: 2\n",
    ] {
        assert!(agree(text), "{text}");
    }
}

#[test]
fn random_documents_read_as_before() {
    // A small deterministic generator (xorshift): nested mappings, lists
    // and flow collections holding the tricky scalars.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let flat: Vec<&str> = SCALARS
        .iter()
        .copied()
        .filter(|s| !s.contains('\n') && !s.starts_with('-') && !s.starts_with('!'))
        .collect();
    let mut read = 0;
    for _ in 0..300 {
        let mut text = String::new();
        for k in 0..1 + next(4) {
            match next(3) {
                0 => text.push_str(&format!("k{k}: {}\n", flat[next(flat.len())])),
                1 => {
                    text.push_str(&format!("k{k}:\n"));
                    for _ in 0..1 + next(3) {
                        text.push_str(&format!(
                            "  - {{ n: {}, m: [{}, {}] }}\n",
                            flat[next(flat.len())],
                            flat[next(flat.len())],
                            flat[next(flat.len())]
                        ));
                    }
                }
                _ => {
                    text.push_str(&format!("k{k}:\n"));
                    for j in 0..1 + next(3) {
                        text.push_str(&format!("  s{j}: {}\n", flat[next(flat.len())]));
                    }
                }
            }
        }
        read += usize::from(agree(&text));
    }
    assert_eq!(read, 300, "every generated document is valid YAML");
}

#[test]
fn the_bench_configs_read_as_before() {
    let mut text = String::from("gateway:\n  namespace: bench\ndevices:\n");
    for d in 0..50 {
        text.push_str(&format!(
            "  - name: dev-{d:05}\n    driver: dummy\n    syncInterval: 1s\n    properties:\n"
        ));
        for p in 0..20 {
            text.push_str(&format!(
                "      - {{ name: p{p:04}, type: float64, simulate: {{ sine: {{ min: 0, max: 100, period: 60s }} }} }}\n"
            ));
        }
    }
    assert!(agree(&text));
}

#[test]
fn merge_keys_take_the_mappings_own_keys_first() {
    let n =
        parse("base: &b { a: 1, b: 2 }\nother: &o { b: 9, c: 3 }\nx:\n  <<: [*b, *o]\n  a: 7\n")
            .unwrap();
    let x = n.get("x").unwrap();
    let get = |k: &str| x.get(k).map(|v| v.kind.clone());
    assert_eq!(get("a"), Some(Kind::Int(7i128.into())));
    assert_eq!(get("b"), Some(Kind::Int(2i128.into())));
    assert_eq!(get("c"), Some(Kind::Int(3i128.into())));
    assert!(x.get("<<").is_none());
    // Quoted, `<<` is an ordinary key.
    let n = parse("\"<<\": 1\n").unwrap();
    assert!(n.get("<<").is_some());
    assert!(parse("x:\n  <<: 5\n").is_err());
}

#[test]
fn duplicate_keys_keep_the_last_value_in_large_mappings_too() {
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("k{i}: {i}\n"));
    }
    text.push_str("k3: last\n");
    let n = parse(&text).unwrap();
    assert_eq!(n.entries().unwrap().len(), 40);
    assert_eq!(n.get("k3").unwrap().kind, Kind::Str("last".into()));
}

#[test]
fn an_alias_bomb_is_refused() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let e = parse(&text).unwrap_err();
    assert!(e.message.contains("nodes"), "{e:?}");
}

#[test]
fn errors_name_their_position() {
    let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
    assert!(e.line >= 1 && e.column >= 1, "{e:?}");
    let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
    assert_eq!(e.line, 2, "{e:?}");
    let e = parse("a: .inf\n").unwrap_err();
    assert_eq!((e.line, e.column), (1, 4), "{e:?}");
    let e = parse("a: !!int x\n").unwrap_err();
    assert_eq!(e.line, 1, "{e:?}");
}
