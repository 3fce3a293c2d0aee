//! [`ComplianceStore`] on PostgreSQL: reads are plain queries; a [`Change`] is one
//! transaction, fenced by the engine's lease when the store was given one
//! ([`PgStore::fence_with`]).
//!
//! Fencing: the transaction starts with [`Lease::begin`], which locks the lease row
//! `FOR SHARE` and checks its epoch, so it either commits before any takeover or is refused
//! ([`ComplianceStoreError::NotLeader`], nothing written). A replica holding no lease, or
//! one its own clock says has lapsed, is refused before it opens a transaction.
//!
//! Outbox sequence numbers continue from the largest stored one (items are never deleted,
//! so that is the count so far, as in the reference model). Enqueues take a
//! transaction-level advisory lock first, so that two changes committed at once (a pass and
//! a person's ack on the leader) never number two items alike.

use std::sync::Arc;

use deadpool_postgres::Transaction;
use flopmeter_core::alert::Alert;
use flopmeter_core::audit::{AuditEntry, ChainHead};
use flopmeter_core::clock::ClockState;
use flopmeter_pg::{Lease, LeaseError};

use super::PgStore;
use super::chain::{self, seq_index};
use super::work::{self, CommitSent, TxError, commit_failure};
use crate::compliance::store::{
    Change, ComplianceStore, ComplianceStoreError, OutboxItem, check_start, decode, encode,
};

type R<T> = Result<T, TxError<ComplianceStoreError>>;

/// The advisory lock enqueues take ("flopoutb" in ASCII).
const OUTBOX_LOCK: i64 = 0x666c_6f70_6f75_7462;

/// What a refused change is called in [`ComplianceStoreError::NotLeader`].
const CHANGE: &str = "a compliance change (clock, alert, outbox or audit entries)";

fn lease_error(e: LeaseError) -> TxError<ComplianceStoreError> {
    match e {
        LeaseError::Pg(pg) => TxError::RolledBack(pg),
        LeaseError::LostLeadership { .. } | LeaseError::Config { .. } => {
            TxError::Store(ComplianceStoreError::NotLeader { what: CHANGE })
        }
    }
}

impl PgStore {
    /// The lease to fence a change with: `Ok(None)` when the store is unfenced.
    fn current_lease(&self) -> Result<Option<Lease>, ComplianceStoreError> {
        let Some(rx) = &self.fence else {
            return Ok(None);
        };
        match &*rx.borrow() {
            Some(lease) if lease.is_valid() => Ok(Some(lease.clone())),
            _ => Err(ComplianceStoreError::NotLeader { what: CHANGE }),
        }
    }
}

async fn commit_in(tx: &Transaction<'_>, change: &Change) -> R<Vec<AuditEntry>> {
    if let Some(c) = &change.clock {
        let recorded: Option<ClockState> = tx
            .query_opt(
                "SELECT doc FROM compliance_clocks WHERE model = $1 AND threshold = $2 \
                 FOR UPDATE",
                &[&c.model, &c.threshold_id],
            )
            .await?
            .map(|r| decode(r.get(0), "clock"))
            .transpose()?;
        check_start(recorded.as_ref(), c)?;
        tx.execute(
            "INSERT INTO compliance_clocks (model, threshold, doc) VALUES ($1, $2, $3) \
             ON CONFLICT (model, threshold) DO UPDATE SET doc = EXCLUDED.doc",
            &[&c.model, &c.threshold_id, &encode(c, "clock")?],
        )
        .await?;
    }
    if let Some(a) = &change.alert {
        tx.execute(
            "INSERT INTO compliance_alerts (model, threshold, doc) VALUES ($1, $2, $3) \
             ON CONFLICT (model, threshold) DO UPDATE SET doc = EXCLUDED.doc",
            &[&a.model, &a.threshold_id, &encode(a, "alert")?],
        )
        .await?;
    }
    if !change.outbox.is_empty() {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&OUTBOX_LOCK])
            .await?;
        let mut next: i64 = tx
            .query_one(
                "SELECT COALESCE(max(seq) + 1, 0)::bigint FROM compliance_outbox",
                &[],
            )
            .await?
            .get(0);
        let insert = tx
            .prepare_cached(
                "INSERT INTO compliance_outbox (sink, key, seq, doc) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (sink, key) DO NOTHING",
            )
            .await?;
        for o in &change.outbox {
            let mut o = o.clone();
            o.seq = u64::try_from(next).unwrap_or(0);
            let doc = encode(&o, "outbox item")?;
            if tx.execute(&insert, &[&o.sink, &o.key, &next, &doc]).await? == 1 {
                next += 1;
            }
        }
    }
    if !change.outbox_update.is_empty() {
        let upsert = tx
            .prepare_cached(
                "INSERT INTO compliance_outbox (sink, key, seq, doc) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (sink, key) DO UPDATE SET seq = EXCLUDED.seq, doc = EXCLUDED.doc",
            )
            .await?;
        for o in &change.outbox_update {
            let seq = seq_index(o.seq);
            tx.execute(
                &upsert,
                &[&o.sink, &o.key, &seq, &encode(o, "outbox item")?],
            )
            .await?;
        }
    }
    for (name, value) in &change.meta {
        tx.execute(
            "INSERT INTO compliance_meta (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            &[name, value],
        )
        .await?;
    }
    // The audit head last: the last lock any transaction takes.
    chain::append::<ComplianceStoreError>(tx, &change.audit).await
}

impl ComplianceStore for PgStore {
    fn clock(
        &self,
        model: &str,
        threshold: &str,
    ) -> Result<Option<ClockState>, ComplianceStoreError> {
        self.rows::<ComplianceStoreError>(
            "SELECT doc FROM compliance_clocks WHERE model = $1 AND threshold = $2",
            vec![Box::new(model.to_string()), Box::new(threshold.to_string())],
        )?
        .first()
        .map(|r| decode(r.get(0), "clock"))
        .transpose()
    }

    fn clocks(&self) -> Result<Vec<ClockState>, ComplianceStoreError> {
        self.rows::<ComplianceStoreError>(
            "SELECT doc FROM compliance_clocks ORDER BY model, threshold",
            vec![],
        )?
        .iter()
        .map(|r| decode(r.get(0), "clock"))
        .collect()
    }

    fn alert(&self, model: &str, threshold: &str) -> Result<Option<Alert>, ComplianceStoreError> {
        self.rows::<ComplianceStoreError>(
            "SELECT doc FROM compliance_alerts WHERE model = $1 AND threshold = $2",
            vec![Box::new(model.to_string()), Box::new(threshold.to_string())],
        )?
        .first()
        .map(|r| decode(r.get(0), "alert"))
        .transpose()
    }

    fn alerts(&self) -> Result<Vec<Alert>, ComplianceStoreError> {
        self.rows::<ComplianceStoreError>(
            "SELECT doc FROM compliance_alerts ORDER BY model, threshold",
            vec![],
        )?
        .iter()
        .map(|r| decode(r.get(0), "alert"))
        .collect()
    }

    fn meta_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, ComplianceStoreError> {
        Ok(self
            .rows::<ComplianceStoreError>(
                "SELECT value FROM compliance_meta WHERE name = $1",
                vec![Box::new(name.to_string())],
            )?
            .first()
            .map(|r| r.get(0)))
    }

    fn outbox(&self) -> Result<Vec<OutboxItem>, ComplianceStoreError> {
        self.rows::<ComplianceStoreError>(
            "SELECT doc FROM compliance_outbox ORDER BY seq, sink, key",
            vec![],
        )?
        .iter()
        .map(|r| decode(r.get(0), "outbox item"))
        .collect()
    }

    fn head(&self) -> Result<ChainHead, ComplianceStoreError> {
        match self
            .rows::<ComplianceStoreError>("SELECT head FROM audit_head WHERE only_row", vec![])?
            .first()
        {
            Some(r) => Ok(decode(r.get(0), "audit chain head")?),
            None => Ok(ChainHead::genesis()),
        }
    }

    fn audit_entries(&self) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        self.rows::<ComplianceStoreError>("SELECT entry FROM audit_log ORDER BY idx", vec![])?
            .iter()
            .map(|r| decode(r.get(0), "audit entry"))
            .collect()
    }

    fn audit_range(&self, from: u64, to: u64) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        self.rows::<ComplianceStoreError>(
            "SELECT entry FROM audit_log WHERE idx >= $1 AND idx < $2 ORDER BY idx",
            vec![Box::new(seq_index(from)), Box::new(seq_index(to))],
        )?
        .iter()
        .map(|r| decode(r.get(0), "audit entry"))
        .collect()
    }

    fn commit(&self, change: &Change) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        if change.is_empty() {
            return Ok(Vec::new());
        }
        let lease = self.current_lease()?;
        let change = Arc::new(change.clone());
        work::run(&self.db, move |mut conn, sent: CommitSent| {
            let (change, lease) = (change.clone(), lease.clone());
            async move {
                match lease {
                    Some(lease) => {
                        let tx = lease.begin(&mut conn).await.map_err(lease_error)?;
                        let written = commit_in(&tx, &change).await?;
                        sent.mark();
                        tx.commit().await.map_err(|e| match e {
                            LeaseError::Pg(pg) => commit_failure(pg),
                            other => lease_error(other),
                        })?;
                        Ok(written)
                    }
                    None => {
                        let tx = conn.transaction().await?;
                        let written = commit_in(&tx, &change).await?;
                        sent.mark();
                        tx.commit().await.map_err(|e| commit_failure(e.into()))?;
                        Ok(written)
                    }
                }
            }
        })
        .map_err(ComplianceStoreError::from)
    }

    /// Nothing to do: see [`crate::ledger::LedgerStore::flush`] on this store.
    fn flush(&self) -> Result<(), ComplianceStoreError> {
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
