//! One model's page: where it stands against each threshold, and each alert's history.

use super::*;

use flopmeter_core::audit::AuditEntry;
use flopmeter_core::clock::{Assessment, ClockState};

use crate::compliance::AlertView;
use crate::compliance::store::{DeliveryState, OutboxItem};
use crate::report::Report;

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
    pub chart: Option<crate::console::chart::Chart>,
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
    pub chart: Option<crate::console::chart::Chart>,
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
