//! The high-water marks that are on disk, apart from the ones that are only in memory.
//!
//! Why this exists: an agent deletes from its spool everything at or below the mark a Welcome
//! or an Ack names. The store's own mark ([`LedgerStore::high_water_mark`]) includes
//! transactions committed in memory and not yet flushed; a Welcome that named it while a
//! commit group was flushing, followed by a crash before the flush completed, made agents
//! delete records the restarted collector no longer had (issue 12, reproduced 10 times out
//! of 10 with 20,000-record batches).
//!
//! So the writer, and only the writer, moves these marks, and only after the flush that made
//! them durable returned; every message that lets an agent delete (Welcome, Ack) reads them
//! here. A mark can lag the store's (the agent then resends records the collector already
//! has, which are acknowledged and ignored as duplicates), never lead it.
//!
//! **A shared ledger** (PostgreSQL, several collectors): an agent may have sent batches to
//! another replica since this one last saw it, so the mark cached here may be far behind.
//! There a committed write is durable, so the store's mark is a durable mark, and a Hello
//! reads it afresh ([`DurableMarks::at_hello`]); a Welcome never names a mark older than the
//! ledger's, which would make the agent resend what it need not.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::ledger::{LedgerStore, StoreError};

/// Per agent, the highest sequence number known to be on disk.
#[derive(Debug, Default)]
pub struct DurableMarks {
    marks: RwLock<HashMap<String, u64>>,
    /// On a shared ledger, the store, whose committed marks are durable.
    shared: Option<Arc<dyn LedgerStore>>,
}

impl DurableMarks {
    /// Flushes the store, then reads every agent's mark: what a flush has just covered is on
    /// disk, whatever the previous process left in sled's buffers.
    pub fn load(store: &dyn LedgerStore) -> Result<DurableMarks, StoreError> {
        store.flush()?;
        let marks = store.high_water_marks()?.into_iter().collect();
        Ok(DurableMarks {
            marks: RwLock::new(marks),
            shared: None,
        })
    }

    /// [`DurableMarks::load`] for a ledger other collectors write too, where every committed
    /// write is durable: Hellos read the agent's mark from `store` afresh.
    pub fn load_shared(store: Arc<dyn LedgerStore>) -> Result<DurableMarks, StoreError> {
        Ok(DurableMarks {
            shared: Some(store.clone()),
            ..DurableMarks::load(store.as_ref())?
        })
    }

    /// The mark a Welcome names: the durable mark; on a shared ledger the store's, read now
    /// (off the async runtime), which also moves the cached one.
    pub async fn at_hello(&self, agent: &str) -> Result<u64, StoreError> {
        if let Some(store) = &self.shared {
            let (store, name) = (store.clone(), agent.to_string());
            let mark = tokio::task::spawn_blocking(move || store.high_water_mark(&name))
                .await
                .map_err(|e| StoreError::Storage(Box::new(e)))??;
            self.advance(agent, mark);
        }
        Ok(self.get(agent))
    }

    /// The agent's durable mark (0 = nothing of it is on disk).
    pub fn get(&self, agent: &str) -> u64 {
        self.read().get(agent).copied().unwrap_or(0)
    }

    /// `mark` if it is durable, else the durable mark: what an agent may be told it can
    /// delete through.
    pub fn clamp(&self, agent: &str, mark: u64) -> u64 {
        mark.min(self.get(agent))
    }

    /// Records that `mark` is on disk for `agent`. Only the ledger writer calls this, after
    /// the flush that covered it returned. Marks never move back.
    pub(crate) fn advance(&self, agent: &str, mark: u64) {
        let mut m = self.marks.write().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(agent) {
            Some(v) => *v = (*v).max(mark),
            None if mark > 0 => {
                m.insert(agent.to_string(), mark);
            }
            None => {}
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, u64>> {
        self.marks.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_grow_and_clamp_what_is_promised() {
        let m = DurableMarks::default();
        assert_eq!(m.get("a"), 0);
        m.advance("a", 10);
        m.advance("a", 7);
        assert_eq!(m.get("a"), 10);
        assert_eq!(m.clamp("a", 25), 10);
        assert_eq!(m.clamp("a", 4), 4);
        assert_eq!(m.clamp("b", 3), 0);
    }
}
