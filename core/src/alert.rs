//! Alert lifecycle for one (model, threshold) with a notify obligation. What an alert says,
//! its rendered content ([`AlertContent`], built by [`content()`]), lives in `alert/content.rs`.
//!
//! ```text
//!  forecast ⇄ forecast-withdrawn          (projection crosses; the clock rule has not fired)
//!      │            │
//!      └────┬───────┘
//!           ▼
//!     clock-started ──reminders 7, 3, 1 days before the deadline──▶ overdue ──re-notify…
//!           │                                                          │
//!           └───────────── acknowledged (who, when, reference) ◀───────┘
//!                          dismissed (who, why)
//! ```
//!
//! The only terminal states are *acknowledged* and *dismissed*, and only a person reaches them
//! ([`acknowledge`], [`dismiss`]). One exception keeps a dismissal from hiding a real
//! obligation: dismissing a *forecast* ("that run will stop early") does not dismiss a clock
//! that starts later; the alert reopens as clock-started.
//!
//! [`evaluate`] is a pure transition function of the previous alert, the current
//! [`Assessment`] and [`ClockState`], and `now`. It emits [`AlertEvent`]s, each with an
//! idempotency key `{model}/{threshold}/{kind}/{n}` that is stable across re-evaluations, so a
//! durable outbox can deliver each exactly once however often the engine runs. Evaluating
//! twice at the same inputs emits nothing the second time.
//!
//! Reminders fall exactly `N × 24 h` before the deadline in force. Everything is UTC: a
//! reminder schedule across a daylight-saving change in Europe still lands exactly N×24 h
//! before the deadline, and every instant shown carries a `Z`. When several reminders fall due
//! at once (the clock started late, or the deadline moved earlier), only the most urgent is
//! sent; once overdue, pending reminders are dropped for the overdue notice.

mod content;
#[cfg(test)]
mod tests;

pub use content::{AlertContent, ClockContent, Figure, content};

use serde::{Deserialize, Serialize};

use crate::clock::{Assessment, ClockState};
use crate::utc::{MS_PER_HOUR, days_ms};

/// Alert settings (part of the collector config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Reminders, in days before the deadline. Default 7, 3, 1.
    pub reminder_days: Vec<u32>,
    /// Once overdue, re-notify every this many hours until acknowledged or dismissed; 0
    /// disables. Default 24.
    pub overdue_renotify_hours: u32,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            reminder_days: vec![7, 3, 1],
            overdue_renotify_hours: 24,
        }
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertStatus {
    /// The projection crosses within the horizon; the clock has not started.
    Forecast,
    /// A forecast that no longer holds (the run slowed or stopped). Not terminal: it returns
    /// to forecast if the projection crosses again.
    ForecastWithdrawn,
    /// The clock is running.
    ClockStarted,
    /// The deadline has passed without an acknowledgement.
    Overdue,
    /// Terminal: someone recorded the notification.
    Acknowledged,
    /// Terminal: someone dismissed it, with a reason.
    Dismissed,
}

impl AlertStatus {
    /// The kebab-case tag used in keys, labels and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Forecast => "forecast",
            AlertStatus::ForecastWithdrawn => "forecast-withdrawn",
            AlertStatus::ClockStarted => "clock-started",
            AlertStatus::Overdue => "overdue",
            AlertStatus::Acknowledged => "acknowledged",
            AlertStatus::Dismissed => "dismissed",
        }
    }

    /// Whether only a person's action got it here and nothing moves it on.
    pub fn is_terminal(self) -> bool {
        matches!(self, AlertStatus::Acknowledged | AlertStatus::Dismissed)
    }

    /// Whether the alert should be shown as firing (Alertmanager re-posts these).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            AlertStatus::Forecast | AlertStatus::ClockStarted | AlertStatus::Overdue
        )
    }
}

/// Who recorded the notification, when, and its reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    /// Who.
    pub by: String,
    /// When (Unix ms UTC).
    pub at_ms: i64,
    /// The notification's reference (e.g. the AI Office's receipt number).
    pub reference: String,
}

/// Who dismissed the alert, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dismissal {
    /// Who.
    pub by: String,
    /// When (Unix ms UTC).
    pub at_ms: i64,
    /// Why (e.g. not placed on the EU market; rebuttal filed).
    pub reason: String,
    /// The status dismissed from; a dismissed forecast reopens if the clock starts.
    pub from: AlertStatus,
}

/// The alert of one (model, threshold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Model.
    pub model: String,
    /// Threshold id.
    pub threshold_id: String,
    /// Current status.
    pub status: AlertStatus,
    /// When the alert was opened (Unix ms UTC).
    pub opened_at_ms: i64,
    /// When the status last changed.
    pub changed_at_ms: i64,
    /// Times the alert entered forecast.
    pub forecasts: u32,
    /// Times a forecast was withdrawn.
    pub withdrawals: u32,
    /// The latest projected crossing instant.
    pub projected_crossing_ms: Option<i64>,
    /// The clock's effective start, once started.
    pub clock_start_ms: Option<i64>,
    /// The deadline in force last seen.
    pub deadline_ms: Option<i64>,
    /// Reminder offsets (days) already sent or superseded.
    pub reminders_done: Vec<u32>,
    /// Overdue re-notifications sent.
    pub renotified: u32,
    /// Times the deadline moved earlier.
    pub deadline_moves: u32,
    /// Times dismissed (a dismissed forecast can reopen and be dismissed again).
    pub dismissals: u32,
    /// The acknowledgement, once acknowledged.
    pub acknowledgement: Option<Acknowledgement>,
    /// The latest dismissal.
    pub dismissal: Option<Dismissal>,
}

/// What happened to an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum AlertEventKind {
    /// The status changed.
    Transition {
        /// Status before (`None` for a new alert).
        from: Option<AlertStatus>,
        /// Status now.
        to: AlertStatus,
    },
    /// A reminder is due.
    ReminderDue {
        /// Days before the deadline.
        days_before: u32,
        /// When it fell due: exactly `days_before × 24 h` before the deadline.
        due_at_ms: i64,
        /// The deadline.
        deadline_ms: i64,
    },
    /// An overdue alert is notified again.
    Renotify {
        /// The n-th re-notification.
        n: u32,
        /// The deadline that passed.
        deadline_ms: i64,
    },
    /// Late evidence moved the deadline earlier.
    DeadlineMoved {
        /// Deadline before.
        from_ms: i64,
        /// Deadline now.
        to_ms: i64,
    },
}

/// An alert event, for the outbox and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Idempotency key: `{model}/{threshold}/{kind}/{n}`.
    pub key: String,
    /// When emitted (the evaluation time).
    pub at_ms: i64,
    /// Model.
    pub model: String,
    /// Threshold id.
    pub threshold_id: String,
    /// What.
    pub kind: AlertEventKind,
}

/// Why a person's action on an alert was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    /// The alert is already acknowledged or dismissed.
    #[error("the alert for {model} / {threshold} is already {status}; nothing to do")]
    Closed {
        /// Model.
        model: String,
        /// Threshold.
        threshold: String,
        /// Its terminal status.
        status: &'static str,
    },
    /// A required field is empty.
    #[error("{0} must not be empty")]
    Missing(&'static str),
}

fn event(alert: &Alert, now_ms: i64, kind_key: &str, n: u32, kind: AlertEventKind) -> AlertEvent {
    AlertEvent {
        key: format!("{}/{}/{kind_key}/{n}", alert.model, alert.threshold_id),
        at_ms: now_ms,
        model: alert.model.clone(),
        threshold_id: alert.threshold_id.clone(),
        kind,
    }
}

fn transition(alert: &mut Alert, to: AlertStatus, n: u32, now_ms: i64, out: &mut Vec<AlertEvent>) {
    let from = Some(alert.status);
    alert.status = to;
    alert.changed_at_ms = now_ms;
    out.push(event(
        alert,
        now_ms,
        to.as_str(),
        n,
        AlertEventKind::Transition { from, to },
    ));
}

/// Advances the alert of one (model, threshold) at `now_ms`.
///
/// `alert` is the previous result (`None` before any alert), `a` the current assessment and
/// `clock` the clock after [`crate::clock::evaluate`]. Thresholds without a notify
/// obligation raise no alerts: their crossings are shown in status and reports.
pub fn evaluate(
    alert: Option<Alert>,
    a: &Assessment,
    clock: Option<&ClockState>,
    now_ms: i64,
    cfg: &AlertConfig,
) -> (Option<Alert>, Vec<AlertEvent>) {
    let mut out = Vec::new();
    if a.threshold.notify_days().is_none() {
        return (alert, out);
    }
    let Some(clock) = clock else {
        return forecast_step(alert, a, now_ms, out);
    };
    let new = alert.is_none();
    let mut alert = alert.unwrap_or_else(|| Alert {
        model: a.model.clone(),
        threshold_id: a.threshold.id.clone(),
        status: AlertStatus::ClockStarted,
        opened_at_ms: now_ms,
        changed_at_ms: now_ms,
        forecasts: 0,
        withdrawals: 0,
        projected_crossing_ms: a.projected_crossing_ms,
        clock_start_ms: None,
        deadline_ms: None,
        reminders_done: Vec::new(),
        renotified: 0,
        deadline_moves: 0,
        dismissals: 0,
        acknowledgement: None,
        dismissal: None,
    });
    let reopen = alert.status == AlertStatus::Dismissed
        && alert.dismissal.as_ref().is_some_and(|d| {
            matches!(
                d.from,
                AlertStatus::Forecast | AlertStatus::ForecastWithdrawn
            )
        });
    if alert.status.is_terminal() && !reopen {
        return (Some(alert), out);
    }
    let deadline = clock.effective_deadline_ms();
    alert.clock_start_ms = Some(clock.effective_start().0);
    if alert.deadline_ms.is_none() || reopen {
        // First sight of the clock: a new alert, or a forecast (possibly dismissed) that
        // turned into a running clock.
        let from = (!new).then_some(alert.status);
        alert.status = AlertStatus::ClockStarted;
        alert.changed_at_ms = now_ms;
        out.push(event(
            &alert,
            now_ms,
            "clock-started",
            1,
            AlertEventKind::Transition {
                from,
                to: AlertStatus::ClockStarted,
            },
        ));
    }
    match alert.deadline_ms {
        Some(d) if deadline < d => {
            alert.deadline_moves += 1;
            out.push(event(
                &alert,
                now_ms,
                "deadline-moved",
                alert.deadline_moves,
                AlertEventKind::DeadlineMoved {
                    from_ms: d,
                    to_ms: deadline,
                },
            ));
        }
        _ => {}
    }
    alert.deadline_ms = Some(deadline);

    if now_ms >= deadline {
        let every = i64::from(cfg.overdue_renotify_hours) * MS_PER_HOUR;
        let n = if every > 0 {
            u32::try_from((now_ms - deadline) / every).unwrap_or(u32::MAX)
        } else {
            0
        };
        if alert.status != AlertStatus::Overdue {
            transition(&mut alert, AlertStatus::Overdue, 1, now_ms, &mut out);
            // The overdue notice is the notification for now; re-notify from the next period
            // on (keys stay counted from the deadline, so they are stable).
            alert.renotified = alert.renotified.max(n);
        }
        // Pending reminders are moot once overdue.
        for d in &cfg.reminder_days {
            if !alert.reminders_done.contains(d) {
                alert.reminders_done.push(*d);
            }
        }
        {
            if n > alert.renotified {
                alert.renotified = n;
                out.push(event(
                    &alert,
                    now_ms,
                    "renotify",
                    n,
                    AlertEventKind::Renotify {
                        n,
                        deadline_ms: deadline,
                    },
                ));
            }
        }
    } else {
        let due: Vec<u32> = cfg
            .reminder_days
            .iter()
            .copied()
            .filter(|d| !alert.reminders_done.contains(d))
            .filter(|d| deadline.saturating_sub(days_ms(*d)) <= now_ms)
            .collect();
        if let Some(&most_urgent) = due.iter().min() {
            alert.reminders_done.extend(&due);
            out.push(event(
                &alert,
                now_ms,
                &format!("reminder-{most_urgent}d"),
                1,
                AlertEventKind::ReminderDue {
                    days_before: most_urgent,
                    due_at_ms: deadline - days_ms(most_urgent),
                    deadline_ms: deadline,
                },
            ));
        }
    }
    (Some(alert), out)
}

/// The forecast part of the lifecycle, while no clock runs.
fn forecast_step(
    alert: Option<Alert>,
    a: &Assessment,
    now_ms: i64,
    mut out: Vec<AlertEvent>,
) -> (Option<Alert>, Vec<AlertEvent>) {
    let forecast = a.projected_crossed;
    let Some(mut alert) = alert else {
        if !forecast {
            return (None, out);
        }
        let alert = Alert {
            model: a.model.clone(),
            threshold_id: a.threshold.id.clone(),
            status: AlertStatus::Forecast,
            opened_at_ms: now_ms,
            changed_at_ms: now_ms,
            forecasts: 1,
            withdrawals: 0,
            projected_crossing_ms: a.projected_crossing_ms,
            clock_start_ms: None,
            deadline_ms: None,
            reminders_done: Vec::new(),
            renotified: 0,
            deadline_moves: 0,
            dismissals: 0,
            acknowledgement: None,
            dismissal: None,
        };
        out.push(event(
            &alert,
            now_ms,
            "forecast",
            1,
            AlertEventKind::Transition {
                from: None,
                to: AlertStatus::Forecast,
            },
        ));
        return (Some(alert), out);
    };
    match (alert.status, forecast) {
        (AlertStatus::Forecast, true) => alert.projected_crossing_ms = a.projected_crossing_ms,
        (AlertStatus::Forecast, false) => {
            alert.withdrawals += 1;
            let n = alert.withdrawals;
            transition(
                &mut alert,
                AlertStatus::ForecastWithdrawn,
                n,
                now_ms,
                &mut out,
            );
        }
        (AlertStatus::ForecastWithdrawn, true) => {
            alert.forecasts += 1;
            alert.projected_crossing_ms = a.projected_crossing_ms;
            let n = alert.forecasts;
            transition(&mut alert, AlertStatus::Forecast, n, now_ms, &mut out);
        }
        _ => {}
    }
    (Some(alert), out)
}

fn check_open(alert: &Alert) -> Result<(), AlertError> {
    if alert.status.is_terminal() {
        return Err(AlertError::Closed {
            model: alert.model.clone(),
            threshold: alert.threshold_id.clone(),
            status: alert.status.as_str(),
        });
    }
    Ok(())
}

fn required(value: &str, field: &'static str) -> Result<String, AlertError> {
    let v = value.trim();
    if v.is_empty() {
        Err(AlertError::Missing(field))
    } else {
        Ok(v.to_string())
    }
}

/// Records that the notification was made (`flopmeter ack`): terminal.
pub fn acknowledge(
    mut alert: Alert,
    by: &str,
    reference: &str,
    now_ms: i64,
) -> Result<(Alert, AlertEvent), AlertError> {
    check_open(&alert)?;
    let by = required(by, "who acknowledges (--by)")?;
    let reference = required(reference, "the notification reference (--reference)")?;
    alert.acknowledgement = Some(Acknowledgement {
        by,
        at_ms: now_ms,
        reference,
    });
    let mut out = Vec::new();
    transition(&mut alert, AlertStatus::Acknowledged, 1, now_ms, &mut out);
    Ok((alert, out.remove(0)))
}

/// Dismisses the alert with a reason (`flopmeter dismiss`): terminal, except that a dismissed
/// forecast reopens if the clock starts later.
pub fn dismiss(
    mut alert: Alert,
    by: &str,
    reason: &str,
    now_ms: i64,
) -> Result<(Alert, AlertEvent), AlertError> {
    check_open(&alert)?;
    let by = required(by, "who dismisses (--by)")?;
    let reason = required(reason, "the reason (--reason)")?;
    alert.dismissal = Some(Dismissal {
        by,
        at_ms: now_ms,
        reason,
        from: alert.status,
    });
    alert.dismissals += 1;
    let n = alert.dismissals;
    let mut out = Vec::new();
    transition(&mut alert, AlertStatus::Dismissed, n, now_ms, &mut out);
    Ok((alert, out.remove(0)))
}
