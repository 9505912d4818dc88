//! The birth/death sequence number (`bdSeq`): one step (mod 256) per MQTT
//! CONNECT, kept across restarts in a small file in the state directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};

/// No connection attempted yet since start (the stored value is the last one used).
const NONE_YET: u16 = u16::MAX;

/// The `bdSeq` of the current (or last) connection of one edge node.
#[derive(Debug)]
pub(crate) struct BdSeq {
    file: PathBuf,
    /// The value used by the last CONNECT, or [`NONE_YET`].
    current: AtomicU16,
    /// The value stored when the gateway started (`None`: no file).
    stored: Option<u8>,
}

impl BdSeq {
    /// Reads the last used value from `file` (absent or unreadable: none).
    pub(crate) fn load(file: PathBuf) -> Self {
        let stored = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok());
        Self {
            file,
            current: AtomicU16::new(NONE_YET),
            stored,
        }
    }

    /// The value for a new CONNECT: the previous one plus one (mod 256), 0
    /// when none was ever used. Stored before it is used, so a crash never
    /// reuses a value.
    pub(crate) fn advance(&self) -> u8 {
        let prev = match self.current.load(Ordering::Acquire) {
            NONE_YET => self.stored.map(|s| s as u16),
            v => Some(v),
        };
        let next = prev.map_or(0, |p| ((p + 1) % 256) as u8);
        self.current.store(u16::from(next), Ordering::Release);
        // A few bytes into the page cache: no fsync, it does not block.
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.file.with_extension("tmp");
        let stored = std::fs::write(&tmp, format!("{next}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.file));
        if let Err(e) = stored {
            tracing::warn!(
                file = %self.file.display(),
                "cannot store the Sparkplug bdSeq ({e}); after a restart it may repeat"
            );
        }
        next
    }

    /// The value of the current connection (what the will carries).
    pub(crate) fn current(&self) -> u8 {
        match self.current.load(Ordering::Acquire) {
            NONE_YET => self.stored.unwrap_or(0),
            v => v as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_zero_steps_by_one_wraps_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sparkplug").join("node.bdseq");
        let b = BdSeq::load(file.clone());
        assert_eq!(b.advance(), 0);
        assert_eq!(b.current(), 0);
        assert_eq!(b.advance(), 1);
        // A restart continues after the stored value.
        let b = BdSeq::load(file.clone());
        assert_eq!(b.current(), 1);
        assert_eq!(b.advance(), 2);
        std::fs::write(&file, "255\n").unwrap();
        let b = BdSeq::load(file);
        assert_eq!(b.advance(), 0, "255 + 1 wraps to 0");
    }
}
