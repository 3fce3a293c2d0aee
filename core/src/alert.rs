//! Alert lifecycle for one (model, threshold) with a notify obligation, and what an alert says.
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

use serde::{Deserialize, Serialize};

use crate::clock::{Assessment, ClockState, FactKind, LevelSource, StartReason};
use crate::format::{band_near, flop, flop_near, time_left};
use crate::threshold::Comparison;
use crate::units::FlopTotal;
use crate::utc::{MS_PER_HOUR, days_ms, format_utc};

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

/// Which figure an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Figure {
    /// The counted measured total.
    Measured,
    /// The declared plan that started the clock (the measured total has not crossed).
    Plan,
    /// The committed projection (plans, declared ends).
    Committed,
    /// The projection including open-ended runs over the horizon.
    Projected,
}

/// The clock part of an alert's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockContent {
    /// Reason letter (a, b, c) and words.
    pub reason: String,
    /// Effective start, ISO 8601 UTC.
    pub started_at: String,
    /// When the engine recorded the start, ISO 8601 UTC.
    pub recorded_at: String,
    /// Deadline in force, ISO 8601 UTC.
    pub deadline: String,
    /// Time to the deadline, `13 d 04 h left`, or `overdue by 31 d 07 h` once it passed.
    pub time_left: String,
    /// Whether the deadline has passed.
    pub overdue: bool,
    /// Added facts in words (confirmations, earlier evidence, plan revisions).
    pub facts: Vec<String>,
    /// For a clock started by a plan: the plan, its figure and who declared it, when.
    #[serde(default)]
    pub plan: Option<String>,
}

/// What an alert says, as data (for webhooks and Alertmanager annotations) and as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertContent {
    /// Model.
    pub model: String,
    /// Status.
    pub status: AlertStatus,
    /// Threshold id and version, e.g. `eu-systemic-risk v1`.
    pub threshold: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// Legal basis.
    pub legal_basis: String,
    /// The level in words, e.g. `greater than 1.0e25 FLOP`.
    pub level: String,
    /// The deciding bound.
    pub bound: String,
    /// The figure the alert is about.
    pub figure: Figure,
    /// Measured total with band, e.g. `1.1e25 [8.9e24 – 1.4e25] FLOP`.
    pub measured: String,
    /// Projection with band (open-ended runs over the horizon included).
    pub projected: String,
    /// Committed projection with band (declared figures only).
    pub committed: String,
    /// Projected crossing instant, ISO 8601 UTC.
    pub projected_crossing: Option<String>,
    /// Whether the figure's band straddles the level (low below, high above).
    pub straddles: bool,
    /// Declarations that would narrow the band.
    pub narrowing: Vec<String>,
    /// The clock, once started.
    pub clock: Option<ClockContent>,
    /// What the notification must contain.
    pub notification_must_contain: Vec<String>,
    /// One line for a title or a chat message.
    pub summary: String,
    /// Who recorded the notification, when, and its reference (an acknowledged alert).
    #[serde(default)]
    pub acknowledgement: Option<Acknowledgement>,
    /// Who dismissed the alert, when, and why (a dismissed alert).
    #[serde(default)]
    pub dismissal: Option<Dismissal>,
}

/// A band, with figures that would round to the level written so the comparison shows.
fn flop_band(t: FlopTotal, level: u128) -> String {
    format!("{} FLOP", band_near(t, &[level]))
}

fn level_words(a: &Assessment) -> String {
    let cmp = match a.threshold.comparison {
        Comparison::GreaterThan => "greater than",
        Comparison::AtLeast => "at least",
    };
    let src = match &a.level.source {
        LevelSource::Absolute => String::new(),
        LevelSource::BaseCompute {
            base_model,
            base_flop,
            source,
        } => format!(
            " (a fraction of base model {base_model}'s {} FLOP{})",
            flop(*base_flop),
            source
                .as_ref()
                .map(|s| format!(", per {s}"))
                .unwrap_or_default()
        ),
        LevelSource::FallbackSystemic {
            base_model,
            declared,
        } => format!(
            " (fallback for a systemic-risk base: {base_model}'s compute is unknown, and it {} a \
             systemic-risk model)",
            if *declared {
                "is declared"
            } else {
                "is taken to be"
            }
        ),
        LevelSource::FallbackOther {
            base_model,
            declared: true,
        } => format!(
            " (fallback for a base that is not systemic-risk: {base_model}'s compute is unknown, \
             and it is declared not to be a systemic-risk model)"
        ),
        LevelSource::FallbackOther {
            base_model,
            declared: false,
        } => format!(
            " (fallback for a base that is not systemic-risk: {base_model}'s compute is unknown \
             and its systemic-risk status is not declared, so the lower, conservative level \
             applies; if {base_model} is a systemic-risk model, declare it with `flopmeter model \
             set {} --base-systemic-risk`, or give its compute with --base-flop)",
            a.model
        ),
    };
    format!("{cmp} {} FLOP{src}", flop(a.level.flop))
}

fn method_words(a: &Assessment) -> String {
    let total: u128 = a.method_mix.iter().map(|m| m.flop.central).sum();
    let mut parts: Vec<String> = a
        .method_mix
        .iter()
        .map(|m| {
            let pct = if total == 0 {
                0.0
            } else {
                m.flop.central as f64 * 100.0 / total as f64
            };
            format!("{} {pct:.0}%", m.method)
        })
        .collect();
    if let Some(p) = a.plans_in_force.first() {
        parts.push(format!("declared plan ({})", p.basis()));
    }
    if parts.is_empty() {
        "no measurement yet".to_string()
    } else {
        parts.join(", ")
    }
}

/// Builds what the alert says at `now_ms`. All instants are rendered in UTC (ISO 8601, `Z`).
pub fn content(
    alert: &Alert,
    a: &Assessment,
    clock: Option<&ClockState>,
    now_ms: i64,
) -> AlertContent {
    let p = &a.projection;
    let bound = a.bound;
    // A clock started by a plan is about that plan, even once it was revised: it cites it.
    let started_by_plan = clock
        .filter(|c| c.effective_start().1 == StartReason::Plan)
        .and(a.plan_crossing.as_ref());
    let figure = if a.crosses(p.measured.get(bound)) {
        Figure::Measured
    } else if started_by_plan.is_some() {
        Figure::Plan
    } else if a.crosses(p.committed.get(bound)) {
        Figure::Committed
    } else {
        Figure::Projected
    };
    let fig = match (figure, started_by_plan) {
        (Figure::Plan, Some(pc)) => pc.declared,
        (Figure::Measured, _) => p.measured,
        (Figure::Committed | Figure::Plan, _) => p.committed,
        (Figure::Projected, _) => p.projected,
    };
    let level = a.level.flop;
    let plan_words = started_by_plan.map(|pc| {
        let plans: Vec<String> = pc
            .plans
            .iter()
            .map(|d| {
                format!(
                    "{} ({}{}, declared {}{})",
                    d.plan_id,
                    d.total()
                        .map(|t| format!("{} FLOP, ", flop_near(t.high, &[level])))
                        .unwrap_or_default(),
                    d.basis(),
                    format_utc(d.registered_at_ms),
                    d.declared_by
                        .as_ref()
                        .map(|b| format!(" by {b}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        format!(
            "declared {} FLOP at {}: {}",
            flop_near(pc.declared.get(bound), &[level]),
            format_utc(pc.registered_at_ms),
            if plans.is_empty() {
                pc.plan_ids.join(", ")
            } else {
                plans.join("; ")
            }
        )
    });
    let straddles = a.crosses(fig.high) && !a.crosses(fig.low);
    let mut narrowing = Vec::new();
    if straddles {
        for r in p.runs.iter().filter(|r| r.stage.is_some()) {
            if r.precision.is_none() {
                narrowing.push(format!(
                    "declare the training precision of run {} (label `precision`, e.g. \
                     FLOPMETER_PRECISION=bf16): without it the high bound assumes the GPU's \
                     fastest dense peak",
                    r.run_id
                ));
            }
            if figure != Figure::Measured && r.active && r.end.is_some() && r.plan.is_none() {
                narrowing.push(format!(
                    "declare the plan of run {} (`planned_flop`, or `params` and `tokens` for \
                     6·N·D) and its `planned_end`",
                    r.run_id
                ));
            }
        }
        if a.plans_in_force.is_empty() {
            narrowing.push(
                "register the model's plan (planned FLOP, or parameters × tokens for 6·N·D)"
                    .to_string(),
            );
        }
        if narrowing.is_empty() {
            narrowing.push(
                "everything is declared: the band is the measurement method's own uncertainty; \
                 a framework-reported MFU or a 6·N·D cross-check can narrow it"
                    .to_string(),
            );
        }
    }
    let clock_content = clock.map(|c| {
        let (start, reason) = c.effective_start();
        let deadline = c.effective_deadline_ms();
        let left = deadline - now_ms;
        ClockContent {
            reason: format!("({}) {}", reason.letter(), reason.describe()),
            started_at: format_utc(start),
            recorded_at: format_utc(c.start.recorded_at_ms),
            deadline: format_utc(deadline),
            time_left: time_left(left),
            overdue: left <= 0,
            facts: c
                .facts
                .iter()
                .map(|f| match &f.kind {
                    FactKind::Confirmation { reason, at_ms, .. } => format!(
                        "confirmed by ({}) at {}, recorded {}",
                        reason.letter(),
                        format_utc(*at_ms),
                        format_utc(f.recorded_at_ms)
                    ),
                    FactKind::EarlierEvidence {
                        reason,
                        at_ms,
                        implied_deadline_ms,
                        ..
                    } => format!(
                        "earlier evidence ({}) at {}, found {}: deadline {}",
                        reason.letter(),
                        format_utc(*at_ms),
                        format_utc(f.recorded_at_ms),
                        format_utc(*implied_deadline_ms)
                    ),
                    FactKind::ThresholdChanged {
                        from_version,
                        to_version,
                    } => format!(
                        "threshold rule changed from v{from_version} to v{to_version} at {}",
                        format_utc(f.recorded_at_ms)
                    ),
                    FactKind::PlanRevised {
                        at_ms,
                        declared,
                        withdrawn,
                        ..
                    } => format!(
                        "plan {} at {}{}: the clock keeps running, because the earlier plan \
                         made it known that the threshold would be met; if it will not be, \
                         record why with `flopmeter dismiss --reason`",
                        if *withdrawn {
                            "withdrawn".to_string()
                        } else {
                            format!(
                                "revised to {} FLOP",
                                flop_near(declared.get(bound), &[level])
                            )
                        },
                        format_utc(*at_ms),
                        if *withdrawn { "" } else { ", below the level" },
                    ),
                })
                .collect(),
            plan: plan_words.clone(),
        }
    });
    let estimate = flop_near(fig.get(bound), &[level]);
    let triggering = match &plan_words {
        Some(words) if figure == Figure::Plan => format!(
            "the triggering estimate in FLOP to two significant figures: {estimate} FLOP, the \
             plan that started the clock ({words}); measured so far {} FLOP",
            band_near(p.measured, &[level])
        ),
        _ => format!(
            "the triggering estimate in FLOP to two significant figures: {estimate} FLOP \
             (the {bound} bound of {})",
            band_near(fig, &[level])
        ),
    };
    let notification_must_contain = vec![
        triggering,
        format!(
            "the estimation method and its approximations: {}",
            method_words(a)
        ),
        "the information showing the requirement is met (Art. 52(1)); rebuttal evidence may be \
         attached (Art. 52(2)) but does not suspend the obligations"
            .to_string(),
    ];
    let when = match &clock_content {
        Some(c) => format!(", deadline {} ({})", c.deadline, c.time_left),
        None => a
            .projected_crossing_ms
            .map(|t| format!(", projected to cross {}", format_utc(t)))
            .unwrap_or_default(),
    };
    AlertContent {
        model: a.model.clone(),
        status: alert.status,
        threshold: format!("{} v{}", a.threshold.id, a.threshold.version),
        jurisdiction: a.threshold.jurisdiction.clone(),
        legal_basis: a.threshold.legal_basis.clone(),
        level: level_words(a),
        bound: bound.to_string(),
        figure,
        measured: flop_band(p.measured, level),
        projected: flop_band(p.projected, level),
        committed: flop_band(p.committed, level),
        projected_crossing: a.projected_crossing_ms.map(format_utc),
        straddles,
        narrowing,
        clock: clock_content,
        notification_must_contain,
        acknowledgement: alert.acknowledgement.clone(),
        dismissal: alert.dismissal.clone(),
        summary: format!(
            "[{}] {}: {} {estimate} FLOP vs {} ({}){when}",
            alert.status.as_str(),
            a.model,
            match figure {
                Figure::Measured => "measured",
                Figure::Plan => "declared plan",
                Figure::Committed => "committed projection",
                Figure::Projected => "projection",
            },
            a.threshold.id,
            level_words(a),
        ),
    }
}

impl AlertContent {
    /// The alert as plain text for the log, webhooks and e-mail.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(self.summary.clone());
        line(format!(
            "Threshold: {} ({}), {}",
            self.threshold, self.jurisdiction, self.level
        ));
        line(format!("Legal basis: {}", self.legal_basis));
        line(format!(
            "Measured (counted stages): {}; deciding bound: {}",
            self.measured, self.bound
        ));
        if self.committed == self.projected {
            line(format!("Projected: {}", self.projected));
        } else {
            line(format!(
                "Projected: {} (declared figures only: {})",
                self.projected, self.committed
            ));
        }
        if let Some(t) = &self.projected_crossing {
            line(format!("Projected crossing: {t}"));
        }
        if self.straddles {
            line("The band straddles the threshold. To narrow it:".to_string());
            for n in &self.narrowing {
                line(format!("  - {n}"));
            }
        }
        if let Some(c) = &self.clock {
            line(format!(
                "Clock started {} because of {}; recorded {}",
                c.started_at, c.reason, c.recorded_at
            ));
            if let Some(plan) = &c.plan {
                line(format!("  the plan: {plan}"));
            }
            for f in &c.facts {
                line(format!("  - {f}"));
            }
            line(format!("Deadline: {}, {}", c.deadline, c.time_left));
        }
        if let Some(a) = &self.acknowledgement {
            line(format!(
                "Acknowledged by {} at {}: notification reference {}",
                a.by,
                format_utc(a.at_ms),
                a.reference
            ));
        }
        if let Some(d) = &self.dismissal {
            line(format!(
                "Dismissed by {} at {}: {}",
                d.by,
                format_utc(d.at_ms),
                d.reason
            ));
        }
        line("The notification must contain:".to_string());
        for n in &self.notification_must_contain {
            line(format!("  - {n}"));
        }
        line("All times are UTC.".to_string());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{self, ComplianceSettings};
    use crate::declaration::PlanFigures;
    use crate::evidence::{DeclaredPlan, FlopBucket, ModelEvidence, ModelRole, RunEvidence};
    use crate::stage::Stage;
    use crate::threshold::{defaults, find, pow10};
    use crate::units::Method;
    use crate::utc::{MS_PER_DAY, utc_ms};

    const D: i64 = MS_PER_DAY;
    const H: i64 = MS_PER_HOUR;

    fn plan(at: i64, flop: u128) -> DeclaredPlan {
        DeclaredPlan {
            plan_id: "plan-1".into(),
            run_id: None,
            registered_at_ms: at,
            figures: PlanFigures {
                planned_flop: Some(flop),
                params: None,
                tokens: None,
            },
            declared_by: None,
        }
    }

    fn evidence(plans: Vec<DeclaredPlan>, runs: Vec<RunEvidence>) -> ModelEvidence {
        ModelEvidence {
            model: "m".into(),
            role: ModelRole::Provider,
            plans,
            runs,
        }
    }

    /// An active, open-ended run doing `per_day` (band ×0.8/×1.25) for `hours` from `start`.
    fn trend(start: i64, hours: i64, per_day: u128, active: bool) -> RunEvidence {
        let per_hour = per_day / 24;
        RunEvidence {
            run_id: "r".into(),
            stage: Stage::Pretrain,
            active,
            planned_end_ms: None,
            precision: None,
            buckets: (0..hours)
                .map(|i| FlopBucket {
                    start_ms: start + i * H,
                    end_ms: start + (i + 1) * H,
                    flop: FlopTotal {
                        low: per_hour * 4 / 5,
                        central: per_hour,
                        high: per_hour * 5 / 4,
                    },
                    method: Method::GpmTensor,
                })
                .collect(),
        }
    }

    /// The engine as the collector runs it: assess, clock, alert.
    struct Engine {
        clock: Option<ClockState>,
        alert: Option<Alert>,
        cfg: AlertConfig,
        settings: ComplianceSettings,
    }

    impl Engine {
        fn new() -> Self {
            Engine {
                clock: None,
                alert: None,
                cfg: AlertConfig::default(),
                settings: ComplianceSettings::default(),
            }
        }

        fn step(&mut self, ev: &ModelEvidence, now: i64) -> Vec<AlertEvent> {
            let t = find(&defaults(), "eu-systemic-risk").unwrap().clone();
            let a = clock::assess(ev, &t, &self.settings, now).unwrap();
            let (c, _) = clock::evaluate(self.clock.take(), &a, now);
            self.clock = c;
            let (al, events) = evaluate(self.alert.take(), &a, self.clock.as_ref(), now, &self.cfg);
            self.alert = al;
            events
        }

        fn content(&self, ev: &ModelEvidence, now: i64) -> AlertContent {
            let t = find(&defaults(), "eu-systemic-risk").unwrap().clone();
            let a = clock::assess(ev, &t, &self.settings, now).unwrap();
            content(self.alert.as_ref().unwrap(), &a, self.clock.as_ref(), now)
        }
    }

    fn keys(events: &[AlertEvent]) -> Vec<&str> {
        events.iter().map(|e| e.key.as_str()).collect()
    }

    /// Reminders across the end of EU summer time (2026-10-25 01:00 UTC) and its start
    /// (2027-03-28 01:00 UTC): each falls exactly N × 24 h before the deadline in UTC, whatever a
    /// local wall clock shows (in Berlin a 7-day reminder and the deadline read different
    /// local hours). Each is emitted at its instant, not one millisecond before, and once.
    #[test]
    fn reminders_across_dst_changes_are_exact_in_utc() {
        let cases = [
            (
                utc_ms(2026, 10, 14, 12, 0, 0),
                [
                    (7, "2026-10-21T12:00:00Z"),
                    (3, "2026-10-25T12:00:00Z"),
                    (1, "2026-10-27T12:00:00Z"),
                ],
                "2026-10-28T12:00:00Z",
            ),
            (
                utc_ms(2027, 3, 20, 9, 30, 0),
                [
                    (7, "2027-03-27T09:30:00Z"),
                    (3, "2027-03-31T09:30:00Z"),
                    (1, "2027-04-02T09:30:00Z"),
                ],
                "2027-04-03T09:30:00Z",
            ),
        ];
        for (start, reminders, deadline_text) in cases {
            let ev = evidence(vec![plan(start, 2 * pow10(25))], vec![]);
            let mut e = Engine::new();
            let first = e.step(&ev, start);
            assert_eq!(keys(&first), ["m/eu-systemic-risk/clock-started/1"]);
            let deadline = e.clock.as_ref().unwrap().effective_deadline_ms();
            assert_eq!(deadline, start + 14 * D);
            assert_eq!(format_utc(deadline), deadline_text);
            for (days, text) in reminders {
                let due = deadline - days * D;
                assert_eq!(format_utc(due), text);
                assert!(e.step(&ev, due - 1).is_empty(), "{text}: not before");
                let got = e.step(&ev, due);
                assert_eq!(got.len(), 1, "{text}");
                assert_eq!(got[0].key, format!("m/eu-systemic-risk/reminder-{days}d/1"));
                assert_eq!(
                    got[0].kind,
                    AlertEventKind::ReminderDue {
                        days_before: days as u32,
                        due_at_ms: due,
                        deadline_ms: deadline
                    }
                );
                assert!(e.step(&ev, due + H).is_empty(), "{text}: once");
            }
            let over = e.step(&ev, deadline);
            assert_eq!(keys(&over), ["m/eu-systemic-risk/overdue/1"]);
            assert!(e.step(&ev, deadline + 24 * H - 1).is_empty());
            let again = e.step(&ev, deadline + 24 * H);
            assert_eq!(keys(&again), ["m/eu-systemic-risk/renotify/1"]);
        }
    }

    #[test]
    fn forecast_then_clock_then_acknowledged() {
        let t0 = utc_ms(2026, 9, 1, 0, 0, 0);
        let mut e = Engine::new();
        // 1e24 per day, open-ended: 14-day forecast passes 1e25 (high bound), no clock.
        let running = |hours| evidence(vec![], vec![trend(t0, hours, pow10(24), true)]);
        let ev = running(24);
        let got = e.step(&ev, t0 + D);
        assert_eq!(keys(&got), ["m/eu-systemic-risk/forecast/1"]);
        assert!(e.clock.is_none());
        let c = e.content(&ev, t0 + D);
        assert_eq!(c.figure, Figure::Projected);
        assert!(c.projected_crossing.is_some());
        assert!(c.clock.is_none());
        assert!(e.step(&ev, t0 + D + H).is_empty(), "idempotent");
        // The run stops: the forecast is withdrawn; it restarts: forecast again (n = 2).
        let stopped = evidence(vec![], vec![trend(t0, 24, pow10(24), false)]);
        assert_eq!(
            keys(&e.step(&stopped, t0 + 2 * D)),
            ["m/eu-systemic-risk/forecast-withdrawn/1"]
        );
        assert_eq!(
            keys(&e.step(&running(72), t0 + 3 * D)),
            ["m/eu-systemic-risk/forecast/2"]
        );
        // A plan is registered: the clock starts at its registration.
        let planned = evidence(
            vec![plan(t0 + 3 * D + H, 2 * pow10(25))],
            vec![trend(t0, 72, pow10(24), true)],
        );
        let got = e.step(&planned, t0 + 3 * D + 2 * H);
        assert_eq!(keys(&got), ["m/eu-systemic-risk/clock-started/1"]);
        assert_eq!(
            got[0].kind,
            AlertEventKind::Transition {
                from: Some(AlertStatus::Forecast),
                to: AlertStatus::ClockStarted
            }
        );
        let text = e.content(&planned, t0 + 3 * D + 2 * H).text();
        for want in [
            "eu-systemic-risk v1 (EU)",
            "AI Act Art. 51(2)",
            "greater than 1.0e25 FLOP",
            "Clock started 2026-09-04T01:00:00Z because of (a) a plan registered",
            "Deadline: 2026-09-18T01:00:00Z, 13 d 23 h left",
            "to two significant figures: 2.0e25 FLOP",
            "gpm-tensor 100%, declared plan (planned FLOP)",
            "All times are UTC.",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let alert = e.alert.clone().unwrap();
        assert_eq!(
            acknowledge(alert.clone(), "alice", " ", 0),
            Err(AlertError::Missing(
                "the notification reference (--reference)"
            ))
        );
        let (acked, ev) = acknowledge(alert, "alice", "AIO-2026-0042", t0 + 5 * D).unwrap();
        assert_eq!(ev.key, "m/eu-systemic-risk/acknowledged/1");
        assert_eq!(
            acked.acknowledgement.as_ref().unwrap().reference,
            "AIO-2026-0042"
        );
        e.alert = Some(acked.clone());
        // Terminal: no reminders, no overdue, and no second acknowledgement.
        assert!(e.step(&planned, t0 + 30 * D).is_empty());
        assert!(matches!(
            dismiss(acked, "bob", "x", 0),
            Err(AlertError::Closed {
                status: "acknowledged",
                ..
            })
        ));
    }

    #[test]
    fn overdue_on_arrival_skips_reminders() {
        let t0 = utc_ms(2026, 9, 1, 0, 0, 0);
        let mut e = Engine::new();
        // Records of a finished run arrive 20 days late: the crossing was on day 1.
        let ev = evidence(vec![], vec![trend(t0, 48, 2 * pow10(25), false)]);
        let got = e.step(&ev, t0 + 20 * D);
        assert_eq!(
            keys(&got),
            [
                "m/eu-systemic-risk/clock-started/1",
                "m/eu-systemic-risk/overdue/1"
            ]
        );
        let c = e.content(&ev, t0 + 20 * D);
        let clock = c.clock.clone().unwrap();
        assert!(clock.overdue);
        // The high bound (2.5e25 a day) crossed 9.6 h into day 0: 5 d 14 h 24 min overdue.
        assert_eq!(clock.time_left, "overdue by 5 d 14 h");
        assert!(c.text().contains("(overdue by 5 d 14 h)"), "{}", c.text());
        assert!(clock.reason.starts_with("(c)"));
        // Re-notified daily, with stable keys; a skipped day is one re-notification.
        let deadline = e.clock.as_ref().unwrap().effective_deadline_ms();
        assert!(
            deadline + 5 * D <= t0 + 20 * D,
            "arrived over 5 days overdue"
        );
        assert!(
            e.step(&ev, t0 + 20 * D + H).is_empty(),
            "no re-notify right after the notice"
        );
        assert_eq!(
            keys(&e.step(&ev, deadline + 6 * D)),
            ["m/eu-systemic-risk/renotify/6"]
        );
        assert!(e.step(&ev, deadline + 6 * D + 1).is_empty());
        // Skipped days are one re-notification, not a burst.
        assert_eq!(
            keys(&e.step(&ev, deadline + 9 * D)),
            ["m/eu-systemic-risk/renotify/9"]
        );
        let (dismissed, event) = dismiss(
            e.alert.clone().unwrap(),
            "carol",
            "not placed on the EU market",
            0,
        )
        .unwrap();
        assert_eq!(event.key, "m/eu-systemic-risk/dismissed/1");
        e.alert = Some(dismissed);
        assert!(
            e.step(&ev, deadline + 9 * D).is_empty(),
            "a dismissed clock stays dismissed"
        );
    }

    #[test]
    fn a_dismissed_forecast_reopens_when_the_clock_starts() {
        let t0 = utc_ms(2026, 9, 1, 0, 0, 0);
        let mut e = Engine::new();
        let ev = evidence(vec![], vec![trend(t0, 24, pow10(24), true)]);
        e.step(&ev, t0 + D);
        let (d, _) = dismiss(
            e.alert.clone().unwrap(),
            "dan",
            "the run stops at 5e24",
            t0 + D,
        )
        .unwrap();
        e.alert = Some(d);
        assert!(e.step(&ev, t0 + D + H).is_empty());
        let planned = evidence(
            vec![plan(t0 + 2 * D, 2 * pow10(25))],
            vec![trend(t0, 24, pow10(24), true)],
        );
        let got = e.step(&planned, t0 + 2 * D);
        assert_eq!(keys(&got), ["m/eu-systemic-risk/clock-started/1"]);
        assert_eq!(e.alert.as_ref().unwrap().status, AlertStatus::ClockStarted);
    }

    #[test]
    fn late_evidence_moves_the_deadline_and_sends_the_due_reminder() {
        let t0 = utc_ms(2026, 9, 1, 0, 0, 0);
        let mut e = Engine::new();
        // Day 10: a run with a declared end projects above 1e25: clock (b) at day 10.
        let mut r = trend(t0 + 9 * D, 24, pow10(24), true);
        r.planned_end_ms = Some(t0 + 60 * D);
        r.precision = Some(crate::units::Precision::Bf16);
        let ev1 = evidence(vec![], vec![r.clone()]);
        assert_eq!(
            keys(&e.step(&ev1, t0 + 10 * D)),
            ["m/eu-systemic-risk/clock-started/1"]
        );
        // Day 12: late records of an earlier run show the total passed 1e25 on day 2.
        let mut old = trend(t0, 48, 8 * pow10(24), false);
        old.run_id = "old".into();
        let ev2 = evidence(vec![], vec![r, old]);
        let got = e.step(&ev2, t0 + 12 * D);
        // The deadline moves from day 24 to day 15: the 7-day reminder is due at once.
        assert_eq!(
            keys(&got),
            [
                "m/eu-systemic-risk/deadline-moved/1",
                "m/eu-systemic-risk/reminder-7d/1"
            ]
        );
        let c = e.content(&ev2, t0 + 12 * D).clock.unwrap();
        assert!(
            c.facts[0].starts_with("earlier evidence (c)"),
            "{:?}",
            c.facts
        );
        assert!(c.reason.starts_with("(c)"));
    }

    #[test]
    fn a_straddling_band_says_what_to_declare() {
        let t0 = utc_ms(2026, 9, 1, 0, 0, 0);
        let mut e = Engine::new();
        // 8.8e24 central over 2 days, ended: high 1.1e25 crosses, low 7.0e24 does not.
        let ev = evidence(vec![], vec![trend(t0, 48, 44 * pow10(23), false)]);
        e.step(&ev, t0 + 3 * D);
        let c = e.content(&ev, t0 + 3 * D);
        assert_eq!(c.figure, Figure::Measured);
        assert!(c.straddles);
        assert!(
            c.narrowing[0].contains("precision of run r"),
            "{:?}",
            c.narrowing
        );
        assert!(c.narrowing[1].contains("register the model's plan"));
        assert!(c.text().contains("The band straddles the threshold"));
        assert_eq!(c.measured, "8.8e24 [7.0e24 – 1.1e25] FLOP");
    }

    /// Two significant figures would print 10^25 + 1 FLOP as "1.0e25 FLOP vs greater than
    /// 1.0e25 FLOP", a crossing that reads as none: the figure says which side it is on.
    #[test]
    fn a_figure_that_rounds_to_the_level_shows_the_crossing() {
        let t0 = utc_ms(2026, 9, 1, 0, 0, 0);
        let mut e = Engine::new();
        let run = |total: u128| RunEvidence {
            run_id: "r".into(),
            stage: Stage::Pretrain,
            active: false,
            planned_end_ms: None,
            precision: None,
            buckets: vec![FlopBucket {
                start_ms: t0,
                end_ms: t0 + H,
                flop: FlopTotal::exact(total),
                method: Method::GpmTensor,
            }],
        };
        let exactly = evidence(vec![], vec![run(pow10(25))]);
        assert!(
            e.step(&exactly, t0 + D).is_empty(),
            "10^25 is not above 10^25"
        );
        let above = evidence(vec![], vec![run(pow10(25) + 1)]);
        e.step(&above, t0 + D);
        let c = e.content(&above, t0 + D);
        assert!(
            c.summary
                .contains("measured >1.0e25 FLOP vs eu-systemic-risk (greater than 1.0e25 FLOP)"),
            "{}",
            c.summary
        );
        assert_eq!(c.measured, ">1.0e25 [>1.0e25 – >1.0e25] FLOP");
        let close = evidence(vec![], vec![run(10_004 * pow10(21))]);
        let mut e = Engine::new();
        e.step(&close, t0 + D);
        assert!(
            e.content(&close, t0 + D)
                .summary
                .contains("measured 1.0004e25 FLOP vs"),
        );
    }

    /// A clock started by a plan cites the plan (figure, who declared it, when), not "the
    /// high bound" of some other figure; a later downward revision is a recorded fact that
    /// keeps the clock, and the citation stays the plan that started it.
    #[test]
    fn a_clock_started_by_a_plan_cites_it_and_outlives_its_revision() {
        let t0 = utc_ms(2026, 9, 1, 0, 0, 0);
        let declared = |at: i64, flop: u128| DeclaredPlan {
            declared_by: Some("alice via the model registry".into()),
            ..plan(at, flop)
        };
        let measured = vec![trend(t0, 24, 49 * pow10(23), true)];
        let mut e = Engine::new();
        let first = evidence(vec![declared(t0, 21 * pow10(24))], measured.clone());
        e.step(&first, t0 + D);
        let c = e.content(&first, t0 + D);
        assert_eq!(c.figure, Figure::Plan);
        assert!(
            c.summary.contains("declared plan 2.1e25 FLOP vs"),
            "{}",
            c.summary
        );
        let trigger = &c.notification_must_contain[0];
        assert!(
            trigger.contains("2.1e25 FLOP, the plan that started the clock")
                && trigger.contains("by alice via the model registry")
                && trigger.contains("measured so far 4.9e24"),
            "{trigger}"
        );
        assert!(!trigger.contains("bound of"), "{trigger}");
        // Revised to 5e24 three seconds later: known now, and a fact of the clock.
        let revised = evidence(
            vec![
                declared(t0, 21 * pow10(24)),
                declared(t0 + 3_000, 5 * pow10(24)),
            ],
            measured,
        );
        let events = e.step(&revised, t0 + D + H);
        assert!(events.is_empty(), "no alert event: {:?}", keys(&events));
        let clock = e.clock.clone().unwrap();
        assert_eq!(clock.start.at_ms, t0, "the start stays");
        assert!(matches!(
            clock.facts.last().unwrap().kind,
            FactKind::PlanRevised { at_ms, withdrawn: false, .. } if at_ms == t0 + 3_000
        ));
        let c = e.content(&revised, t0 + D + H);
        assert!(
            c.clock.as_ref().unwrap().facts[0].starts_with("plan revised to 5.0e24 FLOP at"),
            "{:?}",
            c.clock
        );
        assert!(c.notification_must_contain[0].contains("2.1e25 FLOP, the plan"));
        assert!(
            c.text()
                .contains("  the plan: declared 2.1e25 FLOP at 2026-09-01T00:00:00Z")
        );
        // Seen again: nothing new.
        let n = e.clock.as_ref().unwrap().facts.len();
        e.step(&revised, t0 + D + 2 * H);
        assert_eq!(e.clock.as_ref().unwrap().facts.len(), n);
        // A model whose plan was revised before the engine ever saw it: the clock starts at
        // the plan above the level, and the revision is on record at once.
        let mut late = Engine::new();
        late.step(&revised, t0 + D);
        let clock = late.clock.unwrap();
        assert_eq!(
            (clock.start.at_ms, clock.start.reason),
            (t0, StartReason::Plan)
        );
        assert_eq!(clock.facts.len(), 1);
    }

    #[test]
    fn config_reads_from_toml() {
        let c: AlertConfig = toml::from_str("reminder_days = [10, 2]").unwrap();
        assert_eq!(c.reminder_days, vec![10, 2]);
        assert_eq!(c.overdue_renotify_hours, 24);
    }
}
