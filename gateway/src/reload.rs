//! Config file watching: watches the config file's directory (editors save
//! by writing a temp file and renaming; symlinks get swapped), debounces a
//! burst of events into one trigger, and fires only when the file's content
//! actually changed.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

pub(crate) mod probation;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Quiet time after the last event before a reload.
const QUIET: Duration = Duration::from_millis(150);
/// A burst of events never delays a reload longer than this.
const MAX_DELAY: Duration = Duration::from_millis(600);

/// A running watcher; dropping it stops watching.
pub(crate) struct ConfigWatcher {
    watcher: notify::RecommendedWatcher,
    /// The included files, profiles and `include:` globs being watched.
    extra: Arc<Mutex<Extra>>,
    /// Directories watched for them (besides the config's own).
    extra_dirs: Vec<PathBuf>,
    /// The config's own directory (absolute), watched from the start.
    main_dir: PathBuf,
    /// Fires (debounced) when something in the config's directory changed.
    pub changed: mpsc::Receiver<()>,
}

/// What else than the main file can change the config: files read for it
/// (included files, local profiles) and the `include:` patterns, whose new
/// matches count too. Paths are absolute.
#[derive(Default)]
struct Extra {
    files: Vec<PathBuf>,
    globs: Vec<glob::Pattern>,
}

impl Extra {
    fn matches(&self, p: &Path) -> bool {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        self.files.iter().any(|f| f == p) || self.globs.iter().any(|g| g.matches_path_with(p, opts))
    }
}

/// `p` made absolute against the working directory, without resolving links.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The directory a glob pattern's matches live under (its components before
/// the first one with a wildcard), and whether matches can be deeper.
fn glob_base(pattern: &str) -> (PathBuf, bool) {
    let mut base = PathBuf::new();
    let comps: Vec<&str> = pattern.split('/').collect();
    for (i, c) in comps.iter().enumerate() {
        if c.contains(['*', '?', '[']) {
            // Wildcards only in the last component: one directory.
            return (base, i + 1 < comps.len());
        }
        if i + 1 == comps.len() {
            break;
        }
        base.push(if c.is_empty() && i == 0 { "/" } else { c });
    }
    (base, false)
}

impl ConfigWatcher {
    /// Watches what `sources` names besides the main file: the directory of
    /// each included or profile file, and the base directory of each
    /// `include:` glob (so a file that starts matching is noticed).
    pub(crate) fn set_sources(&mut self, sources: &crate::config::sources::Sources) {
        let mut extra = Extra::default();
        let mut dirs: Vec<(PathBuf, RecursiveMode)> = Vec::new();
        for f in &sources.files {
            let f = absolute(f);
            if let Some(d) = f.parent() {
                dirs.push((d.to_path_buf(), RecursiveMode::NonRecursive));
            }
            extra.files.push(f);
        }
        for g in &sources.include_globs {
            let abs = absolute(Path::new(g)).display().to_string();
            let (base, deep) = glob_base(&abs);
            if let Ok(p) = glob::Pattern::new(&abs) {
                extra.globs.push(p);
            }
            let mode = if deep {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            dirs.push((base, mode));
        }
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        dirs.dedup_by(|a, b| a.0 == b.0);
        for d in std::mem::take(&mut self.extra_dirs) {
            let _ = self.watcher.unwatch(&d);
        }
        for (d, mode) in dirs {
            // A glob's directory that does not exist yet is watched once a
            // reload (SIGHUP, or an edit of the config) finds it.
            if !d.is_dir() {
                tracing::debug!("not watching {}: not a directory (yet)", d.display());
                continue;
            }
            // The config's own directory is watched already; watching it
            // again would share (and later unwatch) the same watch.
            if d == self.main_dir {
                if matches!(mode, RecursiveMode::Recursive) {
                    let _ = self.watcher.watch(&d, mode);
                }
                continue;
            }
            match self.watcher.watch(&d, mode) {
                Ok(()) => self.extra_dirs.push(d),
                Err(e) => tracing::warn!("not watching {} for config changes: {e}", d.display()),
            }
        }
        if let Ok(mut x) = self.extra.lock() {
            *x = extra;
        }
    }
}

/// A fingerprint of everything the config was assembled from: the main
/// file, the files each `include:` glob matches now (names and bytes) and
/// the other files read (local profiles). `None` if the main file cannot be
/// read.
pub(crate) fn sources_hash(
    config: &Path,
    sources: &crate::config::sources::Sources,
) -> Option<String> {
    use crate::config::{include, read_limited, tree::MAX_CONFIG_BYTES};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    read_limited(config, MAX_CONFIG_BYTES as u64)
        .ok()?
        .hash(&mut h);
    let mut files: Vec<PathBuf> = sources.files.clone();
    for g in &sources.include_globs {
        files.extend(include::matches(g).unwrap_or_default());
    }
    files.sort();
    files.dedup();
    for f in files {
        f.hash(&mut h);
        read_limited(&f, MAX_CONFIG_BYTES as u64).ok().hash(&mut h);
    }
    Some(format!("{:016x}", h.finish()))
}

/// Watches the directory holding `config`. Errors (e.g. the directory does
/// not exist) are returned so start-up can log them; the daemon then runs
/// without watching and still reloads on SIGHUP.
pub(crate) fn watch(config: &Path) -> notify::Result<ConfigWatcher> {
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let config = config.to_path_buf();
    let extra = Arc::new(Mutex::new(Extra::default()));
    let seen_extra = extra.clone();
    let main_dir = absolute(&dir);
    let own_dir = main_dir.clone();
    let (raw_tx, raw_rx) = mpsc::channel::<()>(64);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(ev) => {
                // Looked up per event: the file may have become a symlink
                // (or another one) since the watch started.
                let relevant = relevant_names(&config);
                let touches_config = ev.paths.iter().any(|p| {
                    let in_dir = p.parent().is_some_and(|d| absolute(d) == own_dir);
                    in_dir
                        && p.file_name()
                            .is_some_and(|n| relevant.iter().any(|r| r.as_os_str() == n))
                }) || seen_extra
                    .lock()
                    .is_ok_and(|x| ev.paths.iter().any(|p| x.matches(&absolute(p))));
                if touches_config {
                    // A full channel already holds a pending trigger.
                    let _ = raw_tx.try_send(());
                }
            }
            Err(e) => tracing::warn!("config watcher: {e}"),
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (tx, changed) = mpsc::channel(1);
    tokio::spawn(debounce(raw_rx, tx));
    Ok(ConfigWatcher {
        watcher,
        extra,
        extra_dirs: Vec::new(),
        main_dir,
        changed,
    })
}

/// Names in the config's directory whose change can change the config: the
/// file itself and, when it is a relative symlink, the first component of
/// its target (Kubernetes-style `config.yaml -> ..data/config.yaml`, where
/// `..data` is the link that gets swapped).
fn relevant_names(config: &Path) -> Vec<PathBuf> {
    let mut names = Vec::new();
    if let Some(name) = config.file_name() {
        names.push(PathBuf::from(name));
    }
    if let Ok(target) = std::fs::read_link(config) {
        if target.is_relative() {
            if let Some(first) = target.components().next() {
                names.push(PathBuf::from(first.as_os_str()));
            }
        }
    }
    names
}

/// Turns bursts of raw events into single triggers.
async fn debounce(mut raw: mpsc::Receiver<()>, out: mpsc::Sender<()>) {
    while raw.recv().await.is_some() {
        let first = Instant::now();
        loop {
            let quiet_until = Instant::now() + QUIET;
            let deadline = quiet_until.min(first + MAX_DELAY);
            match tokio::time::timeout_at(deadline, raw.recv()).await {
                Ok(Some(())) if Instant::now() < first + MAX_DELAY => continue,
                Ok(None) => return,
                _ => break,
            }
        }
        if out.send(()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_events_is_one_trigger() {
        let (raw_tx, raw_rx) = mpsc::channel(64);
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(debounce(raw_rx, tx));
        for _ in 0..10 {
            raw_tx.send(()).await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("one trigger")
            .unwrap();
        // Nothing more comes for that burst.
        drop(raw_tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn other_files_in_the_directory_do_not_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let mut w = watch(&path).unwrap();
        std::fs::write(dir.path().join("gateway.log"), "busy\n").unwrap();
        // Then a real change: the only trigger is for the config.
        std::fs::write(&path, "a: 2\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), w.changed.recv())
            .await
            .expect("a trigger for the config")
            .unwrap();
        assert!(w.changed.try_recv().is_err());
    }

    #[test]
    fn symlink_chain_names_are_relevant() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("..2026_11_22")).unwrap();
        std::fs::write(dir.path().join("..2026_11_22/config.yaml"), "a: 1\n").unwrap();
        std::os::unix::fs::symlink("..2026_11_22", dir.path().join("..data")).unwrap();
        let link = dir.path().join("config.yaml");
        std::os::unix::fs::symlink("..data/config.yaml", &link).unwrap();
        let names = relevant_names(&link);
        assert_eq!(
            names,
            vec![PathBuf::from("config.yaml"), PathBuf::from("..data")]
        );
    }

    #[tokio::test]
    async fn rename_save_in_the_directory_triggers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let mut w = watch(&path).unwrap();
        let tmp = dir.path().join(".config.yaml.swp");
        std::fs::write(&tmp, "a: 2\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), w.changed.recv())
            .await
            .expect("a trigger after a rename-save")
            .unwrap();
    }
}
