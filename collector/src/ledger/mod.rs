//! The ledger: the collector's system of record.
//!
//! [`LedgerStore`] is the boundary between the collector's logic and its storage, so that a
//! replicated database (PostgreSQL first, DESIGN.md §9) can replace the embedded sled store
//! ([`sled_store::SledStore`]) without touching ingest, reports or the compliance engine
//! (which reads its evidence through it too: [`LedgerStore::raw_batches_between`]).
//!
//! What a store keeps, and the invariants every implementation must hold:
//! - **raw batches**: the applied records of each received batch, as received, keyed by agent
//!   and first sequence number; past the retention age they are rolled into **hourly rollups**
//!   per run (and per unattributed node and GPU type), kept for ever;
//! - **aggregates** per run, per model and per unattributed (node, GPU type, UTC day), with
//!   per-stage totals ([`aggregate::Aggregate`]);
//! - the per-agent **high-water mark** (hwm), written in the *same atomic transaction* as the
//!   aggregates a batch moved, so a crash can never apply a batch without advancing the mark
//!   or advance the mark without applying the batch;
//! - quarantined (**rejected**) records, never part of a total; the hwm still moves past them
//!   in the same transaction as the batch's good records;
//! - the **model registry** ([`registry::ModelEntry`]) and per-run declarations.
//!
//! Totals must be recomputable from raw batches plus rollups alone: [`LedgerStore::verify`]
//! does that and reports every aggregate that differs.
//!
//! What is atomic, idempotent and durable, for several writers in several processes, is the
//! contract in [`crate::storage`], which pairs this trait with the compliance store's on one
//! backend. Inside one collector process, the ledger writer (`crate::writer`) is the only
//! code that calls the mutating methods; reads may run concurrently with it. Nothing a
//! mutating method wrote is durable until [`LedgerStore::flush`] returns; the collector
//! acknowledges only after it.
//!
//! Implementations: [`sled_store::SledStore`], [`pg_store::PgStore`] and the reference model
//! [`memory_store::MemoryStore`]; the pure rules both follow are `sequence`, `aggregate`,
//! `facts` (plan versions and the audit entries of a write), `rollup` and [`verify`].

pub(crate) mod aggregate;
pub(crate) mod codec;
pub(crate) mod facts;
pub mod keys;
pub mod memory_store;
pub mod pg_store;
pub mod plans;
pub(crate) mod registry;
pub(crate) mod rollup;
pub mod sequence;
pub mod sled_store;
pub(crate) mod summary;
pub mod verify;

use flopmeter_core::stage::StagePolicy;
use flopmeter_proto::v1::IntervalRecord;
use serde::Serialize;

pub use aggregate::Aggregate;
pub use codec::{AgentInfo, Declaration, Rollup, StoredBatch, StoredRejection};
pub use registry::{ModelEntry, Role};
pub use verify::{VerifyCut, VerifyReport, VerifyScan};

/// The storage engine's own error, kept as the source: the trait does not name the engine.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of a ledger store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed reading or writing (I/O, a full disk, a flush that did not
    /// make the writes durable).
    #[error("ledger storage error: {0}")]
    Storage(#[source] BackendError),
    /// A stored value does not decode as its type.
    #[error("the ledger holds a corrupt {what}: {source}")]
    Corrupt {
        /// What the value is (`run aggregate`, `raw batch`...).
        what: &'static str,
        /// What is wrong with it.
        #[source]
        source: Malformed,
    },
    /// A value cannot be encoded for storage.
    #[error("cannot encode {what} for the ledger: {source}")]
    Encode {
        /// What the value is.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// An audit entry's payload cannot be built (a value whose serialization fails).
    #[error("cannot record the audit entry: {0}")]
    AuditPayload(#[source] flopmeter_core::audit::PayloadError),
    /// The caller asked for something invalid (an empty model name...): a fixed sentence
    /// saying what, never another error's text.
    #[error("invalid ledger request: {0}")]
    Invalid(&'static str),
    /// Another process holds the ledger (sled allows one process per database).
    #[error(
        "cannot open the ledger in {dir}: a running collector holds it; stop it, or ask it with \
         --collector instead of --data-dir ({source})",
        dir = dir.display()
    )]
    Locked {
        /// The ledger directory.
        dir: std::path::PathBuf,
        /// The storage engine's error.
        #[source]
        source: BackendError,
    },
    /// The ledger directory cannot be created, read or written.
    #[error(
        "cannot open the ledger in {dir}: {source} (it must be a directory the collector can \
         read and write: check --data-dir, ownership and permissions)",
        dir = dir.display()
    )]
    Unusable {
        /// The ledger directory.
        dir: std::path::PathBuf,
        /// The file-system error.
        #[source]
        source: std::io::Error,
    },
    /// The ledger was written in a layout this version does not read. A ledger is never
    /// converted in place, so the remedy is the version that wrote it.
    #[error(
        "the ledger in {dir} has layout version {found}, and this collector reads version \
         {supported} only: it was written by {by} flopmeter. Run the collector version that \
         wrote it (or a newer one), or restore a backup this version wrote; nothing was changed",
        dir = dir.display(),
        by = if found > supported { "a newer" } else { "an older" }
    )]
    FormatVersion {
        /// The ledger directory.
        dir: std::path::PathBuf,
        /// The layout version stored in the ledger.
        found: u64,
        /// The layout version this build reads.
        supported: u64,
    },
    /// The ledger's files cannot be opened, or values a start depends on do not decode, or
    /// it holds less than its guard says it made durable. The collector refuses to start on
    /// it: serving would build totals on unknown ground.
    #[error(
        "the ledger in {dir} is damaged: {cause}. Recovery: stop the collector and restore \
         {dir} from a backup (agents re-send everything they still hold above the restored \
         high-water marks), or run `flopmeter ledger verify --data-dir {dir}` to see what is \
         damaged",
        dir = dir.display()
    )]
    Damaged {
        /// The ledger directory.
        dir: std::path::PathBuf,
        /// What is wrong.
        #[source]
        cause: LedgerDamage,
    },
    /// The ledger's volume has less free space than `--min-free-mb`: the writer writes and
    /// acknowledges nothing until there is room (the storage engine does not recover cleanly
    /// from a full disk).
    #[error(
        "the ledger's volume ({dir}) has {free_mib} MiB free, below --min-free-mb {min_mib}: \
         nothing is acknowledged until there is room; agents keep their records",
        dir = dir.display()
    )]
    LowSpace {
        /// The ledger directory.
        dir: std::path::PathBuf,
        /// Free space, MiB.
        free_mib: u64,
        /// The configured minimum, MiB.
        min_mib: u64,
    },
    /// The PostgreSQL ledger's schema cannot be used: newer than this collector knows, a
    /// released migration edited, a version missing, or the migration failed (nothing was
    /// changed); for an offline tool, also absent or older than the tool.
    #[error("cannot use the PostgreSQL ledger's schema: {0}")]
    Schema(#[source] Box<flopmeter_pg::MigrateError>),
    /// PostgreSQL failed (connection lost, timeout, a statement refused) before the work
    /// committed: its transaction rolled back, so nothing of it was stored. Not a write
    /// failure: the agent is not acknowledged and resends, and the next batch may succeed
    /// (a commit whose outcome is unknown is [`StoreError::Storage`] instead). Shared: when a
    /// group of batches fails as one (the connection broke), each batch's error is it.
    #[error(
        "the ledger's PostgreSQL failed, and nothing of this request was stored (its \
         transaction rolled back): {0}"
    )]
    Database(#[source] std::sync::Arc<flopmeter_pg::PgError>),
    /// A write or flush failed earlier: the writer acknowledges nothing until the collector
    /// restarts, since a later flush that succeeds does not make the failed writes durable.
    #[error(
        "an earlier ledger write failed ({0}): nothing is acknowledged until the collector is \
         restarted; agents keep their records"
    )]
    Broken(#[source] std::sync::Arc<StoreError>),
}

/// What is wrong with a stored value.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// It is not the JSON of its type.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// It is not the protobuf of its type.
    #[error(transparent)]
    Proto(#[from] prost::DecodeError),
    /// Its bytes have the wrong shape (a key without its separators, a high-water mark that
    /// is not 8 bytes).
    #[error("{0}")]
    Shape(&'static str),
}

/// Why a ledger is refused as damaged.
#[derive(Debug, thiserror::Error)]
pub enum LedgerDamage {
    /// The storage engine cannot open or read its files.
    #[error(transparent)]
    Engine(BackendError),
    /// Values a start depends on do not decode (`ledger verify` lists them all).
    #[error("{first}{}", if *more > 0 { format!(" (and {more} more)") } else { String::new() })]
    Values {
        /// The first, as `tree value at key "...": error`.
        first: String,
        /// How many more.
        more: usize,
    },
    /// It holds less than its truncation guard says had been made durable.
    #[error(
        "its high-water marks sum to {sum} over {agents} agent(s), but had reached {had_sum} \
         over {had_agents} ({guard}): its files were truncated or replaced by an older copy, \
         so records acknowledged to agents are missing (if you restored sled's files from a \
         backup on purpose, delete {guard} to accept them)",
        guard = guard.display()
    )]
    BehindGuard {
        /// The high-water marks' sum now.
        sum: u128,
        /// Agents with a mark now.
        agents: u64,
        /// The sum the guard recorded.
        had_sum: u128,
        /// The agents the guard recorded.
        had_agents: u64,
        /// The guard file.
        guard: std::path::PathBuf,
    },
    /// Reading what the checks need failed.
    #[error(transparent)]
    Unreadable(Box<StoreError>),
}

impl StoreError {
    /// Whether a write failed in the storage engine (rather than being refused or invalid):
    /// after one the writer acknowledges nothing until restart.
    pub fn is_write_failure(&self) -> bool {
        matches!(self, StoreError::Storage(_))
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => tonic::Status::invalid_argument(m),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

/// Why one record was quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordRejection {
    /// Machine-readable reason (`flop-above-peak`, ...).
    pub reason: String,
    /// Human-readable explanation.
    pub detail: String,
}

/// A record with the verdict of per-record validation, and its declaration already parsed:
/// everything that costs more than a lookup happens here, at the door, so the ledger's
/// transaction does no parsing at all.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedRecord {
    /// The record as received.
    pub record: IntervalRecord,
    /// `Some` when the record failed validation: it is quarantined, never applied.
    pub rejection: Option<RecordRejection>,
    /// The record's declaration, parsed (`None` when it declared nothing or is rejected).
    pub declaration: Option<Declaration>,
    /// The most FLOP per second its GPU can do, tolerance included, as validation found it;
    /// the writer bounds overlapping records of one GPU by it (`crate::occupancy`). `None`
    /// skips that check (records built outside ingest, in tests and benchmarks).
    pub max_flop_per_s: Option<f64>,
}

impl CheckedRecord {
    /// A record with its verdict; parses its declaration (bounded work). A declaration that
    /// does not parse quarantines a record the verdict accepted, as `bad-declaration`.
    pub fn new(record: IntervalRecord, rejection: Option<RecordRejection>) -> CheckedRecord {
        let parsed = match (&rejection, &record.declaration) {
            (None, Some(d)) => Some(flopmeter_proto::convert::declaration_from_wire(d)),
            _ => None,
        };
        let (rejection, declaration) = match parsed {
            None => (rejection, None),
            Some(Ok(d)) => (None, (!d.is_empty()).then_some(d)),
            Some(Err(e)) => (
                Some(RecordRejection {
                    reason: crate::ingest::validate::RejectReason::BadDeclaration
                        .as_str()
                        .into(),
                    detail: e.to_string(),
                }),
                None,
            ),
        };
        CheckedRecord {
            record,
            rejection,
            declaration,
            max_flop_per_s: None,
        }
    }

    /// Sets [`CheckedRecord::max_flop_per_s`].
    pub fn with_max_flop_per_s(mut self, v: Option<f64>) -> CheckedRecord {
        self.max_flop_per_s = v;
        self
    }
}

/// A batch ready for the ledger: well-formed (strictly increasing sequence numbers starting
/// above 0) and validated record by record.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingBatch {
    /// Agent id (no NUL bytes).
    pub agent_id: String,
    /// The agent's node.
    pub node: String,
    /// Collector clock at receipt, Unix ms.
    pub received_unix_ms: i64,
    /// Records in strictly increasing sequence order.
    pub records: Vec<CheckedRecord>,
}

impl IncomingBatch {
    /// Its sequence numbers, once checked for what every store's keys need: they start above
    /// 0 and strictly increase, and the agent id and node are usable names (no NUL, the
    /// agent id not empty). Checked before any transaction.
    pub fn checked_seqs(&self) -> Result<Vec<u64>, StoreError> {
        let seqs: Vec<u64> = self.records.iter().map(|r| r.record.seq).collect();
        if !sequence::well_formed(&seqs) {
            return Err(StoreError::Invalid(
                "sequence numbers must start above 0 and strictly increase",
            ));
        }
        if self.agent_id.is_empty() || self.agent_id.contains('\0') || self.node.contains('\0') {
            return Err(StoreError::Invalid("bad agent id or node name"));
        }
        Ok(seqs)
    }
}

/// Which raw batch: its agent and the sequence number of its first applied record (unique:
/// an agent's sequence numbers never repeat).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawBatchId {
    /// The agent.
    pub agent_id: String,
    /// Its first record's sequence number.
    pub first_seq: u64,
}

/// An agent's raw batches with a first sequence number in `after < first_seq <= upto`
/// ([`LedgerStore::raw_batches_between`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqRange {
    /// The agent.
    pub agent_id: String,
    /// Exclusive lower bound.
    pub after: u64,
    /// Inclusive upper bound.
    pub upto: u64,
}

/// One hourly rollup of a run (see [`LedgerStore::roll_up`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRollup {
    /// Model.
    pub model: String,
    /// Run.
    pub run: String,
    /// Hours since the Unix epoch.
    pub hour: i64,
    /// What the hour's raw records added up to.
    pub rollup: Rollup,
}

/// A quarantined record as reported back to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectionNotice {
    /// Its sequence number.
    pub seq: u64,
    /// Machine-readable reason.
    pub reason: String,
    /// Human-readable explanation.
    pub detail: String,
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The agent's high-water mark after the batch: everything at or below is durable once
    /// the store is flushed.
    pub acked_through: u64,
    /// Records newly applied to totals.
    pub applied: usize,
    /// Records newly quarantined.
    pub newly_rejected: usize,
    /// Records at or below the previous high-water mark (ignored).
    pub duplicates: usize,
    /// Rejections within the batch's range: the new ones, and for resent records those
    /// quarantined earlier (so an agent that lost an Ack still learns of them).
    pub rejections: Vec<RejectionNotice>,
    /// Set when the batch hit a gap: the sequence number the agent must resend from.
    pub resend_from: Option<u64>,
    /// Plan versions its records declared (new figures, or known earlier): facts the
    /// compliance engine must see at once.
    pub plans_declared: usize,
}

/// One run and its aggregate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEntry {
    /// Model name.
    pub model: String,
    /// Run id.
    pub run: String,
    /// Its aggregate.
    pub aggregate: Aggregate,
    /// What the run declared, if anything.
    pub declaration: Option<Declaration>,
}

/// One unattributed bucket: work on a node's GPUs of one type on one UTC day that no run
/// claimed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnattributedBucket {
    /// Node.
    pub node: String,
    /// GPU type.
    pub gpu_type: String,
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    /// Its aggregate.
    pub aggregate: Aggregate,
}

/// A quarantined record, for inspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedEntry {
    /// Agent id.
    pub agent_id: String,
    /// Node.
    pub node: String,
    /// Sequence number.
    pub seq: u64,
    /// Machine-readable reason.
    pub reason: String,
    /// Human-readable explanation.
    pub detail: String,
    /// Collector clock at receipt, Unix ms.
    pub received_unix_ms: i64,
}

/// What one rollup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupStats {
    /// Raw batches rolled up and removed.
    pub batches: u64,
    /// Records they held.
    pub records: u64,
    /// True when more batches past the cutoff remain (the pass is bounded).
    pub more: bool,
}

/// The storage behind the ledger. See the module docs for the invariants.
pub trait LedgerStore: Send + Sync + std::fmt::Debug {
    /// The agent's high-water mark: the highest sequence number applied or quarantined
    /// (0 = none). It includes writes not yet flushed: never tell an agent it may delete
    /// through it (`crate::durable_marks` holds the durable ones).
    fn high_water_mark(&self, agent_id: &str) -> Result<u64, StoreError>;

    /// Every agent's high-water mark, as [`LedgerStore::high_water_mark`] reads it.
    fn high_water_marks(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// The marks of `agents` (0 = none), as [`LedgerStore::high_water_mark`] reads them: what
    /// the writer screens a commit group against. A remote store answers in one round trip
    /// rather than one per agent.
    fn high_water_marks_of(
        &self,
        agents: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        agents
            .iter()
            .map(|a| Ok((a.clone(), self.high_water_mark(a)?)))
            .collect()
    }

    /// Applies a batch atomically: reads the high-water mark, plans the batch
    /// ([`sequence::plan`]), stores the raw records, quarantines rejected ones, updates every
    /// aggregate the good ones move and the high-water mark, all in one transaction. Not
    /// durable until [`LedgerStore::flush`].
    fn apply_batch(&self, batch: &IncomingBatch) -> Result<ApplyOutcome, StoreError>;

    /// Applies several batches, in order, each as [`LedgerStore::apply_batch`] would: every
    /// batch is atomic, later batches see earlier ones, and one batch's failure is that
    /// batch's alone. A store may commit the group in one transaction (the sled store does:
    /// its cost is per transaction, not per batch). Not durable until [`LedgerStore::flush`].
    fn apply_group(&self, batches: &[&IncomingBatch]) -> Vec<Result<ApplyOutcome, StoreError>> {
        batches.iter().map(|b| self.apply_batch(b)).collect()
    }

    /// The records of the agent's last `max_batches` raw batches, in sequence order, and
    /// whether older applied records exist beyond them (raw or rolled up).
    fn recent_records(
        &self,
        agent_id: &str,
        max_batches: usize,
    ) -> Result<(Vec<IntervalRecord>, bool), StoreError>;

    /// [`LedgerStore::recent_records`] of several agents (one without batches has none, not
    /// truncated): the writer reads those of the agents new to it in a commit group together.
    /// A remote store answers in one round trip rather than one per agent.
    fn recent_records_of(
        &self,
        agents: &[String],
        max_batches: usize,
    ) -> Result<std::collections::HashMap<String, (Vec<IntervalRecord>, bool)>, StoreError> {
        agents
            .iter()
            .map(|a| Ok((a.clone(), self.recent_records(a, max_batches)?)))
            .collect()
    }

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Remembers an agent's Hello (node, version, GPUs).
    fn record_agent(&self, info: &AgentInfo) -> Result<(), StoreError>;

    /// [`LedgerStore::record_agent`] for several Hellos, in order (a later Hello of the same
    /// agent wins): the writer records those that arrived during a commit group together.
    fn record_agents(&self, infos: &[AgentInfo]) -> Result<(), StoreError> {
        infos.iter().try_for_each(|i| self.record_agent(i))
    }

    /// Agents that ever said Hello.
    fn agents(&self) -> Result<Vec<AgentInfo>, StoreError>;

    /// Every model name with an aggregate or a registry entry, sorted.
    fn model_names(&self) -> Result<Vec<String>, StoreError>;

    /// A model's aggregate (all its runs), if it has measured work.
    fn model_aggregate(&self, model: &str) -> Result<Option<Aggregate>, StoreError>;

    /// Whether the run has an aggregate (it applied at least one record).
    fn run_exists(&self, model: &str, run: &str) -> Result<bool, StoreError>;

    /// One run's aggregate.
    fn run_aggregate(&self, model: &str, run: &str) -> Result<Option<Aggregate>, StoreError>;

    /// A model's runs, sorted by run id.
    fn runs(&self, model: &str) -> Result<Vec<RunEntry>, StoreError>;

    /// Nodes that reported work for a model, sorted.
    fn model_nodes(&self, model: &str) -> Result<Vec<String>, StoreError>;

    /// Unattributed buckets with `first_day <= day <= last_day`.
    fn unattributed(
        &self,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<UnattributedBucket>, StoreError>;

    /// A model's registry entry.
    fn model_entry(&self, model: &str) -> Result<Option<ModelEntry>, StoreError>;

    /// Creates or replaces a model's registry entry and, **in the same transaction**, appends
    /// the change to the audit chain (actor `updated_by`, time `updated_unix_ms`, the entry
    /// before and after) and a version to the model's registry plan history when the plan's
    /// figures changed ([`plans`]). A change is a fact at the moment it is made; nothing is
    /// left for a later pass to notice.
    fn set_model_entry(&self, entry: &ModelEntry) -> Result<(), StoreError>;

    /// Every plan history of a model: its registry plan's and each run's
    /// ([`plans::PlanHistory`]).
    fn plan_histories(
        &self,
        model: &str,
    ) -> Result<Vec<(plans::PlanScope, plans::PlanHistory)>, StoreError>;

    /// Quarantined records, optionally of one agent, at most `limit`.
    fn rejections(
        &self,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RejectedEntry>, StoreError>;

    /// Rolls raw batches whose last event ended before `cutoff_unix_ms` into hourly rollups
    /// and removes them, at most `max_batches` per call. Totals do not change.
    fn roll_up(&self, cutoff_unix_ms: i64, max_batches: usize) -> Result<RollupStats, StoreError>;

    /// Recomputes every aggregate from raw batches and rollups and compares it with the
    /// stored one, in one go: for a ledger nothing writes to (offline tools, tests). A
    /// running collector splits it into the three steps below so that ingest goes on.
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        let cut = self.verify_cut()?;
        let scan = self.verify_scan(cut)?;
        self.verify_finish(scan)
    }

    /// Step 1, on the writer (cheap: one mark per agent): where the verification cuts.
    fn verify_cut(&self) -> Result<VerifyCut, StoreError> {
        Ok(VerifyCut {
            marks: self.high_water_marks()?.into_iter().collect(),
        })
    }

    /// Step 2, off the writer while batches keep being applied (no rollups meanwhile): the
    /// raw batches up to the cut, every rollup, and the stored aggregates as they are.
    fn verify_scan(&self, cut: VerifyCut) -> Result<VerifyScan, StoreError>;

    /// Step 3, on the writer: adds what was applied since the cut, reads again what it
    /// touched, and compares. Its work is proportional to what arrived during the scan.
    fn verify_finish(&self, scan: VerifyScan) -> Result<VerifyReport, StoreError>;

    /// The stage policy the collector last ran with, so offline tools read the ledger the
    /// same way.
    fn stage_policy(&self) -> Result<Option<StagePolicy>, StoreError>;

    /// Records the stage policy in force.
    fn set_stage_policy(&self, policy: &StagePolicy) -> Result<(), StoreError>;

    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// The raw batches still held (not rolled up) of each range's agent whose first
    /// sequence number is in `after < first_seq <= upto`, at most `limit` of them, in
    /// (agent, first sequence) order (agents in byte order; one range per agent). How the
    /// compliance engine's evidence follows the ledger (`compliance::evidence`): an agent's
    /// raw batches are applied in sequence order, so what is new since a pass is what lies
    /// above the mark it had counted to, and a pass costs one mark per agent plus what
    /// arrived, not a scan of every batch held.
    fn raw_batches_between(
        &self,
        ranges: &[SeqRange],
        limit: usize,
    ) -> Result<Vec<(RawBatchId, StoredBatch)>, StoreError>;

    /// Changes whenever raw batches are rolled up (a count of the roll-ups that removed
    /// any; 0 for a store that never rolled up): a reader following raw batches by
    /// [`LedgerStore::raw_batches_between`] starts over from the rollups when it changes,
    /// since a batch may have been rolled up before the reader saw it.
    fn rollup_generation(&self) -> Result<u64, StoreError>;

    /// Every hourly rollup of a run, in (model, run, hour) order: with the raw batches, the
    /// whole of every run's work over event time.
    fn run_rollups(&self) -> Result<Vec<RunRollup>, StoreError>;
}
