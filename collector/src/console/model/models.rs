//! The models page: one row per model, sorted by urgency or a column.

use super::*;
use std::collections::BTreeMap;

use flopmeter_core::threshold::Threshold;
use flopmeter_core::units::{Bound, FlopTotal};

use crate::compliance::AlertView;
use crate::compliance::engine::PairView;
use crate::report::Report;

/// One row of the models table.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    /// Model name (from agents: untrusted, escaped when rendered).
    pub model: String,
    /// Counted FLOP band.
    pub counted: FlopTotal,
    /// One bar per [`ThresholdColumn`]; `None` where the threshold does not apply.
    pub bars: Vec<Option<Bar>>,
    /// The earliest crossing of a notifying threshold.
    pub crossing: Option<Crossing>,
    /// The most urgent alert.
    pub clock: Option<ClockCell>,
    /// Clusters.
    pub clusters: Vec<ClusterCell>,
    /// Unattributed work on the model's nodes in its period, as a share of (counted + it).
    pub unattributed_share: f64,
    /// The row's urgency.
    pub urgency: Urgency,
}

/// How the models table is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// Most urgent first (default).
    #[default]
    Urgency,
    /// By name.
    Model,
    /// Largest counted central FLOP first.
    Flop,
    /// Earliest crossing first.
    Crossing,
    /// Earliest deadline first.
    Deadline,
}

impl Sort {
    /// Every sort, in column order.
    pub const ALL: [Sort; 5] = [
        Sort::Urgency,
        Sort::Model,
        Sort::Flop,
        Sort::Crossing,
        Sort::Deadline,
    ];

    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Urgency => "urgency",
            Sort::Model => "model",
            Sort::Flop => "flop",
            Sort::Crossing => "crossing",
            Sort::Deadline => "deadline",
        }
    }

    /// From the query value; anything else is the default.
    pub fn parse(s: Option<&str>) -> Sort {
        Sort::ALL
            .into_iter()
            .find(|x| Some(x.as_str()) == s)
            .unwrap_or_default()
    }
}

/// The landing page.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsPage {
    /// The engine's now, Unix ms.
    pub now_ms: i64,
    /// Whether the engine has evaluated since start (bars and crossings need it).
    pub evaluated: bool,
    /// Bar columns.
    pub columns: Vec<ThresholdColumn>,
    /// Rows, sorted.
    pub rows: Vec<ModelRow>,
    /// The sort applied.
    pub sort: Sort,
    /// Running clocks (not acknowledged or dismissed).
    pub running: usize,
    /// Of those, overdue.
    pub overdue: usize,
    /// The next deadline: model, threshold, Unix ms.
    pub next_deadline: Option<(String, String, i64)>,
}

/// What the landing page is built from.
#[derive(Debug, Clone)]
pub struct ModelsInput {
    /// The engine's now.
    pub now_ms: i64,
    /// Thresholds in force.
    pub thresholds: Vec<Threshold>,
    /// One report per model (counted band, nodes, unattributed nearby).
    pub reports: Vec<Report>,
    /// What the engine's last pass found per (model, threshold) (bounded: see
    /// `Engine::pair_views`).
    pub pairs: BTreeMap<(String, String), PairView>,
    /// The bound threshold decisions use.
    pub bound: Bound,
    /// Alerts.
    pub alerts: Vec<AlertView>,
}

fn share(part: u128, whole: u128) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Builds the landing page.
pub fn models_page(input: &ModelsInput, sort: Sort) -> ModelsPage {
    let columns = threshold_columns(&input.thresholds);
    let notifying: Vec<&str> = input
        .thresholds
        .iter()
        .filter(|t| t.notify_days().is_some())
        .map(|t| t.id.as_str())
        .collect();
    let mut alerts_of: BTreeMap<&str, Vec<&AlertView>> = BTreeMap::new();
    for a in &input.alerts {
        alerts_of.entry(a.model.as_str()).or_default().push(a);
    }
    let now = input.now_ms;
    let mut rows: Vec<ModelRow> = input
        .reports
        .iter()
        .map(|r| {
            let counted = r.computation.counted;
            let pair = |id: &str| input.pairs.get(&(r.model.clone(), id.to_string()));
            let threshold = |id: &str| input.thresholds.iter().find(|t| t.id == id);
            let bars = columns
                .iter()
                .map(|c| {
                    // A shared column shows the first threshold that applies; they share the
                    // level, so the bar is the same.
                    c.ids.iter().find_map(|id| {
                        let (p, t) = (pair(id)?, threshold(id)?);
                        Some(Bar::at(counted, p.level, input.bound, t))
                    })
                })
                .collect();
            let crossing = notifying
                .iter()
                .filter_map(|id| pair(id))
                .filter_map(
                    |a| match (a.measured_crossing_ms, a.projected_crossing_ms) {
                        (Some(t), _) => Some(Crossing::Measured(t)),
                        (None, Some(t)) => Some(Crossing::Projected(t)),
                        _ => None,
                    },
                )
                .min_by_key(Crossing::at_ms);
            let mut alerts: Vec<(Urgency, i64, &AlertView)> = alerts_of
                .get(r.model.as_str())
                .map(|v| {
                    v.iter()
                        .map(|a| {
                            (
                                alert_urgency(&a.status, a.deadline_ms, now),
                                a.deadline_ms.unwrap_or(i64::MAX),
                                *a,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            alerts.sort_by_key(|(u, d, _)| (*u, *d));
            let clock = alerts.first().map(|(u, _, a)| ClockCell {
                threshold: a.threshold.clone(),
                status: a.status.clone(),
                deadline_ms: a.deadline_ms,
                urgency: *u,
                others: alerts.len() - 1,
            });
            let urgency = match &clock {
                Some(c) if c.urgency != Urgency::Quiet => c.urgency,
                _ if matches!(crossing, Some(Crossing::Projected(_))) => Urgency::Projected,
                _ => Urgency::Quiet,
            };
            let unattributed = r.unattributed.flop.central;
            ModelRow {
                model: r.model.clone(),
                counted,
                bars,
                crossing,
                clock,
                clusters: cluster_cells(r),
                unattributed_share: share(unattributed, counted.central + unattributed),
                urgency,
            }
        })
        .collect();
    sort_rows(&mut rows, sort);
    let open: Vec<&AlertView> = input
        .alerts
        .iter()
        .filter(|a| {
            matches!(
                alert_urgency(&a.status, a.deadline_ms, now),
                Urgency::Overdue | Urgency::DueSoon | Urgency::Running
            )
        })
        .collect();
    ModelsPage {
        now_ms: now,
        evaluated: !input.pairs.is_empty() || input.reports.is_empty(),
        columns,
        rows,
        sort,
        running: open.len(),
        overdue: open
            .iter()
            .filter(|a| alert_urgency(&a.status, a.deadline_ms, now) == Urgency::Overdue)
            .count(),
        next_deadline: open
            .iter()
            .filter_map(|a| Some((a.model.clone(), a.threshold.clone(), a.deadline_ms?)))
            .min_by_key(|(_, _, d)| *d),
    }
}

/// The highest share of a level any bar of the row reaches (for tie-breaking quiet rows).
fn nearest(r: &ModelRow) -> f64 {
    r.bars
        .iter()
        .flatten()
        .map(|b| b.percent)
        .fold(0.0, f64::max)
}

/// Sorts rows. Urgency: overdue, due soon and running clocks by deadline; forecasts and
/// projected crossings by crossing date; then the closest to a level; then by name.
pub fn sort_rows(rows: &mut [ModelRow], sort: Sort) {
    let deadline = |r: &ModelRow| r.clock.as_ref().and_then(|c| c.deadline_ms);
    let crossing = |r: &ModelRow| r.crossing.as_ref().map(Crossing::at_ms);
    match sort {
        Sort::Urgency => rows.sort_by(|a, b| {
            let when = |r: &ModelRow| match r.urgency {
                Urgency::Overdue | Urgency::DueSoon | Urgency::Running => deadline(r),
                Urgency::Forecast | Urgency::Projected => crossing(r),
                _ => None,
            };
            (a.urgency, when(a).unwrap_or(i64::MAX))
                .cmp(&(b.urgency, when(b).unwrap_or(i64::MAX)))
                .then(nearest(b).total_cmp(&nearest(a)))
                .then(a.model.cmp(&b.model))
        }),
        Sort::Model => rows.sort_by(|a, b| a.model.cmp(&b.model)),
        Sort::Flop => rows.sort_by(|a, b| {
            b.counted
                .central
                .cmp(&a.counted.central)
                .then(a.model.cmp(&b.model))
        }),
        Sort::Crossing => rows.sort_by(|a, b| {
            crossing(a)
                .unwrap_or(i64::MAX)
                .cmp(&crossing(b).unwrap_or(i64::MAX))
                .then(a.model.cmp(&b.model))
        }),
        Sort::Deadline => rows.sort_by(|a, b| {
            deadline(a)
                .unwrap_or(i64::MAX)
                .cmp(&deadline(b).unwrap_or(i64::MAX))
                .then(a.model.cmp(&b.model))
        }),
    }
}

/// The cluster cells of a model's row (see [`ClusterCell`]).
fn cluster_cells(r: &Report) -> Vec<ClusterCell> {
    if r.clusters.is_empty() {
        return vec![ClusterCell {
            name: None,
            nodes: Some(r.unattributed.nodes.len()),
            percent: None,
        }];
    }
    r.clusters
        .iter()
        .map(|c| ClusterCell {
            name: Some(c.name.clone()),
            nodes: None,
            percent: Some(c.percent.round() as u32),
        })
        .collect()
}
