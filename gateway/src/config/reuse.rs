//! Reloads that read only what changed: when a save touches one included
//! file, the devices of the other included files are taken over from the
//! running config instead of being read, parsed and resolved again.
//!
//! A file's devices are taken over only when nothing they were resolved
//! from can have changed: the main file (the `mqtt:` defaults, the
//! namespace, the gateway's session) and the file itself have the stamps
//! (inode, size, times) they had when the running config read them, and
//! none of its devices reads anything beyond its YAML (a session of its own
//! with password or PEM files, an OPC-UA user's password file, a profile).
//! Anything else is read again, as is everything on SIGHUP.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::load::Taken;
use super::resolved::{DeviceSettings, Resolved};
use super::sources::Stamp;
use super::types::DriverKind;

/// The devices a reload may take over, by included file (its label as in
/// error lines). Empty: read everything.
#[derive(Debug, Clone, Default)]
pub struct Reuse {
    files: HashMap<String, (Stamp, Vec<Arc<DeviceSettings>>)>,
}

impl Reuse {
    /// What a reload of `main` may take over from `current`, the running
    /// config; `now(path)` is the stamp of a file now.
    pub fn new(current: &Resolved, main: &Path, now: impl Fn(&Path) -> Option<Stamp>) -> Reuse {
        let sources = &current.sources;
        // The stamp a file had when `current` read it, if it still has it.
        let unchanged = |p: &Path| sources.stamp_of(p).filter(|then| now(p) == Some(*then));
        if unchanged(main).is_none() {
            return Reuse::default();
        }
        let file_of: HashMap<&str, &str> = sources
            .device_files
            .iter()
            .map(|(d, f)| (d.as_str(), f.as_str()))
            .collect();
        let with_profile: HashSet<&str> = sources
            .profiles
            .iter()
            .map(|(d, _, _)| d.as_str())
            .collect();
        let mut files: HashMap<String, Vec<Arc<DeviceSettings>>> = HashMap::new();
        let mut refused: HashSet<&str> = HashSet::new();
        for d in &current.devices {
            let Some(file) = file_of.get(d.name.as_str()) else {
                continue;
            };
            let reads_more = d.session != 0
                || d.driver == DriverKind::Opcua
                || with_profile.contains(d.name.as_str());
            if reads_more {
                refused.insert(file);
            } else {
                files.entry(file.to_string()).or_default().push(d.clone());
            }
        }
        let files = sources
            .files
            .iter()
            .filter_map(|p| {
                let label = p.display().to_string();
                if refused.contains(label.as_str()) {
                    return None;
                }
                let stamp = unchanged(p)?;
                let devices = files.remove(&label)?;
                Some((label, (stamp, devices)))
            })
            .collect();
        Reuse { files }
    }

    /// The stamp and the devices of included file `label`, when they are
    /// taken over.
    pub(super) fn take(&mut self, label: &str) -> Option<(Stamp, Vec<Arc<DeviceSettings>>)> {
        self.files.remove(label)
    }

    /// True when nothing is taken over.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// How many included files are taken over.
    pub fn files(&self) -> usize {
        self.files.len()
    }
}

/// The devices in the order of a full read: the main file's, then each
/// included file's (read now or taken over). `files[i]` is the file of
/// `read[i]`.
pub(super) fn in_file_order(
    main: &str,
    read: Vec<Arc<DeviceSettings>>,
    files: Vec<String>,
    taken: Taken,
) -> Vec<Arc<DeviceSettings>> {
    let mut by_file: HashMap<String, Vec<Arc<DeviceSettings>>> = taken.files.into_iter().collect();
    for (d, f) in read.into_iter().zip(files) {
        by_file.entry(f).or_default().push(d);
    }
    let mut out = by_file.remove(main).unwrap_or_default();
    for label in &taken.order {
        out.extend(by_file.remove(label).unwrap_or_default());
    }
    // Every device's file is the main one or an included one; should one
    // not be, it still runs (after the others, in a stable order).
    let mut rest: Vec<_> = by_file.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    out.extend(rest.into_iter().flat_map(|(_, list)| list));
    out
}
