//! The Annex XI §1.2(d)(e) / Model Documentation Form figures of one model.
//!
//! What the regulation asks (`shared/reference/regulation.md` §2–§3) and where it is here:
//! - computation in FLOP to two significant figures, with the method and its uncertainty:
//!   [`Computation`] (band low/central/high, method mix such as "97% gpm-tensor, 3% util-mfu");
//! - training time in wall-clock days: [`TrainingTime`];
//! - hardware-days per GPU type: [`HardwareDays`];
//! - energy in MWh (GPU energy as measured; facility overhead is not included): [`EnergyFigure`];
//! - what counts and what was excluded, per stage and per run: [`StageRow`], [`RunRow`];
//! - per cluster, beside the model total, what ran where: [`ClusterRow`] (the rows add up to
//!   the computation, GPU-days and energy exactly; also per run);
//! - unattributed compute on the same nodes in the same period, so a reader sees what may be
//!   missing, with its largest sources (Slurm job, pod, process): [`UnattributedView`];
//! - GPU time that could not be estimated (an uncatalogued GPU without a peak, no activity
//!   reading), per reason: [`UnestimatedView`]. A total that silently left that hardware out
//!   would be wrong, so it is stated beside the figures it is not part of.
//!
//! The report is a serialisable document (schema `flopmeter.report.v1`) built from the
//! ledger under a stage policy at a given time (this file), and rendered as text, JSON or
//! CSV by pure functions ([`render`]; `report/text.rs`, `report/csv.rs`), so the CLI renders
//! a report fetched over gRPC exactly as the collector would.

mod csv;
mod text;

pub use csv::render_csv;
pub use text::render_text;

use std::collections::BTreeMap;

use flopmeter_core::estimator::six_n_d;
use flopmeter_core::format::{band_near, quantity};
use flopmeter_core::stage::{Stage, StagePolicy};
use flopmeter_core::threshold::default_levels;
use flopmeter_core::units::FlopTotal;
use serde::{Deserialize, Serialize};

use crate::ledger::aggregate::{ClusterKind, ClusterShare, SourceCounts, Unestimated};
use crate::ledger::keys::DAY_MS;
use crate::ledger::summary::{SourceRow, summarise_unattributed};
use crate::ledger::{Declaration, LedgerStore, ModelEntry, StoreError};

/// The schema tag of the JSON document.
pub const SCHEMA: &str = "flopmeter.report.v1";

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// For people.
    Text,
    /// The document itself.
    Json,
    /// One row per figure, for spreadsheets.
    Csv,
}

/// The report of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Model name.
    pub model: String,
    /// When the report was made, Unix ms.
    pub generated_unix_ms: i64,
    /// Registry entry (lineage, role, plan), when registered.
    pub entry: Option<ModelEntry>,
    /// The stage policy applied.
    pub policy: PolicyView,
    /// FLOP figures.
    pub computation: Computation,
    /// Wall-clock training time.
    pub training_time: TrainingTime,
    /// Hardware-days per GPU type (counted stages).
    pub hardware: Vec<HardwareDays>,
    /// Energy.
    pub energy: EnergyFigure,
    /// GPU time of the counted stages that could not be estimated (not in the computation).
    #[serde(default)]
    pub unestimated: UnestimatedView,
    /// Per cluster, beside the totals above (which sum over every cluster). Absent in
    /// reports made before per-cluster figures: empty.
    #[serde(default)]
    pub clusters: Vec<ClusterRow>,
    /// Per stage, counted and excluded.
    pub stages: Vec<StageRow>,
    /// Per run.
    pub runs: Vec<RunRow>,
    /// Unattributed compute on the model's nodes during its training period.
    pub unattributed: UnattributedView,
    /// Base model compute and the modification's share of it, when known.
    pub base_model: Option<BaseModelView>,
    /// Record quality counts.
    pub quality: Quality,
    /// How the figures were made.
    pub methodology: Vec<String>,
}

/// The stage policy applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// Stages that count.
    pub counted_stages: Vec<String>,
    /// Stages excluded.
    pub excluded_stages: Vec<String>,
    /// Whether unknown stage names count.
    pub unknown_stages_count: bool,
}

/// FLOP figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Computation {
    /// Counts toward the regulatory total.
    pub counted: FlopTotal,
    /// `counted` as `2.3e25 [1.9e25 – 4.6e25]`.
    pub counted_text: String,
    /// Measured but excluded by the stage policy.
    pub excluded: FlopTotal,
    /// Everything measured.
    pub measured: FlopTotal,
    /// Central FLOP per method over the counted stages.
    pub method_mix: Vec<MethodShare>,
    /// `97% gpm-tensor, 3% util-mfu`.
    pub method_mix_text: String,
}

/// One method's share of the counted central estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodShare {
    /// Method tag.
    pub method: String,
    /// Central FLOP estimated with it.
    pub central_flop: u128,
    /// Share of the counted central total, percent.
    pub percent: f64,
}

/// Wall-clock training time of the counted stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingTime {
    /// First event, Unix ms.
    pub first_event_unix_ms: Option<i64>,
    /// Last event, Unix ms.
    pub last_event_unix_ms: Option<i64>,
    /// Days from first to last event.
    pub wall_clock_days: f64,
}

/// Hardware-days of one GPU type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardwareDays {
    /// GPU type (catalogue id).
    pub gpu_type: String,
    /// GPU-days.
    pub gpu_days: f64,
    /// FLOP on it.
    pub flop: FlopTotal,
}

/// Energy figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyFigure {
    /// Counted stages, mJ (exact).
    pub counted_mj: u128,
    /// Counted stages, MWh.
    pub counted_mwh: f64,
    /// Excluded stages, MWh.
    pub excluded_mwh: f64,
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRow {
    /// Canonical stage name.
    pub stage: String,
    /// Whether it counts under the policy.
    pub counts: bool,
    /// FLOP.
    pub flop: FlopTotal,
    /// GPU-days.
    pub gpu_days: f64,
    /// Energy, MWh.
    pub energy_mwh: f64,
    /// Records.
    pub records: u64,
    /// GPU-hours that could not be estimated.
    #[serde(default)]
    pub unestimated_gpu_hours: f64,
}

/// One run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    /// Run id.
    pub run: String,
    /// Stages seen.
    pub stages: Vec<String>,
    /// FLOP that counts.
    pub counted: FlopTotal,
    /// FLOP excluded.
    pub excluded: FlopTotal,
    /// GPU-days, all stages.
    pub gpu_days: f64,
    /// Energy, MWh, all stages.
    pub energy_mwh: f64,
    /// First event, Unix ms.
    pub first_event_unix_ms: Option<i64>,
    /// Last event, Unix ms.
    pub last_event_unix_ms: Option<i64>,
    /// Records.
    pub records: u64,
    /// Agents that reported for it.
    pub agents: u64,
    /// Nodes that reported for it.
    pub nodes: u64,
    /// What it declared.
    pub declaration: Option<Declaration>,
    /// 6·N·D when the run declared parameters and tokens.
    pub six_n_d: Option<u128>,
    /// Measured central FLOP / 6·N·D.
    pub hardware_to_architecture_ratio: Option<f64>,
    /// Clusters it ran on.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Its figures per cluster.
    #[serde(default)]
    pub by_cluster: Vec<ClusterRow>,
    /// GPU-hours that could not be estimated.
    #[serde(default)]
    pub unestimated_gpu_hours: f64,
}

/// One cluster's share of a model's (or a run's) figures: the counted stages, as the totals
/// beside it, and what the stage policy excluded there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRow {
    /// The cluster's name; empty unless `kind` is `cluster`.
    pub cluster: String,
    /// `cluster`, `no-cluster`, `other-clusters` or `not-split` (see the ledger's docs).
    pub kind: ClusterKind,
    /// The row's name as the text shows it (`gpu-a`, `(no cluster named)`, ...).
    pub name: String,
    /// FLOP that count, exact.
    pub counted: FlopTotal,
    /// `counted` as `2.3e25 [1.9e25 – 4.6e25]`.
    pub counted_text: String,
    /// Share of the counted central total, percent.
    pub percent: f64,
    /// FLOP excluded by the stage policy.
    pub excluded: FlopTotal,
    /// GPU time of the counted stages, ms (exact).
    pub gpu_ms: u128,
    /// The same in GPU-days.
    pub gpu_days: f64,
    /// Energy of the counted stages, mJ (exact).
    pub energy_mj: u128,
    /// The same in MWh.
    pub energy_mwh: f64,
    /// GPU-hours of the counted stages that could not be estimated.
    pub unestimated_gpu_hours: f64,
    /// Records, all stages.
    pub records: u64,
}

impl ClusterRow {
    /// The rows of an aggregate's shares; `total_central` is what `percent` is a share of.
    pub fn of(shares: &[ClusterShare], total_central: u128) -> Vec<ClusterRow> {
        shares
            .iter()
            .map(|s| ClusterRow {
                cluster: s.cluster.clone(),
                kind: s.kind,
                name: s.label().to_string(),
                counted: s.counted.flop,
                counted_text: band_near(s.counted.flop, &default_levels()),
                percent: if total_central == 0 {
                    0.0
                } else {
                    s.counted.flop.central as f64 * 100.0 / total_central as f64
                },
                excluded: s.excluded.flop,
                gpu_ms: s.counted.gpu_ms,
                gpu_days: days(s.counted.gpu_ms),
                energy_mj: s.counted.energy_mj,
                energy_mwh: mwh(s.counted.energy_mj),
                unestimated_gpu_hours: hours(s.counted.unestimated_gpu_ms),
                records: s.all().records,
            })
            .collect()
    }
}

/// GPU time that could not be estimated: the hardware ran, its FLOP are unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnestimatedView {
    /// GPU-hours.
    pub gpu_hours: f64,
    /// Energy, MWh.
    pub energy_mwh: f64,
    /// Records.
    pub records: u64,
    /// Per reason, largest first.
    pub reasons: Vec<UnestimatedReason>,
    /// `12 GPU-hours that could not be estimated (unknown-gpu-no-peak)`, or `none`.
    pub text: String,
}

/// One reason's share of [`UnestimatedView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnestimatedReason {
    /// Machine-readable reason (`unknown-gpu-no-peak`, `no-activity-reading`, ...).
    pub reason: String,
    /// GPU-hours.
    pub gpu_hours: f64,
    /// Energy, MWh.
    pub energy_mwh: f64,
    /// Records.
    pub records: u64,
}

impl UnestimatedView {
    /// The view of `u`.
    pub fn of(u: &Unestimated) -> UnestimatedView {
        let mut reasons: Vec<UnestimatedReason> = u
            .reasons
            .iter()
            .map(|(r, c)| UnestimatedReason {
                reason: r.clone(),
                gpu_hours: hours(c.gpu_ms),
                energy_mwh: mwh(c.energy_mj),
                records: c.records,
            })
            .collect();
        reasons.sort_by(|a, b| {
            b.gpu_hours
                .total_cmp(&a.gpu_hours)
                .then_with(|| a.reason.cmp(&b.reason))
        });
        let gpu_hours = hours(u.total.gpu_ms);
        let text = if u.total.records == 0 {
            "none".to_string()
        } else {
            format!(
                "{} GPU-hours that could not be estimated ({})",
                quantity(gpu_hours),
                reasons
                    .iter()
                    .map(|r| r.reason.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        UnestimatedView {
            gpu_hours,
            energy_mwh: mwh(u.total.energy_mj),
            records: u.total.records,
            reasons,
            text,
        }
    }
}

/// Unattributed compute on the model's nodes during its training period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnattributedView {
    /// Nodes that ran the model.
    pub nodes: Vec<String>,
    /// First UTC day of the period (days since the epoch).
    pub first_day: Option<i64>,
    /// Last UTC day of the period.
    pub last_day: Option<i64>,
    /// FLOP no run claimed on those nodes on those days.
    pub flop: FlopTotal,
    /// GPU-days per GPU type.
    pub gpu_days: BTreeMap<String, f64>,
    /// Energy, MWh.
    pub energy_mwh: f64,
    /// Records.
    pub records: u64,
    /// Unattributed GPU time there that could not be estimated.
    #[serde(default)]
    pub unestimated: UnestimatedView,
    /// Where that work came from (Slurm job, pod, process), largest first, at most
    /// [`REPORT_SOURCES`]: the jobs to label.
    #[serde(default)]
    pub sources: Vec<SourceRow>,
    /// Work of the sources not listed.
    #[serde(default)]
    pub other_sources: SourceCounts,
}

/// Unattributed sources listed in a report.
pub const REPORT_SOURCES: usize = 10;

/// Base model compute (downstream modifiers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModelView {
    /// Base model.
    pub base_model: String,
    /// Its compute, FLOP, if known.
    pub base_flop: Option<u128>,
    /// Where that figure comes from.
    pub source: Option<String>,
    /// Counted high bound / base compute (the modifier test compares it with 1/3).
    pub modification_share_high: Option<f64>,
}

/// Record quality counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quality {
    /// Records summed (all stages).
    pub records: u64,
    /// Records split between processes sharing a GPU.
    pub approximate_records: u64,
    /// Records on uncatalogued GPUs with an operator-supplied peak.
    pub unknown_peak_records: u64,
}

fn days(ms: u128) -> f64 {
    flopmeter_core::utc::ms_as_days(ms)
}

fn hours(ms: u128) -> f64 {
    flopmeter_core::utc::ms_as_hours(ms)
}

fn mwh(mj: u128) -> f64 {
    flopmeter_core::energy::mj_to_mwh(mj)
}

/// Builds the report, or `None` when the ledger knows nothing of the model.
pub fn build(
    store: &dyn LedgerStore,
    model: &str,
    policy: &StagePolicy,
    now_unix_ms: i64,
) -> Result<Option<Report>, StoreError> {
    let agg = store.model_aggregate(model)?;
    let entry = store.model_entry(model)?;
    if agg.is_none() && entry.is_none() {
        return Ok(None);
    }
    let agg = agg.unwrap_or_default();
    let counted = agg.counted_totals(policy);
    let excluded = agg.excluded_totals(policy);
    let all = agg.all();

    let mut method_mix: Vec<MethodShare> = counted
        .methods
        .iter()
        .map(|(m, &c)| MethodShare {
            method: m.clone(),
            central_flop: c,
            percent: if counted.flop.central == 0 {
                0.0
            } else {
                c as f64 * 100.0 / counted.flop.central as f64
            },
        })
        .collect();
    method_mix.sort_by_key(|s| std::cmp::Reverse(s.central_flop));
    let method_mix_text = method_mix
        .iter()
        .map(|s| format!("{} {}", percent(s.percent), s.method))
        .collect::<Vec<_>>()
        .join(", ");

    let wall_clock_days = match (counted.first_event_unix_ms, counted.last_event_unix_ms) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / DAY_MS as f64,
        _ => 0.0,
    };

    let stages = agg
        .stages
        .iter()
        .map(|(s, t)| StageRow {
            stage: s.clone(),
            counts: policy.counts(&Stage::parse(s)),
            flop: t.flop,
            gpu_days: days(t.gpu_ms),
            energy_mwh: mwh(t.energy_mj),
            records: t.records,
            unestimated_gpu_hours: hours(t.unestimated.total.gpu_ms),
        })
        .collect();

    let runs = store
        .runs(model)?
        .into_iter()
        .map(|r| {
            let a = r.aggregate.all();
            let six_n_d = r
                .declaration
                .as_ref()
                .and_then(|d| six_n_d(d.params?, d.tokens?));
            RunRow {
                stages: r.aggregate.stages.keys().cloned().collect(),
                counted: r.aggregate.counted(policy),
                excluded: r.aggregate.excluded(policy),
                gpu_days: days(a.gpu_ms),
                energy_mwh: mwh(a.energy_mj),
                first_event_unix_ms: a.first_event_unix_ms,
                last_event_unix_ms: a.last_event_unix_ms,
                records: a.records,
                agents: r.aggregate.agents,
                nodes: r.aggregate.nodes,
                hardware_to_architecture_ratio: six_n_d
                    .filter(|&x| x > 0)
                    .map(|x| a.flop.central as f64 / x as f64),
                six_n_d,
                clusters: r.aggregate.clusters.iter().cloned().collect(),
                by_cluster: ClusterRow::of(
                    &r.aggregate.cluster_shares(policy),
                    r.aggregate.counted(policy).central,
                ),
                unestimated_gpu_hours: hours(r.aggregate.unestimated().total.gpu_ms),
                declaration: r.declaration,
                run: r.run,
            }
        })
        .collect();

    let nodes = store.model_nodes(model)?;
    let first_day = all.first_event_unix_ms.map(|t| t.div_euclid(DAY_MS));
    let last_day = all.last_event_unix_ms.map(|t| t.div_euclid(DAY_MS));
    let mut unattributed = UnattributedView {
        nodes: nodes.clone(),
        first_day,
        last_day,
        flop: FlopTotal::ZERO,
        gpu_days: BTreeMap::new(),
        energy_mwh: 0.0,
        records: 0,
        unestimated: UnestimatedView::of(&Unestimated::default()),
        sources: Vec::new(),
        other_sources: SourceCounts::default(),
    };
    if let (Some(a), Some(b)) = (first_day, last_day) {
        let buckets: Vec<_> = store
            .unattributed(a, b)?
            .into_iter()
            .filter(|b| nodes.contains(&b.node))
            .collect();
        for bucket in &buckets {
            for (g, gt) in &bucket.aggregate.all().gpu_types {
                *unattributed.gpu_days.entry(g.clone()).or_default() += days(gt.gpu_ms);
            }
        }
        let sum = summarise_unattributed(&buckets, REPORT_SOURCES);
        unattributed.flop = sum.flop;
        unattributed.records = sum.records;
        unattributed.energy_mwh = mwh(sum.energy_mj);
        unattributed.unestimated = UnestimatedView::of(&sum.unestimated);
        unattributed.sources = sum.sources;
        unattributed.other_sources = sum.other_sources;
    }

    let base_model = entry.as_ref().and_then(|e| {
        let base = e.declared.base_model.clone()?;
        Some(BaseModelView {
            base_model: base,
            base_flop: e.base_flop,
            source: e.base_flop_source.clone(),
            modification_share_high: e
                .base_flop
                .filter(|&b| b > 0)
                .map(|b| counted.flop.high as f64 / b as f64),
        })
    });

    let (mut counted_stages, mut excluded_stages) = (Vec::new(), Vec::new());
    for (s, &c) in &policy.counts {
        if c {
            counted_stages.push(s.clone());
        } else {
            excluded_stages.push(s.clone());
        }
    }

    Ok(Some(Report {
        schema: SCHEMA.to_string(),
        model: model.to_string(),
        generated_unix_ms: now_unix_ms,
        entry,
        policy: PolicyView {
            counted_stages,
            excluded_stages,
            unknown_stages_count: policy.unknown_counts,
        },
        computation: Computation {
            counted: counted.flop,
            counted_text: band_near(counted.flop, &default_levels()),
            excluded: excluded.flop,
            measured: all.flop,
            method_mix,
            method_mix_text,
        },
        training_time: TrainingTime {
            first_event_unix_ms: counted.first_event_unix_ms,
            last_event_unix_ms: counted.last_event_unix_ms,
            wall_clock_days,
        },
        hardware: counted
            .gpu_types
            .iter()
            .map(|(g, t)| HardwareDays {
                gpu_type: g.clone(),
                gpu_days: days(t.gpu_ms),
                flop: t.flop,
            })
            .collect(),
        energy: EnergyFigure {
            counted_mj: counted.energy_mj,
            counted_mwh: mwh(counted.energy_mj),
            excluded_mwh: mwh(excluded.energy_mj),
        },
        unestimated: UnestimatedView::of(&counted.unestimated),
        clusters: ClusterRow::of(&agg.cluster_shares(policy), counted.flop.central),
        stages,
        runs,
        unattributed,
        base_model,
        quality: Quality {
            records: all.records,
            approximate_records: all.approximate_records,
            unknown_peak_records: all.unknown_peak_records,
        },
        methodology: methodology(),
    }))
}

fn methodology() -> Vec<String> {
    vec![
        "Hardware approach (Commission GPAI guidelines, C = N·L·H·U), measured per GPU and \
         interval by the flopmeter agent: gpm-tensor = NVML GPM tensor-pipe activity × dense \
         datasheet peak × SM-clock factor (Hopper and later), per MIG instance over its share \
         of the GPU's SMs; mig-fallback = the whole GPU's activity split over a MIG instance, \
         bounded by its SMs, with a wider band; util-mfu = GPU utilisation × dense peak × an \
         assumed MFU of 0.25 (low) / 0.40 (central) on earlier GPUs."
            .into(),
        "Band: low / central / high per interval, summed exactly as integers. Central assumes \
         BF16 unless the run declared its precision; low is 0.85 × central. The high bound \
         never undercounts: the GPU's fastest precision (FP8 on Hopper, FP4 on Blackwell) \
         unless declared, 3% for rounded datasheet peaks, the clock headroom above the tensor \
         reference clock, vector pipes at full rate, utilisation × peak (MFU 1) on GPUs \
         without GPM, and the faster model's peak where a GPU's name and PCI id disagree. \
         All precisions count equally."
            .into(),
        "Energy: NVML energy-counter deltas attributed per run, or the power integral across a \
         driver reload or a counter that stands still (GPU board energy; facility overhead, \
         CPUs and networking not included)."
            .into(),
        "Stage policy (Commission guidelines Annex A.1) decides what counts; excluded compute \
         is listed. Training time spans the first to last event of the counted stages."
            .into(),
        "GPU time that could not be estimated (an uncatalogued GPU without an \
         operator-supplied peak, a GPU without an activity reading) is measured and reported \
         as GPU-hours and energy per reason, beside the computation and never inside it: its \
         FLOP are unknown, so the computation does not cover that hardware time."
            .into(),
        "Unattributed work (no model label) on the model's nodes in its period is listed \
         with its largest sources: the Slurm job (id, user, account, cluster), the pod, or \
         the process's command name, so the jobs to label can be found."
            .into(),
    ]
}

fn percent(p: f64) -> String {
    if p > 0.0 && p < 1.0 {
        "<1%".to_string()
    } else {
        format!("{p:.0}%")
    }
}

/// A Unix-ms time as `2026-03-01 12:00 UTC` ([`flopmeter_core::utc::format_utc_minute`]),
/// `-` when unknown.
pub fn date_time(ms: Option<i64>) -> String {
    ms.map_or("-".to_string(), flopmeter_core::utc::format_utc_minute)
}

/// Renders a report in `format`.
pub fn render(r: &Report, format: Format) -> String {
    match format {
        Format::Text => render_text(r),
        Format::Json => {
            // The document as `/api/v1/models/{m}/report` serves it: `u128` as strings.
            let mut s =
                serde_json::to_string_pretty(&flopmeter_core::exact::Exact(r)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Csv => render_csv(r),
    }
}
