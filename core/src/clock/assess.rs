//! Assessing one model against one threshold at `now`: the level that applies, what counts,
//! the totals, plans and projection, and the snapshot a clock start records.

use serde::{Deserialize, Serialize};

use crate::evidence::{DeclaredPlan, MethodShare, ModelEvidence, ModelRole};
use crate::projection::{self, ExcludedRun, Projection, ProjectionConfig};
use crate::stage::{Stage, StagePolicy};
use crate::threshold::Threshold;
use crate::units::{Bound, FlopTotal, Precision};

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
/// the inputs of [`evaluate`](super::evaluate) and [`crate::alert::evaluate`].
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
