//! Moving a whole store to another backend, verbatim: `flopmeter ledger migrate` (issue 15
//! §5, a sled ledger into PostgreSQL).
//!
//! Why a copy of stored facts rather than a replay of the records: the audit chain's
//! entries are hash-chained over the times and actors of the moments they were written, the
//! outbox remembers what was delivered, and the raw batches older than the retention age are
//! gone (rolled up). Replaying would write a different chain and lose the rollups. So a
//! source lists every fact it holds as a typed, decoded [`Item`] ([`Export`]), and a target
//! stores each exactly ([`Import`]).
//!
//! [`migrate`] streams: the source calls a sink per item, and the target receives chunks of
//! [`CHUNK_ITEMS`], so memory stays bounded whatever the ledger's size.
//!
//! **Order, and a migration that stops half-way.** A source exports the audit chain's head
//! first and the audit entries last ([`Export::export`]; [`migrate`] refuses another
//! order). `audit verify` accepts a log *longer* than its head (entries appended since the
//! head was read) but reports a log *shorter* than its head as truncated. So from the first
//! chunk on, a target that has not received every item holds a head that accounts for
//! entries it lacks, and `audit verify` fails on it until the copy is complete; if even the
//! head did not land, nothing did. (A source with no audit entry at all has no such marker:
//! any collector that ran its engine has at least the entry recording its thresholds.)
//! Importing is an upsert by each item's key: a re-run onto that target
//! (`--allow-non-empty`) restarts from the beginning, overwriting what the interrupted run
//! wrote with the same values, and completes it. Nothing is resumed from a position: a
//! restart costs a second copy, and cannot skip an item.

use std::collections::BTreeMap;
use std::fmt;

use flopmeter_core::alert::Alert;
use flopmeter_core::audit::{AuditEntry, ChainHead};
use flopmeter_core::clock::ClockState;
use flopmeter_core::stage::StagePolicy;

use crate::compliance::store::{ComplianceStoreError, OutboxItem};
use crate::ledger::plans::{PlanHistory, PlanScope};
use crate::ledger::{
    AgentInfo, Aggregate, Declaration, ModelEntry, RawBatchId, Rollup, StoreError, StoredBatch,
    StoredRejection,
};

/// Items handed to the target at once: a few MB of raw batches at most, and few enough
/// round trips that a database target is not latency-bound.
pub const CHUNK_ITEMS: usize = 512;

/// Who or what an entry of the ledger's distinct-count sets names: the agents and nodes
/// that reported for a run or a model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeenEntry {
    /// An agent that reported for a run.
    RunAgent {
        /// Model.
        model: String,
        /// Run.
        run: String,
        /// Agent id.
        agent: String,
    },
    /// A node that reported for a run.
    RunNode {
        /// Model.
        model: String,
        /// Run.
        run: String,
        /// Node name.
        node: String,
    },
    /// An agent that reported for a model.
    ModelAgent {
        /// Model.
        model: String,
        /// Agent id.
        agent: String,
    },
    /// A node that reported for a model.
    ModelNode {
        /// Model.
        model: String,
        /// Node name.
        node: String,
    },
}

/// One stored fact, decoded: together, the items of a store reproduce it exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A raw batch: the applied records of one received batch, as received.
    RawBatch {
        /// Its agent and first sequence number.
        id: RawBatchId,
        /// The batch.
        batch: StoredBatch,
    },
    /// An agent's high-water mark.
    HighWaterMark {
        /// Agent id.
        agent: String,
        /// The last sequence number applied or quarantined.
        seq: u64,
    },
    /// A run's aggregate.
    RunAggregate {
        /// Model.
        model: String,
        /// Run.
        run: String,
        /// The totals.
        aggregate: Aggregate,
    },
    /// A model's aggregate.
    ModelAggregate {
        /// Model.
        model: String,
        /// The totals.
        aggregate: Aggregate,
    },
    /// The aggregate of unattributed records of one (node, GPU type, UTC day).
    Unattributed {
        /// Node.
        node: String,
        /// GPU type.
        gpu_type: String,
        /// Days since the epoch.
        day: i64,
        /// The totals.
        aggregate: Aggregate,
    },
    /// An entry of the distinct agent and node sets.
    Seen(SeenEntry),
    /// What a run declared in its records (latest wins).
    Declaration {
        /// Model.
        model: String,
        /// Run.
        run: String,
        /// The declaration.
        declaration: Declaration,
    },
    /// A quarantined record.
    Rejected {
        /// Agent id.
        agent: String,
        /// Its sequence number.
        seq: u64,
        /// Why, and the record as received.
        rejection: StoredRejection,
    },
    /// An hourly rollup of a run's raw batches past retention.
    RunRollup {
        /// Model.
        model: String,
        /// Run.
        run: String,
        /// Hours since the epoch.
        hour: i64,
        /// The rollup.
        rollup: Rollup,
    },
    /// An hourly rollup of unattributed raw batches past retention.
    UnattributedRollup {
        /// Node.
        node: String,
        /// GPU type.
        gpu_type: String,
        /// Hours since the epoch.
        hour: i64,
        /// The rollup.
        rollup: Rollup,
    },
    /// A model registry entry.
    ModelEntry(ModelEntry),
    /// The plan versions of a model's registry entry or of one of its runs.
    PlanHistory {
        /// Model.
        model: String,
        /// Registry or run.
        scope: PlanScope,
        /// The versions.
        history: PlanHistory,
    },
    /// What an agent's last Hello said.
    Agent(AgentInfo),
    /// The stage policy.
    StagePolicy(StagePolicy),
    /// A notification clock.
    Clock(ClockState),
    /// An alert.
    Alert(Alert),
    /// An outbox item, with its creation order (`seq`) and delivery state.
    Outbox(OutboxItem),
    /// A compliance metadata value, as the JSON bytes the store keeps.
    ComplianceMeta {
        /// Its name.
        name: String,
        /// JSON.
        value: Vec<u8>,
    },
    /// An audit entry: exported after every other kind (see the module docs).
    AuditEntry(AuditEntry),
    /// The audit chain's head: exported first (see the module docs).
    AuditHead(ChainHead),
}

/// The kinds of [`Item`], for counts and progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ItemKind {
    /// [`Item::RawBatch`].
    RawBatch,
    /// [`Item::HighWaterMark`].
    HighWaterMark,
    /// [`Item::RunAggregate`].
    RunAggregate,
    /// [`Item::ModelAggregate`].
    ModelAggregate,
    /// [`Item::Unattributed`].
    Unattributed,
    /// [`Item::Seen`].
    Seen,
    /// [`Item::Declaration`].
    Declaration,
    /// [`Item::Rejected`].
    Rejected,
    /// [`Item::RunRollup`].
    RunRollup,
    /// [`Item::UnattributedRollup`].
    UnattributedRollup,
    /// [`Item::ModelEntry`].
    ModelEntry,
    /// [`Item::PlanHistory`].
    PlanHistory,
    /// [`Item::Agent`].
    Agent,
    /// [`Item::StagePolicy`].
    StagePolicy,
    /// [`Item::Clock`].
    Clock,
    /// [`Item::Alert`].
    Alert,
    /// [`Item::Outbox`].
    Outbox,
    /// [`Item::ComplianceMeta`].
    ComplianceMeta,
    /// [`Item::AuditEntry`].
    AuditEntry,
    /// [`Item::AuditHead`].
    AuditHead,
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ItemKind::RawBatch => "raw batches",
            ItemKind::HighWaterMark => "high-water marks",
            ItemKind::RunAggregate => "run aggregates",
            ItemKind::ModelAggregate => "model aggregates",
            ItemKind::Unattributed => "unattributed buckets",
            ItemKind::Seen => "agent/node entries",
            ItemKind::Declaration => "run declarations",
            ItemKind::Rejected => "quarantined records",
            ItemKind::RunRollup => "run rollups",
            ItemKind::UnattributedRollup => "unattributed rollups",
            ItemKind::ModelEntry => "registry entries",
            ItemKind::PlanHistory => "plan histories",
            ItemKind::Agent => "agents",
            ItemKind::StagePolicy => "stage policy",
            ItemKind::Clock => "clocks",
            ItemKind::Alert => "alerts",
            ItemKind::Outbox => "outbox items",
            ItemKind::ComplianceMeta => "compliance metadata",
            ItemKind::AuditEntry => "audit entries",
            ItemKind::AuditHead => "audit head",
        })
    }
}

impl Item {
    /// Its kind.
    pub fn kind(&self) -> ItemKind {
        match self {
            Item::RawBatch { .. } => ItemKind::RawBatch,
            Item::HighWaterMark { .. } => ItemKind::HighWaterMark,
            Item::RunAggregate { .. } => ItemKind::RunAggregate,
            Item::ModelAggregate { .. } => ItemKind::ModelAggregate,
            Item::Unattributed { .. } => ItemKind::Unattributed,
            Item::Seen(_) => ItemKind::Seen,
            Item::Declaration { .. } => ItemKind::Declaration,
            Item::Rejected { .. } => ItemKind::Rejected,
            Item::RunRollup { .. } => ItemKind::RunRollup,
            Item::UnattributedRollup { .. } => ItemKind::UnattributedRollup,
            Item::ModelEntry(_) => ItemKind::ModelEntry,
            Item::PlanHistory { .. } => ItemKind::PlanHistory,
            Item::Agent(_) => ItemKind::Agent,
            Item::StagePolicy(_) => ItemKind::StagePolicy,
            Item::Clock(_) => ItemKind::Clock,
            Item::Alert(_) => ItemKind::Alert,
            Item::Outbox(_) => ItemKind::Outbox,
            Item::ComplianceMeta { .. } => ItemKind::ComplianceMeta,
            Item::AuditEntry(_) => ItemKind::AuditEntry,
            Item::AuditHead(_) => ItemKind::AuditHead,
        }
    }
}

/// Items per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<ItemKind, u64>);

impl Counts {
    /// Counts `n` items of `kind`.
    pub fn add(&mut self, kind: ItemKind, n: u64) {
        if n > 0 {
            *self.0.entry(kind).or_default() += n;
        }
    }

    /// Every item.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Errors of a transfer. The stores' errors are boxed: they are large, and a transfer
/// passes its result through a closure per item.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The source's ledger could not be read.
    #[error("reading the source ledger: {0}")]
    ReadLedger(#[source] Box<StoreError>),
    /// The source's compliance state could not be read.
    #[error("reading the source's compliance state: {0}")]
    ReadCompliance(#[source] Box<ComplianceStoreError>),
    /// The source holds a key this version cannot read.
    #[error("the source holds a {what} whose key has the wrong shape: {key}")]
    SourceKey {
        /// What the key is of.
        what: &'static str,
        /// The key, escaped.
        key: String,
    },
    /// The target could not be written or read.
    #[error("writing the target: {0}")]
    Write(#[source] Box<StoreError>),
    /// The target could not be written or read (its compliance state).
    #[error("writing the target's compliance state: {0}")]
    WriteCompliance(#[source] Box<ComplianceStoreError>),
    /// The source exported its items out of the order [`Export::export`] promises: a bug
    /// of the source's exporter, caught before the order could hide a half-finished copy.
    #[error(
        "the source exported {kind} out of order (the audit head first, the audit entries \
         last): a bug in flopmeter; the target is incomplete and `audit verify` may not say so"
    )]
    OutOfOrder {
        /// The item out of place.
        kind: ItemKind,
    },
    /// The target holds something already, and the caller did not allow that.
    #[error(
        "the target is not empty: it holds a ledger or compliance state already, and nothing \
         was written. Migrate into a new, empty database; or, to complete a migration that \
         stopped half-way into this one, run it again with --allow-non-empty (every item is \
         written again, over what is there)"
    )]
    TargetNotEmpty,
}

/// A store that can list everything it holds.
pub trait Export {
    /// How many items [`Export::export`] will produce, per kind (for progress; a store
    /// written meanwhile may produce a few more or fewer).
    fn counts(&self) -> Result<Counts, TransferError>;

    /// Hands every stored fact to `sink`, one [`Item`] at a time: the audit head (if any)
    /// first, the audit entries after every other item, in sequence order. Stops at the
    /// sink's first error. Returns what it exported.
    fn export(
        &self,
        sink: &mut dyn FnMut(Item) -> Result<(), TransferError>,
    ) -> Result<Counts, TransferError>;
}

/// A store that can take items verbatim.
pub trait Import {
    /// Whether the store holds nothing at all (no ledger and no compliance state).
    fn is_empty(&self) -> Result<bool, TransferError>;

    /// Stores `items` exactly as given, each overwriting what the store holds under its
    /// key. A chunk is written atomically where the backend can (a database transaction).
    fn import(&self, items: Vec<Item>) -> Result<(), TransferError>;

    /// Makes everything imported durable.
    fn finish(&self) -> Result<(), TransferError>;
}

/// How far a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Items imported so far.
    pub done: u64,
    /// Items the source said it holds ([`Export::counts`]).
    pub total: u64,
}

/// Copies everything `from` holds into `to`, in chunks of [`CHUNK_ITEMS`] (the audit head
/// alone in the first, so that it lands before anything it accounts for is missing), then
/// makes it durable. Refuses a target that is not empty unless `allow_non_empty`, writing
/// nothing. Calls `progress` after each chunk. Returns the items copied, per kind.
pub fn migrate(
    from: &dyn Export,
    to: &dyn Import,
    allow_non_empty: bool,
    mut progress: impl FnMut(Progress),
) -> Result<Counts, TransferError> {
    if !allow_non_empty && !to.is_empty()? {
        return Err(TransferError::TargetNotEmpty);
    }
    let total = from.counts()?.total();
    let mut done = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK_ITEMS);
    let mut send = |chunk: &mut Vec<Item>| -> Result<(), TransferError> {
        let n = chunk.len() as u64;
        to.import(std::mem::take(chunk))?;
        done += n;
        progress(Progress { done, total });
        Ok(())
    };
    let (mut first, mut in_entries) = (true, false);
    let counts = from.export(&mut |item| {
        let kind = item.kind();
        let in_order = match kind {
            ItemKind::AuditHead => first,
            ItemKind::AuditEntry => true,
            _ => !in_entries,
        };
        if !in_order {
            return Err(TransferError::OutOfOrder { kind });
        }
        first = false;
        in_entries |= kind == ItemKind::AuditEntry;
        chunk.push(item);
        if chunk.len() >= CHUNK_ITEMS || kind == ItemKind::AuditHead {
            send(&mut chunk)?;
        }
        Ok(())
    })?;
    if !chunk.is_empty() {
        send(&mut chunk)?;
    }
    to.finish()?;
    Ok(counts)
}
