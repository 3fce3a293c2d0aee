//! Finding damaged values, and surviving sled's panics on damaged pages.

use std::path::Path;

use flopmeter_core::stage::StagePolicy;

use super::SledStore;
use crate::ledger::aggregate::Aggregate;
use crate::ledger::codec::{AgentInfo, Declaration, Rollup, StoredBatch, StoredRejection};
use crate::ledger::plans::PlanHistory;
use crate::ledger::{LedgerDamage, ModelEntry, StoreError};

/// How much [`SledStore::damage`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageScan {
    /// Every tree except the raw batches and quarantined records (the bulk of the ledger,
    /// read only by rollups, `verify` and evidence).
    Startup,
    /// Every tree.
    Full,
}

/// Runs sled work that may panic on damaged files (sled 0.34 asserts on some corrupt pages)
/// and turns a panic into [`StoreError::Damaged`].
pub(super) fn guarded<T>(dir: &Path, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    flopmeter_durable::catch_panic(f).map_err(|p| StoreError::Damaged {
        dir: dir.to_path_buf(),
        cause: LedgerDamage::Engine(Box::new(flopmeter_durable::Damage::Panicked(p))),
    })
}

impl SledStore {
    /// Every stored value that does not decode as its tree's type, one line each
    /// (`tree key: error`). `Startup` reads what a start and every write rely on; `Full` adds
    /// the raw batches and quarantined records.
    pub fn damage(&self, scan: DamageScan) -> Result<Vec<String>, StoreError> {
        fn json<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<(), String> {
            serde_json::from_slice::<T>(v)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        fn proto<T: prost::Message + Default>(v: &[u8]) -> Result<(), String> {
            T::decode(v).map(drop).map_err(|e| e.to_string())
        }
        fn u64_be(v: &[u8]) -> Result<(), String> {
            <[u8; 8]>::try_from(v)
                .map(drop)
                .map_err(|_| format!("{} bytes where a u64 (8 bytes) belongs", v.len()))
        }
        fn meta(k: &[u8], v: &[u8]) -> Result<(), String> {
            match k {
                b"format_version" => json::<u64>(v),
                b"stage_policy" => json::<StagePolicy>(v),
                _ => Ok(()),
            }
        }
        type Check = fn(&[u8], &[u8]) -> Result<(), String>;
        let mut checks: Vec<(&str, &sled::Tree, Check)> = vec![
            ("meta", &self.meta, meta),
            ("hwm", &self.hwm, |_, v| u64_be(v)),
            ("run_agg", &self.run_agg, |_, v| json::<Aggregate>(v)),
            ("model_agg", &self.model_agg, |_, v| json::<Aggregate>(v)),
            ("unattributed", &self.unattributed, |_, v| {
                json::<Aggregate>(v)
            }),
            ("run_meta", &self.run_meta, |_, v| json::<Declaration>(v)),
            ("rollups", &self.rollups, |_, v| json::<Rollup>(v)),
            ("models", &self.models, |_, v| json::<ModelEntry>(v)),
            ("plans", &self.plans, |_, v| json::<PlanHistory>(v)),
            ("agents", &self.agents, |_, v| json::<AgentInfo>(v)),
        ];
        if scan == DamageScan::Full {
            checks.push(("raw", &self.raw, |_, v| proto::<StoredBatch>(v)));
            checks.push(("rejected", &self.rejected, |_, v| {
                proto::<StoredRejection>(v)
            }));
        }
        let mut out = Vec::new();
        for (name, tree, check) in checks {
            for kv in tree.iter() {
                let (k, v) = kv?;
                if let Err(e) = check(&k, &v) {
                    let key: String = String::from_utf8_lossy(&k)
                        .replace('\0', "/")
                        .chars()
                        .take(120)
                        .collect();
                    out.push(format!("{name} value at key {key:?} does not decode: {e}"));
                }
            }
        }
        Ok(out)
    }
}
