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
//! Only runs whose stage counts under the [`StagePolicy`] enter any figure: excluded stages
//! never count, neither measured nor planned nor extrapolated. The modifier threshold (a
//! fraction of the base model's compute) applies only to a model registered as a
//! [`ModelRole::Modifier`], never to the original provider; its level is a third of the base's
//! compute when known, else the fallback for a systemic-risk or other base.
//!
//! Everything here is a pure function of its inputs and `now`; all times are `i64` Unix
//! milliseconds, UTC.

use serde::{Deserialize, Serialize};

use crate::evidence::{DeclaredPlan, MethodShare, ModelEvidence, ModelRole};
use crate::projection::{self, ExcludedRun, Projection, ProjectionConfig};
use crate::stage::{Stage, StagePolicy};
use crate::threshold::Threshold;
use crate::units::{Bound, FlopTotal, Precision};
use crate::utc::days_ms;

/// Engine settings that decide what counts and how (part of the collector config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplianceSettings {
    /// The bound that decides a crossing. Default `high`.
    pub decision_bound: Bound,
    /// Which stages count.
    pub stage_policy: StagePolicy,
    /// Rate window and forecast horizon.
    pub projection: ProjectionConfig,
    /// Whether extrapolating open-ended runs over the horizon starts the clock (reason b).
    /// Default `false`: such a trend is raised as a forecast alert for a human to confirm
    /// (by declaring the plan or end, which starts the clock) or dismiss.
    pub forecast_starts_clock: bool,
}

impl Default for ComplianceSettings {
    fn default() -> Self {
        ComplianceSettings {
            decision_bound: Bound::High,
            stage_policy: StagePolicy::default(),
            projection: ProjectionConfig::default(),
            forecast_starts_clock: false,
        }
    }
}

/// Where a threshold's level for this model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LevelSource {
    /// A fixed level.
    Absolute,
    /// A fraction of the base model's known compute.
    BaseCompute {
        /// Base model.
        base_model: String,
        /// Its compute.
        #[serde(with = "crate::units::u128_compat")]
        base_flop: u128,
        /// Where that figure comes from.
        source: Option<String>,
    },
    /// The fallback for an unknown-compute systemic-risk base (the guidelines' 10^25 / 3).
    FallbackSystemic {
        /// Base model.
        base_model: String,
        /// Whether the base's status was declared (`model set --base-systemic-risk`).
        #[serde(default)]
        declared: bool,
    },
    /// The fallback for an unknown-compute base that is not systemic-risk (10^23 / 3): also
    /// the one that applies while the base's status is not declared, being the lower level.
    FallbackOther {
        /// Base model.
        base_model: String,
        /// Whether the base was declared not to be systemic-risk (rather than undeclared).
        #[serde(default)]
        declared: bool,
    },
}

/// A threshold's level for one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdLevel {
    /// The level in FLOP.
    pub flop: u128,
    /// Where it comes from.
    pub source: LevelSource,
}

/// The level of `threshold` for a model of `role`, or `None` when it does not apply (a
/// relative threshold for an original provider).
pub fn applicable_level(threshold: &Threshold, role: &ModelRole) -> Option<ThresholdLevel> {
    if !threshold.is_relative() {
        return Some(ThresholdLevel {
            flop: threshold.level_flop(None, false),
            source: LevelSource::Absolute,
        });
    }
    let ModelRole::Modifier {
        base_model,
        base_compute,
        base_compute_source,
        base_systemic,
        base_systemic_declared,
    } = role
    else {
        return None;
    };
    let source = match (base_compute, base_systemic) {
        (Some(b), _) => LevelSource::BaseCompute {
            base_model: base_model.clone(),
            base_flop: *b,
            source: base_compute_source.clone(),
        },
        (None, true) => LevelSource::FallbackSystemic {
            base_model: base_model.clone(),
            declared: *base_systemic_declared,
        },
        (None, false) => LevelSource::FallbackOther {
            base_model: base_model.clone(),
            declared: *base_systemic_declared,
        },
    };
    Some(ThresholdLevel {
        flop: threshold.level_flop(*base_compute, *base_systemic),
        source,
    })
}

/// The first instant at which declared plans crossed the level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCrossing {
    /// Registration time of the plan that made the declared total cross.
    pub registered_at_ms: i64,
    /// The plans in force then.
    pub plan_ids: Vec<String>,
    /// The declared total then.
    pub declared: FlopTotal,
    /// The plans in force then, with who declared them: what a clock started by a plan
    /// cites.
    #[serde(default)]
    pub plans: Vec<DeclaredPlan>,
}

/// Everything the clock and the alerts need to know about one (model, threshold) at `now`:
/// the inputs of [`evaluate`] and [`crate::alert::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    /// Model name.
    pub model: String,
    /// Its role.
    pub role: ModelRole,
    /// The threshold.
    pub threshold: Threshold,
    /// Its level for this model.
    pub level: ThresholdLevel,
    /// The deciding bound.
    pub bound: Bound,
    /// Evaluation time (Unix ms UTC).
    pub evaluated_at_ms: i64,
    /// Whether open-ended extrapolation may start the clock.
    pub forecast_starts_clock: bool,
    /// The projection.
    pub projection: Projection,
    /// Event time at which the counted measured total crossed (deciding bound).
    pub measured_crossing_ms: Option<i64>,
    /// When declared plans first crossed.
    pub plan_crossing: Option<PlanCrossing>,
    /// The committed projection crosses (deciding bound).
    pub committed_crossed: bool,
    /// The full projection, open-ended runs over the horizon included, crosses.
    pub projected_crossed: bool,
    /// When the extrapolated trajectory crosses, if it does and the measured total has not.
    pub projected_crossing_ms: Option<i64>,
    /// Counted FLOP per method.
    pub method_mix: Vec<MethodShare>,
    /// The plans in force at evaluation time.
    pub plans_in_force: Vec<DeclaredPlan>,
}

/// Assesses one model against one threshold at `now_ms`. `None` when the threshold does not
/// apply to this model (the modifier rule for an original provider).
pub fn assess(
    evidence: &ModelEvidence,
    threshold: &Threshold,
    settings: &ComplianceSettings,
    now_ms: i64,
) -> Option<Assessment> {
    let level = applicable_level(threshold, &evidence.role)?;
    let bound = settings.decision_bound;
    let policy = &settings.stage_policy;
    let crossed = |v: u128| threshold.crossed(v, level.flop);
    let projection = projection::project(evidence, policy, &settings.projection, now_ms);

    let mut instants: Vec<i64> = evidence
        .plans
        .iter()
        .map(|p| p.registered_at_ms)
        .filter(|t| *t <= now_ms)
        .collect();
    instants.sort_unstable();
    instants.dedup();
    let plan_crossing = instants.into_iter().find_map(|at| {
        let declared = evidence.declared_at(policy, at)?;
        crossed(declared.get(bound)).then(|| {
            let (model, runs) = evidence.plans_in_force(policy, at);
            let plans: Vec<DeclaredPlan> = model.into_iter().chain(runs).cloned().collect();
            PlanCrossing {
                registered_at_ms: at,
                plan_ids: plans.iter().map(|p| p.plan_id.clone()).collect(),
                declared,
                plans,
            }
        })
    });
    let (model_plan, run_plans) = evidence.plans_in_force(policy, now_ms);
    Some(Assessment {
        model: evidence.model.clone(),
        role: evidence.role.clone(),
        threshold: threshold.clone(),
        bound,
        evaluated_at_ms: now_ms,
        forecast_starts_clock: settings.forecast_starts_clock,
        measured_crossing_ms: evidence.measured_crossing(policy, bound, crossed),
        plan_crossing,
        committed_crossed: crossed(projection.committed.get(bound)),
        projected_crossed: crossed(projection.projected.get(bound)),
        projected_crossing_ms: projection.crossing_ms(bound, crossed),
        method_mix: evidence.method_mix(policy),
        plans_in_force: model_plan.into_iter().chain(run_plans).cloned().collect(),
        projection,
        level,
    })
}

/// One counted run as recorded in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Stage (`None` for a run known only from its plan).
    pub stage: Option<Stage>,
    /// Active.
    pub active: bool,
    /// Declared precision.
    pub precision: Option<Precision>,
    /// Measured.
    pub measured: FlopTotal,
    /// Projected.
    pub projected: FlopTotal,
}

/// The evidence behind a clock start, frozen when it is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceSnapshot {
    /// When taken (Unix ms UTC).
    pub taken_at_ms: i64,
    /// Threshold id.
    pub threshold_id: String,
    /// Threshold version applied.
    pub threshold_version: u32,
    /// Legal basis applied.
    pub legal_basis: String,
    /// The level and its source.
    pub level: ThresholdLevel,
    /// The deciding bound.
    pub bound: Bound,
    /// Counted measured total.
    pub measured: FlopTotal,
    /// Measured crossing (event time), if any.
    pub measured_crossing_ms: Option<i64>,
    /// Plan crossing, if any.
    pub plan_crossing: Option<PlanCrossing>,
    /// Everything declared.
    pub declared: Option<FlopTotal>,
    /// Committed projection.
    pub committed: FlopTotal,
    /// Full projection.
    pub projected: FlopTotal,
    /// Projected crossing instant, if any.
    pub projected_crossing_ms: Option<i64>,
    /// Counted FLOP per method.
    pub method_mix: Vec<MethodShare>,
    /// Plans in force.
    pub plans: Vec<DeclaredPlan>,
    /// Counted runs.
    pub counted_runs: Vec<RunSummary>,
    /// Excluded runs (shown, not counted).
    pub excluded_runs: Vec<ExcludedRun>,
}

impl Assessment {
    /// The evidence as it stands, for a clock record.
    pub fn snapshot(&self) -> EvidenceSnapshot {
        let p = &self.projection;
        EvidenceSnapshot {
            taken_at_ms: self.evaluated_at_ms,
            threshold_id: self.threshold.id.clone(),
            threshold_version: self.threshold.version,
            legal_basis: self.threshold.legal_basis.clone(),
            level: self.level.clone(),
            bound: self.bound,
            measured: p.measured,
            measured_crossing_ms: self.measured_crossing_ms,
            plan_crossing: self.plan_crossing.clone(),
            declared: p.declared,
            committed: p.committed,
            projected: p.projected,
            projected_crossing_ms: self.projected_crossing_ms,
            method_mix: self.method_mix.clone(),
            plans: self.plans_in_force.clone(),
            counted_runs: p
                .runs
                .iter()
                .map(|r| RunSummary {
                    run_id: r.run_id.clone(),
                    stage: r.stage.clone(),
                    active: r.active,
                    precision: r.precision,
                    measured: r.measured,
                    projected: r.projected,
                })
                .collect(),
            excluded_runs: p.excluded.clone(),
        }
    }

    /// Whether a threshold test on `value` crosses this assessment's level.
    pub fn crosses(&self, value: u128) -> bool {
        self.threshold.crossed(value, self.level.flop)
    }
}

/// Why the clock started (the issue's a, b, c).
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
    /// The issue's letter: a, b or c.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declaration::PlanFigures;
    use crate::evidence::{FlopBucket, RunEvidence};
    use crate::threshold::{defaults, find, pow10};
    use crate::units::Method;
    use crate::utc::{MS_PER_DAY, MS_PER_HOUR, utc_ms};
    use proptest::prelude::*;

    const D: i64 = MS_PER_DAY;
    const H: i64 = MS_PER_HOUR;

    fn t0() -> i64 {
        utc_ms(2026, 9, 1, 0, 0, 0)
    }

    /// A run doing `total` (central; low 0.8×, high 1.25× unless given) evenly over hourly
    /// buckets from `start` for `hours`.
    fn run_band(id: &str, stage: Stage, start: i64, hours: i64, band: FlopTotal) -> RunEvidence {
        let h = hours as u128;
        RunEvidence {
            run_id: id.into(),
            stage,
            active: false,
            planned_end_ms: None,
            precision: None,
            buckets: (0..hours)
                .map(|i| FlopBucket {
                    start_ms: start + i * H,
                    end_ms: start + (i + 1) * H,
                    flop: FlopTotal {
                        low: band.low / h,
                        central: band.central / h,
                        high: band.high / h,
                    },
                    method: Method::GpmTensor,
                })
                .collect(),
        }
    }

    fn run(id: &str, start: i64, hours: i64, total: u128) -> RunEvidence {
        run_band(id, Stage::Pretrain, start, hours, FlopTotal::exact(total))
    }

    fn plan(id: &str, at: i64, flop: u128) -> DeclaredPlan {
        DeclaredPlan {
            plan_id: id.into(),
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

    fn model(role: ModelRole, plans: Vec<DeclaredPlan>, runs: Vec<RunEvidence>) -> ModelEvidence {
        ModelEvidence {
            model: "m".into(),
            role,
            plans,
            runs,
        }
    }

    fn eu() -> Threshold {
        find(&defaults(), "eu-systemic-risk").unwrap().clone()
    }

    fn modifier_threshold() -> Threshold {
        find(&defaults(), "eu-modifier").unwrap().clone()
    }

    fn settings(bound: Bound) -> ComplianceSettings {
        ComplianceSettings {
            decision_bound: bound,
            ..ComplianceSettings::default()
        }
    }

    /// Runs the clock over successive (now, evidence) steps.
    fn run_clock(
        threshold: &Threshold,
        settings: &ComplianceSettings,
        steps: &[(i64, ModelEvidence)],
    ) -> (Option<ClockState>, Vec<ClockEvent>) {
        let mut state = None;
        let mut all = Vec::new();
        for (now, ev) in steps {
            let Some(a) = assess(ev, threshold, settings, *now) else {
                return (None, all);
            };
            let (s, e) = evaluate(state, &a, *now);
            state = s;
            all.extend(e);
        }
        (state, all)
    }

    struct Case {
        name: &'static str,
        threshold: Threshold,
        settings: ComplianceSettings,
        steps: Vec<(i64, ModelEvidence)>,
        /// Expected recorded start (instant, reason), or none.
        start: Option<(i64, StartReason)>,
        /// Expected effective deadline, when a start is expected.
        deadline: Option<i64>,
        /// Overdue at the last step's `now`.
        overdue: bool,
        /// Expected fact kinds, in order.
        facts: Vec<&'static str>,
    }

    fn fact_name(f: &ClockFact) -> &'static str {
        match f.kind {
            FactKind::Confirmation { .. } => "confirmation",
            FactKind::EarlierEvidence { .. } => "earlier",
            FactKind::ThresholdChanged { .. } => "threshold-changed",
            FactKind::PlanRevised { .. } => "plan-revised",
        }
    }

    fn cases() -> Vec<Case> {
        let t0 = t0();
        let p = Stage::Pretrain;
        let e25 = pow10(25);
        let base = |name, steps, start, deadline, overdue, facts| Case {
            name,
            threshold: eu(),
            settings: ComplianceSettings::default(),
            steps,
            start,
            deadline,
            overdue,
            facts,
        };
        let provider = ModelRole::Provider;
        let modifier = |base_compute, base_systemic| ModelRole::Modifier {
            base_model: "base".into(),
            base_compute,
            base_compute_source: Some("model card".into()),
            base_systemic,
            base_systemic_declared: true,
        };
        // Bands for the straddle cases: high crosses, central does not.
        let straddle = FlopTotal {
            low: 8 * pow10(24),
            central: 95 * pow10(23),
            high: 12 * pow10(24),
        };
        vec![
            base(
                "exactly 1e25 does not cross",
                vec![(
                    t0 + 10 * D,
                    model(
                        provider.clone(),
                        vec![plan("p", t0, e25)],
                        vec![run("r", t0, 100, e25)],
                    ),
                )],
                None,
                None,
                false,
                vec![],
            ),
            base(
                "one FLOP more crosses, at the last millisecond of the run",
                vec![(
                    t0 + 10 * D,
                    model(provider.clone(), vec![], vec![run("r", t0, 1, e25 + 1)]),
                )],
                Some((t0 + H, StartReason::Measured)),
                Some(t0 + H + 14 * D),
                false,
                vec![],
            ),
            base(
                "a plan-based start beats a later crossing",
                vec![
                    (
                        t0 + H,
                        model(
                            provider.clone(),
                            vec![plan("p", t0, 21 * pow10(24))],
                            vec![],
                        ),
                    ),
                    // 2e25 over 200 h: crosses 1e25 after 100 h (+1 ms, strict).
                    (
                        t0 + 10 * D,
                        model(
                            provider.clone(),
                            vec![plan("p", t0, 21 * pow10(24))],
                            vec![run("r", t0, 200, 2 * e25)],
                        ),
                    ),
                ],
                Some((t0, StartReason::Plan)),
                Some(t0 + 14 * D),
                false,
                // The measured crossing confirms.
                vec!["confirmation"],
            ),
            base(
                "a late-arriving crossing is dated at its event time and overdue on arrival",
                vec![
                    (t0 + 2 * D, model(provider.clone(), vec![], vec![])),
                    // Records of days 0–10 arrive on day 25: crossing at 100 h.
                    (
                        t0 + 25 * D,
                        model(
                            provider.clone(),
                            vec![],
                            vec![run("r", t0, 240, 24 * pow10(24))],
                        ),
                    ),
                ],
                Some((t0 + 100 * H + 1, StartReason::Measured)),
                Some(t0 + 100 * H + 1 + 14 * D),
                true,
                vec![],
            ),
            base(
                "late data reveals a crossing before a projection-based start",
                vec![
                    // Day 10: a run with a declared end projects above: start (b) at day 10.
                    (t0 + 10 * D, {
                        let mut r = run("r", t0 + 9 * D, 24, pow10(24));
                        r.active = true;
                        r.planned_end_ms = Some(t0 + 60 * D);
                        model(provider.clone(), vec![], vec![r])
                    }),
                    // Day 12: another run's late records show the total crossed on day 8.
                    (t0 + 12 * D, {
                        let mut r = run("r", t0 + 9 * D, 24, pow10(24));
                        r.active = true;
                        r.planned_end_ms = Some(t0 + 60 * D);
                        model(
                            provider.clone(),
                            vec![],
                            vec![r, run("old", t0, 192, 192 * 6 * pow10(22))],
                        )
                    }),
                ],
                Some((t0 + 10 * D, StartReason::Projection)),
                // "old" does 6e22 per hour: 1e25 is passed 40 min into hour 167.
                Some(t0 + 166 * H + 2 * H / 3 + 1 + 14 * D),
                false,
                vec!["earlier"],
            ),
            Case {
                settings: settings(Bound::High),
                ..base(
                    "high crosses, central does not: the high policy starts the clock",
                    vec![(
                        t0 + 10 * D,
                        model(
                            provider.clone(),
                            vec![],
                            vec![run_band("r", p.clone(), t0, 10, straddle)],
                        ),
                    )],
                    Some((t0 + 10 * H * 10 / 12 + 1, StartReason::Measured)),
                    Some(t0 + 10 * H * 10 / 12 + 1 + 14 * D),
                    false,
                    vec![],
                )
            },
            Case {
                settings: settings(Bound::Central),
                ..base(
                    "high crosses, central does not: the central policy does not",
                    vec![(
                        t0 + 10 * D,
                        model(
                            provider.clone(),
                            vec![],
                            vec![run_band("r", p.clone(), t0, 10, straddle)],
                        ),
                    )],
                    None,
                    None,
                    false,
                    vec![],
                )
            },
            base(
                "excluded stages never count",
                vec![(
                    t0 + 10 * D,
                    model(
                        provider.clone(),
                        vec![DeclaredPlan {
                            run_id: Some("ev".into()),
                            ..plan("pe", t0, 5 * e25)
                        }],
                        vec![
                            run("r", t0, 10, 9 * pow10(24)),
                            run_band("ev", Stage::Eval, t0, 10, FlopTotal::exact(5 * e25)),
                            run_band("rm", Stage::RewardModel, t0, 10, FlopTotal::exact(5 * e25)),
                        ],
                    ),
                )],
                None,
                None,
                false,
                vec![],
            ),
            base(
                "two runs of one model sum across the threshold",
                vec![(
                    t0 + 10 * D,
                    // 6e24 each over 10 h in parallel: the sum passes 1e25 at 10·10/12 h.
                    model(
                        provider.clone(),
                        vec![],
                        vec![
                            run("a", t0, 10, 6 * pow10(24)),
                            run("b", t0, 10, 6 * pow10(24)),
                        ],
                    ),
                )],
                Some((t0 + 10 * H * 10 / 12 + 1, StartReason::Measured)),
                Some(t0 + 10 * H * 10 / 12 + 1 + 14 * D),
                false,
                vec![],
            ),
            Case {
                threshold: modifier_threshold(),
                ..base(
                    "modifier with a known base: a third of 3e24 is 1e24",
                    vec![(
                        t0 + 10 * D,
                        model(
                            modifier(Some(3 * pow10(24)), true),
                            vec![],
                            vec![run("ft", t0, 10, 2 * pow10(24))],
                        ),
                    )],
                    Some((t0 + 5 * H + 1, StartReason::Measured)),
                    Some(t0 + 5 * H + 1 + 14 * D),
                    false,
                    vec![],
                )
            },
            Case {
                threshold: modifier_threshold(),
                ..base(
                    "modifier with an unknown systemic base: 3.33e24 fallback not crossed by 3e24",
                    vec![(
                        t0 + 10 * D,
                        model(
                            modifier(None, true),
                            vec![],
                            vec![run("ft", t0, 10, 3 * pow10(24))],
                        ),
                    )],
                    None,
                    None,
                    false,
                    vec![],
                )
            },
            Case {
                threshold: modifier_threshold(),
                ..base(
                    "modifier with an unknown other base: 3.33e22 fallback crossed by 3e24",
                    vec![(
                        t0 + 10 * D,
                        model(
                            modifier(None, false),
                            vec![],
                            vec![run("ft", t0, 100, 3 * pow10(24))],
                        ),
                    )],
                    // 3e22 per hour: passes 3.33…e22 during hour 2.
                    Some((t0 + H + H / 9 + 1, StartReason::Measured)),
                    Some(t0 + H + H / 9 + 1 + 14 * D),
                    false,
                    vec![],
                )
            },
            Case {
                threshold: modifier_threshold(),
                ..base(
                    "the modifier rule never applies to the original provider",
                    vec![(
                        t0 + 10 * D,
                        model(
                            provider.clone(),
                            vec![],
                            vec![run("r", t0, 10, 9 * pow10(24))],
                        ),
                    )],
                    None,
                    None,
                    false,
                    vec![],
                )
            },
            base(
                "an open-ended trend is a forecast, not a clock",
                vec![(t0 + D, {
                    let mut r = run("r", t0, 24, 24 * pow10(23)); // 2.4e24 per day
                    r.active = true;
                    model(provider.clone(), vec![], vec![r])
                })],
                None,
                None,
                false,
                vec![],
            ),
            Case {
                settings: ComplianceSettings {
                    forecast_starts_clock: true,
                    ..ComplianceSettings::default()
                },
                ..base(
                    "an open-ended trend starts the clock when configured to",
                    vec![(t0 + D, {
                        let mut r = run("r", t0, 24, 24 * pow10(23));
                        r.active = true;
                        model(provider.clone(), vec![], vec![r])
                    })],
                    Some((t0 + D, StartReason::Projection)),
                    Some(t0 + 15 * D),
                    false,
                    vec![],
                )
            },
            base(
                "6·N·D from parameters and tokens",
                vec![(
                    t0 + D,
                    // 6 × 4e11 × 5e12 = 1.2e25
                    model(
                        provider.clone(),
                        vec![DeclaredPlan {
                            figures: PlanFigures {
                                planned_flop: None,
                                params: Some(4 * pow10(11)),
                                tokens: Some(5 * pow10(12)),
                            },
                            ..plan("nd", t0, 0)
                        }],
                        vec![],
                    ),
                )],
                Some((t0, StartReason::Plan)),
                Some(t0 + 14 * D),
                false,
                vec![],
            ),
        ]
    }

    #[test]
    fn clock_semantics() {
        for case in cases() {
            let (state, events) = run_clock(&case.threshold, &case.settings, &case.steps);
            let now = case.steps.last().unwrap().0;
            let name = case.name;
            match (case.start, &state) {
                (None, None) => assert!(events.is_empty(), "{name}"),
                (Some((at, reason)), Some(s)) => {
                    assert_eq!((s.start.at_ms, s.start.reason), (at, reason), "{name}");
                    assert_eq!(Some(s.effective_deadline_ms()), case.deadline, "{name}");
                    assert_eq!(s.is_overdue(now), case.overdue, "{name}");
                    let facts: Vec<_> = s.facts.iter().map(fact_name).collect();
                    assert_eq!(facts, case.facts, "{name}");
                    assert_eq!(events.len(), 1 + s.facts.len(), "{name}");
                    assert!(matches!(events[0], ClockEvent::Started { .. }), "{name}");
                }
                (want, got) => panic!("{name}: want start {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_record_is_kept_and_evaluation_is_idempotent() {
        let t0 = t0();
        let ev = model(
            ModelRole::Provider,
            vec![plan("p", t0, 21 * pow10(24))],
            vec![run("r", t0, 240, 24 * pow10(24))],
        );
        let a = assess(&ev, &eu(), &ComplianceSettings::default(), t0 + 30 * D).unwrap();
        let (s, e) = evaluate(None, &a, t0 + 30 * D);
        let s = s.unwrap();
        assert_eq!(s.start.reason, StartReason::Plan);
        assert_eq!(s.start.recorded_at_ms, t0 + 30 * D);
        let snap = &s.start.evidence;
        assert_eq!(snap.measured.central, 24 * pow10(24));
        assert_eq!(snap.bound, Bound::High);
        assert_eq!(snap.method_mix.len(), 1);
        assert_eq!(snap.plans[0].plan_id, "p");
        assert_eq!(snap.level.flop, pow10(25));
        assert_eq!(e[0].key(), "m/eu-systemic-risk/clock-started/1");
        assert_eq!(e[1].key(), "m/eu-systemic-risk/clock-fact/1");
        // Same inputs again: nothing new.
        let (s2, e2) = evaluate(Some(s.clone()), &a, t0 + 31 * D);
        assert_eq!(s2.as_ref(), Some(&s));
        assert!(e2.is_empty());
        // A threshold change is recorded as a fact; the start stays.
        let mut changed = a.clone();
        changed.threshold.version = 2;
        let (s3, e3) = evaluate(Some(s.clone()), &changed, t0 + 32 * D);
        let s3 = s3.unwrap();
        assert_eq!(s3.start, s.start);
        assert!(matches!(
            s3.facts.last().unwrap().kind,
            FactKind::ThresholdChanged {
                from_version: 1,
                to_version: 2
            }
        ));
        assert_eq!(e3.len(), 1);
        // Informational thresholds have no clock.
        let ca = find(&defaults(), "us-ca-sb53").unwrap().clone();
        let a = assess(&ev, &ca, &ComplianceSettings::default(), t0).unwrap();
        assert_eq!(evaluate(None, &a, t0), (None, vec![]));
    }

    #[test]
    fn settings_read_from_toml() {
        let s: ComplianceSettings = toml::from_str(
            "decision_bound = \"central\"\nforecast_starts_clock = true\n[projection]\nforecast_horizon_days = 7",
        )
        .unwrap();
        assert_eq!(s.decision_bound, Bound::Central);
        assert_eq!(s.projection.forecast_horizon_days, 7);
        assert_eq!(s.projection.rate_window_hours, 24);
        assert_eq!(s.stage_policy, StagePolicy::default());
    }

    /// One piece of evidence arriving: a bucket of a run, or a plan.
    #[derive(Debug, Clone)]
    enum Item {
        Bucket { run: usize, hour: i64, flop: u128 },
        Plan { hour: i64, flop: u128 },
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            (0usize..2, 0i64..600, 0u128..3 * pow10(24))
                .prop_map(|(run, hour, flop)| Item::Bucket { run, hour, flop }),
            (0i64..600, 0u128..2 * pow10(25)).prop_map(|(hour, flop)| Item::Plan { hour, flop }),
        ]
    }

    fn build(items: &[Item]) -> ModelEvidence {
        let t0 = t0();
        let mut runs: Vec<RunEvidence> = (0..2)
            .map(|i| RunEvidence {
                run_id: format!("r{i}"),
                stage: Stage::Pretrain,
                active: true,
                planned_end_ms: Some(t0 + 30 * D),
                precision: None,
                buckets: vec![],
            })
            .collect();
        let mut plans = vec![];
        for (i, it) in items.iter().enumerate() {
            match *it {
                Item::Bucket { run, hour, flop } => runs[run].buckets.push(FlopBucket {
                    start_ms: t0 + hour * H,
                    end_ms: t0 + (hour + 1) * H,
                    flop: FlopTotal {
                        low: flop / 2,
                        central: flop,
                        high: flop * 2,
                    },
                    method: Method::UtilMfu,
                }),
                Item::Plan { hour, flop } => {
                    plans.push(plan(&format!("p{i}"), t0 + hour * H, flop))
                }
            }
        }
        model(ModelRole::Provider, plans, runs)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the order in which evidence arrives: the recorded start never changes once
        /// made, facts are only appended, the effective start never moves later, and in the end
        /// it is no later than the earliest plan or measured crossing that all the evidence
        /// shows.
        #[test]
        fn the_start_never_moves_later(items in proptest::collection::vec(item(), 1..24), bound in 0usize..3) {
            let t0 = t0();
            let settings = settings(Bound::ALL[bound]);
            let mut state: Option<ClockState> = None;
            let mut last_effective = i64::MAX;
            for k in 1..=items.len() {
                let now = t0 + 600 * H + k as i64 * H;
                let a = assess(&build(&items[..k]), &eu(), &settings, now).unwrap();
                let before = state.clone();
                let (s, _) = evaluate(state, &a, now);
                if let Some(b) = &before {
                    let s = s.as_ref().unwrap();
                    prop_assert_eq!(&s.start, &b.start);
                    prop_assert_eq!(s.deadline_ms, b.deadline_ms);
                    prop_assert_eq!(&s.facts[..b.facts.len()], &b.facts[..]);
                }
                if let Some(s) = &s {
                    let eff = s.effective_start().0;
                    prop_assert!(eff <= last_effective);
                    prop_assert!(s.effective_deadline_ms() <= s.deadline_ms);
                    last_effective = eff;
                }
                state = s;
            }
            let now = t0 + 600 * H + items.len() as i64 * H;
            let a = assess(&build(&items), &eu(), &settings, now).unwrap();
            let known = [a.measured_crossing_ms, a.plan_crossing.as_ref().map(|p| p.registered_at_ms)]
                .into_iter()
                .flatten()
                .min();
            if let Some(k) = known {
                let s = state.as_ref().unwrap();
                prop_assert!(s.effective_start().0 <= k, "{} > {}", s.effective_start().0, k);
            }
        }
    }
}
