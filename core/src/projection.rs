//! Projection: how much compute a model will have used, from what was declared and what is
//! being observed.
//!
//! Per counted run, the projected total is the larger of
//! - its declared plan (planned FLOP or 6·N·D, see [`DeclaredPlan::total`]), and
//! - its measured total plus its observed rate extrapolated to its planned end. An active run
//!   with no declared end is extrapolated over the forecast horizon (default 14 days from the
//!   evaluation time); an ended run is not extrapolated.
//!
//! The model's projection is the sum over its counted runs (plans of runs not seen yet
//! included), or the model-wide plan when that is larger. Every figure carries its three bounds:
//! a low, central and high rate are each extrapolated.
//!
//! Two readings are kept apart, because the law distinguishes knowing from guessing
//! (Art. 52(1): "becomes known that it will be met"):
//! - [`Projection::committed`]: declared figures only, i.e. plans, and rates extrapolated to
//!   *declared* ends. This is what can start the notification clock.
//! - [`Projection::projected`]: additionally the open-ended runs over the forecast horizon. A
//!   crossing here alone raises a *forecast* alert for a human to judge (see
//!   [`crate::alert`]), unless the operator opts in to starting the clock on it.
//!
//! The rate is measured over a window of event time (default 24 h) ending at the run's latest
//! event, or over the run's whole history when it is shorter. All times are `i64` Unix
//! milliseconds, UTC.

use serde::{Deserialize, Serialize};

use crate::evidence::{DeclaredPlan, ModelEvidence, RunEvidence, first_true, max_total, mul_div};
use crate::stage::{Stage, StagePolicy};
use crate::units::{Bound, FlopTotal, Precision};
use crate::utc::{MS_PER_DAY, MS_PER_HOUR};

/// Projection settings (part of the collector config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionConfig {
    /// Event-time window over which a run's rate is measured, in hours. Default 24: a day
    /// averages over checkpoints, evaluations and restarts without lagging a change of scale
    /// for long.
    pub rate_window_hours: u32,
    /// How far an active run with no declared end is extrapolated, in days from the evaluation
    /// time. Default 14, the notification period.
    pub forecast_horizon_days: u32,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            rate_window_hours: 24,
            forecast_horizon_days: 14,
        }
    }
}

impl ProjectionConfig {
    /// The rate window in milliseconds (at least 1 ms).
    pub fn window_ms(&self) -> i64 {
        (i64::from(self.rate_window_hours) * MS_PER_HOUR).max(1)
    }

    /// The forecast horizon in milliseconds.
    pub fn horizon_ms(&self) -> i64 {
        i64::from(self.forecast_horizon_days) * MS_PER_DAY
    }
}

/// An observed rate: `flop` done over `span_ms` of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// FLOP done within the window.
    pub flop: FlopTotal,
    /// Length of the window actually covered, in ms (> 0).
    pub span_ms: i64,
}

impl Rate {
    /// FLOP done at this rate over `ms` milliseconds (0 for `ms ≤ 0`).
    pub fn over(&self, ms: i64, bound: Bound) -> u128 {
        if ms <= 0 {
            return 0;
        }
        mul_div(self.flop.get(bound), ms as u128, self.span_ms as u128)
    }

    /// FLOP per day, for display.
    pub fn per_day(&self) -> FlopTotal {
        FlopTotal {
            low: self.over(MS_PER_DAY, Bound::Low),
            central: self.over(MS_PER_DAY, Bound::Central),
            high: self.over(MS_PER_DAY, Bound::High),
        }
    }
}

/// Where a run's extrapolation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtrapolationEnd {
    /// At the run's declared planned end.
    Declared,
    /// At the evaluation time plus the forecast horizon (no end declared).
    Horizon,
}

/// One counted run's projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProjection {
    /// Run id.
    pub run_id: String,
    /// Declared stage; `None` for a run known only from its plan (not seen running yet).
    pub stage: Option<Stage>,
    /// Whether the run is active.
    pub active: bool,
    /// Declared precision.
    pub precision: Option<Precision>,
    /// Measured total.
    pub measured: FlopTotal,
    /// Latest event time measured.
    pub last_event_ms: Option<i64>,
    /// Observed rate, when the run is active and has a positive span of data.
    pub rate: Option<Rate>,
    /// Where the extrapolation ends, if the run is extrapolated.
    pub end: Option<ExtrapolationEnd>,
    /// The instant extrapolated to.
    pub extrapolate_to_ms: Option<i64>,
    /// Measured plus the extrapolation.
    pub extrapolated: FlopTotal,
    /// The run's declared plan in force, if any.
    pub plan: Option<FlopTotal>,
    /// `max(plan, extrapolated)`.
    pub projected: FlopTotal,
    /// The same from declared figures only (open-ended runs not extrapolated).
    pub committed: FlopTotal,
}

/// A run excluded by the stage policy, shown but never summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExcludedRun {
    /// Run id.
    pub run_id: String,
    /// Its stage.
    pub stage: Stage,
    /// Its measured total (not counted).
    pub measured: FlopTotal,
}

/// A model's projection at an evaluation instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    /// When evaluated (Unix ms UTC).
    pub evaluated_at_ms: i64,
    /// The settings used.
    pub config: ProjectionConfig,
    /// Counted measured total.
    pub measured: FlopTotal,
    /// The model-wide plan in force, if any.
    pub model_plan: Option<DeclaredPlan>,
    /// Everything declared (model-wide plan or the sum of run plans, the larger).
    pub declared: Option<FlopTotal>,
    /// Declared figures only: plans and extrapolation to declared ends.
    pub committed: FlopTotal,
    /// With open-ended runs extrapolated over the horizon.
    pub projected: FlopTotal,
    /// Counted runs, then runs known only from their plan.
    pub runs: Vec<RunProjection>,
    /// Runs excluded by the stage policy.
    pub excluded: Vec<ExcludedRun>,
}

fn total_of(f: impl Fn(Bound) -> u128) -> FlopTotal {
    FlopTotal {
        low: f(Bound::Low),
        central: f(Bound::Central),
        high: f(Bound::High),
    }
}

fn project_run(
    run: &RunEvidence,
    plan: Option<FlopTotal>,
    cfg: &ProjectionConfig,
    now_ms: i64,
) -> RunProjection {
    let measured = run.measured();
    let span = run.event_span();
    let rate = span.filter(|_| run.active).and_then(|(first, last)| {
        let from = first.max(last.saturating_sub(cfg.window_ms()));
        let span_ms = last - from;
        (span_ms > 0).then(|| Rate {
            flop: total_of(|b| run.done_by(last, b) - run.done_by(from, b)),
            span_ms,
        })
    });
    let (end, to) = match (rate, run.planned_end_ms) {
        (None, _) => (None, None),
        (Some(_), Some(e)) => (Some(ExtrapolationEnd::Declared), Some(e)),
        (Some(_), None) => (
            Some(ExtrapolationEnd::Horizon),
            Some(now_ms.saturating_add(cfg.horizon_ms())),
        ),
    };
    let last = span.map(|s| s.1);
    let extra = |b| match (rate, to, last) {
        (Some(r), Some(to), Some(last)) => r.over(to - last, b),
        _ => 0,
    };
    let extrapolated = total_of(|b| measured.get(b).saturating_add(extra(b)));
    let committed_ext = if end == Some(ExtrapolationEnd::Declared) {
        extrapolated
    } else {
        measured
    };
    RunProjection {
        run_id: run.run_id.clone(),
        stage: Some(run.stage.clone()),
        active: run.active,
        precision: run.precision,
        measured,
        last_event_ms: last,
        rate,
        end,
        extrapolate_to_ms: to,
        extrapolated,
        plan,
        projected: max_total(plan, Some(extrapolated)).unwrap_or(extrapolated),
        committed: max_total(plan, Some(committed_ext)).unwrap_or(committed_ext),
    }
}

/// Projects a model at `now_ms`. Only runs whose stage counts under `policy` (and plans of
/// such runs, or of runs not seen yet) enter any figure.
pub fn project(
    evidence: &ModelEvidence,
    policy: &StagePolicy,
    cfg: &ProjectionConfig,
    now_ms: i64,
) -> Projection {
    let (model_plan, run_plans) = evidence.plans_in_force(policy, now_ms);
    let plan_of = |id: &str| {
        run_plans
            .iter()
            .find(|p| p.run_id.as_deref() == Some(id))
            .and_then(|p| p.total())
    };
    let mut runs: Vec<RunProjection> = evidence
        .counted_runs(policy)
        .map(|r| project_run(r, plan_of(&r.run_id), cfg, now_ms))
        .collect();
    // Plans of runs not seen yet (registered before the run starts) still count.
    for p in &run_plans {
        let id = p.run_id.as_deref().unwrap_or_default();
        if let (false, Some(total)) = (evidence.runs.iter().any(|r| r.run_id == id), p.total()) {
            runs.push(RunProjection {
                run_id: id.to_string(),
                stage: None,
                active: false,
                precision: None,
                measured: FlopTotal::ZERO,
                last_event_ms: None,
                rate: None,
                end: None,
                extrapolate_to_ms: None,
                extrapolated: FlopTotal::ZERO,
                plan: Some(total),
                projected: total,
                committed: total,
            });
        }
    }
    let sum = |f: fn(&RunProjection) -> FlopTotal| {
        let mut t = FlopTotal::ZERO;
        for r in &runs {
            t.add_total(f(r));
        }
        t
    };
    let model_total = model_plan.and_then(DeclaredPlan::total);
    let committed = max_total(model_total, Some(sum(|r| r.committed))).unwrap_or_default();
    let projected = max_total(model_total, Some(sum(|r| r.projected))).unwrap_or_default();
    Projection {
        evaluated_at_ms: now_ms,
        config: *cfg,
        measured: evidence.measured(policy),
        model_plan: model_plan.cloned(),
        declared: evidence.declared_at(policy, now_ms),
        committed,
        projected,
        excluded: evidence
            .excluded_runs(policy)
            .map(|r| ExcludedRun {
                run_id: r.run_id.clone(),
                stage: r.stage.clone(),
                measured: r.measured(),
            })
            .collect(),
        runs,
    }
}

impl Projection {
    /// The extrapolated total at instant `t` (bound `bound`): measured, plus each extrapolated
    /// run's rate from its latest event up to `t` (capped at its extrapolation end). Plans have
    /// no time profile and do not enter. Non-decreasing in `t`.
    pub fn extrapolated_at(&self, t: i64, bound: Bound) -> u128 {
        self.runs.iter().fold(0u128, |acc, r| {
            let extra = match (r.rate, r.last_event_ms, r.extrapolate_to_ms) {
                (Some(rate), Some(last), Some(to)) => rate.over(t.min(to) - last, bound),
                _ => 0,
            };
            acc.saturating_add(r.measured.get(bound))
                .saturating_add(extra)
        })
    }

    /// When the extrapolated trajectory crosses, according to `crossed` (a monotone threshold
    /// test on the bound `bound`): the "projected crossing date". `None` when the measured
    /// total already crosses (the measured crossing instant is then the fact to show, see
    /// [`ModelEvidence::measured_crossing`]) or when the extrapolation does not reach the
    /// level by the runs' extrapolation ends. The instant may lie before the evaluation time
    /// when records are late: the rate then says the crossing has probably happened already.
    pub fn crossing_ms(&self, bound: Bound, crossed: impl Fn(u128) -> bool) -> Option<i64> {
        let lo = self.runs.iter().filter_map(|r| r.last_event_ms).min()?;
        let hi = self
            .runs
            .iter()
            .filter_map(|r| r.extrapolate_to_ms.max(r.last_event_ms))
            .max()?;
        if crossed(self.measured.get(bound)) {
            return None;
        }
        first_true(lo, hi.max(lo), |t| crossed(self.extrapolated_at(t, bound)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declaration::PlanFigures;
    use crate::evidence::{FlopBucket, ModelRole};
    use crate::threshold::pow10;
    use crate::units::Method;
    use crate::utc::utc_ms;

    const H: i64 = MS_PER_HOUR;
    const D: i64 = MS_PER_DAY;

    /// A run at a constant rate of `per_hour` (central; low 0.8×, high 1.25×) in hourly
    /// buckets from `start` for `hours`.
    fn run(id: &str, start: i64, hours: i64, per_hour: u128, end: Option<i64>) -> RunEvidence {
        RunEvidence {
            run_id: id.into(),
            stage: Stage::Pretrain,
            active: true,
            planned_end_ms: end,
            precision: None,
            buckets: (0..hours)
                .map(|h| FlopBucket {
                    start_ms: start + h * H,
                    end_ms: start + (h + 1) * H,
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

    fn model(runs: Vec<RunEvidence>, plans: Vec<DeclaredPlan>) -> ModelEvidence {
        ModelEvidence {
            model: "m".into(),
            role: ModelRole::Provider,
            plans,
            runs,
        }
    }

    #[test]
    fn with_a_planned_end() {
        let t0 = utc_ms(2026, 3, 1, 0, 0, 0);
        // 1e22 per hour for 48 h, planned to run 30 days: 720 h × 1e22 = 7.2e24.
        let m = model(vec![run("r", t0, 48, pow10(22), Some(t0 + 30 * D))], vec![]);
        let p = project(
            &m,
            &StagePolicy::default(),
            &ProjectionConfig::default(),
            t0 + 48 * H,
        );
        assert_eq!(p.measured.central, 48 * pow10(22));
        let r = &p.runs[0];
        assert_eq!(r.rate.unwrap().span_ms, 24 * H, "the 24 h window");
        assert_eq!(r.rate.unwrap().per_day().central, 24 * pow10(22));
        assert_eq!(r.end, Some(ExtrapolationEnd::Declared));
        assert_eq!(p.projected.central, 720 * pow10(22));
        assert_eq!(p.committed, p.projected, "a declared end is committed");
        assert_eq!(p.projected.high, 720 * pow10(22) * 5 / 4);
        assert_eq!(p.projected.low, 720 * pow10(22) * 4 / 5);
        // The central trajectory passes 5e24 at 500 h.
        let at = p.crossing_ms(Bound::Central, |t| t > 5 * pow10(24));
        assert_eq!(
            at,
            Some(t0 + 500 * H + 1),
            "strictly greater: one ms after 500 h"
        );
        assert_eq!(p.crossing_ms(Bound::Central, |t| t > pow10(25)), None);
        assert_eq!(
            p.crossing_ms(Bound::Central, |t| t > 0),
            None,
            "already crossed"
        );
    }

    #[test]
    fn without_a_planned_end() {
        let t0 = utc_ms(2026, 3, 1, 0, 0, 0);
        // 6 h of data only: the rate is over the 6 h seen, extrapolated 14 days from now.
        let m = model(vec![run("r", t0, 6, pow10(22), None)], vec![]);
        let now = t0 + 8 * H; // records lag by 2 h
        let p = project(
            &m,
            &StagePolicy::default(),
            &ProjectionConfig::default(),
            now,
        );
        let r = &p.runs[0];
        assert_eq!(r.rate.unwrap().span_ms, 6 * H);
        assert_eq!(r.end, Some(ExtrapolationEnd::Horizon));
        assert_eq!(r.extrapolate_to_ms, Some(now + 14 * D));
        // 6 h measured + (2 h lag + 336 h) extrapolated = 344 h.
        assert_eq!(p.projected.central, 344 * pow10(22));
        assert_eq!(
            p.committed.central,
            6 * pow10(22),
            "open-ended is not committed"
        );
        // A shorter horizon, and an ended run, are not extrapolated beyond.
        let short = ProjectionConfig {
            forecast_horizon_days: 1,
            ..ProjectionConfig::default()
        };
        assert_eq!(
            project(&m, &StagePolicy::default(), &short, now)
                .projected
                .central,
            32 * pow10(22)
        );
        let mut ended = m.clone();
        ended.runs[0].active = false;
        let p = project(
            &ended,
            &StagePolicy::default(),
            &ProjectionConfig::default(),
            now,
        );
        assert_eq!(p.projected.central, 6 * pow10(22));
        assert_eq!(p.crossing_ms(Bound::Central, |t| t > 7 * pow10(22)), None);
    }

    #[test]
    fn plans_and_runs_combine() {
        let t0 = utc_ms(2026, 3, 1, 0, 0, 0);
        let plan = |id: &str, run: Option<&str>, flop: u128| DeclaredPlan {
            plan_id: id.into(),
            run_id: run.map(Into::into),
            registered_at_ms: t0,
            figures: PlanFigures {
                planned_flop: Some(flop),
                params: None,
                tokens: None,
            },
            declared_by: None,
        };
        let policy = StagePolicy::default();
        let cfg = ProjectionConfig::default();
        // Run a planned at 8e24, running at 1e22/h for 10 h; run b unplanned, ended at 5e24;
        // run c planned at 1e24 but not seen yet; an eval run that never counts.
        let mut b = run("b", t0, 1, 5 * pow10(24), None);
        b.active = false;
        let mut ev = run("ev", t0, 10, pow10(25), None);
        ev.stage = Stage::Eval;
        let m = model(
            vec![run("a", t0, 10, pow10(22), None), b, ev],
            vec![
                plan("pa", Some("a"), 8 * pow10(24)),
                plan("pc", Some("c"), pow10(24)),
            ],
        );
        let p = project(&m, &policy, &cfg, t0 + 10 * H);
        assert_eq!(
            p.committed.central,
            8 * pow10(24) + 5 * pow10(24) + pow10(24)
        );
        assert_eq!(p.excluded.len(), 1);
        assert_eq!(p.measured.central, 10 * pow10(22) + 5 * pow10(24));
        // A model-wide plan above the sum wins.
        let mut big = m.clone();
        big.plans.push(plan("model", None, 21 * pow10(24)));
        let p = project(&big, &policy, &cfg, t0 + 10 * H);
        assert_eq!(p.committed, FlopTotal::exact(21 * pow10(24)));
        assert_eq!(p.model_plan.unwrap().plan_id, "model");
    }
}
