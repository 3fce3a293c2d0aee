//! The ledger and compliance store on PostgreSQL (issue 15 §2): several collectors share
//! one database.
//!
//! Work in progress: the API below is final, the methods are being filled in.

use flopmeter_core::alert::Alert;
use flopmeter_core::audit::{AuditEntry, ChainHead};
use flopmeter_core::clock::ClockState;
use flopmeter_core::stage::StagePolicy;
use flopmeter_pg::{Database, Lease};
use flopmeter_proto::v1::IntervalRecord;
use tokio::sync::watch;

use crate::compliance::store::{Change, ComplianceStore, ComplianceStoreError, OutboxItem};
use crate::ledger::aggregate::Aggregate;
use crate::ledger::codec::{AgentInfo, StoredBatch};
use crate::ledger::plans::{PlanHistory, PlanScope};
use crate::ledger::verify::{VerifyCut, VerifyReport, VerifyScan};
use crate::ledger::{
    ApplyOutcome, IncomingBatch, LedgerStore, ModelEntry, RawBatchId, RejectedEntry, RollupStats,
    RunEntry, RunRollup, StoreError, UnattributedBucket,
};

/// The PostgreSQL store: [`LedgerStore`] and [`ComplianceStore`] on one database.
#[derive(Debug, Clone)]
pub struct PgStore {
    db: Database,
    fence: Option<watch::Receiver<Option<Lease>>>,
}

impl PgStore {
    /// Applies migrations (refusing a newer schema, typed error) and returns the store.
    pub fn open(db: Database) -> Result<PgStore, StoreError> {
        flopmeter_pg::migrate::apply(
            &db,
            flopmeter_pg::MIGRATIONS,
            flopmeter_pg::migrate::DEFAULT_TIMEOUT,
        )
        .map_err(StoreError::Schema)?;
        Ok(PgStore { db, fence: None })
    }

    /// From now on every [`ComplianceStore::commit`] runs in `lease.begin(..)` of the lease
    /// the receiver currently holds (none, or an invalid lease: `NotLeader`, nothing
    /// written; a lost lease: `NotLeader`). Without it, commits are unfenced (one collector,
    /// tests).
    pub fn fence_with(self, lease: watch::Receiver<Option<Lease>>) -> PgStore {
        PgStore {
            fence: Some(lease),
            ..self
        }
    }

    /// The database (for the lease contender, tools).
    pub fn database(&self) -> &Database {
        &self.db
    }
}

fn unfinished() -> StoreError {
    StoreError::Invalid("the PostgreSQL store does not implement this yet")
}

fn unfinished_c() -> ComplianceStoreError {
    ComplianceStoreError::NotLeader {
        what: "this PostgreSQL store method (not implemented yet)",
    }
}

impl LedgerStore for PgStore {
    fn high_water_mark(&self, _agent_id: &str) -> Result<u64, StoreError> {
        Err(unfinished())
    }
    fn high_water_marks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Err(unfinished())
    }
    fn apply_batch(&self, _batch: &IncomingBatch) -> Result<ApplyOutcome, StoreError> {
        Err(unfinished())
    }
    fn recent_records(
        &self,
        _agent_id: &str,
        _max_batches: usize,
    ) -> Result<(Vec<IntervalRecord>, bool), StoreError> {
        Err(unfinished())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn record_agent(&self, _info: &AgentInfo) -> Result<(), StoreError> {
        Err(unfinished())
    }
    fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        Err(unfinished())
    }
    fn model_names(&self) -> Result<Vec<String>, StoreError> {
        Err(unfinished())
    }
    fn model_aggregate(&self, _model: &str) -> Result<Option<Aggregate>, StoreError> {
        Err(unfinished())
    }
    fn run_exists(&self, _model: &str, _run: &str) -> Result<bool, StoreError> {
        Err(unfinished())
    }
    fn run_aggregate(&self, _model: &str, _run: &str) -> Result<Option<Aggregate>, StoreError> {
        Err(unfinished())
    }
    fn runs(&self, _model: &str) -> Result<Vec<RunEntry>, StoreError> {
        Err(unfinished())
    }
    fn model_nodes(&self, _model: &str) -> Result<Vec<String>, StoreError> {
        Err(unfinished())
    }
    fn unattributed(
        &self,
        _first_day: i64,
        _last_day: i64,
    ) -> Result<Vec<UnattributedBucket>, StoreError> {
        Err(unfinished())
    }
    fn model_entry(&self, _model: &str) -> Result<Option<ModelEntry>, StoreError> {
        Err(unfinished())
    }
    fn set_model_entry(&self, _entry: &ModelEntry) -> Result<(), StoreError> {
        Err(unfinished())
    }
    fn plan_histories(&self, _model: &str) -> Result<Vec<(PlanScope, PlanHistory)>, StoreError> {
        Err(unfinished())
    }
    fn rejections(
        &self,
        _agent_id: Option<&str>,
        _limit: usize,
    ) -> Result<Vec<RejectedEntry>, StoreError> {
        Err(unfinished())
    }
    fn roll_up(&self, _cutoff: i64, _max_batches: usize) -> Result<RollupStats, StoreError> {
        Err(unfinished())
    }
    fn verify_scan(&self, _cut: VerifyCut) -> Result<VerifyScan, StoreError> {
        Err(unfinished())
    }
    fn verify_finish(&self, _scan: VerifyScan) -> Result<VerifyReport, StoreError> {
        Err(unfinished())
    }
    fn stage_policy(&self) -> Result<Option<StagePolicy>, StoreError> {
        Err(unfinished())
    }
    fn set_stage_policy(&self, _policy: &StagePolicy) -> Result<(), StoreError> {
        Err(unfinished())
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Err(unfinished())
    }
    fn raw_batch_ids(&self) -> Result<Vec<RawBatchId>, StoreError> {
        Err(unfinished())
    }
    fn raw_batch(&self, _id: &RawBatchId) -> Result<Option<StoredBatch>, StoreError> {
        Err(unfinished())
    }
    fn run_rollups(&self) -> Result<Vec<RunRollup>, StoreError> {
        Err(unfinished())
    }
}

impl ComplianceStore for PgStore {
    fn clock(
        &self,
        _model: &str,
        _threshold: &str,
    ) -> Result<Option<ClockState>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn clocks(&self) -> Result<Vec<ClockState>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn alert(&self, _model: &str, _threshold: &str) -> Result<Option<Alert>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn alerts(&self) -> Result<Vec<Alert>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn meta_bytes(&self, _name: &str) -> Result<Option<Vec<u8>>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn outbox(&self) -> Result<Vec<OutboxItem>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn head(&self) -> Result<ChainHead, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn audit_entries(&self) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn audit_range(&self, _from: u64, _to: u64) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn commit(&self, _change: &Change) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        Err(unfinished_c())
    }
    fn flush(&self) -> Result<(), ComplianceStoreError> {
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
