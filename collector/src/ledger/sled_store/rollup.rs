//! Rolling raw batches past retention into hourly rollups.

use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::{ROLLUP_GENERATION, SledStore, TxResult, abort, tx_error};
use crate::ledger::codec::{Rollup, StoredBatch, from_json, from_proto, to_json};
use crate::ledger::keys::{self, ROLLUP_RUN, ROLLUP_UNATTRIBUTED};
use crate::ledger::rollup::RollupDeltas;
use crate::ledger::{RollupStats, StoreError};

pub(super) fn roll_up(
    store: &SledStore,
    cutoff_unix_ms: i64,
    max_batches: usize,
) -> Result<RollupStats, StoreError> {
    let cutoff = (cutoff_unix_ms.max(0) as u64).to_be_bytes();
    let mut index_keys = Vec::new();
    for k in store.raw_index.range(..&cutoff[..]).keys() {
        index_keys.push(k?);
        if index_keys.len() > max_batches {
            break;
        }
    }
    let more = index_keys.len() > max_batches;
    index_keys.truncate(max_batches);
    if index_keys.is_empty() {
        return Ok(RollupStats::default());
    }
    (&store.raw, &store.raw_index, &store.rollups, &store.meta)
        .transaction(|(raw, raw_index, rollups, meta)| {
            let mut stats = RollupStats {
                more,
                ..RollupStats::default()
            };
            let mut deltas = RollupDeltas::default();
            for ik in &index_keys {
                let raw_key = &ik[8..];
                if let Some(v) = raw.get(raw_key)? {
                    let batch: StoredBatch = abort(from_proto(&v, "raw batch"))?;
                    deltas.add_batch(&batch, &mut stats);
                    raw.remove(raw_key)?;
                }
                raw_index.remove(ik)?;
            }
            let run_keys = deltas.runs.iter().map(|((model, run, hour), d)| {
                (keys::with_bucket(&[ROLLUP_RUN, model, run], *hour), d)
            });
            let unattributed_keys = deltas.unattributed.iter().map(|((node, gpu, hour), d)| {
                (
                    keys::with_bucket(&[ROLLUP_UNATTRIBUTED, node, gpu], *hour),
                    d,
                )
            });
            for (key, d) in run_keys.chain(unattributed_keys) {
                update_json(rollups, &key, "rollup", |r: &mut Rollup| r.merge(d))?;
            }
            if stats.batches > 0 {
                update_json(
                    meta,
                    ROLLUP_GENERATION,
                    "rollup generation",
                    |g: &mut u64| *g += 1,
                )?;
            }
            Ok(stats)
        })
        .map_err(tx_error)
}

/// Reads, changes and writes back one JSON value inside a transaction.
fn update_json<T, F>(tree: &TransactionalTree, key: &[u8], what: &'static str, f: F) -> TxResult<()>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Default,
    F: FnOnce(&mut T),
{
    let mut v: T = match tree.get(key)? {
        Some(b) => abort(from_json(&b, what))?,
        None => T::default(),
    };
    f(&mut v);
    tree.insert(key, abort(to_json(&v, what))?)?;
    Ok(())
}
