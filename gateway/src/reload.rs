//! Config file watching: watches the config file's directory (editors save
//! by writing a temp file and renaming; symlinks get swapped), debounces a
//! burst of events into one trigger, and fires only when the file's content
//! actually changed.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Quiet time after the last event before a reload.
const QUIET: Duration = Duration::from_millis(150);
/// A burst of events never delays a reload longer than this.
const MAX_DELAY: Duration = Duration::from_millis(600);

/// A fingerprint of the config file's bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A running watcher; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    /// Fires (debounced) when something in the config's directory changed.
    pub changed: mpsc::Receiver<()>,
}

/// Watches the directory holding `config`. Errors (e.g. the directory does
/// not exist) are returned so start-up can log them; the daemon then runs
/// without watching and still reloads on SIGHUP.
pub fn watch(config: &Path) -> notify::Result<ConfigWatcher> {
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (raw_tx, raw_rx) = mpsc::channel::<()>(64);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            Ok(ev) if ev.kind.is_access() => {}
            Ok(_) => {
                // A full channel already holds a pending trigger.
                let _ = raw_tx.try_send(());
            }
            Err(e) => tracing::warn!("config watcher: {e}"),
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (tx, changed) = mpsc::channel(1);
    tokio::spawn(debounce(raw_rx, tx));
    Ok(ConfigWatcher {
        _watcher: watcher,
        changed,
    })
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

    #[test]
    fn hash_changes_with_content() {
        assert_eq!(content_hash(b"a: 1"), content_hash(b"a: 1"));
        assert_ne!(content_hash(b"a: 1"), content_hash(b"a: 2"));
    }

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
