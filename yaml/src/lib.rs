//! fieldgate's located YAML tree: every node knows its line and column, so
//! config errors name `file:line:column`. A crate of its own so that it can
//! be optimised for speed while the gateway is optimised for size: the
//! parser is the hot loop of loading a large config.

use std::fmt;

mod parse;
mod split;

pub use parse::{parse, MAX_NODES};

/// One YAML node with its 1-based position.
///
/// Kept at 32 bytes (u32 positions, boxed slices, an unaligned integer): a
/// config of 1 000 devices × 20 properties is about 200 000 nodes, all alive
/// while the file is validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// The value.
    pub kind: Kind,
}

/// A YAML integer (any value of i64 or u64, and the rest of i128), stored
/// without i128's 16-byte alignment so that [`Node`] stays small.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, packed)]
pub struct YamlInt(i128);

impl YamlInt {
    /// The value.
    pub fn get(self) -> i128 {
        self.0
    }
}

impl fmt::Display for YamlInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl From<i128> for YamlInt {
    fn from(v: i128) -> Self {
        YamlInt(v)
    }
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `~`, `null` or nothing.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(YamlInt),
    /// A float.
    Float(f64),
    /// A string.
    Str(Box<str>),
    /// A sequence.
    Seq(Box<[Node]>),
    /// A mapping, in file order (keys are nodes too).
    Map(Box<[(Node, Node)]>),
}

impl Node {
    /// A node without a position (1:1).
    pub fn synthetic(kind: Kind) -> Self {
        Node {
            line: 1,
            column: 1,
            kind,
        }
    }

    /// The entries when this is a mapping.
    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The items when this is a sequence.
    pub fn items(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The (key, value) entry whose key is `key` (or one of its aliases).
    pub fn entry(&self, keys: &[&str]) -> Option<(&Node, &Node)> {
        self.entries()?
            .iter()
            .find(|(k, _)| keys.iter().any(|want| k.is_text(want)))
            .map(|(k, v)| (k, v))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(&[key]).map(|(_, v)| v)
    }

    /// Moves the value of `key` out, leaving a null node at its position
    /// (the key stays, for key checks).
    pub fn take(&mut self, key: &str) -> Option<Node> {
        let Kind::Map(entries) = &mut self.kind else {
            return None;
        };
        let (_, value) = entries.iter_mut().find(|(k, _)| k.is_text(key))?;
        let hole = Node {
            line: value.line,
            column: value.column,
            kind: Kind::Null,
        };
        Some(std::mem::replace(value, hole))
    }

    /// True when the scalar's text is `want` (no allocation for strings).
    pub fn is_text(&self, want: &str) -> bool {
        match &self.kind {
            Kind::Str(s) => &**s == want,
            Kind::Null => want.is_empty(),
            Kind::Bool(_) | Kind::Int(_) | Kind::Float(_) => self.text().is_some_and(|t| t == want),
            Kind::Seq(_) | Kind::Map(_) => false,
        }
    }

    /// The scalar as text (keys, strings, numbers, booleans).
    pub fn text(&self) -> Option<String> {
        match &self.kind {
            Kind::Null => Some(String::new()),
            Kind::Bool(b) => Some(b.to_string()),
            Kind::Int(i) => Some(i.get().to_string()),
            Kind::Float(f) => Some(f.to_string()),
            Kind::Str(s) => Some(s.to_string()),
            _ => None,
        }
    }

    /// The position as `(line, column)`.
    pub fn pos(&self) -> (usize, usize) {
        (self.line as usize, self.column as usize)
    }

    /// True for null.
    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }

    /// A short description of the node's kind for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing (null)".into(),
            Kind::Bool(b) => format!("boolean `{b}`"),
            Kind::Int(i) => format!("integer `{}`", i.get()),
            Kind::Float(f) => format!("number `{f}`"),
            Kind::Str(s) => format!("string `{s}`"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }

    /// This mapping without the entries whose key is in `drop`.
    pub fn without(&self, drop: &[&str]) -> Node {
        match &self.kind {
            Kind::Map(m) => Node {
                line: self.line,
                column: self.column,
                kind: Kind::Map(
                    m.iter()
                        .filter(|(k, _)| !k.text().is_some_and(|t| drop.contains(&t.as_str())))
                        .cloned()
                        .collect(),
                ),
            },
            _ => self.clone(),
        }
    }
}

/// A YAML syntax (or structure) error from the parser.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// The parser's message.
    pub message: String,
}

/// Largest config text accepted.
pub const MAX_CONFIG_BYTES: usize = 32 * 1024 * 1024;
