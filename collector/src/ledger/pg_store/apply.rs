//! Applying a group of batches in one transaction, exactly once across replicas.
//!
//! One transaction per group, a few statements per table whatever the number of records:
//! 1. the agents' high-water-mark rows, inserted if missing and locked `FOR UPDATE` in key
//!    order: a replica applying the same batch at the same moment waits here, then reads
//!    the mark this one wrote and finds every record a duplicate;
//! 2. [`sequence::admit`] and the batch's own aggregates, in Rust, batch by batch in order
//!    (a later batch of the same agent sees the earlier one's mark);
//! 3. every aggregate the group moves, inserted empty if missing and locked in key order
//!    (runs, models, unattributed), read, merged in Rust exactly as the reference model
//!    merges, and written back in one multi-row statement per table;
//! 4. the distinct agent and node entries (`ON CONFLICT DO NOTHING RETURNING` says which are
//!    new, so the counts rise exactly once), raw batches, quarantined records, declarations
//!    and plan versions in multi-row statements, the marks last;
//! 5. the plan facts appended to the audit chain (its head is the last lock taken).
//!
//! Locks are always taken in that order (marks, aggregates, plans, audit head), so two
//! replicas' groups queue rather than deadlock; PostgreSQL's deadlock detector and the
//! unit's retry ([`super::work`]) cover what the order cannot (rows of different tables
//! taken by different paths).
//!
//! One batch's failure stays its own: when the group's transaction fails, nothing of it was
//! written, and each batch is applied again in a transaction of its own, unless the failure
//! was the database's (unreachable, connection lost, timed out: every batch gets it, and
//! its agent resends) or an unknown commit (every batch gets that write failure). (A savepoint per batch would do the same, at the price of a
//! round of statements per batch: the group's statements are shared.)

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Transaction;
use flopmeter_proto::v1::IntervalRecord;
use prost::Message as _;

use super::PgStore;
use super::chain;
use super::work::{self, CommitSent, TxError, commit_failure, num, parse_u64};
use crate::compliance::chain::AuditRecord;
use crate::ledger::aggregate::{Aggregate, Attribution, attribution, gpu_type_of};
use crate::ledger::codec::{
    Declaration, StoredBatch, StoredRejection, from_json, from_proto, to_json,
};
use crate::ledger::facts::{PlanStatement, Statements, record_statements};
use crate::ledger::keys::DAY_MS;
use crate::ledger::plans::PlanHistory;
use crate::ledger::sequence::{self, Admission};
use crate::ledger::{ApplyOutcome, IncomingBatch, RejectionNotice, StoreError};

type Tx<'a> = Transaction<'a>;
type R<T> = Result<T, TxError<StoreError>>;
/// (node, GPU type, day).
type Bucket = (String, String, i64);

impl PgStore {
    /// [`crate::ledger::LedgerStore::apply_group`]: one transaction, or one per batch after
    /// a failure.
    pub(super) fn apply_many(
        &self,
        batches: &[&IncomingBatch],
    ) -> Vec<Result<ApplyOutcome, StoreError>> {
        let checked: Vec<Result<Vec<u64>, StoreError>> =
            batches.iter().map(|b| b.checked_seqs()).collect();
        let valid: Vec<IncomingBatch> = batches
            .iter()
            .zip(&checked)
            .filter(|(_, s)| s.is_ok())
            .map(|(b, _)| (*b).clone())
            .collect();
        let group = if valid.is_empty() {
            Ok(Vec::new())
        } else {
            self.apply_in_one(valid)
        };
        match group {
            Ok(outs) => {
                let mut outs = outs.into_iter();
                checked
                    .into_iter()
                    .map(|s| {
                        s?;
                        Ok(outs.next().expect("one outcome per valid batch"))
                    })
                    .collect()
            }
            Err(TxError::Unknown(e)) => {
                let shared = std::sync::Arc::new(e);
                checked
                    .into_iter()
                    .map(|s| {
                        s?;
                        Err(StoreError::Storage(Box::new(SharedFailure(shared.clone()))))
                    })
                    .collect()
            }
            Err(e) if batches.len() == 1 => vec![Err(e.into())],
            // The database is unreachable or the connection broke: applying each batch alone
            // would only wait for it once per batch. Every batch is refused (nothing was
            // written) and its agent resends.
            Err(TxError::RolledBack(e)) if e.is_transient() => {
                let shared = std::sync::Arc::new(e);
                checked
                    .into_iter()
                    .map(|s| {
                        s?;
                        Err(StoreError::Database(shared.clone()))
                    })
                    .collect()
            }
            Err(_) => batches
                .iter()
                .map(|b| {
                    b.checked_seqs()?;
                    let mut one = self
                        .apply_in_one(vec![(*b).clone()])
                        .map_err(StoreError::from)?;
                    Ok(one.pop().expect("one batch, one outcome"))
                })
                .collect(),
        }
    }

    fn apply_in_one(&self, batches: Vec<IncomingBatch>) -> R<Vec<ApplyOutcome>> {
        let batches = std::sync::Arc::new(batches);
        work::run(&self.db, move |mut conn, sent: CommitSent| {
            let batches = batches.clone();
            async move {
                let tx = conn.transaction().await?;
                let outs = apply_in_tx(&tx, &batches).await?;
                if outs.iter().any(|o| o.applied + o.newly_rejected > 0) {
                    notify_ledger_changed(&tx).await?;
                }
                sent.mark();
                tx.commit().await.map_err(|e| commit_failure(e.into()))?;
                Ok(outs)
            }
        })
    }
}

/// One unknown commit shared by every batch of its group (each batch's error keeps it as
/// its source).
#[derive(Debug, thiserror::Error)]
#[error("the group's COMMIT got no answer, so whether it was stored is unknown: {0}")]
pub(super) struct SharedFailure(#[source] pub(super) std::sync::Arc<flopmeter_pg::PgError>);

/// What one batch does, computed before the group's aggregates are read.
#[derive(Default)]
struct Plan<'a> {
    /// `None`: answered at once (duplicates, a gap).
    apply: Option<(usize, usize)>,
    outcome: ApplyOutcome,
    runs: BTreeMap<(&'a str, &'a str), Aggregate>,
    models: BTreeMap<&'a str, Aggregate>,
    unattributed: BTreeMap<Bucket, Aggregate>,
    decls: BTreeMap<(&'a str, &'a str), &'a Declaration>,
    statements: Statements<'a>,
    good: Vec<IntervalRecord>,
}

/// Applies `batches` (checked: well-formed sequence numbers) inside `tx`.
async fn apply_in_tx(tx: &Tx<'_>, batches: &[IncomingBatch]) -> R<Vec<ApplyOutcome>> {
    // 1. Marks, locked in key order.
    let agents: Vec<&str> = batches
        .iter()
        .map(|b| b.agent_id.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut marks = lock_marks(tx, &agents).await?;
    let before = marks.clone();

    // 2. Admission and each batch's own aggregates.
    let mut plans: Vec<Plan<'_>> = Vec::with_capacity(batches.len());
    for b in batches {
        let seqs: Vec<u64> = b.records.iter().map(|r| r.record.seq).collect();
        let hwm = marks.get(b.agent_id.as_str()).copied().unwrap_or(0);
        let mut plan = Plan::default();
        match sequence::admit(hwm, &seqs) {
            Admission::Answered(outcome) => plan.outcome = outcome,
            Admission::Apply {
                start,
                end,
                outcome,
            } => {
                plan.outcome = outcome;
                plan.apply = Some((start, end));
                plan.outcome.acked_through = seqs[end - 1];
                marks.insert(&b.agent_id, seqs[end - 1]);
                deltas(b, start, end, &mut plan);
            }
        }
        plans.push(plan);
    }

    // 3. Aggregates, locked in key order and merged.
    let run_keys: BTreeSet<(&str, &str)> =
        plans.iter().flat_map(|p| p.runs.keys().copied()).collect();
    let model_keys: BTreeSet<&str> = plans
        .iter()
        .flat_map(|p| p.models.keys().copied())
        .collect();
    let bucket_keys: BTreeSet<&Bucket> = plans.iter().flat_map(|p| p.unattributed.keys()).collect();
    let mut runs = lock_runs(tx, &run_keys).await?;
    let mut models = lock_models(tx, &model_keys).await?;
    let mut buckets = lock_buckets(tx, &bucket_keys).await?;

    // 4. Distinct agents and nodes: which entries are new.
    let mut seen = Seen::default();
    for (b, p) in batches.iter().zip(&plans) {
        for (model, run) in p.runs.keys() {
            seen.run_agents.insert((model, run, &b.agent_id));
            seen.run_nodes.insert((model, run, &b.node));
        }
        for model in p.models.keys() {
            seen.model_agents.insert((model, &b.agent_id));
            seen.model_nodes.insert((model, &b.node));
        }
    }
    let mut new = seen.insert(tx).await?;

    // Plan histories of the runs that declared something.
    let plan_keys: BTreeSet<(&str, &str)> = plans
        .iter()
        .flat_map(|p| p.statements.keys().copied())
        .collect();
    let (mut histories, existing_plans) = lock_plans(tx, &plan_keys).await?;
    let mut dirty_plans: BTreeSet<(&str, &str)> = BTreeSet::new();

    // Merge batch by batch, in order, as the reference model does.
    let mut decls: BTreeMap<(&str, &str), &Declaration> = BTreeMap::new();
    let mut facts: Vec<AuditRecord> = Vec::new();
    let mut raw: Vec<(&IncomingBatch, u64, StoredBatch)> = Vec::new();
    let mut rejected: Vec<(&str, u64, &str, Vec<u8>)> = Vec::new();
    for (b, p) in batches.iter().zip(plans.iter_mut()) {
        let Some((start, end)) = p.apply else {
            continue;
        };
        let (agent, node) = (b.agent_id.as_str(), b.node.as_str());
        for cr in &b.records[start..end] {
            if let Some(rej) = &cr.rejection {
                let stored = StoredRejection::new(&cr.record, rej, node, b.received_unix_ms);
                rejected.push((agent, cr.record.seq, &rej.reason, stored.encode_to_vec()));
            }
        }
        for ((model, run), d) in &p.runs {
            let a = runs.get_mut(&(*model, *run)).expect("locked above");
            a.merge_stages(d);
            a.agents += u64::from(new.run_agents.remove(&(*model, *run, agent)));
            a.nodes += u64::from(new.run_nodes.remove(&(*model, *run, node)));
        }
        for (model, d) in &p.models {
            let a = models.get_mut(model).expect("locked above");
            a.merge_stages(d);
            a.agents += u64::from(new.model_agents.remove(&(*model, agent)));
            a.nodes += u64::from(new.model_nodes.remove(&(*model, node)));
        }
        for (key, d) in &p.unattributed {
            buckets.get_mut(key).expect("locked above").merge_stages(d);
        }
        for (key, decl) in &p.decls {
            if !decl.is_empty() {
                decls.insert(*key, decl);
            }
        }
        for ((model, run), said) in &p.statements {
            let history = histories.entry((*model, *run)).or_default();
            if record_statements(
                history,
                said,
                (*model, *run),
                (agent, node),
                b.received_unix_ms,
                &mut p.outcome,
                &mut facts,
            )? {
                dirty_plans.insert((*model, *run));
            }
        }
        if !p.good.is_empty() {
            let first = b.records[start].record.seq;
            let batch = StoredBatch {
                agent_id: agent.to_string(),
                node: node.to_string(),
                received_unix_ms: b.received_unix_ms,
                records: std::mem::take(&mut p.good),
            };
            raw.push((b, first, batch));
        }
    }

    // 5. Writes.
    write_runs(tx, &runs).await?;
    write_models(tx, &models).await?;
    write_buckets(tx, &buckets).await?;
    write_raw(tx, &raw).await?;
    write_rejected(tx, &rejected).await?;
    write_decls(tx, &decls).await?;
    write_plans(tx, &histories, &dirty_plans, &existing_plans).await?;
    write_marks(tx, &marks, &before).await?;
    chain::append::<StoreError>(tx, &facts).await?;

    // Resent records: the agent hears again of those quarantined earlier (after the writes,
    // so a batch sees what an earlier batch of its group quarantined).
    let mut outs = Vec::with_capacity(batches.len());
    for (b, p) in batches.iter().zip(plans) {
        let mut out = p.outcome;
        if out.duplicates > 0 {
            let first = b.records[0].record.seq;
            let last = b.records[out.duplicates - 1].record.seq;
            let mut earlier = rejections_between(tx, &b.agent_id, first, last).await?;
            earlier.append(&mut out.rejections);
            out.rejections = earlier;
        }
        outs.push(out);
    }
    Ok(outs)
}

/// A batch's own aggregates, quarantined records and statements (the reference model's
/// first loop).
fn deltas<'a>(b: &'a IncomingBatch, start: usize, end: usize, p: &mut Plan<'a>) {
    let node = b.node.as_str();
    for cr in &b.records[start..end] {
        let rec = &cr.record;
        if let Some(rej) = &cr.rejection {
            p.outcome.rejections.push(RejectionNotice {
                seq: rec.seq,
                reason: rej.reason.clone(),
                detail: rej.detail.clone(),
            });
            p.outcome.newly_rejected += 1;
            continue;
        }
        p.outcome.applied += 1;
        match attribution(rec) {
            Attribution::Run { model, run } => {
                p.runs.entry((model, run)).or_default().add_record(rec);
                p.models.entry(model).or_default().add_record(rec);
                if let Some(d) = &cr.declaration {
                    p.decls.insert((model, run), d);
                    PlanStatement::push(&mut p.statements, model, run, cr);
                }
            }
            Attribution::Unattributed => {
                let day = rec.start_unix_ms.div_euclid(DAY_MS);
                let key = (node.to_string(), gpu_type_of(rec).to_string(), day);
                p.unattributed.entry(key).or_default().add_record(rec);
            }
        }
        p.good.push(rec.clone());
    }
}

async fn lock_marks<'a>(tx: &Tx<'_>, agents: &[&'a str]) -> R<BTreeMap<&'a str, u64>> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO ledger_hwm (agent, seq) SELECT a, 0 FROM unnest($1::text[]) AS a \
             ORDER BY a ON CONFLICT (agent) DO NOTHING",
        )
        .await?;
    tx.execute(&insert, &[&agents]).await?;
    let lock = tx
        .prepare_cached(
            "SELECT agent, seq::text AS seq_text FROM ledger_hwm WHERE agent = ANY($1::text[]) \
             ORDER BY agent FOR UPDATE",
        )
        .await?;
    let mut marks = BTreeMap::new();
    let mut found: BTreeMap<String, u64> = BTreeMap::new();
    for row in tx.query(&lock, &[&agents]).await? {
        found.insert(row.get(0), parse_u64(row.get(1), "high-water mark")?);
    }
    for a in agents {
        if let Some(seq) = found.remove(*a) {
            marks.insert(*a, seq);
        }
    }
    Ok(marks)
}

fn empty_doc() -> Result<Vec<u8>, StoreError> {
    to_json(&Aggregate::default(), "aggregate")
}

async fn lock_runs<'a>(
    tx: &Tx<'_>,
    keys: &BTreeSet<(&'a str, &'a str)>,
) -> R<BTreeMap<(&'a str, &'a str), Aggregate>> {
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (models, runs): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let insert = tx
        .prepare_cached(
            "INSERT INTO ledger_run_agg AS t (model, run, doc, flop_low, flop_central, flop_high, \
                 gpu_ms, energy_mj, records) \
             SELECT m, r, $3, 0, 0, 0, 0, 0, 0 FROM unnest($1::text[], $2::text[]) AS u(m, r) \
             ORDER BY m, r ON CONFLICT (model, run) DO NOTHING",
        )
        .await?;
    tx.execute(&insert, &[&models, &runs, &empty_doc()?])
        .await?;
    let lock = tx
        .prepare_cached(
            "SELECT t.model, t.run, t.doc FROM ledger_run_agg t \
             JOIN unnest($1::text[], $2::text[]) AS u(m, r) ON t.model = u.m AND t.run = u.r \
             ORDER BY t.model, t.run FOR UPDATE OF t",
        )
        .await?;
    let mut found = BTreeMap::new();
    for row in tx.query(&lock, &[&models, &runs]).await? {
        let doc: Aggregate = from_json(row.get(2), "run aggregate")?;
        found.insert((row.get::<_, String>(0), row.get::<_, String>(1)), doc);
    }
    Ok(keys
        .iter()
        .filter_map(|k| {
            found
                .remove(&(k.0.to_string(), k.1.to_string()))
                .map(|a| (*k, a))
        })
        .collect())
}

async fn lock_models<'a>(tx: &Tx<'_>, keys: &BTreeSet<&'a str>) -> R<BTreeMap<&'a str, Aggregate>> {
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let models: Vec<&str> = keys.iter().copied().collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO ledger_model_agg (model, doc, flop_low, flop_central, flop_high, \
                 gpu_ms, energy_mj, records) \
             SELECT m, $2, 0, 0, 0, 0, 0, 0 FROM unnest($1::text[]) AS m \
             ORDER BY m ON CONFLICT (model) DO NOTHING",
        )
        .await?;
    tx.execute(&insert, &[&models, &empty_doc()?]).await?;
    let lock = tx
        .prepare_cached(
            "SELECT model, doc FROM ledger_model_agg WHERE model = ANY($1::text[]) \
             ORDER BY model FOR UPDATE",
        )
        .await?;
    let mut out = BTreeMap::new();
    let mut found: BTreeMap<String, Aggregate> = BTreeMap::new();
    for row in tx.query(&lock, &[&models]).await? {
        let a = from_json(row.get(1), "model aggregate")?;
        found.insert(row.get(0), a);
    }
    for k in keys {
        if let Some(a) = found.remove(*k) {
            out.insert(*k, a);
        }
    }
    Ok(out)
}

async fn lock_buckets(tx: &Tx<'_>, keys: &BTreeSet<&Bucket>) -> R<BTreeMap<Bucket, Aggregate>> {
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let nodes: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let gpus: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let days: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO ledger_unattributed (node, gpu_type, day, doc, flop_low, flop_central, \
                 flop_high, gpu_ms, energy_mj, records) \
             SELECT n, g, d, $4, 0, 0, 0, 0, 0, 0 \
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(n, g, d) \
             ORDER BY n, g, d ON CONFLICT (node, gpu_type, day) DO NOTHING",
        )
        .await?;
    tx.execute(&insert, &[&nodes, &gpus, &days, &empty_doc()?])
        .await?;
    let lock = tx
        .prepare_cached(
            "SELECT t.node, t.gpu_type, t.day, t.doc FROM ledger_unattributed t \
             JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS u(n, g, d) \
                 ON t.node = u.n AND t.gpu_type = u.g AND t.day = u.d \
             ORDER BY t.node, t.gpu_type, t.day FOR UPDATE OF t",
        )
        .await?;
    let mut out = BTreeMap::new();
    for row in tx.query(&lock, &[&nodes, &gpus, &days]).await? {
        let key: Bucket = (row.get(0), row.get(1), row.get(2));
        out.insert(key, from_json(row.get(3), "unattributed aggregate")?);
    }
    Ok(out)
}

/// The headline columns of an aggregate, written beside its document.
pub(super) struct Headline {
    pub(super) docs: Vec<Vec<u8>>,
    pub(super) low: Vec<String>,
    pub(super) central: Vec<String>,
    pub(super) high: Vec<String>,
    pub(super) gpu_ms: Vec<String>,
    pub(super) energy: Vec<String>,
    pub(super) records: Vec<i64>,
}

impl Headline {
    pub(super) fn of<'a>(
        aggs: impl Iterator<Item = &'a Aggregate>,
        what: &'static str,
    ) -> Result<Headline, StoreError> {
        let mut h = Headline {
            docs: Vec::new(),
            low: Vec::new(),
            central: Vec::new(),
            high: Vec::new(),
            gpu_ms: Vec::new(),
            energy: Vec::new(),
            records: Vec::new(),
        };
        for a in aggs {
            let all = a.all();
            h.docs.push(to_json(a, what)?);
            h.low.push(num(all.flop.low));
            h.central.push(num(all.flop.central));
            h.high.push(num(all.flop.high));
            h.gpu_ms.push(num(all.gpu_ms));
            h.energy.push(num(all.energy_mj));
            h.records
                .push(i64::try_from(a.records()).unwrap_or(i64::MAX));
        }
        Ok(h)
    }
}

/// The `SET` list every aggregate table shares, from `u`.
const SET_HEADLINE: &str = "doc = u.doc, flop_low = u.fl::numeric, flop_central = \
    u.fc::numeric, flop_high = u.fh::numeric, gpu_ms = u.g::numeric, energy_mj = u.e::numeric, \
    records = u.n";

async fn write_runs(tx: &Tx<'_>, runs: &BTreeMap<(&str, &str), Aggregate>) -> R<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let (models, names): (Vec<&str>, Vec<&str>) = runs.keys().copied().unzip();
    let h = Headline::of(runs.values(), "run aggregate")?;
    let sql = format!(
        "UPDATE ledger_run_agg AS t SET {SET_HEADLINE} \
         FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::text[], $9::bigint[]) AS u(m, r, doc, fl, fc, fh, g, e, n) \
         WHERE t.model = u.m AND t.run = u.r"
    );
    let st = tx.prepare_cached(&sql).await?;
    tx.execute(
        &st,
        &[
            &models, &names, &h.docs, &h.low, &h.central, &h.high, &h.gpu_ms, &h.energy, &h.records,
        ],
    )
    .await?;
    Ok(())
}

async fn write_models(tx: &Tx<'_>, models: &BTreeMap<&str, Aggregate>) -> R<()> {
    if models.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = models.keys().copied().collect();
    let h = Headline::of(models.values(), "model aggregate")?;
    let sql = format!(
        "UPDATE ledger_model_agg AS t SET {SET_HEADLINE} \
         FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::bigint[]) AS u(m, doc, fl, fc, fh, g, e, n) \
         WHERE t.model = u.m"
    );
    let st = tx.prepare_cached(&sql).await?;
    tx.execute(
        &st,
        &[
            &names, &h.docs, &h.low, &h.central, &h.high, &h.gpu_ms, &h.energy, &h.records,
        ],
    )
    .await?;
    Ok(())
}

async fn write_buckets(tx: &Tx<'_>, buckets: &BTreeMap<Bucket, Aggregate>) -> R<()> {
    if buckets.is_empty() {
        return Ok(());
    }
    let nodes: Vec<&str> = buckets.keys().map(|k| k.0.as_str()).collect();
    let gpus: Vec<&str> = buckets.keys().map(|k| k.1.as_str()).collect();
    let days: Vec<i64> = buckets.keys().map(|k| k.2).collect();
    let h = Headline::of(buckets.values(), "unattributed aggregate")?;
    let sql = format!(
        "UPDATE ledger_unattributed AS t SET {SET_HEADLINE} \
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::text[], $6::text[], \
             $7::text[], $8::text[], $9::text[], $10::bigint[]) \
             AS u(nd, gt, dy, doc, fl, fc, fh, g, e, n) \
         WHERE t.node = u.nd AND t.gpu_type = u.gt AND t.day = u.dy"
    );
    let st = tx.prepare_cached(&sql).await?;
    tx.execute(
        &st,
        &[
            &nodes, &gpus, &days, &h.docs, &h.low, &h.central, &h.high, &h.gpu_ms, &h.energy,
            &h.records,
        ],
    )
    .await?;
    Ok(())
}

/// Candidate distinct-entry rows of a group, and (after [`Seen::insert`]) the new ones.
#[derive(Default)]
struct Seen<'a> {
    run_agents: BTreeSet<(&'a str, &'a str, &'a str)>,
    run_nodes: BTreeSet<(&'a str, &'a str, &'a str)>,
    model_agents: BTreeSet<(&'a str, &'a str)>,
    model_nodes: BTreeSet<(&'a str, &'a str)>,
}

impl<'a> Seen<'a> {
    /// Inserts every candidate; returns those that were not there.
    async fn insert(&self, tx: &Tx<'_>) -> R<Seen<'a>> {
        let mut new = Seen::default();
        for (table, col, set, out) in [
            (
                "ledger_run_agents",
                "agent",
                &self.run_agents,
                &mut new.run_agents,
            ),
            (
                "ledger_run_nodes",
                "node",
                &self.run_nodes,
                &mut new.run_nodes,
            ),
        ] {
            if set.is_empty() {
                continue;
            }
            let a: Vec<&str> = set.iter().map(|k| k.0).collect();
            let b: Vec<&str> = set.iter().map(|k| k.1).collect();
            let c: Vec<&str> = set.iter().map(|k| k.2).collect();
            let st = tx
                .prepare_cached(&format!(
                    "INSERT INTO {table} (model, run, {col}) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
                     ON CONFLICT DO NOTHING RETURNING model, run, {col}"
                ))
                .await?;
            let inserted: BTreeSet<(String, String, String)> = tx
                .query(&st, &[&a, &b, &c])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            out.extend(set.iter().filter(|k| {
                inserted.contains(&(k.0.to_string(), k.1.to_string(), k.2.to_string()))
            }));
        }
        for (table, col, set, out) in [
            (
                "ledger_model_agents",
                "agent",
                &self.model_agents,
                &mut new.model_agents,
            ),
            (
                "ledger_model_nodes",
                "node",
                &self.model_nodes,
                &mut new.model_nodes,
            ),
        ] {
            if set.is_empty() {
                continue;
            }
            let a: Vec<&str> = set.iter().map(|k| k.0).collect();
            let b: Vec<&str> = set.iter().map(|k| k.1).collect();
            let st = tx
                .prepare_cached(&format!(
                    "INSERT INTO {table} (model, {col}) \
                     SELECT * FROM unnest($1::text[], $2::text[]) \
                     ON CONFLICT DO NOTHING RETURNING model, {col}"
                ))
                .await?;
            let inserted: BTreeSet<(String, String)> = tx
                .query(&st, &[&a, &b])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            out.extend(
                set.iter()
                    .filter(|k| inserted.contains(&(k.0.to_string(), k.1.to_string()))),
            );
        }
        Ok(new)
    }
}

/// The run plan histories of `keys`, locked; and which rows exist (the others are
/// inserted: a replica that inserts the same one first makes this transaction fail with a
/// unique violation, and the unit is retried, then finding it).
#[allow(clippy::type_complexity)]
async fn lock_plans<'a>(
    tx: &Tx<'_>,
    keys: &BTreeSet<(&'a str, &'a str)>,
) -> R<(
    BTreeMap<(&'a str, &'a str), PlanHistory>,
    BTreeSet<(&'a str, &'a str)>,
)> {
    let mut histories = BTreeMap::new();
    let mut existing = BTreeSet::new();
    if keys.is_empty() {
        return Ok((histories, existing));
    }
    let (models, runs): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let st = tx
        .prepare_cached(
            "SELECT t.model, t.run, t.doc FROM ledger_plans t \
             JOIN unnest($1::text[], $2::text[]) AS u(m, r) \
                 ON t.model = u.m AND t.scope = 1 AND t.run = u.r \
             ORDER BY t.model, t.run FOR UPDATE OF t",
        )
        .await?;
    let mut found: BTreeMap<(String, String), PlanHistory> = BTreeMap::new();
    for row in tx.query(&st, &[&models, &runs]).await? {
        let h = from_json(row.get(2), "plan history")?;
        found.insert((row.get(0), row.get(1)), h);
    }
    for k in keys {
        if let Some(h) = found.remove(&(k.0.to_string(), k.1.to_string())) {
            histories.insert(*k, h);
            existing.insert(*k);
        }
    }
    Ok((histories, existing))
}

async fn write_plans(
    tx: &Tx<'_>,
    histories: &BTreeMap<(&str, &str), PlanHistory>,
    dirty: &BTreeSet<(&str, &str)>,
    existing: &BTreeSet<(&str, &str)>,
) -> R<()> {
    let (mut upd, mut ins): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for key in dirty {
        let doc = to_json(&histories[key], "plan history")?;
        if existing.contains(key) {
            upd.push((key.0, key.1, doc));
        } else {
            ins.push((key.0, key.1, doc));
        }
    }
    for (rows, sql) in [
        (
            upd,
            "UPDATE ledger_plans AS t SET doc = u.doc \
             FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u(m, r, doc) \
             WHERE t.model = u.m AND t.scope = 1 AND t.run = u.r",
        ),
        (
            ins,
            "INSERT INTO ledger_plans (model, scope, run, doc) \
             SELECT m, 1, r, doc FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u(m, r, doc)",
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        let m: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let r: Vec<&str> = rows.iter().map(|r| r.1).collect();
        let d: Vec<&Vec<u8>> = rows.iter().map(|r| &r.2).collect();
        let st = tx.prepare_cached(sql).await?;
        tx.execute(&st, &[&m, &r, &d]).await?;
    }
    Ok(())
}

async fn write_raw(tx: &Tx<'_>, raw: &[(&IncomingBatch, u64, StoredBatch)]) -> R<()> {
    if raw.is_empty() {
        return Ok(());
    }
    let agents: Vec<&str> = raw.iter().map(|r| r.0.agent_id.as_str()).collect();
    let firsts: Vec<String> = raw.iter().map(|r| num(r.1)).collect();
    let last: Vec<i64> = raw
        .iter()
        .map(|r| r.2.records.iter().map(|x| x.end_unix_ms).fold(0, i64::max))
        .collect();
    let nodes: Vec<&str> = raw.iter().map(|r| r.0.node.as_str()).collect();
    let counts: Vec<i32> = raw
        .iter()
        .map(|r| i32::try_from(r.2.records.len()).unwrap_or(i32::MAX))
        .collect();
    let docs: Vec<Vec<u8>> = raw.iter().map(|r| r.2.encode_to_vec()).collect();
    let st = tx
        .prepare_cached(
            "INSERT INTO ledger_raw (agent, first_seq, last_event_ms, node, records, batch) \
             SELECT a, f::numeric, l, n, c, b FROM unnest($1::text[], $2::text[], $3::bigint[], \
                 $4::text[], $5::int[], $6::bytea[]) AS u(a, f, l, n, c, b)",
        )
        .await?;
    tx.execute(&st, &[&agents, &firsts, &last, &nodes, &counts, &docs])
        .await?;
    Ok(())
}

async fn write_rejected(tx: &Tx<'_>, rows: &[(&str, u64, &str, Vec<u8>)]) -> R<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let agents: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let seqs: Vec<String> = rows.iter().map(|r| num(r.1)).collect();
    let reasons: Vec<&str> = rows.iter().map(|r| r.2).collect();
    let docs: Vec<&Vec<u8>> = rows.iter().map(|r| &r.3).collect();
    let st = tx
        .prepare_cached(
            "INSERT INTO ledger_rejected (agent, seq, reason, rejection) \
             SELECT a, s::numeric, r, d FROM unnest($1::text[], $2::text[], $3::text[], \
                 $4::bytea[]) AS u(a, s, r, d)",
        )
        .await?;
    tx.execute(&st, &[&agents, &seqs, &reasons, &docs]).await?;
    Ok(())
}

async fn write_decls(tx: &Tx<'_>, decls: &BTreeMap<(&str, &str), &Declaration>) -> R<()> {
    if decls.is_empty() {
        return Ok(());
    }
    let (models, runs): (Vec<&str>, Vec<&str>) = decls.keys().copied().unzip();
    let docs = decls
        .values()
        .map(|d| to_json(d, "run declaration"))
        .collect::<Result<Vec<_>, _>>()?;
    let st = tx
        .prepare_cached(
            "INSERT INTO ledger_declarations (model, run, doc) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
             ON CONFLICT (model, run) DO UPDATE SET doc = EXCLUDED.doc",
        )
        .await?;
    tx.execute(&st, &[&models, &runs, &docs]).await?;
    Ok(())
}

async fn write_marks(
    tx: &Tx<'_>,
    marks: &BTreeMap<&str, u64>,
    before: &BTreeMap<&str, u64>,
) -> R<()> {
    let moved: Vec<(&str, u64)> = marks
        .iter()
        .filter(|(a, s)| before.get(*a) != Some(*s))
        .map(|(a, s)| (*a, *s))
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    let agents: Vec<&str> = moved.iter().map(|m| m.0).collect();
    let seqs: Vec<String> = moved.iter().map(|m| num(m.1)).collect();
    let st = tx
        .prepare_cached(
            "UPDATE ledger_hwm AS t SET seq = u.s::numeric \
             FROM unnest($1::text[], $2::text[]) AS u(a, s) WHERE t.agent = u.a",
        )
        .await?;
    tx.execute(&st, &[&agents, &seqs]).await?;
    Ok(())
}

/// Quarantined records of `agent` in `first..=last`, in sequence order.
async fn rejections_between(
    tx: &Tx<'_>,
    agent: &str,
    first: u64,
    last: u64,
) -> R<Vec<RejectionNotice>> {
    let st = tx
        .prepare_cached(
            "SELECT seq::text AS seq_text, rejection FROM ledger_rejected \
             WHERE agent = $1 AND seq BETWEEN $2::text::numeric AND $3::text::numeric \
             ORDER BY seq",
        )
        .await?;
    let mut out = Vec::new();
    for row in tx.query(&st, &[&agent, &num(first), &num(last)]).await? {
        let r: StoredRejection = from_proto(row.get(1), "rejected record")?;
        out.push(RejectionNotice {
            seq: parse_u64(row.get(0), "rejected record's sequence number")?,
            reason: r.reason,
            detail: r.detail,
        });
    }
    Ok(out)
}

/// Tells the other replicas, at this transaction's commit, that the ledger changed: the
/// compliance leader evaluates within its debounce rather than at its next full pass
/// (`flopmeter_pg::notify`).
pub(super) async fn notify_ledger_changed(tx: &Tx<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(&format!("NOTIFY {}", flopmeter_pg::notify::LEDGER_CHANGED))
        .await
}
