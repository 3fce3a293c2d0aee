//! Ingest over real gRPC against an in-process collector: every validation rule quarantines
//! the bad record with its reason (in the Ack and the metric) while the good records of the
//! same stream are accounted; refusals end the stream with the documented status; resends
//! are ignored; gaps are never skipped.

use crate::support;

use flopmeter_collector::config::CollectorConfig;
use flopmeter_collector::ingest::validate::RejectReason;
use flopmeter_collector::metrics::Refusal;
use flopmeter_collector::{Collector, now_unix_ms};
use flopmeter_proto::v1::{CollectorMessage, IntervalRecord, collector_message::Kind};
use support::{Stream, rec, start};

const GOOD: u64 = 4_000_000_000_000_000;

fn welcome(m: Option<CollectorMessage>) -> u64 {
    match m.and_then(|m| m.kind) {
        Some(Kind::Welcome(w)) => w.high_water_mark,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

fn ack(m: Option<CollectorMessage>) -> flopmeter_proto::v1::Ack {
    match m.and_then(|m| m.kind) {
        Some(Kind::Ack(a)) => a,
        other => panic!("expected Ack, got {other:?}"),
    }
}

fn resend(m: Option<CollectorMessage>) -> u64 {
    match m.and_then(|m| m.kind) {
        Some(Kind::Resend(r)) => r.from_seq,
        other => panic!("expected Resend, got {other:?}"),
    }
}

type Spoil = fn(&mut IntervalRecord);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_validation_rule_quarantines_only_the_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let cases: Vec<(RejectReason, Spoil)> = vec![
        (RejectReason::FlopAbovePeak, |r| {
            r.flop_high = 30_000_000_000_000_000
        }),
        (RejectReason::BadInterval, |r| {
            r.end_unix_ms = r.start_unix_ms - 5
        }),
        (RejectReason::IntervalTooLong, |r| {
            r.start_unix_ms = r.end_unix_ms - 3_600_001
        }),
        (RejectReason::FutureEventTime, |r| {
            r.start_unix_ms += 2 * 86_400_000;
            r.end_unix_ms += 2 * 86_400_000;
        }),
        (RejectReason::EventTimeTooOld, |r| {
            r.start_unix_ms -= 100 * 86_400_000;
            r.end_unix_ms -= 100 * 86_400_000;
        }),
        (RejectReason::UndeclaredGpu, |r| r.gpu_uuid = "GPU-9".into()),
        (RejectReason::BadDeclaration, |r| {
            r.declaration = Some(flopmeter_proto::v1::WorkloadDeclaration {
                planned_flop: "0e2147483647".into(),
                ..Default::default()
            })
        }),
        // Record 1's interval again, under a new sequence number: each fits the ceiling,
        // the two together do not.
        (RejectReason::GpuOverlap, |r| {
            r.start_unix_ms -= 10_000;
            r.end_unix_ms -= 10_000;
            r.flop_high = 20_000_000_000_000_000;
        }),
        (RejectReason::BandOrder, |r| r.flop_low = r.flop_central + 1),
        (RejectReason::UnknownGpuType, |r| r.gpu_type = "b999".into()),
        (RejectReason::GpuTimeAboveInterval, |r| r.gpu_ms = 60_000),
        (RejectReason::ImplausibleEnergy, |r| {
            r.energy_mj = 10_000_000_000
        }),
        (RejectReason::BadValue, |r| r.mean_tensor_util = 2.0),
        (RejectReason::BadIdentity, |r| {
            r.identity.as_mut().unwrap().run = "a\u{0}b".into()
        }),
    ];
    for (reason, spoil) in cases {
        let agent = format!("agent-{reason}");
        let model = format!("model-{reason}");
        let mut s = Stream::open(c.grpc_addr(), &agent, None).await;
        assert_eq!(welcome(s.next().await.unwrap()), 0);
        let mut bad = rec(2, &model, "r1", "", GOOD);
        spoil(&mut bad);
        s.send(vec![
            rec(1, &model, "r1", "", GOOD),
            bad,
            rec(3, &model, "r1", "", GOOD),
        ])
        .await;
        let a = ack(s.next().await.unwrap());
        assert_eq!(
            a.acked_through, 3,
            "{reason}: the mark moves past the bad record"
        );
        assert_eq!(a.rejections.len(), 1, "{reason}");
        assert_eq!(a.rejections[0].seq, 2);
        assert_eq!(a.rejections[0].reason, reason.as_str());
        assert!(!a.rejections[0].detail.is_empty());
        assert_eq!(c.metrics().rejected_count(reason), 1, "{reason}");
        // The good records of the same stream are accounted, the bad one is not.
        let agg = c.store().model_aggregate(&model).unwrap().unwrap();
        assert_eq!(agg.records(), 2, "{reason}");
        assert_eq!(agg.all().flop.central, 2 * u128::from(GOOD), "{reason}");
        // And the stream goes on.
        s.send(vec![rec(4, &model, "r1", "", GOOD)]).await;
        assert_eq!(ack(s.next().await.unwrap()).acked_through, 4);
    }
    let quarantined = c.store().rejections(None, 100).unwrap();
    assert_eq!(quarantined.len(), 14);
    assert!(c.store().verify().unwrap().ok());
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_sequence_going_backwards_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let mut s = Stream::open(c.grpc_addr(), "a1", None).await;
    welcome(s.next().await.unwrap());
    s.send(vec![rec(1, "m", "r", "", GOOD), rec(2, "m", "r", "", GOOD)])
        .await;
    assert_eq!(ack(s.next().await.unwrap()).acked_through, 2);
    s.send(vec![rec(4, "m", "r", "", GOOD), rec(3, "m", "r", "", GOOD)])
        .await;
    let err = s.next().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("strictly increase"), "{err}");
    assert_eq!(c.metrics().refused_count(Refusal::SequenceNotIncreasing), 1);
    let store = c.store();
    assert_eq!(
        store.high_water_mark("a1").unwrap(),
        2,
        "nothing of it applied"
    );
    assert_eq!(store.model_aggregate("m").unwrap().unwrap().records(), 2);
    // The agent reconnects and sends a good batch: accounted.
    let mut s = Stream::open(c.grpc_addr(), "a1", None).await;
    assert_eq!(welcome(s.next().await.unwrap()), 2);
    s.send(vec![rec(3, "m", "r", "", GOOD)]).await;
    assert_eq!(ack(s.next().await.unwrap()).acked_through, 3);
    assert_eq!(store.model_aggregate("m").unwrap().unwrap().records(), 3);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agents_are_refused_when_tokens_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CollectorConfig::for_data_dir(dir.path());
    cfg.agent_tokens = Some([("known".to_string(), "s3cret".to_string())].into());
    let c = Collector::start(cfg).await.unwrap();

    let mut s = Stream::open(c.grpc_addr(), "stranger", Some("s3cret")).await;
    let err = s.next().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(c.metrics().refused_count(Refusal::UnknownAgent), 1);

    let mut s = Stream::open(c.grpc_addr(), "known", Some("wrong")).await;
    assert_eq!(
        s.next().await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(c.metrics().refused_count(Refusal::BadToken), 1);

    let mut s = Stream::open(c.grpc_addr(), "known", Some("s3cret")).await;
    welcome(s.next().await.unwrap());
    s.send(vec![rec(1, "m", "r", "", GOOD)]).await;
    assert_eq!(ack(s.next().await.unwrap()).acked_through, 1);
    assert!(c.store().model_aggregate("stranger").unwrap().is_none());
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_are_ignored_and_gaps_are_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path()).await;
    let mut s = Stream::open(c.grpc_addr(), "a", None).await;
    assert_eq!(welcome(s.next().await.unwrap()), 0);
    let mut bad = rec(2, "m", "r", "", GOOD);
    bad.flop_low = bad.flop_high + 1;
    let first = vec![rec(1, "m", "r", "", GOOD), bad];
    s.send(first.clone()).await;
    let a = ack(s.next().await.unwrap());
    assert_eq!((a.acked_through, a.rejections.len()), (2, 1));

    // The same batch again: acknowledged, ignored, its rejection reported again.
    s.send(first).await;
    let a = ack(s.next().await.unwrap());
    assert_eq!(a.acked_through, 2);
    assert_eq!(a.rejections.len(), 1);
    assert_eq!(c.metrics().ingest_duplicate_records.get(), 2);

    // A gap: nothing applied, resend from 3.
    s.send(vec![rec(5, "m", "r", "", GOOD), rec(6, "m", "r", "", GOOD)])
        .await;
    assert_eq!(resend(s.next().await.unwrap()), 3);

    // A gap inside a batch: the contiguous part is applied, then resend from the hole.
    s.send(vec![
        rec(3, "m", "r", "", GOOD),
        rec(4, "m", "r", "", GOOD),
        rec(6, "m", "r", "", GOOD),
    ])
    .await;
    assert_eq!(ack(s.next().await.unwrap()).acked_through, 4);
    assert_eq!(resend(s.next().await.unwrap()), 5);
    drop(s);

    // A reconnecting agent learns the mark from the Welcome.
    let mut s = Stream::open(c.grpc_addr(), "a", None).await;
    assert_eq!(welcome(s.next().await.unwrap()), 4);
    let agg = c.store().model_aggregate("m").unwrap().unwrap();
    assert_eq!(agg.records(), 3);
    assert_eq!(agg.all().flop.central, 3 * u128::from(GOOD));
    assert!(now_unix_ms() > 0);
    c.shutdown().await.unwrap();
}
