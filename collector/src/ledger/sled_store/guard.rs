//! The ledger's truncation guard and its flushes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flopmeter_durable::{Flusher, GuardFile};

use super::damage::guarded;
use super::{SledStore, decode_u64};
use crate::ledger::{LedgerDamage, StoreError};

/// The truncation guard's file in the data directory. sled opens a truncated or partly
/// overwritten log as whatever prefix it can read, silently: a ledger that lost its recent
/// writes, or all of them, would serve smaller totals without a word. The guard remembers
/// how far the high-water marks had got (they only grow), and a ledger behind it is refused.
pub const GUARD_FILE: &str = "flopmeter-ledger-guard";

/// How often, at most, a flush rewrites the guard.
const GUARD_EVERY: Duration = Duration::from_secs(10);

/// Every flush of the ledger, and the guard it moves.
#[derive(Debug)]
pub(super) struct GuardState {
    pub(super) file: GuardFile,
    /// Set once the ledger passed its checks at open; until then nothing is written.
    pub(super) armed: AtomicBool,
    pub(super) written: Mutex<Option<Instant>>,
    /// The durability rule: after a failed flush, none is trusted until restart.
    pub(super) flusher: Arc<Flusher>,
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
    /// meanwhile; and it is written only after a flush the durability rule trusts: the
    /// guard is never ahead of the disk. A guard failure only weakens the check: logged.
    pub(super) fn flush(&self, force: bool) -> Result<(), StoreError> {
        let due = self.armed.load(Ordering::SeqCst) && {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let due = force || written.is_none_or(|t| t.elapsed() >= GUARD_EVERY);
            if due {
                *written = Some(Instant::now());
            }
            due
        };
        let snapshot = due.then(|| self.now());
        self.flusher
            .flush()
            .map_err(|e| StoreError::Storage(Box::new(e)))?;
        match snapshot {
            Some(Ok(g)) => self.file.record(g),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot compute the ledger's truncation guard")
            }
            None => {}
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

/// What the guard file holds: `<agents> <sum of high-water marks>`.
#[derive(Debug, Default, Clone, Copy)]
struct Guard {
    agents: u64,
    high_water_sum: u128,
}

impl std::fmt::Display for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.agents, self.high_water_sum)
    }
}

impl std::str::FromStr for Guard {
    type Err = ();

    fn from_str(s: &str) -> Result<Guard, ()> {
        let (a, s) = s.split_once(' ').ok_or(())?;
        Ok(Guard {
            agents: a.parse().map_err(drop)?,
            high_water_sum: s.parse().map_err(drop)?,
        })
    }
}

impl SledStore {
    /// Refuses a ledger behind its truncation guard ([`GUARD_FILE`]) with
    /// [`StoreError::Damaged`].
    pub fn check_guard(&self, dir: &Path) -> Result<(), StoreError> {
        let file = &self.guard.file;
        if let Some(had) = file.read::<Guard>() {
            let now = guarded(dir, || self.guard.now())??;
            if now.high_water_sum < had.high_water_sum || now.agents < had.agents {
                return Err(StoreError::Damaged {
                    dir: dir.to_path_buf(),
                    cause: LedgerDamage::BehindGuard {
                        sum: now.high_water_sum,
                        agents: now.agents,
                        had_sum: had.high_water_sum,
                        had_agents: had.agents,
                        guard: file.path().to_path_buf(),
                    },
                });
            }
        }
        Ok(())
    }
}
