//! The clock rules, case by case and as properties.

use super::*;
use crate::declaration::PlanFigures;
use crate::evidence::{DeclaredPlan, FlopBucket, ModelEvidence, ModelRole, RunEvidence};
use crate::stage::{Stage, StagePolicy};
use crate::threshold::{Threshold, defaults, find, pow10};
use crate::units::{Bound, Method};
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
        (0usize..2, 0i64..600, 0u128..3 * pow10(24)).prop_map(|(run, hour, flop)| Item::Bucket {
            run,
            hour,
            flop
        }),
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
            Item::Plan { hour, flop } => plans.push(plan(&format!("p{i}"), t0 + hour * H, flop)),
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
