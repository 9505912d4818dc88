//! `include:` — more `devices:` from other files, named by glob patterns
//! relative to the main file. Each included file is a mapping with only a
//! `devices:` list; its nodes are tagged with the file (see
//! [`super::sources`]) so errors point into it.

use std::path::{Path, PathBuf};

use super::ctx::Ctx;
use super::resolved::DeviceSettings;
use super::reuse::Reuse;
use super::sources::{self, SourceFile, Sources};
use super::tree::{self, Kind, Node};

/// Devices taken over, by included file: (file label, devices).
type Taken = Vec<(String, Vec<std::sync::Arc<DeviceSettings>>)>;

/// Largest number of files all `include:` patterns may match together.
pub const MAX_INCLUDED_FILES: usize = 1000;

/// The patterns of `include:` (a string or a list of strings), each with its
/// node; reports anything else.
fn patterns(ctx: &mut Ctx, node: &Node) -> Vec<(String, Node)> {
    let one = |ctx: &mut Ctx, n: &Node, path: &str| match &n.kind {
        Kind::Str(s) if !s.trim().is_empty() => Some((s.to_string(), n.clone())),
        _ => {
            ctx.at(
                n,
                path,
                format!(
                    "expected a glob pattern such as `devices/*.yaml`, found {}",
                    n.describe()
                ),
            );
            None
        }
    };
    match &node.kind {
        Kind::Null => Vec::new(),
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| one(ctx, n, &format!("include[{i}]")))
            .collect(),
        _ => one(ctx, node, "include").into_iter().collect(),
    }
}

/// The pattern as a path pattern: relative ones are relative to `base_dir`.
pub fn full_pattern(base_dir: &Path, pattern: &str) -> String {
    if Path::new(pattern).is_absolute() || base_dir == Path::new(".") {
        pattern.to_string()
    } else {
        format!(
            "{}/{}",
            glob::Pattern::escape(&base_dir.display().to_string()),
            pattern
        )
    }
}

/// The files a full pattern matches now, sorted, or what is wrong with
/// the pattern.
pub fn matches(full: &str) -> Result<Vec<PathBuf>, glob::PatternError> {
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let paths = glob::glob_with(full, opts)?;
    let mut out: Vec<PathBuf> = paths
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// Reads every file that `include:` names and appends its devices to
/// `devices` (creating the list when the main file has none). Returns the
/// files read and the patterns, for `check` and the watcher.
/// The devices of a file that `reuse` names are taken over into `taken`
/// (file label, devices) instead of being read.
pub(crate) fn expand(
    ctx: &mut Ctx,
    root: &mut Node,
    devices: &mut Option<Node>,
    base_dir: &Path,
    (reuse, taken): (&mut Reuse, &mut Taken),
) -> Sources {
    let mut sources = Sources::default();
    let Some(node) = root.take("include") else {
        return sources;
    };
    let main = std::fs::canonicalize(&ctx.file).ok();
    let mut seen: Vec<PathBuf> = Vec::new();
    for (pattern, pnode) in patterns(ctx, &node) {
        let full = full_pattern(base_dir, &pattern);
        let found = match matches(&full) {
            Ok(f) => f,
            Err(e) => {
                ctx.at(
                    &pnode,
                    "include",
                    format!("invalid glob pattern `{pattern}`: {e}"),
                );
                continue;
            }
        };
        sources.include_globs.push(full);
        for path in found {
            let canon = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if main.as_ref() == Some(&canon) || seen.contains(&canon) {
                continue;
            }
            if seen.len() >= MAX_INCLUDED_FILES || ctx.files.len() >= sources::MAX_FILES {
                ctx.at(
                    &pnode,
                    "include",
                    format!("too many included files (at most {MAX_INCLUDED_FILES})"),
                );
                break;
            }
            seen.push(canon);
            sources.files.push(path.clone());
            let label = path.display().to_string();
            if let Some((stamp, kept)) = reuse.take(&label) {
                sources.stamps.push((path.clone(), stamp));
                for d in &kept {
                    sources.device_files.push((d.name.clone(), label.clone()));
                }
                taken.push((label, kept));
                continue;
            }
            include_file(ctx, &path, devices, &mut sources);
        }
    }
    sources
}

/// Reads one included file and appends its devices.
fn include_file(ctx: &mut Ctx, path: &Path, devices: &mut Option<Node>, sources: &mut Sources) {
    let label = path.display().to_string();
    let file_error =
        |ctx: &mut Ctx, line: usize, column: usize, key_path: String, message: String| {
            ctx.errors.push(super::ConfigError {
                file: label.clone(),
                line: line.max(1),
                column: column.max(1),
                key_path,
                message,
            })
        };
    let stamp = sources::Stamp::read(path);
    let text = match super::read_limited(path, tree::MAX_CONFIG_BYTES as u64)
        .map_err(|e| e.to_string())
        .and_then(|b| String::from_utf8(b).map_err(|_| "it is not UTF-8 text".to_string()))
    {
        Ok(t) => t,
        Err(e) => {
            file_error(
                ctx,
                1,
                1,
                String::new(),
                format!("cannot read included file: {e}"),
            );
            return;
        }
    };
    let mut root = match tree::parse(&text) {
        Ok(n) => n,
        Err(e) => {
            let key_path = super::ctx::enclosing_path(&text, e.line, e.column);
            file_error(
                ctx,
                e.line,
                e.column,
                key_path,
                format!("YAML syntax error: {}", e.message),
            );
            return;
        }
    };
    drop(text);
    if let Some(s) = stamp {
        sources.stamps.push((path.to_path_buf(), s));
    }
    ctx.files.push(SourceFile {
        label: label.clone(),
        profile: None,
    });
    if !sources::tag(&mut root, ctx.files.len()) {
        file_error(
            ctx,
            1,
            1,
            String::new(),
            format!(
                "an included file may have at most {} lines",
                sources::MAX_TAGGED_LINE
            ),
        );
        return;
    }
    match &root.kind {
        Kind::Null => return,
        Kind::Map(entries) => {
            for (k, _) in entries.iter() {
                if !k.is_text("devices") {
                    let name = k.text().unwrap_or_default();
                    ctx.at(
                        k,
                        &name,
                        format!(
                            "an included file holds only a `devices:` list; `{name}` belongs in the main config file"
                        ),
                    );
                }
            }
        }
        _ => {
            ctx.at(
                &root,
                "",
                format!(
                    "an included file must be a mapping with a `devices:` list, found {}",
                    root.describe()
                ),
            );
            return;
        }
    }
    let Some(list) = root.take("devices") else {
        return;
    };
    let items = match list.kind {
        Kind::Null => return,
        Kind::Seq(items) => items,
        _ => {
            ctx.at(
                &list,
                "devices",
                format!("expected a list of devices, found {}", list.describe()),
            );
            return;
        }
    };
    for d in items.iter() {
        if let Some(name) = d.get("name").and_then(Node::text) {
            sources.device_files.push((name, label.clone()));
        }
    }
    let target = devices.get_or_insert_with(|| Node::synthetic(Kind::Seq(Box::new([]))));
    match &mut target.kind {
        Kind::Null => target.kind = Kind::Seq(items),
        Kind::Seq(existing) => {
            let mut all = std::mem::take(existing).into_vec();
            all.extend(items.into_vec());
            *existing = all.into_boxed_slice();
        }
        // The main file's `devices:` is not a list: the loader reports it.
        _ => {}
    }
}
