//! What each console page shows, computed from the collector's own views (the report, the
//! engine's assessments and alert views, clocks, audit entries), with no HTML in sight, so
//! the decisions (which row is most urgent, what a bar shows, which deadline applies) are
//! unit-tested here and the templates only lay them out.
//!
//! Every input is something the rest of the collector already produces ([`gather`] reads
//! them); nothing here touches storage.
//!
//! [`gather`]: super::gather

mod alerts;
mod audit;
mod model_page;
mod models;
#[cfg(test)]
mod tests;

pub use alerts::{AlertRow, AlertsPage, alerts_page};
pub use audit::{AuditPage, Verification, audit_page, describe_entry, entry_is_about};
pub use model_page::{AlertHistory, HistoryLine, ModelInput, ModelPage, model_page};
pub use models::{ModelsInput, ModelsPage, Sort, models_page};

use std::collections::BTreeMap;

use flopmeter_core::clock::Assessment;
use flopmeter_core::threshold::{Level, Threshold};
use flopmeter_core::units::{Bound, FlopTotal};
use flopmeter_core::utc::MS_PER_DAY;

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

/// One cluster the model ran on: a row of the report's per-cluster figures with its share of
/// the counted FLOP or, for a model whose report has none (nothing measured yet), this
/// collector's own unnamed cluster with the model's node count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCell {
    /// The cluster's name (or what the row stands for); `None` for this collector's own.
    pub name: Option<String>,
    /// Nodes of the model on it, when that is what the cell shows.
    pub nodes: Option<usize>,
    /// Its share of the model's counted central FLOP, percent, rounded.
    pub percent: Option<u32>,
}
