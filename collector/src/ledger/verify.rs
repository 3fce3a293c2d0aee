//! Recomputing the aggregates from raw batches and rollups, and comparing.
//!
//! Why: an auditor must be able to recompute every total the collector reports from the
//! records it received, and a tampered or corrupted aggregate must not go unnoticed. The
//! arithmetic lives here, storage-independent, so every [`super::LedgerStore`] verifies the
//! same way: feed it every raw batch and rollup, then compare with what is stored.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::aggregate::{Aggregate, Attribution, attribution, gpu_type_of};
use super::codec::{Rollup, StoredBatch};
use super::keys::{DAY_MS, HOUR_MS, Seen};

/// (model, run).
pub type RunId = (String, String);
/// (node, GPU type, day).
pub type BucketId = (String, String, i64);

/// Aggregates rebuilt from the ledger's sources of truth.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recomputed {
    /// Per run.
    pub runs: BTreeMap<RunId, Aggregate>,
    /// Per model.
    pub models: BTreeMap<String, Aggregate>,
    /// Per unattributed bucket.
    pub unattributed: BTreeMap<BucketId, Aggregate>,
    /// Agents per run.
    pub run_agents: BTreeMap<RunId, BTreeSet<String>>,
    /// Nodes per run.
    pub run_nodes: BTreeMap<RunId, BTreeSet<String>>,
    /// Agents per model.
    pub model_agents: BTreeMap<String, BTreeSet<String>>,
    /// Nodes per model.
    pub model_nodes: BTreeMap<String, BTreeSet<String>>,
    /// Raw batches fed.
    pub raw_batches: u64,
    /// Records in them.
    pub raw_records: u64,
    /// Rollups fed.
    pub rollups: u64,
}

impl Recomputed {
    /// Adds a raw batch.
    pub fn add_raw(&mut self, batch: &StoredBatch) {
        self.raw_batches += 1;
        for rec in &batch.records {
            self.raw_records += 1;
            match attribution(rec) {
                Attribution::Run { model, run } => {
                    let id = (model.to_string(), run.to_string());
                    self.runs.entry(id.clone()).or_default().add_record(rec);
                    self.models
                        .entry(model.to_string())
                        .or_default()
                        .add_record(rec);
                    self.seen(&id, &batch.agent_id, &batch.node);
                }
                Attribution::Unattributed => {
                    let day = rec.start_unix_ms.div_euclid(DAY_MS);
                    let id = (batch.node.clone(), gpu_type_of(rec).to_string(), day);
                    self.unattributed.entry(id).or_default().add_record(rec);
                }
            }
        }
    }

    /// Adds an hourly rollup of a run.
    pub fn add_run_rollup(&mut self, model: &str, run: &str, rollup: &Rollup) {
        self.rollups += 1;
        let id = (model.to_string(), run.to_string());
        self.runs
            .entry(id.clone())
            .or_default()
            .merge_stages(&rollup.aggregate);
        self.models
            .entry(model.to_string())
            .or_default()
            .merge_stages(&rollup.aggregate);
        for a in &rollup.agents {
            self.run_agents
                .entry(id.clone())
                .or_default()
                .insert(a.clone());
            self.model_agents
                .entry(model.to_string())
                .or_default()
                .insert(a.clone());
        }
        for n in &rollup.nodes {
            self.run_nodes
                .entry(id.clone())
                .or_default()
                .insert(n.clone());
            self.model_nodes
                .entry(model.to_string())
                .or_default()
                .insert(n.clone());
        }
    }

    /// Adds an hourly rollup of unattributed work.
    pub fn add_unattributed_rollup(&mut self, node: &str, gpu_type: &str, hour: i64, r: &Rollup) {
        self.rollups += 1;
        let day = (hour * HOUR_MS).div_euclid(DAY_MS);
        self.unattributed
            .entry((node.to_string(), gpu_type.to_string(), day))
            .or_default()
            .merge_stages(&r.aggregate);
    }

    fn seen(&mut self, id: &RunId, agent: &str, node: &str) {
        let ins = |m: &mut BTreeMap<RunId, BTreeSet<String>>, v: &str| {
            if !m.get(id).is_some_and(|s| s.contains(v)) {
                m.entry(id.clone()).or_default().insert(v.to_string());
            }
        };
        ins(&mut self.run_agents, agent);
        ins(&mut self.run_nodes, node);
        let model = &id.0;
        if !self
            .model_agents
            .get(model)
            .is_some_and(|s| s.contains(agent))
        {
            self.model_agents
                .entry(model.clone())
                .or_default()
                .insert(agent.to_string());
        }
        if !self
            .model_nodes
            .get(model)
            .is_some_and(|s| s.contains(node))
        {
            self.model_nodes
                .entry(model.clone())
                .or_default()
                .insert(node.to_string());
        }
    }

    /// Fills in the distinct agent and node counts once everything is fed.
    pub fn finish(&mut self) {
        for (id, agg) in &mut self.runs {
            agg.agents = self.run_agents.get(id).map_or(0, |s| s.len() as u64);
            agg.nodes = self.run_nodes.get(id).map_or(0, |s| s.len() as u64);
        }
        for (m, agg) in &mut self.models {
            agg.agents = self.model_agents.get(m).map_or(0, |s| s.len() as u64);
            agg.nodes = self.model_nodes.get(m).map_or(0, |s| s.len() as u64);
        }
    }
}

/// Where an online verification cut the ledger: every agent's high-water mark when it
/// started. Raw batches at or below it were there before and never change (rollups wait
/// while a verification runs), so they can be read off the writer while ingest goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyCut {
    /// Agent → high-water mark at the cut.
    pub marks: BTreeMap<String, u64>,
}

/// What the off-writer part of a verification read, completed on the writer by
/// `LedgerStore::verify_finish` with what was applied since the cut.
#[derive(Debug, Clone, Default)]
pub struct VerifyScan {
    /// The cut the scan started from.
    pub cut: VerifyCut,
    /// Recomputed from raw batches up to the cut and every rollup (not yet finished).
    pub recomputed: Recomputed,
    /// Highest stored sequence number per agent (raw and quarantined) up to the cut.
    pub max_seq: BTreeMap<String, u64>,
    /// Stored run aggregates as read (those touched since the cut are read again).
    pub runs: BTreeMap<RunId, Aggregate>,
    /// Stored model aggregates, likewise.
    pub models: BTreeMap<String, Aggregate>,
    /// Stored unattributed aggregates, likewise.
    pub unattributed: BTreeMap<BucketId, Aggregate>,
    /// Stored `seen` keys, likewise per touched model.
    pub seen: BTreeSet<Vec<u8>>,
    /// Agents with stored records but no high-water mark at the cut, and their highest
    /// sequence number: new agents if a mark appears by step 3, damage if not.
    pub unmarked: BTreeMap<String, u64>,
    /// Problems found while scanning (a rollup key of no known scope).
    pub mismatches: Vec<String>,
    /// The whole report, when the scan could compute it at once: a store whose reads see one
    /// consistent snapshot of everything (PostgreSQL's `REPEATABLE READ`) has nothing to add
    /// in step 3, which returns it.
    pub finished: Option<VerifyReport>,
}

/// The outcome of `ledger verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Raw batches read.
    pub raw_batches: u64,
    /// Records in them.
    pub raw_records: u64,
    /// Rollups read.
    pub rollups: u64,
    /// Run aggregates compared.
    pub runs: u64,
    /// Model aggregates compared.
    pub models: u64,
    /// Unattributed buckets compared.
    pub unattributed_buckets: u64,
    /// Every difference found, one line each.
    pub mismatches: Vec<String>,
}

impl VerifyReport {
    /// True when every stored aggregate equals its recomputation.
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// One line on what was checked.
    pub fn summary(&self) -> String {
        format!(
            "recomputed from {} raw batches ({} records) and {} rollups: {} runs, {} models, \
             {} unattributed buckets; {} mismatches",
            self.raw_batches,
            self.raw_records,
            self.rollups,
            self.runs,
            self.models,
            self.unattributed_buckets,
            self.mismatches.len()
        )
    }
}

/// Compares stored aggregates with recomputed ones; `what` names each key in messages.
pub fn compare<K: Ord + Clone>(
    kind: &str,
    stored: &BTreeMap<K, Aggregate>,
    recomputed: &BTreeMap<K, Aggregate>,
    name: impl Fn(&K) -> String,
    out: &mut Vec<String>,
) {
    for (k, s) in stored {
        match recomputed.get(k) {
            None => out.push(format!(
                "{kind} {}: stored aggregate has no raw records or rollups behind it",
                name(k)
            )),
            Some(r) if !same(s, r) => {
                out.push(format!("{kind} {}: {}", name(k), difference(s, r)));
            }
            Some(_) => {}
        }
    }
    for k in recomputed.keys() {
        if !stored.contains_key(k) {
            out.push(format!(
                "{kind} {}: raw records exist but the stored aggregate is missing",
                name(k)
            ));
        }
    }
}

/// Compares the stored agent/node entries (`seen` keys, [`Seen::key`]) with those the
/// recomputed agent and node sets call for; each one on only one side is a mismatch.
pub fn compare_seen(stored: &BTreeSet<Vec<u8>>, rc: &Recomputed, out: &mut Vec<String>) {
    let mut expected = BTreeSet::new();
    for ((model, run), s) in &rc.run_agents {
        expected.extend(s.iter().map(|a| Seen::RunAgent.key(&[model, run, a])));
    }
    for ((model, run), s) in &rc.run_nodes {
        expected.extend(s.iter().map(|n| Seen::RunNode.key(&[model, run, n])));
    }
    for (model, s) in &rc.model_agents {
        expected.extend(s.iter().map(|a| Seen::ModelAgent.key(&[model, a])));
    }
    for (model, s) in &rc.model_nodes {
        expected.extend(s.iter().map(|n| Seen::ModelNode.key(&[model, n])));
    }
    for k in stored.symmetric_difference(&expected) {
        let side = if stored.contains(k) {
            "stored but not in any record"
        } else {
            "in records but not stored"
        };
        out.push(format!(
            "agent/node entry {}: {side}",
            String::from_utf8_lossy(k).replace('\0', "/")
        ));
    }
}

/// Reports every agent with a record stored above its high-water mark (an agent without a
/// mark has mark 0): the mark moves in the same transaction as the records, so such a
/// record means the ledger was changed outside it.
pub fn compare_marks<'a>(
    max_seq: impl IntoIterator<Item = (&'a str, u64)>,
    marks: &BTreeMap<String, u64>,
    out: &mut Vec<String>,
) {
    for (agent, seq) in max_seq {
        let hwm = marks.get(agent).copied().unwrap_or(0);
        if seq > hwm {
            out.push(format!(
                "agent {agent}: record {seq} is stored above the high-water mark {hwm}"
            ));
        }
    }
}

/// Whether a stored aggregate agrees with its recomputation: exactly, except that which
/// unattributed sources are *named* may differ once a bucket had more sources than it names
/// (see [`super::aggregate::Sources`]), their sums must still agree; and that a stage stored
/// before the ledger kept per-cluster figures is checked as far as its figures go (see
/// [`super::aggregate::ByCluster::agrees_with`]).
fn same(stored: &Aggregate, recomputed: &Aggregate) -> bool {
    let clusters_agree = stored.stages.len() == recomputed.stages.len()
        && stored.stages.iter().all(|(stage, s)| {
            recomputed
                .stages
                .get(stage)
                .is_some_and(|r| s.by_cluster.agrees_with(s, &r.by_cluster, r))
        });
    let strip = |a: &Aggregate, sources: bool| {
        let mut a = a.clone();
        for t in a.stages.values_mut() {
            t.by_cluster = Default::default();
        }
        if sources {
            a.sources = Default::default();
        }
        a
    };
    if recomputed.sources.other.is_zero() {
        return clusters_agree && strip(stored, false) == strip(recomputed, false);
    }
    clusters_agree
        && strip(stored, true) == strip(recomputed, true)
        && stored.sources.total() == recomputed.sources.total()
        && stored.sources.named.len() <= super::aggregate::MAX_SOURCES
}

/// The first difference between a stored and a recomputed aggregate, in words.
fn difference(stored: &Aggregate, recomputed: &Aggregate) -> String {
    let (s, r) = (stored.all(), recomputed.all());
    let (su, ru) = (stored.unestimated().total, recomputed.unestimated().total);
    let (ss, rs) = (stored.sources.total(), recomputed.sources.total());
    let fields: [(&str, u128, u128); 12] = [
        ("FLOP low", s.flop.low, r.flop.low),
        ("FLOP central", s.flop.central, r.flop.central),
        ("FLOP high", s.flop.high, r.flop.high),
        ("records", s.records.into(), r.records.into()),
        ("GPU ms", s.gpu_ms, r.gpu_ms),
        ("energy mJ", s.energy_mj, r.energy_mj),
        ("unestimated GPU ms", su.gpu_ms, ru.gpu_ms),
        ("unestimated energy mJ", su.energy_mj, ru.energy_mj),
        ("unestimated records", su.records.into(), ru.records.into()),
        ("unattributed sources' GPU ms", ss.size(), rs.size()),
        ("agents", stored.agents.into(), recomputed.agents.into()),
        ("nodes", stored.nodes.into(), recomputed.nodes.into()),
    ];
    for (what, a, b) in fields {
        if a != b {
            return format!("stored {what} {a} != recomputed {b}");
        }
    }
    "per-stage, per-GPU-type, per-reason, per-cluster, cluster or source detail differs \
     from the recomputation"
        .to_string()
}
