//! Waiting for a config file written in place to stop changing before it is
//! read. Editors save by writing a temp file and renaming it over the old
//! one, which is atomic; a copy (scp, SMB, `rsync --inplace`) writes the
//! same file piece by piece, and a prefix of a config can parse (a device
//! list cut short, `unitId: 1` cut from `17`). Such a file is read only once
//! its size, time and identity have not changed for `gateway.reload.settle`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

/// A file waits at most this long to settle; then it is read as it is (a
/// file that never stops changing is no config being saved).
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a settling file is looked at.
const POLL: Duration = Duration::from_millis(50);

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The stamp of the file at `path` (following symlinks), `None` if it
/// cannot be read.
pub async fn stamp(path: &Path) -> Option<Stamp> {
    let m = tokio::fs::metadata(path).await.ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// Returns once the file at `path` can be read: at once when it is another
/// file than `loaded` (it was replaced by a rename: complete by
/// construction), else once it has stayed unchanged for `settle`.
pub async fn settled(path: PathBuf, loaded: Option<Stamp>, settle: Duration) {
    let path = path.as_path();
    let Some(mut last) = stamp(path).await else {
        return; // gone or unreadable: the load reports it
    };
    let replaced = loaded.is_none_or(|l| (l.dev, l.ino) != (last.dev, last.ino));
    if replaced || settle.is_zero() {
        return;
    }
    let started = Instant::now();
    let mut quiet_since = started;
    let mut waited = false;
    while quiet_since.elapsed() < settle && started.elapsed() < MAX_WAIT {
        tokio::time::sleep(POLL.min(settle)).await;
        let now = stamp(path).await;
        if now != Some(last) {
            match now {
                Some(s) => last = s,
                None => return,
            }
            quiet_since = Instant::now();
            if !waited {
                tracing::info!(
                    "config file is still being written: reading it once it has not changed for {}",
                    humantime::format_duration(settle)
                );
                waited = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replaced_file_needs_no_wait_and_an_unchanged_one_waits_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "a").unwrap();
        let first = stamp(&path).await;
        let tmp = dir.path().join("c.yaml.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(stamp(&path).await.map(|s| s.ino), first.map(|s| s.ino));
        // Replaced: returns without waiting even with a long settle time.
        tokio::time::timeout(
            Duration::from_secs(5),
            settled(path.clone(), first, MAX_WAIT),
        )
        .await
        .expect("a replaced file is read at once");
        // Written in place: waits at least the settle time.
        let loaded = stamp(&path).await;
        std::fs::write(&path, "c").unwrap();
        let t = Instant::now();
        settled(path.clone(), loaded, Duration::from_millis(200)).await;
        assert!(t.elapsed() >= Duration::from_millis(200));
    }
}
