//! The page models, from the collector's own views.

use flopmeter_core::audit::{AuditEntry, AuditKind, ChainHead, Json};
use flopmeter_core::threshold::defaults;

use super::*;
use crate::compliance::AlertView;
use crate::report::{
    Computation, EnergyFigure, PolicyView, Quality, Report, TrainingTime, UnattributedView,
};

const D: i64 = MS_PER_DAY;

fn report(model: &str, central: u128, unattributed: u128, nodes: usize) -> Report {
    let t = FlopTotal {
        low: central / 2,
        central,
        high: central * 2,
    };
    Report {
        schema: crate::report::SCHEMA.into(),
        model: model.into(),
        generated_unix_ms: 0,
        entry: None,
        policy: PolicyView {
            counted_stages: vec![],
            excluded_stages: vec![],
            unknown_stages_count: true,
        },
        computation: Computation {
            counted: t,
            counted_text: String::new(),
            excluded: FlopTotal::ZERO,
            measured: t,
            method_mix: vec![],
            method_mix_text: String::new(),
        },
        training_time: TrainingTime {
            first_event_unix_ms: None,
            last_event_unix_ms: None,
            wall_clock_days: 0.0,
        },
        hardware: vec![],
        energy: EnergyFigure {
            counted_mj: 0,
            counted_mwh: 0.0,
            excluded_mwh: 0.0,
        },
        clusters: vec![],
        stages: vec![],
        runs: vec![],
        unattributed: UnattributedView {
            nodes: (0..nodes).map(|i| format!("n{i}")).collect(),
            first_day: None,
            last_day: None,
            flop: FlopTotal::exact(unattributed),
            gpu_days: BTreeMap::new(),
            energy_mwh: 0.0,
            records: 0,
            unestimated: Default::default(),
            sources: vec![],
            other_sources: Default::default(),
        },
        unestimated: Default::default(),
        base_model: None,
        quality: Quality::default(),
        methodology: vec![],
    }
}

fn alert(model: &str, threshold: &str, status: &str, deadline: Option<i64>) -> AlertView {
    AlertView {
        model: model.into(),
        threshold: threshold.into(),
        status: status.into(),
        clock_start: None,
        reason: None,
        deadline: None,
        deadline_ms: deadline,
        time_left: None,
        overdue: deadline.is_some_and(|d| d < 100 * D),
        acknowledged: None,
        dismissed: None,
        delivery: vec![],
        content: None,
    }
}

#[test]
fn urgency_of_an_alert() {
    let now = 100 * D;
    assert_eq!(
        alert_urgency("clock-started", Some(now), now),
        Urgency::Overdue
    );
    assert_eq!(
        alert_urgency("overdue", Some(now - 1), now),
        Urgency::Overdue
    );
    assert_eq!(
        alert_urgency("clock-started", Some(now + 3 * D), now),
        Urgency::DueSoon
    );
    assert_eq!(
        alert_urgency("clock-started", Some(now + 3 * D + 1), now),
        Urgency::Running
    );
    assert_eq!(alert_urgency("forecast", None, now), Urgency::Forecast);
    assert_eq!(
        alert_urgency("forecast-withdrawn", None, now),
        Urgency::Quiet
    );
    // A closed alert is done even after its deadline.
    assert_eq!(
        alert_urgency("acknowledged", Some(now - D), now),
        Urgency::Done
    );
    assert_eq!(
        alert_urgency("dismissed", Some(now - D), now),
        Urgency::Done
    );
}

#[test]
fn bars_put_the_level_at_three_quarters_on_a_log_scale() {
    let l = 10u128.pow(25);
    assert_eq!(bar_position(l, l), 75);
    assert_eq!(bar_position(l / 1000, l), 0);
    assert_eq!(bar_position(l / 10_000, l), 0);
    assert_eq!(bar_position(l * 10, l), 100);
    assert_eq!(bar_position(0, l), 0);
    assert!(bar_position(l / 10, l) < bar_position(l / 2, l));
}

#[test]
fn thresholds_of_one_level_share_a_column_and_the_modifier_follows_1e25() {
    let cols = threshold_columns(&defaults());
    let ids: Vec<Vec<&str>> = cols
        .iter()
        .map(|c| c.ids.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(
        ids,
        vec![
            vec!["eu-gpai-indicative"],
            vec!["eu-systemic-risk"],
            vec!["eu-modifier"],
            vec!["us-ca-sb53", "us-ny-raise", "kr-basic-act"],
        ]
    );
    assert_eq!(cols[1].level, "1.0e25");
    assert_eq!(cols[2].level, "1/3 of base");
}

#[test]
fn the_most_urgent_model_comes_first() {
    let now = 50 * D;
    let input = ModelsInput {
        now_ms: now,
        thresholds: defaults(),
        reports: vec![
            report("quiet", 10, 0, 1),
            report("running-late", 10, 0, 1),
            report("running-soon", 10, 0, 1),
            report("overdue", 10, 0, 1),
            report("forecast", 10, 0, 1),
            report("notified", 10, 0, 1),
        ],
        pairs: BTreeMap::new(),
        bound: Bound::High,
        alerts: vec![
            alert(
                "running-late",
                "eu-systemic-risk",
                "clock-started",
                Some(now + 10 * D),
            ),
            alert(
                "running-soon",
                "eu-systemic-risk",
                "clock-started",
                Some(now + 5 * D),
            ),
            alert("overdue", "eu-systemic-risk", "overdue", Some(now - D)),
            // A second, closed alert of the same model does not hide the overdue one.
            alert("overdue", "eu-modifier", "acknowledged", Some(now - 9 * D)),
            alert("forecast", "eu-systemic-risk", "forecast", None),
            alert(
                "notified",
                "eu-systemic-risk",
                "acknowledged",
                Some(now - 2 * D),
            ),
        ],
    };
    let page = models_page(&input, Sort::Urgency);
    let order: Vec<&str> = page.rows.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(
        order,
        [
            "overdue",
            "running-soon",
            "running-late",
            "forecast",
            "quiet",
            "notified"
        ]
    );
    let first = page.rows[0].clock.as_ref().unwrap();
    assert_eq!((first.status.as_str(), first.others), ("overdue", 1));
    assert_eq!((page.running, page.overdue), (3, 1));
    assert_eq!(
        page.next_deadline,
        Some(("overdue".into(), "eu-systemic-risk".into(), now - D))
    );
    let by_name = models_page(&input, Sort::Model);
    assert_eq!(by_name.rows[0].model, "forecast");
    let by_deadline = models_page(&input, Sort::Deadline);
    assert_eq!(by_deadline.rows[0].model, "notified");
}

#[test]
fn unattributed_share_and_clusters_come_from_the_report() {
    let input = ModelsInput {
        now_ms: 0,
        thresholds: vec![],
        reports: vec![report("m", 300, 100, 3)],
        pairs: BTreeMap::new(),
        bound: Bound::High,
        alerts: vec![],
    };
    let row = &models_page(&input, Sort::Urgency).rows[0];
    assert!((row.unattributed_share - 0.25).abs() < 1e-12);
    assert_eq!(
        row.clusters,
        vec![ClusterCell {
            name: None,
            nodes: Some(3),
            percent: None
        }]
    );
    // With per-cluster figures, one cell per cluster with its share.
    let mut r = report("m", 300, 100, 3);
    let row_of = |name: &str, central: u128| crate::report::ClusterRow {
        cluster: name.into(),
        kind: crate::ledger::aggregate::ClusterKind::Cluster,
        name: name.into(),
        counted: FlopTotal::exact(central),
        counted_text: String::new(),
        percent: central as f64 * 100.0 / 300.0,
        excluded: FlopTotal::ZERO,
        gpu_ms: 0,
        gpu_days: 0.0,
        energy_mj: 0,
        energy_mwh: 0.0,
        unestimated_gpu_hours: 0.0,
        records: 1,
    };
    r.clusters = vec![row_of("gpu-a", 200), row_of("gpu-b", 100)];
    let input = ModelsInput {
        reports: vec![r],
        ..input
    };
    let cells = &models_page(&input, Sort::Urgency).rows[0].clusters;
    let shown: Vec<_> = cells
        .iter()
        .map(|c| (c.name.as_deref(), c.percent))
        .collect();
    assert_eq!(
        shown,
        [(Some("gpu-a"), Some(67)), (Some("gpu-b"), Some(33))]
    );
}

#[test]
fn the_alerts_page_lists_overdue_first_then_by_deadline_and_closed_apart() {
    let now = 10 * D;
    let page = alerts_page(
        vec![
            alert("a", "t", "clock-started", Some(now + 9 * D)),
            alert("b", "t", "forecast", None),
            alert("c", "t", "clock-started", Some(now - 1)),
            alert("d", "t", "acknowledged", Some(now - 5 * D)),
            alert("e", "t", "clock-started", Some(now + 2 * D)),
        ],
        now,
    );
    let open: Vec<&str> = page.open.iter().map(|r| r.view.model.as_str()).collect();
    assert_eq!(open, ["c", "e", "a", "b"]);
    assert_eq!(page.closed.len(), 1);
    assert_eq!(page.closed[0].view.model, "d");
}

fn entry(kind: AuditKind, payload: Json) -> AuditEntry {
    AuditEntry {
        seq: 1,
        time_ms: 0,
        actor: "x".into(),
        kind,
        payload,
        prev_hash: String::new(),
        hash: String::new(),
    }
}

fn obj(fields: &[(&str, Json)]) -> Json {
    Json::Object(
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

#[test]
fn history_picks_the_alerts_own_entries_and_says_them_in_words() {
    let ack = entry(
        AuditKind::Acknowledged,
        obj(&[
            ("model", Json::Str("m".into())),
            ("threshold_id", Json::Str("eu-systemic-risk".into())),
            (
                "kind",
                obj(&[
                    ("event", Json::Str("transition".into())),
                    ("from", Json::Str("clock-started".into())),
                    ("to", Json::Str("acknowledged".into())),
                ]),
            ),
        ]),
    );
    assert!(entry_is_about(&ack, "m", Some("eu-systemic-risk")));
    assert!(!entry_is_about(&ack, "m", Some("eu-modifier")));
    assert!(!entry_is_about(&ack, "m2", None));
    assert_eq!(describe_entry(&ack), "clock-started → acknowledged");
    let delivery = entry(
        AuditKind::Delivery,
        obj(&[
            (
                "key",
                Json::Str("m/eu-systemic-risk/clock-started/1".into()),
            ),
            ("sink", Json::Str("log".into())),
            ("result", Json::Str("delivered".into())),
            ("attempts", Json::UInt(1)),
        ]),
    );
    assert!(entry_is_about(&delivery, "m", Some("eu-systemic-risk")));
    assert!(!entry_is_about(&delivery, "m/eu-systemic-risk", Some("x")));
    assert_eq!(
        describe_entry(&delivery),
        "delivered to log: m/eu-systemic-risk/clock-started/1 (attempt 1)"
    );
    let page = audit_page(ChainHead::genesis(), vec![ack.clone(), delivery], None, 1);
    assert_eq!(page.recent.len(), 1);
}

#[test]
fn sorts_parse_from_the_query() {
    assert_eq!(Sort::parse(Some("deadline")), Sort::Deadline);
    assert_eq!(Sort::parse(Some("<bogus>")), Sort::Urgency);
    assert_eq!(Sort::parse(None), Sort::Urgency);
}
