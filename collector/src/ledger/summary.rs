//! Per-model and per-run summaries: what `flopmeter models` / `runs`, the JSON API and the
//! admin RPCs show. Views over the store under a stage policy; nothing here is stored.

use flopmeter_core::stage::StagePolicy;
use flopmeter_core::units::FlopTotal;
use serde::Serialize;

use super::{Aggregate, Declaration, LedgerStore, ModelEntry, RunEntry, StoreError};

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
        declaration: r.declaration.clone(),
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
