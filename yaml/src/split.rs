//! A large config parsed in parts on several threads. The `devices:` list
//! (a block sequence under the root key `devices`) is cut at the start of
//! its items; the head (everything before the first cut), each run of
//! items, and the tail (the root keys after the list) are parsed on their
//! own threads and the trees joined. The result is always that of the serial
//! parse: whatever could read differently in parts (a part that does not
//! parse on its own, an alias across parts, a `<<` merge in the root
//! mapping, a second `devices` key, a lone carriage return, a NUL…) makes
//! [`parse_in_parts`] give up, and the caller parses serially.

use std::ops::Range;

use crate::parse::{build, Built};
use crate::{Kind, Node, MAX_NODES};

/// Where the text is cut: the byte ranges of the parts and the number of
/// line breaks before each part's start.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    /// The head: from the start to the first cut.
    head: Range<usize>,
    /// The runs of `devices:` items, each starting at an item's `-`
    /// line, with the line breaks before it.
    runs: Vec<(Range<usize>, u32)>,
    /// The tail: the root keys after the list (at column 1), if any.
    tail: Option<(Range<usize>, u32)>,
    /// The 1-based line of the `devices:` key.
    devices_line: u32,
}

/// One line of the text, for the planner.
struct Line<'t> {
    /// Byte offset of its first byte.
    start: usize,
    /// Its text without the line break (and without a `\r` before it).
    text: &'t str,
}

/// The text's lines; `None` for a text with a lone `\r` (a line break of
/// its own in YAML, which the planner does not count).
fn lines(text: &str) -> impl Iterator<Item = Option<Line<'_>>> {
    let mut start = 0;
    text.split_inclusive('\n').map(move |raw| {
        let line_start = start;
        start += raw.len();
        let body = raw.strip_suffix('\n').unwrap_or(raw);
        let body = body.strip_suffix('\r').unwrap_or(body);
        (!body.contains('\r')).then_some(Line {
            start: line_start,
            text: body,
        })
    })
}

/// True for `devices:` at column 1, optionally followed by blanks and a
/// comment.
fn is_devices_key(line: &str) -> bool {
    line.strip_prefix("devices:").is_some_and(|rest| {
        let rest = rest.trim_start_matches(' ');
        rest.is_empty() || rest.starts_with('#')
    })
}

/// The line's indentation (spaces) and what follows it.
fn indent(line: &str) -> (usize, &str) {
    let rest = line.trim_start_matches(' ');
    (line.len() - rest.len(), rest)
}

/// True for a block sequence entry: `-` then a blank or the line's end.
fn is_entry(rest: &str) -> bool {
    rest.strip_prefix('-')
        .is_some_and(|after| after.is_empty() || after.starts_with([' ', '\t']))
}

/// Plans `parts` parts for `text`, or `None` when it has no block `devices:`
/// list long enough to cut (or anything that makes cutting unsafe).
pub(crate) fn plan(text: &str, parts: usize) -> Option<Plan> {
    if parts < 2 || text.as_bytes().contains(&0) {
        return None;
    }
    let mut lines = lines(text).enumerate();
    // The `devices:` key, at column 1.
    let devices_line = loop {
        let (n, line) = lines.next()?;
        if is_devices_key(line?.text) {
            break n + 1;
        }
    };
    // Cuts at the first item past each equal share of the text (never at
    // the first item), and where the list ends: the first line, other
    // than a blank or comment line, that is less indented than its items.
    let mut targets = (1..parts).map(|k| text.len() * k / parts).peekable();
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let mut item_indent = None;
    let mut end = None;
    for (n, line) in lines.by_ref() {
        let line = line?;
        let (spaces, rest) = indent(line.text);
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let Some(at) = item_indent else {
            // The first item fixes the items' indentation.
            if !is_entry(rest) {
                return None;
            }
            item_indent = Some(spaces);
            continue;
        };
        if spaces < at || (spaces == 0 && !is_entry(rest)) {
            // The list ends here. Only at a plain or quoted root key
            // (column 1; no flow collection, tag, anchor, alias, explicit
            // key or document marker) is the rest sure to read the same on
            // its own.
            let key_start = rest
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '"' | '\''));
            if spaces != 0 || !key_start {
                return None;
            }
            end = Some((line.start, n));
            break;
        }
        if spaces == at && is_entry(rest) && targets.next_if(|t| line.start >= *t).is_some() {
            cuts.push((line.start, n));
            while targets.next_if(|t| line.start >= *t).is_some() {}
        }
    }
    let list_end = end.map_or(text.len(), |(start, _)| start);
    let first = *cuts.first()?;
    let breaks = |n: usize| u32::try_from(n).ok();
    let mut runs = Vec::with_capacity(cuts.len());
    for (i, &(start, n)) in cuts.iter().enumerate() {
        let stop = cuts.get(i + 1).map_or(list_end, |c| c.0);
        runs.push((start..stop, breaks(n)?));
    }
    let tail = match end {
        Some((start, n)) => Some((start..text.len(), breaks(n)?)),
        None => None,
    };
    Some(Plan {
        head: 0..first.0,
        runs,
        tail,
        devices_line: breaks(devices_line)?,
    })
}

/// Parses `text` in the parts of `plan` on their own threads; `None` when a
/// part fails or the joined tree could differ from the serial parse.
pub(crate) fn parse_in_parts(text: &str, plan: &Plan) -> Option<Node> {
    let (head, runs, tail) = std::thread::scope(|scope| {
        let spawn = |range: Range<usize>, breaks: u32| {
            let part = &text[range];
            std::thread::Builder::new()
                .name("config-parse".into())
                .spawn_scoped(scope, move || build(part, breaks).ok())
                .ok()
        };
        let runs: Vec<_> = plan
            .runs
            .iter()
            .map(|(range, breaks)| spawn(range.clone(), *breaks))
            .collect();
        let tail = plan
            .tail
            .as_ref()
            .map(|(range, breaks)| spawn(range.clone(), *breaks));
        let head = build(&text[plan.head.clone()], 0).ok();
        let joined = |h: Option<std::thread::ScopedJoinHandle<'_, Option<Built>>>| {
            h.and_then(|h| h.join().ok().flatten())
        };
        let runs: Option<Vec<Built>> = runs.into_iter().map(joined).collect();
        let tail = tail.map(joined);
        (head, runs, tail)
    });
    let tail = match tail {
        None => None,                  // no tail planned
        Some(parsed) => Some(parsed?), // planned: it must have parsed
    };
    join(head?, runs?, tail, plan)
}

/// The serial parse's tree from the parts' trees, or `None` when they do
/// not fit together as the plan expects.
fn join(head: Built, runs: Vec<Built>, tail: Option<Built>, plan: &Plan) -> Option<Node> {
    if head.root_merges || tail.as_ref().is_some_and(|t| t.root_merges) {
        return None;
    }
    // Each run's own root sequence and the tail's root mapping are not
    // nodes of the whole.
    let mut nodes = head.nodes
        + runs
            .iter()
            .map(|r| r.nodes.saturating_sub(1))
            .sum::<usize>();
    nodes += tail.as_ref().map_or(0, |t| t.nodes.saturating_sub(1));
    if nodes > MAX_NODES {
        return None;
    }
    let Node {
        line,
        column,
        kind: Kind::Map(entries),
    } = head.root
    else {
        return None;
    };
    let mut entries = entries.into_vec();
    // The head ends in the `devices:` list: its last key.
    let (key, list) = entries.pop()?;
    if !key.is_text("devices") || key.line != plan.devices_line || key.column != 1 {
        return None;
    }
    let Node {
        line: list_line,
        column: list_column,
        kind: Kind::Seq(first),
    } = list
    else {
        return None;
    };
    let mut items = first.into_vec();
    for run in runs {
        let Kind::Seq(more) = run.root.kind else {
            return None;
        };
        items.extend(more.into_vec());
    }
    entries.push((
        key,
        Node {
            line: list_line,
            column: list_column,
            kind: Kind::Seq(items.into()),
        },
    ));
    if let Some(tail) = tail {
        match tail.root.kind {
            Kind::Null => {}
            Kind::Map(more) if tail.root.column == 1 => {
                for (key, value) in more.into_vec() {
                    if key.is_text("devices") {
                        return None;
                    }
                    // A key seen before is replaced where it stood, as in
                    // one mapping.
                    match entries.iter_mut().find(|(k, _)| k.kind == key.kind) {
                        Some(entry) => *entry = (key, value),
                        None => entries.push((key, value)),
                    }
                }
            }
            _ => return None,
        }
    }
    Some(Node {
        line,
        column,
        kind: Kind::Map(entries.into()),
    })
}

#[cfg(test)]
mod tests;
