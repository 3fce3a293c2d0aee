//! Appending to the audit chain inside any sled transaction: the ledger's (registry changes,
//! plans declared in records) and the compliance store's (`compliance.rs`). sled 0.34
//! serialises transactions process-wide, so the head read inside one is the head the
//! entries are chained onto.

use flopmeter_core::audit::{AuditEntry, ChainHead};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::compliance::chain::{AuditRecord, ChainError};

/// The tree of entries: `seq` (u64 big-endian) → [`AuditEntry`] (JSON).
pub(super) const LOG_TREE: &str = "audit_log";
/// The tree holding the head, kept apart from the log so cutting entries off the end shows.
pub(super) const HEAD_TREE: &str = "audit_head";
/// The head's key in [`HEAD_TREE`].
pub(super) const HEAD_KEY: &[u8] = b"head";

/// Appends `records`, in order, to the chain whose trees are `log` and `head`, inside the
/// caller's transaction; its errors become the caller's through `From`. Returns the entries
/// written.
pub(super) fn append<E: From<ChainError>>(
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
