//! The ledger's truncation guard.

use std::path::Path;
use std::sync::Mutex;

use super::damage::guarded;
use super::{SledStore, decode_u64};
use crate::ledger::StoreError;

/// The truncation guard's file in the data directory. sled opens a truncated or partly
/// overwritten log as whatever prefix it can read, silently: a ledger that lost its recent
/// writes, or all of them, would serve smaller totals without a word. The guard remembers
/// how far the high-water marks had got (they only grow), and a ledger behind it is refused.
pub const GUARD_FILE: &str = "flopmeter-ledger-guard";

/// How often, at most, a flush rewrites the guard.
const GUARD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The guard's file and what it is computed from.
#[derive(Debug)]
pub(super) struct GuardState {
    pub(super) path: std::path::PathBuf,
    /// Set once the ledger passed its checks at open; until then nothing is written.
    pub(super) armed: std::sync::atomic::AtomicBool,
    pub(super) written: Mutex<Option<std::time::Instant>>,
    pub(super) db: sled::Db,
    pub(super) hwm: sled::Tree,
}

impl GuardState {
    /// What the guard records now: the high-water marks only ever grow.
    fn now(&self) -> Result<Guard, StoreError> {
        let mut g = Guard::default();
        for v in self.hwm.iter().values() {
            g.agents += 1;
            g.high_water_sum += u128::from(decode_u64(&v?)?);
        }
        Ok(g)
    }

    /// Flushes sled and moves the guard, at most every [`GUARD_EVERY`] unless `force`. The
    /// high-water marks are read *before* the flush, so everything the guard counts is
    /// durable when it is written, whichever thread flushes and whatever is applied
    /// meanwhile: the guard is never ahead of the disk. A guard failure only weakens the
    /// check: logged.
    pub(super) fn flush(&self, force: bool) -> Result<(), sled::Error> {
        let due = self.armed.load(std::sync::atomic::Ordering::SeqCst) && {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let due = force || written.is_none_or(|t| t.elapsed() >= GUARD_EVERY);
            if due {
                *written = Some(std::time::Instant::now());
            }
            due
        };
        let snapshot = due.then(|| self.now());
        self.db.flush()?;
        let r = match snapshot {
            None => return Ok(()),
            Some(g) => g
                .map_err(|e| e.to_string())
                .and_then(|g| g.write(&self.path).map_err(|e| e.to_string())),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot update the ledger's truncation guard");
        }
        Ok(())
    }
}

impl Drop for GuardState {
    fn drop(&mut self) {
        // The last handle on the ledger: what is flushed now is what the next open must find.
        let _ = self.flush(true);
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Guard {
    agents: u64,
    high_water_sum: u128,
}

impl Guard {
    fn read(path: &Path) -> Option<Guard> {
        let text = std::fs::read_to_string(path).ok()?;
        let (a, s) = text.trim().split_once(' ')?;
        Some(Guard {
            agents: a.parse().ok()?,
            high_water_sum: s.parse().ok()?,
        })
    }

    /// Temporary file, fsync, rename: a torn write leaves the old value.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{} {}", self.agents, self.high_water_sum)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

impl SledStore {
    /// Refuses a ledger behind its truncation guard ([`GUARD_FILE`]) with
    /// [`StoreError::Damaged`].
    pub fn check_guard(&self, dir: &Path) -> Result<(), StoreError> {
        let guard = &self.guard.path;
        if let Some(had) = Guard::read(guard) {
            let now = guarded(dir, || self.guard.now())??;
            if now.high_water_sum < had.high_water_sum || now.agents < had.agents {
                return Err(StoreError::Damaged {
                    dir: dir.to_path_buf(),
                    detail: format!(
                        "its high-water marks sum to {} over {} agent(s), but had reached {} \
                         over {} ({GUARD_FILE}): its files were truncated or replaced by an \
                         older copy, so records acknowledged to agents are missing (if you \
                         restored sled's files from a backup on purpose, delete {} to accept \
                         them)",
                        now.high_water_sum,
                        now.agents,
                        had.high_water_sum,
                        had.agents,
                        guard.display()
                    ),
                });
            }
        }
        Ok(())
    }
}
