//! Per-model and per-run summaries: what `flopmeter models` / `runs`, the JSON API and the
//! admin RPCs show. Views over the store under a stage policy; nothing here is stored.

use std::collections::{BTreeMap, BTreeSet};

use flopmeter_core::stage::StagePolicy;
use flopmeter_core::units::FlopTotal;
use serde::{Deserialize, Serialize};

use super::aggregate::{ClusterKind, ClusterShare, SourceCounts, SourceKey, Unestimated};
use super::{
    Aggregate, Declaration, LedgerStore, ModelEntry, RunEntry, StoreError, UnattributedBucket,
};

/// One model's totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    /// Model name.
    pub model: String,
    /// FLOP that counts toward the regulatory total under the stage policy.
    pub counted: FlopTotal,
    /// FLOP measured but excluded by the stage policy.
    pub excluded: FlopTotal,
    /// Runs.
    pub runs: u32,
    /// GPU time, ms, all stages.
    pub gpu_ms: u128,
    /// Energy, mJ, all stages.
    pub energy_mj: u128,
    /// Earliest event, Unix ms.
    pub first_event_unix_ms: Option<i64>,
    /// Latest event, Unix ms.
    pub last_event_unix_ms: Option<i64>,
    /// Records.
    pub records: u64,
    /// Distinct agents.
    pub agents: u64,
    /// Distinct nodes.
    pub nodes: u64,
    /// Clusters it ran on.
    pub clusters: Vec<String>,
    /// Its figures per cluster, adding up to the totals above exactly.
    pub by_cluster: Vec<ClusterShare>,
    /// GPU time and energy that could not be estimated (per reason), all stages: hardware
    /// the FLOP figures above do not cover.
    pub unestimated: Unestimated,
    /// Registry entry, when registered.
    pub entry: Option<ModelEntry>,
}

/// One run's totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// Model name.
    pub model: String,
    /// Run id.
    pub run: String,
    /// Stages seen.
    pub stages: Vec<String>,
    /// FLOP that counts under the stage policy.
    pub counted: FlopTotal,
    /// FLOP excluded by the stage policy.
    pub excluded: FlopTotal,
    /// GPU time, ms.
    pub gpu_ms: u128,
    /// Energy, mJ.
    pub energy_mj: u128,
    /// Earliest event, Unix ms.
    pub first_event_unix_ms: Option<i64>,
    /// Latest event, Unix ms.
    pub last_event_unix_ms: Option<i64>,
    /// Records.
    pub records: u64,
    /// Records split between processes sharing a GPU.
    pub approximate_records: u64,
    /// Distinct agents.
    pub agents: u64,
    /// Distinct nodes.
    pub nodes: u64,
    /// Clusters it ran on.
    pub clusters: Vec<String>,
    /// Its figures per cluster, adding up to the totals above exactly.
    pub by_cluster: Vec<ClusterShare>,
    /// GPU time and energy that could not be estimated (per reason).
    pub unestimated: Unestimated,
    /// What the run declared.
    pub declaration: Option<Declaration>,
}

/// Summarises a model from its aggregate.
pub fn summarise_model(
    model: &str,
    agg: &Aggregate,
    runs: u32,
    entry: Option<ModelEntry>,
    policy: &StagePolicy,
) -> ModelSummary {
    let all = agg.all();
    ModelSummary {
        model: model.to_string(),
        counted: agg.counted(policy),
        excluded: agg.excluded(policy),
        runs,
        gpu_ms: all.gpu_ms,
        energy_mj: all.energy_mj,
        first_event_unix_ms: all.first_event_unix_ms,
        last_event_unix_ms: all.last_event_unix_ms,
        records: all.records,
        agents: agg.agents,
        nodes: agg.nodes,
        clusters: agg.clusters.iter().cloned().collect(),
        by_cluster: agg.cluster_shares(policy),
        unestimated: agg.unestimated(),
        entry,
    }
}

/// Summarises a run.
pub fn summarise_run(r: &RunEntry, policy: &StagePolicy) -> RunSummary {
    let all = r.aggregate.all();
    RunSummary {
        model: r.model.clone(),
        run: r.run.clone(),
        stages: r.aggregate.stages.keys().cloned().collect(),
        counted: r.aggregate.counted(policy),
        excluded: r.aggregate.excluded(policy),
        gpu_ms: all.gpu_ms,
        energy_mj: all.energy_mj,
        first_event_unix_ms: all.first_event_unix_ms,
        last_event_unix_ms: all.last_event_unix_ms,
        records: all.records,
        approximate_records: all.approximate_records,
        agents: r.aggregate.agents,
        nodes: r.aggregate.nodes,
        clusters: r.aggregate.clusters.iter().cloned().collect(),
        by_cluster: r.aggregate.cluster_shares(policy),
        unestimated: r.aggregate.unestimated(),
        declaration: r.declaration.clone(),
    }
}

/// Whether work of these figures ran on `cluster` (by name; the set of names also covers
/// aggregates written before per-cluster figures).
pub fn ran_on(clusters: &[String], by_cluster: &[ClusterShare], cluster: &str) -> bool {
    clusters.iter().any(|c| c == cluster)
        || by_cluster
            .iter()
            .any(|s| s.kind == ClusterKind::Cluster && s.cluster == cluster)
}

impl ModelSummary {
    /// Whether the model ran on `cluster`.
    pub fn ran_on(&self, cluster: &str) -> bool {
        ran_on(&self.clusters, &self.by_cluster, cluster)
    }
}

impl RunSummary {
    /// Whether the run ran on `cluster`.
    pub fn ran_on(&self, cluster: &str) -> bool {
        ran_on(&self.clusters, &self.by_cluster, cluster)
    }
}

/// One model's summary, or `None` if the ledger knows nothing of it.
pub fn model_summary(
    store: &dyn LedgerStore,
    model: &str,
    policy: &StagePolicy,
) -> Result<Option<ModelSummary>, StoreError> {
    let agg = store.model_aggregate(model)?;
    let entry = store.model_entry(model)?;
    if agg.is_none() && entry.is_none() {
        return Ok(None);
    }
    let runs = store.runs(model)?.len() as u32;
    Ok(Some(summarise_model(
        model,
        &agg.unwrap_or_default(),
        runs,
        entry,
        policy,
    )))
}

/// Every model's summary, sorted by name.
pub fn model_summaries(
    store: &dyn LedgerStore,
    policy: &StagePolicy,
) -> Result<Vec<ModelSummary>, StoreError> {
    let mut out = Vec::new();
    for m in store.model_names()? {
        if let Some(s) = model_summary(store, &m, policy)? {
            out.push(s);
        }
    }
    Ok(out)
}

/// A model's runs, summarised.
pub fn run_summaries(
    store: &dyn LedgerStore,
    model: &str,
    policy: &StagePolicy,
) -> Result<Vec<RunSummary>, StoreError> {
    Ok(store
        .runs(model)?
        .iter()
        .map(|r| summarise_run(r, policy))
        .collect())
}

/// The models that ran on `cluster` (all of them when `None`), with their totals over every
/// cluster: the filter picks rows, it never narrows a model's total, which the Act counts
/// over all of them (each row's `by_cluster` has the cluster's own share).
pub fn model_summaries_on(
    store: &dyn LedgerStore,
    policy: &StagePolicy,
    cluster: Option<&str>,
) -> Result<Vec<ModelSummary>, StoreError> {
    let mut all = model_summaries(store, policy)?;
    if let Some(c) = cluster {
        all.retain(|m| m.ran_on(c));
    }
    Ok(all)
}

/// The runs of `model` (of every model when `None`) that ran on `cluster` (all when
/// `None`), sorted by model, then as the store lists them.
pub fn run_summaries_on(
    store: &dyn LedgerStore,
    model: Option<&str>,
    cluster: Option<&str>,
    policy: &StagePolicy,
) -> Result<Vec<RunSummary>, StoreError> {
    let models = match model {
        Some(m) => vec![m.to_string()],
        None => store.model_names()?,
    };
    let mut out = Vec::new();
    for m in &models {
        let mut runs = run_summaries(store, m, policy)?;
        if let Some(c) = cluster {
            runs.retain(|r| r.ran_on(c));
        }
        out.extend(runs);
    }
    Ok(out)
}

/// The most nodes listed for one unattributed source (a job spanning more says "+N").
pub const MAX_SOURCE_NODES: usize = 16;

/// One unattributed source over a set of buckets (one Slurm job, pod or process).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRow {
    /// Who: job id, user, account or namespace, cluster, command name (empty if unknown).
    pub source: SourceKey,
    /// The same in words: `job 42 (user alice, cluster c1, process python)`.
    pub description: String,
    /// Nodes it ran on (at most [`MAX_SOURCE_NODES`]).
    pub nodes: Vec<String>,
    /// What it did.
    pub counts: SourceCounts,
}

/// Unattributed work over a set of buckets: how much, what could not be estimated, and
/// where it came from, largest sources first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnattributedSummary {
    /// Buckets (node, GPU type, UTC day) summed.
    pub buckets: u64,
    /// FLOP no run claimed.
    pub flop: FlopTotal,
    /// Estimated GPU time, ms.
    pub gpu_ms: u128,
    /// Energy of the estimated work, mJ.
    pub energy_mj: u128,
    /// Records.
    pub records: u64,
    /// GPU time and energy that could not be estimated, per reason.
    pub unestimated: Unestimated,
    /// The largest sources (by GPU time), at most the limit asked for.
    pub sources: Vec<SourceRow>,
    /// Work of every source not listed (beyond the limit, or not named by its bucket).
    pub other_sources: SourceCounts,
}

/// Sums unattributed buckets and lists their `limit` largest sources, merged across nodes,
/// GPU types and days.
pub fn summarise_unattributed<'a>(
    buckets: impl IntoIterator<Item = &'a UnattributedBucket>,
    limit: usize,
) -> UnattributedSummary {
    let mut out = UnattributedSummary::default();
    let mut by_source: BTreeMap<&SourceKey, (SourceCounts, BTreeSet<&str>)> = BTreeMap::new();
    for b in buckets {
        out.buckets += 1;
        let all = b.aggregate.all();
        out.flop.add_total(all.flop);
        out.gpu_ms = out.gpu_ms.saturating_add(all.gpu_ms);
        out.energy_mj = out.energy_mj.saturating_add(all.energy_mj);
        out.records += all.records;
        out.unestimated.merge(&b.aggregate.unestimated());
        for e in &b.aggregate.sources.named {
            let (c, nodes) = by_source.entry(&e.key).or_default();
            c.add(&e.counts);
            nodes.insert(&b.node);
        }
        out.other_sources.add(&b.aggregate.sources.other);
    }
    let mut rows: Vec<(&SourceKey, (SourceCounts, BTreeSet<&str>))> =
        by_source.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.size().cmp(&a.1.0.size()).then_with(|| a.0.cmp(b.0)));
    for (i, (key, (counts, nodes))) in rows.into_iter().enumerate() {
        if i >= limit {
            out.other_sources.add(&counts);
            continue;
        }
        out.sources.push(SourceRow {
            source: key.clone(),
            description: key.describe(),
            nodes: nodes
                .into_iter()
                .take(MAX_SOURCE_NODES)
                .map(str::to_string)
                .collect(),
            counts,
        });
    }
    out
}
