//! Work that could not be estimated, and unattributed work traced to its job, over the real
//! gRPC path: an agent stream sends `METHOD_NONE` records (0 FLOP, a reason, real GPU time and
//! energy) for a run and for unattributed Slurm jobs; the collector accepts them, quarantines
//! the malformed ones, and reports the GPU-hours that could not be estimated per reason beside
//! (never inside) the estimated figures, in /api/v1, /metrics and the report's text, JSON and
//! CSV, and lists the largest unattributed sources. `ledger verify` stays exact.

use crate::support;

use flopmeter_collector::report::{self, Format, Report};
use flopmeter_collector::{Collector, now_unix_ms};
use flopmeter_proto::v1 as pb;
use flopmeter_proto::v1::{AttributionSource, IntervalRecord, Method, collector_message::Kind};
use support::{Stream, rec_at, start};

const HOUR: i64 = 3_600_000;
const C: u64 = 4_000_000_000_000_000;

/// One GPU-hour ending an hour ago (the collector accepts at most 1 h per record).
fn hour(seq: u64, model: &str, central: u64) -> IntervalRecord {
    let mut r = rec_at(
        seq,
        model,
        if model.is_empty() { "" } else { "r1" },
        "",
        central,
        now_unix_ms() - 60_000,
    );
    r.start_unix_ms = r.end_unix_ms - HOUR;
    r.gpu_ms = HOUR as u64;
    r.energy_mj = 2_000_000_000;
    r
}

/// A GPU-hour that could not be estimated, on an uncatalogued GPU without a peak.
fn none(seq: u64, model: &str, reason: &str) -> IntervalRecord {
    let mut r = hour(seq, model, 0);
    (r.flop_low, r.flop_central, r.flop_high) = (0, 0, 0);
    r.method = Method::None as i32;
    r.no_estimate_reason = reason.into();
    r.gpu_type.clear();
    r.gpu_uuid = "GPU-uncatalogued".into();
    r
}

/// Unattributed work of a Slurm job.
fn job(mut r: IntervalRecord, job: &str, user: &str) -> IntervalRecord {
    let id = r.identity.as_mut().unwrap();
    id.source = AttributionSource::Unattributed as i32;
    (id.job, id.user, id.cluster, id.namespace, id.process) = (
        job.into(),
        user.into(),
        "gpu-a".into(),
        "research".into(),
        "python3".into(),
    );
    r
}

fn try_get(c: &Collector, path: &str) -> Result<String, String> {
    support::http_get(c.http_addr(), path)
}

fn get(c: &Collector, path: &str) -> String {
    try_get(c, path).unwrap()
}

fn json(c: &Collector, path: &str) -> serde_json::Value {
    serde_json::from_str(&get(c, path)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_could_not_be_estimated_is_counted_reported_and_alertable() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    // The node's GPUs: the catalogued H100 and the uncatalogued one without a peak.
    let mut hello = support::hello("a1");
    if let Some(pb::agent_message::Kind::Hello(h)) = &mut hello.kind {
        h.gpus.push(pb::GpuInventory {
            index: 1,
            uuid: "GPU-uncatalogued".into(),
            ..pb::GpuInventory::default()
        });
    }
    let mut s = Stream::open_with(c.grpc_addr(), hello, None).await;
    assert!(matches!(
        s.next().await.unwrap().and_then(|m| m.kind),
        Some(Kind::Welcome(_))
    ));

    let mut bad_flop = none(6, "acme", "unknown-gpu-no-peak");
    bad_flop.flop_high = 1;
    let mut bad_reason = none(7, "acme", "x");
    bad_reason.no_estimate_reason = "No Peak!".into();
    let mut reason_on_estimate = hour(8, "acme", C);
    reason_on_estimate.no_estimate_reason = "no-activity-reading".into();
    s.send(vec![
        hour(1, "acme", C),
        none(2, "acme", "unknown-gpu-no-peak"),
        none(3, "acme", "no-activity-reading"),
        job(none(4, "", "unknown-gpu-no-peak"), "77", "bob"),
        job(hour(5, "", C / 2), "78", "carol"),
        bad_flop,
        bad_reason,
        reason_on_estimate,
    ])
    .await;
    let ack = match s.next().await.unwrap().and_then(|m| m.kind) {
        Some(Kind::Ack(a)) => a,
        other => panic!("expected an Ack, got {other:?}"),
    };
    assert_eq!(ack.acked_through, 8);
    let rejected: Vec<(u64, &str)> = ack
        .rejections
        .iter()
        .map(|r| (r.seq, r.reason.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            (6, "bad-no-estimate"),
            (7, "bad-no-estimate"),
            (8, "bad-no-estimate")
        ]
    );
    assert!(
        ack.rejections[0].detail.contains("must carry 0 FLOP"),
        "{}",
        ack.rejections[0].detail
    );
    assert!(ack.rejections[1].detail.contains("kebab-case"));

    // The model: estimated figures cover the estimated hour only; the rest is stated beside.
    let m = json(&c, "/api/v1/models/acme");
    let sum = &m["summary"];
    assert_eq!(n(&sum["counted"]["central"]), C as u128);
    assert_eq!(n(&sum["gpu_ms"]), HOUR as u128);
    assert_eq!(n(&sum["energy_mj"]), 2_000_000_000u64 as u128);
    assert_eq!(sum["records"], 3, "every applied record is a record");
    let u = &sum["unestimated"];
    assert_eq!(n(&u["total"]["gpu_ms"]), (2 * HOUR) as u128);
    assert_eq!(n(&u["total"]["energy_mj"]), 4_000_000_000u64 as u128);
    assert_eq!(
        n(&u["reasons"]["unknown-gpu-no-peak"]["gpu_ms"]),
        HOUR as u128
    );
    assert_eq!(u["reasons"]["no-activity-reading"]["records"], 1);
    let runs = json(&c, "/api/v1/runs?model=acme");
    assert_eq!(runs[0]["unestimated"]["total"]["records"], 2);

    // Unattributed: the job that could not be estimated and the one that could, by job.
    let un = json(&c, "/api/v1/unattributed");
    assert_eq!(n(&un["unestimated"]["total"]["gpu_ms"]), HOUR as u128);
    assert_eq!(
        un["unestimated_text"],
        "1.0 GPU-hours that could not be estimated (unknown-gpu-no-peak)"
    );
    let sources = un["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    let s77 = sources.iter().find(|s| s["source"]["job"] == "77").unwrap();
    assert_eq!(n(&s77["counts"]["unestimated_gpu_ms"]), HOUR as u128);
    assert_eq!(s77["source"]["user"], "bob");
    assert_eq!(s77["source"]["cluster"], "gpu-a");
    assert_eq!(s77["nodes"][0], "a1-node");
    assert_eq!(
        s77["description"],
        "job 77 (user bob, namespace/account research, cluster gpu-a, process python3)"
    );
    let s78 = sources.iter().find(|s| s["source"]["job"] == "78").unwrap();
    assert_eq!(n(&s78["counts"]["flop"]["central"]), (C / 2) as u128);
    let err = try_get(&c, "/api/v1/unattributed?limit=100000").unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    let err = try_get(&c, "/api/v1/unattributed?days=-1").unwrap_err();
    assert!(err.to_string().contains("days back"), "{err}");

    // Metrics: bounded labels (reason, model), the fleet-wide figure the alert rule uses.
    let metrics = get(&c, "/metrics");
    for needle in [
        "flopmeter_unestimated_gpu_seconds{reason=\"unknown-gpu-no-peak\"} 7200",
        "flopmeter_unestimated_gpu_seconds{reason=\"no-activity-reading\"} 3600",
        "flopmeter_model_unestimated_gpu_seconds{model=\"acme\",reason=\"unknown-gpu-no-peak\"} 3600",
        "flopmeter_model_gpu_seconds{gpu_type=\"h100-sxm\",model=\"acme\"} 3600",
        "flopmeter_ingest_rejected_records_total{reason=\"bad-no-estimate\"} 3",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
    for forbidden in ["job=", "user=", "\"77\"", "bob"] {
        assert!(!metrics.contains(forbidden), "{forbidden} in /metrics");
    }

    // The report as the CLI renders it (the API's JSON carries the same document, with its
    // exact figures as decimal strings).
    let api_report = json(&c, "/api/v1/models/acme/report");
    assert_eq!(api_report["unestimated"]["records"], 2);
    let r: Report = report::build(
        c.store().as_ref(),
        "acme",
        &flopmeter_core::stage::StagePolicy::default(),
        now_unix_ms(),
    )
    .unwrap()
    .expect("the model has a report");
    assert_eq!(r.unestimated.records, 2);
    let text = report::render(&r, Format::Text);
    for line in [
        "Not estimated:     2.0 GPU-hours that could not be estimated (no-activity-reading, \
         unknown-gpu-no-peak)",
        "  and 1.0 GPU-hours that could not be estimated (unknown-gpu-no-peak)",
        "  Largest sources (label these jobs):",
        "    job 77 (user bob, namespace/account research, cluster gpu-a, process python3) on \
         a1-node: 0 [0 – 0] FLOP, 0 GPU-hours (+1.0 not estimated)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let csv = report::render(&r, Format::Csv);
    for row in [
        "\nunestimated,unknown-gpu-no-peak,unknown,,,,0.041666666666666664,",
        "\nunattributed-unestimated,unknown-gpu-no-peak,unknown,,,,",
        "\nunattributed-source,\"job 78 (user carol",
    ] {
        assert!(csv.contains(row), "missing {row:?} in\n{csv}");
    }

    // Recomputation from the raw batches agrees exactly.
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", c.grpc_addr()))
        .await
        .unwrap();
    let v = admin
        .verify_ledger(pb::VerifyLedgerRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.ok, "{:?}", v.mismatches);
    c.shutdown().await.unwrap();
}

/// An exact figure from the API: u128 figures are decimal strings, smaller ones numbers.
fn n(v: &serde_json::Value) -> u128 {
    match v {
        serde_json::Value::String(s) => s.parse().expect("a decimal string"),
        other => other.as_u64().map(u128::from).expect("a number"),
    }
}
