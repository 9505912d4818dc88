//! Waiting for a config file written in place to stop changing before it is
//! read. Editors save by writing a temp file and renaming it over the old
//! one, which is atomic; a copy (scp, SMB, `rsync --inplace`) writes the
//! same file piece by piece, and a prefix of a config can parse (a device
//! list cut short, `unitId: 1` cut from `17`). Such a file is read only once
//! its size, time and identity have not changed for `gateway.reload.settle`.
//! The rule covers every file a config is read from: the main file, the
//! files pulled in by `include:` (and files newly matching its globs), and
//! local profile files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::sources::Sources;

/// A file waits at most this long to settle; then it is read as it is (a
/// file that never stops changing is no config being saved).
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a settling file is looked at.
const POLL: Duration = Duration::from_millis(50);

pub(crate) use crate::config::sources::Stamp;

/// The stamp of the file at `path` (following symlinks), `None` if it
/// cannot be read.
pub(crate) async fn stamp(path: &Path) -> Option<Stamp> {
    tokio::fs::metadata(path).await.ok().map(|m| Stamp::of(&m))
}

/// The stamps of the files a config was read from, taken before it was
/// read (a change during the load is seen at the next one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    files: Vec<(PathBuf, Option<Stamp>)>,
}

impl Loaded {
    /// Stamps `main`, the included and profile files of `sources`, and
    /// every file an `include:` glob matches now.
    pub(crate) async fn take(main: &Path, sources: &Sources) -> Self {
        let mut files = Vec::new();
        for path in files_of(main, sources).await {
            let s = stamp(&path).await;
            files.push((path, s));
        }
        Self { files }
    }

    /// The stamp of `path` when these were taken.
    pub(crate) fn get(&self, path: &Path) -> Option<Stamp> {
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, s)| *s)
    }
}

/// The main file, then the files of `sources` and the current matches of
/// its globs, each once.
async fn files_of(main: &Path, sources: &Sources) -> Vec<PathBuf> {
    let globs = sources.include_globs.clone();
    // Listing directories is blocking I/O: off the runtime's workers.
    let matched = tokio::task::spawn_blocking(move || {
        globs
            .iter()
            .filter_map(|g| crate::config::include::matches(g).ok())
            .flatten()
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut out = vec![main.to_path_buf()];
    for p in sources.files.iter().cloned().chain(matched) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Returns once the file at `path` can be read: at once when it is another
/// file than `loaded` (it was replaced by a rename: complete by
/// construction), else once it has stayed unchanged for `settle`.
#[cfg(test)]
pub(crate) async fn settled(path: PathBuf, loaded: Option<Stamp>, settle: Duration) {
    let loaded = Loaded {
        files: vec![(path.clone(), loaded)],
    };
    settled_all(path, &Sources::default(), loaded, settle).await;
}

/// Returns once every file of the config can be read: the main file, the
/// files of `sources` and the files its `include:` globs match now. Each
/// must be complete: a file replaced by a rename is; one written in place
/// since `loaded` (same file, other stamp), or an included file that was
/// not there when the config was loaded (it may be a copy in progress),
/// makes the whole set wait until no file of it has changed for `settle`.
pub(crate) async fn settled_all(
    main: PathBuf,
    sources: &Sources,
    loaded: Loaded,
    settle: Duration,
) {
    let files = files_of(&main, sources).await;
    let mut last = Vec::with_capacity(files.len());
    for p in &files {
        last.push(stamp(p).await);
    }
    let in_place = files.iter().zip(&last).any(|(p, now)| {
        let Some(now) = now else {
            return false; // gone or unreadable: the load reports it
        };
        match loaded.get(p) {
            Some(l) => l != *now && l.same_file(now),
            // The main file unknown before: read at once (as it was).
            None => *p != main,
        }
    });
    if !in_place || settle.is_zero() {
        return;
    }
    let started = Instant::now();
    let mut quiet_since = started;
    let mut waited = false;
    while quiet_since.elapsed() < settle && started.elapsed() < MAX_WAIT {
        tokio::time::sleep(POLL.min(settle)).await;
        let mut changed = false;
        for (p, was) in files.iter().zip(last.iter_mut()) {
            let now = stamp(p).await;
            if now != *was {
                *was = now;
                changed = true;
            }
        }
        if changed {
            quiet_since = Instant::now();
            if !waited {
                tracing::info!(
                    "config file is still being written: reading the config once none of its files has changed for {}",
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
        let (now, was) = (stamp(&path).await.unwrap(), first.unwrap());
        assert!(!now.same_file(&was));
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

    #[tokio::test]
    async fn an_included_file_written_in_place_makes_the_set_wait() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("c.yaml");
        let inc = dir.path().join("more.yaml");
        std::fs::write(&main, "a").unwrap();
        std::fs::write(&inc, "b").unwrap();
        let sources = Sources {
            files: vec![inc.clone()],
            include_globs: vec![format!("{}/*.inc", dir.path().display())],
            ..Sources::default()
        };
        let loaded = Loaded::take(&main, &sources).await;
        // Nothing changed: no wait.
        tokio::time::timeout(
            Duration::from_secs(5),
            settled_all(main.clone(), &sources, loaded.clone(), MAX_WAIT),
        )
        .await
        .expect("unchanged files are read at once");
        // The included file written in place: the set waits.
        std::fs::write(&inc, "bb").unwrap();
        let t = Instant::now();
        settled_all(
            main.clone(),
            &sources,
            loaded.clone(),
            Duration::from_millis(200),
        )
        .await;
        assert!(t.elapsed() >= Duration::from_millis(200));
        // A file newly matching a glob: the set waits too.
        let loaded = Loaded::take(&main, &sources).await;
        std::fs::write(dir.path().join("new.inc"), "c").unwrap();
        let t = Instant::now();
        settled_all(main.clone(), &sources, loaded, Duration::from_millis(200)).await;
        assert!(t.elapsed() >= Duration::from_millis(200));
    }
}
