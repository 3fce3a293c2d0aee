//! The in-memory reference store: [`LedgerStore`] and [`ComplianceStore`] over `BTreeMap`s
//! behind one `Mutex`.
//!
//! Why it exists: it is the model the other stores are tested against (the way vector's
//! disk buffer is tested against a model): the parametrised store suite runs the same tests
//! on it and on sled, and the model test (`collector/tests/store_model.rs`) applies random
//! histories to both and compares totals, clocks, alerts and audit heads. So it is written
//! to be obviously right rather than fast:
//! - every value is kept decoded, keyed by typed tuples (no key layouts, no codecs);
//! - a write takes the one lock, works on a copy of the state and replaces the state only
//!   when it succeeded, so atomicity is the `Mutex`'s, not code's;
//! - what a write means (the sequence plan, aggregates, plan versions, audit payloads) comes
//!   from the same pure functions the sled store uses (`sequence`, `aggregate`, `facts`,
//!   `verify`), so the two stores can only differ in how they store;
//! - `flush` does nothing: nothing survives the process.
//!
//! It is not a production mode: no flag selects it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use flopmeter_core::alert::Alert;
use flopmeter_core::audit::{AuditEntry, ChainHead};
use flopmeter_core::clock::ClockState;
use flopmeter_core::stage::StagePolicy;
use flopmeter_proto::v1::IntervalRecord;

use super::aggregate::{Aggregate, Attribution, attribution, gpu_type_of};
use super::codec::{AgentInfo, Declaration, Rollup, StoredBatch, StoredRejection};
use super::facts::{PlanStatement, RegistryChange, Statements, record_statements};
use super::keys::{DAY_MS, Seen};
use super::plans::{PlanHistory, PlanScope};
use super::rollup::RollupDeltas;
use super::sequence::{self, Admission};
use super::verify::{
    Recomputed, VerifyCut, VerifyReport, VerifyScan, compare, compare_marks, compare_seen,
};
use super::{
    ApplyOutcome, IncomingBatch, LedgerStore, ModelEntry, RawBatchId, RejectedEntry,
    RejectionNotice, RollupStats, RunEntry, RunRollup, SeqRange, StoreError, UnattributedBucket,
};
use crate::compliance::chain::AuditRecord;
use crate::compliance::store::{
    Change, ComplianceStore, ComplianceStoreError, OutboxItem, check_start,
};
use crate::storage::transfer::{Counts, Export, Import, Item, SeenEntry, TransferError};

/// (model, run).
type RunKey = (String, String);
/// (node, GPU type, day or hour).
type NodeBucket = (String, String, i64);

/// Everything the store holds.
#[derive(Debug, Clone, Default)]
struct State {
    raw: BTreeMap<RawBatchId, StoredBatch>,
    /// Roll-ups that removed raw batches ([`LedgerStore::rollup_generation`]).
    rollup_generation: u64,
    hwm: BTreeMap<String, u64>,
    runs: BTreeMap<RunKey, Aggregate>,
    models: BTreeMap<String, Aggregate>,
    /// Per (node, GPU type, UTC day).
    unattributed: BTreeMap<NodeBucket, Aggregate>,
    /// (model, run, agent).
    run_agents: BTreeSet<(String, String, String)>,
    /// (model, run, node).
    run_nodes: BTreeSet<(String, String, String)>,
    /// (model, agent).
    model_agents: BTreeSet<(String, String)>,
    /// (model, node).
    model_nodes: BTreeSet<(String, String)>,
    declarations: BTreeMap<RunKey, Declaration>,
    rejected: BTreeMap<(String, u64), StoredRejection>,
    /// Per (model, run, hour).
    run_rollups: BTreeMap<(String, String, i64), Rollup>,
    /// Per (node, GPU type, hour).
    unattributed_rollups: BTreeMap<NodeBucket, Rollup>,
    registry: BTreeMap<String, ModelEntry>,
    plans: BTreeMap<(String, PlanScope), PlanHistory>,
    agents: BTreeMap<String, AgentInfo>,
    stage_policy: Option<StagePolicy>,
    clocks: BTreeMap<(String, String), ClockState>,
    alerts: BTreeMap<(String, String), Alert>,
    audit: Vec<AuditEntry>,
    head: Option<ChainHead>,
    /// Per (sink, idempotency key).
    outbox: BTreeMap<(String, String), OutboxItem>,
    next_outbox_seq: u64,
    compliance_meta: BTreeMap<String, Vec<u8>>,
}

/// The in-memory store. See the module docs.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a copy of the state and keeps the copy only if `f` succeeded.
    fn write<T, E>(&self, f: impl FnOnce(&mut State) -> Result<T, E>) -> Result<T, E> {
        let mut state = self.state();
        let mut next = state.clone();
        let out = f(&mut next)?;
        *state = next;
        Ok(out)
    }
}

/// The latest event a raw batch holds: rollups take the batches that ended before a cutoff.
fn last_event(b: &StoredBatch) -> i64 {
    b.records.iter().map(|r| r.end_unix_ms).fold(0, i64::max)
}

impl State {
    fn append(&mut self, records: &[AuditRecord]) -> Vec<AuditEntry> {
        if records.is_empty() {
            return Vec::new();
        }
        let mut head = self.head.clone().unwrap_or_else(ChainHead::genesis);
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let e = head.append(r.time_ms, &r.actor, r.kind.clone(), r.payload.clone());
            self.audit.push(e.clone());
            out.push(e);
        }
        self.head = Some(head);
        out
    }

    fn rejections_between(&self, agent: &str, first: u64, last: u64) -> Vec<RejectionNotice> {
        self.rejected
            .range((agent.to_string(), first)..=(agent.to_string(), last))
            .map(|((_, seq), r)| RejectionNotice {
                seq: *seq,
                reason: r.reason.clone(),
                detail: r.detail.clone(),
            })
            .collect()
    }

    fn apply(&mut self, b: &IncomingBatch, seqs: &[u64]) -> Result<ApplyOutcome, StoreError> {
        let (agent, node) = (b.agent_id.as_str(), b.node.as_str());
        let hwm = self.hwm.get(agent).copied().unwrap_or(0);
        let (start, end, mut out) = match sequence::admit(hwm, seqs) {
            Admission::Answered(outcome) => return Ok(outcome),
            Admission::Apply {
                start,
                end,
                outcome,
            } => (start, end, outcome),
        };
        // A batch adds its own aggregate to each stored one, as every store does.
        let mut run_delta: BTreeMap<(&str, &str), Aggregate> = BTreeMap::new();
        let mut model_delta: BTreeMap<&str, Aggregate> = BTreeMap::new();
        let mut unatt_delta: BTreeMap<NodeBucket, Aggregate> = BTreeMap::new();
        let mut decls: BTreeMap<(&str, &str), &Declaration> = BTreeMap::new();
        let mut statements = Statements::new();
        let mut good: Vec<IntervalRecord> = Vec::new();
        for cr in &b.records[start..end] {
            let rec = &cr.record;
            if let Some(rej) = &cr.rejection {
                self.rejected.insert(
                    (agent.to_string(), rec.seq),
                    StoredRejection::new(rec, rej, node, b.received_unix_ms),
                );
                out.rejections.push(RejectionNotice {
                    seq: rec.seq,
                    reason: rej.reason.clone(),
                    detail: rej.detail.clone(),
                });
                out.newly_rejected += 1;
                continue;
            }
            out.applied += 1;
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
                    let key = (node.to_string(), gpu_type_of(rec).to_string(), day);
                    unatt_delta.entry(key).or_default().add_record(rec);
                }
            }
            good.push(rec.clone());
        }
        let s = |v: &str| v.to_string();
        for ((model, run), d) in run_delta {
            let new_agent = self.run_agents.insert((s(model), s(run), s(agent)));
            let new_node = self.run_nodes.insert((s(model), s(run), s(node)));
            let a = self.runs.entry((s(model), s(run))).or_default();
            a.merge_stages(&d);
            a.agents += u64::from(new_agent);
            a.nodes += u64::from(new_node);
        }
        for (model, d) in model_delta {
            let new_agent = self.model_agents.insert((s(model), s(agent)));
            let new_node = self.model_nodes.insert((s(model), s(node)));
            let a = self.models.entry(s(model)).or_default();
            a.merge_stages(&d);
            a.agents += u64::from(new_agent);
            a.nodes += u64::from(new_node);
        }
        for (key, d) in unatt_delta {
            self.unattributed.entry(key).or_default().merge_stages(&d);
        }
        for ((model, run), decl) in decls {
            if !decl.is_empty() {
                self.declarations.insert((s(model), s(run)), decl.clone());
            }
        }
        let mut facts = Vec::new();
        for ((model, run), said) in statements {
            let key = (s(model), PlanScope::Run(s(run)));
            let mut history = self.plans.get(&key).cloned().unwrap_or_default();
            if record_statements(
                &mut history,
                &said,
                (model, run),
                (agent, node),
                b.received_unix_ms,
                &mut out,
                &mut facts,
            )? {
                self.plans.insert(key, history);
            }
        }
        self.append(&facts);
        if !good.is_empty() {
            let id = RawBatchId {
                agent_id: s(agent),
                first_seq: seqs[start],
            };
            let batch = StoredBatch {
                agent_id: s(agent),
                node: s(node),
                received_unix_ms: b.received_unix_ms,
                records: good,
            };
            self.raw.insert(id, batch);
        }
        out.acked_through = seqs[end - 1];
        self.hwm.insert(s(agent), out.acked_through);
        Ok(out)
    }

    fn roll_up(&mut self, cutoff_unix_ms: i64, max_batches: usize) -> RollupStats {
        let mut due: Vec<(i64, RawBatchId)> = self
            .raw
            .iter()
            .map(|(id, b)| (last_event(b), id.clone()))
            .filter(|(last, _)| *last < cutoff_unix_ms.max(0))
            .collect();
        due.sort();
        let mut stats = RollupStats {
            more: due.len() > max_batches,
            ..RollupStats::default()
        };
        due.truncate(max_batches);
        let mut deltas = RollupDeltas::default();
        for (_, id) in due {
            if let Some(batch) = self.raw.remove(&id) {
                deltas.add_batch(&batch, &mut stats);
            }
        }
        if stats.batches > 0 {
            self.rollup_generation += 1;
        }
        for (k, d) in &deltas.runs {
            self.run_rollups.entry(k.clone()).or_default().merge(d);
        }
        for (k, d) in &deltas.unattributed {
            self.unattributed_rollups
                .entry(k.clone())
                .or_default()
                .merge(d);
        }
        stats
    }

    /// Recomputes every aggregate from the raw batches and rollups and compares.
    fn verify(&self) -> VerifyReport {
        let mut rc = Recomputed::default();
        let mut max_seq: BTreeMap<&str, u64> = BTreeMap::new();
        for (id, batch) in &self.raw {
            rc.add_raw(batch);
            let last = batch.records.last().map_or(0, |r| r.seq);
            let m = max_seq.entry(&id.agent_id).or_default();
            *m = (*m).max(last);
        }
        for (agent, seq) in self.rejected.keys() {
            let m = max_seq.entry(agent).or_default();
            *m = (*m).max(*seq);
        }
        for ((model, run, _), r) in &self.run_rollups {
            rc.add_run_rollup(model, run, r);
        }
        for ((node, gpu, hour), r) in &self.unattributed_rollups {
            rc.add_unattributed_rollup(node, gpu, *hour, r);
        }
        rc.finish();
        let mut m = Vec::new();
        compare(
            "run",
            &self.runs,
            &rc.runs,
            |(a, b)| format!("{a}/{b}"),
            &mut m,
        );
        compare("model", &self.models, &rc.models, |a| a.clone(), &mut m);
        compare(
            "unattributed",
            &self.unattributed,
            &rc.unattributed,
            |(n, g, d)| format!("{n}/{g}/day {d}"),
            &mut m,
        );
        let mut stored = BTreeSet::new();
        for (model, run, a) in &self.run_agents {
            stored.insert(Seen::RunAgent.key(&[model, run, a]));
        }
        for (model, run, n) in &self.run_nodes {
            stored.insert(Seen::RunNode.key(&[model, run, n]));
        }
        for (model, a) in &self.model_agents {
            stored.insert(Seen::ModelAgent.key(&[model, a]));
        }
        for (model, n) in &self.model_nodes {
            stored.insert(Seen::ModelNode.key(&[model, n]));
        }
        compare_seen(&stored, &rc, &mut m);
        compare_marks(max_seq, &self.hwm, &mut m);
        VerifyReport {
            raw_batches: rc.raw_batches,
            raw_records: rc.raw_records,
            rollups: rc.rollups,
            runs: self.runs.len() as u64,
            models: self.models.len() as u64,
            unattributed_buckets: self.unattributed.len() as u64,
            mismatches: m,
        }
    }
}

impl LedgerStore for MemoryStore {
    fn high_water_mark(&self, agent_id: &str) -> Result<u64, StoreError> {
        Ok(self.state().hwm.get(agent_id).copied().unwrap_or(0))
    }

    fn high_water_marks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .state()
            .hwm
            .iter()
            .map(|(a, h)| (a.clone(), *h))
            .collect())
    }

    fn apply_batch(&self, b: &IncomingBatch) -> Result<ApplyOutcome, StoreError> {
        let seqs = b.checked_seqs()?;
        self.write(|s| {
            let mut out = s.apply(b, &seqs)?;
            // Resent records: the agent hears again of those quarantined earlier, in case
            // the Ack that carried them was lost.
            if out.duplicates > 0 {
                let mut earlier =
                    s.rejections_between(&b.agent_id, seqs[0], seqs[out.duplicates - 1]);
                earlier.append(&mut out.rejections);
                out.rejections = earlier;
            }
            Ok(out)
        })
    }

    fn recent_records(
        &self,
        agent_id: &str,
        max_batches: usize,
    ) -> Result<(Vec<IntervalRecord>, bool), StoreError> {
        let s = self.state();
        let from = RawBatchId {
            agent_id: agent_id.to_string(),
            first_seq: 0,
        };
        let to = RawBatchId {
            agent_id: agent_id.to_string(),
            first_seq: u64::MAX,
        };
        let mut batches: Vec<&StoredBatch> = s.raw.range(from..=to).map(|(_, b)| b).collect();
        let truncated = batches.len() > max_batches;
        let batches = batches.split_off(batches.len().saturating_sub(max_batches));
        let records = batches.iter().flat_map(|b| b.records.clone()).collect();
        Ok((records, truncated))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn record_agent(&self, info: &AgentInfo) -> Result<(), StoreError> {
        self.state()
            .agents
            .insert(info.agent_id.clone(), info.clone());
        Ok(())
    }

    fn agents(&self) -> Result<Vec<AgentInfo>, StoreError> {
        Ok(self.state().agents.values().cloned().collect())
    }

    fn model_names(&self) -> Result<Vec<String>, StoreError> {
        let s = self.state();
        let names: BTreeSet<&String> = s.models.keys().chain(s.registry.keys()).collect();
        Ok(names.into_iter().cloned().collect())
    }

    fn model_aggregate(&self, model: &str) -> Result<Option<Aggregate>, StoreError> {
        Ok(self.state().models.get(model).cloned())
    }

    fn run_exists(&self, model: &str, run: &str) -> Result<bool, StoreError> {
        Ok(self
            .state()
            .runs
            .contains_key(&(model.to_string(), run.to_string())))
    }

    fn run_aggregate(&self, model: &str, run: &str) -> Result<Option<Aggregate>, StoreError> {
        Ok(self
            .state()
            .runs
            .get(&(model.to_string(), run.to_string()))
            .cloned())
    }

    fn runs(&self, model: &str) -> Result<Vec<RunEntry>, StoreError> {
        let s = self.state();
        Ok(s.runs
            .iter()
            .filter(|((m, _), _)| m == model)
            .map(|((m, run), a)| RunEntry {
                model: m.clone(),
                run: run.clone(),
                aggregate: a.clone(),
                declaration: s.declarations.get(&(m.clone(), run.clone())).cloned(),
            })
            .collect())
    }

    fn model_nodes(&self, model: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .state()
            .model_nodes
            .iter()
            .filter(|(m, _)| m == model)
            .map(|(_, n)| n.clone())
            .collect())
    }

    fn unattributed(
        &self,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<UnattributedBucket>, StoreError> {
        Ok(self
            .state()
            .unattributed
            .iter()
            .filter(|((_, _, day), _)| (first_day..=last_day).contains(day))
            .map(|((node, gpu_type, day), a)| UnattributedBucket {
                node: node.clone(),
                gpu_type: gpu_type.clone(),
                day: *day,
                aggregate: a.clone(),
            })
            .collect())
    }

    fn model_entry(&self, model: &str) -> Result<Option<ModelEntry>, StoreError> {
        Ok(self.state().registry.get(model).cloned())
    }

    fn set_model_entry(&self, entry: &ModelEntry) -> Result<(), StoreError> {
        let change = RegistryChange::new(entry)?;
        self.write(|s| {
            let key = (entry.model.clone(), PlanScope::Registry);
            let mut history = s.plans.get(&key).cloned().unwrap_or_default();
            let plan = change.record_plan(&mut history);
            let fact = change.fact(s.registry.get(&entry.model), plan)?;
            if plan.is_some() {
                s.plans.insert(key, history);
            }
            s.registry.insert(entry.model.clone(), entry.clone());
            s.append(&[fact]);
            Ok(())
        })
    }

    fn plan_histories(&self, model: &str) -> Result<Vec<(PlanScope, PlanHistory)>, StoreError> {
        Ok(self
            .state()
            .plans
            .iter()
            .filter(|((m, _), _)| m == model)
            .map(|((_, scope), h)| (scope.clone(), h.clone()))
            .collect())
    }

    fn rejections(
        &self,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RejectedEntry>, StoreError> {
        Ok(self
            .state()
            .rejected
            .iter()
            .filter(|((agent, _), _)| agent_id.is_none_or(|a| a == agent))
            .take(limit)
            .map(|((agent, seq), r)| RejectedEntry {
                agent_id: agent.clone(),
                node: r.node.clone(),
                seq: *seq,
                reason: r.reason.clone(),
                detail: r.detail.clone(),
                received_unix_ms: r.received_unix_ms,
            })
            .collect())
    }

    fn roll_up(&self, cutoff_unix_ms: i64, max_batches: usize) -> Result<RollupStats, StoreError> {
        self.write(|s| Ok(s.roll_up(cutoff_unix_ms, max_batches)))
    }

    /// Nothing to do off the lock: [`LedgerStore::verify_finish`] checks the whole store at
    /// once, under it.
    fn verify_scan(&self, cut: VerifyCut) -> Result<VerifyScan, StoreError> {
        Ok(VerifyScan {
            cut,
            ..VerifyScan::default()
        })
    }

    fn verify_finish(&self, _scan: VerifyScan) -> Result<VerifyReport, StoreError> {
        Ok(self.state().verify())
    }

    fn stage_policy(&self) -> Result<Option<StagePolicy>, StoreError> {
        Ok(self.state().stage_policy.clone())
    }

    fn set_stage_policy(&self, policy: &StagePolicy) -> Result<(), StoreError> {
        self.state().stage_policy = Some(policy.clone());
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn raw_batches_between(
        &self,
        ranges: &[SeqRange],
        limit: usize,
    ) -> Result<Vec<(RawBatchId, StoredBatch)>, StoreError> {
        let state = self.state();
        let mut ranges: Vec<&SeqRange> = ranges.iter().filter(|r| r.after < r.upto).collect();
        ranges.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let id = |agent: &str, first_seq| RawBatchId {
            agent_id: agent.to_string(),
            first_seq,
        };
        Ok(ranges
            .into_iter()
            .flat_map(|r| {
                state
                    .raw
                    .range(id(&r.agent_id, r.after + 1)..=id(&r.agent_id, r.upto))
                    .map(|(k, b)| (k.clone(), b.clone()))
            })
            .take(limit)
            .collect())
    }

    fn rollup_generation(&self) -> Result<u64, StoreError> {
        Ok(self.state().rollup_generation)
    }

    fn run_rollups(&self) -> Result<Vec<RunRollup>, StoreError> {
        Ok(self
            .state()
            .run_rollups
            .iter()
            .map(|((model, run, hour), r)| RunRollup {
                model: model.clone(),
                run: run.clone(),
                hour: *hour,
                rollup: r.clone(),
            })
            .collect())
    }
}

impl ComplianceStore for MemoryStore {
    fn clock(
        &self,
        model: &str,
        threshold: &str,
    ) -> Result<Option<ClockState>, ComplianceStoreError> {
        Ok(self
            .state()
            .clocks
            .get(&(model.to_string(), threshold.to_string()))
            .cloned())
    }

    fn clocks(&self) -> Result<Vec<ClockState>, ComplianceStoreError> {
        Ok(self.state().clocks.values().cloned().collect())
    }

    fn alert(&self, model: &str, threshold: &str) -> Result<Option<Alert>, ComplianceStoreError> {
        Ok(self
            .state()
            .alerts
            .get(&(model.to_string(), threshold.to_string()))
            .cloned())
    }

    fn alerts(&self) -> Result<Vec<Alert>, ComplianceStoreError> {
        Ok(self.state().alerts.values().cloned().collect())
    }

    fn meta_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, ComplianceStoreError> {
        Ok(self.state().compliance_meta.get(name).cloned())
    }

    fn outbox(&self) -> Result<Vec<OutboxItem>, ComplianceStoreError> {
        let mut items: Vec<OutboxItem> = self.state().outbox.values().cloned().collect();
        items.sort_by_key(|i| i.seq);
        Ok(items)
    }

    fn head(&self) -> Result<ChainHead, ComplianceStoreError> {
        Ok(self.state().head.clone().unwrap_or_default())
    }

    fn audit_entries(&self) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        Ok(self.state().audit.clone())
    }

    fn audit_range(&self, from: u64, to: u64) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        Ok(self
            .state()
            .audit
            .iter()
            .filter(|e| (from..to).contains(&e.seq))
            .cloned()
            .collect())
    }

    fn commit(&self, change: &Change) -> Result<Vec<AuditEntry>, ComplianceStoreError> {
        if change.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|s| {
            if let Some(c) = &change.clock {
                let key = (c.model.clone(), c.threshold_id.clone());
                check_start(s.clocks.get(&key), c)?;
                s.clocks.insert(key, c.clone());
            }
            if let Some(a) = &change.alert {
                s.alerts
                    .insert((a.model.clone(), a.threshold_id.clone()), a.clone());
            }
            let written = s.append(&change.audit);
            for o in &change.outbox {
                let key = (o.sink.clone(), o.key.clone());
                if !s.outbox.contains_key(&key) {
                    let mut o = o.clone();
                    o.seq = s.next_outbox_seq;
                    s.next_outbox_seq += 1;
                    s.outbox.insert(key, o);
                }
            }
            for o in &change.outbox_update {
                s.outbox.insert((o.sink.clone(), o.key.clone()), o.clone());
            }
            for (name, v) in &change.meta {
                s.compliance_meta.insert(name.clone(), v.clone());
            }
            Ok(written)
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn flush(&self) -> Result<(), ComplianceStoreError> {
        Ok(())
    }
}

impl Export for MemoryStore {
    fn counts(&self) -> Result<Counts, TransferError> {
        let mut c = Counts::default();
        for item in self.state().items() {
            c.add(item.kind(), 1);
        }
        Ok(c)
    }

    fn export(
        &self,
        sink: &mut dyn FnMut(Item) -> Result<(), TransferError>,
    ) -> Result<Counts, TransferError> {
        // A copy, so the sink never runs under the lock (it may write to another store).
        let items = self.state().items();
        let mut c = Counts::default();
        for item in items {
            c.add(item.kind(), 1);
            sink(item)?;
        }
        Ok(c)
    }
}

impl Import for MemoryStore {
    fn is_empty(&self) -> Result<bool, TransferError> {
        Ok(self.state().items().is_empty())
    }

    fn import(&self, items: Vec<Item>) -> Result<(), TransferError> {
        self.write(|s| {
            for item in items {
                s.put(item);
            }
            Ok(())
        })
    }

    fn finish(&self) -> Result<(), TransferError> {
        Ok(())
    }
}

impl State {
    /// Everything held, as transfer items.
    fn items(&self) -> Vec<Item> {
        // The head first and the entries last: the order `Export::export` promises.
        let mut out: Vec<Item> = self.head.clone().map(Item::AuditHead).into_iter().collect();
        for (id, batch) in &self.raw {
            out.push(Item::RawBatch {
                id: id.clone(),
                batch: batch.clone(),
            });
        }
        for (agent, seq) in &self.hwm {
            out.push(Item::HighWaterMark {
                agent: agent.clone(),
                seq: *seq,
            });
        }
        for ((model, run), a) in &self.runs {
            out.push(Item::RunAggregate {
                model: model.clone(),
                run: run.clone(),
                aggregate: a.clone(),
            });
        }
        for (model, a) in &self.models {
            out.push(Item::ModelAggregate {
                model: model.clone(),
                aggregate: a.clone(),
            });
        }
        for ((node, gpu_type, day), a) in &self.unattributed {
            out.push(Item::Unattributed {
                node: node.clone(),
                gpu_type: gpu_type.clone(),
                day: *day,
                aggregate: a.clone(),
            });
        }
        for (model, run, agent) in &self.run_agents {
            out.push(Item::Seen(SeenEntry::RunAgent {
                model: model.clone(),
                run: run.clone(),
                agent: agent.clone(),
            }));
        }
        for (model, run, node) in &self.run_nodes {
            out.push(Item::Seen(SeenEntry::RunNode {
                model: model.clone(),
                run: run.clone(),
                node: node.clone(),
            }));
        }
        for (model, agent) in &self.model_agents {
            out.push(Item::Seen(SeenEntry::ModelAgent {
                model: model.clone(),
                agent: agent.clone(),
            }));
        }
        for (model, node) in &self.model_nodes {
            out.push(Item::Seen(SeenEntry::ModelNode {
                model: model.clone(),
                node: node.clone(),
            }));
        }
        for ((model, run), d) in &self.declarations {
            out.push(Item::Declaration {
                model: model.clone(),
                run: run.clone(),
                declaration: d.clone(),
            });
        }
        for ((agent, seq), r) in &self.rejected {
            out.push(Item::Rejected {
                agent: agent.clone(),
                seq: *seq,
                rejection: r.clone(),
            });
        }
        for ((model, run, hour), r) in &self.run_rollups {
            out.push(Item::RunRollup {
                model: model.clone(),
                run: run.clone(),
                hour: *hour,
                rollup: r.clone(),
            });
        }
        for ((node, gpu_type, hour), r) in &self.unattributed_rollups {
            out.push(Item::UnattributedRollup {
                node: node.clone(),
                gpu_type: gpu_type.clone(),
                hour: *hour,
                rollup: r.clone(),
            });
        }
        out.extend(self.registry.values().cloned().map(Item::ModelEntry));
        for ((model, scope), h) in &self.plans {
            out.push(Item::PlanHistory {
                model: model.clone(),
                scope: scope.clone(),
                history: h.clone(),
            });
        }
        out.extend(self.agents.values().cloned().map(Item::Agent));
        out.extend(self.stage_policy.clone().map(Item::StagePolicy));
        out.extend(self.clocks.values().cloned().map(Item::Clock));
        out.extend(self.alerts.values().cloned().map(Item::Alert));
        out.extend(self.outbox.values().cloned().map(Item::Outbox));
        for (name, value) in &self.compliance_meta {
            out.push(Item::ComplianceMeta {
                name: name.clone(),
                value: value.clone(),
            });
        }
        out.extend(self.audit.iter().cloned().map(Item::AuditEntry));
        out
    }

    /// Stores one transfer item under its key, over what is there.
    fn put(&mut self, item: Item) {
        match item {
            Item::RawBatch { id, batch } => {
                self.raw.insert(id, batch);
            }
            Item::HighWaterMark { agent, seq } => {
                self.hwm.insert(agent, seq);
            }
            Item::RunAggregate {
                model,
                run,
                aggregate,
            } => {
                self.runs.insert((model, run), aggregate);
            }
            Item::ModelAggregate { model, aggregate } => {
                self.models.insert(model, aggregate);
            }
            Item::Unattributed {
                node,
                gpu_type,
                day,
                aggregate,
            } => {
                self.unattributed.insert((node, gpu_type, day), aggregate);
            }
            Item::Seen(SeenEntry::RunAgent { model, run, agent }) => {
                self.run_agents.insert((model, run, agent));
            }
            Item::Seen(SeenEntry::RunNode { model, run, node }) => {
                self.run_nodes.insert((model, run, node));
            }
            Item::Seen(SeenEntry::ModelAgent { model, agent }) => {
                self.model_agents.insert((model, agent));
            }
            Item::Seen(SeenEntry::ModelNode { model, node }) => {
                self.model_nodes.insert((model, node));
            }
            Item::Declaration {
                model,
                run,
                declaration,
            } => {
                self.declarations.insert((model, run), declaration);
            }
            Item::Rejected {
                agent,
                seq,
                rejection,
            } => {
                self.rejected.insert((agent, seq), rejection);
            }
            Item::RunRollup {
                model,
                run,
                hour,
                rollup,
            } => {
                self.run_rollups.insert((model, run, hour), rollup);
            }
            Item::UnattributedRollup {
                node,
                gpu_type,
                hour,
                rollup,
            } => {
                self.unattributed_rollups
                    .insert((node, gpu_type, hour), rollup);
            }
            Item::ModelEntry(e) => {
                self.registry.insert(e.model.clone(), e);
            }
            Item::PlanHistory {
                model,
                scope,
                history,
            } => {
                self.plans.insert((model, scope), history);
            }
            Item::Agent(a) => {
                self.agents.insert(a.agent_id.clone(), a);
            }
            Item::StagePolicy(p) => self.stage_policy = Some(p),
            Item::Clock(c) => {
                self.clocks
                    .insert((c.model.clone(), c.threshold_id.clone()), c);
            }
            Item::Alert(a) => {
                self.alerts
                    .insert((a.model.clone(), a.threshold_id.clone()), a);
            }
            Item::Outbox(o) => {
                // Items enqueued later on this store come after every imported one.
                self.next_outbox_seq = self.next_outbox_seq.max(o.seq.saturating_add(1));
                self.outbox.insert((o.sink.clone(), o.key.clone()), o);
            }
            Item::ComplianceMeta { name, value } => {
                self.compliance_meta.insert(name, value);
            }
            Item::AuditEntry(e) => {
                // Kept in sequence order, an entry already there replaced.
                match self.audit.binary_search_by_key(&e.seq, |x| x.seq) {
                    Ok(i) => self.audit[i] = e,
                    Err(i) => self.audit.insert(i, e),
                }
            }
            Item::AuditHead(h) => self.head = Some(h),
        }
    }
}
