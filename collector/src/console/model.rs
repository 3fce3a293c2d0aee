//! What each console page shows, computed from the collector's own views (the report, the
//! engine's assessments and alert views, clocks, audit entries), with no HTML in sight, so
//! the decisions (which row is most urgent, what a bar shows, which deadline applies) are
//! unit-tested here and the templates only lay them out.
//!
//! Every input is something the rest of the collector already produces ([`gather`] reads
//! them); nothing here touches storage.
//!
//! [`gather`]: super::gather

use std::collections::BTreeMap;

use flopmeter_core::audit::{AuditEntry, AuditKind, ChainHead, Json};
use flopmeter_core::clock::{Assessment, ClockState};
use flopmeter_core::threshold::{Level, Threshold};
use flopmeter_core::units::{Bound, FlopTotal};
use flopmeter_core::utc::MS_PER_DAY;

use crate::compliance::AlertView;
use crate::compliance::engine::PairView;
use crate::compliance::store::{DeliveryState, OutboxItem};
use crate::report::Report;

/// A running clock whose deadline is closer than this is "due soon".
pub const DUE_SOON_MS: i64 = 3 * MS_PER_DAY;

/// How urgent a model or an alert is, most urgent first (the derived order is the sort
/// order). Shown in words as well as colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Urgency {
    /// A deadline passed without an acknowledgement.
    Overdue,
    /// A clock is running and its deadline is within [`DUE_SOON_MS`].
    DueSoon,
    /// A clock is running.
    Running,
    /// A forecast alert: the trend crosses, no clock yet.
    Forecast,
    /// No alert, but the projection crosses a level.
    Projected,
    /// Nothing pending.
    Quiet,
    /// Every alert of the model is acknowledged or dismissed.
    Done,
}

impl Urgency {
    /// The words shown beside the colour.
    pub fn label(self) -> &'static str {
        match self {
            Urgency::Overdue => "OVERDUE",
            Urgency::DueSoon => "due within 3 days",
            Urgency::Running => "clock running",
            Urgency::Forecast => "forecast",
            Urgency::Projected => "projected to cross",
            Urgency::Quiet => "no clock",
            Urgency::Done => "notified",
        }
    }

    /// The CSS class of the colour.
    pub fn class(self) -> &'static str {
        match self {
            Urgency::Overdue => "u-overdue",
            Urgency::DueSoon => "u-soon",
            Urgency::Running => "u-running",
            Urgency::Forecast => "u-forecast",
            Urgency::Projected => "u-projected",
            Urgency::Quiet => "u-quiet",
            Urgency::Done => "u-done",
        }
    }
}

/// The urgency of one alert at `now_ms`.
pub fn alert_urgency(status: &str, deadline_ms: Option<i64>, now_ms: i64) -> Urgency {
    match status {
        "acknowledged" | "dismissed" => Urgency::Done,
        "forecast" => Urgency::Forecast,
        "forecast-withdrawn" => Urgency::Quiet,
        _ => match deadline_ms {
            Some(d) if d <= now_ms => Urgency::Overdue,
            Some(d) if d - now_ms <= DUE_SOON_MS => Urgency::DueSoon,
            _ if status == "overdue" => Urgency::Overdue,
            _ => Urgency::Running,
        },
    }
}

/// One column of threshold bars: thresholds with the same level share a bar (the 10^26
/// regimes of California, New York and South Korea).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThresholdColumn {
    /// Threshold ids in the column.
    pub ids: Vec<String>,
    /// The level in words (`1.0e25`, `⅓ of base`).
    pub level: String,
}

/// Groups thresholds into columns, lowest level first; relative levels (the modifier rule)
/// get a column of their own.
pub fn threshold_columns(thresholds: &[Threshold]) -> Vec<ThresholdColumn> {
    let mut absolute: BTreeMap<u128, Vec<String>> = BTreeMap::new();
    let mut relative = Vec::new();
    for t in thresholds {
        match t.level {
            Level::Absolute { flop } => absolute.entry(flop).or_default().push(t.id.clone()),
            Level::FractionOfBase {
                numerator,
                denominator,
                ..
            } => relative.push(ThresholdColumn {
                ids: vec![t.id.clone()],
                level: format!("{numerator}/{denominator} of base"),
            }),
        }
    }
    let mut cols: Vec<ThresholdColumn> = absolute
        .into_iter()
        .map(|(flop, ids)| ThresholdColumn {
            ids,
            level: flopmeter_core::format::flop(flop),
        })
        .collect();
    // The modifier rule sits after the levels it is a fraction of in practice (1e25 / 3).
    let at = cols.len().min(2);
    for (i, r) in relative.into_iter().enumerate() {
        cols.insert(at + i, r);
    }
    cols
}

/// Where a band sits against one level, on a log scale from a thousandth of the level to ten
/// times it (the level at 75%): near a threshold the bar moves, far below it stays empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// The level, FLOP.
    pub level: u128,
    /// Low bound position, 0–100.
    pub low: u8,
    /// High bound position, 0–100.
    pub high: u8,
    /// Central position, 0–100.
    pub central: u8,
    /// The deciding bound's share of the level, percent.
    pub percent: f64,
    /// The deciding bound.
    pub bound: Bound,
    /// Whether the deciding bound has crossed (the threshold's own comparison).
    pub crossed: bool,
}

/// Position of `x` on a bar for `level`, 0–100.
pub fn bar_position(x: u128, level: u128) -> u8 {
    if x == 0 || level == 0 {
        return 0;
    }
    let ratio = (x as f64).log10() - (level as f64).log10();
    (((ratio + 3.0) / 4.0).clamp(0.0, 1.0) * 100.0).round() as u8
}

impl Bar {
    /// The bar of `band` against the level of one assessment.
    pub fn of(band: FlopTotal, a: &Assessment) -> Bar {
        Bar::at(band, a.level.flop, a.bound, &a.threshold)
    }

    /// The bar of `band` against `level` of `threshold`, decided on `bound`.
    pub fn at(band: FlopTotal, level: u128, bound: Bound, threshold: &Threshold) -> Bar {
        let decided = band.get(bound);
        Bar {
            level,
            low: bar_position(band.low, level),
            high: bar_position(band.high, level),
            central: bar_position(band.central, level),
            percent: if level == 0 {
                100.0
            } else {
                decided as f64 * 100.0 / level as f64
            },
            bound,
            crossed: threshold.crossed(decided, level),
        }
    }
}

/// The crossing column: a fact once measured, a projection before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crossing {
    /// The measured total crossed at this event time.
    Measured(i64),
    /// The extrapolated trajectory crosses at this instant.
    Projected(i64),
}

impl Crossing {
    /// The instant.
    pub fn at_ms(&self) -> i64 {
        match self {
            Crossing::Measured(t) | Crossing::Projected(t) => *t,
        }
    }
}

/// The clock cell of a model: its most urgent alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockCell {
    /// Threshold id.
    pub threshold: String,
    /// Alert status (`clock-started`, ...).
    pub status: String,
    /// Deadline in force, Unix ms.
    pub deadline_ms: Option<i64>,
    /// Its urgency.
    pub urgency: Urgency,
    /// Other alerts of the model.
    pub others: usize,
}

/// One cluster the model ran on. The ledger does not record clusters yet: today there is one
/// unnamed cluster (this collector's), with the model's node count; once records carry their
/// cluster, [`super::gather`] fills one cell per cluster and nothing here changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCell {
    /// The cluster's name; `None` for this collector's own, unnamed.
    pub name: Option<String>,
    /// Nodes of the model on it.
    pub nodes: usize,
}

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
                clusters: vec![ClusterCell {
                    name: None,
                    nodes: r.unattributed.nodes.len(),
                }],
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

/// One line of an alert's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// Audit sequence number.
    pub seq: u64,
    /// When recorded, Unix ms.
    pub at_ms: i64,
    /// Who (engine, or the person).
    pub actor: String,
    /// What, in words.
    pub what: String,
}

/// One delivery attempt record of an alert event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryLine {
    /// Sink.
    pub sink: String,
    /// The event's idempotency key.
    pub key: String,
    /// Delivered or pending.
    pub delivered: bool,
    /// Attempts so far.
    pub attempts: u32,
    /// When delivered (wall clock).
    pub delivered_ms: Option<i64>,
    /// The last error of a pending one.
    pub last_error: Option<String>,
}

/// One alert with everything that happened to it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertHistory {
    /// The alert as the API shows it.
    pub view: AlertView,
    /// Its urgency now.
    pub urgency: Urgency,
    /// The clock: start, reason, evidence snapshot, facts.
    pub clock: Option<ClockState>,
    /// Audit entries about it, oldest first.
    pub history: Vec<HistoryLine>,
    /// Deliveries, in creation order.
    pub deliveries: Vec<DeliveryLine>,
}

/// One threshold's standing for a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdStanding {
    /// Threshold id.
    pub id: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// Legal basis.
    pub legal_basis: String,
    /// The counted band against it.
    pub bar: Bar,
    /// Projected total (deciding bound) and whether it crosses.
    pub projected: u128,
    /// Whether the projection crosses.
    pub projected_crossed: bool,
    /// The crossing, if any.
    pub crossing: Option<Crossing>,
}

/// The page of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPage {
    /// The engine's now.
    pub now_ms: i64,
    /// The Annex XI report (figures, runs, stages, exclusions, unattributed nearby).
    pub report: Report,
    /// Thresholds that apply.
    pub standings: Vec<ThresholdStanding>,
    /// The cumulative chart, when there is anything to draw.
    pub chart: Option<super::chart::Chart>,
    /// Alerts, most urgent first.
    pub alerts: Vec<AlertHistory>,
}

/// What the model page is built from.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// The engine's now.
    pub now_ms: i64,
    /// The report.
    pub report: Report,
    /// The engine's assessments of this model, per threshold id, in threshold order.
    pub assessments: Vec<Assessment>,
    /// The model's alerts.
    pub alerts: Vec<AlertView>,
    /// Their clocks.
    pub clocks: Vec<ClockState>,
    /// The audit entries naming the model.
    pub audit: Vec<AuditEntry>,
    /// Outbox items of the model's alerts.
    pub outbox: Vec<OutboxItem>,
    /// The chart.
    pub chart: Option<super::chart::Chart>,
}

fn text(j: Option<&Json>) -> String {
    match j {
        Some(Json::Str(s)) => s.clone(),
        Some(Json::UInt(u)) => u.to_string(),
        Some(Json::Int(i)) => i.to_string(),
        _ => String::new(),
    }
}

fn ms(j: Option<&Json>) -> Option<i64> {
    match j {
        Some(Json::UInt(u)) => i64::try_from(*u).ok(),
        Some(Json::Int(i)) => Some(*i),
        _ => None,
    }
}

fn utc(ms: Option<i64>) -> String {
    ms.map_or_else(String::new, flopmeter_core::utc::format_utc)
}

/// An audit entry in words.
pub fn describe_entry(e: &AuditEntry) -> String {
    let p = &e.payload;
    match &e.kind {
        AuditKind::ClockStarted => {
            let start = p.get("start");
            format!(
                "clock started at {}, reason {}; deadline {}",
                utc(ms(start.and_then(|s| s.get("at_ms")))),
                text(start.and_then(|s| s.get("reason"))),
                utc(ms(p.get("deadline_ms")))
            )
        }
        AuditKind::ClockFact => {
            let fact = p.get("fact").and_then(|f| f.get("kind"));
            format!(
                "clock fact: {}; deadline now {}",
                text(fact.and_then(|f| f.get("fact"))),
                utc(ms(p.get("effective_deadline_ms")))
            )
        }
        AuditKind::Alert | AuditKind::Acknowledged | AuditKind::Dismissed => {
            let kind = p.get("kind");
            match text(kind.and_then(|k| k.get("event"))).as_str() {
                "transition" => format!(
                    "{} → {}",
                    match text(kind.and_then(|k| k.get("from"))) {
                        f if f.is_empty() => "new".to_string(),
                        f => f,
                    },
                    text(kind.and_then(|k| k.get("to")))
                ),
                "reminder-due" => format!(
                    "reminder: {} days before the deadline {}",
                    text(kind.and_then(|k| k.get("days_before"))),
                    utc(ms(kind.and_then(|k| k.get("deadline_ms"))))
                ),
                "renotify" => format!(
                    "overdue re-notification {}",
                    text(kind.and_then(|k| k.get("n")))
                ),
                "deadline-moved" => format!(
                    "deadline moved from {} to {}",
                    utc(ms(kind.and_then(|k| k.get("from_ms")))),
                    utc(ms(kind.and_then(|k| k.get("to_ms"))))
                ),
                other => other.to_string(),
            }
        }
        AuditKind::Delivery => format!(
            "{} to {}: {} (attempt {})",
            text(p.get("result")),
            text(p.get("sink")),
            text(p.get("key")),
            text(p.get("attempts"))
        ),
        AuditKind::RegistryChange => "registry entry changed".to_string(),
        other => other.as_str().to_string(),
    }
}

/// Whether an audit entry is about `model` (and `threshold`, when given). A delivery names
/// its alert by idempotency key, `{model}/{threshold}/{kind}/{n}`; threshold ids have no
/// `/`, so the prefix with a threshold is unambiguous.
pub fn entry_is_about(e: &AuditEntry, model: &str, threshold: Option<&str>) -> bool {
    if e.kind == AuditKind::Delivery {
        let key = e.payload.get("key").and_then(Json::as_str).unwrap_or("");
        return match threshold {
            Some(t) => key.starts_with(&format!("{model}/{t}/")),
            None => key.starts_with(&format!("{model}/")),
        };
    }
    e.payload.get("model").and_then(Json::as_str) == Some(model)
        && threshold.is_none_or(|t| e.payload.get("threshold_id").and_then(Json::as_str) == Some(t))
}

/// Builds the page of one model.
pub fn model_page(input: ModelInput) -> ModelPage {
    let now = input.now_ms;
    let counted = input.report.computation.counted;
    let standings = input
        .assessments
        .iter()
        .map(|a| ThresholdStanding {
            id: a.threshold.id.clone(),
            jurisdiction: a.threshold.jurisdiction.clone(),
            legal_basis: a.threshold.legal_basis.clone(),
            bar: Bar::of(counted, a),
            projected: a.projection.projected.get(a.bound),
            projected_crossed: a.projected_crossed,
            crossing: match (a.measured_crossing_ms, a.projected_crossing_ms) {
                (Some(t), _) => Some(Crossing::Measured(t)),
                (None, Some(t)) => Some(Crossing::Projected(t)),
                _ => None,
            },
        })
        .collect();
    let mut alerts: Vec<AlertHistory> = input
        .alerts
        .into_iter()
        .map(|view| {
            let t = view.threshold.clone();
            AlertHistory {
                urgency: alert_urgency(&view.status, view.deadline_ms, now),
                clock: input.clocks.iter().find(|c| c.threshold_id == t).cloned(),
                history: input
                    .audit
                    .iter()
                    .filter(|e| entry_is_about(e, &view.model, Some(&t)))
                    .map(|e| HistoryLine {
                        seq: e.seq,
                        at_ms: e.time_ms,
                        actor: e.actor.clone(),
                        what: describe_entry(e),
                    })
                    .collect(),
                deliveries: input
                    .outbox
                    .iter()
                    .filter(|o| o.event.threshold_id == t)
                    .map(|o| DeliveryLine {
                        sink: o.sink.clone(),
                        key: o.key.clone(),
                        delivered: o.state == DeliveryState::Delivered,
                        attempts: o.attempts,
                        delivered_ms: o.delivered_unix_ms,
                        last_error: o.last_error.clone(),
                    })
                    .collect(),
                view,
            }
        })
        .collect();
    alerts.sort_by_key(|a| (a.urgency, a.view.deadline_ms.unwrap_or(i64::MAX)));
    ModelPage {
        now_ms: now,
        report: input.report,
        standings,
        chart: input.chart,
        alerts,
    }
}

/// One row of the alerts page.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    /// The alert.
    pub view: AlertView,
    /// Its urgency.
    pub urgency: Urgency,
}

/// The alerts page: open alerts by deadline, overdue first; then the closed ones.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsPage {
    /// The engine's now.
    pub now_ms: i64,
    /// Open alerts (not acknowledged or dismissed).
    pub open: Vec<AlertRow>,
    /// Acknowledged and dismissed, latest deadline first.
    pub closed: Vec<AlertRow>,
}

/// Builds the alerts page.
pub fn alerts_page(alerts: Vec<AlertView>, now_ms: i64) -> AlertsPage {
    let (mut open, mut closed): (Vec<AlertRow>, Vec<AlertRow>) = alerts
        .into_iter()
        .map(|view| AlertRow {
            urgency: alert_urgency(&view.status, view.deadline_ms, now_ms),
            view,
        })
        .partition(|r| r.urgency != Urgency::Done);
    let when = |r: &AlertRow| {
        r.view
            .deadline_ms
            .or_else(|| {
                r.view
                    .content
                    .as_ref()
                    .and_then(|c| c.projected_crossing.as_ref())
                    .map(|_| i64::MAX - 1)
            })
            .unwrap_or(i64::MAX)
    };
    open.sort_by(|a, b| {
        (a.urgency, when(a), &a.view.model, &a.view.threshold).cmp(&(
            b.urgency,
            when(b),
            &b.view.model,
            &b.view.threshold,
        ))
    });
    closed.sort_by(|a, b| {
        b.view
            .deadline_ms
            .cmp(&a.view.deadline_ms)
            .then(a.view.model.cmp(&b.view.model))
    });
    AlertsPage {
        now_ms,
        open,
        closed,
    }
}

/// The result of `audit verify` run on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every link verified; the number of entries.
    Ok(u64),
    /// The first broken link: index and reason.
    Broken(usize, String),
}

/// The audit page.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The stored chain head.
    pub head: ChainHead,
    /// The verification, when asked for.
    pub verification: Option<Verification>,
    /// The latest entries, newest first.
    pub recent: Vec<HistoryLine>,
    /// Their kind and subject (model / threshold), aligned with `recent`.
    pub subjects: Vec<(String, String)>,
}

/// Builds the audit page from the newest `entries` (any order) and the head.
pub fn audit_page(
    head: ChainHead,
    mut entries: Vec<AuditEntry>,
    verification: Option<Verification>,
    limit: usize,
) -> AuditPage {
    entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
    entries.truncate(limit);
    AuditPage {
        head,
        verification,
        subjects: entries
            .iter()
            .map(|e| {
                let p = &e.payload;
                let subject = [p.get("model"), p.get("threshold_id"), p.get("key")]
                    .into_iter()
                    .map(text)
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" / ");
                (e.kind.as_str().to_string(), subject)
            })
            .collect(),
        recent: entries
            .iter()
            .map(|e| HistoryLine {
                seq: e.seq,
                at_ms: e.time_ms,
                actor: e.actor.clone(),
                what: describe_entry(e),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        Computation, EnergyFigure, PolicyView, Quality, TrainingTime, UnattributedView,
    };
    use flopmeter_core::threshold::defaults;

    const D: i64 = MS_PER_DAY;

    fn report(model: &str, central: u128, unattributed: u128, nodes: usize) -> Report {
        let t = FlopTotal {
            low: central / 2,
            central,
            high: central * 2,
        };
        Report {
            schema: crate::report::SCHEMA.into(),
            model: model.into(),
            generated_unix_ms: 0,
            entry: None,
            policy: PolicyView {
                counted_stages: vec![],
                excluded_stages: vec![],
                unknown_stages_count: true,
            },
            computation: Computation {
                counted: t,
                counted_text: String::new(),
                excluded: FlopTotal::ZERO,
                measured: t,
                method_mix: vec![],
                method_mix_text: String::new(),
            },
            training_time: TrainingTime {
                first_event_unix_ms: None,
                last_event_unix_ms: None,
                wall_clock_days: 0.0,
            },
            hardware: vec![],
            energy: EnergyFigure {
                counted_mj: 0,
                counted_mwh: 0.0,
                excluded_mwh: 0.0,
            },
            stages: vec![],
            runs: vec![],
            unattributed: UnattributedView {
                nodes: (0..nodes).map(|i| format!("n{i}")).collect(),
                first_day: None,
                last_day: None,
                flop: FlopTotal::exact(unattributed),
                gpu_days: BTreeMap::new(),
                energy_mwh: 0.0,
                records: 0,
                unestimated: Default::default(),
                sources: vec![],
                other_sources: Default::default(),
            },
            unestimated: Default::default(),
            base_model: None,
            quality: Quality::default(),
            methodology: vec![],
        }
    }

    fn alert(model: &str, threshold: &str, status: &str, deadline: Option<i64>) -> AlertView {
        AlertView {
            model: model.into(),
            threshold: threshold.into(),
            status: status.into(),
            clock_start: None,
            reason: None,
            deadline: None,
            deadline_ms: deadline,
            time_left: None,
            overdue: deadline.is_some_and(|d| d < 100 * D),
            acknowledged: None,
            dismissed: None,
            delivery: vec![],
            content: None,
        }
    }

    #[test]
    fn urgency_of_an_alert() {
        let now = 100 * D;
        assert_eq!(
            alert_urgency("clock-started", Some(now), now),
            Urgency::Overdue
        );
        assert_eq!(
            alert_urgency("overdue", Some(now - 1), now),
            Urgency::Overdue
        );
        assert_eq!(
            alert_urgency("clock-started", Some(now + 3 * D), now),
            Urgency::DueSoon
        );
        assert_eq!(
            alert_urgency("clock-started", Some(now + 3 * D + 1), now),
            Urgency::Running
        );
        assert_eq!(alert_urgency("forecast", None, now), Urgency::Forecast);
        assert_eq!(
            alert_urgency("forecast-withdrawn", None, now),
            Urgency::Quiet
        );
        // A closed alert is done even after its deadline.
        assert_eq!(
            alert_urgency("acknowledged", Some(now - D), now),
            Urgency::Done
        );
        assert_eq!(
            alert_urgency("dismissed", Some(now - D), now),
            Urgency::Done
        );
    }

    #[test]
    fn bars_put_the_level_at_three_quarters_on_a_log_scale() {
        let l = 10u128.pow(25);
        assert_eq!(bar_position(l, l), 75);
        assert_eq!(bar_position(l / 1000, l), 0);
        assert_eq!(bar_position(l / 10_000, l), 0);
        assert_eq!(bar_position(l * 10, l), 100);
        assert_eq!(bar_position(0, l), 0);
        assert!(bar_position(l / 10, l) < bar_position(l / 2, l));
    }

    #[test]
    fn thresholds_of_one_level_share_a_column_and_the_modifier_follows_1e25() {
        let cols = threshold_columns(&defaults());
        let ids: Vec<Vec<&str>> = cols
            .iter()
            .map(|c| c.ids.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            ids,
            vec![
                vec!["eu-gpai-indicative"],
                vec!["eu-systemic-risk"],
                vec!["eu-modifier"],
                vec!["us-ca-sb53", "us-ny-raise", "kr-basic-act"],
            ]
        );
        assert_eq!(cols[1].level, "1.0e25");
        assert_eq!(cols[2].level, "1/3 of base");
    }

    #[test]
    fn the_most_urgent_model_comes_first() {
        let now = 50 * D;
        let input = ModelsInput {
            now_ms: now,
            thresholds: defaults(),
            reports: vec![
                report("quiet", 10, 0, 1),
                report("running-late", 10, 0, 1),
                report("running-soon", 10, 0, 1),
                report("overdue", 10, 0, 1),
                report("forecast", 10, 0, 1),
                report("notified", 10, 0, 1),
            ],
            pairs: BTreeMap::new(),
            bound: Bound::High,
            alerts: vec![
                alert(
                    "running-late",
                    "eu-systemic-risk",
                    "clock-started",
                    Some(now + 10 * D),
                ),
                alert(
                    "running-soon",
                    "eu-systemic-risk",
                    "clock-started",
                    Some(now + 5 * D),
                ),
                alert("overdue", "eu-systemic-risk", "overdue", Some(now - D)),
                // A second, closed alert of the same model does not hide the overdue one.
                alert("overdue", "eu-modifier", "acknowledged", Some(now - 9 * D)),
                alert("forecast", "eu-systemic-risk", "forecast", None),
                alert(
                    "notified",
                    "eu-systemic-risk",
                    "acknowledged",
                    Some(now - 2 * D),
                ),
            ],
        };
        let page = models_page(&input, Sort::Urgency);
        let order: Vec<&str> = page.rows.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(
            order,
            [
                "overdue",
                "running-soon",
                "running-late",
                "forecast",
                "quiet",
                "notified"
            ]
        );
        let first = page.rows[0].clock.as_ref().unwrap();
        assert_eq!((first.status.as_str(), first.others), ("overdue", 1));
        assert_eq!((page.running, page.overdue), (3, 1));
        assert_eq!(
            page.next_deadline,
            Some(("overdue".into(), "eu-systemic-risk".into(), now - D))
        );
        let by_name = models_page(&input, Sort::Model);
        assert_eq!(by_name.rows[0].model, "forecast");
        let by_deadline = models_page(&input, Sort::Deadline);
        assert_eq!(by_deadline.rows[0].model, "notified");
    }

    #[test]
    fn unattributed_share_and_clusters_come_from_the_report() {
        let input = ModelsInput {
            now_ms: 0,
            thresholds: vec![],
            reports: vec![report("m", 300, 100, 3)],
            pairs: BTreeMap::new(),
            bound: Bound::High,
            alerts: vec![],
        };
        let row = &models_page(&input, Sort::Urgency).rows[0];
        assert!((row.unattributed_share - 0.25).abs() < 1e-12);
        assert_eq!(
            row.clusters,
            vec![ClusterCell {
                name: None,
                nodes: 3
            }]
        );
    }

    #[test]
    fn the_alerts_page_lists_overdue_first_then_by_deadline_and_closed_apart() {
        let now = 10 * D;
        let page = alerts_page(
            vec![
                alert("a", "t", "clock-started", Some(now + 9 * D)),
                alert("b", "t", "forecast", None),
                alert("c", "t", "clock-started", Some(now - 1)),
                alert("d", "t", "acknowledged", Some(now - 5 * D)),
                alert("e", "t", "clock-started", Some(now + 2 * D)),
            ],
            now,
        );
        let open: Vec<&str> = page.open.iter().map(|r| r.view.model.as_str()).collect();
        assert_eq!(open, ["c", "e", "a", "b"]);
        assert_eq!(page.closed.len(), 1);
        assert_eq!(page.closed[0].view.model, "d");
    }

    fn entry(kind: AuditKind, payload: Json) -> AuditEntry {
        AuditEntry {
            seq: 1,
            time_ms: 0,
            actor: "x".into(),
            kind,
            payload,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn obj(fields: &[(&str, Json)]) -> Json {
        Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn history_picks_the_alerts_own_entries_and_says_them_in_words() {
        let ack = entry(
            AuditKind::Acknowledged,
            obj(&[
                ("model", Json::Str("m".into())),
                ("threshold_id", Json::Str("eu-systemic-risk".into())),
                (
                    "kind",
                    obj(&[
                        ("event", Json::Str("transition".into())),
                        ("from", Json::Str("clock-started".into())),
                        ("to", Json::Str("acknowledged".into())),
                    ]),
                ),
            ]),
        );
        assert!(entry_is_about(&ack, "m", Some("eu-systemic-risk")));
        assert!(!entry_is_about(&ack, "m", Some("eu-modifier")));
        assert!(!entry_is_about(&ack, "m2", None));
        assert_eq!(describe_entry(&ack), "clock-started → acknowledged");
        let delivery = entry(
            AuditKind::Delivery,
            obj(&[
                (
                    "key",
                    Json::Str("m/eu-systemic-risk/clock-started/1".into()),
                ),
                ("sink", Json::Str("log".into())),
                ("result", Json::Str("delivered".into())),
                ("attempts", Json::UInt(1)),
            ]),
        );
        assert!(entry_is_about(&delivery, "m", Some("eu-systemic-risk")));
        assert!(!entry_is_about(&delivery, "m/eu-systemic-risk", Some("x")));
        assert_eq!(
            describe_entry(&delivery),
            "delivered to log: m/eu-systemic-risk/clock-started/1 (attempt 1)"
        );
        let page = audit_page(ChainHead::genesis(), vec![ack.clone(), delivery], None, 1);
        assert_eq!(page.recent.len(), 1);
    }

    #[test]
    fn sorts_parse_from_the_query() {
        assert_eq!(Sort::parse(Some("deadline")), Sort::Deadline);
        assert_eq!(Sort::parse(Some("<bogus>")), Sort::Urgency);
        assert_eq!(Sort::parse(None), Sort::Urgency);
    }
}
