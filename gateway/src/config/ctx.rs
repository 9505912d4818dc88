//! The error collector: located errors (`FILE:LINE:COLUMN: KEY.PATH: message`)
//! for the main file and the files it draws on, and the key path of a YAML
//! syntax error.

use serde::de::DeserializeOwned;

use super::tree::{self, from_node, join, Node};
use super::ConfigError;

/// `s` with control characters (line breaks, tabs, terminal escapes) written
/// as escapes: keys and values quoted from the file must not break an error
/// out of its one `FILE:LINE:COLUMN: KEY.PATH: message` line.
fn one_line(s: &str) -> String {
    if !s.contains(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Collects located errors for one file.
pub(crate) struct Ctx {
    pub(crate) file: String,
    /// Files besides the main one (included files, profiles): a node tagged
    /// with number N (see [`super::sources`]) is in `files[N - 1]`.
    pub(crate) files: Vec<super::sources::SourceFile>,
    /// The device being loaded: errors inside a profile name it.
    pub(crate) device: Option<String>,
    pub(crate) errors: Vec<ConfigError>,
}

impl Ctx {
    pub(crate) fn new(file: &str) -> Self {
        Ctx {
            file: file.to_string(),
            files: Vec::new(),
            device: None,
            errors: Vec::new(),
        }
    }

    /// An error at `node`, key path `path`.
    pub(crate) fn at(&mut self, node: &Node, path: &str, msg: impl std::fmt::Display) {
        let (line, column) = node.pos();
        self.at_pos(line, column, path, msg);
    }

    /// The label of the file node `node` was read from.
    pub(crate) fn file_of(&self, node: &Node) -> &str {
        let (id, _) = super::sources::split(node.line as usize);
        match id.checked_sub(1).and_then(|i| self.files.get(i)) {
            Some(f) => &f.label,
            None => &self.file,
        }
    }

    pub(crate) fn at_pos(
        &mut self,
        line: usize,
        column: usize,
        path: &str,
        msg: impl std::fmt::Display,
    ) {
        let (id, line) = super::sources::split(line);
        let mut message = msg.to_string();
        let file = match id.checked_sub(1).and_then(|i| self.files.get(i)) {
            Some(f) => {
                if let Some(p) = &f.profile {
                    match &self.device {
                        Some(d) => {
                            message.push_str(&format!(" (in profile `{p}`, used by device `{d}`)"))
                        }
                        None => message.push_str(&format!(" (in profile `{p}`)")),
                    }
                }
                f.label.clone()
            }
            None => self.file.clone(),
        };
        self.errors.push(ConfigError {
            file,
            line: line.max(1),
            column: column.max(1),
            key_path: one_line(path),
            message: one_line(&message),
        });
    }

    /// An error at the key `keys[..]` (any alias) of mapping `map` (falls back
    /// to the mapping itself when the key is absent).
    pub(crate) fn key(
        &mut self,
        map: &Node,
        path: &str,
        keys: &[&str],
        msg: impl std::fmt::Display,
    ) {
        match map.entry(keys) {
            Some((k, _)) => {
                let p = join(path, &k.text().unwrap_or_default());
                self.at(k, &p, msg)
            }
            None => self.at(map, path, msg),
        }
    }

    /// An error at the value of `keys[..]` of mapping `map`.
    pub(crate) fn val(
        &mut self,
        map: &Node,
        path: &str,
        keys: &[&str],
        msg: impl std::fmt::Display,
    ) {
        match map.entry(keys) {
            Some((k, v)) => {
                let p = join(path, &k.text().unwrap_or_default());
                self.at(v, &p, msg)
            }
            None => self.at(map, path, msg),
        }
    }

    /// Deserializes `T` from `node`. On an error inside one entry of the
    /// mapping, reports it, drops that entry and tries again, so every bad
    /// entry is reported once. `None` when the mapping as a whole is invalid
    /// (wrong kind, missing required key).
    pub(crate) fn de<T: DeserializeOwned>(&mut self, node: &Node, path: &str) -> Option<T> {
        // The node is copied only once an entry has to be left out: a valid
        // config (nearly every node of a large one) is read in place.
        let mut cur = std::borrow::Cow::Borrowed(node);
        let mut removed: Vec<String> = Vec::new();
        loop {
            match from_node::<T>(&cur, path) {
                Ok(v) => return Some(v),
                Err(e) => {
                    let consequence = removed
                        .iter()
                        .any(|k| e.message == format!("missing required key `{k}`"));
                    if consequence {
                        return None;
                    }
                    let (line, column, epath) = e.at.clone().unwrap_or_else(|| {
                        let (line, column) = cur.pos();
                        (line, column, path.to_string())
                    });
                    self.at_pos(line, column, &epath, e.message.clone());
                    let rest = if path.is_empty() {
                        Some(epath.as_str())
                    } else {
                        epath.strip_prefix(path).and_then(|r| r.strip_prefix('.'))
                    };
                    let rest = rest.filter(|r| !r.is_empty())?;
                    let key = rest.split(['.', '[']).next().unwrap_or(rest).to_string();
                    cur.entry(&[key.as_str()])?;
                    cur = std::borrow::Cow::Owned(cur.without(&[key.as_str()]));
                    removed.push(key);
                }
            }
        }
    }

    /// Reports every key of mapping `node` not in `allowed`.
    pub(crate) fn only_keys(&mut self, node: &Node, path: &str, allowed: &[&str]) -> bool {
        let mut ok = true;
        if let Some(entries) = node.entries() {
            for (k, _) in entries {
                let name = k.text().unwrap_or_default();
                if !allowed.contains(&name.as_str()) {
                    ok = false;
                    self.at(
                        k,
                        &join(path, &name),
                        tree::unknown_key_message(&name, allowed),
                    );
                }
            }
        }
        ok
    }
}

/// The path of the mapping that encloses (line, column), from indentation:
/// YAML syntax errors come before a tree exists.
pub(crate) fn enclosing_path(text: &str, line: usize, column: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || lines.is_empty() {
        return String::new();
    }
    let last = (line - 1).min(lines.len() - 1);
    let mut limit = column.saturating_sub(1);
    let mut segs: Vec<String> = Vec::new();
    let key_of = |s: &str| -> Option<String> {
        let s = s.trim_start();
        let s = s.strip_prefix("- ").unwrap_or(s);
        let end = s.find(':')?;
        let k = s[..end].trim().trim_matches(|c| c == '"' || c == '\'');
        let rest = &s[end + 1..];
        if k.is_empty() || k.contains(' ') || !(rest.is_empty() || rest.starts_with(' ')) {
            return None;
        }
        Some(k.to_string())
    };
    for i in (0..=last).rev() {
        let l = lines[i];
        let content = l.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let ind = l.len() - content.len();
        if i == last && ind >= limit {
            continue;
        }
        let dash = content.starts_with("- ") || content == "-";
        let key_ind = if dash { ind + 2 } else { ind };
        if let Some(k) = key_of(content) {
            if key_ind < limit {
                segs.push(k);
                limit = key_ind;
            }
        }
        if dash && ind < limit {
            // Count earlier items at this indentation under the same parent.
            let mut n = 0;
            for l2 in lines[..i].iter().rev() {
                let c2 = l2.trim_start();
                if c2.is_empty() || c2.starts_with('#') {
                    continue;
                }
                let ind2 = l2.len() - c2.len();
                if ind2 < ind {
                    break;
                }
                if ind2 == ind && (c2.starts_with("- ") || c2 == "-") {
                    n += 1;
                }
            }
            segs.push(format!("[{n}]"));
            limit = ind;
        }
        if limit == 0 {
            break;
        }
    }
    let mut out = String::new();
    for s in segs.iter().rev() {
        if s.starts_with('[') {
            out.push_str(s);
        } else {
            out = join(&out, s);
        }
    }
    out
}

/// Drops "needs `k`" errors at path P when `P.k` itself already has an
/// error (the key was given but invalid, so it was set aside).
pub(super) fn drop_consequential(errors: &mut Vec<ConfigError>) {
    let paths: Vec<String> = errors.iter().map(|e| e.key_path.clone()).collect();
    errors.retain(|e| {
        let Some(i) = e.message.find("needs `") else {
            return true;
        };
        let rest = &e.message[i + 7..];
        let key = rest.split(['`', ':', ' ']).next().unwrap_or("");
        if key.is_empty() {
            return true;
        }
        let want = join(&e.key_path, key);
        !paths.iter().any(|p| {
            p == &want || p.starts_with(&format!("{want}.")) || p.starts_with(&format!("{want}["))
        })
    });
}
