//! The ledger and the compliance engine's state on PostgreSQL (issue 15 §2): several
//! collectors share one database, and the contract of [`crate::storage`] holds across them.
//!
//! Tables (migration 2, `pg/migrations/0002_ledger_and_compliance.sql`, which says why each
//! is shaped as it is); documents are the sled store's bytes, JSON or protobuf:
//!
//! | table | key | value |
//! |---|---|---|
//! | `ledger_hwm` | agent | mark, NUMERIC(20,0) |
//! | `ledger_raw` | agent, first seq | `StoredBatch` (protobuf); last event ms (indexed), node, record count |
//! | `ledger_rejected` | agent, seq | `StoredRejection` (protobuf); reason |
//! | `ledger_run_agg` | model, run | [`Aggregate`](crate::ledger::Aggregate) (JSON) + headline NUMERIC(39,0) columns |
//! | `ledger_model_agg` | model | the same |
//! | `ledger_unattributed` | node, GPU type, day | the same |
//! | `ledger_run_agents`, `ledger_run_nodes` | model, run, agent or node | (presence) |
//! | `ledger_model_agents`, `ledger_model_nodes` | model, agent or node | (presence) |
//! | `ledger_declarations` | model, run | `Declaration` (JSON) |
//! | `ledger_run_rollups` | model, run, hour | `Rollup` (JSON) |
//! | `ledger_unattributed_rollups` | node, GPU type, hour | `Rollup` (JSON) |
//! | `ledger_registry` | model | [`ModelEntry`](crate::ledger::ModelEntry) (JSON) |
//! | `ledger_plans` | model, scope (0 registry, 1 run), run | `PlanHistory` (JSON) |
//! | `ledger_agents` | agent | `AgentInfo` (JSON) |
//! | `ledger_meta` | name | JSON (the stage policy) |
//! | `compliance_clocks`, `compliance_alerts` | model, threshold | `ClockState`, `Alert` (JSON) |
//! | `compliance_outbox` | sink, idempotency key | `OutboxItem` (JSON); seq (indexed) |
//! | `compliance_meta` | name | JSON bytes |
//! | `audit_log` | index | `AuditEntry` (JSON) |
//! | `audit_head` | the one row | `ChainHead` (JSON), locked by every append |
//!
//! How the contract is kept:
//! - **Atomic**: every write is one transaction; a group of batches is one transaction
//!   (`apply.rs`), and one batch's failure stays its own (the group is retried a batch at a
//!   time).
//! - **Exactly once**: the agent's mark row is locked `FOR UPDATE` by the transaction that
//!   applies its batch, so a replica receiving the same batch waits and then finds
//!   duplicates. Locks are taken in one order: marks, aggregates (runs, models,
//!   unattributed, in key order), plans, then the audit head.
//! - **One linear audit chain**: the head row is locked `FOR UPDATE` by every append, the
//!   ledger's (unfenced: ledger writes are every replica's) and the engine's
//!   (`chain.rs`).
//! - **Durable**: a write returns after its COMMIT, and PostgreSQL's commits are durable,
//!   so `flush` has nothing to do. What a failure means for the writer (rolled back, or
//!   unknown) is in `work.rs`.
//! - **Leader-only writes**: [`ComplianceStore::commit`](crate::compliance::store::ComplianceStore::commit) runs in a transaction fenced by
//!   the engine's lease once [`PgStore::fence_with`] gave one (`compliance.rs`).
//! - **Exact sums**: aggregates keep their u128 sums in the JSON document the code reads,
//!   and the headline columns carry them as NUMERIC(39,0) for SQL; neither goes through a
//!   float.
//!
//! Code map: `work.rs` runs units of work and classifies failures, `apply.rs` applies
//! batches, `registry.rs` writes registry changes, `rollup.rs` rolls raw batches up,
//! `verify.rs` recomputes and compares in one snapshot, `chain.rs` appends to the audit
//! chain, `ledger.rs` and `compliance.rs` implement the two traits (the reads there).

mod apply;
mod chain;
mod compliance;
mod import;
mod ledger;
mod registry;
mod rollup;
mod verify;
mod work;

use std::sync::Arc;

use flopmeter_pg::{Database, Lease};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;

use crate::ledger::StoreError;
use work::{CommitSent, TxError};

/// One statement parameter, owned so that the work can be retried.
type Param = Box<dyn ToSql + Send + Sync>;

/// The PostgreSQL store: [`LedgerStore`](crate::ledger::LedgerStore) and
/// [`ComplianceStore`](crate::compliance::store::ComplianceStore) on one database.
#[derive(Debug, Clone)]
pub struct PgStore {
    db: Database,
    fence: Option<watch::Receiver<Option<Lease>>>,
    /// Runs seen to exist. A run's aggregate is never deleted, so a positive answer stays
    /// true and need not cost a round trip again: the writer asks for every record it screens
    /// (the new-runs limit), which against a remote database was most of its time.
    known_runs: Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
}

impl PgStore {
    /// Applies migrations (refusing a newer schema, typed error) and returns the store.
    pub fn open(db: Database) -> Result<PgStore, StoreError> {
        flopmeter_pg::migrate::apply(
            &db,
            flopmeter_pg::MIGRATIONS,
            flopmeter_pg::migrate::DEFAULT_TIMEOUT,
        )
        .map_err(|e| StoreError::Schema(Box::new(e)))?;
        let store = PgStore::unchecked(db);
        // The head row exists from the start, so that every append has a row to lock (two
        // first appends could not both lock a row neither can see).
        let genesis = chain::genesis()?;
        store.rows::<StoreError>(
            "INSERT INTO audit_head (only_row, head) VALUES (true, $1) \
             ON CONFLICT (only_row) DO NOTHING",
            vec![Box::new(genesis)],
        )?;
        Ok(store)
    }

    /// The store on a schema exactly as new as this binary's, changing nothing: what offline
    /// tools open, so that a newer CLI never migrates the schema under running collectors
    /// (an absent, older or newer schema is refused, typed).
    pub fn open_current(db: Database) -> Result<PgStore, StoreError> {
        flopmeter_pg::migrate::check(
            &db,
            flopmeter_pg::MIGRATIONS,
            flopmeter_pg::migrate::DEFAULT_TIMEOUT,
        )
        .map_err(|e| StoreError::Schema(Box::new(e)))?;
        Ok(PgStore::unchecked(db))
    }

    fn unchecked(db: Database) -> PgStore {
        PgStore {
            db,
            fence: None,
            known_runs: Arc::default(),
        }
    }

    /// From now on every [`ComplianceStore::commit`](crate::compliance::store::ComplianceStore::commit)
    /// runs in `lease.begin(..)` of the lease the receiver currently holds (none, or an
    /// invalid lease: [`NotLeader`](crate::compliance::store::ComplianceStoreError::NotLeader),
    /// nothing written; a lost lease: `NotLeader`). Without it, commits are unfenced (one
    /// collector, tests).
    pub fn fence_with(self, lease: watch::Receiver<Option<Lease>>) -> PgStore {
        PgStore {
            fence: Some(lease),
            ..self
        }
    }

    fn known_runs(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String)>> {
        self.known_runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The database (for the lease contender, tools).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs one statement outside any explicit transaction and returns its rows.
    fn rows<E>(&self, sql: &'static str, params: Vec<Param>) -> Result<Vec<tokio_postgres::Row>, E>
    where
        E: From<TxError<E>> + Send + 'static,
    {
        let params = Arc::new(params);
        work::run(&self.db, move |conn, _: CommitSent| {
            let params = params.clone();
            async move {
                let st = conn.prepare_cached(sql).await?;
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                Ok(conn.query(&st, &refs).await?)
            }
        })
        .map_err(E::from)
    }
}
