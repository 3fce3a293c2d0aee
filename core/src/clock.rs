//! The notification clock of AI Act Art. 52(1): notify "without delay and in any event within
//! two weeks after that requirement is met or it becomes known that it will be met".
//!
//! # Rules
//! For one (model, threshold) pair with a notify obligation of `days` days:
//!
//! 1. **Start.** The clock starts at the *earliest* of
//!    - **(a) plan**: the registration time of the first plan (model-wide, or the sum of the
//!      run plans in force) whose declared figure crosses the level;
//!    - **(b) projection**: the evaluation time at which the committed projection (plans and
//!      rates extrapolated to *declared* run ends, see [`crate::projection`]) is first seen
//!      above the level. Extrapolating open-ended runs over the forecast horizon only raises a
//!      forecast, unless [`ComplianceSettings::forecast_starts_clock`] is set;
//!    - **(c) measured**: the **event time** at which the counted cumulative total crossed the
//!      level, found to the millisecond from the buckets, however late they arrived (an event
//!      time after the evaluation time, from a skewed agent clock, is capped at the evaluation
//!      time).
//!
//!    Ties are broken a, c, b. A projection counts as evidence only while neither a plan nor
//!    the measured total crosses (both are part of the projection, which would otherwise
//!    "confirm" them at every evaluation). The deadline is the start plus `days` × 24 h (UTC).
//! 2. **Recorded once.** The start instant, its reason, the deadline and an evidence snapshot
//!    (totals with bounds, the deciding bound, the level and where it comes from, the method
//!    mix, the plans in force, counted and excluded runs) are recorded the first time and never
//!    changed.
//! 3. **Later evidence only adds facts.** Evidence of another kind at or after the start (a
//!    measured crossing after a plan-based start, say) is logged as a *confirmation*.
//! 4. **Late evidence of an earlier moment.** Records can arrive late, so the measured crossing
//!    can turn out to be *before* a recorded projection-based start. The requirement was then
//!    met earlier than the clock says, and the law counts from that moment. Rule: the recorded
//!    start is never moved (it is what was known, and when); an *earlier-evidence* fact is
//!    added with the earlier instant and the deadline it implies, and the **effective** start
//!    and deadline become the earliest known ([`ClockState::effective_deadline_ms`]). The
//!    effective deadline can therefore only move earlier, never later: a mistake in the
//!    conservative direction costs an early notification, in the other a fine.
//! 5. The clock never stops by itself: totals do not decrease, and a plan revised downwards
//!    does not undo what was known. Humans end the *alert* (acknowledge or dismiss, see
//!    [`crate::alert`]); the clock record stays as evidence.
//!
//! # Which compute
//! Only runs whose stage counts under the [`StagePolicy`](crate::stage::StagePolicy) enter any figure: excluded stages
//! never count, neither measured nor planned nor extrapolated. The modifier threshold (a
//! fraction of the base model's compute) applies only to a model registered as a
//! [`ModelRole::Modifier`](crate::evidence::ModelRole::Modifier), never to the original provider; its level is a third of the base's
//! compute when known, else the fallback for a systemic-risk or other base.
//!
//! Everything here is a pure function of its inputs and `now`; all times are `i64` Unix
//! milliseconds, UTC.

mod assess;
#[cfg(test)]
mod tests;

pub use assess::{
    Assessment, ComplianceSettings, EvidenceSnapshot, LevelSource, PlanCrossing, RunSummary,
    ThresholdLevel, applicable_level, assess,
};

use serde::{Deserialize, Serialize};

use crate::units::FlopTotal;
use crate::utc::days_ms;

/// Why the clock started (the a, b, c).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartReason {
    /// (a) A plan registered above the threshold.
    Plan,
    /// (c) The measured total crossed (dated at the event time of the crossing).
    Measured,
    /// (b) The projection above the threshold.
    Projection,
}

impl StartReason {
    /// The letter: a, b or c.
    pub fn letter(self) -> char {
        match self {
            StartReason::Plan => 'a',
            StartReason::Projection => 'b',
            StartReason::Measured => 'c',
        }
    }

    /// A plain-words description for alerts and reports.
    pub fn describe(self) -> &'static str {
        match self {
            StartReason::Plan => {
                "a plan registered above the threshold (it became known that it will be met)"
            }
            StartReason::Projection => {
                "the projection above the threshold (it became known that it will be met)"
            }
            StartReason::Measured => {
                "the measured total crossed the threshold (dated at the event time of the crossing)"
            }
        }
    }
}

/// The recorded start: written once, never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockStart {
    /// The instant the clock started (Unix ms UTC).
    pub at_ms: i64,
    /// Why.
    pub reason: StartReason,
    /// When the engine recorded it (the evaluation time); later than `at_ms` for a plan or a
    /// late measured crossing.
    pub recorded_at_ms: i64,
    /// The evidence then.
    pub evidence: EvidenceSnapshot,
}

/// A fact added after the start. Facts are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockFact {
    /// When the engine recorded it (Unix ms UTC).
    pub recorded_at_ms: i64,
    /// What.
    pub kind: FactKind,
}

/// The kinds of added facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "fact")]
pub enum FactKind {
    /// Evidence of a kind not seen before (or of an earlier moment of a kind already seen),
    /// at or after the effective start: it confirms the clock.
    Confirmation {
        /// The kind of evidence.
        reason: StartReason,
        /// Its instant (event time for a measured crossing).
        at_ms: i64,
        /// Counted measured total when recorded.
        #[serde(with = "crate::units::flop_total_compat")]
        measured: FlopTotal,
    },
    /// Evidence dated before the effective start: the requirement was met (or known) earlier.
    /// The implied deadline becomes the effective deadline.
    EarlierEvidence {
        /// The kind of evidence.
        reason: StartReason,
        /// Its instant.
        at_ms: i64,
        /// `at_ms` plus the notification period.
        implied_deadline_ms: i64,
        /// Counted measured total when recorded.
        #[serde(with = "crate::units::flop_total_compat")]
        measured: FlopTotal,
    },
    /// The plans in force were revised (or withdrawn) below the level after a plan had
    /// crossed it. The clock is kept: that a plan above the level was declared is what made
    /// it known that the threshold would be met, and a later revision cannot undo that
    /// knowledge. Whether a notification is still owed is for a person to decide (notify,
    /// or dismiss with the reason); the fact tells them.
    PlanRevised {
        /// When the revision became known (the latest registration among the plans in
        /// force).
        at_ms: i64,
        /// The declared total after it (zero when withdrawn).
        #[serde(with = "crate::units::flop_total_compat")]
        declared: FlopTotal,
        /// Whether nothing is declared any more.
        withdrawn: bool,
        /// The plans in force after it.
        plan_ids: Vec<String>,
    },
    /// The threshold's rule changed (new version) while the clock was running. The clock is
    /// kept: what was known under the old rule stays on record.
    ThresholdChanged {
        /// Version at the previous evaluation.
        from_version: u32,
        /// Version now.
        to_version: u32,
    },
}

/// The clock of one (model, threshold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// Model name.
    pub model: String,
    /// Threshold id.
    pub threshold_id: String,
    /// Threshold version at the start.
    pub threshold_version: u32,
    /// Days allowed to notify, at the start.
    pub days: u32,
    /// The recorded start.
    pub start: ClockStart,
    /// The deadline implied by the recorded start (`start + days`), recorded with it.
    pub deadline_ms: i64,
    /// Facts added since, in order.
    pub facts: Vec<ClockFact>,
}

impl ClockState {
    /// The earliest known start: the recorded start or earlier evidence, with its reason.
    pub fn effective_start(&self) -> (i64, StartReason) {
        self.facts
            .iter()
            .filter_map(|f| match f.kind {
                FactKind::EarlierEvidence { reason, at_ms, .. } => Some((at_ms, reason)),
                _ => None,
            })
            .fold((self.start.at_ms, self.start.reason), |best, c| {
                if c.0 < best.0 { c } else { best }
            })
    }

    /// The deadline in force: the earliest implied by any known start. Never later than
    /// [`ClockState::deadline_ms`].
    pub fn effective_deadline_ms(&self) -> i64 {
        self.effective_start()
            .0
            .saturating_add(days_ms(self.days))
            .min(self.deadline_ms)
    }

    /// Whether the deadline in force has passed at `now_ms`.
    pub fn is_overdue(&self, now_ms: i64) -> bool {
        now_ms >= self.effective_deadline_ms()
    }

    /// The threshold version last seen.
    fn last_version(&self) -> u32 {
        self.facts
            .iter()
            .rev()
            .find_map(|f| match f.kind {
                FactKind::ThresholdChanged { to_version, .. } => Some(to_version),
                _ => None,
            })
            .unwrap_or(self.threshold_version)
    }

    /// The earliest instant recorded for a kind of evidence, if any.
    fn earliest_of(&self, reason: StartReason) -> Option<i64> {
        let start = (self.start.reason == reason).then_some(self.start.at_ms);
        self.facts
            .iter()
            .filter_map(|f| match f.kind {
                FactKind::Confirmation {
                    reason: r, at_ms, ..
                }
                | FactKind::EarlierEvidence {
                    reason: r, at_ms, ..
                } if r == reason => Some(at_ms),
                _ => None,
            })
            .chain(start)
            .min()
    }
}

/// What a clock evaluation reports, for the audit log and the alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum ClockEvent {
    /// The clock started.
    Started {
        /// Model.
        model: String,
        /// Threshold id.
        threshold_id: String,
        /// The recorded start (boxed: the evidence snapshot is large).
        start: Box<ClockStart>,
        /// Its deadline.
        deadline_ms: i64,
    },
    /// A fact was added.
    FactAdded {
        /// Model.
        model: String,
        /// Threshold id.
        threshold_id: String,
        /// 1-based position of the fact in [`ClockState::facts`].
        index: usize,
        /// The fact.
        fact: ClockFact,
        /// The deadline in force after it.
        effective_deadline_ms: i64,
    },
}

impl ClockEvent {
    /// A stable idempotency key: `{model}/{threshold}/clock-started/1` or
    /// `{model}/{threshold}/clock-fact/{index}`.
    pub fn key(&self) -> String {
        match self {
            ClockEvent::Started {
                model,
                threshold_id,
                ..
            } => format!("{model}/{threshold_id}/clock-started/1"),
            ClockEvent::FactAdded {
                model,
                threshold_id,
                index,
                ..
            } => format!("{model}/{threshold_id}/clock-fact/{index}"),
        }
    }
}

/// The candidates for a start in this assessment, earliest first (ties a, c, b).
fn candidates(a: &Assessment, now_ms: i64) -> Vec<(i64, StartReason)> {
    let mut c = Vec::new();
    if let Some(p) = &a.plan_crossing {
        c.push((p.registered_at_ms.min(now_ms), StartReason::Plan));
    }
    if let Some(t) = a.measured_crossing_ms {
        c.push((t.min(now_ms), StartReason::Measured));
    }
    // A projection tells something only while neither a plan nor the measured total does:
    // both enter the projection, so it would otherwise "confirm" every such start, later.
    let explained = !c.is_empty();
    if !explained && (a.committed_crossed || (a.forecast_starts_clock && a.projected_crossed)) {
        c.push((now_ms, StartReason::Projection));
    }
    c.sort();
    c
}

/// A [`FactKind::PlanRevised`] to add, if a plan started or confirmed this clock and the
/// plans in force now declare less than the level (or nothing), as of a registration not
/// recorded yet.
fn plan_revision(state: &ClockState, a: &Assessment) -> Option<FactKind> {
    let crossed_at = state.earliest_of(StartReason::Plan)?;
    let declared = a.projection.declared;
    if declared.is_some_and(|d| a.crosses(d.get(a.bound))) {
        return None;
    }
    let at_ms = a.plans_in_force.iter().map(|p| p.registered_at_ms).max()?;
    let recorded = state
        .facts
        .iter()
        .any(|f| matches!(f.kind, FactKind::PlanRevised { at_ms: t, .. } if t == at_ms));
    (at_ms > crossed_at && !recorded).then(|| FactKind::PlanRevised {
        at_ms,
        declared: declared.unwrap_or(FlopTotal::ZERO),
        withdrawn: declared.is_none(),
        plan_ids: a.plans_in_force.iter().map(|p| p.plan_id.clone()).collect(),
    })
}

/// Advances the clock of one (model, threshold) at `now_ms`.
///
/// `state` is the previous result for the same model and threshold (`None` before the clock
/// started). Returns the new state and what happened. Evaluating again with the same inputs
/// changes nothing and reports nothing, so the caller may evaluate as often as it likes.
/// Thresholds without a notify obligation have no clock: the state is returned unchanged.
pub fn evaluate(
    state: Option<ClockState>,
    a: &Assessment,
    now_ms: i64,
) -> (Option<ClockState>, Vec<ClockEvent>) {
    let Some(days) = a.threshold.notify_days() else {
        return (state, Vec::new());
    };
    let cands = candidates(a, now_ms);
    let mut events = Vec::new();
    let mut state = match state {
        Some(s) => s,
        None => {
            let Some(&(at_ms, reason)) = cands.first() else {
                return (None, events);
            };
            let start = ClockStart {
                at_ms,
                reason,
                recorded_at_ms: now_ms,
                evidence: a.snapshot(),
            };
            let deadline_ms = at_ms.saturating_add(days_ms(days));
            events.push(ClockEvent::Started {
                model: a.model.clone(),
                threshold_id: a.threshold.id.clone(),
                start: Box::new(start.clone()),
                deadline_ms,
            });
            ClockState {
                model: a.model.clone(),
                threshold_id: a.threshold.id.clone(),
                threshold_version: a.threshold.version,
                days,
                start,
                deadline_ms,
                facts: Vec::new(),
            }
        }
    };
    debug_assert_eq!(
        (&state.model, &state.threshold_id),
        (&a.model, &a.threshold.id)
    );
    let mut add = |state: &mut ClockState, kind: FactKind| {
        state.facts.push(ClockFact {
            recorded_at_ms: now_ms,
            kind,
        });
        events.push(ClockEvent::FactAdded {
            model: state.model.clone(),
            threshold_id: state.threshold_id.clone(),
            index: state.facts.len(),
            fact: state.facts[state.facts.len() - 1].clone(),
            effective_deadline_ms: state.effective_deadline_ms(),
        });
    };
    let last = state.last_version();
    if a.threshold.version != last {
        add(
            &mut state,
            FactKind::ThresholdChanged {
                from_version: last,
                to_version: a.threshold.version,
            },
        );
    }
    if let Some(kind) = plan_revision(&state, a) {
        add(&mut state, kind);
    }
    let measured = a.projection.measured;
    for (at_ms, reason) in cands {
        if state.earliest_of(reason).is_some_and(|t| t <= at_ms) {
            continue; // nothing new for this kind
        }
        let kind = if at_ms < state.effective_start().0 {
            FactKind::EarlierEvidence {
                reason,
                at_ms,
                implied_deadline_ms: at_ms.saturating_add(days_ms(state.days)),
                measured,
            }
        } else {
            FactKind::Confirmation {
                reason,
                at_ms,
                measured,
            }
        };
        add(&mut state, kind);
    }
    (Some(state), events)
}
