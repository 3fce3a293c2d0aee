//! Appending to the audit chain inside any sled transaction.
//!
//! Why a module of its own: a fact must enter the chain in the transaction that makes it
//! true. The compliance store appends the engine's and people's facts
//! ([`super::store::ComplianceStore::commit`]); the ledger appends registry changes and plans
//! declared in records in the very transaction that writes them
//! ([`crate::ledger::sled_store`]). Both read the head inside their transaction and write
//! the entries and the new head before it commits, so the chain has one order whatever
//! writes it (sled 0.34 serialises transactions process-wide).

use flopmeter_core::audit::{AuditEntry, AuditKind, ChainHead, Json};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

/// The tree of entries: `seq` (u64 big-endian) → [`AuditEntry`] (JSON).
pub const LOG_TREE: &str = "audit_log";
/// The tree holding the head, kept apart from the log so cutting entries off the end shows.
pub const HEAD_TREE: &str = "audit_head";
/// The head's key in [`HEAD_TREE`].
pub const HEAD_KEY: &[u8] = b"head";

/// An audit record to append: actor, kind, payload, time.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// When (engine or collector clock, Unix ms).
    pub time_ms: i64,
    /// Who or what.
    pub actor: String,
    /// What kind.
    pub kind: AuditKind,
    /// The record.
    pub payload: Json,
}

/// Why the chain could not be appended to.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The stored head does not decode.
    #[error("the audit chain's head does not decode: {0}")]
    Head(#[source] serde_json::Error),
    /// An entry or the head does not encode.
    #[error("cannot encode an audit entry: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Appends `records`, in order, to the chain whose trees are `log` and `head`, inside the
/// caller's transaction; its errors become the caller's through `From`. Returns the entries
/// written.
pub fn append<E: From<ChainError>>(
    log: &TransactionalTree,
    head: &TransactionalTree,
    records: &[AuditRecord],
) -> Result<Vec<AuditEntry>, ConflictableTransactionError<E>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let abort = |e: ChainError| ConflictableTransactionError::Abort(e.into());
    let mut h: ChainHead = match head.get(HEAD_KEY)? {
        Some(v) => serde_json::from_slice(&v).map_err(|e| abort(ChainError::Head(e)))?,
        None => ChainHead::genesis(),
    };
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let e = h.append(r.time_ms, &r.actor, r.kind.clone(), r.payload.clone());
        let v = serde_json::to_vec(&e).map_err(|e| abort(ChainError::Encode(e)))?;
        log.insert(&e.seq.to_be_bytes()[..], v)?;
        out.push(e);
    }
    let v = serde_json::to_vec(&h).map_err(|e| abort(ChainError::Encode(e)))?;
    head.insert(HEAD_KEY, v)?;
    Ok(out)
}
