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
        let unchanged = |p: &Path| {
            let then = sources.stamp_of(p);
            then.is_some() && then == now(p)
        };
        if !unchanged(main) {
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
                if refused.contains(label.as_str()) || !unchanged(p) {
                    return None;
                }
                let stamp = sources.stamp_of(p)?;
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
/// included file's (read now or taken over).
pub(super) fn in_file_order(
    main: &str,
    read: Vec<Arc<DeviceSettings>>,
    files: Vec<String>,
    taken: Taken,
) -> Vec<Arc<DeviceSettings>> {
    let mut by_file: Vec<(String, Vec<Arc<DeviceSettings>>)> = Vec::new();
    for (d, f) in read.into_iter().zip(files) {
        match by_file.last_mut() {
            Some((last, list)) if *last == f => list.push(d),
            _ => by_file.push((f, vec![d])),
        }
    }
    let mut groups: Vec<(String, Vec<Arc<DeviceSettings>>)> = taken.files;
    groups.append(&mut by_file);
    let mut out = Vec::new();
    let mut take = |label: &str, out: &mut Vec<Arc<DeviceSettings>>| {
        while let Some(i) = groups.iter().position(|(f, _)| f == label) {
            out.append(&mut groups.remove(i).1);
        }
    };
    take(main, &mut out);
    for label in &taken.order {
        take(label, &mut out);
    }
    for (_, mut rest) in groups {
        out.append(&mut rest);
    }
    out
}
