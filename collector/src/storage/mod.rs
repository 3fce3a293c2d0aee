//! The storage boundary: the ledger ([`LedgerStore`]) and the compliance engine's state
//! ([`ComplianceStore`]), both implemented by one backend, and the contract every backend
//! keeps.
//!
//! Why a pair built from one backend ([`Stores::new`]) rather than two stores: registry
//! changes and plans declared in records append to the audit chain in the same transaction
//! as the ledger write, so the chain the engine appends to must be the one the ledger
//! appends to. `Stores::new` takes one value implementing both traits, so the type system
//! rules out a ledger on one backend and an engine on another; each consumer then names only
//! the half it uses (ingest, the writer, reports, metrics and the console's ledger reads
//! the ledger; the engine both). A supertrait would give the same guarantee but make every
//! consumer depend on both halves.
//!
//! Backends: [`crate::ledger::sled_store::SledStore`] (embedded, one process per data
//! directory, the default), [`crate::ledger::pg_store::PgStore`] (PostgreSQL, `--store`,
//! shared by several collectors; it keeps the contract below across processes with row
//! locks and the engine lease) and [`crate::ledger::memory_store::MemoryStore`] (the
//! reference model for tests; no flag selects it). [`open`] is where a tool chooses one,
//! [`open_replica`] where the collector does (with the engine lease on PostgreSQL);
//! [`transfer`] moves a whole store from one backend to another (`flopmeter ledger migrate`).
//!
//! # The contract
//!
//! Written for several writers in several processes (collectors sharing one database, issue
//! 15 §3); an embedded backend keeps it trivially, having one process and, inside it, one
//! ledger writer (`crate::writer`) and one engine.
//!
//! **Atomic** (all of it or none of it, after any crash):
//! - [`LedgerStore::apply_batch`]: the raw records, the quarantined ones, every aggregate the
//!   batch moves (run, model, unattributed, with the distinct agent and node entries), the
//!   run declarations, the plan versions its records declare *and their audit entries*, and
//!   the agent's high-water mark. [`LedgerStore::apply_group`] keeps each batch atomic (a
//!   group may share one transaction; one batch's failure stays its own).
//! - [`LedgerStore::set_model_entry`]: the entry, its registry plan version and its audit
//!   entry.
//! - [`LedgerStore::roll_up`]: the raw batches removed and the rollups they add (totals do
//!   not change).
//! - [`ComplianceStore::commit`]: a [`crate::compliance::store::Change`]'s clock, alert,
//!   audit entries, outbox items and metadata; a clock state that would move a recorded
//!   start is refused and nothing is written.
//!
//! **One linear audit chain.** Every append, the ledger's and the engine's, reads the chain
//! head and writes its entries and the new head inside the transaction of the change it
//! records, and appenders are serialised on the head (sled: its transactions are serialised
//! process-wide; a shared database: a lock on the head row). So the chain has one order
//! whatever the number of writers, and `audit verify` holds across them.
//!
//! **Idempotent:**
//! - A batch is applied once. The agent's high-water mark is read and written in the
//!   transaction that applies the batch, with the agent's mark locked for it, so when two
//!   writers receive the same batch at the same moment the second finds every record at or
//!   below the mark: duplicates, acknowledged and not applied. A first new record other than
//!   mark + 1 is a gap, refused whole. An agent may therefore reconnect to any writer, which
//!   reads the mark afresh ([`LedgerStore::high_water_mark`]) and carries on from it.
//! - Outbox items are keyed by (sink, idempotency key): enqueuing a key already there
//!   leaves the stored item alone, so a repeated engine pass enqueues nothing twice.
//!   Delivery progress overwrites.
//! - An engine pass is idempotent by the core's rules (the same inputs emit no new events).
//!   Registry changes and person actions are not: each is a fact of its own in the chain.
//!
//! **Durable** means: returned from `flush` ([`LedgerStore::flush`],
//! [`ComplianceStore::flush`]) without error. Nothing a write returned is durable before
//! (sled: its log fsynced; a database whose commit is durable may make `flush` a no-op, but
//! never return from it before every write it covers committed). A failed flush poisons the
//! backend: no later flush is trusted until restart, since it would not make the failed
//! writes durable, and the writer acknowledges nothing meanwhile. Reads may see writes not
//! yet durable (a high-water mark among them): an agent is only ever told a mark after the
//! flush that covered it (`crate::durable_marks`).
//!
//! **Leader-only writes.** The compliance engine runs on one replica at a time, the leader.
//! Only it may make the compliance store's writes: clock starts and facts, alert transitions
//! (by a pass, or a person's ack or dismissal), outbox enqueues and delivery updates, and the
//! engine's own audit appends (threshold configuration, deliveries, a broken chain
//! reported): that is, every [`ComplianceStore::commit`]. A backend that elects a leader
//! fences them with the lease it holds and refuses one from a replica that is not, or no
//! longer, the leader with [`ComplianceStoreError::NotLeader`](crate::compliance::store::ComplianceStoreError::NotLeader),
//! writing nothing. Ledger writes (batches and the plan facts they carry, registry changes,
//! agent Hellos, rollups) are every replica's. sled and memory have one engine and never
//! refuse.
//!
//! **Reads** run concurrently with writes and see committed state. The evidence reads the
//! agents' marks, then the batches up to them ([`LedgerStore::raw_batches_between`]): every
//! batch at or below a committed mark is committed, and one rolled up meanwhile moved the
//! store's [`LedgerStore::rollup_generation`], so the next refresh rebuilds from rollups.
//! An online `verify` cuts at every agent's mark and compares what was applied since
//! ([`LedgerStore::verify_cut`]).

pub mod transfer;

use std::path::PathBuf;
use std::sync::Arc;

use flopmeter_pg::lease::{Contender, LeaseConfig, LeaseError};
use flopmeter_pg::{Database, Dsn};

pub use crate::compliance::store::ComplianceStore;
use crate::leadership::Leadership;
pub use crate::ledger::LedgerStore;
use crate::ledger::StoreError;
use crate::ledger::pg_store::PgStore;
use crate::ledger::sled_store::SledStore;

/// Where the collector keeps its ledger and compliance state.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded database in a data directory (sled): one collector process per
    /// directory.
    Embedded {
        /// The directory (`--data-dir`).
        data_dir: PathBuf,
        /// Page cache, bytes (`--ledger-cache-mb`).
        cache_bytes: u64,
    },
    /// PostgreSQL (`--store`): any number of collectors on one database.
    Postgres {
        /// The DSN (its `Display` hides the password). Boxed: it is large beside the other
        /// variant.
        dsn: Box<Dsn>,
        /// Connections in the pool at most (`--store-pool-size`).
        pool_size: usize,
    },
}

impl Backend {
    /// PostgreSQL at `url` (a `postgres://` or `postgresql://` URL), as `--store` gives it.
    pub fn postgres(url: &str, pool_size: usize) -> Result<Backend, flopmeter_pg::DsnError> {
        Ok(Backend::Postgres {
            dsn: Box::new(Dsn::parse(url.trim())?),
            pool_size,
        })
    }

    /// Whether a committed write is durable and visible to other collectors at once (a
    /// shared database), rather than durable only after this process's flush (sled).
    pub fn is_shared(&self) -> bool {
        matches!(self, Backend::Postgres { .. })
    }

    /// Where it is, for logs and messages: the directory, or the DSN without its password.
    pub fn describe(&self) -> String {
        match self {
            Backend::Embedded { data_dir, .. } => data_dir.display().to_string(),
            Backend::Postgres { dsn, .. } => dsn.to_string(),
        }
    }
}

/// Opens `backend` for an offline tool (`ledger verify`, `audit verify`; blocking: run it off
/// the async runtime), with the checks a start relies on (format version, damage, truncation
/// guard). On PostgreSQL the schema must be exactly this binary's and is never migrated (the
/// collectors beside the tool may be older), and the compliance store's writes are not fenced
/// by a lease: never for a collector beside others.
pub fn open(backend: &Backend) -> Result<Stores, StoreError> {
    match backend {
        Backend::Embedded {
            data_dir,
            cache_bytes,
        } => Ok(Stores::new(Arc::new(SledStore::open_with_cache(
            data_dir,
            *cache_bytes,
        )?))),
        Backend::Postgres { dsn, pool_size } => Ok(Stores::new(Arc::new(PgStore::open_current(
            connect(dsn, *pool_size)?,
        )?))),
    }
}

/// Connects to PostgreSQL: a wrong host, password or certificate is reported now.
fn connect(dsn: &Dsn, pool_size: usize) -> Result<Database, StoreError> {
    let mut options = flopmeter_pg::Options::new(dsn.clone());
    options.pool_size = pool_size.max(1);
    // Not `StoreError::Database`, which says a request rolled back: here nothing was asked
    // yet, and PgError says what to fix (host, password, certificate).
    Database::connect(options).map_err(|e| StoreError::Storage(Box::new(e)))
}

/// A collector's storage: the two halves, whether it leads the compliance engine, and on
/// PostgreSQL the contender that holds the lease when it can.
#[derive(Debug)]
pub struct Replica {
    /// The stores (on PostgreSQL the compliance half fenced by the lease).
    pub stores: Stores,
    /// Whether this collector runs the engine now.
    pub leadership: Leadership,
    /// The lease's contender (PostgreSQL only); [`Contender::shutdown`] releases the lease.
    pub contender: Option<Contender>,
    /// Commits of every replica to the shared ledger (PostgreSQL only): the engine's leader
    /// evaluates what other replicas ingested within its debounce, not at its next full pass.
    pub ledger_changes: Option<flopmeter_pg::Listener>,
}

/// Why a collector's storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The lease's settings are unusable, or its contender could not start.
    #[error("the compliance engine's lease: {0}")]
    Lease(#[from] LeaseError),
}

/// Opens `backend` for a collector (blocking). Embedded: always the engine's leader. On
/// PostgreSQL, starts contending for the engine lease as `lease.holder` and fences every
/// compliance write with it: only the replica holding it may commit one.
pub fn open_replica(backend: &Backend, lease: LeaseConfig) -> Result<Replica, OpenError> {
    match backend {
        Backend::Embedded { .. } => Ok(Replica {
            stores: open(backend)?,
            leadership: Leadership::sole(),
            contender: None,
            ledger_changes: None,
        }),
        Backend::Postgres { dsn, pool_size } => {
            lease.validate()?;
            let store = PgStore::open(connect(dsn, *pool_size)?)?;
            let db = store.database().clone();
            let contender = Contender::start(&db, lease.clone())?;
            let ledger_changes = db.listen(flopmeter_pg::notify::LEDGER_CHANGED);
            let leadership = Leadership::lease(contender.watch(), db, lease.name);
            Ok(Replica {
                stores: Stores::new(Arc::new(store.fence_with(contender.watch()))),
                leadership,
                contender: Some(contender),
                ledger_changes: Some(ledger_changes),
            })
        }
    }
}

/// The two halves of one storage backend.
#[derive(Debug, Clone)]
pub struct Stores {
    /// The ledger.
    pub ledger: Arc<dyn LedgerStore>,
    /// The compliance engine's state, in the same backend.
    pub compliance: Arc<dyn ComplianceStore>,
}

impl Stores {
    /// Both halves of `backend`.
    pub fn new<S: LedgerStore + ComplianceStore + 'static>(backend: Arc<S>) -> Stores {
        Stores {
            ledger: backend.clone(),
            compliance: backend,
        }
    }
}
