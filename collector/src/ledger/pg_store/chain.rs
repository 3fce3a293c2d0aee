//! Appending to the audit chain inside any transaction of the store: the ledger's
//! (registry changes, plans declared in records) and the compliance store's.
//!
//! The head row is locked `FOR UPDATE` before it is read, so appenders in every replica
//! queue on it and each chains onto the head the previous one wrote: one linear chain. It
//! is the last lock a transaction takes (after high-water marks, aggregates, plans, clocks),
//! so the queue on it never closes a cycle with the other locks.

use deadpool_postgres::Transaction;
use flopmeter_core::audit::{AuditEntry, ChainHead};

use super::work::TxError;
use crate::compliance::chain::{AuditRecord, ChainError};

/// The head of an empty chain, as stored by [`super::PgStore::open`] so that there is always
/// a row to lock.
pub(super) fn genesis() -> Result<Vec<u8>, ChainError> {
    serde_json::to_vec(&ChainHead::genesis()).map_err(ChainError::Encode)
}

/// Appends `records`, in order, inside `tx`; returns the entries written.
pub(super) async fn append<E>(
    tx: &Transaction<'_>,
    records: &[AuditRecord],
) -> Result<Vec<AuditEntry>, TxError<E>>
where
    TxError<E>: From<ChainError>,
{
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let lock = tx
        .prepare_cached("SELECT head FROM audit_head WHERE only_row FOR UPDATE")
        .await?;
    let mut h: ChainHead = match tx.query_opt(&lock, &[]).await? {
        Some(row) => serde_json::from_slice(row.get::<_, &[u8]>(0)).map_err(ChainError::Head)?,
        None => ChainHead::genesis(),
    };
    let mut out = Vec::with_capacity(records.len());
    let mut idx = Vec::with_capacity(records.len());
    let mut docs = Vec::with_capacity(records.len());
    for r in records {
        let e = h.append(r.time_ms, &r.actor, r.kind.clone(), r.payload.clone());
        docs.push(serde_json::to_vec(&e).map_err(ChainError::Encode)?);
        idx.push(seq_index(e.seq));
        out.push(e);
    }
    let head = serde_json::to_vec(&h).map_err(ChainError::Encode)?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit_log (idx, entry) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
        )
        .await?;
    tx.execute(&insert, &[&idx, &docs]).await?;
    let update = tx
        .prepare_cached(
            "INSERT INTO audit_head (only_row, head) VALUES (true, $1) \
             ON CONFLICT (only_row) DO UPDATE SET head = EXCLUDED.head",
        )
        .await?;
    tx.execute(&update, &[&head]).await?;
    Ok(out)
}

/// An entry's sequence number as its `audit_log.idx` (the chain's own counter: far below
/// 2^63, so the saturation never happens).
pub(super) fn seq_index(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}
