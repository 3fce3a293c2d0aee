//! The compliance engine's durable state, behind the [`ComplianceStore`] trait: clocks,
//! alerts, the outbox, metadata and the audit chain (head, entries, append, verify).
//!
//! Every change the engine or a person makes is one [`Change`], written atomically by
//! [`ComplianceStore::commit`]: the new clock and alert states, the audit entries that
//! record them (chained onto the head read inside the same transaction), the outbox items
//! that will announce them and metadata. After a crash either all of it is there or none;
//! the engine flushes before it tells anyone (ack only after durable). The chain head is kept
//! apart from the log so that cutting entries off the end is detected too
//! ([`audit::verify_with_head`]).
//!
//! A recorded clock start is never moved: [`ComplianceStore::commit`] refuses a clock state
//! whose start differs from the stored one ([`check_start`]; the core never produces one;
//! this is the last line of defence against a bug).
//!
//! Implementations: the sled store (`crate::ledger::sled_store`, its table of trees there),
//! the PostgreSQL store (`crate::ledger::pg_store`, its table of tables there) and the
//! in-memory model (`crate::ledger::memory_store`). What is atomic, idempotent and
//! durable, and which writes only the compliance leader may make, is the contract in
//! [`crate::storage`].

use flopmeter_core::alert::{Alert, AlertContent, AlertEvent};
use flopmeter_core::audit::{self, AuditEntry, BrokenLink, ChainHead};
use flopmeter_core::clock::ClockState;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::chain::ChainError;
use crate::ledger::BackendError;

/// Errors of the compliance store.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceStoreError {
    /// The storage engine failed reading or writing, or a flush did not make the writes
    /// durable (after a failed flush none is trusted until restart, as for the ledger).
    #[error("compliance storage error: {0}")]
    Storage(#[source] BackendError),
    /// PostgreSQL failed (connection lost, timeout, a statement refused) before the work
    /// committed: its transaction rolled back and nothing of it was stored; the engine
    /// retries at its next pass. A commit whose outcome is unknown is
    /// [`ComplianceStoreError::Storage`] instead.
    #[error(
        "the compliance store's PostgreSQL failed, and nothing of this change was stored (its \
         transaction rolled back): {0}"
    )]
    Database(#[source] Box<flopmeter_pg::PgError>),
    /// A stored value does not decode as its type.
    #[error("the compliance store holds a corrupt {what}: {source}")]
    Corrupt {
        /// What the value is (`clock`, `alert`, a metadata name...).
        what: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A value cannot be encoded for storage.
    #[error("cannot encode {what} for the compliance store: {source}")]
    Encode {
        /// What the value is.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// Appending to the audit chain failed (its head does not decode, an entry does not
    /// encode).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A write would have moved a recorded clock start.
    #[error("refusing to move the recorded clock start of {model} / {threshold}")]
    StartMoved {
        /// The model.
        model: String,
        /// The threshold.
        threshold: String,
    },
    /// This replica is not the compliance leader (or no longer is): the store refused a
    /// write only the leader may make (see [`crate::storage`]). Nothing was written. The
    /// embedded stores, sled and memory, have a single engine and never return it.
    #[error(
        "this collector is not the compliance leader: {what} is left to the leader, nothing \
         was written"
    )]
    NotLeader {
        /// What was refused (`a clock start`, `an audit append`...).
        what: &'static str,
    },
}

/// Delivery state of one outbox item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not yet delivered; retried with backoff.
    Pending,
    /// The sink accepted it.
    Delivered,
}

/// One message for one sink, kept until delivered (and afterwards, as delivery history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Creation order (assigned when first stored): delivery follows it, so a receiver
    /// sees an alert's events in the order they happened.
    #[serde(default)]
    pub seq: u64,
    /// Sink name (`alertmanager`, `webhook:<name>`, `log`).
    pub sink: String,
    /// The core event's idempotency key (sent to sinks so they can drop duplicates).
    pub key: String,
    /// The event.
    pub event: AlertEvent,
    /// What the alert said when the event happened.
    pub content: AlertContent,
    /// Whether the alert was active (firing) at the event: Alertmanager resolves otherwise.
    pub active: bool,
    /// Delivery state.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: u32,
    /// Earliest next attempt, wall-clock Unix ms (backoff).
    pub next_attempt_unix_ms: i64,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// When delivered, wall-clock Unix ms.
    pub delivered_unix_ms: Option<i64>,
}

pub use super::chain::AuditRecord;

/// What verifying the audit chain found: the real counts, whether it holds or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    /// Entries present in the log.
    pub entries: u64,
    /// Entries the separately stored head accounts for.
    pub head_entries: u64,
    /// The first broken link, if any.
    pub broken: Option<BrokenLink>,
}

impl ChainStatus {
    /// Whether every link verifies and the chain reaches the head.
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }

    /// Entries that verify: all of them, or those before the first broken link.
    pub fn verified(&self) -> u64 {
        self.broken
            .as_ref()
            .map_or(self.entries, |b| (b.index as u64).min(self.entries))
    }
}

/// Everything one engine step or one person's action changes, written atomically.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// New clock state (model, threshold, state).
    pub clock: Option<ClockState>,
    /// New alert state.
    pub alert: Option<Alert>,
    /// Audit entries to append, in order.
    pub audit: Vec<AuditRecord>,
    /// Outbox items to enqueue (existing keys are left alone: idempotent).
    pub outbox: Vec<OutboxItem>,
    /// Metadata to set (name, JSON bytes).
    pub meta: Vec<(String, Vec<u8>)>,
    /// Outbox items to overwrite (delivery progress).
    pub outbox_update: Vec<OutboxItem>,
}

impl Change {
    /// True when nothing would be written.
    pub fn is_empty(&self) -> bool {
        self.clock.is_none()
            && self.alert.is_none()
            && self.audit.is_empty()
            && self.outbox.is_empty()
            && self.meta.is_empty()
            && self.outbox_update.is_empty()
    }
}

/// The compliance engine's storage. Object-safe: the engine holds an
/// `Arc<dyn ComplianceStore>`, the same backend as its `Arc<dyn LedgerStore>`
/// ([`crate::storage::Stores`]).
pub trait ComplianceStore: Send + Sync + std::fmt::Debug {
    /// The clock of a pair.
    fn clock(
        &self,
        model: &str,
        threshold: &str,
    ) -> Result<Option<ClockState>, ComplianceStoreError>;

    /// Every clock, in (model, threshold) order.
    fn clocks(&self) -> Result<Vec<ClockState>, ComplianceStoreError>;

    /// The alert of a pair.
    fn alert(&self, model: &str, threshold: &str) -> Result<Option<Alert>, ComplianceStoreError>;

    /// Every alert, in (model, threshold) order.
    fn alerts(&self) -> Result<Vec<Alert>, ComplianceStoreError>;

    /// A metadata value as stored (JSON bytes; [`meta`] decodes it).
    fn meta_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, ComplianceStoreError>;

    /// Every outbox item (pending and delivered), in creation order.
    fn outbox(&self) -> Result<Vec<OutboxItem>, ComplianceStoreError>;

    /// The stored chain head (the genesis head of an empty chain).
    fn head(&self) -> Result<ChainHead, ComplianceStoreError>;

    /// Audit entries in storage order (which is `seq` order unless the log was tampered
    /// with).
    fn audit_entries(&self) -> Result<Vec<AuditEntry>, ComplianceStoreError>;

    /// The audit entries stored under `from..to` (sequence numbers), in order.
    fn audit_range(&self, from: u64, to: u64) -> Result<Vec<AuditEntry>, ComplianceStoreError>;

    /// Writes a [`Change`] atomically and returns the audit entries it appended. Refuses a
    /// clock state that would move a recorded start ([`check_start`]), writing nothing.
    fn commit(&self, change: &Change) -> Result<Vec<AuditEntry>, ComplianceStoreError>;

    /// Makes everything written so far durable (the ledger's writes too, when the backend
    /// is one database: a failed flush of either is never followed by one the other trusts).
    fn flush(&self) -> Result<(), ComplianceStoreError>;

    /// The backend itself, so that tamper tests and repair tools reach its own type behind
    /// a running collector's `dyn ComplianceStore` (the collector never downcasts).
    fn as_any(&self) -> &dyn std::any::Any;

    /// Appends audit records alone (threshold config changes, a broken chain reported).
    fn append_audit(
        &self,
        records: Vec<AuditRecord>,
    ) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        self.commit(&Change {
            audit: records,
            ..Change::default()
        })
    }

    /// Verifies the whole chain against the stored head; returns the entry count or the
    /// first broken link.
    fn verify_audit(&self) -> Result<Result<u64, BrokenLink>, ComplianceStoreError> {
        let s = self.chain_status()?;
        Ok(match s.broken {
            None => Ok(s.entries),
            Some(b) => Err(b),
        })
    }

    /// Verifies the whole chain against the stored head and says how many entries there
    /// are, how many the head accounts for, and where it breaks.
    fn chain_status(&self) -> Result<ChainStatus, ComplianceStoreError> {
        // The head first: an entry appended meanwhile then only lengthens the log past it,
        // which verifies, instead of looking like a log cut short.
        let head = self.head()?;
        let entries = self.audit_entries()?;
        Ok(ChainStatus {
            entries: entries.len() as u64,
            head_entries: head.next_seq,
            broken: audit::verify_with_head(&entries, &head).err(),
        })
    }

    /// Verifies the entries appended after `from` (a head already verified), against the
    /// stored head: the incremental check of a running collector. Returns the new head.
    fn verify_since(
        &self,
        from: &ChainHead,
    ) -> Result<Result<ChainHead, BrokenLink>, ComplianceStoreError> {
        // The head first, then the entries it accounts for (see `chain_status`).
        let stored = self.head()?;
        let entries = self.audit_range(from.next_seq, stored.next_seq.max(from.next_seq))?;
        Ok(match audit::verify_segment(&entries, from) {
            Err(mut b) => {
                b.index += from.next_seq as usize;
                Err(b)
            }
            Ok(h) if h != stored => Err(BrokenLink {
                index: h.next_seq as usize,
                reason: audit::LinkError::Truncated {
                    expected: stored.next_seq,
                    found: h.next_seq,
                },
            }),
            Ok(h) => Ok(h),
        })
    }
}

impl dyn ComplianceStore + '_ {
    /// A metadata value, decoded (see [`meta`]).
    pub fn meta<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ComplianceStoreError> {
        meta(self, name)
    }
}

/// A metadata value of `store`, decoded as `T`: the typed side of
/// [`ComplianceStore::meta_bytes`] (a generic method would make the trait unusable as
/// `dyn`).
pub fn meta<T: DeserializeOwned>(
    store: &(impl ComplianceStore + ?Sized),
    name: &str,
) -> Result<Option<T>, ComplianceStoreError> {
    store
        .meta_bytes(name)?
        .map(|v| decode(&v, name))
        .transpose()
}

/// Refuses a clock state whose start differs from the recorded one: every store's
/// [`ComplianceStore::commit`] calls it before it writes anything.
pub fn check_start(
    recorded: Option<&ClockState>,
    new: &ClockState,
) -> Result<(), ComplianceStoreError> {
    match recorded {
        Some(old) if old.start != new.start => Err(ComplianceStoreError::StartMoved {
            model: new.model.clone(),
            threshold: new.threshold_id.clone(),
        }),
        _ => Ok(()),
    }
}

/// Encodes a stored value as JSON; `what` names it in the error.
pub fn encode<T: Serialize>(v: &T, what: &'static str) -> Result<Vec<u8>, ComplianceStoreError> {
    serde_json::to_vec(v).map_err(|source| ComplianceStoreError::Encode { what, source })
}

/// Decodes a stored JSON value; `what` names it in the error.
pub fn decode<T: DeserializeOwned>(v: &[u8], what: &str) -> Result<T, ComplianceStoreError> {
    serde_json::from_slice(v).map_err(|source| ComplianceStoreError::Corrupt {
        what: what.to_string(),
        source,
    })
}

/// JSON bytes for [`Change::meta`].
pub fn meta_value<T: Serialize>(v: &T) -> Result<Vec<u8>, ComplianceStoreError> {
    encode(v, "metadata")
}
