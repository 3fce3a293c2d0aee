//! Rolling raw batches past retention into hourly rollups, in one transaction.
//!
//! The due batches are deleted with `RETURNING` (a replica rolling up at the same moment
//! waits for the rows, then finds them gone and skips them), their hours summed exactly as
//! the reference model sums them, and the rollups they add are read-modify-written like the
//! aggregates: inserted empty if missing, locked in key order, merged, written back.

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;

use super::PgStore;
use super::work::{self, CommitSent, TxError, commit_failure};
use crate::ledger::codec::{Rollup, StoredBatch, from_json, from_proto, to_json};
use crate::ledger::rollup::{RollupDeltas, RollupKey as Key};
use crate::ledger::{RollupStats, StoreError};

type R<T> = Result<T, TxError<StoreError>>;

impl PgStore {
    pub(super) fn roll_up_raw(
        &self,
        cutoff_unix_ms: i64,
        max_batches: usize,
    ) -> Result<RollupStats, StoreError> {
        let limit = i64::try_from(max_batches).unwrap_or(i64::MAX - 1);
        work::run(&self.db, move |mut conn, sent: CommitSent| async move {
            let tx = conn.transaction().await?;
            let stats = roll_up_in_tx(&tx, cutoff_unix_ms.max(0), limit).await?;
            sent.mark();
            tx.commit()
                .await
                .map_err(|e| commit_failure::<StoreError>(e.into()))?;
            Ok(stats)
        })
        .map_err(StoreError::from)
    }
}

async fn roll_up_in_tx(tx: &Transaction<'_>, cutoff: i64, limit: i64) -> R<RollupStats> {
    // One more than the limit says whether more remain.
    let due = tx
        .query(
            "SELECT agent, first_seq::text AS first_text FROM ledger_raw WHERE last_event_ms < $1 \
             ORDER BY last_event_ms, agent, first_seq LIMIT $2::bigint + 1",
            &[&cutoff, &limit],
        )
        .await?;
    let more = due.len() as i64 > limit;
    let take = usize::try_from(limit).unwrap_or(usize::MAX).min(due.len());
    let agents: Vec<&str> = due[..take].iter().map(|r| r.get(0)).collect();
    let firsts: Vec<&str> = due[..take].iter().map(|r| r.get(1)).collect();
    let mut stats = RollupStats {
        more,
        ..RollupStats::default()
    };
    if agents.is_empty() {
        return Ok(stats);
    }
    // Deleted in the order the reference model takes them (by last event, then id).
    let deleted = tx
        .query(
            "DELETE FROM ledger_raw t USING unnest($1::text[], $2::text[]) \
                 WITH ORDINALITY AS u(a, f, i) \
             WHERE t.agent = u.a AND t.first_seq = u.f::numeric RETURNING u.i, t.batch",
            &[&agents, &firsts],
        )
        .await?;
    let mut batches: Vec<(i64, StoredBatch)> = Vec::with_capacity(deleted.len());
    for row in &deleted {
        batches.push((row.get(0), from_proto(row.get(1), "raw batch")?));
    }
    batches.sort_by_key(|(i, _)| *i);
    let mut deltas = RollupDeltas::default();
    for (_, batch) in &batches {
        deltas.add_batch(batch, &mut stats);
    }
    merge_into(tx, "ledger_run_rollups", ("model", "run"), &deltas.runs).await?;
    merge_into(
        tx,
        "ledger_unattributed_rollups",
        ("node", "gpu_type"),
        &deltas.unattributed,
    )
    .await?;
    if stats.batches > 0 {
        // Last, after the rollup rows (locked in key order by every replica), so two
        // replicas rolling up at once queue here instead of deadlocking.
        tx.execute(
            "INSERT INTO ledger_meta (name, doc) VALUES ('rollup_generation', convert_to('1', 'UTF8')) \
             ON CONFLICT (name) DO UPDATE SET doc = \
             convert_to((convert_from(ledger_meta.doc, 'UTF8')::numeric + 1)::text, 'UTF8')",
            &[],
        )
        .await?;
    }
    Ok(stats)
}

/// Adds `deltas` to the stored rollups of `table` (read-modify-write under row locks).
async fn merge_into(
    tx: &Transaction<'_>,
    table: &str,
    (c1, c2): (&str, &str),
    deltas: &BTreeMap<Key, Rollup>,
) -> R<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let a: Vec<&str> = deltas.keys().map(|k| k.0.as_str()).collect();
    let b: Vec<&str> = deltas.keys().map(|k| k.1.as_str()).collect();
    let h: Vec<i64> = deltas.keys().map(|k| k.2).collect();
    let empty = to_json(&Rollup::default(), "rollup")?;
    tx.execute(
        &format!(
            "INSERT INTO {table} ({c1}, {c2}, hour, doc) \
             SELECT x, y, z, $4 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(x, y, z) \
             ORDER BY x, y, z ON CONFLICT DO NOTHING"
        ),
        &[&a, &b, &h, &empty],
    )
    .await?;
    let rows = tx
        .query(
            &format!(
                "SELECT t.{c1}, t.{c2}, t.hour, t.doc FROM {table} t \
                 JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS u(x, y, z) \
                     ON t.{c1} = u.x AND t.{c2} = u.y AND t.hour = u.z \
                 ORDER BY t.{c1}, t.{c2}, t.hour FOR UPDATE OF t"
            ),
            &[&a, &b, &h],
        )
        .await?;
    let mut docs: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    for row in rows {
        let key: Key = (row.get(0), row.get(1), row.get(2));
        let Some(d) = deltas.get(&key) else { continue };
        let mut into: Rollup = from_json(row.get(3), "rollup")?;
        into.merge(d);
        docs.insert(key, to_json(&into, "rollup")?);
    }
    let a: Vec<&str> = docs.keys().map(|k| k.0.as_str()).collect();
    let b: Vec<&str> = docs.keys().map(|k| k.1.as_str()).collect();
    let h: Vec<i64> = docs.keys().map(|k| k.2).collect();
    let d: Vec<&Vec<u8>> = docs.values().collect();
    tx.execute(
        &format!(
            "UPDATE {table} AS t SET doc = u.d \
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[]) AS u(x, y, z, d) \
             WHERE t.{c1} = u.x AND t.{c2} = u.y AND t.hour = u.z"
        ),
        &[&a, &b, &h, &d],
    )
    .await?;
    Ok(())
}
