//! Truncation guards.

use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use crate::atomic::{Access, write_atomic};

/// A one-line file beside a database recording how far its durable state had got (the
/// spool: the next sequence number; the ledger: its high-water marks). On open the store
/// compares what it holds with it and refuses to open when it holds less: sled reads a
/// truncated log as a shorter one without a word.
///
/// It is written with [`write_atomic`] only after a flush that succeeded under the
/// durability rule ([`crate::Flusher`]), from a value the flush covered, so it is never ahead
/// of the disk. A guard that cannot be written only weakens the check, so a failure is
/// logged, not returned.
#[derive(Debug)]
pub struct GuardFile {
    path: PathBuf,
    /// What it guards, for log lines ("spool", "ledger").
    what: &'static str,
    /// Serializes writers (they share the temporary file's name).
    writing: Mutex<()>,
}

impl GuardFile {
    /// The guard `name` in `dir`.
    pub fn new(dir: &Path, name: &str, what: &'static str) -> GuardFile {
        GuardFile {
            path: dir.join(name),
            what,
            writing: Mutex::new(()),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded value. A missing guard (a store from before guards, or a new one) reads
    /// as `None`; so does one that does not parse (a torn write on a file system that does
    /// not keep renames atomic), with a warning: the guard only adds a check.
    pub fn read<T: FromStr>(&self) -> Option<T> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot read the {}'s truncation guard", self.what);
                return None;
            }
        };
        let value = text.trim().parse().ok();
        if value.is_none() {
            tracing::warn!(path = %self.path.display(), "the {}'s truncation guard does not parse: ignored", self.what);
        }
        value
    }

    /// Records `value` (call only after a successful flush that covered it).
    pub fn record(&self, value: impl Display) {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = write_atomic(&self.path, format!("{value}\n").as_bytes(), Access::Shared) {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot update the {}'s truncation guard", self.what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_recorded_and_none_when_missing_or_garbled() {
        let dir = tempfile::tempdir().unwrap();
        let g = GuardFile::new(dir.path(), "guard", "test store");
        assert_eq!(g.read::<u64>(), None);
        g.record(42u64);
        assert_eq!(g.read::<u64>(), Some(42));
        std::fs::write(g.path(), "4x\n").unwrap();
        assert_eq!(g.read::<u64>(), None);
    }
}
