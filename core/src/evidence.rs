//! What the compliance engine knows about a model: its role, its declared plans and the
//! counted FLOP of its runs over event time. These are the inputs of [`crate::projection`] and
//! [`crate::clock`]; the collector builds them from its ledger.
//!
//! Measured compute is given as [`FlopBucket`]s: FLOP done by one run over an interval of
//! **event time** (when the GPUs did the work, not when the record reached the collector).
//! Buckets may be agent intervals or hourly roll-ups; they may arrive in any order and late.
//! Within a bucket the work is taken as uniform, so the cumulative total of a model is a
//! non-decreasing, piecewise-linear function of event time and the instant it crosses a
//! threshold can be found to the millisecond, however late the records arrive.
//!
//! Stages: each run carries its declared [`Stage`], and every function that sums takes the
//! [`StagePolicy`]. Runs of an excluded stage (evaluations, reward models, …) are never summed,
//! extrapolated or planned with; they are listed separately so reports can show them.
//! All times are `i64` Unix milliseconds, UTC.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::declaration::PlanFigures;
use crate::stage::{Stage, StagePolicy};
use crate::units::{Bound, FlopTotal, Method, Precision};

/// FLOP done by one run over `[start_ms, end_ms]` of event time, by one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlopBucket {
    /// Start of the interval (event time, Unix ms UTC).
    pub start_ms: i64,
    /// End of the interval; equal to `start_ms` for an instantaneous amount.
    pub end_ms: i64,
    /// FLOP done in the interval.
    pub flop: FlopTotal,
    /// How the FLOP were estimated.
    pub method: Method,
}

impl FlopBucket {
    /// The interval ordered (`start ≤ end`): a reversed interval from a confused agent is read
    /// as the same span rather than dropped, because dropping compute is the unsafe error.
    fn span(&self) -> (i64, i64) {
        (
            self.start_ms.min(self.end_ms),
            self.start_ms.max(self.end_ms),
        )
    }

    /// FLOP done by event time `t` (bound `bound`), with work uniform over the interval.
    pub fn done_by(&self, t: i64, bound: Bound) -> u128 {
        let (s, e) = self.span();
        let flop = self.flop.get(bound);
        if t >= e {
            flop
        } else if t <= s {
            0
        } else {
            mul_div(flop, (t - s) as u128, (e - s) as u128)
        }
    }
}

/// `a · num / den`, rounded down, without overflowing for `num ≤ den` and saturating otherwise.
pub(crate) fn mul_div(a: u128, num: u128, den: u128) -> u128 {
    if den == 0 {
        return 0;
    }
    let (q, r) = (a / den, a % den);
    // r < den and num fits 64 bits in every caller (milliseconds), so r·num < 2^127.
    q.saturating_mul(num)
        .saturating_add(r.saturating_mul(num) / den)
}

/// One run of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvidence {
    /// Run id.
    pub run_id: String,
    /// Declared stage ([`Stage::Pretrain`] when none was declared).
    pub stage: Stage,
    /// Whether the run is still going (not ended). Only active runs are extrapolated.
    pub active: bool,
    /// Declared planned end (Unix ms UTC), if any.
    pub planned_end_ms: Option<i64>,
    /// Declared training precision, if any. Without it the high bound assumes the GPU's
    /// fastest dense peak, which is what usually widens a band across a threshold.
    pub precision: Option<Precision>,
    /// Measured FLOP over event time.
    pub buckets: Vec<FlopBucket>,
}

impl RunEvidence {
    /// The run's total measured FLOP.
    pub fn measured(&self) -> FlopTotal {
        let mut t = FlopTotal::ZERO;
        for b in &self.buckets {
            t.add_total(b.flop);
        }
        t
    }

    /// FLOP done by event time `t`.
    pub fn done_by(&self, t: i64, bound: Bound) -> u128 {
        self.buckets
            .iter()
            .fold(0u128, |acc, b| acc.saturating_add(b.done_by(t, bound)))
    }

    /// The earliest and latest event time covered, if any bucket.
    pub fn event_span(&self) -> Option<(i64, i64)> {
        let first = self.buckets.iter().map(|b| b.span().0).min()?;
        let last = self.buckets.iter().map(|b| b.span().1).max()?;
        Some((first, last))
    }
}

/// A declared plan: a whole model's, or one run's (labels such as `FLOPMETER_PLANNED_FLOP`):
/// the [`PlanFigures`] of a [`crate::declaration::Declaration`] with the id, date and
/// declarer the engine cites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredPlan {
    /// Id of the plan (registry id, or the run id for a run's labels).
    pub plan_id: String,
    /// The run the plan is for; `None` for a plan of the whole model.
    pub run_id: Option<String>,
    /// When the plan was registered (Unix ms UTC): the moment it "became known".
    pub registered_at_ms: i64,
    /// What it declares.
    pub figures: PlanFigures,
    /// Who declared it, in words (`alice via the model registry`, `agent a1 on node n1`):
    /// cited wherever the plan is, because an agent may declare a plan that starts a clock.
    pub declared_by: Option<String>,
}

impl DeclaredPlan {
    /// The declared figure ([`PlanFigures::total`]) as a band with all three bounds equal.
    pub fn total(&self) -> Option<FlopTotal> {
        self.figures.total_band()
    }

    /// Which figure the declaration rests on, for reports.
    pub fn basis(&self) -> &'static str {
        self.figures.basis()
    }
}

/// The stored shape of a [`DeclaredPlan`] (clock records and audit entries hold it, and the
/// audit chain hashes it): flat, in this field order, as it has always been written.
#[derive(Serialize, Deserialize)]
struct StoredPlan<S> {
    plan_id: S,
    run_id: Option<S>,
    registered_at_ms: i64,
    planned_flop: Option<u128>,
    params: Option<u128>,
    tokens: Option<u128>,
    #[serde(default = "Option::default")]
    declared_by: Option<S>,
}

impl Serialize for DeclaredPlan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredPlan::<&str> {
            plan_id: &self.plan_id,
            run_id: self.run_id.as_deref(),
            registered_at_ms: self.registered_at_ms,
            planned_flop: self.figures.planned_flop,
            params: self.figures.params,
            tokens: self.figures.tokens,
            declared_by: self.declared_by.as_deref(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for DeclaredPlan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = StoredPlan::<String>::deserialize(d)?;
        Ok(DeclaredPlan {
            plan_id: p.plan_id,
            run_id: p.run_id,
            registered_at_ms: p.registered_at_ms,
            figures: PlanFigures {
                planned_flop: p.planned_flop,
                params: p.params,
                tokens: p.tokens,
            },
            declared_by: p.declared_by,
        })
    }
}

/// A model's role under the downstream-modifier rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "role")]
pub enum ModelRole {
    /// The original provider: the modifier threshold never applies.
    #[default]
    Provider,
    /// A downstream modifier of someone else's base model.
    Modifier {
        /// The base model's name.
        base_model: String,
        /// The base model's training compute, when known.
        base_compute: Option<u128>,
        /// Where that figure comes from (model card, provider statement, …).
        base_compute_source: Option<String>,
        /// Whether the base is a systemic-risk model (decides the fallback when its compute is
        /// unknown).
        base_systemic: bool,
        /// Whether `base_systemic` was declared (`model set --base-systemic-risk`) rather than
        /// inferred from a known compute or assumed: the alert says which.
        #[serde(default)]
        base_systemic_declared: bool,
    },
}

/// Everything known about one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEvidence {
    /// Model name.
    pub model: String,
    /// Provider or modifier.
    pub role: ModelRole,
    /// Declared plans, model-wide and per run, in any order.
    pub plans: Vec<DeclaredPlan>,
    /// Runs, counted and excluded alike; the stage policy decides.
    pub runs: Vec<RunEvidence>,
}

/// FLOP attributed to one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodShare {
    /// The method.
    pub method: Method,
    /// FLOP measured by it.
    pub flop: FlopTotal,
}

impl ModelEvidence {
    /// Runs whose stage counts under `policy`.
    pub fn counted_runs<'a>(
        &'a self,
        policy: &'a StagePolicy,
    ) -> impl Iterator<Item = &'a RunEvidence> + 'a {
        self.runs.iter().filter(|r| policy.counts(&r.stage))
    }

    /// Runs whose stage is excluded under `policy`.
    pub fn excluded_runs<'a>(
        &'a self,
        policy: &'a StagePolicy,
    ) -> impl Iterator<Item = &'a RunEvidence> + 'a {
        self.runs.iter().filter(|r| !policy.counts(&r.stage))
    }

    /// Whether a run counts (a plan for an excluded or unknown run is not used).
    fn run_counts(&self, run_id: &str, policy: &StagePolicy) -> bool {
        self.runs
            .iter()
            .find(|r| r.run_id == run_id)
            // A plan for a run not yet seen counts: the plan is registered before the run.
            .is_none_or(|r| policy.counts(&r.stage))
    }

    /// The counted measured total: every bucket of every counted run.
    pub fn measured(&self, policy: &StagePolicy) -> FlopTotal {
        let mut t = FlopTotal::ZERO;
        for r in self.counted_runs(policy) {
            t.add_total(r.measured());
        }
        t
    }

    /// Counted FLOP done by event time `t`, summed over runs.
    pub fn done_by(&self, policy: &StagePolicy, t: i64, bound: Bound) -> u128 {
        self.counted_runs(policy)
            .fold(0u128, |acc, r| acc.saturating_add(r.done_by(t, bound)))
    }

    /// The earliest event time at which the counted cumulative total (bound `bound`) satisfies
    /// `crossed`, found exactly to the millisecond. `None` if it never does.
    ///
    /// `crossed` must be monotone (false then true as the total grows), which every
    /// threshold comparison is; the cumulative total is non-decreasing in event time.
    pub fn measured_crossing(
        &self,
        policy: &StagePolicy,
        bound: Bound,
        crossed: impl Fn(u128) -> bool,
    ) -> Option<i64> {
        let spans: Vec<(i64, i64)> = self
            .counted_runs(policy)
            .filter_map(RunEvidence::event_span)
            .collect();
        let lo = spans.iter().map(|s| s.0).min()?;
        let hi = spans.iter().map(|s| s.1).max()?;
        first_true(lo, hi, |t| crossed(self.done_by(policy, t, bound)))
    }

    /// Counted FLOP per method.
    pub fn method_mix(&self, policy: &StagePolicy) -> Vec<MethodShare> {
        let mut mix: BTreeMap<Method, FlopTotal> = BTreeMap::new();
        for r in self.counted_runs(policy) {
            for b in &r.buckets {
                mix.entry(b.method).or_default().add_total(b.flop);
            }
        }
        mix.into_iter()
            .map(|(method, flop)| MethodShare { method, flop })
            .collect()
    }

    /// The latest model-wide plan registered by `at` and the latest plan of each counted run
    /// registered by `at`. Later registrations supersede earlier ones of the same scope (ties
    /// by position, last wins).
    pub fn plans_in_force(
        &self,
        policy: &StagePolicy,
        at: i64,
    ) -> (Option<&DeclaredPlan>, Vec<&DeclaredPlan>) {
        let mut model: Option<&DeclaredPlan> = None;
        let mut runs: BTreeMap<&str, &DeclaredPlan> = BTreeMap::new();
        for p in self.plans.iter().filter(|p| p.registered_at_ms <= at) {
            match &p.run_id {
                None => {
                    if model.is_none_or(|q| q.registered_at_ms <= p.registered_at_ms) {
                        model = Some(p);
                    }
                }
                Some(r) if self.run_counts(r, policy) => {
                    let slot = runs.entry(r.as_str()).or_insert(p);
                    if slot.registered_at_ms <= p.registered_at_ms {
                        *slot = p;
                    }
                }
                Some(_) => {}
            }
        }
        (model, runs.into_values().collect())
    }

    /// The declared total at instant `at`: the larger of the model-wide plan in force and the
    /// sum of the run plans in force. `None` when nothing was declared by then.
    pub fn declared_at(&self, policy: &StagePolicy, at: i64) -> Option<FlopTotal> {
        let (model, runs) = self.plans_in_force(policy, at);
        let mut sum: Option<FlopTotal> = None;
        for p in runs {
            if let Some(t) = p.total() {
                sum.get_or_insert(FlopTotal::ZERO).add_total(t);
            }
        }
        max_total(model.and_then(DeclaredPlan::total), sum)
    }
}

/// Bound-wise maximum of two optional totals.
pub(crate) fn max_total(a: Option<FlopTotal>, b: Option<FlopTotal>) -> Option<FlopTotal> {
    match (a, b) {
        (Some(a), Some(b)) => Some(FlopTotal {
            low: a.low.max(b.low),
            central: a.central.max(b.central),
            high: a.high.max(b.high),
        }),
        (a, b) => a.or(b),
    }
}

/// The smallest `t` in `[lo, hi]` with `pred(t)`, for a predicate that is false then true.
/// `None` if `pred(hi)` is false.
pub(crate) fn first_true(lo: i64, hi: i64, pred: impl Fn(i64) -> bool) -> Option<i64> {
    if !pred(hi) {
        return None;
    }
    if pred(lo) {
        return Some(lo);
    }
    let (mut lo, mut hi) = (lo, hi); // pred(lo) false, pred(hi) true
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(start: i64, end: i64, flop: u128) -> FlopBucket {
        FlopBucket {
            start_ms: start,
            end_ms: end,
            flop: FlopTotal::exact(flop),
            method: Method::GpmTensor,
        }
    }

    #[test]
    fn uniform_work_within_a_bucket() {
        let b = bucket(1000, 2000, 1_000_000);
        assert_eq!(b.done_by(999, Bound::Central), 0);
        assert_eq!(b.done_by(1500, Bound::Central), 500_000);
        assert_eq!(b.done_by(2000, Bound::Central), 1_000_000);
        let instant = bucket(5, 5, 7);
        assert_eq!(instant.done_by(4, Bound::High), 0);
        assert_eq!(instant.done_by(5, Bound::High), 7);
        assert_eq!(mul_div(u128::MAX, 1, 1), u128::MAX);
        assert_eq!(
            mul_div(u128::MAX, 3, 7),
            u128::MAX / 7 * 3 + (u128::MAX % 7) * 3 / 7
        );
    }

    #[test]
    fn first_true_is_exact() {
        for k in [0i64, 1, 2, 17, 999, 1000] {
            assert_eq!(first_true(0, 1000, |t| t >= k), Some(k));
        }
        assert_eq!(first_true(0, 1000, |_| false), None);
    }

    #[test]
    fn plans_supersede_per_scope() {
        let plan = |id: &str, run: Option<&str>, at: i64, flop: u128| DeclaredPlan {
            plan_id: id.into(),
            run_id: run.map(Into::into),
            registered_at_ms: at,
            figures: PlanFigures {
                planned_flop: Some(flop),
                params: None,
                tokens: None,
            },
            declared_by: None,
        };
        let m = ModelEvidence {
            model: "m".into(),
            role: ModelRole::Provider,
            plans: vec![
                plan("p1", None, 10, 100),
                plan("p2", None, 20, 50),
                plan("r1", Some("a"), 5, 30),
                plan("r2", Some("b"), 15, 40),
                plan("r3", Some("ev"), 1, 1000),
            ],
            runs: vec![RunEvidence {
                run_id: "ev".into(),
                stage: Stage::Eval,
                active: true,
                planned_end_ms: None,
                precision: None,
                buckets: vec![],
            }],
        };
        let p = StagePolicy::default();
        assert_eq!(
            m.declared_at(&p, 0),
            None,
            "the eval run's plan never counts"
        );
        assert_eq!(m.declared_at(&p, 5), Some(FlopTotal::exact(30)));
        assert_eq!(m.declared_at(&p, 10), Some(FlopTotal::exact(100)));
        assert_eq!(
            m.declared_at(&p, 20),
            Some(FlopTotal::exact(70)),
            "p2 supersedes p1"
        );
        let six_nd = DeclaredPlan {
            figures: PlanFigures {
                params: Some(2),
                tokens: Some(3),
                planned_flop: Some(10),
            },
            ..plan("x", None, 0, 10)
        };
        assert_eq!(six_nd.total(), Some(FlopTotal::exact(36)));
        assert_eq!(six_nd.basis(), "planned FLOP and 6·N·D (the larger)");
    }

    /// Clock records and audit entries hold plans as they were written before
    /// [`PlanFigures`] existed, and the audit chain hashes those bytes: they must read the
    /// same and write back identical.
    #[test]
    fn declared_plans_keep_their_stored_shape() {
        let stored = r#"{"plan_id":"registry:m","run_id":null,"registered_at_ms":5,"planned_flop":20000000000000000000000000,"params":null,"tokens":null,"declared_by":"alice via the model registry"}"#;
        let p: DeclaredPlan = serde_json::from_str(stored).unwrap();
        assert_eq!(p.figures.planned_flop, Some(2 * 10u128.pow(25)));
        assert_eq!(
            p.declared_by.as_deref(),
            Some("alice via the model registry")
        );
        assert_eq!(serde_json::to_string(&p).unwrap(), stored);
        // Written before plans cited their declarer.
        let older = r#"{"plan_id":"run:m/r","run_id":"r","registered_at_ms":1,"planned_flop":null,"params":7,"tokens":11}"#;
        let p: DeclaredPlan = serde_json::from_str(older).unwrap();
        assert_eq!(p.declared_by, None);
        assert_eq!(p.total(), Some(FlopTotal::exact(6 * 7 * 11)));
    }
}
