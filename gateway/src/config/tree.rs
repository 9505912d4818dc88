//! A located YAML tree (every node knows its line and column) and a serde
//! `Deserializer` over it that reports errors with their position and key
//! path, so the loader can validate subtree by subtree and report every
//! mistake, not only the first.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;

pub use fieldgate_yaml::{parse, Kind, Node, SyntaxError, YamlInt, MAX_CONFIG_BYTES};

// ---------------------------------------------------------------------------
// Deserializer over the tree.

/// A deserialization error with the position and key path of the offending
/// node (filled in by the innermost node that saw the error).
#[derive(Debug, Clone)]
pub struct DeError {
    /// Message.
    pub message: String,
    /// Position and key path, once known.
    pub at: Option<(usize, usize, String)>,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            message: msg.to_string(),
            at: None,
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::custom(unknown_key_message(field, expected))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let mut m = format!("unknown value `{variant}`");
        if let Some(s) = did_you_mean(variant, expected) {
            m.push_str(&format!(" (did you mean `{s}`?)"));
        }
        m.push_str(&format!("; allowed: {}", list(expected)));
        DeError::custom(m)
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::custom(format!("missing required key `{field}`"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::custom(format!("key `{field}` given twice"))
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::custom(format!("expected {exp}, found {}", unexpected(unexp)))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::custom(format!(
            "invalid value {}, expected {exp}",
            unexpected(unexp)
        ))
    }
}

fn unexpected(u: de::Unexpected<'_>) -> String {
    match u {
        de::Unexpected::Unit => "nothing (null)".into(),
        de::Unexpected::Map => "a mapping".into(),
        de::Unexpected::Seq => "a list".into(),
        de::Unexpected::Str(s) => format!("string `{s}`"),
        de::Unexpected::Signed(i) => format!("integer `{i}`"),
        de::Unexpected::Unsigned(i) => format!("integer `{i}`"),
        de::Unexpected::Float(f) => format!("number `{f}`"),
        de::Unexpected::Bool(b) => format!("boolean `{b}`"),
        other => other.to_string(),
    }
}

/// `a, b, c` with backticks.
pub fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closest candidate to `word`, when it is close enough.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lw = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&lw, &c.to_ascii_lowercase()), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "unknown key `x`; did you mean `y`? allowed keys: …"
pub fn unknown_key_message(field: &str, expected: &[&str]) -> String {
    let mut m = format!("unknown key `{field}`");
    if let Some(s) = did_you_mean(field, expected) {
        m.push_str(&format!(" (did you mean `{s}`?)"));
    }
    if expected.is_empty() {
        m.push_str("; no keys are allowed here");
    } else {
        m.push_str(&format!("; allowed keys: {}", list(expected)));
    }
    m
}

/// Joins a key path and a key.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Deserializes `T` from `node`, whose key path is `path`.
pub fn from_node<'a, T: Deserialize<'a>>(node: &'a Node, path: &str) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        path: KeyPath::Root(path),
    })
}

/// The key path of a node being deserialized, kept as a chain of borrowed
/// segments and written out only for an error: a large config has millions
/// of nodes and almost never an error.
#[derive(Clone, Copy)]
enum KeyPath<'p> {
    /// The path of the node [`from_node`] started from.
    Root(&'p str),
    /// A mapping's value: its key's text (`?` for a key without one).
    Key(&'p KeyPath<'p>, &'p Node),
    /// An externally tagged enum's value: the variant's key (empty text for
    /// a key without one).
    Variant(&'p KeyPath<'p>, &'p Node),
    /// A sequence item.
    Index(&'p KeyPath<'p>, usize),
}

impl KeyPath<'_> {
    /// The path as text, e.g. `devices[3].properties[1].type`.
    fn render(&self) -> String {
        match self {
            KeyPath::Root(p) => (*p).to_string(),
            KeyPath::Key(parent, k) => {
                join(&parent.render(), &k.text().unwrap_or_else(|| "?".into()))
            }
            KeyPath::Variant(parent, k) => join(&parent.render(), &k.text().unwrap_or_default()),
            KeyPath::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// The deserializer of one node.
pub struct NodeDe<'a, 'p> {
    node: &'a Node,
    path: KeyPath<'p>,
}

/// Fills in the position and key path of `node` on an error that has none
/// yet (the innermost node that saw it).
fn locate<T>(node: &Node, path: &KeyPath<'_>, r: Result<T, DeError>) -> Result<T, DeError> {
    r.map_err(|mut e| {
        if e.at.is_none() {
            let (line, column) = node.pos();
            e.at = Some((line, column, path.render()));
        }
        e
    })
}

impl NodeDe<'_, '_> {
    fn locate<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        locate(self.node, &self.path, r)
    }
}

macro_rules! forward_any {
    ($($m:ident)*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            self.deserialize_any(v)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'de, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Null => v.visit_unit(),
            Kind::Bool(b) => v.visit_bool(*b),
            Kind::Int(i) => {
                let i = i.get();
                if let Ok(x) = i64::try_from(i) {
                    v.visit_i64(x)
                } else if let Ok(x) = u64::try_from(i) {
                    v.visit_u64(x)
                } else {
                    v.visit_i128(i)
                }
            }
            Kind::Float(f) => v.visit_f64(*f),
            Kind::Str(s) => v.visit_str(s),
            Kind::Seq(items) => v.visit_seq(SeqAcc {
                items: items.iter(),
                path: &self.path,
                index: 0,
            }),
            Kind::Map(entries) => v.visit_map(MapAcc {
                entries: entries.iter(),
                path: &self.path,
                value: None,
            }),
        };
        self.locate(r)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            let r = v.visit_none();
            self.locate(r)
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Str(s) => v.visit_str(s),
            Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => {
                v.visit_string(self.node.text().unwrap_or_default())
            }
            _ => return self.deserialize_any(v),
        };
        self.locate(r)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Int(i) => {
                let r = v.visit_f64(i.get() as f64);
                self.locate(r)
            }
            _ => self.deserialize_any(v),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Str(_) | Kind::Int(_) | Kind::Bool(_) => {
                let text = self.node.text().unwrap_or_default();
                v.visit_enum(text.into_deserializer())
            }
            Kind::Map(m) if m.len() == 1 => {
                let (k, val) = &m[0];
                v.visit_enum(EnumAcc {
                    key: k,
                    value: val,
                    path: &self.path,
                })
            }
            Kind::Map(_) => Err(de::Error::custom(
                "expected exactly one key (the variant) in this mapping",
            )),
            _ => return self.deserialize_any(v),
        };
        self.locate(r)
    }

    forward_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_char deserialize_bytes deserialize_byte_buf
        deserialize_seq deserialize_map
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }
}

struct SeqAcc<'a, 'p> {
    items: std::slice::Iter<'a, Node>,
    path: &'p KeyPath<'p>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAcc<'de, '_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            None => Ok(None),
            Some(n) => {
                let path = KeyPath::Index(self.path, self.index);
                self.index += 1;
                let r = seed.deserialize(NodeDe { node: n, path });
                locate(n, &path, r).map(Some)
            }
        }
    }
}

struct MapAcc<'a, 'p> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    path: &'p KeyPath<'p>,
    /// The value of the key just read, and that key.
    value: Option<(&'a Node, &'a Node)>,
}

impl<'de> de::MapAccess<'de> for MapAcc<'de, '_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            None => Ok(None),
            Some((k, v)) => {
                self.value = Some((v, k));
                let path = KeyPath::Key(self.path, k);
                let r = seed.deserialize(NodeDe { node: k, path });
                locate(k, &path, r).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (node, key) = self
            .value
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("value without key"))?;
        let path = KeyPath::Key(self.path, key);
        let r = seed.deserialize(NodeDe { node, path });
        locate(node, &path, r)
    }
}

struct EnumAcc<'a, 'p> {
    key: &'a Node,
    value: &'a Node,
    path: &'p KeyPath<'p>,
}

impl<'de: 'p, 'p> de::EnumAccess<'de> for EnumAcc<'de, 'p> {
    type Error = DeError;
    type Variant = NodeDe<'de, 'p>;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'de, 'p>), DeError> {
        let path = KeyPath::Variant(self.path, self.key);
        let v = seed.deserialize(NodeDe {
            node: self.key,
            path,
        })?;
        Ok((
            v,
            NodeDe {
                node: self.value,
                path,
            },
        ))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'de, '_> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        if self.node.is_null() {
            Ok(())
        } else {
            let r = Err(de::Error::custom("this variant takes no value"));
            self.locate(r)
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(self, v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(self, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_configs_parse() {
        let mut text = String::from("devices:\n");
        for d in 0..1000 {
            text.push_str(&format!(
                "  - name: d{d}\n    driver: dummy\n    properties:\n"
            ));
            for p in 0..20 {
                text.push_str(&format!(
                    "      - {{ name: p{p}, type: uint32, simulate: {{ counter: {{ start: 0, step: 1 }} }} }}\n"
                ));
            }
        }
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn parses_with_positions() {
        let n = parse("a: 1\nb:\n  - x\n  - {c: true}\n").unwrap();
        let (k, v) = n.entry(&["b"]).unwrap();
        assert_eq!(k.pos(), (2, 1));
        assert_eq!(v.items().unwrap()[0].pos(), (3, 5));
        assert_eq!(n.get("a").unwrap().kind, Kind::Int(1i128.into()));
        let c = v.items().unwrap()[1].entry(&["c"]).unwrap();
        assert_eq!(c.0.pos(), (4, 6));
        assert_eq!(c.1.kind, Kind::Bool(true));
    }

    #[test]
    fn syntax_error_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.line >= 1, "{e:?}");
    }
}
