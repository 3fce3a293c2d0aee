//! The alerts page: open alerts by urgency, closed ones apart.

use super::*;

use crate::compliance::AlertView;

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
