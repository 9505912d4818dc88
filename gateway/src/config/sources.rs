//! Which files a config was assembled from (the main file, included files,
//! profile files) and how a YAML node remembers its file.
//!
//! A [`Node`](super::tree::Node) keeps only a line and a column, and stays at
//! 32 bytes. Nodes read from another file than the main one are *tagged*:
//! their line gets the top bit set and the file's number in the next bits,
//! so every error the loader reports at such a node names that file. Lines of
//! the main file are never tagged.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::tree::{Kind, Node};

/// The tag bit of a line number.
const TAGGED: u32 = 1 << 31;
/// Bits of a tagged line that hold the line itself.
const LINE_BITS: u32 = 21;
/// The largest line of a tagged file.
pub const MAX_TAGGED_LINE: u32 = (1 << LINE_BITS) - 1;
/// The largest number of files besides the main one.
pub const MAX_FILES: usize = (1 << (31 - LINE_BITS)) - 1;

/// Marks every node of `node` as read from file `id` (1-based: 0 is the main
/// file). Returns false when a line is too large to be tagged.
pub fn tag(node: &mut Node, id: usize) -> bool {
    let mut ok = true;
    tag_inner(node, id as u32, &mut ok);
    ok
}

fn tag_inner(node: &mut Node, id: u32, ok: &mut bool) {
    if node.line & TAGGED == 0 {
        if node.line > MAX_TAGGED_LINE {
            *ok = false;
        }
        node.line = TAGGED | (id << LINE_BITS) | (node.line & MAX_TAGGED_LINE);
    }
    match &mut node.kind {
        Kind::Seq(items) => items.iter_mut().for_each(|n| tag_inner(n, id, ok)),
        Kind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            tag_inner(k, id, ok);
            tag_inner(v, id, ok);
        }),
        _ => {}
    }
}

/// The file number (0 = main file) and the real line of a node's line.
pub fn split(line: usize) -> (usize, usize) {
    let l = line as u64;
    if l & u64::from(TAGGED) == 0 || l > u64::from(u32::MAX) {
        return (0, line);
    }
    let l = l as u32;
    (
        ((l & !TAGGED) >> LINE_BITS) as usize,
        (l & MAX_TAGGED_LINE) as usize,
    )
}

/// What identifies a file's content without reading it: device, inode,
/// size, modification and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    /// True when both stamps are of the same file (device and inode),
    /// whatever its content.
    pub fn same_file(&self, other: &Stamp) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// The stamp of the file at `path` now (following symlinks).
    pub fn read(path: &Path) -> Option<Stamp> {
        std::fs::metadata(path).ok().map(|m| Stamp::of(&m))
    }
}

/// One file besides the main one that errors can point into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The label used in error lines (a path as derived from the config,
    /// or `builtin:NAME.yaml`).
    pub label: String,
    /// `Some(name)` when the file is a profile: its errors then name the
    /// device that uses it.
    pub profile: Option<String>,
}

/// Where a config came from, for `check` and for the watcher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Files read for this config besides the main one: included files and
    /// local profile files, in the order read.
    pub files: Vec<PathBuf>,
    /// The `include:` globs, as absolute (or main-file-relative) patterns: a
    /// file that starts matching one is picked up at the next reload.
    pub include_globs: Vec<String>,
    /// Device name → (profile name, where it came from), for devices with a
    /// `profile:`.
    pub profiles: Vec<(String, String, String)>,
    /// Device name → the included file it was written in (devices of the
    /// main file are not listed).
    pub device_files: Vec<(String, String)>,
    /// The stamp of the main file and of each included file, taken just
    /// before it was read: a reload takes over the devices of an included
    /// file whose stamp is the same now (see [`super::reuse`]).
    pub stamps: Vec<(PathBuf, Stamp)>,
}

impl Sources {
    /// The profile of device `name` and where it came from.
    pub fn profile_of(&self, name: &str) -> Option<(&str, &str)> {
        self.profiles
            .iter()
            .find(|(d, _, _)| d == name)
            .map(|(_, p, from)| (p.as_str(), from.as_str()))
    }

    /// The stamp file `path` had when it was read.
    pub fn stamp_of(&self, path: &Path) -> Option<Stamp> {
        self.stamps.iter().find(|(p, _)| p == path).map(|(_, s)| *s)
    }

    /// The included file that device `name` was written in.
    pub fn file_of(&self, name: &str) -> Option<&str> {
        self.device_files
            .iter()
            .find(|(d, _)| d == name)
            .map(|(_, f)| f.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let mut n = super::super::tree::parse("a:\n  - b: 1\n").unwrap();
        assert!(tag(&mut n, 7));
        let (k, v) = n.entry(&["a"]).unwrap();
        assert_eq!(split(k.line as usize), (7, 1));
        let item = &v.items().unwrap()[0];
        assert_eq!(split(item.line as usize), (7, 2));
        assert_eq!(item.column, 5);
        // Tagging again keeps the first file.
        assert!(tag(&mut n, 9));
        assert_eq!(split(n.line as usize).0, 7);
        // Untagged lines are the main file's.
        assert_eq!(split(12), (0, 12));
    }
}
