//! What bounds the collector whatever the number of models (issue 12, item 3): per-model and
//! per-run series beyond `--metrics-max-models` / `--metrics-max-runs` are summed under
//! `_other` (the sums stay right), and one agent may start only
//! `--new-runs-per-agent-per-hour` new runs, further ones quarantined as `too-many-new-runs`.

use crate::support;

use flopmeter_collector::Collector;
use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::ingest::validate::RejectReason;
use flopmeter_core::stage::StagePolicy;
use flopmeter_proto::v1::collector_message::Kind;
use support::{Stream, rec};

fn sample(text: &str, series: &str) -> Option<f64> {
    support::http::sample(text, series)
}

async fn ack(s: &mut Stream) -> flopmeter_proto::v1::Ack {
    match s.next().await.unwrap().and_then(|m| m.kind) {
        Some(Kind::Ack(a)) => a,
        other => panic!("expected an Ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_beyond_the_bounds_are_summed_under_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CollectorConfig::for_data_dir(dir.path());
    cfg.metrics_max_models = 2;
    cfg.metrics_max_runs = 3;
    let c = Collector::start(cfg).await.unwrap();
    let mut s = Stream::open(c.grpc_addr(), "agent-b", None).await;
    s.next().await.unwrap();
    // Five models of growing size, one run each, one record per model.
    let unit = 100_000_000_000_000u64;
    let recs: Vec<_> = (1..=5u64)
        .map(|i| rec(i, &format!("model-{i}"), "r", "", i * unit))
        .collect();
    s.send(recs.clone()).await;
    assert_eq!(ack(&mut s).await.acked_through, 5);
    let m = c.metrics();
    m.refresh_ledger(c.store().as_ref(), &StagePolicy::default(), true)
        .unwrap();
    let text = m.render();
    let central = |model: &str| {
        sample(
            &text,
            &format!("flopmeter_model_flop{{bound=\"central\",model=\"{model}\"}}"),
        )
    };
    // The two largest by themselves, the rest summed.
    assert_eq!(central("model-5"), Some((5 * unit) as f64));
    assert_eq!(central("model-4"), Some((4 * unit) as f64));
    assert_eq!(central("model-3"), None, "{text}");
    assert_eq!(central("_other"), Some((6 * unit) as f64));
    let runs = text
        .lines()
        .filter(|l| l.starts_with("flopmeter_run_flop{") && l.contains("bound=\"central\""))
        .count();
    assert_eq!(runs, 4, "three runs and _other: {text}");
    // A change reaches the next scrape (the writer marks the model to read again).
    s.send(vec![rec(6, "model-1", "r", "", 10 * unit)]).await;
    assert_eq!(ack(&mut s).await.acked_through, 6);
    m.refresh_ledger(c.store().as_ref(), &StagePolicy::default(), true)
        .unwrap();
    let text = m.render();
    assert_eq!(
        sample(
            &text,
            "flopmeter_model_flop{bound=\"central\",model=\"model-1\"}"
        ),
        Some((11 * unit) as f64),
        "{text}"
    );
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_starts_only_so_many_new_runs_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CollectorConfig::for_data_dir(dir.path());
    cfg.new_runs_per_agent_per_hour = 3;
    let c = Collector::start(cfg).await.unwrap();
    let mut s = Stream::open(c.grpc_addr(), "agent-flood", None).await;
    s.next().await.unwrap();
    let good = 4_000_000_000_000_000;
    // Ten new models in one batch: three start, seven wait in quarantine.
    let recs: Vec<_> = (1..=10u64)
        .map(|i| rec(i, &format!("flood-{i}"), "r", "", good))
        .collect();
    s.send(recs).await;
    let a = ack(&mut s).await;
    assert_eq!(a.acked_through, 10);
    assert_eq!(a.rejections.len(), 7);
    assert!(
        a.rejections.iter().all(|r| r.reason == "too-many-new-runs"
            && r.detail.contains("--new-runs-per-agent-per-hour"))
    );
    assert_eq!(c.metrics().rejected_count(RejectReason::TooManyNewRuns), 7);
    // Runs that exist keep reporting.
    s.send(vec![rec(11, "flood-1", "r", "", good)]).await;
    let a = ack(&mut s).await;
    assert!(a.rejections.is_empty(), "{:?}", a.rejections);
    // Another agent has its own allowance.
    let mut t = Stream::open(c.grpc_addr(), "agent-other", None).await;
    t.next().await.unwrap();
    t.send(vec![rec(1, "other-model", "r", "", good)]).await;
    assert!(ack(&mut t).await.rejections.is_empty());
    let models = c.store().model_names().unwrap();
    assert_eq!(models.len(), 4, "{models:?}");
    c.shutdown().await.unwrap();
}
