//! YAML text → located tree: builds [`Node`]s straight from the parser's
//! events, one pass, no serde round trip per node. The rules are YAML 1.2's
//! core schema with strict booleans (`true`/`false` only, so `on`, `yes`
//! and `no` stay text), the core tags (`!!str`, `!!int`, …), anchors and
//! aliases within a node budget (an alias bomb is refused), `<<` merge keys,
//! and duplicate keys where the last one wins.

use std::borrow::Cow;
use std::collections::HashMap;

use granit_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

use crate::{split, Kind, Node, SyntaxError, YamlInt, MAX_CONFIG_BYTES};

/// Most nodes one config file may hold, aliases expanded: a config of
/// 5 000 devices × 50 properties is about 2 million nodes.
pub const MAX_NODES: usize = 4_000_000;

/// A mapping with more entries than this finds duplicate keys through an
/// index instead of a scan.
const INDEXED_MAP: usize = 16;

/// A text at least this large is parsed in parts (one per core, see
/// [`crate::split`]) when it has a long `devices:` list.
const MIN_PART_BYTES: usize = 256 * 1024;

/// Most parts (threads) one text is parsed in.
const MAX_PARTS: usize = 8;

/// Parses YAML text into a located tree. An empty document is `Null`.
/// A large config is parsed in parts on several threads (same result).
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let most = (text.len() / MIN_PART_BYTES).min(MAX_PARTS);
    // (Asked only for a large text: it reads the cgroup's CPU limits.)
    let parts = if most < 2 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |cores| most.min(cores.get()))
    };
    parse_with(text, parts)
}

/// [`parse`] with at most `parts` parts (threads); 0 or 1 parses serially.
pub(crate) fn parse_with(text: &str, parts: usize) -> Result<Node, SyntaxError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(SyntaxError {
            line: 1,
            column: 1,
            message: format!(
                "the file is larger than {} MiB",
                MAX_CONFIG_BYTES / (1024 * 1024)
            ),
        });
    }
    if text.trim().is_empty() {
        return Ok(Node::synthetic(Kind::Null));
    }
    if let Some(node) = split::plan(text, parts).and_then(|p| split::parse_in_parts(text, &p)) {
        return Ok(node);
    }
    build(text, 0).map(|built| built.root)
}

/// A text's tree, and what [`split`] needs to join trees of parts.
pub(crate) struct Built {
    /// The document's root (`Null` when it has none).
    pub(crate) root: Node,
    /// Nodes made, aliases expanded.
    pub(crate) nodes: usize,
    /// The root mapping had a `<<` merge key.
    pub(crate) root_merges: bool,
}

/// Parses `text`, a part of a file that starts after `breaks` line breaks.
pub(crate) fn build(text: &str, breaks: u32) -> Result<Built, SyntaxError> {
    let options = granit_parser::options! { emit_comments: false };
    let mut builder = Builder {
        breaks,
        ..Builder::default()
    };
    for item in Parser::new_from_str_with_options(text, options) {
        let (event, span) = item.map_err(|e| scan_error(&e, breaks))?;
        builder.event(event, &span)?;
    }
    Ok(Built {
        root: builder.root.unwrap_or_else(|| Node::synthetic(Kind::Null)),
        nodes: builder.nodes,
        root_merges: builder.root_merges,
    })
}

fn scan_error(e: &ScanError, breaks: u32) -> SyntaxError {
    let m = e.marker();
    let message = e.info();
    SyntaxError {
        line: m.line() + breaks as usize,
        column: m.col() + 1,
        message: message.lines().next().unwrap_or("invalid YAML").to_string(),
    }
}

/// A node's 1-based position from its event's span, in a part of a file
/// that starts after `breaks` line breaks.
fn position(span: &Span, breaks: u32) -> (u32, u32) {
    let at = |v: usize| u32::try_from(v.max(1)).unwrap_or(u32::MAX);
    (
        at(span.start.line()).saturating_add(breaks),
        at(span.start.col() + 1),
    )
}

fn error_at(at: (u32, u32), message: String) -> SyntaxError {
    SyntaxError {
        line: at.0 as usize,
        column: at.1 as usize,
        message,
    }
}

/// A scalar key as a hashable value, for the duplicate-key index.
#[derive(PartialEq, Eq, Hash)]
enum ScalarKey {
    Null,
    Bool(bool),
    Int(i128),
    Float(u64),
    Str(Box<str>),
}

impl ScalarKey {
    fn of(kind: &Kind) -> Option<ScalarKey> {
        Some(match kind {
            Kind::Null => ScalarKey::Null,
            Kind::Bool(b) => ScalarKey::Bool(*b),
            Kind::Int(i) => ScalarKey::Int(i.get()),
            Kind::Float(f) => ScalarKey::Float(f.to_bits()),
            Kind::Str(s) => ScalarKey::Str(s.clone()),
            Kind::Seq(_) | Kind::Map(_) => return None,
        })
    }
}

/// A mapping being built. Its entries so far are the tail of the builder's
/// entry stack from `start` on (collections nest, so their entries do too):
/// a finished mapping is one exact-sized allocation, with no growth on the
/// way.
struct MapFrame {
    start: usize,
    /// The key read, waiting for its value.
    key: Option<Node>,
    /// The key waiting for its value is a plain `<<`.
    merging: bool,
    /// The values of `<<` keys, in order.
    merges: Vec<Node>,
    /// Scalar key → index (from `start`), once the mapping is large.
    index: Option<HashMap<ScalarKey, usize>>,
}

impl MapFrame {
    fn new(start: usize) -> Self {
        MapFrame {
            start,
            key: None,
            merging: false,
            merges: Vec::new(),
            index: None,
        }
    }

    /// Adds an entry; a key seen before is replaced where it stood.
    fn insert(&mut self, stack: &mut Vec<(Node, Node)>, key: Node, value: Node) {
        let mine = &mut stack[self.start..];
        let found = match (&self.index, ScalarKey::of(&key.kind)) {
            (Some(index), Some(k)) => index.get(&k).copied(),
            _ => mine.iter().position(|(k, _)| k.kind == key.kind),
        };
        if let Some(i) = found {
            mine[i] = (key, value);
            return;
        }
        let len = mine.len();
        if let (Some(index), Some(k)) = (&mut self.index, ScalarKey::of(&key.kind)) {
            index.insert(k, len);
        }
        stack.push((key, value));
        if self.index.is_none() && len + 1 > INDEXED_MAP {
            self.index = Some(
                stack[self.start..]
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (k, _))| ScalarKey::of(&k.kind).map(|k| (k, i)))
                    .collect(),
            );
        }
    }

    /// The entries with the `<<` merges applied (keys of the mapping itself
    /// win, then earlier merged mappings over later ones), taken off the
    /// stack.
    fn finish(mut self, stack: &mut Vec<(Node, Node)>) -> Result<Kind, SyntaxError> {
        for source in std::mem::take(&mut self.merges) {
            let maps: Vec<Node> = match source.kind {
                Kind::Map(_) => vec![source],
                Kind::Seq(items) if items.iter().all(|n| matches!(n.kind, Kind::Map(_))) => {
                    items.into_vec()
                }
                _ => {
                    return Err(error_at(
                        (source.line, source.column),
                        format!(
                            "a merge key `<<` takes a mapping or a list of mappings, found {}",
                            source.describe()
                        ),
                    ))
                }
            };
            for map in maps {
                let Kind::Map(entries) = map.kind else {
                    continue;
                };
                for (k, v) in entries.into_vec() {
                    if !stack[self.start..]
                        .iter()
                        .any(|(have, _)| have.kind == k.kind)
                    {
                        self.insert(stack, k, v);
                    }
                }
            }
        }
        Ok(Kind::Map(stack.drain(self.start..).collect()))
    }
}

enum FrameKind {
    /// A sequence: its items are the builder's item stack from here on.
    Seq(usize),
    Map(MapFrame),
}

/// A collection being built: where it starts, its anchor (0: none) and the
/// node count before it (for the anchor's size).
struct Frame {
    at: (u32, u32),
    anchor: usize,
    nodes_before: usize,
    kind: FrameKind,
}

/// Turns the parser's events into one tree.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// The items of the open sequences, innermost last.
    items: Vec<Node>,
    /// The entries of the open mappings, innermost last.
    entries: Vec<(Node, Node)>,
    root: Option<Node>,
    /// Anchor id → the anchored node and how many nodes it holds.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes made so far, aliases expanded.
    nodes: usize,
    documents: usize,
    /// Line breaks before the text (a part of a file).
    breaks: u32,
    /// The root mapping has a `<<` merge key.
    root_merges: bool,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: &Span) -> Result<(), SyntaxError> {
        let at = position(span, self.breaks);
        match event {
            Event::DocumentStart(..) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(error_at(
                        at,
                        "a config file holds one YAML document; a second one starts here".into(),
                    ));
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                self.count(1, at)?;
                let before = self.nodes - 1;
                let kind = scalar(value, style, tag.as_deref(), at)?;
                if let Some(Frame {
                    kind: FrameKind::Map(m),
                    ..
                }) = self.stack.last_mut()
                {
                    if m.key.is_none()
                        && !m.merging
                        && style == ScalarStyle::Plain
                        && is_merge_key(&kind)
                    {
                        m.merging = true;
                        self.root_merges |= self.stack.len() == 1;
                        return Ok(());
                    }
                }
                let node = Node {
                    line: at.0,
                    column: at.1,
                    kind,
                };
                self.complete(node, anchor, before);
            }
            Event::SequenceStart(_, anchor, _) => {
                let kind = FrameKind::Seq(self.items.len());
                self.open(at, anchor, kind)?;
            }
            Event::MappingStart(_, anchor, _) => {
                let kind = FrameKind::Map(MapFrame::new(self.entries.len()));
                self.open(at, anchor, kind)?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Err(error_at(at, "unbalanced end of a collection".into()));
                };
                let kind = match frame.kind {
                    FrameKind::Seq(start) => Kind::Seq(self.items.drain(start..).collect()),
                    FrameKind::Map(m) => m.finish(&mut self.entries)?,
                };
                let node = Node {
                    line: frame.at.0,
                    column: frame.at.1,
                    kind,
                };
                self.complete(node, frame.anchor, frame.nodes_before);
            }
            Event::Alias(id) => {
                let Some((target, size)) = self.anchors.get(&id) else {
                    return Err(error_at(at, "an alias to an unknown anchor".into()));
                };
                let (mut node, size) = (target.clone(), *size);
                self.count(size, at)?;
                node.line = at.0;
                node.column = at.1;
                let before = self.nodes - size;
                self.complete(node, 0, before);
            }
            Event::UnresolvedAlias(name) => {
                return Err(error_at(at, format!("the alias `*{name}` has no anchor")));
            }
            _ => {}
        }
        Ok(())
    }

    /// Starts a collection at `at`.
    fn open(&mut self, at: (u32, u32), anchor: usize, kind: FrameKind) -> Result<(), SyntaxError> {
        self.count(1, at)?;
        self.stack.push(Frame {
            at,
            anchor,
            nodes_before: self.nodes - 1,
            kind,
        });
        Ok(())
    }

    /// Counts `n` more nodes against [`MAX_NODES`].
    fn count(&mut self, n: usize, at: (u32, u32)) -> Result<(), SyntaxError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(error_at(
                at,
                format!("more than {MAX_NODES} nodes (aliases expanded): the file is too large or an alias repeats too much"),
            ));
        }
        Ok(())
    }

    /// A finished node: remembered under its anchor, then placed in its
    /// parent (or made the root).
    fn complete(&mut self, node: Node, anchor: usize, nodes_before: usize) {
        if anchor != 0 {
            self.anchors
                .insert(anchor, (node.clone(), self.nodes - nodes_before));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame {
                kind: FrameKind::Seq(_),
                ..
            }) => self.items.push(node),
            Some(Frame {
                kind: FrameKind::Map(m),
                ..
            }) => {
                if m.merging {
                    m.merging = false;
                    m.merges.push(node);
                } else if let Some(key) = m.key.take() {
                    m.insert(&mut self.entries, key, node);
                } else {
                    m.key = Some(node);
                }
            }
        }
    }
}

fn is_merge_key(kind: &Kind) -> bool {
    matches!(kind, Kind::Str(s) if &**s == "<<")
}

/// A scalar's value by the core schema, or by its explicit core tag.
fn scalar(
    value: Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<&Tag>,
    at: (u32, u32),
) -> Result<Kind, SyntaxError> {
    let text = value.as_ref();
    let invalid = |what: &str| error_at(at, format!("`{text}` is tagged {what} but is not one"));
    if let Some(tag) = tag {
        if let Some(core) = tag.core_suffix() {
            return match core {
                "str" => Ok(Kind::Str(value.into())),
                "null" => Ok(Kind::Null),
                "bool" => boolean(text)
                    .map(Kind::Bool)
                    .ok_or_else(|| invalid("!!bool")),
                "int" => integer(text)
                    .map(|i| Kind::Int(YamlInt::from(i)))
                    .ok_or_else(|| invalid("!!int")),
                "float" => match float(text).or_else(|| integer(text).map(|i| i as f64)) {
                    Some(f) => finite(f, text, at),
                    None => Err(invalid("!!float")),
                },
                other => Err(invalid(&format!("!!{other}"))),
            };
        }
        // The non-specific tag `!` makes a scalar text; other tags (the
        // file's own) do not change how it reads.
        if tag
            .suffix_in_namespace("!")
            .is_some_and(|s| s.is_empty() || s == "!")
        {
            return Ok(Kind::Str(value.into()));
        }
    }
    if style != ScalarStyle::Plain {
        return Ok(Kind::Str(value.into()));
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Kind::Null);
    }
    if let Some(b) = boolean(text) {
        return Ok(Kind::Bool(b));
    }
    if let Some(i) = untagged_integer(text) {
        return Ok(Kind::Int(YamlInt::from(i)));
    }
    if let Some(f) = float(text) {
        return finite(f, text, at);
    }
    Ok(Kind::Str(value.into()))
}

fn finite(f: f64, text: &str, at: (u32, u32)) -> Result<Kind, SyntaxError> {
    if f.is_finite() {
        Ok(Kind::Float(f))
    } else {
        Err(error_at(
            at,
            format!("`{text}` is not a finite number; write a number fieldgate can use"),
        ))
    }
}

/// YAML 1.2's booleans (strict: `yes`, `on` and the like are text).
fn boolean(t: &str) -> Option<bool> {
    match t {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// An integer as a plain scalar: `-` numbers within i64, others within u64
/// (a larger one reads as a float); a decimal with a leading zero is not an
/// integer (YAML 1.2 has no `0`-prefixed octal).
fn untagged_integer(t: &str) -> Option<i128> {
    let v = integer(t)?;
    let fits = if t.starts_with('-') {
        i64::try_from(v).is_ok()
    } else {
        u64::try_from(v).is_ok()
    };
    fits.then_some(v)
}

/// An integer: optional sign, then decimal digits, or `0x`, `0o` or `0b`
/// and digits of that base; `_` may separate digits.
fn integer(t: &str) -> Option<i128> {
    let (negative, rest) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let prefixed = |p: &str, q: &str| rest.strip_prefix(p).or_else(|| rest.strip_prefix(q));
    let (radix, digits) = if let Some(d) = prefixed("0x", "0X") {
        (16, d)
    } else if let Some(d) = prefixed("0o", "0O") {
        (8, d)
    } else if let Some(d) = prefixed("0b", "0B") {
        (2, d)
    } else {
        if rest.len() > 1 && rest.starts_with('0') {
            return None;
        }
        (10, rest)
    };
    let bytes = digits.as_bytes();
    if bytes.is_empty() || bytes[0] == b'_' || bytes[bytes.len() - 1] == b'_' {
        return None;
    }
    let mut magnitude: u128 = 0;
    let mut previous = 0u8;
    for &b in bytes {
        if b == b'_' {
            if previous == b'_' {
                return None;
            }
        } else {
            let d = (b as char).to_digit(radix)?;
            magnitude = magnitude
                .checked_mul(u128::from(radix))?
                .checked_add(u128::from(d))?;
        }
        previous = b;
    }
    if negative {
        if magnitude == i128::MAX as u128 + 1 {
            Some(i128::MIN)
        } else {
            i128::try_from(magnitude).ok().map(|m| -m)
        }
    } else {
        i128::try_from(magnitude).ok()
    }
}

/// A float: `.inf`, `.nan` (any of YAML's spellings, signed), or a decimal
/// numeral with an optional fraction and exponent.
fn float(t: &str) -> Option<f64> {
    let (negative, unsigned) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    match unsigned {
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        ".inf" | ".Inf" | ".INF" => {
            return Some(if negative {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        _ => {}
    }
    // A numeral: digits or `.digits` first, so `inf`, `nan` and the like
    // that Rust's parser takes stay text.
    let first = unsigned.as_bytes().first()?;
    let numeral = first.is_ascii_digit()
        || (*first == b'.' && unsigned.as_bytes().get(1).is_some_and(u8::is_ascii_digit));
    if !numeral || unsigned.contains('_') {
        return None;
    }
    t.parse::<f64>().ok()
}
