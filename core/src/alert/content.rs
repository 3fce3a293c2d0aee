//! What an alert says: the figures, the clock and the words a compliance officer reads,
//! built from an alert, its assessment and its clock ([`content`]), and their plain-text
//! rendering for the log, webhooks and e-mail ([`AlertContent::text`]).

use serde::{Deserialize, Serialize};

use super::{Acknowledgement, Alert, AlertStatus, Dismissal};
use crate::clock::{Assessment, ClockState, FactKind, LevelSource, StartReason};
use crate::format::{band_near, flop, flop_near, time_left};
use crate::threshold::Comparison;
use crate::units::FlopTotal;
use crate::utc::format_utc;

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
