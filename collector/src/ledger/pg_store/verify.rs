//! `ledger verify` on PostgreSQL: one snapshot, the whole comparison.
//!
//! A `REPEATABLE READ` transaction sees one committed state of the whole database while
//! ingest goes on, so the scan (step 2, off the writer) reads everything in it and computes
//! the report at once, with the reference model's arithmetic (`Recomputed`, `compare`) and
//! its checks: aggregates, distinct agent and node entries, records above a mark. It also
//! checks that each aggregate's headline columns say what its document says (they are
//! written from it, so a difference is a change made by hand in SQL). Step 3 returns the
//! report: there is nothing applied "since the cut" that the snapshot did not already
//! account for, because the marks, the records and the aggregates are all read in it.

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Transaction;

use super::PgStore;
use super::work::{self, CommitSent, TxError, num, parse_u64};
use crate::ledger::StoreError;
use crate::ledger::aggregate::Aggregate;
use crate::ledger::codec::{Rollup, StoredBatch, from_json, from_proto};
use crate::ledger::keys::Seen;
use crate::ledger::verify::{Recomputed, VerifyReport, compare, compare_marks, compare_seen};

type R<T> = Result<T, TxError<StoreError>>;

impl PgStore {
    pub(super) fn verify_snapshot(&self) -> Result<VerifyReport, StoreError> {
        work::run(&self.db, move |mut conn, _sent: CommitSent| async move {
            let tx = conn
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let report = verify_in(&tx).await?;
            tx.rollback().await?;
            Ok(report)
        })
        .map_err(StoreError::from)
    }
}

/// The stored aggregates of one table, and the keys whose headline columns disagree with
/// their documents.
async fn aggregates<K: Ord>(
    tx: &Transaction<'_>,
    sql: &str,
    what: &'static str,
    key: impl Fn(&tokio_postgres::Row) -> K,
) -> R<(BTreeMap<K, Aggregate>, Vec<K>)> {
    let mut out = BTreeMap::new();
    let mut off = Vec::new();
    for row in tx.query(sql, &[]).await? {
        let n = row.len();
        let a: Aggregate = from_json(row.get(n - 7), what)?;
        let all = a.all();
        let expected = [
            num(all.flop.low),
            num(all.flop.central),
            num(all.flop.high),
            num(all.gpu_ms),
            num(all.energy_mj),
            a.records().to_string(),
        ];
        let stored: Vec<&str> = (n - 6..n).map(|i| row.get::<_, &str>(i)).collect();
        let k = key(&row);
        if stored.iter().zip(&expected).any(|(s, e)| s != e) {
            off.push(key(&row));
        }
        out.insert(k, a);
    }
    Ok((out, off))
}

const HEADLINE: &str = "doc, flop_low::text, flop_central::text, flop_high::text, \
                        gpu_ms::text, energy_mj::text, records::text";

async fn verify_in(tx: &Transaction<'_>) -> R<VerifyReport> {
    let mut rc = Recomputed::default();
    let mut max_seq: BTreeMap<String, u64> = BTreeMap::new();
    for row in tx
        .query(
            "SELECT agent, batch FROM ledger_raw ORDER BY agent, first_seq",
            &[],
        )
        .await?
    {
        let batch: StoredBatch = from_proto(row.get(1), "raw batch")?;
        rc.add_raw(&batch);
        let last = batch.records.last().map_or(0, |r| r.seq);
        let m = max_seq.entry(row.get(0)).or_default();
        *m = (*m).max(last);
    }
    for row in tx
        .query(
            "SELECT agent, max(seq)::text FROM ledger_rejected GROUP BY agent",
            &[],
        )
        .await?
    {
        let seq = parse_u64(row.get(1), "rejected record's sequence number")?;
        let m = max_seq.entry(row.get(0)).or_default();
        *m = (*m).max(seq);
    }
    for row in tx
        .query(
            "SELECT model, run, doc FROM ledger_run_rollups ORDER BY model, run, hour",
            &[],
        )
        .await?
    {
        let r: Rollup = from_json(row.get(2), "run rollup")?;
        rc.add_run_rollup(row.get(0), row.get(1), &r);
    }
    for row in tx
        .query(
            "SELECT node, gpu_type, hour, doc FROM ledger_unattributed_rollups \
             ORDER BY node, gpu_type, hour",
            &[],
        )
        .await?
    {
        let r: Rollup = from_json(row.get(3), "unattributed rollup")?;
        rc.add_unattributed_rollup(row.get(0), row.get(1), row.get(2), &r);
    }
    rc.finish();

    let (runs, runs_off) = aggregates(
        tx,
        &format!("SELECT model, run, {HEADLINE} FROM ledger_run_agg"),
        "run aggregate",
        |r| (r.get::<_, String>(0), r.get::<_, String>(1)),
    )
    .await?;
    let (models, models_off) = aggregates(
        tx,
        &format!("SELECT model, {HEADLINE} FROM ledger_model_agg"),
        "model aggregate",
        |r| r.get::<_, String>(0),
    )
    .await?;
    let (unattributed, unattributed_off) = aggregates(
        tx,
        &format!("SELECT node, gpu_type, day, {HEADLINE} FROM ledger_unattributed"),
        "unattributed aggregate",
        |r| {
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2),
            )
        },
    )
    .await?;

    let mut m = Vec::new();
    compare("run", &runs, &rc.runs, |(a, b)| format!("{a}/{b}"), &mut m);
    compare("model", &models, &rc.models, |a| a.clone(), &mut m);
    compare(
        "unattributed",
        &unattributed,
        &rc.unattributed,
        |(n, g, d)| format!("{n}/{g}/day {d}"),
        &mut m,
    );
    for (model, run) in runs_off {
        m.push(format!(
            "run {model}/{run}: the headline columns differ from the stored aggregate"
        ));
    }
    for model in models_off {
        m.push(format!(
            "model {model}: the headline columns differ from the stored aggregate"
        ));
    }
    for (n, g, d) in unattributed_off {
        m.push(format!(
            "unattributed {n}/{g}/day {d}: the headline columns differ from the stored aggregate"
        ));
    }

    let mut stored = BTreeSet::new();
    for row in tx
        .query("SELECT model, run, agent FROM ledger_run_agents", &[])
        .await?
    {
        stored.insert(Seen::RunAgent.key(&[row.get(0), row.get(1), row.get(2)]));
    }
    for row in tx
        .query("SELECT model, run, node FROM ledger_run_nodes", &[])
        .await?
    {
        stored.insert(Seen::RunNode.key(&[row.get(0), row.get(1), row.get(2)]));
    }
    for row in tx
        .query("SELECT model, agent FROM ledger_model_agents", &[])
        .await?
    {
        stored.insert(Seen::ModelAgent.key(&[row.get(0), row.get(1)]));
    }
    for row in tx
        .query("SELECT model, node FROM ledger_model_nodes", &[])
        .await?
    {
        stored.insert(Seen::ModelNode.key(&[row.get(0), row.get(1)]));
    }
    compare_seen(&stored, &rc, &mut m);

    let mut marks: BTreeMap<String, u64> = BTreeMap::new();
    for row in tx
        .query("SELECT agent, seq::text AS seq_text FROM ledger_hwm", &[])
        .await?
    {
        marks.insert(row.get(0), parse_u64(row.get(1), "high-water mark")?);
    }
    compare_marks(
        max_seq.iter().map(|(a, s)| (a.as_str(), *s)),
        &marks,
        &mut m,
    );
    Ok(VerifyReport {
        raw_batches: rc.raw_batches,
        raw_records: rc.raw_records,
        rollups: rc.rollups,
        runs: runs.len() as u64,
        models: models.len() as u64,
        unattributed_buckets: unattributed.len() as u64,
        mismatches: m,
    })
}
