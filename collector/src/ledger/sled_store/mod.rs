//! The embedded ledger store on sled 0.34.
//!
//! One sled database per collector (sled allows one process per database, so offline tools
//! such as `flopmeter ledger verify --data-dir` need the collector stopped). Trees:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `raw` | agent \0 first-seq | `StoredBatch` (protobuf) |
//! | `raw_index` | last-event-ms ‖ raw key | empty: finds batches past retention |
//! | `hwm` | agent | u64 BE high-water mark |
//! | `run_agg` | model \0 run | [`Aggregate`] (JSON) |
//! | `model_agg` | model | [`Aggregate`] |
//! | `unattributed` | node \0 gpu-type \0 day | [`Aggregate`] |
//! | `seen` | tag ‖ model \0 [run \0] agent-or-node | empty |
//! | `run_meta` | model \0 run | `Declaration` (JSON) |
//! | `rejected` | agent \0 seq | `StoredRejection` (protobuf) |
//! | `rollups` | scope \0 ... \0 hour | `Rollup` (JSON) |
//! | `models` | model | [`ModelEntry`] (JSON) |
//! | `plans` | model \0 registry, or model \0 run \0 run-id | [`PlanHistory`] (JSON) |
//! | `agents` | agent | [`AgentInfo`] (JSON) |
//! | `meta` | name | JSON (format version, stage policy, rollup generation) |
//!
//! and the compliance store's trees (`compliance.rs` has their table): the clocks, alerts,
//! outbox, compliance metadata and the audit chain (`audit_log`, `audit_head`). No sled type
//! and no tree name leaves this module: the rest of the collector sees [`LedgerStore`] and
//! [`ComplianceStore`](crate::compliance::store::ComplianceStore), both implemented by
//! [`SledStore`] on one database.
//!
//! A batch is applied in one sled multi-tree transaction over every tree it touches, the
//! high-water mark included: after a crash either all of a batch is there or none of it.
//!
//! Facts for the audit chain are appended in the transaction that makes them true: a
//! registry change ([`LedgerStore::set_model_entry`]) and a plan version declared in a
//! batch's records are written with their audit entries to the compliance engine's
//! `audit_log` and `audit_head` trees (`chain.rs`), which live in the same database.
//!
//! Code map: `open.rs` opens the database and checks the format version, `guard.rs` keeps the
//! truncation guard, `chain.rs` appends to the audit chain inside a transaction,
//! `compliance.rs` is the compliance store, `damage.rs` finds values that do not decode,
//! `export.rs` lists everything for `ledger migrate`, `apply.rs` applies batches,
//! `registry.rs` writes registry changes and plan versions, `rollup.rs` rolls raw batches
//! into hourly rollups, `verify.rs` recomputes and compares; the reads are below.

mod apply;
mod chain;
mod compliance;
mod damage;
mod export;
mod guard;
mod open;
mod registry;
mod rollup;
mod verify;

use apply::Cache;
use guard::GuardState;

pub use damage::DamageScan;
pub use guard::GUARD_FILE;
pub use open::DEFAULT_CACHE_BYTES;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use flopmeter_core::stage::StagePolicy;
use flopmeter_proto::v1::IntervalRecord;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::compliance::chain::ChainError;
use crate::ledger::Malformed;
use crate::ledger::aggregate::Aggregate;
use crate::ledger::codec::Rollup;
use crate::ledger::codec::{
    AgentInfo, StoredBatch, StoredRejection, from_json, from_proto, to_json,
};
use crate::ledger::keys::ROLLUP_RUN;
use crate::ledger::keys::{self, Seen};
use crate::ledger::plans::{PlanHistory, PlanScope};
use crate::ledger::verify::{VerifyCut, VerifyReport, VerifyScan};
use crate::ledger::{
    ApplyOutcome, IncomingBatch, LedgerStore, ModelEntry, RawBatchId, RejectedEntry, RollupStats,
    RunEntry, RunRollup, SeqRange, StoreError, UnattributedBucket,
};

/// The sled-backed [`LedgerStore`].
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    raw: sled::Tree,
    raw_index: sled::Tree,
    hwm: sled::Tree,
    run_agg: sled::Tree,
    model_agg: sled::Tree,
    unattributed: sled::Tree,
    seen: sled::Tree,
    run_meta: sled::Tree,
    rejected: sled::Tree,
    rollups: sled::Tree,
    models: sled::Tree,
    agents: sled::Tree,
    meta: sled::Tree,
    plans: sled::Tree,
    audit_log: sled::Tree,
    audit_head: sled::Tree,
    clocks: sled::Tree,
    alerts: sled::Tree,
    outbox: sled::Tree,
    compliance_meta: sled::Tree,
    /// Serializes compliance commits (engine, admin actions, outbox): one chain head.
    compliance_write: Arc<Mutex<()>>,
    cache: Arc<Mutex<Cache>>,
    /// The truncation guard (see [`GUARD_FILE`]); the last clone dropped writes it.
    guard: Arc<GuardState>,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(r: Result<T, StoreError>) -> TxResult<T> {
    r.map_err(ConflictableTransactionError::Abort)
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Storage(Box::new(e))
    }
}

impl From<ChainError> for StoreError {
    fn from(e: ChainError) -> Self {
        match e {
            ChainError::Head(source) => StoreError::Corrupt {
                what: "audit head",
                source: source.into(),
            },
            ChainError::Encode(source) => StoreError::Encode {
                what: "audit entry",
                source,
            },
        }
    }
}

/// A stored value or key whose bytes have the wrong shape.
fn malformed(what: &'static str, shape: &'static str) -> StoreError {
    StoreError::Corrupt {
        what,
        source: Malformed::Shape(shape),
    }
}

fn decode_u64(v: &[u8]) -> Result<u64, StoreError> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| malformed("high-water mark", "not 8 bytes"))
}

impl SledStore {
    /// The underlying sled database, for repair tools and tests (e.g. tampering with an
    /// aggregate to prove that `verify` notices). Nothing in the collector uses it: it reads
    /// and writes through [`LedgerStore`] and the compliance store trait.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        tree: &sled::Tree,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        tree.get(key)?.map(|v| from_json(&v, what)).transpose()
    }
}

/// The `meta` key of [`LedgerStore::rollup_generation`], written in each roll-up's
/// transaction.
pub(super) const ROLLUP_GENERATION: &[u8] = b"rollup_generation";

impl LedgerStore for SledStore {
    fn high_water_mark(&self, agent_id: &str) -> Result<u64, StoreError> {
        self.hwm
            .get(agent_id.as_bytes())?
            .map_or(Ok(0), |v| decode_u64(&v))
    }

    fn high_water_marks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.hwm
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode_u64(&v)?))
            })
            .collect()
    }

    fn recent_records(
        &self,
        agent_id: &str,
        max_batches: usize,
    ) -> Result<(Vec<IntervalRecord>, bool), StoreError> {
        let mut batches = Vec::new();
        let mut truncated = false;
        for kv in self.raw.scan_prefix(keys::prefix(&[agent_id])).rev() {
            if batches.len() == max_batches {
                truncated = true;
                break;
            }
            let (_, v) = kv?;
            batches.push(from_proto::<StoredBatch>(&v, "raw batch")?.records);
        }
        Ok((batches.into_iter().rev().flatten().collect(), truncated))
    }

    fn apply_batch(&self, b: &IncomingBatch) -> Result<ApplyOutcome, StoreError> {
        apply::apply_batch(self, b)
    }

    fn apply_group(&self, batches: &[&IncomingBatch]) -> Vec<Result<ApplyOutcome, StoreError>> {
        apply::apply_group(self, batches)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.guard.flush(false)?;
        Ok(())
    }

    fn record_agent(&self, info: &AgentInfo) -> Result<(), StoreError> {
        self.agents
            .insert(info.agent_id.as_bytes(), to_json(info, "agent")?)?;
        Ok(())
    }

    fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        self.agents
            .iter()
            .map(|kv| from_json(&kv?.1, "agent"))
            .collect()
    }

    fn model_names(&self) -> Result<Vec<String>, StoreError> {
        let mut names = BTreeSet::new();
        for tree in [&self.model_agg, &self.models] {
            for k in tree.iter().keys() {
                names.insert(String::from_utf8_lossy(&k?).into_owned());
            }
        }
        Ok(names.into_iter().collect())
    }

    fn model_aggregate(&self, model: &str) -> Result<Option<Aggregate>, StoreError> {
        Self::get_json(&self.model_agg, model.as_bytes(), "model aggregate")
    }

    fn run_aggregate(&self, model: &str, run: &str) -> Result<Option<Aggregate>, StoreError> {
        Self::get_json(&self.run_agg, &keys::join(&[model, run]), "run aggregate")
    }

    fn run_exists(&self, model: &str, run: &str) -> Result<bool, StoreError> {
        Ok(self.run_agg.contains_key(keys::join(&[model, run]))?)
    }

    fn runs(&self, model: &str) -> Result<Vec<RunEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.run_agg.scan_prefix(keys::prefix(&[model])) {
            let (k, v) = kv?;
            let parts = keys::split(&k);
            let run = parts.get(1).cloned().unwrap_or_default();
            out.push(RunEntry {
                model: model.to_string(),
                declaration: Self::get_json(&self.run_meta, &k, "declaration")?,
                aggregate: from_json(&v, "run aggregate")?,
                run,
            });
        }
        Ok(out)
    }

    fn model_nodes(&self, model: &str) -> Result<Vec<String>, StoreError> {
        let prefix = Seen::ModelNode.prefix(&[model]);
        let mut out = Vec::new();
        for k in self.seen.scan_prefix(&prefix).keys() {
            let k = k?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    fn unattributed(
        &self,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<UnattributedBucket>, StoreError> {
        let mut out = Vec::new();
        for kv in self.unattributed.iter() {
            let (k, v) = kv?;
            let Some((parts, day)) = keys::split_bucket(&k, 2) else {
                return Err(malformed("unattributed key", "not node/gpu-type/day"));
            };
            if day < first_day || day > last_day {
                continue;
            }
            out.push(UnattributedBucket {
                node: parts[0].clone(),
                gpu_type: parts[1].clone(),
                day,
                aggregate: from_json(&v, "unattributed aggregate")?,
            });
        }
        Ok(out)
    }

    fn model_entry(&self, model: &str) -> Result<Option<ModelEntry>, StoreError> {
        Self::get_json(&self.models, model.as_bytes(), "model entry")
    }

    fn set_model_entry(&self, entry: &ModelEntry) -> Result<(), StoreError> {
        registry::set_model_entry(self, entry)
    }

    fn plan_histories(&self, model: &str) -> Result<Vec<(PlanScope, PlanHistory)>, StoreError> {
        registry::plan_histories(self, model)
    }

    fn rejections(
        &self,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RejectedEntry>, StoreError> {
        let iter = match agent_id {
            Some(a) => self.rejected.scan_prefix(keys::prefix(&[a])),
            None => self.rejected.iter(),
        };
        let mut out = Vec::new();
        for kv in iter.take(limit) {
            let (k, v) = kv?;
            let (agent_id, seq) = keys::split_agent_seq(&k)
                .ok_or_else(|| malformed("rejected key", "not agent/sequence"))?;
            let r: StoredRejection = from_proto(&v, "rejected record")?;
            out.push(RejectedEntry {
                agent_id,
                node: r.node,
                seq,
                reason: r.reason,
                detail: r.detail,
                received_unix_ms: r.received_unix_ms,
            });
        }
        Ok(out)
    }

    fn roll_up(&self, cutoff_unix_ms: i64, max_batches: usize) -> Result<RollupStats, StoreError> {
        rollup::roll_up(self, cutoff_unix_ms, max_batches)
    }

    fn verify_scan(&self, cut: VerifyCut) -> Result<VerifyScan, StoreError> {
        verify::verify_scan(self, cut)
    }

    fn verify_finish(&self, scan: VerifyScan) -> Result<VerifyReport, StoreError> {
        verify::verify_finish(self, scan)
    }

    fn stage_policy(&self) -> Result<Option<StagePolicy>, StoreError> {
        Self::get_json(&self.meta, b"stage_policy", "stage policy")
    }

    fn set_stage_policy(&self, policy: &StagePolicy) -> Result<(), StoreError> {
        self.meta
            .insert("stage_policy", to_json(policy, "stage policy")?)?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn raw_batches_between(
        &self,
        ranges: &[SeqRange],
        limit: usize,
    ) -> Result<Vec<(RawBatchId, StoredBatch)>, StoreError> {
        let mut ranges: Vec<&SeqRange> = ranges.iter().filter(|r| r.after < r.upto).collect();
        ranges.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let mut out = Vec::new();
        for r in ranges {
            let from = keys::agent_seq(&r.agent_id, r.after + 1);
            let to = keys::agent_seq(&r.agent_id, r.upto);
            for kv in self.raw.range(from..=to) {
                if out.len() >= limit {
                    return Ok(out);
                }
                let (k, v) = kv?;
                let (agent_id, first_seq) = keys::split_agent_seq(&k)
                    .ok_or_else(|| malformed("raw batch key", "not agent/sequence"))?;
                out.push((
                    RawBatchId {
                        agent_id,
                        first_seq,
                    },
                    from_proto(&v, "raw batch")?,
                ));
            }
        }
        Ok(out)
    }

    fn rollup_generation(&self) -> Result<u64, StoreError> {
        Ok(Self::get_json(&self.meta, ROLLUP_GENERATION, "rollup generation")?.unwrap_or(0))
    }

    fn run_rollups(&self) -> Result<Vec<RunRollup>, StoreError> {
        let mut out = Vec::new();
        for kv in self.rollups.scan_prefix(keys::prefix(&[ROLLUP_RUN])) {
            let (k, v) = kv?;
            let Some((p, hour)) = keys::split_bucket(&k, 3) else {
                continue;
            };
            let rollup: Rollup = from_json(&v, "rollup")?;
            let [_, model, run] = <[String; 3]>::try_from(p)
                .map_err(|_| malformed("rollup key", "not scope/model/run/hour"))?;
            out.push(RunRollup {
                model,
                run,
                hour,
                rollup,
            });
        }
        Ok(out)
    }
}
