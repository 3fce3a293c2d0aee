//! Applying batches: one sled transaction per commit group over every tree a batch touches,
//! decoded values cached between groups.

use std::collections::{BTreeMap, HashMap, HashSet};

use flopmeter_proto::v1::IntervalRecord;
use prost::Message as _;
use sled::Transactional;
use sled::transaction::{TransactionError, TransactionalTree};

use super::chain;
use super::{SledStore, TxResult, abort, decode_u64, tx_error};
use crate::ledger::aggregate::{Aggregate, Attribution, attribution, gpu_type_of};
use crate::ledger::codec::{Declaration, StoredRejection, from_json, from_proto, to_json};
use crate::ledger::facts::{PlanStatement, Statements, record_statements};
use crate::ledger::keys::{self, DAY_MS, Seen};
use crate::ledger::plans::{PlanHistory, PlanScope};
use crate::ledger::sequence::{self, Admission};
use crate::ledger::{ApplyOutcome, IncomingBatch, LedgerStore, RejectionNotice, StoreError};

pub(super) fn apply_batch(
    store: &SledStore,
    b: &IncomingBatch,
) -> Result<ApplyOutcome, StoreError> {
    let seqs = b.checked_seqs()?;
    let mut outs = store.run_group(&[(b, &seqs)]).map_err(tx_error)?;
    let out = outs.pop().expect("one batch, one outcome");
    store.with_earlier_rejections(b, &seqs, out)
}

pub(super) fn apply_group(
    store: &SledStore,
    batches: &[&IncomingBatch],
) -> Vec<Result<ApplyOutcome, StoreError>> {
    let checked: Vec<Result<Vec<u64>, StoreError>> =
        batches.iter().map(|b| b.checked_seqs()).collect();
    let valid: Vec<(&IncomingBatch, &[u64])> = batches
        .iter()
        .zip(&checked)
        .filter_map(|(b, s)| s.as_ref().ok().map(|s| (*b, s.as_slice())))
        .collect();
    // One transaction for the whole group: sled 0.34 seals and writes its log buffer
    // once per transaction, so per-batch transactions cost one write and a thread
    // wake-up each. Each batch stays atomic (the group is), and batches see the writes
    // of the batches before them (same agent twice in a group included).
    match store.run_group(&valid) {
        Ok(outs) => {
            let mut outs = outs.into_iter();
            batches
                .iter()
                .zip(checked)
                .map(|(b, seqs)| {
                    let seqs = seqs?;
                    let out = outs.next().expect("one outcome per valid batch");
                    store.with_earlier_rejections(b, &seqs, out)
                })
                .collect()
        }
        // One batch failed (a corrupt value, a storage error): nothing of the group was
        // written; apply each on its own so the failure stays with its batch.
        Err(_) => batches.iter().map(|b| store.apply_batch(b)).collect(),
    }
}

impl SledStore {
    /// Applies batches in one transaction and, once it committed, remembers what it wrote.
    fn run_group(
        &self,
        batches: &[(&IncomingBatch, &[u64])],
    ) -> Result<Vec<ApplyOutcome>, TransactionError<StoreError>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let trees = (
            &self.raw,
            &self.raw_index,
            &self.hwm,
            &self.run_agg,
            &self.model_agg,
            &self.unattributed,
            &self.seen,
            &self.run_meta,
            &self.rejected,
            &self.plans,
            &self.audit_log,
            &self.audit_head,
        );
        let (outs, working) = trees.transaction(|views| {
            let t = BatchTrees::new(views);
            let t = &t;
            let mut w = Working::default();
            let mut outs = Vec::with_capacity(batches.len());
            for (b, seqs) in batches {
                outs.push(apply_in_tx(t, b, seqs, &mut w, &cache)?);
            }
            w.write(t)?;
            Ok((outs, w))
        })?;
        cache.absorb(working);
        Ok(outs)
    }

    /// Resent records: tells the agent again about those quarantined earlier, in case the
    /// Ack that carried them was lost.
    fn with_earlier_rejections(
        &self,
        b: &IncomingBatch,
        seqs: &[u64],
        mut outcome: ApplyOutcome,
    ) -> Result<ApplyOutcome, StoreError> {
        if outcome.duplicates > 0 {
            let last_dup = seqs[outcome.duplicates - 1];
            let mut earlier = self.earlier_rejections(&b.agent_id, seqs[0], last_dup)?;
            earlier.append(&mut outcome.rejections);
            outcome.rejections = earlier;
        }
        Ok(outcome)
    }

    /// Rejections already quarantined for `agent` in `first..=last` (resent records).
    fn earlier_rejections(
        &self,
        agent: &str,
        first: u64,
        last: u64,
    ) -> Result<Vec<RejectionNotice>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .rejected
            .range(keys::agent_seq(agent, first)..=keys::agent_seq(agent, last))
        {
            let (k, v) = kv?;
            let r: StoredRejection = from_proto(&v, "rejected record")?;
            let seq = keys::split_agent_seq(&k).map_or(0, |(_, s)| s);
            out.push(RejectionNotice {
                seq,
                reason: r.reason,
                detail: r.detail,
            });
        }
        Ok(out)
    }
}

/// Which aggregate tree a cached value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AggTree {
    Run,
    Model,
    Unattributed,
}

/// Decoded values known to be committed, so that a batch does not decode an aggregate or
/// probe a `seen` entry the previous batches already touched. Only the writer uses it,
/// and only after its transaction committed; it is dropped with the store (a restarted
/// collector starts cold).
#[derive(Debug, Default)]
pub(super) struct Cache {
    aggregates: HashMap<(AggTree, Vec<u8>), Aggregate>,
    hwms: HashMap<String, u64>,
    seen: HashSet<Vec<u8>>,
}

/// Beyond this many entries a cache is emptied rather than grown. The hot set is the runs,
/// models and agents reporting now; a ledger with many more (100,000 one-record models) must
/// not keep each decoded aggregate for ever (about 1 KiB each).
const CACHE_LIMIT: usize = 8_192;

impl Cache {
    fn absorb(&mut self, w: Working) {
        if self.aggregates.len() + w.aggregates.len() > CACHE_LIMIT {
            self.aggregates.clear();
        }
        if self.seen.len() + w.seen.len() > CACHE_LIMIT * 4 {
            self.seen.clear();
        }
        if self.hwms.len() + w.hwms.len() > CACHE_LIMIT {
            self.hwms.clear();
        }
        self.aggregates.extend(w.aggregates);
        self.hwms.extend(w.hwms);
        self.seen.extend(w.seen);
    }
}

/// What one transaction changes, kept decoded and written once at its end: a group of
/// batches touching the same run encodes its aggregate once, not once per batch.
#[derive(Debug, Default)]
struct Working {
    aggregates: HashMap<(AggTree, Vec<u8>), Aggregate>,
    hwms: HashMap<String, u64>,
    seen: HashSet<Vec<u8>>,
}

impl Working {
    fn hwm(&mut self, tree: &TransactionalTree, cache: &Cache, agent: &str) -> TxResult<u64> {
        if let Some(&h) = self.hwms.get(agent).or_else(|| cache.hwms.get(agent)) {
            return Ok(h);
        }
        Ok(match tree.get(agent.as_bytes())? {
            Some(v) => abort(decode_u64(&v))?,
            None => 0,
        })
    }

    /// True when `key` is a new `seen` entry (and inserts it).
    fn see(&mut self, tree: &TransactionalTree, cache: &Cache, key: Vec<u8>) -> TxResult<bool> {
        if self.seen.contains(&key) || cache.seen.contains(&key) {
            return Ok(false);
        }
        let new = tree.get(&key)?.is_none();
        if new {
            tree.insert(key.clone(), &[][..])?;
        }
        self.seen.insert(key);
        Ok(new)
    }

    fn aggregate(
        &mut self,
        which: AggTree,
        tree: &TransactionalTree,
        cache: &Cache,
        key: Vec<u8>,
    ) -> TxResult<&mut Aggregate> {
        let k = (which, key);
        if !self.aggregates.contains_key(&k) {
            let a = match cache.aggregates.get(&k) {
                Some(a) => a.clone(),
                None => match tree.get(&k.1)? {
                    Some(v) => abort(from_json(&v, "aggregate"))?,
                    None => Aggregate::default(),
                },
            };
            self.aggregates.insert(k.clone(), a);
        }
        Ok(self.aggregates.get_mut(&k).expect("inserted above"))
    }

    /// Writes the changed aggregates and high-water marks.
    fn write(&self, t: &BatchTrees<'_>) -> TxResult<()> {
        let (hwm_t, run_agg, model_agg, unatt) = (t.hwm, t.run_agg, t.model_agg, t.unattributed);
        for ((which, key), a) in &self.aggregates {
            let tree = match which {
                AggTree::Run => run_agg,
                AggTree::Model => model_agg,
                AggTree::Unattributed => unatt,
            };
            tree.insert(key.as_slice(), abort(to_json(a, "aggregate"))?)?;
        }
        for (agent, h) in &self.hwms {
            hwm_t.insert(agent.as_bytes(), &h.to_be_bytes())?;
        }
        Ok(())
    }
}

/// Encodes a [`StoredBatch`] from borrowed records (no copies of the records).
fn encode_stored_batch(
    agent: &str,
    node: &str,
    received: i64,
    records: &[&IntervalRecord],
) -> Vec<u8> {
    use prost::encoding::{int64, message, string};
    let (agent, node) = (agent.to_string(), node.to_string());
    let len =
        records.iter().map(|r| r.encoded_len() + 4).sum::<usize>() + agent.len() + node.len() + 16;
    let mut buf = Vec::with_capacity(len);
    string::encode(1, &agent, &mut buf);
    string::encode(2, &node, &mut buf);
    int64::encode(3, &received, &mut buf);
    for r in records {
        message::encode(4, *r, &mut buf);
    }
    buf
}

/// The transactional views a batch touches.
type Views = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

/// The trees a batch touches, inside one transaction, by name (sled hands them over as a
/// tuple in the order [`SledStore::run_group`] lists them).
struct BatchTrees<'a> {
    raw: &'a TransactionalTree,
    raw_index: &'a TransactionalTree,
    hwm: &'a TransactionalTree,
    run_agg: &'a TransactionalTree,
    model_agg: &'a TransactionalTree,
    unattributed: &'a TransactionalTree,
    seen: &'a TransactionalTree,
    run_meta: &'a TransactionalTree,
    rejected: &'a TransactionalTree,
    plans: &'a TransactionalTree,
    audit_log: &'a TransactionalTree,
    audit_head: &'a TransactionalTree,
}

impl<'a> BatchTrees<'a> {
    fn new(views: &'a Views) -> BatchTrees<'a> {
        BatchTrees {
            raw: &views.0,
            raw_index: &views.1,
            hwm: &views.2,
            run_agg: &views.3,
            model_agg: &views.4,
            unattributed: &views.5,
            seen: &views.6,
            run_meta: &views.7,
            rejected: &views.8,
            plans: &views.9,
            audit_log: &views.10,
            audit_head: &views.11,
        }
    }
}

/// Applies one batch inside a transaction: reads the high-water mark, plans, writes
/// everything the batch moves and the new mark.
fn apply_in_tx(
    t: &BatchTrees<'_>,
    b: &IncomingBatch,
    seqs: &[u64],
    w: &mut Working,
    cache: &Cache,
) -> TxResult<ApplyOutcome> {
    let BatchTrees {
        raw,
        raw_index,
        hwm: hwm_t,
        run_agg,
        model_agg,
        unattributed: unatt,
        seen,
        run_meta,
        rejected,
        plans: plans_t,
        audit_log,
        audit_head,
    } = t;
    let agent = b.agent_id.as_str();
    let node = b.node.as_str();
    let hwm = w.hwm(hwm_t, cache, agent)?;
    let (start, end, mut out) = match sequence::admit(hwm, seqs) {
        Admission::Answered(outcome) => return Ok(outcome),
        Admission::Apply {
            start,
            end,
            outcome,
        } => (start, end, outcome),
    };
    let mut run_delta: BTreeMap<(&str, &str), Aggregate> = BTreeMap::new();
    let mut model_delta: BTreeMap<&str, Aggregate> = BTreeMap::new();
    let mut unatt_delta: BTreeMap<Vec<u8>, Aggregate> = BTreeMap::new();
    let mut decls = BTreeMap::new();
    let mut statements = Statements::new();
    let mut good: Vec<&IntervalRecord> = Vec::with_capacity(end - start);
    let mut last_event = 0i64;
    for cr in &b.records[start..end] {
        let rec = &cr.record;
        if let Some(rej) = &cr.rejection {
            let stored = StoredRejection::new(rec, rej, node, b.received_unix_ms);
            rejected.insert(keys::agent_seq(agent, rec.seq), stored.encode_to_vec())?;
            out.rejections.push(RejectionNotice {
                seq: rec.seq,
                reason: rej.reason.clone(),
                detail: rej.detail.clone(),
            });
            out.newly_rejected += 1;
            continue;
        }
        out.applied += 1;
        last_event = last_event.max(rec.end_unix_ms);
        match attribution(rec) {
            Attribution::Run { model, run } => {
                run_delta.entry((model, run)).or_default().add_record(rec);
                model_delta.entry(model).or_default().add_record(rec);
                if let Some(d) = &cr.declaration {
                    decls.insert((model, run), d);
                    PlanStatement::push(&mut statements, model, run, cr);
                }
            }
            Attribution::Unattributed => {
                let day = rec.start_unix_ms.div_euclid(DAY_MS);
                let key = keys::with_bucket(&[node, gpu_type_of(rec)], day);
                unatt_delta.entry(key).or_default().add_record(rec);
            }
        }
        good.push(rec);
    }
    // Distinct agents and nodes: the `seen` entries and the counts they
    // bump move in this same transaction.
    for ((model, run), d) in &mut run_delta {
        d.agents += u64::from(w.see(seen, cache, Seen::RunAgent.key(&[model, run, agent]))?);
        d.nodes += u64::from(w.see(seen, cache, Seen::RunNode.key(&[model, run, node]))?);
    }
    for (model, d) in &mut model_delta {
        d.agents += u64::from(w.see(seen, cache, Seen::ModelAgent.key(&[model, agent]))?);
        d.nodes += u64::from(w.see(seen, cache, Seen::ModelNode.key(&[model, node]))?);
    }
    for ((model, run), d) in &run_delta {
        let a = w.aggregate(AggTree::Run, run_agg, cache, keys::join(&[model, run]))?;
        a.merge_stages(d);
        a.agents += d.agents;
        a.nodes += d.nodes;
    }
    for (model, d) in &model_delta {
        let a = w.aggregate(AggTree::Model, model_agg, cache, model.as_bytes().to_vec())?;
        a.merge_stages(d);
        a.agents += d.agents;
        a.nodes += d.nodes;
    }
    for (key, d) in unatt_delta {
        w.aggregate(AggTree::Unattributed, unatt, cache, key)?
            .merge_stages(&d);
    }
    // Parsed at the door (`CheckedRecord::new`): nothing here costs more than a lookup.
    for ((model, run), decl) in decls {
        if decl.is_empty() {
            continue;
        }
        let key = keys::join(&[model, run]);
        let unchanged = match run_meta.get(&key)? {
            Some(v) => abort(from_json::<Declaration>(&v, "declaration"))? == *decl,
            None => false,
        };
        if !unchanged {
            run_meta.insert(key, abort(to_json(decl, "declaration"))?)?;
        }
    }
    let mut facts = Vec::new();
    for ((model, run), said) in statements {
        let key = PlanScope::Run(run.to_string()).key(model);
        let mut history: PlanHistory = match plans_t.get(&key)? {
            Some(v) => abort(from_json(&v, "plan history"))?,
            None => PlanHistory::default(),
        };
        let changed = abort(record_statements(
            &mut history,
            &said,
            (model, run),
            (agent, node),
            b.received_unix_ms,
            &mut out,
            &mut facts,
        ))?;
        if changed {
            plans_t.insert(key, abort(to_json(&history, "plan history"))?)?;
        }
    }
    chain::append(audit_log, audit_head, &facts)?;
    let first_seq = seqs[start];
    let last_seq = seqs[end - 1];
    if !good.is_empty() {
        let raw_key = keys::agent_seq(agent, first_seq);
        let mut index_key = (last_event.max(0) as u64).to_be_bytes().to_vec();
        index_key.extend_from_slice(&raw_key);
        raw.insert(
            raw_key,
            encode_stored_batch(agent, node, b.received_unix_ms, &good),
        )?;
        raw_index.insert(index_key, &[][..])?;
    }
    w.hwms.insert(agent.to_string(), last_seq);
    out.acked_through = last_seq;
    Ok(out)
}
