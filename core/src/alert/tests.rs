//! The lifecycle and the content together, driven as the collector drives them.

use super::*;
use crate::clock::{self, ComplianceSettings};
use crate::clock::{FactKind, StartReason};
use crate::declaration::PlanFigures;
use crate::evidence::{DeclaredPlan, FlopBucket, ModelEvidence, ModelRole, RunEvidence};
use crate::stage::Stage;
use crate::threshold::{defaults, find, pow10};
use crate::units::FlopTotal;
use crate::units::Method;
use crate::utc::{MS_PER_DAY, utc_ms};
use crate::utc::{MS_PER_HOUR, format_utc};

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
